"""scripts/support_matrix.py (issue 28): how one (net, method) cell is judged, on tiny hand-built nets and
made-up methods (works; refused in one line; FAILED on a traceback, a NaN, a zero map, a map of another shape,
a changed model); the table it writes into a Markdown file; docs/models.md's block against results/; and
the script end to end on three small torchvision nets.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from tests.figure_runs import load_script
from zfviz.attribution import METHODS, attribute
from zfviz.errors import UserError

REPO = Path(__file__).resolve().parents[1]
matrix = load_script("support_matrix")


def tiny(gate: nn.Module | None = None) -> nn.Sequential:
    """Two convs and a linear head, ``gate`` (a ReLU by default) after the first conv."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU() if gate is None else gate, nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip


def image() -> torch.Tensor:
    return torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def judged(model: nn.Module, method: str, run=None) -> tuple[str, str]:
    """(status, detail) of ``method`` (or of ``run``, a made-up method) on ``model``, target class 1."""
    x = image()
    run = run or partial(attribute, model, x, 1, method, **matrix.options(method, 8))
    cell = matrix.judge(model, x, method, run)
    assert cell.seconds >= 0
    return cell.status, cell.detail


# --- the cells --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["saliency", "deconvnet", "lrp", "gradcam", "occlusion", "rise"])
def test_a_method_that_gives_a_map_and_leaves_the_model_works(method):
    assert judged(tiny(), method) == ("works", "")


def test_a_module_the_rules_refuse_is_refused_with_its_one_line():
    model = tiny(nn.LogSigmoid())
    with pytest.raises(UserError) as err:
        attribute(model, image(), 1, "deconvnet")
    assert judged(model, "deconvnet") == ("refused", str(err.value))
    assert "1 (LogSigmoid)" in str(err.value) and "methods that work on it: " in str(err.value)
    status, detail = judged(tiny(), "attention_rollout")  # a net without attention
    assert status == "refused" and "Sequential has none; methods that work on it: " in detail


def _raising(err: Exception):
    def run():
        raise err

    return run


@pytest.mark.parametrize(
    ("err", "want"),
    [
        (RuntimeError("shapes do not match\nat line 3"), ("FAILED", "RuntimeError: shapes do not match")),
        (KeyError("conv9"), ("FAILED", "KeyError: 'conv9'")),
        (AssertionError(), ("FAILED", "AssertionError")),
        (UserError("lrp cannot handle\n1 (X)"), ("FAILED", "a refusal of 2 lines: lrp cannot handle")),
        (
            UserError("lrp cannot handle 1 (X); methods that work on it: saliency, lrp"),
            (
                "FAILED",
                "a refusal naming lrp among the methods that work: lrp cannot handle 1 (X); "
                "methods that work on it: saliency, lrp",
            ),
        ),
        (
            UserError("lrp cannot handle 1 (X); methods that work on it: saliency, lrp_plus"),
            ("refused", "lrp cannot handle 1 (X); methods that work on it: saliency, lrp_plus"),
        ),
    ],
    ids=["traceback", "key error", "bare assertion", "two lines", "names itself", "names another"],
)
def test_a_traceback_or_a_refusal_of_several_lines_or_naming_itself_fails(err, want):
    assert judged(tiny(), "lrp", _raising(err)) == want


@pytest.mark.parametrize(
    ("made", "want"),
    [
        (lambda x: torch.zeros_like(x), "a zero map"),
        (lambda x: torch.full_like(x, float("nan")), "a map with NaN or infinite values"),
        (lambda x: torch.ones(1, 1, 8, 8) / 0, "a map with NaN or infinite values"),
        (lambda x: torch.ones(1, 1, 4, 4), "a map shaped (1, 1, 4, 4) for an input shaped (1, 3, 8, 8)"),
        (lambda x: torch.ones(1, 2, 8, 8), "a map shaped (1, 2, 8, 8) for an input shaped (1, 3, 8, 8)"),
        (lambda x: torch.ones(3, 8, 8), "a map shaped (3, 8, 8) for an input shaped (1, 3, 8, 8)"),
        (lambda x: [x], "returned list, not a tensor"),
    ],
    ids=["zeros", "nan", "inf", "smaller", "two channels", "no batch", "a list"],
)
def test_what_is_no_map_of_the_input_fails(made, want):
    assert judged(tiny(), "made_up", partial(made, image())) == ("FAILED", want)
    assert judged(tiny(), "made_up", partial(lambda x: torch.ones(1, 1, 8, 8) * x.sum(), image()))[0] == "works"


def _weight_scaled(model):
    model[0].weight.data.mul_(2)


def _parameter_replaced(model):
    model[0].weight = nn.Parameter(model[0].weight.detach().clone())


def _gradient_left(model):
    model(image())[0, 1].backward()


def _frozen(model):
    model[2].weight.requires_grad_(False)


def _hook_left(model):
    model[3].register_forward_hook(lambda *_: None)


def _trained(model):
    model.train()


def _padding_changed(model):
    model[0].padding = (0, 0)  # no value changes, the output does


@pytest.mark.parametrize("raises", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize(
    ("change", "want"),
    [
        (_weight_scaled, "its state_dict (0.weight)"),
        (_parameter_replaced, "its parameters (0.weight)"),
        (_gradient_left, "its parameters (0.weight)"),
        (_frozen, "its parameters (2.weight)"),
        (_hook_left, "its modules (3)"),
        (_trained, "its modules (the model)"),
        (_padding_changed, "its output on the image"),
    ],
    ids=["values", "parameter objects", "gradient", "requires_grad", "hook", "train flag", "output"],
)
def test_a_method_that_changes_the_model_fails(change, want, raises):
    model, x = tiny(), image()

    def run():
        change(model)
        if raises:
            raise RuntimeError("gone wrong")
        return attribute(model, x, 1, "saliency")

    after = " (after RuntimeError)" if raises else ""
    assert judged(model, "saliency", run) == ("FAILED", f"model changed: {want}{after}")


def test_a_global_hook_or_grad_mode_left_behind_or_a_broken_forward_fails():
    model, x = tiny(), image()
    handles = []

    def leave_global_hook():
        handles.append(torch.nn.modules.module.register_module_forward_hook(lambda *_: None))
        return x.clone()

    try:
        assert judged(model, "saliency", leave_global_hook) == ("FAILED", "model changed: its global hooks")
    finally:
        handles[0].remove()

    def switch_grad_off():
        torch.set_grad_enabled(False)
        return x.clone()

    try:
        assert judged(model, "saliency", switch_grad_off) == ("FAILED", "model changed: its grad mode")
    finally:
        torch.set_grad_enabled(True)

    def break_forward():
        model[2].stride = (0, 0)
        return x.clone()

    status, detail = judged(model, "saliency", break_forward)
    assert status == "FAILED" and detail.startswith("model changed: its forward pass now raises RuntimeError: ")


def test_cheap_options_are_declared_ones():
    """Every option the sweep sets is one its method declares (a typo would refuse every cell)."""
    for method in METHODS:
        declared = {option.name for option in METHODS[method].accepted}
        assert set(matrix.options(method, 224)) <= declared, method
    assert matrix.options("occlusion", 224) == {"window": 112, "stride": 56}  # 3 x 3 positions
    assert matrix.options("occlusion", 63) == {"window": 31, "stride": 15}


# --- the table ---------------------------------------------------------------------------------------

REFUSAL = "lrp cannot handle 1 (LogSigmoid); methods that work on it: saliency, gradcam"
ROWS = pd.DataFrame(
    [
        ("net_a", "saliency", "works", "", 0.1),
        ("net_a", "lrp", "refused", REFUSAL, 0.2),
        ("net_b", "saliency", "FAILED", "RuntimeError: a `b` | c", 0.1),
        ("net_b", "lrp", "refused", REFUSAL, 0.3),
    ],
    columns=["net", "method", "status", "detail", "seconds"],
)
TABLE = f"""2 nets x 2 methods: 1 works, 2 refused, 1 FAILED (random weights, one image at the smallest size each net \
allows; `results/support_matrix.csv`).

| net | saliency | lrp |
|---|---|---|
| net_a | works | refused (1) |
| net_b | FAILED (2) | refused (1) |

- (1) refused: `{REFUSAL}`
- (2) FAILED: `RuntimeError: a 'b' | c`"""


def test_the_table_has_a_cell_per_net_and_method_and_a_note_per_distinct_line():
    assert matrix.render(ROWS) == TABLE


def test_the_block_is_rewritten_from_the_csv_and_nothing_else(tmp_path, capsys):
    ROWS.to_csv(tmp_path / "support_matrix.csv", index=False)
    page = tmp_path / "models.md"
    before, after = "# Models\n\ntext\n<!-- support: begin (make support-matrix) -->\n", "<!-- support: end -->\nmore\n"
    page.write_text(before + "old table\n" + after)
    assert matrix.main(["--no-sweep", "--out", str(tmp_path), "--docs", str(page)]) == 0
    assert page.read_text() == before + TABLE + "\n" + after
    assert matrix.main(["--no-sweep", "--out", str(tmp_path), "--docs", str(page)]) == 0  # idempotent
    assert page.read_text() == before + TABLE + "\n" + after


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-sweep"], "--no-sweep only rewrites a file's block: give --docs FILE too"),
        (["--no-sweep", "--docs", "{tmp}/models.md"], "no {tmp}/support_matrix.csv: run python scripts/"),
        (["--no-sweep", "--docs", "{tmp}/none.md"], "--docs {tmp}/none.md: no such file"),
        (["--nets", "resnet18", "nonet"], "unknown torchvision classification net 'nonet'"),
        (["--nets", "resnet18", "--methods", "nope"], "unknown attribution method 'nope'"),
    ],
    ids=["no docs", "no csv", "no page", "unknown net", "unknown method"],
)
def test_mistakes_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "models.md").write_text("<!-- support: begin -->\n<!-- support: end -->\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert matrix.main(["--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"support_matrix: error: {message.replace('{tmp}', str(tmp_path))}") and err.count("\n") == 1
    assert not (tmp_path / "support_matrix.csv").exists()


def test_a_page_without_the_block_is_one_line():
    with pytest.raises(UserError, match="README.md has no generated block <!-- support: begin -->"):
        matrix.with_block("# Title\n<!-- support: end -->\n<!-- support: begin -->\n", TABLE, "README.md")


def test_docs_models_md_holds_the_table_the_results_give():
    page = (REPO / "docs" / "models.md").read_text()
    matrix.with_block(page, "", "docs/models.md")  # the block is there, results or not
    csv = REPO / "results" / "support_matrix.csv"
    if not csv.is_file():
        pytest.skip("results/support_matrix.csv is not there yet (make support-matrix writes it and the block)")
    table = matrix.render(pd.read_csv(csv, keep_default_na=False))
    assert matrix.with_block(page, table) == page, "docs/models.md's support matrix is stale: make support-matrix"


# --- end to end --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_sweep_on_small_torchvision_nets(tmp_path, one_thread):
    """Random weights from a file, 32 px, every method: each cell works or is refused in one line; the
    attention methods refuse CNNs; the sidecar names each net's size and target; the page gets the table."""
    nets = ["resnet18", "squeezenet1_0", "mobilenet_v3_small"]
    page = tmp_path / "models.md"
    page.write_text("<!-- support: begin -->\n<!-- support: end -->\n")
    assert matrix.main(["--nets", *nets, "--out", str(tmp_path), "--docs", str(page)]) == 0
    df = pd.read_csv(tmp_path / "support_matrix.csv", keep_default_na=False)
    assert list(df.columns) == ["net", "method", "status", "detail", "seconds"]
    assert list(zip(df["net"], df["method"], strict=True)) == [(n, m) for n in nets for m in sorted(METHODS)]
    assert not df[df["status"] == "FAILED"].to_dict("records")
    refused = df[df["status"] == "refused"]
    assert (refused["detail"].str.count("\n") == 0).all() and (df["seconds"] >= 0).all()
    for net in nets:
        cells = df[df["net"] == net].set_index("method")
        for method in ("attention_rollout", "generic_attention"):
            assert cells.loc[method, "status"] == "refused", (net, method)
            assert "has none; methods that work on it: " in cells.loc[method, "detail"]
        assert cells.loc["saliency", "status"] == "works"
    meta = json.loads((tmp_path / "support_matrix.meta.json").read_text())
    assert [(s["net"], s["input_size"]) for s in meta["sources"]] == [(n, 32) for n in nets]
    assert all(0 <= s["target"] < 1000 for s in meta["sources"])
    assert page.read_text() == "<!-- support: begin -->\n" + matrix.render(df) + "\n<!-- support: end -->\n"


def test_quick_sweeps_the_quick_nets_only(tmp_path, monkeypatch):
    """``--quick`` (the docs' command line, docs/models.md) sweeps ``QUICK_NETS``, a CNN and a transformer,
    with every method, and is one choice with ``--nets`` and ``--all``; the cells here are stand-ins."""
    swept = []

    def sweep_net(name, methods, floor, seed):
        swept.append((name, tuple(methods), floor))
        return [{"net": name, "method": m, "status": "works", "detail": "", "seconds": 0.0} for m in methods], {}

    monkeypatch.setattr(matrix, "sweep_net", sweep_net)
    assert matrix.main(["--quick", "--out", str(tmp_path)]) == 0
    assert swept == [(net, tuple(sorted(METHODS)), 32) for net in ("resnet18", "swin_t")] and len(swept) == 2
    assert pd.read_csv(tmp_path / "support_matrix.csv")["net"].unique().tolist() == ["resnet18", "swin_t"]
    with pytest.raises(SystemExit):
        matrix.parse(["--quick", "--nets", "alexnet"])


def test_skipped_nets_are_left_out_and_named_in_the_sidecar_and_the_docs(tmp_path, monkeypatch):
    """``--all --skip`` (the nets too large for the machine): the others are swept, the skipped ones are named in the
    sidecar and under the docs' table, never shown as cells."""
    swept = []

    def sweep_net(name, methods, floor, seed):
        swept.append(name)
        return [{"net": name, "method": m, "status": "works", "detail": "", "seconds": 0.0} for m in methods], {}

    monkeypatch.setattr(matrix, "sweep_net", sweep_net)
    monkeypatch.setattr(matrix.torchvision.models, "list_models", lambda module: ["alexnet", "vit_h_14", "resnet18"])
    page = tmp_path / "models.md"
    page.write_text("<!-- support: begin -->\nold\n<!-- support: end -->\n")
    args = ["--all", "--skip", "vit_h_14", "--methods", "saliency", "--out", str(tmp_path), "--docs", str(page)]
    assert matrix.main(args) == 0
    assert swept == ["alexnet", "resnet18"]
    assert json.loads((tmp_path / "support_matrix.meta.json").read_text())["skipped"] == ["vit_h_14"]
    assert page.read_text().endswith("Left out of this sweep (`--skip`): vit_h_14.\n<!-- support: end -->\n")


def test_the_smallest_size_is_the_least_the_net_runs_on_not_its_first_weights(monkeypatch):
    """ViT-H/14's weights name 518 px first and 224 px second; built without weights it takes only 224."""

    class Fixed(nn.Module):
        def forward(self, x):
            assert x.shape[-1] == 224, "wrong image size"
            return x.mean(dim=(2, 3))

    class Weights:
        def __init__(self, size):
            self.meta = {"min_size": (size, size)}

    monkeypatch.setattr(matrix.torchvision.models, "get_model_weights", lambda name: [Weights(518), Weights(224)])
    assert matrix.smallest_size(Fixed(), "vit_h_14", 32) == 224
    assert matrix.smallest_size(nn.AdaptiveAvgPool2d(1), "vit_h_14", 32) == 32  # the floor, where the net allows it
    with pytest.raises(ValueError, match="runs on none of"):
        matrix.smallest_size(Fixed(), "vit_h_14", 300)
