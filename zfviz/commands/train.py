"""``zfviz train``: train one of the paper's nets and evaluate it (Section 3, Table 2; zfviz/training.py)."""

from __future__ import annotations

import os

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from zfviz.commands import CONFIG_DIR, guarded
from zfviz.training import run


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if os.environ.get("RANK", "0") == "0":  # one line before any data is read, so a long run can be found
        print(f"zfviz train: run folder {os.path.relpath(HydraConfig.get().runtime.output_dir)}", flush=True)
    guarded(run, cfg)


if __name__ == "__main__":
    main()
