#!/usr/bin/env bash
# The test suite (CPU only; tests that need ../shared data skip when it is absent).
source "$(dirname "$0")/env.sh"
python -m pytest -q "$@"
