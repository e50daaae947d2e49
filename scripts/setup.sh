#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with this project and its pinned packages, and the
# Debian Fashion-MNIST package when it is missing and apt is usable. Safe to run every time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Re-install only when pyproject.toml changed since the last successful install.
stamp=.venv/.prunesweep-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test,timm]"  # timm: its models are tested too
  touch "$stamp"
fi

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo_cmd="sudo"
    echo "installing the Fashion-MNIST dataset package (dataset-fashion-mnist)..." >&2
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "warning: could not install dataset-fashion-mnist; pass --data-root DIR to use another copy" >&2
  else
    echo "warning: Fashion-MNIST not found and apt-get unavailable; pass --data-root DIR" >&2
  fi
fi
