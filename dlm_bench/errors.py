"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (paths, options, files). Never a bug in dlm-bench."""


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors can span many), or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
