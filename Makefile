# Everything runs inside .venv (Python 3.12), created on first use.
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell tools/find_python.sh)

.PHONY: install run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: no Python 3.12/3.13 interpreter found (see tools/find_python.sh)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# The main job: train configs/shapes32.py into runs/shapes32 (resumes when run again).
run: install
	$(PY) train.py --config configs/shapes32.py --workdir runs/shapes32

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/train_loop.py

clean:
	rm -rf $(VENV) .jax_cache
