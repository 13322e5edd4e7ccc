# zfviz: `make figures` runs the paper's experiments at PRESET (default cpu) into results/;
# `make test` runs the test suite (`make test-fast`: without the slow tests; `make test-gpu`: the CUDA
# paths, on a machine with a GPU). All set up .venv and the data they need from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PRESET ?= cpu
# SCALE: the sizes every stage runs at (configs/scale/<SCALE>.yaml; full = as configured, mini = a rehearsal).
SCALE ?= full
SCALED := $(if $(filter full,$(SCALE)),,_$(SCALE))
# RESULTS: where the tables, figures and report go; RUNS: run folders, logs and caches of this preset and scale.
RESULTS ?= results
RUNS ?= runs/figures/$(PRESET)$(SCALED)
FEATURES ?= runs/features
FMNIST_DEB := /usr/share/datasets/fashion-mnist
# make figures runs JOBS stages side by side (make -j), each on THREADS torch threads (cores / JOBS):
# on 2 cores two 1-thread trainings gave 1.19x the images/s of one 2-thread training, and the stages
# that are single-threaded or waiting (plots, heads, Python) fill the other core.
JOBS ?= 2
THREADS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); t=$$((n / $(JOBS))); echo $$((t > 0 ? t : 1)))
# Every command of make figures is a stage: logged to $(RUNS)/logs/, shown as a bar, timed (zfviz/pipeline.py).
STAGE = $(BIN)/python -m zfviz.pipeline stage --runs $(RUNS) --scale $(SCALE) --expected results/timings.csv
# The paper preset reads ImageNet, Caltech, VOC and Broden from these folders (make figures PRESET=paper
# IMAGENET=/data/ILSVRC2012 ...; it lists what it needs before anything runs).
DATA_ARGS_paper = data=imagenet data.root=$(IMAGENET)
DATA_ARGS = $(DATA_ARGS_$(PRESET))
DATA_ROOTS = IMAGENET="$(IMAGENET)" CALTECH101="$(CALTECH101)" CALTECH256="$(CALTECH256)" VOC2012="$(VOC2012)" \
	BRODEN="$(BRODEN)"

.PHONY: install data test test-fast test-gpu figures stages report chromium lint clean-figures concepts rehearsal check-results redraw \
	support-matrix

install: $(VENV)/.installed

# torch/torchvision: the pair that lies on this workplace's disk (other pairs break torchvision's import).
# A working .venv is kept (only its packages are brought up to date): a make run from inside the suite, whose
# python3 may be another interpreter, must not rewrite the venv the suite is running in.
$(VENV)/.installed: pyproject.toml setup.py
	$(BIN)/python -c "import sys" 2>/dev/null || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist when we are root and the files are missing.
data:
	@if [ -f $(FMNIST_DEB)/train-images-idx3-ubyte.gz ] || [ -f data/FashionMNIST/raw/train-images-idx3-ubyte ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q -o APT::Keep-Downloaded-Packages=false dataset-fashion-mnist; \
	else echo "Fashion-MNIST is missing: sudo apt-get install dataset-fashion-mnist (or see docs/data.md)"; exit 1; fi

# test: the whole suite. test-fast: without the tests marked slow (CLI launches, trainings, 224 px
# nets), for a check in under a minute while developing.
test: install data chromium
	$(BIN)/python -m pytest -q --durations=25

test-fast: install data
	$(BIN)/python -m pytest -q -m "not slow"

# test-gpu: the CUDA paths (tests/test_gpu.py) on a machine with a GPU; without one they fail, not skip.
test-gpu: install data
	ZFVIZ_REQUIRE_CUDA=1 $(BIN)/python -m pytest -q -m gpu tests/test_gpu.py

# make bench: every scripts/bench_*.py at its default (full) settings, one after another (and bench_train.py's
# whole fit runs, --fit; its levers, --levers), each after a line `== <script> [--section]` (the tests split the
# output by it), each timing zfviz against a baseline in one process, interleaved. Each writes its
# ratio lines to $(RESULTS)/<script>.csv (bench_deconv.csv, ..., bench_train_fit.csv, bench_train_levers.csv: the
# speed levers of the training step, torch.compile included) with a sidecar naming the
# CPU, cores, torch threads, the load average at the start, the commit and the command. It wants a quiet
# machine: any other load on the cores makes the ratios noise (the sidecar's load_1min_at_start says how
# quiet it was). The documentation's speed figures are these files.
BENCHES := $(sort $(wildcard scripts/bench_*.py))
BENCH_ARGS ?=
.PHONY: bench
bench: install data
	@for script in $(BENCHES); do echo "== $$script"; \
		$(BIN)/python $$script $(BENCH_ARGS) --out $(RESULTS) || exit 1; done
	@echo "== scripts/bench_train.py --fit"
	$(BIN)/python scripts/bench_train.py --fit $(BENCH_ARGS) --out $(RESULTS)
	@echo "== scripts/bench_train.py --levers"
	$(BIN)/python scripts/bench_train.py --levers $(BENCH_ARGS) --out $(RESULTS)

# make support-matrix: every attribution method on the smallest torchvision net of each family (random weights):
# works / refused in one line / FAILED, into $(RESULTS)/support_matrix.csv and docs/models.md's generated table.
support-matrix: install
	$(BIN)/python scripts/support_matrix.py --out $(RESULTS) --docs docs/models.md

lint: install
	$(BIN)/ruff check zfviz tests scripts

# A finished run leaves run.json; make skips runs that already have one (delete the folder to redo).
# resume=true: an interrupted `make figures` continues its training runs where they stopped.
$(RUNS)/%/run.json: | install data
	$(STAGE) train_$* -- $(BIN)/zfviz train model=$* preset=$(PRESET) experiment=table2 resume=true hydra.run.dir=$(RUNS)/$* $(DATA_ARGS)

$(RESULTS)/table2_$(PRESET).csv: $(RUNS)/zfnet/run.json $(RUNS)/alexnet/run.json
	$(STAGE) table2 -- $(BIN)/python scripts/table2.py --preset $(PRESET) --out $(RESULTS) $(^D)

# Each block below adds its outputs to FIGURES; `figures` (at the end) builds them all. Their file names are
# zfviz/outputs.py's (the scripts write them, the report reads them); tests/test_outputs.py checks these match.
FIGURES := $(RESULTS)/table2_$(PRESET).csv
CHECKPOINT := $(RUNS)/zfnet/checkpoint.pt

# --- deconvnet figures (Figs. 2, 4, 6) ---
# Fig. 6's clipping contrast: one short ZFNet recipe (configs/experiment/fig6_clip.yaml: the paper's init, lr and
# input scaling) trained with and without filter RMS clipping.
# Fig. 4 searches the first EVOLUTION_LIMIT training images per saved epoch (null = all).
EVOLUTION_LIMIT_cpu := 20000
EVOLUTION_LIMIT := $(or $(EVOLUTION_LIMIT_$(PRESET)),null)

$(RUNS)/zfnet_clip/run.json: | install data
	$(STAGE) train_zfnet_clip -- $(BIN)/zfviz train model=zfnet preset=$(PRESET) experiment=fig6_clip trainer.clip_rms=0.1 resume=true hydra.run.dir=$(@D) $(DATA_ARGS)

$(RUNS)/zfnet_noclip/run.json: | install data
	$(STAGE) train_zfnet_noclip -- $(BIN)/zfviz train model=zfnet preset=$(PRESET) experiment=fig6_clip trainer.clip_rms=null resume=true hydra.run.dir=$(@D) $(DATA_ARGS)

$(RESULTS)/fig2_top9_$(PRESET).png: $(RUNS)/zfnet/run.json
	$(STAGE) fig2_top9 -- $(BIN)/zfviz viz top9 checkpoint=$(CHECKPOINT) out_dir=$(RESULTS) viz.stem=fig2_top9_$(PRESET) \
		arrays_dir=$(RUNS)/arrays

$(RESULTS)/fig4_evolution_$(PRESET).png: $(RUNS)/zfnet/run.json
	$(STAGE) fig4_evolution -- $(BIN)/zfviz viz evolution checkpoint=$(CHECKPOINT) out_dir=$(RESULTS) viz.stem=fig4_evolution_$(PRESET) viz.limit=$(EVOLUTION_LIMIT)

$(RESULTS)/fig6_architecture_$(PRESET).csv: $(RUNS)/zfnet/run.json $(RUNS)/alexnet/run.json $(RUNS)/zfnet_clip/run.json $(RUNS)/zfnet_noclip/run.json
	$(STAGE) fig6_architecture -- $(BIN)/zfviz viz architecture checkpoint=$(CHECKPOINT) viz.alexnet=$(RUNS)/alexnet/checkpoint.pt \
		viz.clipped=$(RUNS)/zfnet_clip/checkpoint.pt viz.unclipped=$(RUNS)/zfnet_noclip/checkpoint.pt \
		out_dir=$(RESULTS) viz.stem=fig6_architecture_$(PRESET)

FIGURES += $(RESULTS)/fig2_top9_$(PRESET).png $(RESULTS)/fig4_evolution_$(PRESET).png $(RESULTS)/fig6_architecture_$(PRESET).csv

# --- occlusion, correspondence, invariance (Figs. 5, 7, 8; Table 1) ---
$(RESULTS)/fig7_occlusion_$(PRESET).png: $(RUNS)/zfnet/run.json
	$(STAGE) fig7_occlusion -- $(BIN)/zfviz viz occlusion checkpoint=$(CHECKPOINT) out_dir=$(RESULTS) viz.stem=fig7_occlusion_$(PRESET)

$(RESULTS)/table1_$(PRESET).csv: $(RUNS)/zfnet/run.json
	$(STAGE) table1_fig8 -- $(BIN)/zfviz viz correspondence checkpoint=$(CHECKPOINT) out_dir=$(RESULTS) viz.stem=table1_$(PRESET) \
		viz.figure=fig8_correspondence_$(PRESET)

$(RESULTS)/fig5_invariance_$(PRESET).csv: $(RUNS)/zfnet/run.json
	$(STAGE) fig5_invariance -- $(BIN)/zfviz viz invariance checkpoint=$(CHECKPOINT) out_dir=$(RESULTS) viz.stem=fig5_invariance_$(PRESET)

FIGURES += $(RESULTS)/fig7_occlusion_$(PRESET).png $(RESULTS)/table1_$(PRESET).csv $(RESULTS)/fig5_invariance_$(PRESET).csv

# --- the visualization family (issue 13): the same test images under every attribution method ---
$(RESULTS)/fig_attribution_$(PRESET).png: $(RUNS)/zfnet/run.json $(RUNS)/alexnet/run.json
	$(STAGE) attribution -- $(BIN)/python scripts/attribution_figure.py --preset $(PRESET) --out $(RESULTS) $(RUNS)/zfnet $(RUNS)/alexnet

FIGURES += $(RESULTS)/fig_attribution_$(PRESET).png

# --- ablations (Table 3) ---
# One run trains every Table 3 variant; each is cached under runs/ablate/cache/<config hash>/,
# so a re-run (delete $(ABLATE)/variants.json to force one) trains only what is missing.
ABLATE ?= runs/ablate/table3_$(PRESET)$(SCALED)
ABLATE_CACHE ?= runs/ablate/cache
$(ABLATE)/variants.json: | install data
	$(STAGE) ablate -- $(BIN)/zfviz ablate experiment=table3 preset=$(PRESET) hydra.run.dir=$(ABLATE) cache_dir=$(ABLATE_CACHE) $(DATA_ARGS)

$(RESULTS)/table3_$(PRESET).csv: $(ABLATE)/variants.json
	$(STAGE) table3 -- $(BIN)/python scripts/table3.py --preset $(PRESET) --out $(RESULTS) $(ABLATE)

FIGURES += $(RESULTS)/table3_$(PRESET).csv

# Table 7: linear SVM and softmax on each layer's features of the trained ZFNet (cached in FEATURES). The
# paper preset reads the paper's data sets: Caltech-101 at 30 images per class, Caltech-256 at 60.
TABLE7_ARGS_paper = dataset=[caltech101,caltech256] per_dataset.caltech101.root=$(CALTECH101) \
	per_dataset.caltech256.root=$(CALTECH256)
$(RESULTS)/table7_$(PRESET).csv: $(RUNS)/zfnet/run.json
	$(STAGE) table7 -- $(BIN)/python scripts/table7.py experiment=table7 preset=$(PRESET) checkpoint=$(CHECKPOINT) out_dir=$(RESULTS) \
		features.cache_dir=$(FEATURES) hydra.run.dir=$(RUNS)/table7 $(TABLE7_ARGS_$(PRESET))

FIGURES += $(RESULTS)/table7_$(PRESET).csv

# --- transfer (Tables 4-6, Fig. 9) ---
# New heads on the frozen layers 1-7 of $(CHECKPOINT) (features cached in runs/features). With the
# data roots unset the runs use the digits stand-ins; at the cpu preset both Caltech stand-ins are the
# same digits under the same protocol, so Tables 4, 5 and Fig. 9 come from the one fig9 sweep.
# Real data: make figures PRESET=paper CALTECH101=/data/caltech101 CALTECH256=... VOC2012=.../VOCdevkit
TRANSFER := $(RUNS)/transfer
TRANSFER_ROOT_table4 := $(CALTECH101)
TRANSFER_ROOT_fig9 := $(CALTECH256)
TRANSFER_ROOT_table6 := $(VOC2012)
TABLE4_RUN := $(if $(filter cpu,$(PRESET)),fig9,table4)
$(TRANSFER)/%/run.json: $(RUNS)/zfnet/run.json
	$(STAGE) transfer_$* -- $(BIN)/zfviz transfer experiment=$* preset=$(PRESET) checkpoint=$(CHECKPOINT) hydra.run.dir=$(@D) \
		$(if $(TRANSFER_ROOT_$*),root=$(TRANSFER_ROOT_$*))

TRANSFER_OUT := $(RESULTS)/table4_$(PRESET).csv $(RESULTS)/table5_$(PRESET).csv $(RESULTS)/table6_$(PRESET).csv \
	$(RESULTS)/fig9_transfer_$(PRESET).png $(RESULTS)/fig_table6_ap_$(PRESET).png
$(TRANSFER_OUT) &: $(TRANSFER)/$(TABLE4_RUN)/run.json $(TRANSFER)/fig9/run.json $(TRANSFER)/table6/run.json
	$(STAGE) transfer_tables -- $(BIN)/python scripts/transfer_tables.py --preset $(PRESET) --out $(RESULTS) --table4 $(TRANSFER)/$(TABLE4_RUN) \
		--table5 $(TRANSFER)/fig9 --fig9 $(TRANSFER)/fig9 --table6 $(TRANSFER)/table6

FIGURES += $(TRANSFER_OUT)
# The transfer sweeps are the longest stages after the trainings: `stages` starts them early, so the short
# stages fill in at the end instead of one long one running alone (Fig. 9's sweep ran last in a cold run).
LONG_STAGES := $(TRANSFER)/fig9/run.json

# --- within-domain transfer (issue 18): Fig. 9's comparison on new classes of the same kind of images ---
# cpu preset only: at the paper preset the real transfer (ImageNet -> Caltech) is itself within-domain.
ifeq ($(PRESET),cpu)
$(RUNS)/zfnet_half/run.json: | install data
	$(STAGE) train_zfnet_half -- $(BIN)/zfviz train model=zfnet preset=$(PRESET) experiment=within_pretrain \
		resume=true hydra.run.dir=$(@D)

$(TRANSFER)/within/run.json: $(RUNS)/zfnet_half/run.json
	$(STAGE) transfer_within -- $(BIN)/zfviz transfer experiment=within preset=$(PRESET) \
		checkpoint=$(RUNS)/zfnet_half/checkpoint.pt hydra.run.dir=$(@D)

WITHIN_OUT := $(RESULTS)/transfer_within_$(PRESET).csv $(RESULTS)/fig_transfer_within_$(PRESET).png
$(WITHIN_OUT) &: $(TRANSFER)/within/run.json $(TRANSFER)/fig9/run.json
	$(STAGE) transfer_within_figure -- $(BIN)/python scripts/transfer_within.py --preset $(PRESET) --out $(RESULTS) \
		--within $(TRANSFER)/within --cross $(TRANSFER)/fig9

FIGURES += $(WITHIN_OUT)
LONG_STAGES += $(RUNS)/zfnet_half/run.json $(TRANSFER)/within/run.json
endif

# --- network dissection (issue 15): the Fashion-MNIST concept set in the Broden layout, built once ---
# The paper preset dissects on Broden (BRODEN=...); the cpu preset on the Fashion-MNIST concept set built here.
CONCEPTS := $(if $(filter paper,$(PRESET)),$(BRODEN),data/concepts)
$(CONCEPTS)/index.csv: | install data
	$(STAGE) concepts -- $(BIN)/python -m zfviz.dissection.concepts $(CONCEPTS)

concepts: install data $(CONCEPTS)/index.csv

# Dissection of ZFNet, the AlexNet replication and every Table 3 variant (conv1-conv5) on the concept set.
# The concept set is decoded once and each net runs once (its maps kept in memory): about 100 s for
# the 18 nets here (scripts/bench_dissect.py predicts it; issue 15's budget is 4 minutes).
DISSECTION_OUT := $(RESULTS)/dissection_$(PRESET).csv $(RESULTS)/fig_dissection_$(PRESET).png
$(DISSECTION_OUT) &: $(RUNS)/zfnet/run.json $(RUNS)/alexnet/run.json $(ABLATE)/variants.json $(CONCEPTS)/index.csv
	$(STAGE) dissection -- $(BIN)/python scripts/dissection_figure.py --preset $(PRESET) --out $(RESULTS) --concepts $(CONCEPTS) \
		--ablate $(ABLATE) $(RUNS)/zfnet $(RUNS)/alexnet

FIGURES += $(DISSECTION_OUT)

# --- input reconstruction (issue 14): inversion from every layer, regularized and learned; maximization ---
# The learned decoders (one per layer and net) are trained once into $(DECODERS), cached by checkpoint
# hash and recipe; the fc6 decoder is also the generator prior of the maximization figure.
DECODERS := $(RUNS)/decoders
RECONSTRUCTION_OUT := $(RESULTS)/reconstruction_$(PRESET).csv $(RESULTS)/fig_reconstruction_$(PRESET).png
$(RECONSTRUCTION_OUT) &: $(RUNS)/zfnet/run.json $(RUNS)/alexnet/run.json
	$(STAGE) reconstruction -- $(BIN)/python scripts/reconstruction_figure.py --preset $(PRESET) --out $(RESULTS) --decoders $(DECODERS) \
		$(RUNS)/zfnet $(RUNS)/alexnet

MAXIMIZE_OUT := $(RESULTS)/maximize_$(PRESET).csv $(RESULTS)/fig_maximize_$(PRESET).png
$(MAXIMIZE_OUT) &: $(RUNS)/zfnet/run.json $(RUNS)/alexnet/run.json $(RESULTS)/reconstruction_$(PRESET).csv
	$(STAGE) maximize -- $(BIN)/python scripts/maximize_figure.py --preset $(PRESET) --out $(RESULTS) --decoders $(DECODERS) \
		$(RUNS)/zfnet $(RUNS)/alexnet

FIGURES += $(RECONSTRUCTION_OUT) $(MAXIMIZE_OUT)

# --- measuring the explanations (issue 16): every method x every metric, cascading randomization, claims ---
EVALUATION_OUT := $(RESULTS)/evaluation_$(PRESET).csv $(RESULTS)/claims_$(PRESET).csv $(RESULTS)/fig_randomization_$(PRESET).png
$(EVALUATION_OUT) &: $(RUNS)/zfnet/run.json $(RUNS)/alexnet/run.json $(ABLATE)/variants.json $(CONCEPTS)/index.csv
	$(STAGE) evaluation -- $(BIN)/python scripts/evaluation_figure.py --preset $(PRESET) --out $(RESULTS) --concepts $(CONCEPTS) \
		--ablate $(ABLATE) $(RUNS)/zfnet $(RUNS)/alexnet

FIGURES += $(EVALUATION_OUT)

# --- the unit atlas (issue 26): every unit of ZFNet and of the AlexNet replication, one page each ---
# The whole atlas of a net (top 9 patches with their deconvnet and guided-backprop projections, maximization
# images under the three parameterizations with the fc6 decoder as generator, dissection labels) goes to
# $(ATLAS)/<net>/ (one page per unit: too large for results/); results/ keeps each atlas's index and layer pages
# with their thumbnails (scripts/atlas_summary.py), and the table of what the layers' units are.
ATLAS := $(RUNS)/atlas
$(ATLAS)/%/atlas.meta.json: $(RUNS)/%/run.json $(RESULTS)/dissection_$(PRESET).csv $(RESULTS)/reconstruction_$(PRESET).csv
	$(STAGE) atlas_$* -- $(BIN)/zfviz viz atlas checkpoint=$(RUNS)/$*/checkpoint.pt out_dir=$(@D) viz.decoders=$(DECODERS) \
		viz.labels=$(RESULTS)/dissection_$(PRESET).csv

ATLAS_OUT := $(RESULTS)/atlas_$(PRESET).csv
# ATLAS_NETS: zfviz.outputs.ATLAS_NETS (the report links their pages, zfviz.cost costs their stages)
ATLAS_NETS := zfnet alexnet
$(ATLAS_OUT): $(foreach net,$(ATLAS_NETS),$(ATLAS)/$(net)/atlas.meta.json)
	$(STAGE) atlas_summary -- $(BIN)/python scripts/atlas_summary.py --preset $(PRESET) --out $(RESULTS) $(^D)

FIGURES += $(ATLAS_OUT)

# --- seeds (issue 27): the results that rest on one trained net (Table 2, Figs. 4-7, Table 1, Table 7) again for
# every seed k > 0 of SEEDS: its nets trained as seed 0's with seed=k into $(RUNS)/<run>_seed<k>, its stages
# (named <stage>_seed<k>) run as seed 0's on them, writing the same file names into $(RESULTS)/seeds/<k>/
# (zfviz/outputs.py SEEDED). Seed 0 is the runs and files above. The cpu preset trains 3 seeds; the paper
# preset 1 (SEEDS="0 1 2" on GPUs); SEEDS=0 is the quick run.
SEEDS_cpu := 0 1 2
SEEDS ?= $(or $(SEEDS_$(PRESET)),0)
SEEDED := $(filter-out 0,$(SEEDS))
SEED_RUNS := $(foreach k,$(SEEDED),$(foreach run,zfnet alexnet zfnet_clip zfnet_noclip,$(RUNS)/$(run)_seed$(k)/run.json))
SEED_NAMES := table2_$(PRESET).csv fig4_evolution_$(PRESET).png fig6_architecture_$(PRESET).csv \
	fig7_occlusion_$(PRESET).png table1_$(PRESET).csv fig5_invariance_$(PRESET).csv table7_$(PRESET).csv
SEED_FIGURES := $(foreach k,$(SEEDED),$(addprefix $(RESULTS)/seeds/$(k)/,$(SEED_NAMES)))

# In the rules below % is the seed. A run reached only through them (make results/seeds/1/table2_cpu.csv) would be
# an intermediate file, which make deletes after the build: .PRECIOUS keeps every seed's runs.
.PRECIOUS: $(SEED_RUNS)
$(RUNS)/zfnet_seed%/run.json: | install data
	$(STAGE) train_zfnet_seed$* -- $(BIN)/zfviz train model=zfnet preset=$(PRESET) experiment=table2 seed=$* resume=true hydra.run.dir=$(@D) $(DATA_ARGS)

$(RUNS)/alexnet_seed%/run.json: | install data
	$(STAGE) train_alexnet_seed$* -- $(BIN)/zfviz train model=alexnet preset=$(PRESET) experiment=table2 seed=$* resume=true hydra.run.dir=$(@D) $(DATA_ARGS)

$(RUNS)/zfnet_clip_seed%/run.json: | install data
	$(STAGE) train_zfnet_clip_seed$* -- $(BIN)/zfviz train model=zfnet preset=$(PRESET) experiment=fig6_clip trainer.clip_rms=0.1 seed=$* resume=true hydra.run.dir=$(@D) $(DATA_ARGS)

$(RUNS)/zfnet_noclip_seed%/run.json: | install data
	$(STAGE) train_zfnet_noclip_seed$* -- $(BIN)/zfviz train model=zfnet preset=$(PRESET) experiment=fig6_clip trainer.clip_rms=null seed=$* resume=true hydra.run.dir=$(@D) $(DATA_ARGS)

$(RESULTS)/seeds/%/table2_$(PRESET).csv: $(RUNS)/zfnet_seed%/run.json $(RUNS)/alexnet_seed%/run.json
	$(STAGE) table2_seed$* -- $(BIN)/python scripts/table2.py --preset $(PRESET) --out $(@D) $(^D)

$(RESULTS)/seeds/%/fig4_evolution_$(PRESET).png: $(RUNS)/zfnet_seed%/run.json
	$(STAGE) fig4_evolution_seed$* -- $(BIN)/zfviz viz evolution checkpoint=$(<D)/checkpoint.pt out_dir=$(@D) viz.stem=fig4_evolution_$(PRESET) \
		viz.limit=$(EVOLUTION_LIMIT)

$(RESULTS)/seeds/%/fig6_architecture_$(PRESET).csv: $(RUNS)/zfnet_seed%/run.json $(RUNS)/alexnet_seed%/run.json $(RUNS)/zfnet_clip_seed%/run.json \
		$(RUNS)/zfnet_noclip_seed%/run.json
	$(STAGE) fig6_architecture_seed$* -- $(BIN)/zfviz viz architecture checkpoint=$(RUNS)/zfnet_seed$*/checkpoint.pt \
		viz.alexnet=$(RUNS)/alexnet_seed$*/checkpoint.pt viz.clipped=$(RUNS)/zfnet_clip_seed$*/checkpoint.pt \
		viz.unclipped=$(RUNS)/zfnet_noclip_seed$*/checkpoint.pt out_dir=$(@D) viz.stem=fig6_architecture_$(PRESET)

$(RESULTS)/seeds/%/fig7_occlusion_$(PRESET).png: $(RUNS)/zfnet_seed%/run.json
	$(STAGE) fig7_occlusion_seed$* -- $(BIN)/zfviz viz occlusion checkpoint=$(<D)/checkpoint.pt out_dir=$(@D) viz.stem=fig7_occlusion_$(PRESET)

$(RESULTS)/seeds/%/table1_$(PRESET).csv: $(RUNS)/zfnet_seed%/run.json
	$(STAGE) table1_fig8_seed$* -- $(BIN)/zfviz viz correspondence checkpoint=$(<D)/checkpoint.pt out_dir=$(@D) viz.stem=table1_$(PRESET) \
		viz.figure=fig8_correspondence_$(PRESET)

$(RESULTS)/seeds/%/fig5_invariance_$(PRESET).csv: $(RUNS)/zfnet_seed%/run.json
	$(STAGE) fig5_invariance_seed$* -- $(BIN)/zfviz viz invariance checkpoint=$(<D)/checkpoint.pt out_dir=$(@D) viz.stem=fig5_invariance_$(PRESET)

$(RESULTS)/seeds/%/table7_$(PRESET).csv: $(RUNS)/zfnet_seed%/run.json
	$(STAGE) table7_seed$* -- $(BIN)/python scripts/table7.py experiment=table7 preset=$(PRESET) checkpoint=$(<D)/checkpoint.pt out_dir=$(@D) \
		features.cache_dir=$(FEATURES) hydra.run.dir=$(RUNS)/table7_seed$* $(TABLE7_ARGS_$(PRESET))

# The first prerequisites of `stages` start first under -j: the Table 3 trainings (the longest stage)
# beside the Table 2 ones, then the other seeds', then the transfer sweeps (long stages first, the short ones
# fill in at the end). The end prints each stage's wall time and writes $(RESULTS)/timings.csv.
figures: install data
	@$(DATA_ROOTS) $(BIN)/python -m zfviz.pipeline needs --preset $(PRESET)
	@$(if $(filter full,$(SCALE)),$(BIN)/python -m zfviz.pipeline cost --preset $(PRESET) --seeds $(SEEDS),:)
	@$(BIN)/python -m zfviz.pipeline begin --runs $(RUNS) --results $(RESULTS) --seeds $(SEEDS)
	@OMP_NUM_THREADS=$(THREADS) $(MAKE) --no-print-directory -s -j$(JOBS) stages
	@FIGURES_JOBS=$(JOBS) OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m zfviz.pipeline end --runs $(RUNS) \
		--out $(RESULTS)/timings.csv
	@$(MAKE) --no-print-directory -s chromium $(RESULTS)/index.html

# --- the paper preset rehearsed (issue 25): every stage of make figures PRESET=paper, at SCALE=mini, on
# miniature data in the real layouts (zfviz/data/miniature.py) built under $(REHEARSAL)/data, with two seeds. Its tables,
# figures and report go to RESULTS (default $(REHEARSAL)/results; the committed results/ is never touched).
REHEARSAL ?= runs/rehearsal
MINI_DATA := $(REHEARSAL)/data
rehearsal: install chromium
	$(BIN)/python -m zfviz.data.miniature $(MINI_DATA)
	@$(MAKE) --no-print-directory figures PRESET=paper SCALE=mini SEEDS="0 1" RESULTS=$(if $(filter results,$(RESULTS)),$(REHEARSAL)/results,$(RESULTS)) \
		RUNS=$(REHEARSAL)/runs ABLATE=$(REHEARSAL)/runs/ablate ABLATE_CACHE=$(REHEARSAL)/runs/ablate_cache \
		FEATURES=$(REHEARSAL)/runs/features IMAGENET=$(MINI_DATA)/imagenet \
		CALTECH101=$(MINI_DATA)/caltech101 CALTECH256=$(MINI_DATA)/caltech256 VOC2012=$(MINI_DATA)/VOCdevkit \
		BRODEN=$(MINI_DATA)/broden
	@$(MAKE) --no-print-directory check-results PRESET=paper SCALE=mini SEEDS="0 1" \
		RESULTS=$(if $(filter results,$(RESULTS)),$(REHEARSAL)/results,$(RESULTS))

# Every output of make figures present in RESULTS (the seeds' too), and every file there and in its seeds/
# folders with its provenance sidecar.
check-results: install
	@$(BIN)/python -m zfviz.pipeline check --results $(RESULTS) $(FIGURES) $(SEED_FIGURES) $(RESULTS)/index.html \
		$(RESULTS)/README.md

stages: $(ABLATE)/variants.json $(RUNS)/zfnet/run.json $(RUNS)/alexnet/run.json $(SEED_RUNS) $(LONG_STAGES) $(FIGURES) $(SEED_FIGURES)

clean-figures:
	rm -rf $(RUNS)

# --- the report (issue 18): every result with the paper's finding and ours, provenance, a screenshot ---
# Built after the stages (it reads $(RESULTS)/timings.csv); a warm run leaves timings.csv, so nothing reruns.
REPORT_INPUTS = $(filter-out $(RESULTS)/report_top.png,$(wildcard $(RESULTS)/*_$(PRESET).* $(RESULTS)/*_$(PRESET)_*.* \
	$(RESULTS)/seeds/*/*_$(PRESET).* $(RESULTS)/seeds/*/*_$(PRESET)_*.* $(RESULTS)/timings.csv $(RESULTS)/paper_cost.csv)) \
	scripts/report.py $(wildcard zfviz/report/*.py)
$(RESULTS)/index.html $(RESULTS)/README.md &: $(REPORT_INPUTS) | install
	$(BIN)/python scripts/report.py --preset $(PRESET) --results $(RESULTS) --scale $(SCALE) --screenshot
# make report: the report of what is in RESULTS now (never a stage: a clean clone has results/ but no runs/).
report: install chromium
	$(BIN)/python scripts/report.py --preset $(PRESET) --results $(RESULTS) --scale $(SCALE) --screenshot

# make redraw: the figures whose data files are in RESULTS (tables, .npz), drawn again from those files alone
# (zfviz/plotting/redraw.py; no run folder, no training), each with a sidecar naming its data files and commit.
redraw: install
	$(BIN)/python -m zfviz.plotting.redraw --results $(RESULTS) --preset $(PRESET)

# Headless Chromium for the report's screenshot and its browser test (Debian's chromium, as root; else a hint).
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o APT::Keep-Downloaded-Packages=false chromium; \
	else echo "headless Chromium is missing: sudo apt-get install chromium (the report's browser test skips)"; fi

