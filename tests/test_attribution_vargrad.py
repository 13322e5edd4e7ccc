"""VarGrad (Adebayo et al. 2018): the variance of the gradient over noisy copies of the input.

Oracles: a brute-force loop of ``torch.autograd.grad`` on each noisy copy alone, the copies built here
from the draws the method states (sample ``s`` is the ``s``-th ``torch.randn(inputs.shape)`` of a
generator seeded with ``seed``, scaled by ``sigma`` times each image's range), their variance taken by
``torch.var``; Captum's ``NoiseTunnel(Saliency)`` with ``nt_type="vargrad"``, handed the same noise;
an exact value on a net whose gradient is known by hand. Properties: the chunk size does not change a
map, one sample has no variance, a bad value is one line, the model is left as it was, and the CLI
runs it by its registered name alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import NoiseTunnel, Saliency
from torch import nn

from tests.cli_args import run_zfviz
from tests.test_attribution_core import assert_unchanged, random_biases, snapshot
from zfviz.attribution import attribute
from zfviz.checkpoint import model_from_checkpoint
from zfviz.data.trained import load_data
from zfviz.errors import UserError
from zfviz.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def small_zfnet() -> nn.Sequential:
    torch.manual_seed(0)  # non-zero biases: a zero-bias ReLU net is homogeneous, which hides errors
    return random_biases(
        build_model("zfnet", num_classes=10, input_size=64, width=0.25, fc_dims=64, init="kaiming")
    ).eval()


def small_resnet() -> nn.Module:  # batch norm, in-place ReLUs, residual additions
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def stated_noise(shape: torch.Size, samples: int, seed: int) -> torch.Tensor:
    """(samples, *shape): the draws as the method's docstring states them, drawn here."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(shape, generator=generator) for _ in range(samples)])


def stds(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each image's noise std: ``sigma`` times its range (max - min), shaped (N, 1, 1, 1)."""
    return sigma * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)


def brute_force(score, x: torch.Tensor, samples: int, sigma: float, seed: int) -> torch.Tensor:
    """``score(copy, n)`` (a scalar of one noisy copy of image ``n``) differentiated by ``torch.autograd.grad``
    one copy at a time; the variance over the copies (population: over ``samples``) in float64."""
    noise, std = stated_noise(x.shape, samples, seed), stds(x, sigma)
    grads = torch.zeros(samples, *x.shape)
    for s in range(samples):
        for n in range(len(x)):
            copy = (x[n] + std[n] * noise[s, n])[None].requires_grad_(True)
            (grads[s, n],) = torch.autograd.grad(score(copy, n), copy)
    return grads.double().var(dim=0, unbiased=False).float()


def upto(model: nn.Sequential, name: str) -> nn.Sequential:
    return model[: list(dict(model.named_children())).index(name) + 1]


# Ours takes the gradient of many copies in one batch, the oracle of one copy at a time: conv and matmul
# kernels block by batch size, so each gradient differs by float32 rounding (~1e-7 relative). A variance
# moves by about 2 x std(g) x that change: a small fraction of the largest variance, not of every pixel's.
def assert_close_variance(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and want.max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.max()))


@pytest.mark.parametrize(
    "net, size, chunk",
    [(small_zfnet, 64, None), (small_zfnet, 64, 3), pytest.param(small_resnet, 32, 5, marks=pytest.mark.slow)],
)  # resnet18: ~1 s to build and run
def test_equals_autograd_on_each_noisy_copy(net, size, chunk):
    model, x, target = net(), torch.randn(2, 3, size, size), [3, 7]
    got = attribute(model, x, target, "vargrad", samples=4, sigma=0.2, seed=5, internal_batch_size=chunk)
    want = brute_force(lambda copy, n: model(copy)[0, target[n]], x, samples=4, sigma=0.2, seed=5)
    assert_close_variance(got, want)


def test_a_unit_target_keeps_the_clean_images_strongest_cell():
    """A unit's cell is found once, on the clean image (its strongest), and every copy explains it."""
    model, x = small_zfnet(), torch.randn(2, 3, 64, 64)
    got = attribute(model, x, ("conv5", [1, 2]), "vargrad", samples=4, sigma=0.2, seed=1)
    conv5 = upto(model, "conv5")
    with torch.no_grad():
        maps = conv5(x)[range(2), [1, 2]]
    cells = [divmod(int(m.argmax()), m.shape[-1]) for m in maps]
    want = brute_force(lambda copy, n: conv5(copy)[(0, [1, 2][n], *cells[n])], x, samples=4, sigma=0.2, seed=1)
    assert_close_variance(got, want)


class HalfSquare(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x**2 / 2


def test_the_gradient_w_times_x_has_variance_w_squared_times_the_copies_variance():
    """F_c(x) = sum_i w_ci x_i^2 / 2 has the gradient w_c * x, so VarGrad is w_c^2 times the variance of the
    noisy copies themselves: sigma_n^2 times the variance of the stated standard normal draws."""
    model = nn.Sequential(HalfSquare(), nn.Flatten(), nn.Linear(2 * 3 * 3, 2, bias=False))
    x, weight = torch.randn(2, 2, 3, 3), model[2].weight.detach().view(2, 2, 3, 3)
    got = attribute(model, x, [1, 0], "vargrad", samples=6, sigma=0.3, seed=9)
    spread = stated_noise(x.shape, 6, 9).double().var(dim=0, unbiased=False)
    want = weight[[1, 0]].double() ** 2 * stds(x, 0.3).double() ** 2 * spread
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=0)  # float32 products of the same numbers


@pytest.mark.filterwarnings("ignore::UserWarning")  # Captum announces its hooks
def test_equals_captums_noise_tunnel_vargrad_on_the_same_noise(monkeypatch):
    """Captum draws its noise with ``torch.normal`` from the global generator: answered here with the
    stated draws for the image (one call per image, as ``stdevs`` is one number per call)."""
    model, x, target = small_zfnet(), torch.randn(2, 3, 64, 64), [4, 6]
    noise, std = stated_noise(x.shape, 5, 3), stds(x, 0.25)
    theirs, second_moment = [], []
    for n in range(len(x)):

        def normal(mean, stdev, n=n):
            assert mean == 0 and stdev.shape == (5, 3, 64, 64) and bool((stdev == std[n]).all())
            return stdev * noise[:, n]  # Captum adds it to input.repeat_interleave(5): copy s is row s

        with monkeypatch.context() as patch:
            patch.setattr(torch, "normal", normal)
            for kind, out in (("vargrad", theirs), ("smoothgrad_sq", second_moment)):
                tunnel = NoiseTunnel(Saliency(model))
                out.append(tunnel.attribute(x[n : n + 1], nt_type=kind, nt_samples=5, stdevs=float(std[n, 0, 0, 0]),
                                            target=target[n], abs=False))  # fmt: skip
    ours = attribute(model, x, target, "vargrad", samples=5, sigma=0.25, seed=3)
    theirs, second_moment = torch.cat(theirs), torch.cat(second_moment)
    assert ours.max() > 0
    # Captum takes E[g^2] - E[g]^2 in float32, which cancels: its error is the rounding of 5 squares summed
    # and a subtraction, about 7 ulps (8e-7) of E[g^2] (the second moment, from the same tunnel), in every
    # pixel; ours merges deviations in float64.
    assert ((ours - theirs).abs() <= 1e-4 * ours + 2e-6 * second_moment).all()


def test_the_chunk_size_changes_a_map_only_by_float_rounding():
    model, x, target = small_zfnet(), torch.randn(2, 3, 64, 64), [0, 1]
    whole = attribute(model, x, target, "vargrad", samples=5, sigma=0.2, seed=4)  # all 10 rows in one pass
    for rows in (1, 3, 4):  # one row, a sample split across chunks, two samples a chunk
        chunked = attribute(model, x, target, "vargrad", samples=5, sigma=0.2, seed=4, internal_batch_size=rows)
        # Conv kernels may block by batch size (float32 rounding of each gradient), and the chunks' float64
        # merges group the sums differently: the map moves by float noise only.
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5 * float(whole.max()))
    other_seed = attribute(model, x, target, "vargrad", samples=5, sigma=0.2, seed=5)
    assert not torch.allclose(other_seed, whole, rtol=1e-2, atol=1e-2 * float(whole.max()))


def test_one_sample_has_no_variance_and_a_constant_gradient_none():
    model, x = small_zfnet(), torch.randn(2, 3, 64, 64)
    assert torch.equal(attribute(model, x, [1, 2], "vargrad", samples=1, sigma=0.5), torch.zeros_like(x))
    # A linear model's gradient is its weight row whatever the noise: the merge must lose nothing to it.
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    x = torch.randn(3, 3, 8, 8)
    got = attribute(linear, x, [0, 3, 1], "vargrad", samples=7, sigma=0.3, internal_batch_size=4)
    assert torch.equal(got, torch.zeros_like(x))


def test_a_bad_value_is_one_line():
    with pytest.raises(UserError, match=r"^sigma=-0.1 is not valid for vargrad: give a finite number >= 0$"):
        attribute(small_zfnet(), torch.randn(1, 3, 64, 64), 0, "vargrad", sigma=-0.1)


def test_the_model_is_left_as_it_was():
    """In train mode (one part in eval), with a user's hook: a pass in train mode would move the batch norm's
    running statistics; the in-place ReLU and the dropout must come back as they were too."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Dropout(0.5),
                          nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 3)))  # fmt: skip
    model.train()
    model[4].eval()  # mixed flags must come back as they were
    hook = model[0].register_forward_hook(lambda m, i, o: None)
    before = snapshot(model)
    assert attribute(model, torch.randn(2, 3, 8, 8), [1, 2], "vargrad", samples=3, internal_batch_size=4).max() > 0
    assert_unchanged(model, before)
    with pytest.raises(UserError):
        attribute(model, torch.randn(2, 3, 8, 8), [1, 99], "vargrad", samples=3)
    assert_unchanged(model, before)
    hook.remove()


@pytest.mark.slow  # the CLI composes Hydra's config and loads the checkpoint and its data: about 2 s
def test_the_cli_runs_it_by_its_registered_name(viz_checkpoint, tmp_path):
    """Nothing but the method's file declares it: ``zfviz viz attribution method=vargrad`` finds it, passes
    its options (``options={...}``) and writes ``attribute``'s maps."""
    out = tmp_path / "out"
    done = run_zfviz(
        "viz", "attribution", f"checkpoint={viz_checkpoint}", f"data.root={viz_checkpoint.parent}", "device=cpu",
        f"out_dir={out}", "method=vargrad", "options={samples:3,sigma:0.3,seed:2}", "n=2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    saved = np.load(out / "attribution_vargrad.npz")
    model, ckpt = model_from_checkpoint(viz_checkpoint)
    x = load_data(ckpt, viz_checkpoint, root=viz_checkpoint.parent).test
    x = x.normalize(x.images[:2])
    predicted = model.eval()(x).argmax(dim=1)
    assert saved["predicted"].tolist() == predicted.tolist() == saved["target"].tolist()
    expected = attribute(model, x, predicted, "vargrad", samples=3, sigma=0.3, seed=2)
    # The same call on the same images; the command batches its predictions apart: float tolerance.
    torch.testing.assert_close(torch.from_numpy(saved["maps"]), expected, rtol=1e-5, atol=1e-6 * float(expected.max()))
    assert expected.max() > 0 and not torch.allclose(attribute(model, x, predicted, "vargrad"), expected)
    assert (out / "attribution_vargrad.png").is_file() and (out / "attribution_vargrad.meta.json").is_file()
