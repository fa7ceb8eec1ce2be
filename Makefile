# medgate: `make run` starts the server, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch for laptops and CI; GPU machines set TORCH_SPEC= (empty) and
# VENV_FLAGS=--system-site-packages to use the torch they bring.
TORCH_SPEC ?= torch==2.13.0
VENV_FLAGS ?=

.PHONY: install run test peers bench soak clean serve-config gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@if [ -n "$(TORCH_SPEC)" ] && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		$(BIN)/pip install --quiet "$(TORCH_SPEC)"; fi
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/medgate serve

peers:
	@bash .ci/install-peers

test: install peers
	$(BIN)/python -m pytest

# Every benchmark runs even when one fails (its JSON records why); the README table is regenerated
# from what was measured, and the target fails at the end naming the benchmarks that did not pass.
BENCHMARKS := bench_cxr_latency bench_ct_latency model_core serve_overhead dicom_ingest iomt_throughput scale_out
bench: install
	@bash benchmarks/peers/setup.sh || echo "LitServe/BentoML environments not made: serve_overhead skips them" >&2
	@failed=""; for name in $(BENCHMARKS); do \
		$(BIN)/python -m benchmarks.$$name || failed="$$failed $$name"; done; \
	$(BIN)/python -m benchmarks.readme_table; \
	if [ -n "$$failed" ]; then echo "benchmarks that failed:$$failed" >&2; exit 1; fi

# `make soak MINUTES=2` for a quick check; the tables in README.md are regenerated after it.
MINUTES ?= 30
soak: install
	$(BIN)/python -m benchmarks.soak --minutes $(MINUTES)
	$(BIN)/python -m benchmarks.readme_table

# Every GPU path once on a machine with a CUDA GPU (engines, ceiling, chest CT, a training step);
# without one it says so and runs its CPU parts. The README table is regenerated after it.
gpu-check: install
	$(BIN)/python -m benchmarks.gpu_check
	$(BIN)/python -m benchmarks.readme_table

clean:
	rm -rf $(VENV) var

serve-config: install
	$(BIN)/serve build serving.serve_app:app -o serving/serve_config.yaml
	sed -i 's/^- name: app1$$/- name: medgate/' serving/serve_config.yaml
