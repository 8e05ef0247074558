#!/usr/bin/env bash
# The main job: PDT against plain gradient descent and the paper's ablations on the toy problem.
source "$(dirname "$0")/env.sh"
pdt-bench toy "$@"
