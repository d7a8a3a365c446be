#!/usr/bin/env bash
# Creates .venv/ at the repo root (if missing) and installs chatdf with its dev tools into it:
# every dependency at the version and hash requirements.lock pins (./scripts/lock.sh writes it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.chatdf-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements.lock -nt "$stamp" ] \
  || [ scripts/install.sh -nt "$stamp" ]; then
  echo "[install] installing chatdf and dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install --upgrade --quiet pip
  .venv/bin/python -m pip install --quiet --progress-bar off --require-hashes -r requirements.lock
  # compat: the checkout goes on sys.path through a plain .pth line. The default (an import
  # finder that setuptools writes) costs every Python start ≈ 11 ms of imports (pathlib, re,
  # urllib), and the embedded Ray starts one per worker (docs/architecture.md, "Forked workers").
  # setuptools calls the mode transitional: where it is gone, the default install follows.
  .venv/bin/python -m pip install --quiet --progress-bar off --no-deps -e . \
    --config-settings editable_mode=compat 2>/dev/null \
    || .venv/bin/python -m pip install --quiet --progress-bar off --no-deps -e .
  touch "$stamp"
fi
echo "[install] ready: $(.venv/bin/python -c 'import ray, polars; print("ray", ray.__version__, "polars", polars.__version__)')"
