"""Errors meant for users: each names the file, says what is wrong and how to fix it."""


class PathomixInputError(ValueError):
    """Bad input (a sheet, a slide, a gene table). The message is the whole story."""
