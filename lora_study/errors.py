"""The one exception type for bad user input.

Raise `UserInputError` with a message that names the problem (file, line, flag, column) and the
fix. The CLI prints it as one line per problem and exits with status 2; no traceback.
"""


class UserInputError(Exception):
    """Input the user can fix: a bad flag value, a missing file, a malformed record."""

    def __init__(self, *problems: str):
        super().__init__("; ".join(problems))
        self.problems = list(problems)
