#!/usr/bin/env bash
# The test suite (CPU only; tests that need ../shared data skip when it is absent). Installs
# torch-pdt with the [test] extra: the harness, Lightning, transformers, pytest, hypothesis, PyDMD.
EXTRAS=test source "$(dirname "$0")/env.sh"
python -m pytest -q "$@"
