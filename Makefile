# Two set-up commands: `make demo` and `make test`. Both create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test install clean slurm-up slurm-down

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	# torch first and pinned: a bare `torch` would pull a multi-GB CUDA build; users bring their own.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# veRL's BaseTool for the tool tests; its own pins would downgrade transformers, so no deps (docs/verl.md)
	$(BIN)/pip install -q --no-deps verl==0.9.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medret search "sepsis mortality risk in elderly ICU patients" --corpus sample --retriever BM25 --topk 5

test: $(STAMP)
	# SLURM and Ray tests start (and stop) their own local clusters; see scripts/slurm-up.
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
