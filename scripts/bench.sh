#!/usr/bin/env bash
# Every benchmark, in full mode on this machine's services, against a scratch database that
# is created, migrated and dropped here (the benchmarks write data). Each benchmark prints a
# table and, as its last line, one JSON object with its figures and ratio to a raw baseline.
# Extra arguments go to every `tanhui bench` call only when BENCH is set to one name.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${VENV:-.venv}/bin/tanhui
PG=${TANHUI_BENCH_PG:-postgresql://postgres@127.0.0.1:5432}
name="tanhui_bench_$(date +%s)_$$"
export TANHUI_DATABASE_URL="$PG/$name"
export TANHUI_REDIS_URL=${TANHUI_REDIS_URL:-redis://127.0.0.1:6379/0}
export TANHUI_REDIS_PREFIX="bench:$name:"
# A broker of its own when TANHUI_TEST_KAFKA_PORT names a free port (a shared one may stop).
export TANHUI_KAFKA_BOOTSTRAP=${TANHUI_KAFKA_BOOTSTRAP:-127.0.0.1:${TANHUI_TEST_KAFKA_PORT:-19092}}
export TANHUI_KAFKA_TOPIC_PREFIX="$name."
export TANHUI_LOG_LEVEL=WARNING

psql "$PG/postgres" -qc "CREATE DATABASE \"$name\""
trap 'psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)"' EXIT
"$T" migrate

run() { echo "== tanhui bench $*" >&2; scripts/with-kafka.sh "$T" bench "$@"; }
if [ -n "${BENCH:-}" ]; then
  run "$BENCH" "$@"
else
  run points
  run flash-sale
  run trading
  run ingest --mode full
  run ingest --mode embedded --events 200000
fi
