"""The scale of a ``make figures`` run: sizes only, in one config group (issue 25).

``configs/scale/<name>.yaml`` maps stage names (shell patterns, the first match wins) to the values
that stage's command gets: Hydra keys (``trainer.epochs``) for the zfviz commands, flags
(``--images``) for the figure scripts. ``scaled`` puts them into a stage's command, replacing the
same key or flag where the Makefile gives one, so the code path is the real one and only the sizes
change. ``full`` (the default) changes nothing.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from omegaconf import OmegaConf

from zfviz.config_dir import CONFIG_DIR
from zfviz.errors import UserError

SCALES = Path(CONFIG_DIR) / "scale"


def names() -> list[str]:
    return sorted(p.stem for p in SCALES.glob("*.yaml"))


def stage_values(scale: str, stage: str) -> dict[str, object]:
    """What ``scale`` sets for ``stage``: key or flag -> value (empty for full or an unlisted stage)."""
    path = SCALES / f"{scale}.yaml"
    if not path.is_file():
        raise UserError(f"unknown SCALE={scale}; choose one of: {', '.join(names())}")
    table = OmegaConf.to_container(OmegaConf.load(path)) or {}
    for pattern, values in table.items():
        if fnmatch.fnmatchcase(stage, pattern):
            return dict(values or {})
    return {}


def _hydra_value(value: object) -> str:
    """``value`` in Hydra's override grammar: [a,b], {key:value}, null."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    return "null" if value is None else str(value)


def scaled(command: list[str], scale: str, stage: str) -> list[str]:
    """``command`` with ``scale``'s values for ``stage``: a key=value or --flag value of the same name
    is replaced in place, a new one appended."""
    out = list(command)
    for key, value in stage_values(scale, stage).items():
        if key.startswith("--"):
            if key in out:
                at = out.index(key)
                out[at + 1] = str(value)
            else:
                out += [key, str(value)]
            continue
        arg = f"{key}={_hydra_value(value)}"
        at = next((i for i, a in enumerate(out) if a.split("=", 1)[0] == key), None)
        if at is None:
            out.append(arg)
        else:
            out[at] = arg
    return out
