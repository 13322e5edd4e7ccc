"""Table 3 ablations: every variant builds and trains, parameter counts, the result cache, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from matplotlib.figure import Figure

from tests.cli_args import run_script, run_zfviz
from zfviz import ablation
from zfviz.checkpoint import checkpoint_header, keep_weights_only, model_from_checkpoint
from zfviz.commands import CONFIG_DIR
from zfviz.commands import ablate as ablate_command
from zfviz.errors import UserError
from zfviz.models import build_model
from zfviz.plotting.ablation import ablation_bars
from zfviz.results import paper_table

REPO = Path(__file__).resolve().parents[1]
PAPER_MODEL = {"input_size": 224, "in_chans": 3, "width": 1.0, "fc_dims": 4096, "drop": [], "dropout": 0.5}
CPU_MODEL = {**PAPER_MODEL, "input_size": 64, "width": 0.25, "fc_dims": 512, "init": "kaiming"}


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config_name="ablate", overrides=overrides)


def expected_parameters(name: str, num_classes: int = 1000) -> int:
    """Parameter count of a paper-size variant from the layer table (PROTOCOL.md, Fig. 3), by hand."""
    v = ablation.VARIANTS[name]
    k1 = 11 if v.model == "alexnet" else 7
    maps = [96, 256, 512, 1024, 512] if v.model == "zfnet_b" else [96, 256, 384, 384, 256]
    kernels = [k1, 5, 3, 3, 3]
    total, c_in = 0, 3
    for layer, out, k in zip(["conv1", "conv2", "conv3", "conv4", "conv5"], maps, kernels, strict=True):
        if layer not in v.drop:
            total += c_in * out * k * k + out
            c_in = out
    features = c_in * 6 * 6  # pool5 is 6x6 at 224 px for both nets, whatever conv3/conv4 do (stride 1, pad 1)
    fc = round(4096 * v.fc_scale)
    for layer in ("fc6", "fc7"):
        if layer not in v.drop:
            total += features * fc + fc
            features = fc
    return total + features * num_classes + num_classes


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(ablation.VARIANTS))
def test_every_variant_has_the_expected_parameter_count_at_1000_classes(name):
    model_name, kw = ablation.variant_model_kwargs(name, PAPER_MODEL)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_model(model_name, num_classes=1000, **kw)
    assert n_params(model) == expected_parameters(name)


@pytest.mark.parametrize(
    "name,count",
    [
        ("zfnet", 62_357_608),
        ("alexnet", 62_378_344),
        ("zfnet_fc2048", 28_848_232),
        ("zfnet_fc8192", 154_542_184),
        ("zfnet_b", 107_627_624),
    ],
)
def test_the_papers_parameter_counts(name, count):
    model_name, kw = ablation.variant_model_kwargs(name, PAPER_MODEL)
    with torch.device("meta"):
        assert n_params(build_model(model_name, **kw)) == count


def _forward_backward(name: str, model_cfg: dict, batch: int = 2) -> None:
    model_name, kw = ablation.variant_model_kwargs(name, model_cfg)
    model = build_model(model_name, num_classes=10, **kw)
    present = {n for n, _ in model.named_children()}
    assert not present & set(ablation.VARIANTS[name].drop)
    size = model_cfg["input_size"]
    out = model(torch.randn(batch, 3, size, size))
    assert out.shape == (batch, 10)
    out.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", list(ablation.VARIANTS))
def test_every_variant_trains_at_the_cpu_preset_size(name):
    _forward_backward(name, CPU_MODEL)


@pytest.mark.slow
def test_every_variant_trains_at_the_paper_preset_size():
    # 224 px geometry with the cpu preset's widths: the full widths' sizes are checked on the meta device above.
    for name in ablation.VARIANTS:
        _forward_backward(name, {**CPU_MODEL, "input_size": 224, "dropout": 0.0}, batch=1)


def test_variants_cover_every_row_of_the_papers_table_once():
    paper = paper_table("table3_ablation")
    ours = [(v.base, v.paper_row) for v in ablation.VARIANTS.values() if v.paper_row]
    assert sorted(ours) == sorted(zip(paper["base"], paper["variant"], strict=True))


def test_fc_sizes_scale_with_the_preset():
    cpu = ablation.apply_variant(compose_cfg([]), "zfnet_fc2048")
    paper = ablation.apply_variant(compose_cfg(["preset=paper"]), "zfnet_b_fc8192")
    assert (cpu.model.name, cpu.model.fc_dims) == ("zfnet", 256)
    assert (paper.model.name, paper.model.fc_dims, list(paper.model.drop)) == ("zfnet_b", 8192, [])
    assert list(ablation.apply_variant(compose_cfg([]), "alexnet_no3467").model.drop) == [
        "conv3",
        "conv4",
        "fc6",
        "fc7",
    ]


def test_experiment_table3_lists_every_variant_and_sets_the_budget_per_preset():
    cpu = compose_cfg(["experiment=table3"])
    assert list(cpu.variant) == list(ablation.VARIANTS)
    assert (cpu.trainer.epochs, cpu.data.limit, cpu.optim.lr, cpu.optim.warmup_epochs) == (6, 10000, 0.02, 3)
    paper = compose_cfg(["experiment=table3", "preset=paper"])
    assert (paper.trainer.epochs, paper.data.limit, paper.optim.lr, paper.optim.schedule) == (70, None, 0.01, "plateau")
    fast = compose_cfg(["experiment=table3", "debug=fast", "variant=[zfnet]"])
    assert (fast.trainer.epochs, fast.data.limit, list(fast.variant)) == (1, 256, ["zfnet"])
    assert compose_cfg([]).variant is None


@pytest.mark.slow
def test_run_key_ignores_how_a_run_is_carried_out_but_not_what_it_trains():
    base = ablation.run_key(ablation.apply_variant(compose_cfg(["drop=[fc6,fc7]"]), None))
    same = [
        ["drop=[fc7,fc6]"],
        ["drop=[fc6,fc7]", "trainer.progress=false", "device=cpu", "resume=true", "cache_dir=/elsewhere"],
        ["variant=zfnet_no67"],  # the named row and the drop list are the same net
    ]
    for overrides in same:
        cfg = compose_cfg(overrides)
        name = cfg.variant if cfg.variant else None
        assert ablation.run_key(ablation.apply_variant(cfg, name)) == base, overrides
    for overrides in (["drop=[fc6]"], ["drop=[fc6,fc7]", "seed=1"], ["drop=[fc6,fc7]", "data.limit=100"]):
        assert ablation.run_key(ablation.apply_variant(compose_cfg(overrides), None)) != base, overrides


@pytest.mark.parametrize(
    "drop,message",
    [
        (["conv1"], "cannot drop conv1; droppable layers are: conv3, conv4, fc6, fc7"),
        (["fc8"], "cannot drop fc8; droppable layers are: conv3, conv4, fc6, fc7"),
        (["fc6", "fc9"], "cannot drop fc9"),
        (["fc6", "fc6"], "drop names fc6 twice; droppable layers are"),
    ],
)
def test_bad_drop_lists_are_user_errors(drop, message):
    with pytest.raises(UserError, match=message):
        ablation.normalize_drop(drop)


def test_bad_variants_are_user_errors_before_any_data_is_read(tmp_path):
    with pytest.raises(UserError, match="unknown variant zfnet_no5; Table 3 variants are: alexnet, alexnet_no34"):
        ablate_command.run(compose_cfg(["variant=zfnet_no5"]), tmp_path)
    with pytest.raises(UserError, match="give either variant= .* or drop="):
        ablate_command.run(compose_cfg(["variant=zfnet", "drop=[fc7]"]), tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    result = run_zfviz("ablate", "drop=conv1", cwd=tmp_path)  # the dispatcher's message: no new process needed
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("zfviz: error: cannot drop conv1; droppable layers are: conv3, conv4, fc6, fc7")


def _tiny(fmnist_dir: Path, cache: Path, *overrides: str):
    return compose_cfg(
        ["debug=fast", f"data.root={fmnist_dir}", "data.limit=64", "trainer.batch_size=32", f"cache_dir={cache}"]
        + list(overrides)
    )


@pytest.mark.slow
def test_the_cache_trains_only_what_is_missing(fmnist_dir, tmp_path, monkeypatch):
    trained = []
    real_run = ablate_command.training.run

    def counting_run(cfg, out_dir):
        trained.append((cfg.model.name, list(cfg.model.drop)))
        return real_run(cfg, out_dir)

    monkeypatch.setattr(ablate_command.training, "run", counting_run)
    cache = tmp_path / "cache"
    # The first variant keeps its training state, as one killed after its last checkpoint but before run.json would.
    monkeypatch.setattr(ablate_command, "keep_weights_only", lambda path: None)
    first = ablate_command.run(_tiny(fmnist_dir, cache, "variant=[zfnet_no67]"), tmp_path / "a")
    finished = Path(first[0]["cache_dir"]) / "run.json"
    stamp = finished.stat().st_mtime_ns
    monkeypatch.setattr(ablate_command, "keep_weights_only", keep_weights_only)
    second = ablate_command.run(_tiny(fmnist_dir, cache, "variant=[alexnet_no3467,zfnet_no67]"), tmp_path / "b")
    # A finished variant keeps its weights, not its optimizer state (it is never continued); a cached one is untouched.
    assert not checkpoint_header(Path(second[0]["cache_dir"]) / "checkpoint.pt")["resumable"]
    assert checkpoint_header(finished.parent / "checkpoint.pt")["resumable"]
    assert model_from_checkpoint(Path(second[0]["cache_dir"]) / "checkpoint.pt")[0] is not None
    assert trained == [("zfnet", ["fc6", "fc7"]), ("alexnet", ["conv3", "conv4", "fc6", "fc7"])]
    assert [e["cached"] for e in second] == [False, True]
    assert second[1] == {**first[0], "cached": True}
    assert finished.stat().st_mtime_ns == stamp
    # The same net asked for by its drop list is the same cache entry.
    by_drop = ablate_command.run(_tiny(fmnist_dir, cache, "drop=[fc7,fc6]"), tmp_path / "c")
    assert by_drop[0]["cached"] and by_drop[0]["cache_dir"] == first[0]["cache_dir"]
    assert by_drop[0]["variant"] == "zfnet drop=fc6,fc7 fc=512"
    assert json.loads((tmp_path / "b" / "variants.json").read_text()) == second
    assert len(trained) == 2
    # A variant stopped after its last checkpoint but before run.json resumes, whichever way it is named.
    finished.unlink()
    resumed = ablate_command.run(_tiny(fmnist_dir, cache, "drop=[fc6,fc7]"), tmp_path / "d")
    assert len(trained) == 3 and not resumed[0]["cached"]
    assert not checkpoint_header(finished.parent / "checkpoint.pt")["resumable"]  # finished now: weights only
    assert {k: resumed[0][k] for k in ("val_top1_err", "train_top1_err")} == {
        k: first[0][k] for k in ("val_top1_err", "train_top1_err")
    }

    # The table: our rows beside the paper's, and its figure.
    table = ablation.table3(ablation.read_manifests([tmp_path / "a", tmp_path / "b"]))
    assert list(table["variant"]) == ["alexnet_no3467", "zfnet_no67"]  # Table 3's order, one row per net
    row = table.set_index("variant").loc["alexnet_no3467"]
    assert (row["paper_val_top1_err"], row["paper_val_top5_err"], row["parameters"]) == (71.3, 50.1, 84_778)
    assert pd.isna(table.set_index("variant").loc["zfnet_no67", "paper_val_top1_err"])
    # Trained again (a fresh cache), a variant's row sits beside its first run; one in one run only drops out.
    again = ablate_command.run(_tiny(fmnist_dir, tmp_path / "cache2", "variant=[zfnet_no67]"), tmp_path / "e")
    repeat = ablation.repeat_table(table, ablation.table3(again))
    assert list(repeat["variant"]) == ["zfnet_no67"]
    assert repeat["val_top1_err_repeat"].iloc[0] == again[0]["val_top1_err"]
    assert repeat["val_top1_diff"].iloc[0] == round(again[0]["val_top1_err"] - first[0]["val_top1_err"], 2)
    assert repeat["run_dir_repeat"].iloc[0] == again[0]["cache_dir"] != repeat["run_dir"].iloc[0]
    fig = ablation_bars(table)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(fig.axes[0].patches) == 2 and len(fig.axes[1].patches) == 1


def test_an_interrupted_variant_resumes_in_its_cache_folder(tmp_path, monkeypatch):
    cfg = ablation.apply_variant(compose_cfg([f"cache_dir={tmp_path}"]), "zfnet_no7")
    folder = ablation.cache_dir_for(cfg, tmp_path)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"")
    seen = {}

    def fake_run(cfg, out_dir):
        seen.update(resume=cfg.resume, out_dir=Path(out_dir))
        return {"run_dir": str(out_dir)}

    monkeypatch.setattr(ablate_command.training, "run", fake_run)
    ablate_command.train_variant(cfg, tmp_path)
    assert seen == {"resume": str(folder), "out_dir": folder}


@pytest.mark.slow
def test_cli_table3_end_to_end_writes_the_csv_and_figure(fmnist_dir, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "results"
    args = [
        "ablate", "experiment=table3", "debug=fast", f"data.root={fmnist_dir}", "data.limit=64",
        "variant=zfnet,zfnet_no3467", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    result = run_zfviz(*args, cwd=REPO)
    assert result.returncode == 0, result.stderr
    # The script as make figures runs it, a process of its own; the repeat and the bad name below in this one.
    script = [sys.executable, "scripts/table3.py", "--preset", "cpu", "--out", str(out), str(run_dir)]
    result = subprocess.run(script, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "table3_cpu.csv")
    assert list(table["variant"]) == ["zfnet", "zfnet_no3467"]
    assert list(table["paper_val_top1_err"].fillna(-1)) == [38.4, -1]
    assert (out / "fig_table3_cpu.png").stat().st_size > 0
    fig_meta = json.loads((out / "fig_table3_cpu.meta.json").read_text())
    assert fig_meta["figure"] == "fig_table3_cpu.png" and fig_meta["table"] == "table3_cpu.csv" and fig_meta["sources"]
    meta = json.loads((out / "table3_cpu.meta.json").read_text())
    assert [s["variant"] for s in meta["sources"]] == ["zfnet", "zfnet_no3467"]
    # The same run as its own repeat: every row matches itself, zero difference, under the given name.
    repeat = [*script, "--repeat", str(run_dir), "--repeat-name", "seed1"]
    result = run_script(*repeat[1:], cwd=REPO)
    assert result.returncode == 0, result.stderr
    again = pd.read_csv(out / "table3_cpu_seed1.csv")
    assert list(again["variant"]) == ["zfnet", "zfnet_no3467"] and (again["val_top1_diff"] == 0).all()
    assert not (out / "table3_cpu_repeat.csv").exists()
    bad = run_script(*repeat[1:-1], "../x", cwd=REPO)
    assert (
        bad.returncode == 2
        and bad.stderr.strip() == "table3: error: --repeat-name must be letters, digits, - or _, got '../x'"
    )


def test_a_stopped_ablate_run_is_not_taken_for_a_finished_one(fmnist_dir, tmp_path, monkeypatch):
    """make and the tables take variants.json for a finished run: a run stopped after its first variant
    leaves only variants.partial.json (found by killing make rehearsal, whose Table 3 then had 6 of 16 rows)."""
    calls = []

    def first_then_killed(cfg, out_dir):
        calls.append(cfg.model.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return {"run_dir": str(out_dir), "final": {"val_top1_err": 1.0}, "parameters": 1}

    monkeypatch.setattr(ablate_command.training, "run", first_then_killed)
    with pytest.raises(KeyboardInterrupt):
        ablate_command.run(_tiny(fmnist_dir, tmp_path / "cache", "variant=[zfnet_no67,zfnet_no7]"), tmp_path / "a")
    assert not (tmp_path / "a" / "variants.json").exists()
    assert [e["variant"] for e in json.loads((tmp_path / "a" / "variants.partial.json").read_text())] == ["zfnet_no67"]
    with pytest.raises(UserError, match="no variants.json\\); it was stopped; run it again to finish"):
        ablation.read_manifests([tmp_path / "a"])
