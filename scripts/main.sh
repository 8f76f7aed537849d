#!/usr/bin/env bash
# The main job: make the data, train the default CPU victim, print its linear-probe report.
# Usage: bash scripts/main.sh [extra heist-server train args, e.g. --preset tiny]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
uv run --frozen heist-server data
exec uv run --frozen heist-server train --preset cpu --out runs/victim "$@"
