"""One thin Hydra app per subcommand; each calls a plain ``run(cfg)`` that returns its metrics."""

from __future__ import annotations

import sys
from pathlib import Path

from zfviz.errors import UserError

# configs/ sits beside the package in the source tree (the project is installed editable).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def guarded(run, cfg):
    """Call ``run(cfg)``; a UserError becomes one line on stderr and exit status 2."""
    try:
        return run(cfg)
    except UserError as err:
        print(f"zfviz: error: {err}", file=sys.stderr)
        sys.exit(2)
