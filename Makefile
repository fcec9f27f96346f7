# The commands a newcomer types (see README.md). Each target sets up what it
# needs itself: a local virtual environment in .venv, the build, the install.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch that this environment provides; never unpinned.
TORCH  := torch==2.13.0

.PHONY: demo test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Rebuild the extension whenever a Cython source or the build files change.
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml setup.py $(wildcard src/*.pyx src/*.pxd src/*.h)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(VENV)/.peers: $(VENV)/.installed
	$(PY) -m pip install -q $(TORCH)
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/main_job.py

test: $(VENV)/.peers
	$(PY) -m pytest tests -q

bench: $(VENV)/.peers
	$(PY) bench/run_bench.py

clean:
	rm -rf $(VENV) build src/*.c pylstm/*.so *.egg-info

# Release artefacts (README, "Install"): the sdist and stripped manylinux wheels
# for CPython 3.10-3.13 (found under pyenv) into dist/, each installed into a
# fresh venv and smoke-tested there, also on the portable path; ends with a table.
.PHONY: wheels wheel-smoke
wheels:
	$(PYTHON) tools/build_wheels.py --all

# What CI runs after the tests: the same for the default Python only.
wheel-smoke:
	$(PYTHON) tools/build_wheels.py --python $(PYTHON)

# The test suite against an AddressSanitizer + UndefinedBehaviorSanitizer build
# of the extension, made in a scratch copy of the tree (the working copy's own
# modules are left alone); any sanitizer report fails the run. ARGS narrows it,
# e.g. make sanitize ARGS="tests/test_fuzz.py -q".
.PHONY: sanitize
sanitize: $(VENV)/.peers
	$(PY) -m pip install -q "setuptools>=77" "cython>=3.1"  # it builds in place, without build isolation
	PYTHON=$(PY) tools/sanitize.sh $(ARGS)
