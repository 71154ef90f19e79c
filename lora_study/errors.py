"""The one exception type for bad user input.

Raise `UserInputError` with a message that names the problem (file, line, flag, column) and the
fix. The CLI prints it as one line per problem and exits with status 2; no traceback.
"""

import re


class UserInputError(Exception):
    """Input the user can fix: a bad flag value, a missing file, a malformed record."""

    def __init__(self, *problems: str):
        # one line each, whatever a quoted value held (a YAML string with a newline, say)
        self.problems = [re.sub(r"\s*[\r\n]+\s*", " ", str(problem)) for problem in problems]
        super().__init__("; ".join(self.problems))
