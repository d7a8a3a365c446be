#!/usr/bin/env bash
# Installs what is missing, starts a throwaway PostgreSQL if one can be started, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
if [ -z "${POSTGRES_TEST_URL:-}" ]; then
  if url=$(./scripts/test-postgres.sh start); then
    export POSTGRES_TEST_URL="$url"
    trap './scripts/test-postgres.sh stop >/dev/null 2>&1 || true' EXIT
  elif [ "${CHATDF_REQUIRE_POSTGRES:-0}" = "1" ]; then
    echo "[test] PostgreSQL is required (CHATDF_REQUIRE_POSTGRES=1) but could not be started" >&2
    exit 1
  else
    echo "[test] no PostgreSQL server here: tests marked 'postgres' will be skipped"
  fi
fi
export RAY_USAGE_STATS_ENABLED=0
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite here too.
exit $rc
