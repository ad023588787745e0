"""One base class for every error a user can fix: the scripts print its message and exit 2."""


class ReconError(ValueError):
    pass
