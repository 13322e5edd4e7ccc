"""The ``zfviz`` dispatcher: ``zfviz <command> key=value ...`` runs that command's Hydra app.

It rewrites ``sys.argv`` and calls the ``@hydra.main`` function, so sweeps (``-m``), run folders
and ``--cfg job`` work as in any Hydra app. Two things happen first:

- Without ``-m``, a comma-separated value is one list, not a sweep: ``drop=fc6,fc7`` becomes
  ``drop=[fc6,fc7]`` (the paper's "removed layers 6,7" is one variant).
- Without ``-m`` or other flags, the overrides are composed once up front, so an unknown option,
  group choice or key is reported as one line with the valid choices, not as Hydra's page.
"""

from __future__ import annotations

import importlib
import os
import re
import sys

from zfviz.errors import UserError

COMMANDS = {
    "train": "train one of the paper's nets and evaluate it (Table 2)",
    "ablate": "Table 3 layer ablations: train variants with layers removed or resized",
    "transfer": "Tables 4-6 transfer to other data sets",
    "viz": "visualizations: zfviz viz <method> (see configs/viz/)",
}
USAGE = "usage: zfviz {" + ",".join(COMMANDS) + "} [key=value ...] [-m] [--cfg job] [--help]"
_SWEEP_FUNCS = re.compile(r"^\s*(choice|range|interval|glob|sort|shuffle|tag|int|float|str|bool|json_str)\(")


def rewrite_lists(args: list[str]) -> list[str]:
    """``key=a,b`` -> ``key=[a,b]`` for every override whose value has a top-level comma."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        plain = eq and not arg.startswith("-") and "," in value
        nested = any(ch in value for ch in "[]{}()'\"") or _SWEEP_FUNCS.match(value or "")
        out.append(f"{key}=[{value}]" if plain and not nested else arg)
    return out


_ROOT_KEYS = {"seed", "device", "deterministic", "resume", "checkpoint", "out_dir", "name"}


def method_keys(method: str | None) -> list[str]:
    """The keys of ``configs/viz/<method>.yaml`` a user may give bare (``layer=conv4``), in file order."""
    from omegaconf import OmegaConf

    from zfviz.commands import CONFIG_DIR

    path = f"{CONFIG_DIR}/viz/{method}.yaml"
    if not method or not re.fullmatch(r"\w+", method) or not os.path.isfile(path):
        return []
    return [k for k in OmegaConf.load(path) if k not in _ROOT_KEYS]


def _chosen_method(args: list[str]) -> str | None:
    return next((a.partition("=")[2] for a in args if a.startswith("viz=")), None)


def scope_method_keys(args: list[str]) -> list[str]:
    """``zfviz viz deconv layer=conv4``: a key of the chosen method's config means ``viz.layer``."""
    keys = set(method_keys(_chosen_method(args)))
    if not keys:
        return args
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        bare = key.lstrip("+~")
        out.append(f"{key[: len(key) - len(bare)]}viz.{bare}={value}" if eq and bare.split(".")[0] in keys else arg)
    return out


def _one_line(err: Exception) -> str:
    """Hydra's composition errors as one line naming the problem and the valid choices."""
    from hydra.errors import MissingConfigException

    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, choice = err.missing_cfg_file.rpartition("/")
        return f"unknown {group or 'config'} {choice!r}; choose one of: {', '.join(sorted(err.options))}"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    cause = err.__cause__
    if cause is not None:
        lines += [ln.strip() for ln in str(cause).splitlines() if ln.strip() and "full_key" not in ln][:1]
    first = lines[0] if lines else type(err).__name__
    detail = lines[-1] if len(lines) > 1 and lines[-1] != first else ""
    return f"{first} {detail}".strip()


def _valid_keys(command: str, key: str, overrides: list[str]) -> str:
    """The keys that do exist at the level where ``key`` was not found.

    For ``zfviz viz <method>``, an unknown key at the top lists the method's own keys first, bare,
    as they are typed (``layer=conv4``), then the shared ones.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from zfviz.commands import CONFIG_DIR

    parent = key.lstrip("+~").rpartition(".")[0]
    others = [o for o in overrides if o.partition("=")[0].lstrip("+~") != key.lstrip("+~")]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        try:
            cfg = compose(config_name=command, overrides=others)
        except Exception:  # another override is bad too: list the keys of the plain config
            cfg = compose(config_name=command)
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if node is None:
        return ""
    keys = [f"{parent + '.' if parent else ''}{k}" for k in node]
    if command == "viz" and not parent:
        keys = method_keys(_chosen_method(overrides)) + keys
    return ", ".join(keys)


def validate(command: str, overrides: list[str]) -> None:
    """Compose ``command``'s config with ``overrides``; raise UserError with one line if it fails."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from zfviz.commands import CONFIG_DIR

    try:
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            compose(config_name=command, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        message = _one_line(err)
        found = re.search(r"Could not override '([^']+)'", str(err))
        if found and "not in struct" in str(err.__cause__ or ""):
            message = f"unknown option {found.group(1)!r}; valid keys there: {_valid_keys(command, found.group(1), overrides)}"
        raise UserError(message) from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        print("\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:<9} {text}")
        print("\n'zfviz <command> --help' shows a command's config; 'zfviz <command> --cfg job' prints it resolved.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "viz" and rest and "=" not in rest[0] and not rest[0].startswith("-"):
        rest = [f"viz={rest[0]}", *rest[1:]]  # zfviz viz deconv ... selects configs/viz/deconv.yaml
    if command == "viz":
        rest = scope_method_keys(rest)
    try:
        if command not in COMMANDS:
            raise UserError(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)}")
        if not any(a in ("-m", "--multirun") for a in rest):
            rest = rewrite_lists(rest)
            if not any(a.startswith("-") for a in rest):
                validate(command, rest)
    except UserError as err:
        print(f"zfviz: error: {err}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"zfviz.commands.{command}")
    sys.argv = [f"zfviz {command}", *rest]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
