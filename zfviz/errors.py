"""The one exception type that means "the user asked for something wrong" (not our bug)."""


class UserError(Exception):
    """Raised for bad input; the CLI prints its message on one line and exits non-zero."""
