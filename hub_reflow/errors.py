"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input: the message names what is wrong and what to do. No traceback is shown."""
