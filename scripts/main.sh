#!/usr/bin/env bash
# The main job: the whole testbed in one command (heist-demo). It makes the data, trains the default
# CPU victim when runs/victim holds none (about 15 minutes here), serves it, runs a legitimate
# customer and a thief under a defence policy, hosts the stolen copy, runs the defender and prints
# one summary. With a cached victim it takes about 10 minutes on 2 cores.
# Usage: bash scripts/main.sh [heist-demo args, e.g. --policy pow --queries 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec uv run --frozen heist-demo "$@"
