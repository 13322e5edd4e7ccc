"""The file names of what ``make figures`` writes into ``results/``, each written once (issue 24).

A name is a pattern with ``{preset}`` (``TABLE2.format(preset="cpu")`` is ``table2_cpu.csv``). The
scripts write their files under these names, the report (``zfviz.report``) reads them, and the
Makefile's targets spell the same names: ``tests/test_outputs.py`` checks its ``FIGURES`` (what
``make figures`` builds and ``make check-results`` expects) against ``figures(preset)``, its
``SEED_FIGURES`` against ``seed_figures(preset, seeds)``, and its ``viz.stem=``/``viz.figure=``
arguments against these names.

Seeds (issue 27): the results that rest on one trained net (``SEEDED``) are made again from the nets
trained with each seed k > 0 of the Makefile's ``SEEDS``, into ``seeds/<k>/`` under the same names
(``seeds/1/table2_cpu.csv``); seed 0's are the files above, in ``results/`` itself.
"""

from __future__ import annotations

# --- Table 2 and training (scripts/table2.py) ---
TABLE2 = "table2_{preset}.csv"
TRAINING_CURVES = "fig_training_curves_{preset}.png"
# --- the deconvnet figures and the occlusion experiments (zfviz viz <method> viz.stem=<stem>) ---
FIG2_TOP9 = "fig2_top9_{preset}.png"
FIG4_EVOLUTION = "fig4_evolution_{preset}.png"
FIG4_EVOLUTION_ARRAYS = "fig4_evolution_{preset}.npz"
FIG5_INVARIANCE = "fig5_invariance_{preset}.csv"
FIG5_INVARIANCE_FIGURE = "fig5_invariance_{preset}.png"
FIG6_ARCHITECTURE = "fig6_architecture_{preset}.csv"
FIG6_ARCHITECTURE_FIGURE = "fig6_architecture_{preset}.png"
FIG6_ARCHITECTURE_ARRAYS = "fig6_architecture_{preset}.npz"
FIG7_OCCLUSION = "fig7_occlusion_{preset}.png"
FIG7_OCCLUSION_ARRAYS = "fig7_occlusion_{preset}.npz"
TABLE1 = "table1_{preset}.csv"
TABLE1_DRAWS = "table1_{preset}_draws.csv"
FIG8_CORRESPONDENCE = "fig8_correspondence_{preset}.png"
# --- the attribution family (scripts/attribution_figure.py) ---
FIG_ATTRIBUTION = "fig_attribution_{preset}.png"
# --- Table 3 (scripts/table3.py; a retrained copy --repeat-name NAME: table3_<preset>_<NAME>.csv) ---
TABLE3 = "table3_{preset}.csv"
FIG_TABLE3 = "fig_table3_{preset}.png"
TABLE3_RERUN = "table3_{preset}_{name}.csv"
TABLE3_SEED1 = TABLE3_RERUN.replace("{name}", "seed1")
TABLE3_REPEAT = TABLE3_RERUN.replace("{name}", "repeat")
# --- Table 7 (scripts/table7.py) ---
TABLE7 = "table7_{preset}.csv"
FIG_TABLE7 = "fig_table7_{preset}.png"
# --- transfer, Tables 4-6 and Fig. 9 (scripts/transfer_tables.py), within-domain (scripts/transfer_within.py) ---
TABLE4 = "table4_{preset}.csv"
TABLE5 = "table5_{preset}.csv"
TABLE6 = "table6_{preset}.csv"
FIG_TABLE6_AP = "fig_table6_ap_{preset}.png"
FIG9_TRANSFER_TABLE = "fig9_transfer_{preset}.csv"
FIG9_TRANSFER = "fig9_transfer_{preset}.png"
TRANSFER_WITHIN = "transfer_within_{preset}.csv"
FIG_TRANSFER_WITHIN = "fig_transfer_within_{preset}.png"
# --- dissection, reconstruction, maximization, evaluation (scripts/<name>_figure.py) ---
DISSECTION = "dissection_{preset}.csv"
FIG_DISSECTION = "fig_dissection_{preset}.png"
RECONSTRUCTION = "reconstruction_{preset}.csv"
FIG_RECONSTRUCTION = "fig_reconstruction_{preset}.png"
MAXIMIZE = "maximize_{preset}.csv"
FIG_MAXIMIZE = "fig_maximize_{preset}.png"
EVALUATION = "evaluation_{preset}.csv"
CLAIMS = "claims_{preset}.csv"
FIG_RANDOMIZATION = "fig_randomization_{preset}.png"
# --- the unit atlas (zfviz viz atlas into runs/, scripts/atlas_summary.py): its summary table, and the index and
# layer pages of each net's atlas in a folder whose one sidecar is the table's (atlas_<preset>.meta.json) ---
ATLAS = "atlas_{preset}.csv"
ATLAS_FOLDER = "atlas_{preset}"
ATLAS_NETS = ("zfnet", "alexnet")  # the nets make figures builds an atlas of (the Makefile's ATLAS_NETS)
# the summary's index page per net (the report links them)
ATLAS_PAGES = tuple(f"atlas_{{preset}}/{net}/index.html" for net in ATLAS_NETS)
# --- the run and the report (zfviz.pipeline end, scripts/paper_cost.py, scripts/report.py) ---
TIMINGS = "timings.csv"
PAPER_COST = "paper_cost.csv"
REPORT_HTML = "index.html"
REPORT_MD = "README.md"
REPORT_SCREENSHOT = "report_top.png"
# --- beside make figures: make support-matrix (scripts/support_matrix.py) ---
SUPPORT_MATRIX = "support_matrix.csv"

# The targets of make figures, in the Makefile's order (its FIGURES); the within-domain transfer is the cpu
# preset's only (at the paper preset the real transfer, ImageNet -> Caltech, is itself within-domain).
FIGURES = (
    TABLE2, FIG2_TOP9, FIG4_EVOLUTION, FIG6_ARCHITECTURE, FIG7_OCCLUSION, TABLE1, FIG5_INVARIANCE, FIG_ATTRIBUTION,
    TABLE3, TABLE7, TABLE4, TABLE5, TABLE6, FIG9_TRANSFER, FIG_TABLE6_AP, TRANSFER_WITHIN, FIG_TRANSFER_WITHIN,
    DISSECTION, FIG_DISSECTION, RECONSTRUCTION, FIG_RECONSTRUCTION, MAXIMIZE, FIG_MAXIMIZE, EVALUATION, CLAIMS,
    FIG_RANDOMIZATION, ATLAS,
)  # fmt: skip
CPU_ONLY = (TRANSFER_WITHIN, FIG_TRANSFER_WITHIN)
# What make figures makes again for each seed k > 0 (the Makefile's SEED_FIGURES), in the Makefile's order; each
# target's companions (TABLE1_DRAWS, FIG4_EVOLUTION_ARRAYS, ...) go beside it as they do for seed 0.
SEEDED = (TABLE2, FIG4_EVOLUTION, FIG6_ARCHITECTURE, FIG7_OCCLUSION, TABLE1, FIG5_INVARIANCE, TABLE7)
SEED_FOLDER = "seeds/{seed}"  # in results/: seed k's files


def named(pattern: str, preset: str, **fields: str) -> str:
    """The file name ``pattern`` gives at ``preset`` (and ``fields``, e.g. a rerun's ``name``)."""
    return pattern.format(preset=preset, **fields)


def figures(preset: str) -> list[str]:
    """The file names ``make figures PRESET=<preset>`` builds, in the Makefile's order."""
    return [named(p, preset) for p in FIGURES if preset == "cpu" or p not in CPU_ONLY]


def seed_folder(seed: int) -> str:
    """Where seed ``seed``'s files go in ``results/``: ``""`` (the folder itself) for seed 0, else ``seeds/<seed>``."""
    return "" if int(seed) == 0 else SEED_FOLDER.format(seed=int(seed))


def seed_figures(preset: str, seeds: list[int]) -> list[str]:
    """The files (relative to ``results/``) ``make figures PRESET=<preset> SEEDS=<seeds>`` makes for its seeds
    other than 0, in the Makefile's order (its ``SEED_FIGURES``)."""
    return [f"{seed_folder(k)}/{named(p, preset)}" for k in seeds if int(k) != 0 for p in SEEDED]
