"""One base class for every error a user can fix: the scripts print its message and exit 2."""


class ReconError(ValueError):
    pass


class ConfigError(ReconError):
    """A setting that cannot work as given; the message names the flag and what to do."""


def check(ok, message):
    """Raise ConfigError(message) unless ok: how every spec checks its values."""
    if not ok:
        raise ConfigError(message)


def print_error(error, file=None):
    """How the scripts report a ReconError: its usage line, if it has one, then the message."""
    import sys
    file = file or sys.stderr
    if getattr(error, "usage", None):
        print(error.usage, file=file)
    print(f"error: {error}", file=file)
