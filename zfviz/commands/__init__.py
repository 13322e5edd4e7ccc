"""One thin Hydra app per subcommand; each calls a plain ``run(cfg)`` that returns its metrics."""

from __future__ import annotations

import shlex
import sys

from zfviz.config_dir import CONFIG_DIR as CONFIG_DIR  # re-exported: the commands and the tests import it from here
from zfviz.errors import INTERRUPTED, Interrupted, SigtermAsInterrupt, UserError

# The keys naming folders a command writes into (viz, transfer): checked before the work starts.
OUTPUT_KEYS = ("out_dir", "arrays_dir")


def guarded(run, cfg):
    """Call ``run(cfg)``; what the user must act on ends in one line on stderr, never a traceback.

    The output folders are checked first (a read-only one is found before the work, not after). A
    UserError (a bad value; a file that cannot be written: disk full, read-only) exits with status 2;
    Ctrl-C with 130, saying what was kept and how to continue; SIGTERM as Ctrl-C, with 143.
    """
    with SigtermAsInterrupt() as sigterm:
        try:
            check_outputs(cfg)
            return run(cfg)
        except Interrupted as err:
            print(f"zfviz: {sigterm.said}{err}{_how_to_continue(err.resume_dir)}", file=sys.stderr)
            sys.exit(sigterm.exit_status)
        except UserError as err:
            print(f"zfviz: error: {err}", file=sys.stderr)
            sys.exit(2)
        except OSError as err:
            from zfviz.utils import CANNOT_WRITE  # imports torch: only once there is an error to report

            if err.errno not in CANNOT_WRITE:
                raise
            where = f"{err.filename}: " if err.filename else ""
            print(f"zfviz: error: {where}{CANNOT_WRITE[err.errno]}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f"zfviz: {sigterm.said}{INTERRUPTED}", file=sys.stderr)
            sys.exit(sigterm.exit_status)


def check_outputs(cfg) -> None:
    """One line (an ``OutputError``) if a folder the command writes into cannot take a file."""
    if cfg is None:  # a run that reads no config
        return
    from zfviz.utils import check_writable  # imports torch, as every command does next

    for key in OUTPUT_KEYS:
        if cfg.get(key):
            check_writable(cfg[key], key)


def _how_to_continue(resume_dir) -> str:
    """``; resume with: zfviz train ...``: this job's command line, continuing in ``resume_dir``."""
    from hydra.core.hydra_config import HydraConfig

    if resume_dir is None or not HydraConfig.initialized():
        return ""
    hydra = HydraConfig.get()
    if hydra.job.name != "train":  # ablate and the decoders resume their caches by themselves
        return (
            f"; run the same command again to continue: {shlex.join(['zfviz', hydra.job.name, *hydra.overrides.task])}"
        )
    args = [a for a in hydra.overrides.task if a.partition("=")[0] != "resume"]
    return f"; resume with: {shlex.join(['zfviz', 'train', *args, 'resume=true', f'hydra.run.dir={resume_dir}'])}"
