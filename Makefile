# pkvmlab: `make lab` to learn, `make test` to check everything (`make check`: the quick tier while editing).
# All install what they need and are safe to rerun.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup lab test check dot chromium qemu firmware bench docs lint notebooks clean

setup: $(STAMP) dot firmware

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pkvmlab needs Python >= 3.11 (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# Graphviz's `dot` is a system binary: install it with apt when we can, else say how.
dot:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Graphviz (dot) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; \
	  else \
	    echo "Graphviz 'dot' is missing. Install it with:  sudo apt-get install graphviz"; \
	    echo "  (macOS: brew install graphviz; conda: conda install -c conda-forge graphviz)"; exit 1; \
	  fi; }

# The browser test drives Debian's `chromium` package with Playwright (never `playwright install`).
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Chromium with apt-get (for tests/test_browser.py)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "Chromium is missing: tests/test_browser.py will be skipped. Install it with:  sudo apt-get install chromium"; \
	  fi; }

# The differential test runs the firmware on QEMU too (pkvmlab/machine/qemu.py): Debian's qemu-system-arm.
qemu:
	@command -v qemu-system-aarch64 >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing QEMU (qemu-system-arm) with apt-get (for tests/test_qemu_*.py)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-arm >/dev/null; \
	  else \
	    echo "qemu-system-aarch64 is missing: the QEMU differential tests will be skipped. Install it with:  sudo apt-get install qemu-system-arm"; \
	  fi; }

firmware: $(STAMP)
	$(PY) -m pkvmlab.firmware

lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# Re-execute every notebook in place and strip what must not be committed (widget state, timestamps).
notebooks: setup
	for nb in notebooks/*.ipynb; do $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace "$$nb" || exit 1; done
	$(PY) tools/strip_widget_state.py notebooks/*.ipynb

lint: $(STAMP)
	$(PY) -m ruff check pkvmlab tests tools docs $(wildcard bench)

# The whole suite in one run over all cores (pytest-xdist; `--dist loadfile` keeps a file's tests on one worker, so a
# notebook's cells run in order in one kernel and a module's fixtures are made once): tests/ and the ten notebooks
# (nbval), every hypercall checked against pkvmlab.spec (PKVMLAB_SPEC_CHECK=1) but in the few tests that need the
# unchecked path (tests/conftest.py: UNCHECKED_FILES, and docs/testing.md).  The browser test must run wherever
# Chromium is installed, the QEMU differential wherever QEMU is.
test: setup chromium qemu lint
	PKVMLAB_SPEC_CHECK=1 \
	PKVMLAB_REQUIRE_BROWSER=$$(test -x /usr/bin/chromium && echo 1 || echo 0) \
	PKVMLAB_REQUIRE_QEMU=$$(command -v qemu-system-aarch64 >/dev/null && echo 1 || echo 0) \
	  $(PY) -m pytest -q $(XDIST) --durations=20 tests notebooks --nbval-lax --nbval-current-env

# The edit loop's tier (about a minute): lint, the tests marked `quick` and two notebooks (tests/conftest.py: QUICK_FILES, QUICK_NOTEBOOKS).
check: setup lint
	PKVMLAB_SPEC_CHECK=1 $(PY) -m pytest -q $(XDIST) -m quick tests notebooks --nbval-lax --nbval-current-env

JOBS ?= auto
XDIST := -n $(JOBS) --dist loadfile

bench: setup
	$(PY) bench/run_all.py

# The README's example diagrams, drawn from a real booted lab (docs/make_figures.py).
docs: setup
	$(PY) docs/make_figures.py

clean:
	rm -rf build .pytest_cache

# Line and branch coverage of the EL2 firmware of both eras, measured by the lab's own core (pkvmlab/machine/coverage.py):
# the suite (tests/, but the campaign, measured apart, and the browser and QEMU tests, which run no measured core;
# every Lab() and Lab(era="mainline") it boots counts into its era's image) and then each era's campaign (7,000 steps
# on the correct firmware); HTML under build/coverage/{tests,campaign}/ (the seed's firmware/) and
# build/coverage/mainline/{tests,campaign}/ (firmware/mainline/ and the seed's files it builds: shared.list).
COVERAGE_TESTS := tests --ignore=tests/test_campaign.py --ignore=tests/test_browser.py \
	--ignore=tests/test_qemu_differential.py --ignore=tests/test_qemu_backend.py
.PHONY: coverage
coverage: setup
	rm -rf build/coverage
	PKVMLAB_COVERAGE=build/coverage/data/tests $(PY) -m pytest -q -p no:cacheprovider $(COVERAGE_TESTS)
	$(PY) tools/coverage.py build/coverage --campaign 7000
	$(PY) tools/coverage.py build/coverage --campaign 7000 --era mainline
	$(PY) tools/coverage.py build/coverage
