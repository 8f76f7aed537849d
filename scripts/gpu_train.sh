#!/usr/bin/env bash
# One self-checking training run for a GPU host: the full gpu-r18 preset, its wall time and its probes.
#
#   bash scripts/gpu_train.sh                       # GPU host: gpu-r18, 200 epochs, never more than 7 minutes
#   bash scripts/gpu_train.sh --nproc 4             # the same on 4 GPUs (torchrun, DDP; the batch of 512 split 4 ways)
#   bash scripts/gpu_train.sh --cpu-smoke           # the same steps on the CPU: a tiny config, seconds, no targets
#   bash scripts/gpu_train.sh --cpu-smoke --nproc 2 # ... in two CPU processes (torchrun, Gloo)
#   bash scripts/gpu_train.sh --steal               # then (5) the stealing table at width 64 against the new victim
#                                                   # (python -m bench.attack_table on the GPU; up to 5 more minutes)
#
# Steps, each under `timeout`: (1) check that torch sees CUDA (and N devices); (2) render the training split
# (the probe splits render in the background on a GPU run, in the foreground in the smoke run); (3) python -m
# server.cli train --preset gpu-r18 --quiet into RUN_DIR, emptied first (a timing run never resumes), under
# `python -m torch.distributed.run --standalone --nproc-per-node N` when N > 1: training, then the linear
# probes and (GPU run) the random-init baseline; (4) write results/cpu/gpu_train_r18.json (smoke:
# gpu_train_smoke.json) through bench.harness.write_json: the wall time of step 3, training seconds and
# images/s from the checkpoint, losses, probes and checks. It exits non-zero unless every epoch ran and the
# losses are finite and fell, and (GPU run) the main probe beats the random-init encoder by >= 10 points and
# step 3 ended within its share of the 7 minutes; the smoke run reports the time but does not enforce it.
#
# Environment: PYTHON (default: .venv/bin/python when present, else python3), RUN_DIR (the checkpoint folder,
# default runs/gpu-train-<preset>), OMP_NUM_THREADS (default with N > 1: the cores / N). On a host where the
# project is not installed, put the source tree (and the wheels it lacks) on PYTHONPATH first.
set -euo pipefail

cd "$(dirname "$0")/.."
mode=gpu
nproc=1
steal=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu-smoke|--dry-run) mode=smoke ;;
    --nproc) nproc="${2:?--nproc needs a number}"; shift ;;
    --steal) steal=1 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
source scripts/gpu_common.sh  # PYTHON, step

if [[ $mode == gpu ]]; then
  preset=gpu-r18
  train_args=(--preset gpu-r18)
  name=gpu_train_r18
else
  preset=tiny
  train_args=(--preset tiny --device cpu --epochs 2 --width 4 --batch-size 64 --train-size 128 --no-baseline)
  name=gpu_train_smoke
fi
out=${RUN_DIR:-runs/gpu-train-$preset}

step "1. device"
if [[ $mode == gpu ]]; then
  timeout 60 "$PYTHON" -c 'import sys, torch
n = int(sys.argv[1])
ok = torch.cuda.is_available() and torch.cuda.device_count() >= n
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}: "
      + (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no CUDA device"))
sys.exit(0 if ok else 1)' "$nproc" || { echo "needs $nproc CUDA device(s): run it on a GPU host, or --cpu-smoke here" >&2; exit 1; }
else
  echo "CPU smoke: the GPU run's steps on the CPU with a tiny config; the probe and time targets are reported, not enforced"
fi

step "2. data"
render=("$PYTHON" -c 'import sys
from shared.data.synthetic import load_split
from shared.train import get_preset
spec = get_preset(sys.argv[1]).data
for split in sys.argv[2:]:
    print(split, load_split(spec, split, progress=False).images.shape, flush=True)' "$preset")
timeout 200 "${render[@]}" train
probe_splits=(test shifted_train shifted_test)
if [[ $mode == gpu ]]; then
  timeout 200 "${render[@]}" "${probe_splits[@]}" &  # ~30 s, long done when the probes (after minutes of training) read them
else
  timeout 120 "${render[@]}" "${probe_splits[@]}"
fi

step "3. train ($nproc process(es))"
rm -rf "$out"
launch=("$PYTHON")
[[ $nproc -gt 1 ]] && launch=("$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$nproc")
budget=$((380 - (SECONDS - start)))  # with step 4's 30 s the whole script stays under 7 minutes
[[ $mode == smoke ]] && budget=240
(( budget < 120 )) && { echo "only $budget s left for training: giving up" >&2; exit 1; }
threads=${OMP_NUM_THREADS:-}
if [[ $nproc -gt 1 && -z "$threads" ]]; then  # torchrun's default is 1 thread: the probes on rank 0 want more
  threads=$(( $(getconf _NPROCESSORS_ONLN) / nproc ))
  (( threads > 0 )) || threads=1
fi
cmd=("${launch[@]}" -m server.cli train "${train_args[@]}" --out "$out" --quiet)
echo "${cmd[*]}  (limit ${budget} s)"
t0=$(date +%s%N)
rc=0
env ${threads:+OMP_NUM_THREADS=$threads} timeout "$budget" "${cmd[@]}" || rc=$?
wall_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[[ $rc -eq 124 ]] && echo "training overran its $budget s" >&2

step "4. result"
status=0
timeout 30 "$PYTHON" - "$mode" "$preset" "$out" "$name" "$rc" "$wall_ms" "$budget" "$nproc" "${cmd[*]}" <<'EOF' || status=$?
import json
import math
import sys
from pathlib import Path

from bench.harness import portable, write_json
from shared.train import get_preset

mode, preset, out, name, rc, wall_ms, budget, nproc, command = sys.argv[1:]
out, rc, wall, budget = Path(out), int(rc), int(wall_ms) / 1000, float(budget)
cfg = get_preset(preset)
payload: dict = {"preset": preset, "mode": mode, "processes": int(nproc), "command": portable(command),
                 "exit_code": rc, "wall_seconds": round(wall, 1), "limit_seconds": budget}
checks = []


def check(what: str, ok: bool, enforced: bool = True) -> None:
    checks.append({"check": what, "pass": bool(ok), "enforced": enforced})


if (out / "config.json").is_file() and rc == 0:
    from shared.checkpoint import read_config

    conf = read_config(out)
    m, losses = conf.metrics, conf.training.get("losses", [])
    epochs = conf.training.get("epochs", len(losses))
    payload.update(epochs=epochs, batch_size=conf.training.get("batch_size"), losses=losses,
                   train_seconds=m.get("train_seconds"), train_images_per_s=m.get("train_images_per_s"),
                   probes={k: v for k, v in m.items() if not k.startswith("train_")})
    check(f"all {epochs} epochs ran", len(losses) == epochs)
    check("losses finite and falling", all(math.isfinite(x) for x in losses) and losses[-1] < losses[0])
    if "random_probe_shape" in m:  # the smoke run skips the random-init baseline
        gain = m["probe_shape"] - m["random_probe_shape"]
        payload["probe_shape_gain"] = round(gain, 4)
        check("probe_shape >= random init + 10 points", gain >= 0.10, enforced=mode == "gpu")
    check(f"train command within {budget:.0f} s", wall <= budget, enforced=mode == "gpu")
else:
    state = out / "train_state.json"
    done = json.loads(state.read_text()) if state.is_file() else {}
    payload.update(epochs=cfg.epochs, epochs_done=done.get("epoch", 0), losses=done.get("losses", []))
    check(f"train command finished (exit {rc}{', time limit' if rc == 124 else ''})", False)
payload["checks"] = checks
payload["pass"] = all(c["pass"] for c in checks if c["enforced"])
path = write_json("cpu", name, payload)
for c in checks:
    print(f"{'PASS' if c['pass'] else 'FAIL'}{'' if c['enforced'] else ' (report only)'}  {c['check']}")
for k in ("wall_seconds", "train_seconds", "train_images_per_s", "probe_shape_gain"):
    if k in payload:
        print(f"{k}: {payload[k]}")
print(f"result: {path}")
sys.exit(0 if payload["pass"] else 1)
EOF
wait 2>/dev/null || true

if [[ $steal == 1 && $status == 0 ]]; then
  # the stealing table against the victim just trained: its API (on the GPU when there is one), MSE / InfoNCE /
  # SoftNN copies at two budgets, written to results/attack/<out>.json by the bench itself
  if [[ $mode == gpu ]]; then
    steal_args=(--width 64 --device cuda --losses mse,infonce,softnn --budgets 2000,4000 --epochs 30 --batch-size 256
                --out attack_table_gpu_r18)
  else
    steal_args=(--width 4 --device cpu --losses mse --budgets 64 --epochs 1 --batch-size 32 --probe-train-size 200
                --out attack_table_smoke)
  fi
  step "5. stealing table (${steal_args[*]})"
  timeout 300 "$PYTHON" -m bench.attack_table --checkpoint "$out" --cache "$out/attack-cache" "${steal_args[@]}" || status=$?
fi
echo "total $((SECONDS - start)) s"
exit "$status"
