# The two commands: `make demo` and `make test`. Both build .venv from requirements.txt if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile -r requirements.txt
	@# byte-compile on every core (pip does it on one: ~55 s of a ~2 min install here); like pip, skip the
	@# few files that packages ship as invalid Python (compileall then exits 1)
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -m "" --durations=10

demo: setup
	$(PY) evaluate/run_pipeline.py --config configs/pipeline_mnist5k.yaml

bench: setup
	$(PY) bench/bench_metrics.py
	$(PY) bench/bench_duo_eval.py

clean:
	rm -rf $(VENV) .pytest_cache
