"""Network dissection (issue 15): the streaming quantile and the in-memory selection against numpy,
the IoU counts on hand-made folders and against a dense oracle, an indicator unit found as its
concept's detector, batch size and the caches never changing the table, and ``zfviz viz dissect``."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.figure_runs import fake_run, load_script
from tests.test_rise import bilinear_index
from zfviz.dissection import Broden, BrodenItem, Label, dissect, write_broden
from zfviz.dissection.batches import Batches
from zfviz.dissection.dissect import Tally, category_index, strongest_images, tally, unit_maps, upsample
from zfviz.dissection.quantile import float_keys, key_floats, quantile_in_memory, select_quantile
from zfviz.errors import UserError

RED, BLUE, SQUARE, REDSCENE = 1, 2, 3, 4
LABELS = [
    Label(RED, "red", "color"),
    Label(BLUE, "blue", "color"),
    Label(SQUARE, "square", "object"),
    Label(REDSCENE, "red-scene", "scene"),
]
CATEGORIES = ["color", "object", "scene"]


# --- the streaming quantile ---------------------------------------------------------------------


def test_float_keys_sort_as_floats_and_invert():
    x = torch.tensor([3.5, -0.0, 0.0, -2.0, 1e-30, -1e30, float("inf"), -float("inf"), 7.0])
    keys = float_keys(x)
    assert torch.equal(key_floats(keys), x)
    assert np.array_equal(x[keys.argsort()].numpy(), np.sort(x.numpy()))


def assert_numpy_quantile(got: np.ndarray, values: np.ndarray, quantile: float) -> None:
    """``got`` (float32, one per row of ``values``) is ``np.quantile(row, 1 - quantile)`` under the stated
    method ``'linear'`` (numpy's default, NetDissect's threshold), with a tolerance instead of bit equality:
    numpy has changed how it interpolates in float32 between versions, while the order statistics are what a
    wrong selection gets wrong. So: ``got`` lies between the two order statistics the method interpolates
    (``method='lower'``/``'higher'``, public numpy) and within 4 float32 rounding steps of the largest of
    them from the float64 interpolation; adjacent order statistics here are ~1e-3 apart, ~1e4 such steps."""
    assert got.dtype == np.float32
    low, high = (np.quantile(values, 1 - quantile, axis=1, method=m) for m in ("lower", "higher"))
    want = np.quantile(values.astype(np.float64), 1 - quantile, axis=1, method="linear")
    assert ((low <= got) & (got <= high)).all(), (got, low, high)
    tolerance = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(low), np.abs(high))
    assert (np.abs(got.astype(np.float64) - want) <= tolerance).all(), (got, want)


@pytest.mark.parametrize(
    ("shape", "quantile", "chunk"),
    [((37, 5, 6, 7), 0.005, 4), ((50, 4, 9, 9), 0.3, 7), ((9, 3, 5, 5), 0.0, 2), ((9, 3, 5, 5), 1.0, None),
     ((1, 2, 1, 1), 0.005, None), ((64, 6), 0.005, 10)],
)  # fmt: skip
def test_streaming_quantile_equals_numpy(shape, quantile, chunk):
    """Mostly-zero ReLU units (the hard case for a histogram), a dense unit, any batching: numpy's
    ``np.quantile(values, 1 - q)``."""
    a = torch.relu(torch.randn(shape)) * (torch.rand(shape) < 0.1)
    a[:, 0] = torch.randn(shape[0], *shape[2:])  # negative values too
    a[:, 1] = 0.25  # a constant unit
    got = quantile_in_memory(a, quantile, chunk).numpy()
    assert_numpy_quantile(got, a.transpose(0, 1).reshape(shape[1], -1).numpy(), quantile)


@pytest.mark.parametrize(
    ("shape", "quantile"),
    [((37, 5, 6, 7), 0.005), ((50, 4, 9, 9), 0.3), ((9, 3, 5, 5), 0.0), ((9, 3, 5, 5), 1.0), ((1, 2, 1, 1), 0.005),
     ((21, 3, 40, 40), 0.005), ((21, 3, 40, 40), 0.05), ((14, 3, 50, 50), 0.9)],
)  # fmt: skip
def test_selection_equals_numpy_and_the_radix_select(shape, quantile):
    """The in-memory selection: numpy's quantile, and the streaming radix select's value for value (the
    same interpolation of the same order statistics: equal); units of 33,600 values at the top quantiles
    0.005 and 0.05 select above a sampled bound, the others among all their values."""
    a = torch.relu(torch.randn(shape)) * (torch.rand(shape) < 0.1)
    a[:, 0] = torch.randn(shape[0], *shape[2:])
    a[:, 1] = 0.25
    got = select_quantile((a[:, k].reshape(-1) for k in range(shape[1])), quantile).numpy()
    assert_numpy_quantile(got, a.transpose(0, 1).reshape(shape[1], -1).numpy(), quantile)
    assert np.array_equal(got, quantile_in_memory(a, quantile).numpy())


def test_selection_survives_a_misleading_sample():
    """A sample that sees only the large values would put the bound above the wanted order statistic;
    the check catches it and the selection runs over every value: still numpy's result."""
    values = torch.zeros(100_000)
    values[:: 100_000 // 4096] = 10.0  # exactly the sampled positions are large
    values[1::7] = torch.rand(len(values[1::7]))
    got = select_quantile([values], 0.05)
    assert_numpy_quantile(got.numpy(), values[None].numpy(), 0.05)


# --- hand-made folders --------------------------------------------------------------------------


def probe(weights, bias=None, pool: int = 1) -> nn.Sequential:
    """``conv1`` a 1x1 conv of the RGB input (inputs in [0, 1]), ``relu1``; ``pool`` > 1 averages
    ``pool`` x ``pool`` blocks first, so maps are coarser than the masks."""
    conv = nn.Conv2d(3, len(weights), 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weights, dtype=torch.float32)[:, :, None, None])
        conv.bias.copy_(torch.tensor(bias if bias is not None else [0.0] * len(weights)))
    layers = [("pool0", nn.AvgPool2d(pool))] if pool > 1 else []
    return nn.Sequential(OrderedDict([*layers, ("conv1", conv), ("relu1", nn.ReLU())]))


def squares(count: int, size: int = 32, side: int = 2, seed: int = 0) -> list[BrodenItem]:
    """Gray images with one red and one blue ``side``-px square each, at random places: color masks
    (red, blue), an object mask (both squares) and, on even images, the image-level red-scene label."""
    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(count):
        image = torch.full((3, size, size), 128, dtype=torch.uint8)
        color = torch.zeros(size, size, dtype=torch.int64)
        cells = torch.randperm((size // side) ** 2, generator=gen)[:2]
        for cell, (label, rgb) in zip(cells.tolist(), [(RED, (255, 0, 0)), (BLUE, (0, 0, 255))], strict=True):
            r, c = divmod(cell, size // side)
            box = (slice(r * side, (r + 1) * side), slice(c * side, (c + 1) * side))
            image[(slice(None), *box)] = torch.tensor(rgb, dtype=torch.uint8)[:, None, None]
            color[box] = label
        scene = {"scene": [REDSCENE]} if i % 2 == 0 else {}
        items.append(BrodenItem(image, {"color": [color], "object": [(color > 0).long() * SQUARE]}, scene))
    return items


@pytest.fixture
def square_folder(tmp_path):
    return write_broden(tmp_path / "squares", squares(6), LABELS, CATEGORIES)


RED_UNIT = [[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [0.0, 0.0, 0.0]]  # red, blue, nothing


def test_indicator_unit_is_its_concepts_detector(square_folder):
    """Unit 0 is 1 on red pixels and 0 elsewhere; red covers 4/1024 < 0.5% of the pixels, so T_0 = 0
    and M_0 is exactly the red squares: IoU 1 with red, 0 with blue; unit 1 the same for blue."""
    model = probe(RED_UNIT, bias=[0.0, 0.0, -1.0])
    df = dissect(model, square_folder, ["conv1"], batch_size=4)
    assert list(df.columns[:6]) == ["layer", "unit", "concept", "category", "iou", "threshold"]
    assert df[["concept", "category"]].values.tolist() == [["red", "color"], ["blue", "color"], ["", ""]]
    assert df["iou"].tolist() == [1.0, 1.0, 0.0]
    assert df["threshold"].tolist() == [0.0, 0.0, 0.0]
    assert df["detector"].tolist() == [True, True, False]


def test_coarse_maps_upsampled_still_find_the_concept(tmp_path):
    """Maps at half the mask resolution, upsampled bilinearly: IoU with red near 1, with blue near 0."""
    root = write_broden(tmp_path / "big", squares(4, size=32, side=4), LABELS, CATEGORIES)
    model = probe(RED_UNIT[:1], pool=2)
    tallies = tally(model, Broden(root), {"conv1": "relu1"}, {"conv1": torch.tensor([0.5])})
    iou = tallies["conv1"].iou(category_index(Broden(root)))[0]
    assert iou[RED] > 0.5 and iou[BLUE] == 0.0
    assert iou[RED] == iou.max()


def test_counts_on_a_hand_made_pair(tmp_path):
    """Unit = the red channel, T = 0.5. Image A: top row on, a part mask on the left column; image B:
    all on, a color mask on its top row and the image-level scene label, no part mask. B's pixels
    do not count against the part concept (its category is not annotated in B)."""
    a = torch.zeros(3, 2, 2, dtype=torch.uint8)
    a[0, 0] = 255
    b = torch.zeros(3, 2, 2, dtype=torch.uint8)
    b[0] = 255
    labels = [Label(1, "toe", "part"), Label(2, "red", "color"), Label(3, "shop", "scene")]
    items = [
        BrodenItem(a, {"part": [torch.tensor([[1, 0], [1, 0]])]}),
        BrodenItem(b, {"color": [torch.tensor([[2, 2], [0, 0]])]}, {"scene": [3]}),
    ]
    root = write_broden(tmp_path / "pair", items, labels, ["part", "color", "scene"])
    broden = Broden(root)
    counts = tally(probe([[1.0, 0.0, 0.0]]), broden, {"c": "relu1"}, {"c": torch.tensor([0.5])}, batch_size=1)["c"]
    assert counts.both.tolist() == [[0, 1, 2, 4]]
    assert counts.labels.tolist() == [0, 2, 2, 4]
    assert counts.units.tolist() == [[2, 4, 4]]  # on-pixels in images annotated with part, color, scene
    iou = counts.iou(category_index(broden))[0]
    assert iou[1:].tolist() == pytest.approx([1 / 3, 2 / 4, 4 / 4], abs=0)


def test_tally_iou_by_hand():
    counts = Tally(torch.tensor([[0, 3, 0]]), torch.tensor([[5, 7]]), torch.tensor([0, 4, 2]))
    iou = counts.iou(torch.tensor([-1, 1, 0]))
    assert iou.tolist() == [[0.0, 3 / (7 + 4 - 3), 0.0]]


class MapsOf(nn.Module):
    """Given maps, one per image: image ``i`` carries ``i`` in its first pixel, so a map never depends on how
    the images are batched, nor on how many passes dissect makes over them."""

    def __init__(self, maps: torch.Tensor) -> None:
        super().__init__()
        self.maps = maps

    def forward(self, x):
        return self.maps[(x[:, 0, 0, 0] * 255).round().long()]


def test_batch_size_never_changes_the_table(tmp_path):
    """Batches of 1, 4 and 64 images: the same table. The maps are given (``MapsOf``), so what varies is ours
    alone: how dissect batches, selects T_k, upsamples and counts. Exact where exactness is a property of
    that code: no upsampled value lies within 1e-5 of its unit's T_k (checked below in float64), so the
    last-bit differences PyTorch's bilinear kernel shows between batch shapes (it vectorizes by the CPU's
    vector width) cannot move a pixel across T_k, and the counts, hence concept, IoU and detector, must be
    equal; T_k within float32 rounding."""
    items = squares(6)
    for i, item in enumerate(items):
        item.image[0, 0, 0] = i
    folder = write_broden(tmp_path / "numbered", items, LABELS, CATEGORIES)
    maps = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    maps[:, 0] = maps[:, 0].relu() * 4  # a rectified unit: zeros below T_k, exact under any kernel
    model = nn.Sequential(OrderedDict([("conv1", MapsOf(maps))]))
    up = F.interpolate(maps.double().flatten(0, 1)[:, None], (32, 32), mode="bilinear", align_corners=False)
    up = up.reshape(6, 3, -1).transpose(0, 1).flatten(1)
    levels = np.quantile(maps.double().transpose(0, 1).flatten(1).numpy(), 0.95, axis=1)
    assert (up - torch.from_numpy(levels)[:, None]).abs().min() > 1e-5  # no pixel at its unit's threshold
    tables = [dissect(model, folder, ["conv1"], quantile=0.05, batch_size=b) for b in (1, 4, 64)]
    assert (tables[0]["iou"] > 0).all()  # each unit overlaps some concept: the counts are not all zero
    for other in tables[1:]:
        pd.testing.assert_frame_equal(tables[0].drop(columns="threshold"), other.drop(columns="threshold"))
        assert other["iou"].tolist() == tables[0]["iou"].tolist()
        np.testing.assert_allclose(other["threshold"], tables[0]["threshold"], rtol=1e-6, atol=0)


def dense_tally(maps: torch.Tensor, broden: Broden, threshold: torch.Tensor) -> Tally:
    """The oracle: every map upsampled and thresholded, every label a dense 0/1 plane per image."""
    top, cats = max(broden.labels), broden.categories
    both, units, labels = (
        torch.zeros(maps.shape[1], top + 1),
        torch.zeros(maps.shape[1], len(cats)),
        torch.zeros(top + 1),
    )
    for n in range(len(broden)):
        item, size = broden[n], broden.mask_size()
        masks = upsample(maps[n][:, None], size)[:, 0] > threshold[:, None, None]  # (K, sh, sw)
        planes = torch.zeros(top + 1, *size)
        for cat in broden.pixel_categories:
            for mask in item.masks.get(cat, []):
                planes[mask, torch.arange(size[0])[:, None], torch.arange(size[1])] = 1.0
        for cat in broden.image_categories:
            for label in item.image_labels.get(cat, []):
                planes[label] += 1.0
        planes[0] = 0.0
        both += torch.einsum("khw,chw->kc", masks.double(), planes.double()).float()
        labels += planes.sum((1, 2))
        annotated = torch.tensor([float(bool(item.masks.get(c)) or bool(item.image_labels.get(c))) for c in cats])
        units += masks.sum((1, 2)).float()[:, None] * annotated
    return Tally(both.long(), units.long(), labels.long())


class Replay(nn.Module):
    """Given maps, batch after batch, whatever the images."""

    def __init__(self, maps: torch.Tensor) -> None:
        super().__init__()
        self.maps, self.seen = maps, 0

    def forward(self, x):
        self.seen += len(x)
        return self.maps[self.seen - len(x) : self.seen]


def test_counts_equal_a_dense_oracle(tmp_path):
    """Random coarse maps (most never reach T_k, so the IoU pass skips them), masks from two categories
    with labels repeated across masks, image-level labels, an image without masks: the same counts as
    upsampling every map and multiplying dense label planes."""
    gen = torch.Generator().manual_seed(1)
    items = []
    for i in range(7):
        color = torch.randint(0, 3, (16, 16), generator=gen)
        masks = {"color": [color, torch.where(color == 1, 1, 0)]} if i != 3 else {}  # label 1 twice
        if i % 2:
            masks["object"] = [torch.randint(0, 2, (16, 16), generator=gen) * SQUARE]
        items.append(
            BrodenItem(torch.zeros(3, 16, 16, dtype=torch.uint8), masks, {"scene": [REDSCENE]} if i < 3 else {})
        )
    broden = Broden(write_broden(tmp_path / "random", items, LABELS, CATEGORIES))
    maps = torch.relu(torch.randn(7, 12, 5, 5, generator=gen))
    threshold = torch.quantile(maps.transpose(0, 1).reshape(12, -1), 0.98, dim=1)
    model = nn.Sequential(OrderedDict([("conv1", Replay(maps))]))
    got = tally(model, broden, {"conv1": "conv1"}, {"conv1": threshold}, batch_size=3)["conv1"]
    want = dense_tally(maps, broden, threshold)
    assert 0 < (maps.flatten(2).amax(2) <= threshold).float().mean() < 1  # some maps skipped, some counted
    assert torch.equal(got.both, want.both) and torch.equal(got.units, want.units)
    assert torch.equal(got.labels, want.labels)


def test_upsampling_is_bilinear_alone_or_in_a_batch():
    """NetDissect's step 2 against bilinear interpolation written here (numpy, float64, half-pixel centres),
    for one map alone and 33 together. Within float32 rounding, not bit for bit: PyTorch's CPU kernel
    promises no bit equality across batch shapes (its vectorization follows the CPU's vector width);
    ``test_batch_size_never_changes_the_table`` shows the table does not need it."""
    maps = torch.randn(33, 1, 30, 30)
    (y0, y1, fy), (x0, x1, fx) = bilinear_index(30, 64), bilinear_index(30, 64)
    grid = maps[:, 0].double().numpy()
    rows = grid[:, y0] * (1 - fy)[:, None] + grid[:, y1] * fy[:, None]
    want = torch.from_numpy(rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx)[:, None]
    tolerance = {"rtol": 0, "atol": 8 * torch.finfo(torch.float32).eps * float(maps.abs().max())}
    together = upsample(maps, (64, 64))
    alone = torch.cat([upsample(maps[i : i + 1], (64, 64)) for i in range(33)])
    assert together.dtype == torch.float32 and together.shape == (33, 1, 64, 64)
    torch.testing.assert_close(together.double(), want, **tolerance)
    torch.testing.assert_close(alone.double(), want, **tolerance)


class Counting(nn.Module):
    """A probe that counts the images it sees."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x):
        self.images += len(x)
        return self.model(x)


@pytest.mark.parametrize(("cache_bytes", "passes"), [(1 << 30, 1), (0, 4), (2000, 4)])
def test_caches_never_change_the_table(square_folder, cache_bytes, passes):
    """Maps kept in memory (one forward pass: selection and IoU replay them), none kept (four passes:
    three radix passes and the IoU pass), or a budget the first batch shows too small (it stops that
    pass after one batch): the same table, bit for bit."""
    weights = [[1.0, -0.5, -0.5], [0.2, 0.3, 0.5], [-1.0, -1.0, 1.0]]
    model = Counting(probe(weights, bias=[0.0, -0.1, 0.0], pool=2))
    want = dissect(model.model, square_folder, ["conv1"], batch_size=4)
    got = dissect(model, square_folder, ["model.conv1"], batch_size=4, cache_bytes=cache_bytes)
    pd.testing.assert_frame_equal(got.assign(layer="conv1"), want, check_exact=True)
    assert model.images == passes * 6 + (4 if cache_bytes == 2000 else 0)


def test_batches_decode_once_and_serve_many_nets(square_folder):
    broden = Broden(square_folder)
    batches = Batches(broden, 4)
    first, again = list(batches), list(batches)
    assert [len(b.images) for b in first] == [4, 2] and all(a is b for a, b in zip(first, again, strict=True))
    uncached = Batches(broden, 4, cache_bytes=0)
    assert all(a is not b for a, b in zip(list(uncached), list(uncached), strict=True))
    assert torch.equal(first[1].images, torch.stack([broden[4].image, broden[5].image]))
    assert first[0].present[0].tolist() == [RED, BLUE, SQUARE] and first[0].planes[0].sum(0).tolist() == [4, 4, 8]
    for weights in (RED_UNIT, [[0.5, 0.5, 0.0], [0.0, 1.0, -1.0]]):
        model = probe(weights)
        pd.testing.assert_frame_equal(dissect(model, batches, ["conv1"]), dissect(model, square_folder, ["conv1"]))
    assert strongest_images(probe(RED_UNIT), batches, "conv1", k=2)[1][0].tolist() == [0, 1]


def test_model_left_as_it_was(square_folder):
    model = probe(RED_UNIT).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dissect(model, square_folder, ["conv1"])
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_layer_is_one_line(square_folder):
    with pytest.raises(UserError, match=r"unknown layer 'conv9'; choose one of: .*conv1") as err:
        dissect(probe(RED_UNIT), square_folder, ["conv9"])
    assert "\n" not in str(err.value)


def test_strongest_images_and_maps(square_folder):
    model = probe(RED_UNIT, bias=[0.0, 0.0, -1.0])
    broden = Broden(square_folder)
    values, index = strongest_images(model, broden, "conv1", k=2, batch_size=4)
    assert values.shape == index.shape == (3, 2)
    assert values[0].tolist() == [1.0, 1.0] and index[0].tolist() == [0, 1]  # every image peaks at 1: the first two
    maps = unit_maps(model, broden[0].image[None], "conv1", (32, 32))
    assert torch.equal(maps[0, 0] > 0, broden[0].masks["color"][0] == RED)


# --- zfviz viz dissect --------------------------------------------------------------------------


def dissect_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from zfviz.commands import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config_name="viz", overrides=["viz=dissect", "device=cpu", *overrides])


@pytest.mark.slow
def test_command_writes_one_csv_per_layer_equal_to_dissect(viz_checkpoint, square_folder, tmp_path, capsys):
    from zfviz.commands import viz_dissect
    from zfviz.data.trained import load_data
    from zfviz.dissection.dissect import resized
    from zfviz.models.load import load_net

    out = tmp_path / "out"
    cfg = dissect_cfg([f"checkpoint={viz_checkpoint}", f"data.root={square_folder}", f"out_dir={out}",
                       "viz.layers=[conv1,conv5]", "viz.batch_size=5"])  # fmt: skip
    result = viz_dissect.run(cfg)
    assert sorted(p.name for p in out.iterdir()) == [
        "dissect_conv1.csv", "dissect_conv1.meta.json", "dissect_conv5.csv", "dissect_conv5.meta.json"
    ]  # fmt: skip
    assert f"wrote {out / 'dissect_conv1.csv'}, {out / 'dissect_conv5.csv'}" in capsys.readouterr().out  # the names
    model, ckpt = load_net(viz_checkpoint, torch.device("cpu"))
    prepare = resized(load_data(ckpt, viz_checkpoint, root=dissect_cfg([]).data.get("root")).test.normalize, 64)
    want = dissect(model, square_folder, ["conv1", "conv5"], prepare=prepare)
    for layer in ("conv1", "conv5"):
        got = pd.read_csv(out / f"dissect_{layer}.csv", keep_default_na=False)
        assert list(got.columns) == ["unit", "concept", "category", "iou", "threshold", "detector"]
        rows = want[want["layer"] == layer].reset_index(drop=True)
        assert got["unit"].tolist() == rows["unit"].tolist() and got["concept"].tolist() == rows["concept"].tolist()
        assert np.allclose(got["iou"], rows["iou"], rtol=1e-12) and np.allclose(got["threshold"], rows["threshold"])
        meta = json.loads((out / f"dissect_{layer}.meta.json").read_text())
        assert meta["command"] == "zfviz viz dissect" and meta["sources"][0]["broden"] == str(square_folder)
    assert result["images"] == 6 and set(result["detectors"]) == {"conv1", "conv5"}


@pytest.mark.slow
def test_command_mistakes_are_one_line_and_write_nothing(viz_checkpoint, square_folder, tmp_path):
    from zfviz.commands import viz_dissect

    out = tmp_path / "out"
    base = [f"checkpoint={viz_checkpoint}", f"out_dir={out}"]
    cases = [
        ([f"data.root={square_folder}", "viz.layers=[conv1,conv9]"], r"unknown layer 'conv9'; choose one of: .*conv5"),
        ([f"data.root={tmp_path / 'nowhere'}"], r"data.root=.*nowhere: no such folder; give a Broden-layout folder"),
        ([f"data.root={tmp_path}"], r"has no index.csv"),
        ([f"data.root={square_folder}", "viz.quantile=2"], r"viz.quantile=2 is not valid"),
    ]
    for overrides, message in cases:
        with pytest.raises(UserError, match=message) as err:
            viz_dissect.run(dissect_cfg([*base, *overrides]))
        assert "\n" not in str(err.value)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_command_builds_the_default_concept_set_once(viz_checkpoint, tmp_path):
    from zfviz.commands import viz_dissect

    concepts = tmp_path / "concepts"
    cfg = dissect_cfg([f"checkpoint={viz_checkpoint}", f"out_dir={tmp_path / 'out'}", "viz.layers=[conv2]",
                       f"viz.concepts.root={concepts}", "viz.concepts.count=8"])  # fmt: skip
    first = viz_dissect.run(cfg)
    stamp = (concepts / "index.csv").stat().st_mtime_ns
    second = viz_dissect.run(cfg)
    assert first["images"] == second["images"] == 8 and (concepts / "index.csv").stat().st_mtime_ns == stamp
    assert first["detectors"] == second["detectors"]


@pytest.mark.slow
def test_cli_bad_layer_is_one_line(viz_checkpoint, square_folder, tmp_path):
    from tests.cli_args import run_zfviz

    args = ["viz", "dissect", f"checkpoint={viz_checkpoint}", f"data.root={square_folder}", "layers=[conv9]",
            f"out_dir={tmp_path / 'out'}", "device=cpu"]  # fmt: skip
    done = run_zfviz(*args, cwd=tmp_path)  # the command's message, in this process
    assert done.returncode == 2
    assert (
        done.stderr.startswith("zfviz: error: unknown layer 'conv9'; choose one of:") and done.stderr.count("\n") == 1
    )


@pytest.mark.slow
def test_figure_script_dissects_every_net_on_one_decoding(viz_checkpoint, square_folder, tmp_path, monkeypatch):
    """``scripts/dissection_figure.py`` on two runs of one checkpoint: the rows of each net equal a
    dissection of that net alone, and the figure is written."""
    import sys

    from zfviz.data.trained import load_data
    from zfviz.dissection.dissect import resized
    from zfviz.models.load import load_net

    runs = [str(fake_run(tmp_path, viz_checkpoint, name)) for name in ("zfnet", "again")]
    module = load_script("dissection_figure")
    out = tmp_path / "out"
    argv = ["dissection_figure.py", "--preset", "t", "--out", str(out), "--concepts", str(square_folder),
            "--units", "2", "--images", "2", "--batch-size", "4", *runs]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert module.main() == 0
    df = pd.read_csv(out / "dissection_t.csv", keep_default_na=False)
    model, ckpt = load_net(viz_checkpoint, torch.device("cpu"))
    prepare = resized(load_data(ckpt, viz_checkpoint, root=dissect_cfg([]).data.get("root")).test.normalize, 64)
    want = dissect(model, square_folder, ["conv1", "conv2", "conv3", "conv4", "conv5"], prepare=prepare)
    for name in ("zfnet", "again"):
        rows = df[df["net"] == name].reset_index(drop=True)
        assert rows["concept"].tolist() == want["concept"].tolist()
        assert np.allclose(rows["iou"], want["iou"], rtol=1e-12, atol=0)
    assert (out / "fig_dissection_t.png").stat().st_size > 0
