"""The testbed layer: policies as validated tiers, the legitimate customer over real HTTP, and the
one-command demo end to end on a tiny victim (real server subprocesses, real CLIs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from server.config import ConfigError, ServerConfig
from server.defences.b4b import sigma_of_coverage
from shared.data.synthetic import DataSpec
from testbed.policies import POLICIES, b4b_beta, policy_defences, policy_tiers

TINY = DataSpec().scaled(0.05)


def _profile(path: Path, coverage: float = 0.12) -> Path:
    path.write_text(json.dumps({"version": 1, "lsh": {"hyperplanes": 12, "hash_sets": 20, "center": None},
                                "similarity": {"space": "projection", "metric": "cosine", "tau": 0.93},
                                "images": [100, 1200], "coverage": [0.02, coverage], "similar_rate": 0.1, "volume": 1200}))
    return path


def test_b4b_beta_prices_the_legitimate_envelope_at_a_thousandth_of_alpha(tmp_path):
    prof = json.loads(_profile(tmp_path / "p.json").read_text())
    for alpha in (0.05, 1.0, 3.0):
        beta = b4b_beta(prof, alpha)
        assert math.isclose(sigma_of_coverage(0.14, alpha=alpha, beta=beta), 1e-3 * alpha, rel_tol=0.02)
        assert sigma_of_coverage(beta, alpha=alpha, beta=beta) == pytest.approx(alpha, rel=1e-5)  # full noise at c = beta
        assert sigma_of_coverage(0.10, alpha=alpha, beta=beta) < 1e-3 * alpha


def test_every_policy_is_a_valid_server_tier(tmp_path):
    prof = _profile(tmp_path / "p.json")
    tiers = policy_tiers(POLICIES, prof, scale=0.2)
    assert set(tiers) == {f"policy-{p}" for p in POLICIES}
    assert tiers["policy-none"]["defences"] == []
    noise = policy_defences("noise", prof, scale=0.2)[0]
    assert noise["name"] == "gaussian_noise" and noise["params"]["sigma"] == pytest.approx(0.1)
    assert [d["name"] for d in tiers["policy-all"]["defences"]] == ["b4b", "gaussian_noise", "similar_query", "pow"]
    cfg = ServerConfig.model_validate({"tiers": tiers})  # the server's own validation, cross-checks included
    assert "policy-pow" in cfg.tiers
    with pytest.raises(ValueError, match="unknown policy"):
        policy_defences("paranoid", prof, scale=0.2)
    _ = ConfigError


@pytest.fixture(scope="module")
def tiny_victim(trained_victim) -> Path:
    return trained_victim


@pytest.mark.slow
def test_legit_customer_over_http_under_every_policy(tiny_victim, tmp_path):
    from shared.cache import QueryCache
    from testbed.legit import LegitTask, legit_user
    from testbed.policies import representation_scale
    from testbed.services import serve

    scale = representation_scale(tiny_victim)
    assert scale > 0
    tiers = policy_tiers(["none", "noise", "b4b"], tiny_victim / "legit_profile.json", scale)
    task = LegitTask(images=150)
    with serve(tiny_victim, {"tiers": tiers}) as srv:
        res = {}
        for pol in ("none", "noise", "b4b"):
            with QueryCache(tmp_path / pol) as cache:
                res[pol] = legit_user(srv.url, srv.new_account(f"c-{pol}", f"policy-{pol}"), cache, task, spec=TINY,
                                      progress=False)
            assert res[pol]["bought"] == res[pol]["queries"] > 0
            assert 0.0 <= res[pol]["accuracy"] <= 1.0
        st = srv.account_defences("c-b4b")
        assert st["images"] == res["b4b"]["queries"] and st["coverage"] > 0
        # the same customer again: everything from its cache, nothing bought twice
        with QueryCache(tmp_path / "none") as cache:
            again = legit_user(srv.url, srv.new_account("c-none-2", "policy-none"), cache, task, spec=TINY, progress=False)
        assert again["bought"] == again["queries"]  # another account: its own answers
        assert srv.account("c-none")["usage"]["images"] == res["none"]["queries"]
    assert srv.proc.poll() is not None  # the server is gone after the context


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


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_servers_die_with_the_process_that_started_them(tiny_checkpoint, sig):
    """No process left behind: the demo/bench parent killed (even with SIGKILL) takes its servers along."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = ("import sys, time\nfrom testbed.services import serve\n"
            f"with serve({str(tiny_checkpoint)!r}, {{}}) as s:\n"
            "    print(s.proc.pid, flush=True)\n    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    server_pid = int(parent.stdout.readline())
    os.kill(server_pid, 0)  # alive
    parent.send_signal(getattr(signal, sig))
    parent.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail(f"server {server_pid} still running after its parent got {sig}")


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
