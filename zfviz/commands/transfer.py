"""``zfviz transfer``: not implemented yet (see ``zfviz.commands.pending``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from zfviz.commands import CONFIG_DIR, guarded
from zfviz.commands.pending import not_yet


def run(cfg: DictConfig) -> None:
    not_yet("transfer", cfg)


@hydra.main(config_path=CONFIG_DIR, config_name="transfer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    guarded(run, cfg)


if __name__ == "__main__":
    main()
