"""Errors that speak to the user: printed by the CLI without a traceback."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, a checkpoint); the message names it."""
