"""The exceptions that mean "the user asked for something wrong, or must act" (not our bug)."""


class UserError(Exception):
    """Raised for bad input; the CLI prints its message on one line and exits non-zero."""


class Interrupted(UserError):
    """Ctrl-C stopped a command; ``resume_dir`` is the run folder it can continue from, if any."""

    exit_status = 130  # 128 + SIGINT: what a shell reports for a process Ctrl-C ended

    def __init__(self, message: str, resume_dir=None) -> None:
        super().__init__(message)
        self.resume_dir = resume_dir


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, Slurm, ``docker stop``) arrived while a command ran (``commands.guarded``).

    A KeyboardInterrupt, so every block that cleans up after Ctrl-C (a temporary file removed, training's
    checkpoint kept) does the same for it; the command then ends with SIGTERM's own status.
    """

    exit_status = 143  # 128 + SIGTERM: what a shell, Slurm and docker report for a process SIGTERM ended
