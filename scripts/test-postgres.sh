#!/usr/bin/env bash
# start: runs a throwaway PostgreSQL on 127.0.0.1:55432 and prints its SQLAlchemy URL; stop: ends it.
set -euo pipefail
PGPORT="${CHATDF_TEST_PGPORT:-55432}"
PGDIR="${CHATDF_TEST_PGDIR:-/tmp/chatdf-test-pg}"
bindir=""
for d in /usr/lib/postgresql/*/bin; do [ -x "$d/pg_ctl" ] && bindir="$d"; done
[ -n "$bindir" ] || { echo "no PostgreSQL server binaries (apt-get install postgresql)" >&2; exit 1; }
as_pg() {
  if [ "$(id -u)" = "0" ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "${1:-start}" in
  start)
    if ! as_pg "$bindir/pg_ctl" -D "$PGDIR" status >/dev/null 2>&1; then
      rm -rf "$PGDIR"; mkdir -p "$PGDIR"
      [ "$(id -u)" = "0" ] && chown postgres "$PGDIR"
      as_pg "$bindir/initdb" -D "$PGDIR" -A trust -U postgres >/dev/null
      as_pg "$bindir/pg_ctl" -D "$PGDIR" -l "$PGDIR/log" -w \
        -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    fi
    echo "postgresql+psycopg://postgres@127.0.0.1:$PGPORT/postgres"
    ;;
  stop)
    as_pg "$bindir/pg_ctl" -D "$PGDIR" -m fast stop >/dev/null 2>&1 || true
    ;;
esac
