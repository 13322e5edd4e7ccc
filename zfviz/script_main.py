"""The ``main`` of a script under ``scripts/``: a user's mistake ends in one line and status 2, as in ``zfviz``."""

from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path

from zfviz.errors import UserError


def script_main(main):
    """Decorate a script's ``main``: a UserError raised anywhere in it prints ``<script>: error: ...`` on stderr
    and returns 2 (what a zfviz command does with it), never a traceback; the script is named by its file."""
    name = Path(inspect.getfile(main)).stem

    @functools.wraps(main)
    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"{name}: error: {err}", file=sys.stderr)
            return 2

    return guarded
