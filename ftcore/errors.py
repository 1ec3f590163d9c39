"""Errors a user can cause. The CLI prints them as one line each and exits with code 2."""


class UserError(Exception):
    """A problem the user can fix (bad recipe, bad data, missing file). Its message names the place and the fix."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe that does not load or validate; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class DataError(UserError):
    """Input data that cannot be used: an unreadable file, a missing column, too few rows."""


def first_line(error: BaseException) -> str:
    """An exception's message in one line (drivers and servers often add pages of detail)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
