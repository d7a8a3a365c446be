#!/usr/bin/env bash
# Regenerates requirements.lock (every runtime and dev dependency, pinned, with hashes) from
# pyproject.toml; pins already in the lock stay unless pyproject.toml needs others. `--upgrade`
# (or `--upgrade-package NAME`) moves them to the newest releases. Commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
[ -x .venv/bin/uv ] || .venv/bin/python -m pip install --quiet --progress-bar off uv
.venv/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
  --generate-hashes --custom-compile-command ./scripts/lock.sh -o requirements.lock --quiet "$@"
echo "[lock] requirements.lock written; ./scripts/install.sh installs from it"
