"""The one exception type users can cause.

The CLI prints its message on one line and exits non-zero, without a traceback, so every message must name the
file and/or field it is about.
"""


class CompressError(Exception):
    """A user-facing error: bad recipe, bad data file, impossible model spec..."""
