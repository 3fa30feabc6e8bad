"""Errors that a user can fix (a config value, a flag, a path, a data file): the entry points
print their message on one line and exit with status 2, without a traceback. Every other
exception is a bug and keeps its traceback."""


class UserError(Exception):
    """A problem with the user's input; the message names the field, flag or path and what is allowed."""
