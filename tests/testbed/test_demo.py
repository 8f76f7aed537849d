"""The one-command demo end to end on a tiny victim (real server subprocesses, real CLIs), and the
shipped victim it starts from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmd:
                found.append(cmd)
    return found


@pytest.mark.slow
@pytest.mark.live
def test_demo_end_to_end_on_a_tiny_victim(tiny_victim, tmp_path):
    from testbed.demo import main

    out = tmp_path / "demo"
    rc = main(["--victim", str(tiny_victim), "--policy", "b4b", "--queries", "300", "--epochs", "1", "--verify-n", "100",
               "--probe-train-size", "300", "--threads", "2", "--out", str(out)])
    assert rc == 0
    (run,) = list(out.iterdir())
    s = json.loads((run / "summary.json").read_text())
    assert set(s["customer"]) == set(s["thieves"]) == {"none", "b4b"}
    for pol, t in s["thieves"].items():
        assert t["cost"]["queries"] == 300 and t["cost"]["answers_bought_this_run"] == 300, pol
        assert t["defence_state"]["images"] == 300 and t["defence_state"]["tier"] == f"policy-{pol}"
        assert {"watermark_aligned", "dataset_inference", "similarity"} <= {v["method"] for v in t["verdicts"]}
        assert all(v["p_value"] is None or 0 <= v["p_value"] <= 1 for v in t["verdicts"])
        assert t["overall_verdict"] in ("stolen", "independent")
        assert (run / f"stolen-{pol}" / "config.json").is_file() and (run / f"verify-{pol}" / "verify.json").is_file()
    assert s["thieves"]["b4b"]["defence_state"]["coverage"] > 0 and s["thieves"]["none"]["defence_state"]["coverage"] == 0
    md = (run / "summary.md").read_text()
    assert "| tier none | tier b4b |" in md and "overall verdict" in md
    assert _processes_mentioning(str(tiny_victim)) == [] and _processes_mentioning(str(run)) == []


def test_shipped_victim_is_checked_and_loads(tmp_path):
    from shared.checkpoint import load_checkpoint
    from testbed.demo import copy_shipped_victim, ensure_victim, shipped_victim

    src = shipped_victim("cpu")
    assert src is not None, "assets/victim-cpu must ship with SHA256SUMS"
    cfg = ensure_victim(tmp_path / "victim", "cpu")
    assert cfg["training"]["preset"] == "cpu" and cfg["metrics"]["watermark_acc"] >= 0.99
    ck = load_checkpoint(tmp_path / "victim")
    assert ck.config.width == 16 and not list((tmp_path / "victim").glob("*.tmp"))
    # a damaged copy is refused, and nothing is written
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in src.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    raw = bytearray((bad / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (bad / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(RuntimeError, match="SHA256SUMS"):
        copy_shipped_victim(bad, tmp_path / "dest")
    assert not (tmp_path / "dest" / "model.safetensors").exists()
