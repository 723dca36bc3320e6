#!/usr/bin/env bash
# The whole suite: real PostgreSQL (127.0.0.1:5432), Redis (127.0.0.1:6379), Kafka on Tansu,
# and the embedded mode's own tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-kafka.sh "${VENV:-.venv}/bin/pytest" "$@"
