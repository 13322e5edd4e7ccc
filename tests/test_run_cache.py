"""The one content-hashed run cache (zfviz.run_cache) and its three users' layouts on disk."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from zfviz import ablation, run_cache
from zfviz.features import FeatureCache


def test_the_digest_is_the_sha256_of_the_keys_sorted_json():
    # Written out by hand: the folders made before run_cache existed were named this way, so they are found.
    text = '{"a": 1, "b": [1, 2], "c": {"x": null, "y": "z"}}'
    want = hashlib.sha256(text.encode()).hexdigest()
    assert run_cache.digest({"c": {"y": "z", "x": None}, "b": (1, 2), "a": 1}, 64) == want
    assert run_cache.entry("root", {"b": [1, 2], "a": 1, "c": {"x": None, "y": "z"}}, length=12, prefix="n-").name == (
        "n-" + want[:12]
    )
    assert run_cache.key({"a": 1}) == {"a": 1} and run_cache.key({"a": 1}, 2) == {"a": 1, "version": 2}


def test_a_lookup_takes_only_entries_whose_marker_is_complete_and_names_the_key(tmp_path):
    marker = tmp_path / "run.json"
    assert run_cache.complete(marker) is None  # a run killed before its marker: not found
    marker.write_text('{"key": {"a": 1}, "steps"')  # damaged
    assert run_cache.complete(marker) is None
    marker.write_text("[1, 2]")  # not a record
    assert run_cache.complete(marker) is None
    run_cache.mark_complete(marker, {"key": {"a": (1, 2)}, "steps": 6})
    assert run_cache.complete(marker) == {"key": {"a": [1, 2]}, "steps": 6}
    assert run_cache.complete(marker, {"a": [1, 2]})["steps"] == 6  # tuples and lists are the same JSON
    assert run_cache.complete(marker, {"a": [1, 3]}) is None  # another key under the same (shortened) name
    bare = tmp_path / "key.json"
    run_cache.mark_complete(bare, {"a": 1})
    assert run_cache.complete(bare, {"a": 1}, field=None) == {"a": 1}
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: nothing half-written left beside it


def test_a_feature_array_without_its_key_file_is_computed_again(tmp_path):
    cache = FeatureCache(tmp_path)
    key = {"model": "m", "dataset": "set", "images": "f", "layer": "fc7", "pool_grid": None}
    cache.save(key, np.ones((3, 2), dtype=np.float32))
    path = cache.path(key)
    assert path.parent == tmp_path / "set" and path.name.startswith("fc7-") and path.suffix == ".npy"
    assert json.loads(path.with_suffix(".json").read_text()) == key
    assert np.array_equal(cache.load(key), np.ones((3, 2)))
    path.with_suffix(".json").unlink()  # killed between the array and its key file
    assert cache.load(key) is None


def test_a_variant_with_a_damaged_run_json_is_not_finished(tmp_path):
    assert not ablation.is_finished(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert not ablation.is_finished(tmp_path)  # a checkpoint alone: resumed, not taken as finished
    (tmp_path / "run.json").write_text("{")
    assert not ablation.is_finished(tmp_path)
    (tmp_path / "run.json").write_text('{"final": null}')
    assert ablation.is_finished(tmp_path)
