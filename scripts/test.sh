#!/usr/bin/env bash
# Set up, lint, check the layers, and run the test suite (the default run skips tests marked slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
# pytest exits 5 when it collects nothing: that fails this script, as it should.
.venv/bin/python -m pytest -p no:cacheprovider "$@"
