"""The exceptions that mean "the user asked for something wrong, or must act" (not our bug)."""


class UserError(Exception):
    """Raised for bad input; the CLI prints its message on one line and exits non-zero."""


class Interrupted(UserError):
    """Ctrl-C stopped a command; ``resume_dir`` is the run folder it can continue from, if any."""

    exit_status = 130  # 128 + SIGINT: what a shell reports for a process Ctrl-C ended

    def __init__(self, message: str, resume_dir=None) -> None:
        super().__init__(message)
        self.resume_dir = resume_dir
