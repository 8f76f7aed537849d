#!/usr/bin/env bash
# One self-checking serving benchmark for a GPU host (the figures of the GPU path come from here).
#
#   bash scripts/gpu_bench.sh                    # GPU host: about 4 minutes, never more than 7
#   bash scripts/gpu_bench.sh --train-epochs 0   # random-init victim (no training; the defended row is then moot)
#   bash scripts/gpu_bench.sh --cpu-smoke        # the same steps on the CPU, small and quick (no targets)
#
# Steps, each under `timeout`: (1) check that torch sees a CUDA device; (2) render the dataset's test
# split in the background (legitimate-shaped traffic for the defended tier); (3) the victim: the
# gpu-r18 preset (ResNet-18, width 64) trained 10 epochs by python -m bench.quick_victim (seconds on
# a GPU; throughput needs no trained model, but on a random-init one the similar-query defence flags
# every request, see bench/quick_victim.py), falling back to a random-init width-64 ResNet-18 if
# training fails or overruns; --train-epochs N sets the epochs, 0 skips training; (4) python -m
# bench.api_throughput on CUDA at concurrency 32 and 64, 32 PNG images per request, max batch 256,
# with and without every defence on, and the in-process baseline (batch 256 too) in the same run,
# written to results/serving/api_throughput_cuda.json; (5) python -m bench.jpeg_decode: nvJPEG against
# Pillow per image size (results/serving/jpeg_decode_cuda.json); (6) python -m bench.serving_targets prints the
# table and exits non-zero unless one level at concurrency >= 32 serves >= 50,000 img/s, >= 40% of
# in-process batch 256, and keeps >= 80% of that with every defence on.
#
# Environment: PYTHON (default: .venv/bin/python when present, else python3), WORKERS (server
# processes; default 8 when a store can be shared: REDIS_URL set or redis-server on PATH, else 1),
# SECONDS_PER_LEVEL (default 8). On a host where the project is not installed, put the source tree
# (and the wheels it lacks) on PYTHONPATH first.
set -euo pipefail

cd "$(dirname "$0")/.."
mode=gpu
epochs=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu-smoke|--dry-run) mode=smoke ;;
    --train-epochs) epochs="${2:?--train-epochs needs a number}"; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
source scripts/gpu_common.sh  # PYTHON, step

step "1. device"
if [[ $mode == gpu ]]; then
  timeout 60 "$PYTHON" -c 'import sys, torch
ok = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}: " + (torch.cuda.get_device_name(0) if ok else "no CUDA device"))
sys.exit(0 if ok else 1)' || { echo "no CUDA device: run it on a GPU host, or --cpu-smoke here" >&2; exit 1; }
else
  echo "CPU smoke: the GPU run's steps on the CPU, small sizes, targets reported but not enforced"
fi

step "2. test split (background)"
timeout 150 "$PYTHON" -c 'from shared.data.synthetic import DataSpec, load_split
print("test split", load_split(DataSpec(), "test", progress=False).images.shape)' &
data_pid=$!

step "3. victim"
model_args=(--width 64)
[[ $mode == smoke ]] && model_args=(--width 8)
[[ -z "$epochs" ]] && epochs=$([[ $mode == smoke ]] && echo 0 || echo 10)
trained=no
if [[ $epochs -gt 0 ]]; then
  ckpt=runs/gpu-bench-victim-e$epochs
  rm -rf "$ckpt"  # never resume an older run's state
  wait "$data_pid" || true  # one writer of the dataset cache at a time
  if [[ $mode == smoke ]]; then victim=(--preset tiny --device cpu); else victim=(--preset gpu-r18); fi
  if timeout 120 "$PYTHON" -m bench.quick_victim "${victim[@]}" --epochs "$epochs" --out "$ckpt"; then
    model_args=(--checkpoint "$ckpt")
    trained=yes
  else
    echo "warning: training failed or overran: random-init victim instead (the defended row is then moot)" >&2
  fi
fi
[[ $trained == yes ]] && echo "victim: ${victim[1]} trained $epochs epochs ($ckpt)" \
  || echo "victim: random-init ResNet-18 width ${model_args[1]} (made by the bench)"

if [[ -z "${WORKERS:-}" ]]; then
  if [[ -n "${REDIS_URL:-}" ]] || command -v redis-server >/dev/null; then WORKERS=$([[ $mode == smoke ]] && echo 2 || echo 8); else WORKERS=1; fi
fi
[[ $WORKERS -eq 1 && $mode == gpu ]] && echo "warning: 1 server process (no REDIS_URL, no redis-server): the decoding of 50,000 PNG/s does not fit one process" >&2
redis_args=()
[[ -n "${REDIS_URL:-}" ]] && redis_args=(--redis "$REDIS_URL")
wait "$data_pid" 2>/dev/null || true

step "4. bench ($WORKERS server processes)"
left=$((370 - (SECONDS - start)))  # the whole script stays under 7 minutes (40 s kept for step 5)
(( left > 270 )) && left=270
(( left < 90 )) && { echo "only $left s left for the bench: giving up" >&2; exit 1; }
if [[ $mode == gpu ]]; then
  out=api_throughput_cuda
  timeout "$left" "$PYTHON" -m bench.api_throughput --device cuda "${model_args[@]}" --max-batch 256 --images-per-request 32 \
    --concurrency 32 64 --seconds "${SECONDS_PER_LEVEL:-8}" --workers "$WORKERS" --defences --traffic legit \
    --threads 4 "${redis_args[@]}" --out "$out"
  check=()
else
  out=api_throughput_smoke
  timeout 120 "$PYTHON" -m bench.api_throughput --device cpu "${model_args[@]}" --max-batch 64 --images-per-request 8 \
    --concurrency 32 --seconds "${SECONDS_PER_LEVEL:-1.5}" --workers "$WORKERS" --defences --traffic legit \
    --threads 1 "${redis_args[@]}" --out "$out"
  check=(--report-only)
fi

step "5. JPEG decoding on the device (device_decode: auto's calibration)"
if [[ $mode == gpu ]]; then jpeg=(--device cuda); else jpeg=(--device cpu --sides 32 64 --batch 4 --repeats 1); fi
timeout 40 "$PYTHON" -m bench.jpeg_decode "${jpeg[@]}" || echo "warning: bench.jpeg_decode failed or overran" >&2

step "6. targets"
results="${HEIST_RESULTS_DIR:-results}/serving/$out.json"
status=0
"$PYTHON" -m bench.serving_targets "$results" "${check[@]}" || status=$?
echo "total $((SECONDS - start)) s; result $results"
exit "$status"
