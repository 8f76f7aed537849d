#!/usr/bin/env bash
# The main job: the whole testbed in one command (heist-demo). It copies the shipped CPU victim to
# runs/victim when that holds none (--train-victim trains one instead), makes the data, serves the
# victim, runs a legitimate customer and a thief under a defence policy, hosts the stolen copy, runs
# the defender and prints one summary (README: its wall time from a fresh clone).
# Usage: bash scripts/main.sh [heist-demo args, e.g. --policy pow --queries 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec uv run --frozen heist-demo "$@"
