"""Subcommands whose work belongs to later issues: they compose their configs and say so."""

from __future__ import annotations

from omegaconf import DictConfig

from zfviz.errors import UserError
from zfviz.models.convnets import _check_drop

ISSUES = {
    "ablate": "the layer-ablation issue (Table 3)",
    "transfer": "the transfer issue (Tables 4-6)",
}


def not_yet(name: str, cfg: DictConfig) -> None:
    if name == "ablate":
        _check_drop(cfg.drop)  # a bad drop= is reported as such even before ablate exists
    raise UserError(f"'zfviz {name}' is not implemented yet; it arrives with {ISSUES[name]}")
