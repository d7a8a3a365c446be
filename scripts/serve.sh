#!/usr/bin/env bash
# Installs what is missing, then starts chatdf (embedded Ray, SQLite under ./data/) on HOST:PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec .venv/bin/chatdf serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"
