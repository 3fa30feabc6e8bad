# Everything runs inside .venv (Python 3.12), created on first use.
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell tools/find_python.sh)

.PHONY: install run analysis test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: no Python 3.12/3.13 interpreter found (see tools/find_python.sh)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# The main job: train configs/shapes16_iso.py into runs/shapes16_iso (resumes when run again).
run: install
	$(PY) train.py --config configs/shapes16_iso.py --workdir runs/shapes16_iso

# Analysis of the main job: trains the shapes factor oracle once (runs/oracle16), then runs every
# metric on runs/shapes16_iso and writes runs/shapes16_iso/analysis/ (metrics.json and PNG pictures).
analysis: install
	test -e runs/oracle16/oracle.json || $(PY) -m isodiff_jax.analysis.networks.oracle --out runs/oracle16 --resolution 16
	$(PY) -m isodiff_jax.analysis --workdir runs/shapes16_iso --oracle runs/oracle16 --out runs/shapes16_iso/analysis

# Everything (the README's and CI's test command), and the tier to run while working: all but the
# tests marked slow (@pytest.mark.slow: training runs, subprocesses, benchmarks, the studies).
test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/train_loop.py

clean:
	rm -rf $(VENV) .jax_cache
