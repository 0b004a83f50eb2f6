#!/usr/bin/env bash
# Set up and run the demo: train a sign BNN on scikit-learn's digits, convert it, compare.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/uabnn-convert demo "$@"
