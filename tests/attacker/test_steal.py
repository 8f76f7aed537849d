"""heist-attack steal over real HTTP against a real heist-server (Redis store), tiny width-4 models.

The central test kills a steal with SIGKILL while it is buying answers, resumes it, and checks
with the server's per-account counters that nothing received before the kill was bought again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from attacker.cache import QueryCache
from attacker.queries import acquire_sync, load_query_set
from attacker.steal import StealConfig, train_stolen
from shared.checkpoint import load_checkpoint
from shared.losses import STEALING_LOSSES
from shared.proc import popen
from shared.proc import run as run_child
from tests.support import REPO

pytestmark = pytest.mark.timeout(300)


def _usage(victim, account_id: str) -> dict:
    r = victim.admin.get(f"/v1/admin/accounts/{account_id}")
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def _cached(cache_dir: Path) -> int:
    db = cache_dir / "answers.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _steal_cmd(url: str, out: Path, cache: Path, n: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "attacker.cli", "steal", "--url", url, "--queries", str(n), "--loss", "mse",
            "--width", "4", "--epochs", "1", "--batch-size", "32", "--request-size", "4", "--concurrency", "1",
            "--out", str(out), "--cache", str(cache), "--no-eval", "--threads", "1", *extra]


def _env(key: str, data_root: Path) -> dict:
    return {**os.environ, "HEIST_API_KEYS": key, "HEIST_DATA_DIR": str(data_root), "PYTHONUNBUFFERED": "1"}


@pytest.mark.live
def test_kill_and_resume_buys_nothing_twice(victim, tmp_path, data_root):
    acct, key = victim.new_account("unlimited")
    cache, out, n = tmp_path / "cache", tmp_path / "stolen", 480
    env = _env(key, data_root)
    load_query_set("attack", n)  # render the query images before timing anything
    proc = popen(_steal_cmd(victim.url, out, cache, n), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while _cached(cache) < 40 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # a request in flight at the kill may still be answered and counted by the server
    at_kill = _cached(cache)
    counted_at_kill = _usage(victim, acct)["images"]
    assert 0 < at_kill < n, f"the kill should land while buying (cached {at_kill} of {n})"
    lost_in_flight = counted_at_kill - at_kill
    assert 0 <= lost_in_flight <= 4  # at most one request (concurrency 1 x 4 images) paid but never received

    r = run_child(_steal_cmd(victim.url, out, cache, n), cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{at_kill} served from cache, {n - at_kill} bought" in r.stdout
    assert _usage(victim, acct)["images"] == counted_at_kill + (n - at_kill)  # nothing cached was bought again
    assert _cached(cache) == n

    ck = load_checkpoint(out)
    assert ck.config.kind == "stolen" and ck.config.width == 4
    assert ck.config.training["cost"]["answers_from_cache"] == at_kill

    r = run_child(_steal_cmd(victim.url, out, cache, n), cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{n} served from cache, 0 bought" in r.stdout
    assert _usage(victim, acct)["images"] == counted_at_kill + (n - at_kill)


@pytest.mark.live
def test_cli_errors_are_clear(victim, tmp_path, data_root):
    _, key = victim.new_account("free")
    base = [sys.executable, "-m", "attacker.cli", "steal", "--url", victim.url, "--out", str(tmp_path / "o"),
            "--cache", str(tmp_path / "c"), "--width", "4", "--no-eval"]
    env = _env(key, data_root)
    r = run_child([*base, "--queries", "8", "--query-set", "train"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "off limits" in r.stderr
    r = run_child([*base, "--queries", "8", "--mode", "access-head"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 3 and "403" in r.stderr and "projection" in r.stderr
    r = run_child([*base, "--queries", "8", "--query-set", "real:cifar10:/nonexistent"], cwd=REPO, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "cifar10" in r.stderr


@pytest.mark.live
def test_sybils_with_linear_mapper_and_averaging(victim, tmp_path):
    _, k1 = victim.new_account("unlimited")
    _, k2 = victim.new_account("unlimited")
    imgs = np.random.default_rng(0).integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
    with QueryCache(tmp_path / "c") as cache:
        single = acquire_sync(victim.url, [k1], imgs, cache, progress=False)
        assert single.bought == 120
        sy = acquire_sync(victim.url, [k1, k2], imgs, cache, anchors=80, progress=False)  # anchors > 2 x dim (32)
        # account 1 asks anchors + its shard again: all cached; account 2 buys anchors + its shard
        assert sy.accounts[0].from_cache == sy.accounts[0].asked and sy.accounts[1].bought == 80 + 20
        assert sy.mapper_fit_error[0] < 0.05  # undefended: outputs already share one space
        np.testing.assert_allclose(sy.answers, single.answers, atol=0.05 * float(np.abs(single.answers).max()))
        avg = acquire_sync(victim.url, [k1], imgs[:8], cache, repeats=3, progress=False)
        assert avg.from_cache == 8 and avg.bought == 16  # repeat 0 cached, repeats 1 and 2 bought
        np.testing.assert_allclose(avg.answers, single.answers[:8], rtol=1e-4, atol=1e-5)  # noise-free victim


@pytest.mark.live
def test_access_head_buys_projections(victim, tmp_path, data_root):
    _, key = victim.new_account("unlimited")
    r = run_child(_steal_cmd(victim.url, tmp_path / "s", tmp_path / "c", 64, "--mode", "access-head"),
                       cwd=REPO, env=_env(key, data_root), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    ck = load_checkpoint(tmp_path / "s")
    assert ck.head is not None and ck.config.head.out_dim == 16  # the tiny victim's projection dim


@pytest.mark.live
@pytest.mark.slow
def test_steal_under_torchrun(victim, tmp_path, data_root):
    """heist-attack steal in two processes (torchrun, Gloo): rank 0 buys every answer once and hands them to
    rank 1; both train their halves of each batch; one checkpoint, written by rank 0."""
    acct, key = victim.new_account("unlimited")
    n, out = 64, tmp_path / "stolen"
    cmd = _steal_cmd(victim.url, out, tmp_path / "cache", n)
    assert cmd[:3] == [sys.executable, "-m", "attacker.cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", *cmd[2:]]
    r = run_child(cmd, cwd=REPO, env=_env(key, data_root), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count(f"0 served from cache, {n} bought") == 1 and r.stdout.count("stolen copy saved") == 1
    assert _usage(victim, acct)["images"] == n  # bought once, not once per rank
    ck = load_checkpoint(out)
    assert ck.config.training["processes"] == 2 and len(ck.config.training["losses"]) == 1


# Every loss in direct mode; recreate-head adds the same head-learning step whatever the loss,
# so two losses (one regression, one contrastive) cover it.
@pytest.mark.parametrize("loss,mode", [(loss, "direct") for loss in STEALING_LOSSES]
                         + [("mse", "recreate-head"), ("infonce", "recreate-head")])
def test_every_loss_trains(loss, mode):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    answers = rng.random((64, 24)).astype(np.float32)
    labels = rng.integers(0, 3, 64)
    cfg = StealConfig(loss=loss, mode=mode, width=4, epochs=1, batch_size=32, aug_reuse=1 if loss == "mse" else 0)
    ck, hist = train_stolen(imgs, answers, cfg, labels, progress=False)
    assert ck.config.kind == "stolen" and len(hist["losses"]) == 1 and np.isfinite(hist["losses"][0])
