"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class KitError(Exception):
    """A user-facing error: the message names the file, key or argument and what is allowed."""

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
