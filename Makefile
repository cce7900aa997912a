# genre: `make demo` and `make test` set up everything they need (virtualenv, CPU torch, the package).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
GENRE  := $(BIN)/genre
STAMP  := $(VENV)/.installed
JOBS   ?= 2
DATA_HOME ?= data
SHARED ?= ../shared
KERN_ERAS ?= $(SHARED)/data/kern-eras
export GENRE_DATA_HOME := $(DATA_HOME)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test bench bench-targets all piano piano-features folk scaling oramas oramas-mumu formats dm2kmn-study clean
comma := ,

install: $(STAMP)

# CPU torch is pinned first (an unpinned torch pulls several GB of CUDA wheels). The wheels listed in
# pyproject.toml's [tool.genrecli] no-deps-dependencies go in last, without their declared dependencies
# and without pip's warning about them: tinysoundfont (pyaudio is only for live playback and needs
# PortAudio) and musicnn (we read its checkpoints without TensorFlow, which cannot be installed on
# Python 3.11); see the comment there.
NO_DEPS_LIST := import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["genrecli"]["no-deps-dependencies"])
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps --no-warn-conflicts $$($(BIN)/python -c '$(NO_DEPS_LIST)')
	touch $(STAMP)

# Exit code 2 means the stage ran and some tracks failed (recorded in the store, listed by `genre info`):
# the pipeline goes on with the others. Exit code 1 (a usage or input error) stops it.
PARTIAL_OK := || [ $$? -eq 2 ]

# The demo: 400 folk-dance tunes bundled with music21, both modalities, SVMs, DKN and DM2KMN side by side under
# a grouped 5-fold CV, with intervals, the majority floor and paired tests in the report (experiments/demo.toml).
DEMO := folk-demo
demo: install
	$(GENRE) run experiments/demo.toml $(PARTIAL_OK)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/run_all.py --out BENCHMARKS.md

# issue 14's speed targets only (Grams and maps, DM2KMN GFLOP/s, MFCC / mel and synthesis, text, start-up)
bench-targets: install
	$(BIN)/python bench/run_all.py --only targets --out BENCHMARKS.md

# Every experiment: the experiment files (experiments/piano.toml: the piano eras, kern-eras stand-in, with
# composer- and work-grouped splits; experiments/folk.toml: the full folk-dance set), then the feature suite and
# the scaling comparison on their stores. `genre run` is cache-aware: what is up to date is not recomputed.
all: piano piano-features folk scaling oramas oramas-mumu formats dm2kmn-study

PIANO_SPLITS := group:composer:0.7 group:work:0.7
piano: install
	KERN_ERAS=$(abspath $(KERN_ERAS)) $(GENRE) run experiments/piano.toml $(PARTIAL_OK)

# The feature suite as SVM inputs on the piano eras (issue 4's table); needs `make piano` first.
PIANO_FEATURES := mfcc-image,musicnn,musicnn-tags,timbre,rhythm,mel,cqt  # mfcc,timbre,rhythm,mel are cached by `make piano`
piano-features: piano
	$(GENRE) extract-audio --data piano --features $(PIANO_FEATURES) --jobs $(JOBS) $(PARTIAL_OK)
	$(foreach s,$(PIANO_SPLITS),$(GENRE) kernels --data piano --inputs $(subst $(comma),$(comma)audio/,audio/$(PIANO_FEATURES)) --split $(s) &&) true
	$(foreach s,$(PIANO_SPLITS),$(GENRE) train --data piano --model svm --inputs $(subst $(comma),$(comma)audio/,audio/$(PIANO_FEATURES)) --split $(s) --seeds 3 &&) true
	$(GENRE) evaluate --data piano
	$(GENRE) report --data piano

folk: install
	$(GENRE) run experiments/folk.toml $(PARTIAL_OK)

# Issue 17's scaling comparison: every input kind with the default (scale=auto: z-score for descriptor
# vectors, none for embeddings) and with the other choice; needs `make piano folk` first. DM2KMN: one seed.
# $(call scale_opt,C): no option for the default (the runs of `make piano`/`folk` are reused), else -o scale=C.
scale_opt = $(if $(filter auto,$(1)),,-o scale=$(1))
scaling: piano folk
	$(foreach s,$(PIANO_SPLITS),$(foreach c,none standard,$(GENRE) train --data piano --model svm --inputs audio/timbre,audio/rhythm,text/minilm --split $(s) --seeds 1 -o scale=$(c) &&)) true
	$(foreach s,$(PIANO_SPLITS),$(foreach i,audio/timbre audio/rhythm,$(foreach c,auto none,$(GENRE) train --data piano --model dkn --inputs $(i) --split $(s) --seeds 3 $(call scale_opt,$(c)) && $(GENRE) train --data piano --model dm2kmn --inputs $(i) --split $(s) --seeds 1 $(call scale_opt,$(c)) &&))) true
	$(foreach s,$(PIANO_SPLITS),$(GENRE) train --data piano --model dkn --inputs text/minilm --split $(s) --seeds 3 -o scale=standard && $(foreach c,auto standard,$(GENRE) train --data piano --model dm2kmn --inputs text/minilm --split $(s) --seeds 1 $(call scale_opt,$(c)) &&)) true
	$(GENRE) train --data folk-dances --model svm --inputs audio/mfcc,text/minilm --seeds 1 -o audio/mfcc.scale=none -o text/minilm.scale=standard
	$(GENRE) train --data folk-dances --model dkn --inputs audio/mfcc --seeds 3 -o scale=none
	$(GENRE) train --data folk-dances --model dkn --inputs text/minilm --seeds 3 -o scale=standard
	$(foreach c,auto none,$(GENRE) train --data folk-dances --model dm2kmn --inputs audio/mfcc --seeds 1 $(call scale_opt,$(c)) &&) true
	$(foreach c,auto standard,$(GENRE) train --data folk-dances --model dm2kmn --inputs text/minilm --seeds 1 $(call scale_opt,$(c)) &&) true
	$(GENRE) evaluate --data piano
	$(GENRE) report --data piano
	$(GENRE) evaluate --data folk-dances
	$(GENRE) report --data folk-dances

# Oramas et al. 2018 (issue 10), single-label: the log-CQT audio CNN, the TF-IDF text network and their
# fusion on the piano eras (both splits) and the folk dances, beside the runs of `make piano` / `make folk`.
oramas: piano folk
	KERN_ERAS=$(abspath $(KERN_ERAS)) $(GENRE) run experiments/oramas-piano.toml $(PARTIAL_OK)
	$(GENRE) run experiments/oramas-folk.toml $(PARTIAL_OK)

# Oramas et al., multi-label: every model x LOGISTIC / COSINE on the synthetic MuMu fixture (a data home of its own).
oramas-mumu: install
	rm -rf $(DATA_HOME)/../mumu-fixture-home $(DATA_HOME)/../mumu-fixture-home-mumu-fixture
	$(BIN)/python experiments/oramas_mumu_fixture.py --home $(DATA_HOME)/../mumu-fixture-home --seeds 3

# Issue 18: train on kern-eras (a balanced subset, work-grouped split), evaluate on the same test pieces written
# as MusicXML and ABC, per --text-format, for svm, dkn and dm2kmn (a data home of its own).
formats: install
	GENRE_DATA_HOME=$(DATA_HOME)/../formats-home $(BIN)/python experiments/formats.py --root $(KERN_ERAS) \
	  --work $(DATA_HOME)/../formats-work --per-era 30 --out experiments/formats-results.json

# Issue 13 section 2: DM2KMN variants (the spec's fine-tuning alternatives, stronger inputs) against the DKN and the
# single-kernel SVMs, the variant chosen by its CV estimate on the training part; tables and the fine-tuning
# evidence in experiments/dm2kmn-study-results-*.md. Needs the features of `make piano` (mfcc, timbre, rhythm,
# minilm) and of `make demo`.
dm2kmn-study: piano demo
	$(BIN)/python experiments/dm2kmn_study.py --data piano $(foreach s,$(PIANO_SPLITS),--split $(s)) --jobs $(JOBS)
	$(BIN)/python experiments/dm2kmn_study.py --data $(DEMO) --split groupkfold:title:5 --no-strong --jobs $(JOBS)

clean:
	rm -rf $(DATA_HOME)/$(DEMO) .pytest_cache
