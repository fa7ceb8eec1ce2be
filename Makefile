# medgate: `make run` starts the server, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch for laptops and CI; GPU machines set TORCH_SPEC= (empty) and
# VENV_FLAGS=--system-site-packages to use the torch they bring.
TORCH_SPEC ?= torch==2.13.0
VENV_FLAGS ?=

.PHONY: install run test peers bench clean serve-config

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

bench: install
	@for script in benchmarks/bench_cxr_latency.py benchmarks/model_core.py benchmarks/serve_overhead.py \
		benchmarks/dicom_ingest.py benchmarks/iomt_throughput.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) var

serve-config: install
	$(BIN)/serve build serving.serve_app:app -o serving/serve_config.yaml
	sed -i 's/^- name: app1$$/- name: medgate/' serving/serve_config.yaml
