"""Progress bars that read well in a terminal and in a log file.

In a terminal: tqdm as usual. Where stderr is not a terminal (a log file, a pipe, CI), a plain
line at most every 30 seconds, without a bar, and transformers' own loading bars turned off:
tqdm's carriage-return redraws would otherwise fill the file with hundreds of updates.
"""

import sys

from tqdm import tqdm

LOG_INTERVAL = 30  # seconds between progress lines in a log


def in_terminal():
    return sys.stderr.isatty()


class _Lines:
    """A stream for tqdm that writes each redraw as one line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s):
        s = s.replace("\r", "").strip()
        if s:
            self.stream.write(s + "\n")

    def flush(self):
        self.stream.flush()


def progress(iterable=None, **kwargs):
    """tqdm(iterable, **kwargs), as lines every LOG_INTERVAL seconds when not in a terminal."""
    if not in_terminal():
        kwargs = {**kwargs, "file": _Lines(sys.stderr), "mininterval": LOG_INTERVAL, "maxinterval": LOG_INTERVAL,
                  "miniters": 1,  # look at the clock every step: tqdm's adaptive count printed lines late, in pairs
                  "dynamic_ncols": False,
                  "bar_format": "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"}
    return tqdm(iterable, **kwargs)


def quiet_libraries():
    """In a log, no loading bars from transformers."""
    if not in_terminal():
        from transformers.utils import logging
        logging.disable_progress_bar()


def say(*args):
    """print() that does not break a progress bar in a terminal (in a log there is no bar to
    redraw: tqdm.write would add a stale copy of the last progress line after the message)."""
    if in_terminal():
        tqdm.write(" ".join(str(a) for a in args))
    else:
        print(*args, flush=True)
