"""``zfviz viz invert``: reconstruct images from one layer's representation (issue 14).

``method=regularized`` optimizes an image to match the layer's features under the alpha-norm and
total-variation priors (Mahendran and Vedaldi 2015, ``zfviz.reconstruction.invert``);
gray data (one channel repeated) are reconstructed gray with ``gray=true``, one channel optimized
(``parameterization.data_color``); ``method=learned`` runs the decoder trained for that layer (Dosovitskiy and Brox 2016,
``zfviz.reconstruction.decoder``), training it into ``decoders=`` first if no finished run of the
same checkpoint and recipe is there. Writes ``<stem>.png`` (originals, then one column per layer),
``<stem>.csv`` (image, layer, method, error, psnr; measured on pixels) and their ``.meta.json``.
"""

from __future__ import annotations

import time

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from zfviz.commands.shared import Outputs, checkpoint_source, open_run, pick_images
from zfviz.errors import UserError
from zfviz.plotting.reconstruction import reconstruction_panels
from zfviz.reconstruction.decoder import Recipe, layer_features_of, load_decoder, train_decoders
from zfviz.reconstruction.invert import Descent, Regularizer, invert, normalized_error, psnr, to_pixels
from zfviz.reconstruction.parameterization import data_color

METHODS = ("regularized", "learned")


def run(cfg: DictConfig) -> dict:
    v = cfg.viz
    if v.method not in METHODS:
        raise UserError(f"method={v.method} is not an inversion method; choose one of: {', '.join(METHODS)}")
    layers = [str(name) for name in (v.layer if OmegaConf.is_list(v.layer) else [v.layer])]
    if not layers:
        raise UserError("layer is empty; name at least one layer, e.g. layer=conv3")
    model, ckpt, data, device = open_run(cfg)
    loader, x, _ = pick_images(data, v.split, v.images, device)
    start = time.perf_counter()
    if v.method == "regularized":
        reg = Regularizer(lambda_a=v.lambda_a, alpha=v.alpha, lambda_tv=v.lambda_tv, beta=v.beta)
        descent = Descent(steps=v.steps, lr=v.lr, seed=int(cfg.seed))
        color = data_color(loader) if v.gray else None
        recon = {
            layer: invert(model, x, layer, regularizer=reg, descent=descent, color=color).images for layer in layers
        }
        extra = {"color": None if color is None else color.tolist()}
    else:
        recipe = Recipe(**OmegaConf.to_container(v.decoder, resolve=True), seed=int(cfg.seed))
        runs = train_decoders(cfg.checkpoint, layers, v.decoders, recipe=recipe, data_root=cfg.data.get("root"),
                              progress=True)  # fmt: skip
        feats = layer_features_of(model, x, layers, recipe.meaning)
        with torch.no_grad():
            recon = {layer: load_decoder(runs[layer]).to(device)(feats[layer].to(device)) for layer in layers}
        extra = {"decoders": {layer: str(path) for layer, path in runs.items()}}
    wall = time.perf_counter() - start
    mean, std = loader.mean.to(device), loader.std.to(device)
    truth = to_pixels(x, mean, std)
    rows, shown = [], {}
    for layer in layers:
        pixels = to_pixels(recon[layer], mean, std)
        shown[(v.method, layer)] = pixels.cpu().numpy()
        errors, psnrs = normalized_error(pixels, truth).tolist(), psnr(pixels, truth).tolist()
        for image, error, db in zip(v.images, errors, psnrs, strict=True):
            rows.append({"image": int(image), "layer": layer, "method": v.method, "error": error, "psnr": db})
    out = Outputs(cfg)
    net = ckpt["config"]["model"]["name"]
    title = f"{v.method} inversion of {net} ({v.split} images {', '.join(map(str, v.images))})"
    fig = reconstruction_panels([(net, truth.cpu().numpy(), shown)], layers, [v.method], title=title)
    out.figure(fig, f"{v.stem}.png")
    table = pd.DataFrame(rows, columns=["image", "layer", "method", "error", "psnr"])
    out.table(table, f"{v.stem}.csv")
    out.provenance([checkpoint_source(cfg, ckpt, **extra)], wall_time_s=wall)
    means = table.groupby("layer", sort=False)[["error", "psnr"]].mean()
    print(means.round(3).to_string())
    print(f"{v.method} inversion of {len(x)} images from {len(layers)} layer(s) in {wall:.1f} s; "
          f"wrote {out.folder / v.stem}.png and .csv")  # fmt: skip
    return {
        "errors": means["error"].to_dict(),
        "psnr": means["psnr"].to_dict(),
        "out": str(out.folder / f"{v.stem}.png"),
    }
