"""One thin Hydra app per subcommand; each calls a plain ``run(cfg)`` that returns its metrics."""

from __future__ import annotations

import shlex
import sys
from importlib import resources

from zfviz.errors import Interrupted, UserError


def config_dir() -> str:
    """The folder of the package ``zfviz.configs``: the repository's configs/, mapped there by pyproject.toml.

    A wheel installs it as ``zfviz/configs/``; an editable install points the package at the source
    folder. Found through the import system, so it does not matter where the package lies or the cwd.
    """
    try:
        return str(resources.files("zfviz.configs"))
    except ModuleNotFoundError:  # an editable install made before configs/ became a package
        raise ImportError(
            "zfviz.configs is not installed; reinstall zfviz: make install, or pip install -e ."
        ) from None


# An absolute path: Hydra's config_path, initialize_config_dir and the YAML readers all take it.
CONFIG_DIR = config_dir()


def guarded(run, cfg):
    """Call ``run(cfg)``; what the user must act on ends in one line on stderr, never a traceback.

    A UserError (a bad value; a file that cannot be written: disk full, read-only) exits with
    status 2; Ctrl-C with 130, saying what was kept and how to continue.
    """
    try:
        return run(cfg)
    except Interrupted as err:
        print(f"zfviz: {err}{_how_to_continue(err.resume_dir)}", file=sys.stderr)
        sys.exit(err.exit_status)
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
        # Every file is written to a temporary one and renamed, so none is left half-written.
        print("zfviz: interrupted; the files written before are whole, none is half-written", file=sys.stderr)
        sys.exit(Interrupted.exit_status)


def _how_to_continue(resume_dir) -> str:
    """``; resume with: zfviz train ...``: this job's command line, continuing in ``resume_dir``."""
    from hydra.core.hydra_config import HydraConfig

    if resume_dir is None or not HydraConfig.initialized():
        return ""
    hydra = HydraConfig.get()
    if hydra.job.name != "train":  # ablate resumes its cached variants by itself
        return (
            f"; run the same command again to continue: {shlex.join(['zfviz', hydra.job.name, *hydra.overrides.task])}"
        )
    args = [a for a in hydra.overrides.task if a.partition("=")[0] != "resume"]
    return f"; resume with: {shlex.join(['zfviz', 'train', *args, 'resume=true', f'hydra.run.dir={resume_dir}'])}"
