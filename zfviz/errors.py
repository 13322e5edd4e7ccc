"""The exceptions that mean "the user asked for something wrong, or must act" (not our bug), and the
handler that turns SIGTERM into one of them (``zfviz.commands.guarded`` and ``zfviz.script_main`` use it)."""

from __future__ import annotations

import signal
import threading

# What a stopped command says of its files: every file is written to a temporary one and renamed
# (utils.atomic_path), so none is left half-written.
INTERRUPTED = "interrupted; the files written before are whole, none is half-written"


class UserError(Exception):
    """Raised for bad input; the CLI prints its message on one line and exits non-zero."""


class Interrupted(UserError):
    """Ctrl-C stopped a command; ``resume_dir`` is the run folder it can continue from, if any."""

    exit_status = 130  # 128 + SIGINT: what a shell reports for a process Ctrl-C ended

    def __init__(self, message: str, resume_dir=None) -> None:
        super().__init__(message)
        self.resume_dir = resume_dir


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, Slurm, ``docker stop``) arrived while a command ran (``SigtermAsInterrupt``).

    A KeyboardInterrupt, so every block that cleans up after Ctrl-C (a temporary file removed, training's
    checkpoint kept) does the same for it; the command then ends with SIGTERM's own status.
    """

    exit_status = 143  # 128 + SIGTERM: what a shell, Slurm and docker report for a process SIGTERM ended


class SigtermAsInterrupt:
    """While active, SIGTERM (``kill``, Slurm, ``docker stop``) raises ``Terminated``, a KeyboardInterrupt:
    the command stops as Ctrl-C stops it, so no temporary file stays (the default action ended the
    process inside ``atomic_path``, leaving a 0-byte ``.<name>.<rand>.tmp``). A second SIGTERM is
    ignored: it must not cut that cleanup short. Only in the main thread and over the default action:
    someone else's handler is theirs to keep."""

    def __init__(self) -> None:
        self.received, self.before = False, None

    @property
    def said(self) -> str:
        """What the line reporting the stop starts with: ``SIGTERM: `` if SIGTERM stopped it."""
        return "SIGTERM: " if self.received else ""

    @property
    def exit_status(self) -> int:
        """143 if SIGTERM stopped the command, else 130 (Ctrl-C)."""
        return Terminated.exit_status if self.received else Interrupted.exit_status

    def __enter__(self) -> SigtermAsInterrupt:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self.before = signal.signal(signal.SIGTERM, self._raise)
        return self

    def __exit__(self, *exc) -> None:
        if self.before is not None:
            signal.signal(signal.SIGTERM, self.before)

    def _raise(self, signum, frame) -> None:
        if not self.received:
            self.received = True
            raise Terminated
