"""A trained run's checkpoints carry their preprocessing (tests/test_stored_preprocessing.py reads it), and a
viz command on the run reads no training image."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from zfviz.checkpoint import load_checkpoint
from zfviz.commands import CONFIG_DIR, viz_attribution
from zfviz.data import build_data, fashion_mnist
from zfviz.training import run


@pytest.mark.slow
def test_training_stores_its_statistics_in_every_checkpoint(fmnist_dir, tmp_path, monkeypatch):
    args = ["debug=fast", f"data.root={fmnist_dir}", "model.width=0.125", "model.fc_dims=64", "trainer.epochs=1",
            "trainer.save_epochs=[1]"]  # fmt: skip
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=args)
    run(cfg, tmp_path / "run")
    data = build_data(cfg.data, input_size=cfg.model.input_size, batch_size=8, in_chans=cfg.model.in_chans)
    for name in ("checkpoint.pt", "checkpoint_epoch1.pt"):
        stored = load_checkpoint(tmp_path / "run" / name)["preprocessing"]
        assert stored["normalization"] == data.normalization and stored["classes"] == list(data.classes)
        assert (stored["input_size"], stored["in_chans"]) == (cfg.model.input_size, cfg.model.in_chans)
    read = fashion_mnist.load_split
    seen = []
    monkeypatch.setattr(
        fashion_mnist, "load_split", lambda folder, split, *a: seen.append(split) or read(folder, split, *a)
    )
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        viz = compose(config_name="viz", overrides=["viz=attribution", f"checkpoint={tmp_path / 'run' / 'checkpoint.pt'}",
                                                    f"out_dir={tmp_path / 'viz'}", "device=cpu", "viz.n=2"])  # fmt: skip
    viz_attribution.run(viz)
    assert seen == ["test"] and (tmp_path / "viz" / "attribution_saliency.npz").is_file()
