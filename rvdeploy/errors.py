"""The one error type of rvdeploy.

Library code raises RvdeployError with a one-line message that names the problem (file, op, node, flag)
and, where there is one, what to do next. The CLI turns it into a message on stderr and an exit code in
one place (rvdeploy.cli.main).
"""


class RvdeployError(Exception):
    """A user-facing failure: bad input, a missing tool, an unusable model."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
