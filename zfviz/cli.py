"""The ``zfviz`` dispatcher: ``zfviz <command> key=value ...`` runs that command's Hydra app.

It rewrites ``sys.argv`` and calls the ``@hydra.main`` function, so sweeps (``-m``), run folders
and ``--cfg job`` work as in any Hydra app. Two things happen first:

- Without ``-m``, a comma-separated value is one list, not a sweep: ``drop=fc6,fc7`` becomes
  ``drop=[fc6,fc7]`` (the paper's "removed layers 6,7" is one variant).
- The overrides are composed up front (under ``-m``, each swept value once), so an unknown option,
  group choice or key is reported as one line with the valid choices, not as Hydra's page.
- Overrides go before Hydra's flags (``zfviz viz deconv -m layer=conv4,conv5``); ``--help`` is the
  command's page (configs/hydra/help/), ``zfviz viz <method> --help`` that method's keys.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

from zfviz.errors import UserError
from zfviz.validate import check_command_line, check_config

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


# Keys whose value is a path (the last part of the dotted key: data.root, viz.concepts.root, hydra.run.dir, ...).
PATH_KEYS = {"checkpoint", "resume", "out_dir", "arrays_dir", "root", "cache_dir", "mean_cache", "dir", "images",
             "weights", "decoder", "decoders", "alexnet", "clipped", "unclipped"}  # fmt: skip
# Of those, the keys that also take a list (``images=[a.jpg,b.jpg]``, ``images=a.jpg,b.jpg``, indices ``[0,1]``).
LIST_PATH_KEYS = {"images", "clipped", "unclipped"}
_HYDRA_SCALAR = re.compile(r"(?i)null|true|false|-?\d+|'.*'|\".*\"")


def hydra_quoted(value: str) -> str:
    """``value`` as one Hydra quoted string that reads back as ``value`` exactly: a quote, and the backslashes
    before a quote or at the end, escaped (Hydra keeps other backslashes as typed)."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value) + "'"


def unquoted(value: str) -> str:
    """The text a value quoted for Hydra (``hydra_quoted``, or by the user) stands for; a bare value as it is."""
    if len(value) < 2 or value[0] != value[-1] or value[0] not in "'\"":
        return value
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return str(OverridesParser.create().parse_override(f"key={value}").value())


def _path_form(value: str, key: str, multirun: bool) -> bool:
    """Whether ``value`` of a path key is meant in Hydra's grammar (null, true/false, a number, a quoted string,
    a list, a dict, a sweep), not as a path; a file or folder of that name is always a path."""
    if Path(value).expanduser().exists():
        return False
    lists = key in LIST_PATH_KEYS
    bracketed = value[:1] + value[-1:] in ("[]", "{}")
    return bool(_HYDRA_SCALAR.fullmatch(value)) or bracketed or "," in value and (lists or multirun)


def quote_paths(args: list[str], multirun: bool = False) -> list[str]:
    """A path key's value (``PATH_KEYS``) quoted for Hydra, so that it reaches the command verbatim: Hydra's
    grammar rejects ``( ) [ ] { } # = ' ~`` in a bare value and reads a comma as a list or a sweep.

    Left as typed: a value in Hydra's grammar (``_path_form``) that names no existing file or folder: ``null``,
    a quoted string, ``[...]``, and for ``images``/``clipped``/``unclipped`` (or under ``-m``) ``a,b``, a list."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        name = key.lstrip("+~").rpartition(".")[2]
        if eq and not arg.startswith("-") and name in PATH_KEYS and value and not _path_form(value, name, multirun):
            arg = f"{key}={hydra_quoted(value)}"
        out.append(arg)
    return out


def quote_home(args: list[str]) -> list[str]:
    """``images=~/photos``: a value starting with ``~`` (bash expands it, zsh and quoting do not) is one
    Hydra's grammar rejects; quoted, it reaches the command, which expands it (``key=~/a,~/b``: a list)."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        parts = value.split(",")
        plain = eq and not arg.startswith("-") and not any(ch in value for ch in "[]{}()'\"")
        if plain and any(part.startswith("~") for part in parts):
            quoted = [f"'{part}'" for part in parts]
            arg = f"{key}={quoted[0]}" if len(quoted) == 1 else f"{key}=[{','.join(quoted)}]"
        out.append(arg)
    return out


# Hydra's flags followed by a value (--info's is optional, one of its choices).
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                "-cd", "--experimental-rerun"}  # fmt: skip
_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
# The config comes from elsewhere, or nothing runs: no up-front check against our configs.
_UNCHECKED = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun",
              "--hydra-help", "--version", "--shell-completion", "-sc"}  # fmt: skip
# Flags whose output is a page or a config: no debug note in it.
_QUIET = {"--cfg", "-c", "--help", "-h", "--info", "-i", "--hydra-help", "--version", "--shell-completion", "-sc"}
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


def validate(command: str, overrides: list[str], values: bool = False) -> None:
    """Compose ``command``'s config with ``overrides``; raise UserError with one line if it fails.

    ``values``: also check what the keys hold (``zfviz.validate``), as the command itself does when it
    runs; for a sweep's points, so that a bad point stops the sweep before its first job.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from zfviz.commands import CONFIG_DIR

    try:
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name=command, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        message = _one_line(err)
        found = re.search(r"Could not override '([^']+)'", str(err))
        if found and "not in struct" in str(err.__cause__ or ""):
            message = f"unknown option {found.group(1)!r}; valid keys there: {_valid_keys(command, found.group(1), overrides)}"
        raise UserError(message) from None
    if values:
        check_config(cfg)


def split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """(overrides, flags). Hydra's argparse reads its overrides as one run of words, so an override after
    ``-m`` or ``--cfg job`` is "unrecognized"; the dispatcher passes the overrides first, the flags after."""
    overrides, flags = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            overrides.append(arg)
        else:
            following = args[i + 1 : i + 2]
            takes_value = arg in _VALUE_FLAGS or arg in ("--info", "-i") and set(following) <= _INFO_CHOICES
            flags += [arg, *following] if takes_value else [arg]
            i += len(following) if takes_value else 0
        i += 1
    return overrides, flags


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """The override lists that check a ``-m`` sweep: every swept key at its first value, then each other
    value of each swept key with the rest at their first (every key and group choice is composed once;
    not the whole grid). Sweeps Hydra cannot list here (``interval``, ``glob``) are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise UserError(_one_line(err)) from None
    base, swept = [], []
    for override in parsed:
        key = override.input_line.partition("=")[0]
        if not override.is_sweep_override():
            base.append(override.input_line)
            continue
        try:
            values = [f"{key}={v}" for v in override.sweep_string_iterator()]
        except Exception:  # an interval or glob: only the sweeper can enumerate it
            continue
        swept.append((len(base), values))
        base.append(values[0])
    points = [base]
    for index, values in swept:
        points += [[*base[:index], value, *base[index + 1 :]] for value in values[1:]]
    return points


def method_page(method: str, chosen: str | None = None) -> str:
    """``zfviz viz <method> --help``: the method's description and keys, read from configs/viz/<method>.yaml.

    ``zfviz viz attribution``: a key without a comment there is a method option, described as the methods
    declare it (``zfviz.attribution.registry``), and the page ends with every method's options (with
    ``method=<name>``: that method's).
    """
    from zfviz.commands import CONFIG_DIR

    header, keys, parent = [], [], ""
    for line in Path(CONFIG_DIR, "viz", f"{method}.yaml").read_text().splitlines():
        found = re.match(r"^(\s*)(\w+):\s*(.*?)\s*(?:#\s?(.*))?$", line)
        comment = re.match(r"^\s*#\s?(.*)$", line)
        if found and found.group(2) != "name":
            indent, key, value, note = found.groups()
            parent = parent if indent else key
            keys.append([f"{parent}.{key}" if indent else key, value, note or ""])
        elif comment and keys and line.startswith(" "):
            keys[-1][2] += " " + comment.group(1).strip()
        elif comment and not keys and not comment.group(1).startswith("@package"):
            header.append(comment.group(1))
    methods: list[str] = []
    if method == "attribution":  # the registry imports torch: only this page pays for it
        from zfviz.attribution.registry import key_note, options_page

        keys = [[key, value, note or key_note(key)] for key, value, note in keys]
        methods = ["", f"Methods{'' if chosen else ' (method=...)'} and their options, bare or in options={{...}}:"]
        methods += options_page(chosen)
    example = next((f"{k}={v.replace(' ', '')}" for k, v, _ in keys if v and not v.startswith("{")), "")
    rows = []
    for key, value, note in keys:
        typed = f"{key}={value}" if value else f"{key}:"  # a key with nested keys under it: parts.toe=...
        rows.append(f"  {typed:<34} {note}".rstrip() if len(typed) <= 34 else f"  {typed}\n{'':<37}{note}".rstrip())
    return "\n".join([
        *header, "",
        f"usage: zfviz viz {method} checkpoint=.../checkpoint.pt [key=value ...] [-m] [--cfg job]", "",
        f"Keys, with their defaults (bare, or under viz.: {keys[0][0]}=... is viz.{keys[0][0]}=...):" if keys else "Keys:",
        *rows, *methods, "",
        "Shared keys: checkpoint (a zfviz train checkpoint.pt; default: the newest finished run of model.name",
        "at this preset under runs/), out_dir (default: the run folder, runs/viz/<method>/<time>/), seed, device;",
        "zfviz viz --help lists the methods.", "",
        "Example:",
        f"  zfviz viz {method} checkpoint=runs/figures/cpu/zfnet/checkpoint.pt {example}".rstrip(),
    ])  # fmt: skip


def debug_note(overrides: list[str]) -> str | None:
    """``debug=fast`` says what it does: the first comment line of configs/debug/<name>.yaml."""
    from zfviz.commands import CONFIG_DIR

    name = next((a.partition("=")[2] for a in overrides if a.lstrip("+").startswith("debug=")), None)
    path = f"{CONFIG_DIR}/debug/{name}.yaml"
    if not name or not re.fullmatch(r"\w+", name) or not os.path.isfile(path):
        return None
    notes = [
        ln.lstrip("# ").strip()
        for ln in Path(path).read_text().splitlines()
        if ln.startswith("#") and "@package" not in ln
    ]
    note = notes[0] if notes else "a debugging config"
    return f"zfviz: debug={name}: {note[:1].lower()}{note[1:]}"


def check_run_folder(overrides: list[str], multirun: bool) -> None:
    """Hydra makes the run folder (and its ``.hydra/``) before any command code runs, so a read-only
    place would end in Hydra's traceback: check the nearest existing folder on its path first."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = next((o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+") == key), "runs")
    given = unquoted(given)  # as typed: quote_paths may have quoted it for Hydra
    path = Path(given).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    if not os.access(path, os.W_OK):  # also false for root on a read-only file system
        raise UserError(f"cannot make the run folder {given}: {path} is not writable; choose another with {key}=...")


def main(argv: list[str] | None = None) -> int:
    """The ``zfviz`` entry point; stdout closed early (``zfviz train --help | head``) is not an error."""
    try:
        try:
            return dispatch(list(sys.argv[1:] if argv is None else argv))
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
    except KeyboardInterrupt:  # Ctrl-C while starting (imports, Hydra); a command's own: commands.guarded
        print("zfviz: interrupted; the files written before are whole, none is half-written", file=sys.stderr)
        return 130


def dispatch(argv: list[str]) -> int:
    """Check the command line (one line and exit 2 for a mistake), then run the command's Hydra app."""
    if not argv or argv[0] in ("-h", "--help"):
        print_usage()
        return 0 if argv else 2
    command, (rest, flags) = argv[0], split_flags(argv[1:])
    if command == "viz":
        rest = viz_args(rest)
    try:
        rest = checked(command, rest, flags)
        if command == "viz" and {"-h", "--help"}.intersection(flags) and method_keys(_chosen_method(rest)):
            print(method_page(_chosen_method(rest), _given(rest, "viz.method")))  # zfviz viz attribution --help
            return 0
    except UserError as err:
        print(f"zfviz: error: {err}", file=sys.stderr)
        return 2
    note = debug_note(rest)
    if note and not _QUIET.intersection(f.partition("=")[0] for f in flags):
        print(note, flush=True)
    module = importlib.import_module(f"zfviz.commands.{command}")
    sys.argv = [f"zfviz {command}", *rest, *flags]
    module.main()
    return 0


def print_usage() -> None:
    print(USAGE)
    print("\ncommands:")
    for name, text in COMMANDS.items():
        print(f"  {name:<9} {text}")
    print("\n'zfviz <command> --help' says what a command does, its keys and an example;")
    print("'zfviz <command> --cfg job' prints the resolved config.")


def viz_args(rest: list[str]) -> list[str]:
    """``zfviz viz deconv ...`` selects configs/viz/deconv.yaml (the first bare word is ``viz=``), and a
    method's own keys are scoped under ``viz.``."""
    bare = next((i for i, a in enumerate(rest) if "=" not in a and not a.startswith(("+", "~"))), None)
    if bare is not None:
        rest = [f"viz={rest[bare]}", *rest[:bare], *rest[bare + 1 :]]
    return scope_method_keys(rest)


def checked(command: str, rest: list[str], flags: list[str]) -> list[str]:
    """``rest`` as Hydra will read it (lists and ``~`` quoted unless sweeping), every key and value checked
    against the composed config and the run folder writable; a mistake is a UserError."""
    multirun = any(f in ("-m", "--multirun") for f in flags)
    if command not in COMMANDS:
        raise UserError(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)}")
    check_command_line(rest)  # a path with spaces the shell split: say how to quote it
    rest = quote_paths(rest, multirun)
    if not multirun:
        rest = rewrite_lists(quote_home(rest))
    if not _UNCHECKED.intersection(f.partition("=")[0] for f in flags):
        for overrides in sweep_points(rest) if multirun else [rest]:
            validate(command, overrides, values=multirun)
        check_run_folder(rest, multirun)
    return rest


def _given(rest: list[str], key: str) -> str | None:
    return next((a.partition("=")[2] for a in rest if a.startswith(f"{key}=")), None)


if __name__ == "__main__":
    sys.exit(main())
