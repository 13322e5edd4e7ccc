"""The attribution registry (issue 24): methods found, not listed; options declared once and everything that
reads them (the value checks, the command line, --help, the Markdown table) agreeing with the declaration;
the package importing bottom-up, with no function-level import and nothing from ``zfviz.viz``."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from tests.cli_args import run_zfviz
from zfviz.attribution import METHODS, attribute, method_table, register_method
from zfviz.attribution.options import Option, whole
from zfviz.attribution.smoothgrad import SMOOTH_KEYS
from zfviz.cli import main
from zfviz.commands import CONFIG_DIR
from zfviz.commands.viz_attribution import OWN_KEYS
from zfviz.errors import UserError

PACKAGE = Path(__file__).resolve().parents[1] / "zfviz" / "attribution"


def registered_in_source() -> set[str]:
    """The names ``@register_method(...)`` is called with in ``methods/``, read from the files' text."""
    text = "".join(p.read_text() for p in (PACKAGE / "methods").glob("*.py"))
    return set(re.findall(r"register_method\(\s*\"(\w+)\"", text))


@pytest.mark.slow
def test_importing_the_package_registers_every_method_module_and_nothing_of_viz():
    code = "import sys, json, zfviz.attribution as a; print(json.dumps([sorted(a.METHODS), sorted(sys.modules)]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    methods, modules = json.loads(done.stdout)
    assert set(methods) == registered_in_source() and len(methods) >= 11
    assert not [m for m in modules if m.startswith(("zfviz.viz", "zfviz.commands", "zfviz.vizio"))]


def test_no_function_level_import_and_no_import_upward():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{path.name}:{inner[0].lineno}: a function-level import"
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("zfviz.viz", "zfviz.commands", "zfviz.vizio")), path.name


def test_a_method_takes_exactly_its_declared_options_and_a_name_once():
    def fine(model, inputs, target, *, k):
        return inputs * k

    register_method("test_scale", options=(Option("k", whole(1), 2, "a factor"),))(fine)
    try:
        x = torch.ones(1, 3, 2, 2)
        assert torch.equal(attribute(nn.Identity(), x, 0, "test_scale"), 2 * x)  # the declared default
        assert torch.equal(attribute(nn.Identity(), x, 0, "test_scale", k=3), 3 * x)
        with pytest.raises(ValueError, match="already registered"):
            register_method("test_scale")(fine)
    finally:
        del METHODS["test_scale"]
    with pytest.raises(TypeError, match="exactly its declared options"):
        register_method("test_other", options=(Option("j", whole(1), 2, "?"),))(fine)  # k, not j
    with pytest.raises(TypeError, match="no defaults"):
        register_method("test_other", options=(Option("k", whole(1), 2, "?"),))(lambda m, x, t, *, k=2: x)
    assert "test_other" not in METHODS


class Untouchable(nn.Module):
    def forward(self, x):
        raise AssertionError("the model ran before the options were checked")


@pytest.mark.parametrize(
    "method, options, message",
    [  # issue 29's cases, and the kinds of value: whole numbers, finite numbers, flags, choices, names
        ("integrated_gradients", {"steps": 0}, "steps=0 is not valid for integrated_gradients: give a whole number >= 1"),
        ("integrated_gradients", {"steps": 2.5}, "steps=2.5 is not valid .*: give a whole number >= 1"),
        ("integrated_gradients", {"steps": True}, "steps=true is not valid"),
        ("lrp", {"epsilon": -1}, "epsilon=-1 is not valid for lrp: give a finite number >= 0"),
        ("lrp", {"epsilon": float("nan")}, "epsilon=nan is not valid for lrp"),
        ("saliency", {"smooth_sigma": float("nan")}, "smooth_sigma=nan is not valid for saliency: give a finite number"),
        ("saliency", {"smooth_sigma": float("inf")}, "smooth_sigma=inf is not valid"),
        ("occlusion", {"window": 0}, "window=0 is not valid for occlusion: give a whole number >= 1, or null"),
        ("occlusion", {"stride": -2}, "stride=-2 is not valid for occlusion"),
        ("gradcam", {"upsample": "maybe"}, "upsample=maybe is not valid for gradcam: give true or false"),
        ("gradcam", {"layer": ""}, "layer= is not valid for gradcam: give a name, or null"),
        ("rise", {"p": 0}, r"p=0 is not valid for rise: give a finite number > 0 and <= 1"),
        ("rise", {"masks": -1}, "masks=-1 is not valid for rise"),
        ("lrp", {"rule": "gamma"}, "rule=gamma is not valid for lrp: give one of epsilon, alpha_beta, zplus, or null"),
        ("deconvnet", {"norm": "skip"}, "norm=skip is not valid for deconvnet: give one of pass, backprop"),
        ("gradcam", {"smooth_samples": 2}, r"SmoothGrad \(smooth_samples, .*\) applies to gradient methods, not gradcam"),
        ("saliency", {"smooth_seed": 1}, "smooth_seed set without SmoothGrad"),
        ("saliency", {"rule": "epsilon"}, "rule is not an option of saliency; its options: smooth_samples, smooth_sigma"),
        ("occlusion", {"steps": 3}, "steps is not an option of occlusion; its options: window, stride, fill, chunk_size$"),
    ],
)  # fmt: skip
def test_a_bad_value_is_one_line_naming_the_key_and_what_it_accepts_before_any_work(method, options, message):
    with pytest.raises(UserError, match=message) as err:
        attribute(Untouchable(), torch.zeros(1, 3, 8, 8), 0, method, **options)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_the_command_line_refuses_a_bad_option_value_with_exit_2_before_reading_anything(tmp_path):
    for args, says in [
        (["method=occlusion", "options={window:0}"], "window=0 is not valid for occlusion"),
        (["method=lrp", "epsilon=-1"], "epsilon=-1 is not valid for lrp: give a finite number >= 0"),
        (["method=gradcam", "upsample=maybe"], "upsample=maybe is not valid for gradcam: give true or false"),
        (["smooth_samples=2", "smooth_sigma=nan"], "smooth_sigma=nan is not valid for saliency"),
    ]:
        done = run_zfviz(
            "viz", "attribution", "checkpoint=missing.pt", f"out_dir={tmp_path / 'out'}", *args, cwd=tmp_path
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_commands_option_keys_are_declared_options():
    """Every key of configs/viz/attribution.yaml the command does not read itself is passed to the method
    as an option; each must be one a registered method declares, under the same name (``start`` is
    the deconvnet's: ``seed`` is only ever a random seed)."""
    keys = set(OmegaConf.load(Path(CONFIG_DIR, "viz", "attribution.yaml"))) - set(OWN_KEYS)
    declared = {o.name for m in METHODS.values() for o in m.options} | set(SMOOTH_KEYS)
    assert "start" in keys and "start" in {o.name for o in METHODS["deconvnet"].options}
    assert keys <= declared, keys - declared


def help_page(capsys, *argv: str) -> str:
    assert main(["viz", "attribution", *argv, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_help_lists_every_methods_declared_options_or_one_methods(capsys):
    page = help_page(capsys)
    for name, spec in METHODS.items():
        assert f"\n    {name}: " in page
        for option in spec.options:
            assert re.search(rf"^      {option.name}=\S+ +{re.escape(option.help)}", page, re.M), (name, option.name)
    assert re.search(r"^  epsilon=null +lrp: the epsilon rule's stabilizer \(0: LRP-0\)$", page, re.M)  # a bare key
    lrp = help_page(capsys, "method=lrp")
    assert "\n    lrp: " in lrp and "\n    rise: " not in lrp and "SmoothGrad, around" not in lrp
    assert "\n      first_rule=null " in lrp and "\n      masks=" not in lrp
    assert "\n      smooth_samples=10 " in help_page(capsys, "method=saliency")
    assert main(["viz", "attribution", "method=fancy", "--help"]) == 2
    assert "unknown attribution method 'fancy'" in capsys.readouterr().err


def test_the_markdown_table_has_a_row_per_declared_option():
    lines = method_table().splitlines()
    assert lines[0] == "| method | option | type | default | accepts | what it does |"
    rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in lines[2:]]
    assert all(len(cells) == 6 for cells in rows)  # a | inside a cell is escaped
    starts = [i for i, cells in enumerate(rows) if cells[0].strip()]
    names = [rows[i][0].strip().strip("*`") for i in starts]
    assert names == [*sorted(METHODS), "SmoothGrad"]
    for i, name in zip(starts, names, strict=True):
        block = rows[i + 1 : next((j for j in starts if j > i), len(rows))]
        declared = METHODS[name].options if name in METHODS else None
        listed = [cells[1].strip().strip("`") for cells in block]
        assert listed == ([o.name for o in declared] if declared is not None else list(SMOOTH_KEYS))
