"""The ``main`` of a script under ``scripts/``: a user's mistake ends in one line and status 2, and Ctrl-C or
SIGTERM in one line and 130 or 143, as in ``zfviz`` (``commands.guarded``)."""

from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path

from zfviz.errors import INTERRUPTED, Interrupted, SigtermAsInterrupt, UserError


def script_main(main):
    """Decorate a script's ``main``: a UserError raised anywhere in it prints ``<script>: error: ...`` on stderr
    and returns 2 (what a zfviz command does with it), never a traceback; the script is named by its file.

    SIGTERM stops it as Ctrl-C does (``make figures`` runs these scripts; ``kill``, Slurm and docker send
    SIGTERM), so no temporary file stays beside a figure it was writing: one line, and 143 (Ctrl-C: 130).
    """
    name = Path(inspect.getfile(main)).stem

    @functools.wraps(main)
    def guarded(*args, **kwargs):
        with SigtermAsInterrupt() as sigterm:
            try:
                return main(*args, **kwargs)
            except Interrupted as err:  # a training the script ran, stopped: its message says what was kept
                print(f"{name}: {sigterm.said}{err}", file=sys.stderr)
                return sigterm.exit_status
            except UserError as err:
                print(f"{name}: error: {err}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"{name}: {sigterm.said}{INTERRUPTED}", file=sys.stderr)
                return sigterm.exit_status

    return guarded
