"""Errors meant for users: each names the file, says what is wrong and how to fix it."""


class PathomixInputError(ValueError):
    """Bad input (a sheet, a slide, a gene table). The message is the whole story."""


class DiskFullError(PathomixInputError):
    """No space left on the disk an output is written to. Handled like bad input (the message names the file,
    the free space and the fix; no traceback), since the fix is the user's: free space, then rerun."""
