"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (paths, options, files). Never a bug in dlm-bench."""
