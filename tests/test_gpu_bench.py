"""The GPU serving bench's CPU-checkable parts: the targets' verdicts, the process-tree CPU sum, the
output name per device, and scripts/gpu_bench.sh's CPU smoke mode end to end (live)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _result(api: float, ref: float, defended: float | None, conc: int = 32, errors: int = 0) -> dict:
    row = {"concurrency": conc, "api": {"images_per_s": api, "p99_ms": 5.0, "errors": errors, "server_cpu": 3.0}}
    if defended is not None:
        row["defended"] = {"images_per_s": defended, "errors": 0, "accounts_rotated": 2}
    return {"device": "cuda", "gpu": "test", "model": {"arch": "resnet18", "width": 64}, "images_per_request": 32,
            "in_process_256": {"images_per_s": ref}, "rows": [row]}


def test_targets_pass_only_when_all_three_hold():
    from bench.serving_targets import evaluate

    ok, problems = evaluate(_result(60_000, 120_000, 50_000))
    assert not problems and ok[0]["pass"]
    for api, ref, dfd in ((45_000, 100_000, 45_000),  # below 50k img/s
                          (60_000, 200_000, 60_000),  # 30% of in-process batch 256
                          (60_000, 120_000, 47_000)):  # defended keeps 78%
        rows, problems = evaluate(_result(api, ref, dfd))
        assert not problems and not rows[0]["pass"]
    _, problems = evaluate(_result(60_000, 120_000, None))
    assert any("--defences" in p for p in problems)
    _, problems = evaluate(_result(60_000, 120_000, 60_000, conc=16))
    assert any("concurrency >= 32" in p for p in problems)
    _, problems = evaluate(_result(60_000, 120_000, 60_000, errors=3))
    assert any("failed requests" in p for p in problems)


def test_targets_cli_exit_codes(tmp_path, capsys):
    from bench.serving_targets import main

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_result(60_000, 120_000, 50_000)))
    bad.write_text(json.dumps(_result(6_000, 120_000, 5_000)))
    assert main([str(good)]) == 0 and "PASS" in capsys.readouterr().out
    assert main([str(bad)]) == 1 and "FAIL" in capsys.readouterr().out
    assert main([str(bad), "--report-only"]) == 0


def test_tree_cpu_seconds_counts_children():
    from bench.loadgen import process_cpu_seconds, tree_cpu_seconds

    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.4: pass\ntime.sleep(5)"])
    try:
        time.sleep(1.5)
        own = process_cpu_seconds(os.getpid())
        assert tree_cpu_seconds(os.getpid()) >= own + 0.3
    finally:
        child.kill()
        child.wait()
    assert tree_cpu_seconds(2**22 + 12345) != tree_cpu_seconds(2**22 + 12345)  # nan for a missing process


def test_device_resolution(monkeypatch):
    import torch

    from bench import api_throughput as bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.resolve_device("auto") == "cpu" and bench.resolve_device("cpu") == "cpu"
    with pytest.raises(SystemExit, match="no CUDA device"):
        bench.resolve_device("cuda")


def test_gpu_bench_script_parses():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_bench.sh")], check=True)


@pytest.mark.live
def test_gpu_bench_cpu_smoke(tmp_path):
    """The GPU script's steps on the CPU (random-init model, 2 processes on a private Redis when
    redis-server is installed, every defence on): a usable result and a verdict table, in < 60 s."""
    env = {**os.environ, "HEIST_RESULTS_DIR": str(tmp_path), "PYTHON": sys.executable}
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_bench.sh"), "--cpu-smoke"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "targets: " in r.stdout and "(report only)" in r.stdout
    result = json.loads((tmp_path / "serving" / "api_throughput_smoke.json").read_text())
    row = result["rows"][0]
    assert result["device"] == "cpu" and result["in_process_256"]["images_per_s"] > 0
    assert row["concurrency"] == 32 and row["api"]["errors"] == 0 and row["api"]["images_per_s"] > 0
    assert "defended" in row and row["api"]["server_cpu"] > 0
    assert result["api_vs_in_process_max_rel_err"] < 1e-4
    jpeg = json.loads((tmp_path / "serving" / "jpeg_decode_cpu.json").read_text())  # step 5, torchvision's CPU decoder
    assert [r["side"] for r in jpeg["rows"]] == [32, 64] and all(r["device_ms"] > 0 for r in jpeg["rows"])
    assert time.monotonic() - t0 < 120  # about 30 s alone on 2 cores
