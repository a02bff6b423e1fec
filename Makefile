# The README's two commands: `make run` (install + the main job: the zoo, then real predictions of
# every published model on bundled CIFAR-10 test images) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow test-published test-runtimes fuzz mutants zoo demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/aperture list --verify
	$(VENV)/bin/aperture samples

# `make test` leaves out tests marked slow (torch.compile, a real-data epoch); `make test-slow` runs
# only those. CI (.ci/run) runs both, so nothing goes untested.
# One pytest worker per core, a test file per worker at a time (its module fixtures built once).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n auto --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow and not full_test_set"

# The published models on all 10,000 test images (about 10 minutes on 2 CPU cores, with APERTURE_CIFAR10_DIR).
test-published: $(STAMP)
	$(PY) -m pytest -q -m full_test_set

# Exploration, not part of `make test`: the property tests only (those using hypothesis), thousands of
# examples each from a random seed (profile `fuzz` in tests/profiles.py; `make test` and CI use the fixed,
# derandomised `ci` profile). A failure is kept in .hypothesis/ and tried first next time; add it to the
# test as an @example. FUZZ_ARGS passes options, e.g. FUZZ_ARGS="--hypothesis-seed=7 -k cifar".
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -m hypothesis -p no:cacheprovider $(FUZZ_ARGS)

# The runtime matrix: exported files in old and current onnxruntime and OpenCV DNN, each in a venv
# made once under ~/.cache/aperture_zoo/runtimes from the package index, and every other format
# exported, validated and run in its own runtime (the `formats` extra; LiteRT's converter in a venv
# of its own under the same folder). CI runs it too.
test-runtimes: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,formats]'
	$(PY) -m pytest -q -m runtimes

# Mutation testing (not part of `make test`): mutmut generates the mutants of the modules that hold
# the product's promises and runs each against the tests that reach its function (bench/mutation.py;
# hours on 2 cores for all modules, run in parts). MODULES picks some: make mutants MODULES="calibration seeds";
# MUTANTS_ARGS="--sample 8" tests a seeded random sample of 8 mutants per module (an estimate with its interval).
# The per-module summary goes to bench/results/mutation/; equivalent mutants: bench/mutation_equivalent.toml.
mutants: $(STAMP)
	$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install -q -e '.[mutation]'
	$(PY) bench/mutation.py $(MODULES) $(MUTANTS_ARGS)

# Train, check and export all six with the `fast` recipe on a CUDA machine; run again to resume.
# ZOO_ARGS passes options through, e.g. make zoo ZOO_ARGS="resnet22 resnet10 --deadline 600".
zoo: $(STAMP)
	$(VENV)/bin/aperture train-zoo $(ZOO_ARGS)

# The browser demo (apps/web): installs the pinned onnxruntime-web once (npm ci), exports the
# models with published weights to ONNX once, and serves the page on http://127.0.0.1:8000/.
# DEMO_ARGS passes options, e.g. make demo DEMO_ARGS="--port 8080 resnet22".
demo: $(STAMP)
	test -d apps/web/node_modules/onnxruntime-web || npm ci --prefix apps/web --ignore-scripts --no-audit --no-fund
	$(VENV)/bin/aperture demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
