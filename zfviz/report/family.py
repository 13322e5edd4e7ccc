"""The report's entries for the companion works: the attribution family (the taxonomy of Grün et al.
2016), input reconstruction and maximization and network dissection (the survey, seed 004), and the
measures of explanations with the taxonomy's two claims (issues 13-16).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from zfviz import outputs
from zfviz.report import evidence as ev
from zfviz.report.catalog import Artifact, Finding, MissingData, Results, judged, num


def attribution(r: Results) -> Finding:
    name = r.name(outputs.FIG_ATTRIBUTION)
    if not r.has(name):
        raise MissingData(name)
    meta = r.meta(name)
    methods = list(meta.get("methods") or {})
    sources = [s for s in meta.get("sources") or [] if isinstance(s, dict)]
    nets = ", ".join(str(s.get("model")) for s in sources) or "our nets"
    images = len(sources[0].get("images") or []) if sources else 0
    text = (
        f"{len(methods)} methods ({', '.join(methods)}) side by side on the same {images} test images of {nets}, "
        f"explaining the {meta.get('target', 'true class')}: a figure to judge by eye; the evaluation below scores them"
    )
    return Finding(text + ".", "by eye", f"{len(methods)} methods, figure only")


def reconstruction(r: Results) -> Finding:
    t = r.csv(outputs.RECONSTRUCTION)
    parts, held = [], []
    for net, g in t.groupby("net", sort=False):
        err = g.pivot_table(index="layer", columns="method", values="error").reindex(g["layer"].unique())
        first, last = err.index[0], err.index[-1]
        learned_wins = [layer for layer in err.index if err.loc[layer, "learned"] < err.loc[layer, "regularized"]]
        parts.append(
            f"{net}: error {num(err.loc[first, 'regularized'], 3)} at {first} to {num(err.loc[last, 'regularized'])} at "
            f"{last} regularized, {num(err.loc[first, 'learned'])} to {num(err.loc[last, 'learned'])} learned; the "
            f"learned decoder wins at {', '.join(learned_wins) or 'no layer'}"
        )
        deep = err.index[len(err) // 2 :]
        # One error per layer and method, no per-image rows: each part is n=1 without an interval.
        held += [
            ev.single(f"{net}: deeper keeps less", float((err.loc[last] - err.loc[first]).min()), "image set"),
            ev.single(
                f"{net}: learned beats regularized at depth",
                float((err.loc[deep, "regularized"] - err.loc[deep, "learned"]).min()),
                "image set",
            ),
        ]
    return judged("; ".join(parts) + " (error = ||x* - x|| / ||x||).", held, parts[0].split("; the")[0])


def maximize(r: Results) -> Finding:
    t = r.csv(outputs.MAXIMIZE)
    by = t.groupby("param", sort=False)["ratio"]
    beat, median = by.apply(lambda x: float((x > 1).mean())), by.median()
    text = (
        "maximized images drive their target past the strongest real image for "
        + ", ".join(f"{beat[p]:.0%} of targets with {p} (median {num(median[p])}x)" for p in beat.index)
        + f"; {len(t)} targets over {t['net'].nunique()} nets"
    )
    # A target whose ratio is not a number (its strongest real image does not drive it) has no effect to count.
    parts = [ev.bootstrap(f"{p}: median ratio minus 1", t.loc[t["param"] == p, "ratio"].dropna() - 1, "targets",
                          np.median) for p in beat.index]  # fmt: skip
    return judged(text + ".", parts, ", ".join(f"{p} {beat[p]:.0%}" for p in beat.index) + " beat real images")


def dissection(r: Results) -> Finding:
    t = r.csv(outputs.DISSECTION)
    det = t[t["detector"].astype(bool)]
    counts = det.groupby("category").size().sort_values(ascending=False)
    per_layer = det.groupby("layer").size().reindex(sorted(t["layer"].unique()), fill_value=0)
    zf = t[t["net"] == "zfnet"]
    semantic = det[det["category"].isin(["object", "part"])].groupby("layer").size()
    low, high = per_layer.index[0], per_layer.index[-1]
    text = (
        f"ZFNet: {int(zf['detector'].astype(bool).sum())} of {len(zf)} units are detectors; over {t['net'].nunique()} nets, "
        f"{len(det)} detectors ({', '.join(f'{n} {c}' for c, n in counts.items())}), per layer "
        f"{', '.join(f'{layer} {n}' for layer, n in per_layer.items())}; object or part detectors: "
        f"{int(semantic.get(low, 0))} in {low}, {int(semantic.get(high, 0))} in {high}"
    )
    is_det = t["detector"].astype(bool)
    is_sem = is_det & t["category"].isin(["object", "part"])
    at = {layer: t["layer"] == layer for layer in (low, high)}
    parts = [
        ev.bootstrap_diff(f"detectors, {high} minus {low}", is_det[at[high]], is_det[at[low]], "units", np.sum),
        ev.bootstrap_diff(
            f"object/part detectors, {high} minus {low}", is_sem[at[high]], is_sem[at[low]], "units", np.sum
        ),
    ]
    return judged(text + ".", parts, f"{len(det)} detectors, {int(counts.get('color', 0))} of them colour")


def _interval(row: pd.Series) -> tuple[float, float, float]:
    return float(row["mean"]), float(row["ci_low"]), float(row["ci_high"])


def evaluation(r: Results) -> Finding:
    t = r.csv(outputs.EVALUATION)
    parts, weakest = [], []
    for net, g in t.groupby("net", sort=False):
        rows = g[g["metric"] == "deletion"].set_index("method")
        deletion = rows["mean"]
        methods = deletion.drop("random").sort_values()
        parts.append(
            f"{net}: deletion AUC best {', '.join(f'{m} {num(v)}' for m, v in methods.head(3).items())}, worst "
            f"{methods.index[-1]} {num(methods.iloc[-1])}, random map {num(deletion['random'])}"
        )
        # Every method below the random map: the part is the method whose interval comes closest to it.
        each = [ev.difference(f"{net}: random minus {m}", _interval(rows.loc["random"]), _interval(rows.loc[m]),
                              int(rows.loc[m, "n"]), "images") for m in methods.index]  # fmt: skip
        weakest.append(min(each, key=lambda e: e.low))
    return judged("; ".join(parts) + " (lower is better).", weakest, parts[0].split(", worst")[0])


def randomization(r: Results) -> Finding:
    name = r.name(outputs.FIG_RANDOMIZATION)
    if not r.has(name):
        raise MissingData(name)
    t = r.csv(outputs.EVALUATION)
    rho = t[t["metric"] == "randomization_spearman"].pivot_table(index="method", columns="net", values="mean")
    nets = list(dict.fromkeys(t["net"]))  # the CSV's order (ZFNet first), not the alphabet's
    rho = rho[nets]
    gb, grad = rho.loc["guided_backprop"], rho.loc["saliency"]
    moved = rho.drop(index="random") < rho.loc["random"].min() - 0.2
    text = (
        f"with every layer re-initialized, {int(moved.all(axis=1).sum())} of {len(moved)} methods' maps change "
        f"(Spearman with the trained net's map below {num(rho.loc['random'].min() - 0.2)}; the random map "
        f"{num(rho.loc['random'].min())}); guided backprop {', '.join(num(gb[n]) for n in nets)} against the gradient "
        f"{', '.join(num(grad[n]) for n in nets)} ({', '.join(nets)}): at full randomization guided backprop is "
        f"{'less' if (gb > grad + 0.1).all() else 'no less'} sensitive; the layer-by-layer cascade is in the figure only"
    )
    rows = t[t["metric"] == "randomization_spearman"].set_index(["net", "method"])
    parts = [ev.difference(f"{n}: guided backprop minus gradient", _interval(rows.loc[(n, "guided_backprop")]),
                           _interval(rows.loc[(n, "saliency")]), int(rows.loc[(n, "saliency"), "n"]), "images")
             for n in nets]  # fmt: skip
    return judged(
        text + ".", parts, f"guided backprop {num(gb.iloc[0])} vs gradient {num(grad.iloc[0])} (Spearman, {nets[0]})"
    )


def claims(r: Results) -> Finding:
    t = r.csv(outputs.CLAIMS)
    t["shown"] = t["shown"].astype(str).str.lower() == "true"
    parts, held, evidence = [], [], []
    for claim, g in t.groupby("claim", sort=False):
        evidence += [_measure(claim, m) for m in g.itertuples()]
        best = g.iloc[0]
        parts.append(
            f'"{claim}": {"shown" if g["shown"].all() else "not shown" if not g["shown"].any() else "partly shown"} '
            f"({int(g['shown'].sum())} of {len(g)} measures; first: {num(best['value'])} [{num(best['ci_low'])}, "
            f"{num(best['ci_high'])}])"
        )
        held.append(bool(g["shown"].all()))
    return judged("; ".join(parts) + ".", evidence, f"{sum(held)} of {len(held)} claims' measures all shown")


def _measure(claim: str, m) -> ev.Evidence:
    """One measure of a claim, signed by the direction its text names ("lower is better": the paper's
    direction is negative), n read from the text ("over 48 test images", "across 18 nets")."""
    n = re.search(r"(?:over|across) (\d+) ((?:test )?[a-z]+)", m.measure)
    sign = -1 if "lower is better" in m.measure or "negative: the claim" in m.measure else 1
    net = re.search(r"\((zfnet|alexnet)\)$", claim)
    name = m.measure.split(",")[0].split(" of ")[0] + (f" ({net.group(1)})" if net else "")
    return ev.from_interval(name, m.value, m.ci_low, m.ci_high,
                            int(n.group(1)) if n else 1, n.group(2) if n else "set", sign)  # fmt: skip


def support(r: Results) -> Finding:
    """The support matrix (``make support-matrix``): coverage, not a claim, so its verdict is n/a."""
    t = r.csv(outputs.SUPPORT_MATRIX, ("net", "method", "status"))
    counts = t["status"].value_counts()
    refused = t[t["status"] == "refused"].groupby("net", sort=False).size().sort_values(ascending=False)
    failed = t[~t["status"].isin(["works", "refused"])]
    text = (
        f"{t['net'].nunique()} nets x {t['method'].nunique()} methods (random weights, one image each): "
        f"{counts.get('works', 0)} cells work, {counts.get('refused', 0)} are refused in one line naming the module "
        f"and the methods that can, {len(failed)} fail"
        + (f" ({', '.join(f'{x.net}/{x.method}' for x in failed.itertuples())})" if len(failed) else "")
        + (f"; most refusals: {', '.join(f'{net} {n}' for net, n in refused.head(3).items())}" if len(refused) else "")
    )
    return Finding(text + ".", "n/a", f"{counts.get('works', 0)} of {len(t)} cells work, {len(failed)} fail")


def atlas(r: Results) -> Finding:
    """The unit atlas (``scripts/atlas_summary.py``): what every unit of each net is, counted per net; coverage,
    not a claim of the paper (whose Fig. 2 shows nine hand-picked maps per layer), so its verdict is n/a."""
    t = r.csv(outputs.ATLAS, ("net", "layer", "units", "dead", "labeled", "median_selectivity", "full_mb",
                              "summary_mb", "atlas_seconds"))  # fmt: skip
    parts = []
    for net, g in t.groupby("net", sort=False):
        sel = g.dropna(subset=["median_selectivity"])
        trend = (f"; median class selectivity {num(sel['median_selectivity'].iloc[0])} at {sel['layer'].iloc[0]}, "
                 f"{num(sel['median_selectivity'].iloc[-1])} at {sel['layer'].iloc[-1]}" if len(sel) else "")  # fmt: skip
        seconds = g["atlas_seconds"].iloc[0]
        took = f" in {seconds:.0f} s" if pd.notna(seconds) else ""
        parts.append(
            f"{net}: {g['units'].sum()} units in {len(g)} layers, {g['dead'].sum()} dead, {g['labeled'].sum()} with a "
            f"concept label{trend} (whole atlas {g['full_mb'].iloc[0]:.1f} MB{took}, the pages kept here "
            f"{g['summary_mb'].iloc[0]:.1f} MB)"
        )
    text = "; ".join(parts) + ". The unit pages are in the runs folder the index pages name."
    return Finding(text, "n/a", f"{t['units'].sum()} units, {t['dead'].sum()} dead")


def _atlas_view(t: pd.DataFrame) -> pd.DataFrame:
    """Net and layer: units, dead, labeled, the categories and the median selectivity (the sizes are per net)."""
    return t[["net", "layer", "units", "dead", "labeled", "categories", "median_selectivity"]]


def _support_view(t: pd.DataFrame) -> pd.DataFrame:
    """Net x method, one word per cell (the refusal's line is in the CSV)."""
    return t.pivot_table(index="net", columns="method", values="status", aggfunc="first", sort=False).reset_index()


def _reconstruction_view(t: pd.DataFrame) -> pd.DataFrame:
    wide = t.pivot_table(index="layer", columns=["net", "method"], values="error", sort=False)
    wide.columns = [f"{n} {m}" for n, m in wide.columns]
    return wide.reindex(t["layer"].unique()).reset_index()


def _maximize_view(t: pd.DataFrame) -> pd.DataFrame:
    wide = t.pivot_table(index=["net", "layer"], columns="param", values="ratio", aggfunc="median", sort=False)
    wide.columns = [f"median ratio, {p}" for p in wide.columns]
    return wide.reset_index()


def _dissection_view(t: pd.DataFrame) -> pd.DataFrame:
    det = t.assign(detector=t["detector"].astype(bool))
    wide = det.pivot_table(index="net", columns="layer", values="detector", aggfunc="sum", sort=False, fill_value=0)
    wide["all layers"] = wide.sum(axis=1)
    return wide.astype(int).reset_index()


def _evaluation_view(t: pd.DataFrame) -> pd.DataFrame:
    wide = t.pivot_table(index=["net", "method"], columns="metric", values="mean", sort=False)
    return wide.reset_index()


ARTIFACTS = (
    Artifact("attribution", "work-attribution", "The attribution family on the same images", (outputs.FIG_ATTRIBUTION,),
             "one backward pass, different rules at the ReLUs",
             "The taxonomy's deconvolutional class: the deconvnet, the gradient (saliency) and guided backprop "
             "differ only in how the signal passes each ReLU; LRP redistributes relevance layer by layer and "
             "Grad-CAM weighs the last conv maps by their gradient.", attribution),
    Artifact("support", "work-attribution", "Which method runs on which net (the support matrix)",
             (outputs.SUPPORT_MATRIX,), "every method on the nets people use, or one line saying why not",
             "Not a claim of the companion works, which show their methods on 2015-era nets: Captum and Zennit "
             "leave modern modules (SiLU, LayerNorm, attention) to their users; this is where ours stand.",
             support, _support_view, presets=("cpu",)),
    Artifact("atlas", "work-paper", "Every unit of our nets: the unit atlas (Fig. 2 for all units)",
             (outputs.ATLAS, *outputs.ATLAS_PAGES), "what each unit responds to, for every unit at once",
             "Fig. 2 shows, for 9 hand-picked maps per layer, the 9 strongest image patches and their deconvnet "
             "projections; the paper reads the hierarchy off them (edges and colours, then textures, then object "
             "parts and whole objects). The atlas gives every unit its page: patches, deconvnet and guided "
             "projections, maximization images, a dissection label, the classes that drive it.",
             atlas, _atlas_view, presets=("cpu", "paper")),
    Artifact("reconstruction", "work-reconstruction", "Inversion from every layer: regularized and learned",
             (outputs.RECONSTRUCTION, outputs.FIG_RECONSTRUCTION),
             "deeper layers keep less; learned decoders beat optimization at depth",
             "Mahendran and Vedaldi (2015): reconstructions get vaguer with depth; Dosovitskiy and Brox (2016): a "
             "learned up-convolutional decoder reconstructs the deep layers better than regularized "
             "optimization.", reconstruction, _reconstruction_view),
    Artifact("maximize", "work-reconstruction", "Activation maximization under three parameterizations",
             (outputs.MAXIMIZE, outputs.FIG_MAXIMIZE),
             "synthesized images drive a unit past real ones",
             "Activation maximization synthesizes an input a unit prefers; priors (jitter, TV, a decorrelated "
             "Fourier basis, a generator's code space) keep it natural (Yosinski et al. 2015, Olah et al. 2017, "
             "Nguyen et al. 2016).", maximize, _maximize_view),
    Artifact("dissection", "work-dissection", "Network dissection: detectors per layer",
             (outputs.DISSECTION, outputs.FIG_DISSECTION),
             "more, and more semantic, detectors in higher layers",
             "Bau et al. (2017): 97 of ImageNet AlexNet's 256 conv5 units are detectors; colour and texture "
             "detectors dominate the lower layers, object and part detectors the upper ones.", dissection,
             _dissection_view),
    Artifact("evaluation", "work-evaluation", "Every method under every metric", (outputs.EVALUATION,),
             "a good map deletes the evidence fast",
             "Petsiuk et al. (2018), Samek et al. (2017): removing pixels in a good map's order destroys the "
             "prediction faster than a random order (lower deletion AUC, faster pixel flipping).", evaluation,
             _evaluation_view),
    Artifact("randomization", "work-evaluation", "Cascading randomization (sanity checks)",
             (outputs.FIG_RANDOMIZATION,),
             "guided backprop ignores the weights",
             "Adebayo et al. (2018): guided backprop and guided Grad-CAM barely change while the net is "
             "re-initialized from the top; the gradient and Grad-CAM do, as a map that explains the model must.",
             randomization),
    Artifact("claims", "work-evaluation", "The taxonomy's claims", (outputs.CLAIMS,),
             "randomized occlusion beats the grey square; lower error, more focused features",
             "Grün et al. (2016): randomized occlusion gives better maps than a grey square, and nets with lower "
             "error have more focused contributing features.", claims),
)  # fmt: skip
