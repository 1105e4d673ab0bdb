"""The one error the commands raise: main() prints its message and exits with its code, no traceback."""


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code
