# Two set-up commands: `make demo` and `make test`. Both create the virtual environments they need.
#   .venv           `make demo`: medret's core only (BM25 search); `make test` / `make install`: medret's own dev
#                   env, python3 ($(PY)), torch 2.13 CPU, medret[dev] (a dev .venv also serves the demo)
#   .venv-searchr1  Search-R1's trainer env: Python 3.9 (pyenv), torch 2.4.0, transformers 4.47.1, numpy<2
#   .venv-verl      veRL's trainer env: Python 3.11 (pyenv), verl 0.9.1 with its dependencies
# Each is built by .ci/env from .ci/envs/NAME.txt and rebuilt when its inputs change; pip's cache is reused.
PY ?= python3
ENVS ?= dev searchr1 verl

.PHONY: demo test install clean slurm-up slurm-down

install:
	PY=$(PY) bash .ci/env dev

demo:
	PY=$(PY) bash .ci/env demo
	.venv/bin/medret search "sepsis mortality risk in elderly ICU patients" --corpus sample --retriever BM25 --topk 5

# The suite in each environment (ENVS="dev" for medret's own only). SLURM and Ray tests start (and stop) their own
# local clusters; see scripts/slurm-up.
test:
	PY=$(PY) bash .ci/test-envs $(ENVS)

clean:
	rm -rf .venv .venv-searchr1 .venv-verl _work/ci build *.egg-info
