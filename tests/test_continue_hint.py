"""The line an interrupted command ends with names a command the user can type: the Hydra job of
``zfviz viz <method>`` is named ``viz`` and carries ``viz=<method>`` among its overrides, which the dispatcher
reads back as the same method."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hydra.core.hydra_config import HydraConfig

from zfviz.commands import _how_to_continue


def _job(monkeypatch, name: str, overrides: list[str]) -> None:
    hydra = SimpleNamespace(job=SimpleNamespace(name=name), overrides=SimpleNamespace(task=overrides))
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hydra))


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ("viz", "; run the same command again to continue: zfviz viz viz=invert method=learned 'layers=[conv1]'"),
        ("ablate", "; run the same command again to continue: zfviz ablate viz=invert method=learned 'layers=[conv1]'"),
    ],
)
def test_the_continue_line_is_a_command_a_user_can_type(monkeypatch, job, expected):
    _job(monkeypatch, job, ["viz=invert", "method=learned", "layers=[conv1]"])
    assert _how_to_continue("runs/x") == expected


def test_train_resumes_in_its_own_folder(monkeypatch):
    _job(monkeypatch, "train", ["model=zfnet", "resume=false"])
    assert _how_to_continue("runs/x") == "; resume with: zfviz train model=zfnet resume=true hydra.run.dir=runs/x"
    assert _how_to_continue(None) == ""
