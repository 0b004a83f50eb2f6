#!/usr/bin/env bash
# Create .venv (if needed) and install the package with its test and export extras, pinned to
# the tested torch (scripts/constraints.txt). As root (CI, a fresh machine) it also installs the
# Debian package with Fashion-MNIST, the experiments' data set. Idempotent: reinstalls only when
# setup.cfg, pyproject.toml or the constraints changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ "$(id -u)" = 0 ] && [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }) \
        || echo "note: could not install dataset-fashion-mnist; the Fashion-MNIST experiments need it" >&2
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.uabnn-installed
want="$(cat setup.cfg pyproject.toml scripts/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c scripts/constraints.txt -e ".[test,export]"
    echo "$want" > "$stamp"
fi
