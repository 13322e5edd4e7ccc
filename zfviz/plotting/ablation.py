"""What each part of the net contributes: Table 3's ablation bars (Section 5.1) and Table 7's
accuracy-per-layer lines (Section 5.3), ours beside the paper's."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from zfviz.plotting import plt


def ablation_bars(table: pd.DataFrame, title: str = "", spread: pd.DataFrame | None = None) -> Figure:
    """Horizontal bars of ``val_top1_err`` per variant (one colour per base net); the paper's values,
    where the variant reproduces a row of its Table 3, in a second panel (ImageNet: a different scale).

    ``table`` has the columns ``zfviz.ablation.table3`` writes: label, base, val_top1_err,
    train_top1_err, paper_val_top1_err. ``spread`` (index: variant; columns low, high, runs, what):
    the range of each variant's val error over other runs of it, drawn as a grey line across the bar
    and named under the axis (``what`` says which runs).
    """
    table = table.reset_index(drop=True)
    y = np.arange(len(table))[::-1]  # first row on top, as in the table
    bases = list(dict.fromkeys(table["base"]))
    colors = [f"C{bases.index(b)}" for b in table["base"]]
    labels = [f"{b}: {lab}" for b, lab in zip(table["base"], table["label"], strict=True)]
    fig, (ours, paper) = plt.subplots(
        1, 2, figsize=(11, 0.32 * len(table) + 1.6), sharey=True, constrained_layout=True,
        gridspec_kw={"width_ratios": [3, 2]},
    )  # fmt: skip
    ours.barh(y, table["val_top1_err"], color=colors)
    xlabel = "val top-1 error (%); | = train top-1 error"
    if spread is not None:
        xlabel += _spread_bars(ours, table, y, spread)
    ours.scatter(table["train_top1_err"], y, marker="|", s=120, color="k", zorder=3)
    for yi, err, train in zip(y, table["val_top1_err"], table["train_top1_err"], strict=True):
        # The label sits right of both the bar and the train-error tick, so neither covers it.
        ours.annotate(f"{err:.2f}", (max(err, train), yi), xytext=(4, 0), textcoords="offset points", va="center",
                      fontsize=8)  # fmt: skip
    right = max(table["val_top1_err"].max(), table["train_top1_err"].max())
    if spread is not None:
        right = max(right, float(spread["high"].max()))
    ours.set(yticks=y, title="ours", xlim=(0, 1.18 * right))
    ours.set_xlabel(xlabel, fontsize=9)
    ours.set_yticklabels(labels, fontsize=8)
    paper_err = pd.to_numeric(table.get("paper_val_top1_err"), errors="coerce")
    has = paper_err.notna().to_numpy()
    paper.barh(y[has], paper_err[has], color=np.array(colors, dtype=object)[has])
    paper.set(xlabel="val top-1 error (%)", title="paper (ImageNet 2012 val)")
    for ax in (ours, paper):
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def _spread_bars(ax, table: pd.DataFrame, y: np.ndarray, spread: pd.DataFrame) -> str:
    """The grey range line of each variant that ``spread`` has; returns the axis label's note on it."""
    at = spread.reindex(table["variant"])
    has = at["low"].notna().to_numpy()
    ax.hlines(y[has], at["low"][has], at["high"][has], color="0.35", lw=2.5, zorder=4)
    runs = int(at["runs"][has].max()) if has.any() else 0
    what = str(at["what"][has].iloc[0]) if has.any() else ""
    return f"\ngrey line: range of val error over {runs} runs of the variant ({what})"


def reruns_this_table(table: pd.DataFrame, rerun: pd.DataFrame) -> bool:
    """Whether ``rerun`` (``zfviz.ablation.repeat_table``'s: a run of Table 3 against its repeat) was
    measured against ``table``'s own runs: every variant's ``run_dir`` the same. A rerun of an earlier
    Table 3 (another budget, older code) compares other trainings and must not be read as this table's
    spread."""
    if "run_dir" not in table or "run_dir" not in rerun:
        return False
    ours = dict(zip(table["variant"], table["run_dir"].astype(str), strict=True))
    return all(ours.get(v) == str(d) for v, d in zip(rerun["variant"], rerun["run_dir"], strict=True))


def seed_spread(table: pd.DataFrame, *reruns: pd.DataFrame, what: str = "") -> pd.DataFrame:
    """Each variant's val top-1 error over ``table``'s run and the runs of ``reruns`` (tables as
    ``zfviz.ablation.repeat_table`` writes them: val_top1_err, val_top1_err_repeat per variant);
    a run that several reruns share (their ``run_dir``) counts once. Index: variant; columns low,
    high, runs, what."""
    values: dict[str, dict[str, float]] = {}
    for _, row in table.iterrows():
        values.setdefault(row["variant"], {})[str(row.get("run_dir", "table"))] = float(row["val_top1_err"])
    for rerun in reruns:
        for _, row in rerun.iterrows():
            runs = values.setdefault(row["variant"], {})
            runs[str(row["run_dir"])] = float(row["val_top1_err"])
            runs[str(row["run_dir_repeat"])] = float(row["val_top1_err_repeat"])
    rows = [{"variant": v, "low": min(r.values()), "high": max(r.values()), "runs": len(r), "what": what}
            for v, r in values.items()]  # fmt: skip
    return pd.DataFrame(rows).set_index("variant")


def layer_accuracy_lines(summary: pd.DataFrame, title: str = "") -> Figure:
    """Accuracy (mean +- std over splits) against layer 1..7, one line per classifier, one panel per
    N per class; the paper's values for the matching column as dashed lines with markers.

    ``summary`` has the columns ``zfviz.table7.table7`` writes.
    """
    datasets = summary["dataset"] if "dataset" in summary else pd.Series("", index=summary.index)
    panels = sorted({(d, int(n)) for d, n in zip(datasets, summary["n_per_class"], strict=True)})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False, constrained_layout=True)
    for ax, (dataset, n) in zip(axes[0], panels, strict=True):
        part = summary[(datasets == dataset) & (summary["n_per_class"] == n)]
        for i, (name, rows) in enumerate(part.groupby("classifier", sort=False)):
            color = f"C{i}"
            std = rows["accuracy_std"].fillna(0)
            ax.errorbar(rows["layer_index"], rows["accuracy_mean"], yerr=std, color=color, marker="o", capsize=3,
                        label=f"{name} (ours)")  # fmt: skip
            paper = rows.dropna(subset=["paper_accuracy"])
            if len(paper):
                ax.plot(paper["layer_index"], paper["paper_accuracy"].astype(float), color=color, ls="--",
                        marker="s", mfc="none", label=f"{name} (paper, {paper['paper_dataset'].iloc[0]})")  # fmt: skip
        ax.set(xlabel="layer", ylabel="mean per-class accuracy (%)", title=f"{dataset + ': ' if len(set(datasets)) > 1 else ''}{n} training images per class",
               xticks=range(1, 8))  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig
