"""``zfviz viz <method>``: one visualization method per ``configs/viz/<method>.yaml``.

Each method lives in ``zfviz/commands/viz_<method>.py`` with a ``run(cfg)`` of its own; what they
share (opening a checkpoint and its data, picking images and maps, writing files with their
``.meta.json``) is ``zfviz/vizio.py``, so no command imports another.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import hydra
from omegaconf import DictConfig

from zfviz.commands import CONFIG_DIR, guarded
from zfviz.errors import UserError


def methods() -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / "viz").glob("*.yaml"))


def run(cfg: DictConfig):
    if cfg.get("viz") is None:
        raise UserError(f"name a method: zfviz viz <method> ...; methods: {', '.join(methods()) or 'none yet'}")
    module = importlib.import_module(f"zfviz.commands.viz_{cfg.viz.name}")
    return module.run(cfg)


@hydra.main(config_path=CONFIG_DIR, config_name="viz", version_base="1.3")
def main(cfg: DictConfig) -> None:
    guarded(run, cfg)


if __name__ == "__main__":
    main()
