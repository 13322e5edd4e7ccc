"""Learned network inversion: one decoder per layer (Dosovitskiy and Brox 2016, the survey's UpconvNet).

Regularized inversion (``invert.py``) searches, per image, for any input with the same features;
Dosovitskiy and Brox instead train a network to map a layer's features back to the image, on the
classifier's own training set, minimizing the squared error to the true image. What it returns is
the expected image given the features, so at the high layers, where many images share a
representation, it gives the blurred average of their parts instead of a texture that merely
matches the features: closer to the image, which is why the survey reports it beating the
regularized inversion there.

The decoder (``Decoder``), small for the cpu preset's budget (16 decoders in about 3 minutes on 2
cores): the features, divided by their RMS over the training subset, enter a 3x3 conv at their
own grid (resized to the next power-of-two fraction of ``resolution``) or, for fc layers, a linear
layer onto a 4x4 grid of ``width`` channels; then upsample-x2 + 3x3 conv + leaky ReLU stages
(Dosovitskiy and Brox's "upconvolutions") up to ``resolution`` px, channels halving as the grid
doubles; a 3x3 conv to the image's channels and, if ``resolution`` is below the input size, a
bilinear resize. At the cpu preset the 64 px inputs are Fashion-MNIST's 28 px upsampled, so 32 px
loses almost nothing (measured in ``results/reconstruction_cpu.csv``'s learned conv1 row).

Training is cached like any run (``zfviz.run_cache``): the folder ``<out_dir>/<net>-<key digest>/<layer>/``
is named by the resolved config (the classifier checkpoint's sha256, the layer, the recipe), and
``run.json`` is written last. It runs on the training engine (``zfviz.engine.fit``, with the decoder's
``Task``): ``checkpoint.pt`` (weights, Adam's state, the schedule, the step) is rewritten atomically
every ``Conduct.ckpt_every`` steps and at every epoch's end, Ctrl-C stops at a step's end with a
checkpoint, and at the end it holds the weights alone. A re-run with a finished ``run.json`` loads; one
with only ``checkpoint.pt`` continues from it, to the weights an uninterrupted run reaches (each step's
batch is a function of the step alone). The classifier's features of the training subset are computed
once per net, for every layer still to train, in one pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfviz import run_cache
from zfviz.activations import MEANINGS, resolve, stream
from zfviz.data.preprocess import file_sha256
from zfviz.engine import Run, Settings, Task, fit
from zfviz.errors import Interrupted, UserError
from zfviz.reconstruction.invert import normalized_error, psnr, to_pixels
from zfviz.utils import atomic_path, git_state, rng_state, set_rng_state, versions

VERSION = 1  # of the decoder and its training; part of the cache key


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a decoder is trained. The defaults fit the cpu preset's budget (see the module docstring)."""

    images: int = 3072  # a seeded subset of the training split (Fashion-MNIST: 60k)
    epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-3  # Adam, cosine-annealed to 0 over the run
    width: int = 32  # channels at the coarsest grid
    resolution: int = 32  # the last conv's grid, in px; then a bilinear resize to the input size
    meaning: str = "rectified"  # which output of each layer is decoded (zfviz.activations)
    seed: int = 0
    eval_images: int = 500  # held-out test images the run measures itself on

    def check(self) -> None:
        ints = ("images", "epochs", "batch_size", "width", "resolution", "eval_images")
        bad = [name for name in ints if int(getattr(self, name)) < 1]
        if bad or self.lr <= 0 or self.meaning not in MEANINGS:
            what = f"{bad[0]}={getattr(self, bad[0])}" if bad else f"lr={self.lr}, meaning={self.meaning}"
            raise UserError(f"decoder recipe {what} is not valid: counts >= 1, lr > 0, meaning one of {MEANINGS}")


def _channels(width: int, size: int) -> int:
    """Channels at a grid of ``size`` px: ``width`` up to 8 px, then halving as the grid doubles (>= 16)."""
    return max(16, min(width, width * 8 // size))


class Decoder(nn.Module):
    """Features of one layer (N x feature_shape) -> images (N x C x H x W) in the model's input space."""

    def __init__(self, feature_shape, image_shape, width: int = 32, resolution: int = 32, feature_rms: float = 1.0):
        super().__init__()
        self.feature_shape, self.image_shape = tuple(feature_shape), tuple(image_shape)
        channels, height, _ = self.image_shape
        resolution = min(int(resolution), height)
        spatial = len(self.feature_shape) == 3
        grid = self.feature_shape[-1] if spatial else 4
        doublings = max(0, math.floor(math.log2(resolution / grid)))
        self.start = max(1, resolution >> doublings)  # the first grid: the features' own, or a bit larger
        self.register_buffer("feature_rms", torch.tensor(float(feature_rms)))
        first = _channels(width, self.start)
        if spatial:
            self.stem = nn.Sequential(nn.Conv2d(self.feature_shape[0], first, 3, padding=1), nn.LeakyReLU(0.2))
        else:
            dims = math.prod(self.feature_shape)
            self.stem = nn.Sequential(nn.Linear(dims, first * self.start**2), nn.LeakyReLU(0.2))
        stages, size = [], self.start
        for _ in range(doublings):  # Dosovitskiy and Brox's upconvolution: a 4x4 transposed conv, stride 2
            stages += [nn.ConvTranspose2d(_channels(width, size), _channels(width, 2 * size), 4, stride=2, padding=1),
                       nn.LeakyReLU(0.2)]  # fmt: skip
            size *= 2
        self.stages = nn.Sequential(*stages)
        self.head = nn.Conv2d(_channels(width, size), channels, 3, padding=1)
        self.resolution = size

    def prepare(self, features: Tensor) -> Tensor:
        """The weight-free first step: features over their training RMS, a map resized to the first grid.
        Training does it once for all its images, not at every step."""
        h = features.float() / self.feature_rms
        if len(self.feature_shape) == 3 and h.shape[-1] != self.start:
            h = F.interpolate(h, size=(self.start, self.start), mode="bilinear", align_corners=False)
        return h

    def body(self, prepared: Tensor) -> Tensor:
        """``prepare``'s output -> the image at the decoder's own grid (``resolution`` px)."""
        if len(self.feature_shape) == 3:
            h = self.stem(prepared)
        else:
            h = self.stem(prepared.flatten(1)).unflatten(1, (-1, self.start, self.start))
        return self.head(self.stages(h))

    def forward(self, features: Tensor) -> Tensor:
        out = self.body(self.prepare(features))
        if out.shape[-2:] != self.image_shape[1:]:
            out = F.interpolate(out, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return out


# --- features of the frozen classifier --------------------------------------------------------------


@torch.no_grad()
def layer_features_of(model: nn.Module, x: Tensor, layers, meaning: str = "rectified", batch_size: int = 256):
    """{layer: features (N, ...)} of ``x`` at every one of ``layers``, in one streamed pass (eval mode)."""
    where = {layer: resolve(model, layer, meaning) for layer in layers}
    chunks: dict[str, list[Tensor]] = {layer: [] for layer in layers}
    batches = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
    with stream(model, batches, where) as passes:
        for seen, _ in passes:
            for layer in layers:
                chunks[layer].append(seen[layer].float().cpu())
    return {layer: torch.cat(parts) for layer, parts in chunks.items()}


# --- cached, resumable training on the engine ------------------------------------------------------------


def run_key(checkpoint_sha: str, layer: str, recipe: Recipe) -> dict:
    """The resolved config a decoder run is cached by (``eval_images`` only measures: not in it)."""
    train = {k: v for k, v in dataclasses.asdict(recipe).items() if k != "eval_images"}
    return run_cache.key({"classifier_sha256": checkpoint_sha, "layer": layer, "recipe": train}, VERSION)


def _net_folder(out_dir, net: str, checkpoint_sha: str, recipe: Recipe) -> Path:
    """``<out_dir>/<net>-<digest>``: the decoders of one classifier checkpoint and recipe (``zfviz.run_cache``)."""
    train = run_key(checkpoint_sha, "", recipe)["recipe"]
    return run_cache.entry(out_dir, [checkpoint_sha, train, VERSION], length=12, prefix=f"{net}-")


def find_decoder(out_dir: str | Path, checkpoint: str | Path, layer: str, recipe: Recipe | None = None) -> Path:
    """The folder of the finished decoder of ``layer`` that ``train_decoders(checkpoint, ..., out_dir)``
    wrote, found by the checkpoint's sha256 in its ``run.json`` (another script's recipe need not be
    known). ``recipe``: that recipe's run only. None there, or several recipes and no ``recipe``: UserError."""
    sha = file_sha256(checkpoint)
    found = []
    for marker in sorted(Path(out_dir).glob(f"*/{layer}/run.json")):
        key = (run_cache.complete(marker) or {}).get("key", {})  # a damaged one is not a finished run
        if key.get("classifier_sha256") == sha and key.get("layer") == layer and key.get("version") == VERSION:
            if recipe is None or key == run_key(sha, layer, recipe):
                found.append(marker.parent)
    if len(found) != 1:
        what = "no finished decoder" if not found else f"{len(found)} decoders (recipes differ; give the recipe)"
        raise UserError(f"{out_dir} holds {what} of {layer} for {checkpoint}; train one with train_decoders")
    return found[0]


def _resume_state(folder: Path, key: dict) -> dict | None:
    """The engine's checkpoint of this run to continue from (an older trainer's, or a finished run's, is not)."""
    path = folder / "checkpoint.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged checkpoint is trained again, never trusted
        return None
    return state if state.get("config") == key and "optimizer" in state else None


def _save(path: Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class _Batches:
    """The engine's loader for one decoder: step ``b`` of epoch ``e`` takes the ``b``-th batch of the training
    subset's permutation seeded by (seed, e), a function of the step alone, so a resumed run draws the
    batches an uninterrupted one does. Yields (prepared features, target images)."""

    def __init__(self, prepared: Tensor, images: Tensor, batch_size: int, seed: int) -> None:
        self.prepared, self.images, self.batch_size, self.seed = prepared, images, batch_size, seed
        self.epoch, self.start = 1, 0

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch - 1)
        order = torch.randperm(len(self.images), generator=generator)
        for batch in range(self.start, len(self)):
            idx = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield self.prepared[idx], self.images[idx]


class _SquaredError(Task):
    """A decoder's task (Dosovitskiy and Brox): the squared error to the image in input space, at the
    decoder's grid (the bilinear resize after it has no weights, and skipping it in training halves a
    step). An epoch reports its mean over the steps."""

    def __init__(self, layer: str) -> None:
        self.layer = layer

    def loss(self, net, x, y):
        loss = F.mse_loss(net.body(x), y)
        return loss, {"loss": loss.item(), "steps": 1}

    def report(self, sums):
        return {"train_loss": sums["loss"] / sums["steps"]}

    def line(self, epoch, epochs, row):
        return f"  {self.layer}: epoch {epoch}/{epochs}, loss {row['train_loss']:.4f}"


@dataclasses.dataclass(frozen=True)
class Conduct:
    """How a decoder run is carried out, never its result. ``threads``: torch's thread count while
    training, restored after (None: as it is). One by default: the steps are small (64 images at 32 px),
    and on the shared 2-core machine a decoder took 6 s on one thread and several times that on two, which
    spin-wait for each other; one thread also makes the weights the same on every machine (a reduction
    split over threads adds in another order)."""

    ckpt_every: int = 50  # steps between checkpoints (the engine also writes one at every epoch's end)
    threads: int | None = 1
    on_step: Callable[[int], None] | None = None  # after every update, its checkpoint written (tests' faults)


def _fit(decoder: Decoder, batches: _Batches, folder: Path, key: dict, recipe: Recipe, conduct: Conduct,
         progress: bool) -> list[dict]:  # fmt: skip
    """Adam, cosine-annealed to 0 over the run, on the engine: its checkpoints, resume and Ctrl-C."""
    settings = Settings(epochs=recipe.epochs, ckpt_every=conduct.ckpt_every, channels_last=False, progress=progress)
    run = Run(folder, key, resume_state=_resume_state(folder, key), on_step=conduct.on_step)
    optim = {"optimizer": "adam", "lr": recipe.lr, "schedule": "cosine"}
    before = rng_state()  # a resumed run puts back the RNG it saved; the caller's RNG is left untouched
    try:
        return fit(decoder, batches, None, optim, settings, run, _SquaredError(key["layer"]))
    except Interrupted as err:  # no "zfviz train ... resume=true" line: the same call continues it
        raise Interrupted(f"{err}; training the decoders again continues from it") from None
    finally:
        set_rng_state(before)


@dataclasses.dataclass
class _Subset:
    """The classifier's features of the seeded training subset (``x``) and of the held-out test images."""

    x: Tensor
    x_test: Tensor
    feats: dict[str, Tensor]
    feats_test: dict[str, Tensor]
    mean: Tensor
    std: Tensor


def _subset(model: nn.Module, data, layers: list[str], recipe: Recipe) -> _Subset:
    train, test = data.train, data.test
    pick = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(recipe.seed))
    pick = pick[: min(recipe.images, len(pick))].sort().values
    x = train.normalize(train.images[pick])
    x_test = test.normalize(test.images[: min(recipe.eval_images, len(test.images))])
    feats = layer_features_of(model, x, layers, recipe.meaning)
    feats_test = layer_features_of(model, x_test, layers, recipe.meaning)
    return _Subset(x, x_test, feats, feats_test, test.mean, test.std)


def _train_layer(subset: _Subset, layer: str, folder: Path, key: dict, recipe: Recipe, conduct: Conduct,
                 progress: bool) -> dict:  # fmt: skip
    """One layer's decoder: trained (or continued) in ``folder``, measured on the test images, its weights
    and ``run.json`` (the cache's marker) written last. Returns the run's summary."""
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    rms = float(subset.feats[layer].square().mean().sqrt().clamp_min(1e-8))
    arch = {"feature_shape": list(subset.feats[layer].shape[1:]), "image_shape": list(subset.x.shape[1:]),
            "width": recipe.width, "resolution": recipe.resolution, "feature_rms": rms}  # fmt: skip
    # The initial weights come from the recipe's seed; the caller's RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        decoder = Decoder(**arch)
    with torch.no_grad():
        prepared = decoder.prepare(subset.feats[layer])
    batches = _Batches(prepared, F.adaptive_avg_pool2d(subset.x, decoder.resolution), recipe.batch_size, recipe.seed)
    rows = _fit(decoder, batches, folder, key, recipe, conduct, progress)
    decoder.eval()
    with torch.no_grad():
        shown = to_pixels(decoder(subset.feats_test[layer]), subset.mean, subset.std)
    truth = to_pixels(subset.x_test, subset.mean, subset.std)
    metrics = {"train_mse_last_epoch": rows[-1]["train_loss"], "test_images": len(subset.x_test),
               "test_error": float(normalized_error(shown, truth).mean()),
               "test_psnr": float(psnr(shown, truth).mean())}  # fmt: skip
    _save(folder / "checkpoint.pt", key=key, decoder=decoder.state_dict(), arch=arch)  # weights only, at the end
    summary = {"key": key, "arch": arch, "metrics": metrics, "steps": recipe.epochs * len(batches),
               "wall_time_s": round(time.perf_counter() - start, 2), **git_state(), "versions": versions()}  # fmt: skip
    return summary


@contextlib.contextmanager
def _threads(threads: int | None):
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def train_decoders(
    checkpoint: str | Path,
    layers,
    out_dir: str | Path,
    *,
    recipe: Recipe | None = None,
    data_root: str | None = None,
    progress: bool = False,
    conduct: Conduct = Conduct(),
    **overrides,
) -> dict[str, Path]:
    """Train (or load, when finished) one decoder per layer of the net in ``checkpoint``; {layer: run folder}.

    ``recipe`` (or its fields as keywords, e.g. ``epochs=2``) says how; ``data_root`` finds the
    training data if the checkpoint's config does not. ``progress`` and ``conduct`` (checkpoint interval,
    threads, the tests' fault injection) change how a run is carried out, never its result. The
    classifier's features of the training subset are computed once, for every layer still to train.
    """
    from zfviz.data.trained import load_data
    from zfviz.models.load import load_net  # the viz helpers load nets and their data

    recipe = dataclasses.replace(recipe or Recipe(), **overrides)
    recipe.check()
    layers = list(layers)
    model, ckpt = load_net(checkpoint, torch.device("cpu"))
    for layer in layers:
        resolve(model, layer, recipe.meaning)  # a wrong name is one line before any data is read
    sha = file_sha256(checkpoint)
    keys = {layer: run_key(sha, layer, recipe) for layer in layers}
    net = ckpt["config"]["model"]["name"]
    folders = {layer: _net_folder(out_dir, net, sha, recipe) / layer for layer in layers}
    todo = [layer for layer in layers if run_cache.complete(folders[layer] / "run.json", keys[layer]) is None]
    if not todo:
        return folders
    with _threads(conduct.threads):
        subset = _subset(model, load_data(ckpt, checkpoint, root=data_root), todo, recipe)
        for layer in todo:
            done = _train_layer(subset, layer, folders[layer], keys[layer], recipe, conduct, progress)
            summary = {"key": done["key"], "arch": done["arch"], "checkpoint": str(checkpoint), "net": net} | done
            run_cache.mark_complete(folders[layer] / "run.json", summary)
            if progress:
                m = summary["metrics"]
                print(f"  {net} {layer}: test error {m['test_error']:.3f}, PSNR {m['test_psnr']:.1f} dB, "
                      f"{summary['wall_time_s']:.1f} s", flush=True)  # fmt: skip
    return folders


def load_decoder(run_dir: str | Path, layer: str | None = None) -> Decoder:
    """The trained decoder (eval mode) of a finished run: ``run_dir`` is a layer's folder (what
    ``train_decoders`` returns) or the net's folder above it, with ``layer`` naming the subfolder."""
    run_dir = Path(run_dir)
    folder = run_dir / layer if layer is not None and (run_dir / layer / "run.json").is_file() else run_dir
    try:
        summary = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{folder} holds no finished decoder run (no run.json); train it with train_decoders") from None
    if layer is not None and summary["key"]["layer"] != layer:
        raise UserError(f"{folder} holds the decoder of {summary['key']['layer']}, not {layer}")
    state = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    decoder = Decoder(**summary["arch"])
    decoder.load_state_dict(state["decoder"])
    return decoder.eval()
