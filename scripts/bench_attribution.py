"""Speed of every attribution method (issue 13) against its peer library, on the same model, batch and targets.

Captum is the peer of saliency, input x gradient, integrated gradients, guided backprop, the
deconvnet, LRP-epsilon, Grad-CAM and guided Grad-CAM; Zennit the peer of LRP's epsilon, alpha2-beta1
and z^B (z+ on convolutions, epsilon on dense layers, z^B at the pixels) composites. Each pair runs
in turn, A B A B, in this one process (``_bench.interleaved``), so a burst of load on shared cores
hits both alike; a timing is the best of its rounds. Each line also shows how far apart the two
maps are (max |zfviz - peer| / max |peer|): a speed-up on a different computation would mean nothing.

Models: the cpu preset's ZFNet (64 px, as ``configs/`` builds it) and torchvision ``vgg16`` and
``resnet18`` built with ``weights=None`` at ``--size`` px; random weights and inputs (speed does not
depend on them). Captum's ReLU hooks fail on in-place ReLUs, so Captum gets a copy of a torchvision
net with ``inplace=False`` (the same weights); zfviz gets the net as torchvision builds it.
The verdict lines read ``ratio <model> <method> zfviz/peer = t_zfviz / t_peer`` (below 1: faster).

Modern nets (``--modern`` alone; part of the default run): torchvision ``efficientnet_b0`` and ``convnext_tiny``
(random weights, ``--modern-size`` 224 px, ``--modern-batch`` 2 images), every gradient-shaped method (saliency,
input x gradient, guided backprop, the deconvnet, LRP-epsilon, Grad-CAM and guided Grad-CAM at their default
layers, generic attention where the net has self-attention) against the plainest gradient there is: autograd's
gradient of the target logits at the input, written here (``autograd_saliency``), nothing of zfviz. The lines
read ``ratio <net> <method>/saliency = t_method / t_autograd   (goal <= 1.25)``: what a method's rules, hooks and
graph walk cost over one backward pass. A method a net refuses gets a line saying why, and no ratio.
usage: python scripts/bench_attribution.py [--models zfnet,vgg16,resnet18] [--methods saliency,lrp_zbox]
       [--size 64] [--batch 8] [--threads N] [--modern] [--modern-size 224] [--modern-batch 2] [--quick] [--out results]
"""

from __future__ import annotations

import argparse
import copy
import functools
import warnings
from collections.abc import Callable

import torch
import torchvision
from _bench import Bench, interleaved, out_argument, preset_model, ratio
from captum.attr import (
    LRP,
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Saliency,
)
from torch import Tensor, nn
from zennit.attribution import Gradient
from zennit.composites import EpsilonAlpha2Beta1, LayerMapComposite, SpecialFirstLayerMapComposite, layer_map_base
from zennit.rules import Epsilon, Pass, ZBox, ZPlus
from zennit.torchvision import ResNetCanonizer
from zennit.types import Convolution

from zfviz.activations import resolve
from zfviz.attribution import attribute
from zfviz.errors import UserError

MODELS = ("zfnet", "vgg16", "resnet18")
LABELS = (
    "saliency", "input_x_gradient", "integrated_gradients", "guided_backprop", "deconvnet",
    "lrp_epsilon", "gradcam", "guided_gradcam", "lrp_alpha2_beta1", "lrp_zbox",
)  # fmt: skip
MODERN = ("efficientnet_b0", "convnext_tiny")
# The modern section's methods, label -> (method, options): the gradient-shaped ones, at their defaults.
MODERN_METHODS = {
    "saliency": ("saliency", {}),
    "input_x_gradient": ("input_x_gradient", {}),
    "guided_backprop": ("guided_backprop", {}),
    "deconvnet": ("deconvnet", {}),
    "lrp_epsilon": ("lrp", {"rule": "epsilon"}),
    "gradcam": ("gradcam", {}),
    "guided_gradcam": ("guided_gradcam", {}),
    "generic_attention": ("generic_attention", {}),
}
MODERN_GOAL = "<= 1.25"


def build(name: str, size: int) -> tuple[nn.Module, int]:
    """The model in eval mode and its input size."""
    if name == "zfnet":
        model = preset_model("cpu", num_classes=10)
        return model.eval(), model.input_size
    return getattr(torchvision.models, name)(weights=None, num_classes=1000).eval(), size


def out_of_place(model: nn.Module) -> nn.Module:
    """Captum's copy: the same weights, every ReLU out of place (its hooks refuse in-place ones)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


def zennit_lrp(model: nn.Module, x: Tensor, target: Tensor, composite) -> Tensor:
    """Zennit's relevance: its gradient attributor seeded with the target's score."""
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x, lambda out: out * nn.functional.one_hot(target, out.shape[1]))
    return relevance


def zennit_composites(name: str, low: float, high: float) -> dict[str, Callable[[], object]]:
    """The Zennit composites our LRP options name; contrast normalization passes relevance, as ours."""
    canonizers = [ResNetCanonizer()] if name.startswith("resnet") else []
    lrn = [(nn.LocalResponseNorm, Pass())]
    return {
        "epsilon": lambda: LayerMapComposite(
            layer_map=lrn + layer_map_base() + [(Convolution, Epsilon()), (nn.Linear, Epsilon())], canonizers=canonizers
        ),
        "alpha2_beta1": lambda: EpsilonAlpha2Beta1(layer_map=lrn, canonizers=canonizers),
        "zbox": lambda: SpecialFirstLayerMapComposite(
            layer_map=lrn + layer_map_base() + [(Convolution, ZPlus()), (nn.Linear, Epsilon())],
            first_map=[(Convolution, ZBox(low, high))],
            canonizers=canonizers,
        ),
    }


def pairs(name: str, model: nn.Module, x: Tensor, target: Tensor, steps: int) -> list[tuple]:
    """(method, zfviz call, peer name, peer call or the reason the peer cannot run it), one per comparison."""
    peer = out_of_place(model)
    cam_path = resolve(model, None, "rectified")  # Grad-CAM's default layer: the last conv's rectified output
    cam_layer = peer.get_submodule(cam_path)
    low, high = float(x.min()), float(x.max())
    size = tuple(x.shape[2:])

    def captum_gradcam():
        cam = LayerGradCam(peer, cam_layer).attribute(x, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")

    captum = {
        "saliency": (lambda: attribute(model, x, target, "saliency"), "captum",
                     lambda: Saliency(peer).attribute(x, target=target, abs=False)),
        "input_x_gradient": (lambda: attribute(model, x, target, "input_x_gradient"), "captum",
                             lambda: InputXGradient(peer).attribute(x, target=target)),
        "integrated_gradients": (
            lambda: attribute(model, x, target, "integrated_gradients", steps=steps), "captum",
            lambda: IntegratedGradients(peer).attribute(x, target=target, n_steps=steps, method="gausslegendre"),
        ),
        "guided_backprop": (lambda: attribute(model, x, target, "guided_backprop"), "captum",
                            lambda: GuidedBackprop(peer).attribute(x, target=target)),
        # Captum's deconvolution starts from 1 and backpropagates through contrast normalization.
        "deconvnet": (lambda: attribute(model, x, target, "deconvnet", start="one", norm="backprop"), "captum",
                      lambda: Deconvolution(peer).attribute(x, target=target)),
        "lrp_epsilon": (lambda: attribute(model, x, target, "lrp", rule="epsilon", epsilon=1e-9), "captum",
                        lambda: LRP(peer).attribute(x, target=target)),  # Captum's epsilon: 1e-9
        "gradcam": (lambda: attribute(model, x, target, "gradcam", layer=cam_path), "captum", captum_gradcam),
        "guided_gradcam": (
            lambda: attribute(model, x, target, "guided_gradcam", layer=cam_path), "captum",
            lambda: GuidedGradCam(peer, cam_layer).attribute(x, target=target, interpolate_mode="bilinear"),
        ),
    }  # fmt: skip
    if name != "vgg16":  # a comparison only where both compute the same relevance
        captum["lrp_epsilon"] = captum["lrp_epsilon"][:2] + (
            "Captum's LRP has no rule for LocalResponseNorm"
            if name == "zfnet"
            else "Captum's LRP splits BatchNorm by its epsilon rule and the residual sum by the gradient: another map",
        )
    ours_lrp = {
        "epsilon": {"rule": "epsilon"},
        "alpha2_beta1": {"composite": "epsilon_alpha2_beta1"},
        "zbox": {"composite": "epsilon_plus_box", "low": low, "high": high},
    }
    found = [(method, *pair) for method, pair in captum.items()]
    for key, composite in zennit_composites(name, low, high).items():
        options = ours_lrp[key]
        found.append((
            f"lrp_{key}",
            lambda options=options: attribute(model, x, target, "lrp", **options),
            "zennit",
            lambda composite=composite: zennit_lrp(model, x, target, composite()),
        ))  # fmt: skip
    return found


def compare(label: str, ours: Callable, peer_name: str, peer, rounds: int) -> None:
    """Time one pair interleaved and print its line and ratio (or why the peer is absent)."""
    if isinstance(peer, str):
        ours()
        timed = interleaved({"zfviz": ours}, rounds)
        print(f"  {label:<34} zfviz {timed.best('zfviz'):8.4f} s   {peer_name}: n/a ({peer})")
        return
    ours(), peer()  # warm-up: first calls allocate
    timed = interleaved({"zfviz": ours, peer_name: peer}, rounds)
    a, b = timed.results["zfviz"], timed.results[peer_name]
    scale = float(b.abs().max())
    apart = float((a - b).abs().max()) / max(scale, 1e-30)
    t_ours, t_peer = timed.best("zfviz"), timed.best(peer_name)
    print(f"  {label:<34} zfviz {t_ours:8.4f} s   {peer_name} {t_peer:8.4f} s   apart {apart:.1e} of {scale:.1e}")
    ratio(f"{label} zfviz/{peer_name}", t_ours, t_peer, "s")


def against_peers(name: str, args: argparse.Namespace, methods: set[str]) -> None:
    """Each method (those in ``methods``; all if empty) on model ``name`` against its peer library's."""
    model, size = build(name, args.size)
    x = torch.randn(args.batch, 3, size, size)
    target = torch.randint(0, 10 if name == "zfnet" else 1000, (args.batch,))
    print(f"\n{name} at {size} px, {args.batch} per call")
    for method, ours, peer_name, peer in pairs(name, model, x, target, args.steps):
        if methods and method not in methods:
            continue
        compare(f"{name} {method}", ours, peer_name, peer, args.rounds)


def autograd_saliency(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """The modern section's baseline: autograd's gradient of the target logits at the input."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return grad


def modern(name: str, size: int, batch: int, rounds: int, methods: set[str]) -> None:
    """Each of ``MODERN_METHODS`` (those in ``methods``; all if empty) on torchvision's ``name`` against
    ``autograd_saliency``, interleaved: its line and ratio, or why the net refuses it."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x, target = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    print(f"\n{name} at {size} px, {batch} per call: each method against autograd's saliency")
    baseline = functools.partial(autograd_saliency, model, x, target)
    plain = baseline()  # also the warm-up
    for label, (method, options) in MODERN_METHODS.items():
        if methods and label not in methods:
            continue
        ours = functools.partial(attribute, model, x, target, method, **options)
        try:
            got = ours()  # the warm-up, and a refusal said before any timing
        except UserError as err:
            print(f"  {name} {label:<18} n/a ({err})")
            continue
        timed = interleaved({"method": ours, "autograd": baseline}, rounds)
        t_ours, t_base = timed.best("method"), timed.best("autograd")
        line = f"  {name} {label:<18} {t_ours:8.4f} s   autograd {t_base:8.4f} s"
        if label == "saliency":  # the same computation as the baseline: how far apart the two are
            line += f"   apart {float((got - plain).abs().max()) / max(float(plain.abs().max()), 1e-30):.1e}"
        print(line)
        ratio(f"{name} {label}/saliency", t_ours, t_base, "s", MODERN_GOAL)


def arguments() -> tuple[argparse.Namespace, list[str], set[str]]:
    """The command line (``--quick`` applied), the peer section's models and the methods asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--size", type=int, default=64, help="input size of the torchvision nets (px)")
    parser.add_argument("--batch", type=int, default=8, help="images per call (one target class each)")
    parser.add_argument("--steps", type=int, default=16, help="integrated gradients' steps")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per pair; best of them")
    parser.add_argument(
        "--methods", default="", help="comma-separated method labels (e.g. guided_backprop,lrp_zbox); all if empty"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--modern", action="store_true", help=f"only the modern section: {', '.join(MODERN)} against autograd saliency"
    )
    parser.add_argument("--modern-size", type=int, default=224, help="input size of the modern nets (px)")
    parser.add_argument("--modern-batch", type=int, default=2, help="images per call on the modern nets")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 2 images at 32 px (1 on the modern nets), 4 steps, one round"
    )
    out_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.size, args.batch, args.steps, args.rounds = 32, 2, 4, 1
        args.modern_size, args.modern_batch = 32, 1
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    methods = {m.strip() for m in args.methods.split(",") if m.strip()}
    known = dict.fromkeys([*LABELS, *MODERN_METHODS])
    if methods - set(known):
        parser.error(f"unknown method(s) {', '.join(sorted(methods - set(known)))}; choose from {', '.join(known)}")
    return args, names, methods


def main() -> None:
    bench = Bench.begin(__file__)
    args, names, methods = arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.simplefilter("ignore", UserWarning)  # Captum announces its hooks on every call
    print(f"{torch.get_num_threads()} threads, best of {args.rounds} interleaved rounds")
    for name in () if args.modern else names:
        against_peers(name, args, methods)
    for name in MODERN:
        modern(name, args.modern_size, args.modern_batch, args.rounds, methods)
    bench.write(args.out, vars(args))


if __name__ == "__main__":
    main()
