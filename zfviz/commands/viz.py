"""``zfviz viz <method>``: one visualization method per ``configs/viz/<method>.yaml``.

Each method lives in ``zfviz/commands/viz_<method>.py`` with a ``run(cfg)`` of its own; what they
share (opening a checkpoint and its data, picking images and maps, writing files with their
``.meta.json``) is ``zfviz/commands/shared.py``, so no command imports another.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import hydra
from omegaconf import DictConfig

from zfviz.checkpoint import with_checkpoint
from zfviz.commands import CONFIG_DIR, guarded
from zfviz.errors import UserError
from zfviz.validate import check_config


def methods() -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / "viz").glob("*.yaml"))


# Keys naming output files: each a file name inside the output folder, never a path out of it.
NAME_KEYS = ("stem", "figure")


def check_names(v: DictConfig) -> None:
    """``viz.stem``/``viz.figure`` are file names: ``../x`` or ``/tmp/x`` would write outside ``out_dir``.

    A number (``viz.stem=2024``, an int to Hydra) becomes the name it spells."""
    for key in NAME_KEYS:
        if v.get(key) is None:
            continue
        name = v[key] = str(v[key])
        if name in ("", ".", "..") or Path(name).name != name:
            raise UserError(
                f"viz.{key}={name} is not a file name; give a name without folders (e.g. viz.{key}=fig2) "
                "and the folder as out_dir=..."
            )


def default_checkpoint(cfg: DictConfig) -> DictConfig:
    """Without ``checkpoint=`` (and ``net=``), the net ``zfviz transfer`` would take: the newest finished run of
    ``model.name`` at this preset under ``runs/`` (``zfviz.checkpoint.with_checkpoint``), named on one line."""
    if cfg.viz.get("net"):
        return cfg
    cfg, chosen = with_checkpoint(cfg)
    if chosen:
        print(
            f"zfviz viz {cfg.viz.name}: checkpoint={cfg.checkpoint}, {chosen} (checkpoint= picks another)", flush=True
        )
    return cfg


def run(cfg: DictConfig):
    check_config(cfg)  # seed, device, ...: one line before any checkpoint is read
    if cfg.get("viz") is None:
        raise UserError(f"name a method: zfviz viz <method> ...; methods: {', '.join(methods()) or 'none yet'}")
    check_names(cfg.viz)
    cfg = default_checkpoint(cfg)
    module = importlib.import_module(f"zfviz.commands.viz_{cfg.viz.name}")
    return module.run(cfg)


@hydra.main(config_path=CONFIG_DIR, config_name="viz", version_base="1.3")
def main(cfg: DictConfig) -> None:
    guarded(run, cfg)


if __name__ == "__main__":
    main()
