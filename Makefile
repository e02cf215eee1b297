# The two commands: `make demo` and `make test`. Both build .venv from requirements.txt if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

test: setup
	$(PY) -m pytest

demo: setup
	@echo "The MNIST-5k demo pipeline (training, prediction, report) is not built yet: it needs the"
	@echo "dataset/model loaders and training stages. The evaluation stages run today on any prediction files:"
	@echo "  $(PY) evaluate/2_temp_scale.py --help"
	@exit 1

bench: setup
	$(PY) bench/bench_metrics.py
	$(PY) bench/bench_duo_eval.py

clean:
	rm -rf $(VENV) .pytest_cache
