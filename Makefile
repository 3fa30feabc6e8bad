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

# The main job: a short isometry-regularized training demo of the tiny model.
run: install
	$(PY) train.py

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) .jax_cache
