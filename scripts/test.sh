#!/usr/bin/env bash
# The whole test suite: installs what it needs, makes sure a Redis answers, runs pytest.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "test: starting redis-server on 127.0.0.1:6379" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  else
    echo "test: no Redis answers on 127.0.0.1:6379 and redis-server is not installed (apt-get install redis-server)" >&2
  fi
fi
exec uv run --frozen pytest "$@"
