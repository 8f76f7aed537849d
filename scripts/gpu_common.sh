# Sourced by scripts/gpu_bench.sh and scripts/gpu_train.sh: the Python to run and the step banner.
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
start=$SECONDS
step() { printf '\n== %s (%ds)\n' "$1" "$((SECONDS - start))"; }
