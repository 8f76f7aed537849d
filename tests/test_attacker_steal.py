"""heist-attack steal over real HTTP against a real heist-server (Redis store), tiny width-4 models.

The central test kills a steal with SIGKILL while it is buying answers, resumes it, and checks
with the server's per-account counters that nothing received before the kill was bought again.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from attacker.cache import QueryCache, account_fingerprint, image_ids
from attacker.queries import acquire_sync, apply_map, drop_similar, fit_linear_map, load_query_set
from attacker.steal import StealConfig, train_stolen
from shared.checkpoint import load_checkpoint
from shared.losses import STEALING_LOSSES
from shared.proc import popen
from shared.proc import run as run_child

REPO = Path(__file__).resolve().parents[1]
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


def test_access_head_buys_projections(victim, tmp_path, data_root):
    _, key = victim.new_account("unlimited")
    r = run_child(_steal_cmd(victim.url, tmp_path / "s", tmp_path / "c", 64, "--mode", "access-head"),
                       cwd=REPO, env=_env(key, data_root), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    ck = load_checkpoint(tmp_path / "s")
    assert ck.head is not None and ck.config.head.out_dim == 16  # the tiny victim's projection dim


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


def test_cache_is_durable_and_keyed(tmp_path):
    ids = image_ids(np.zeros((3, 4, 4, 3), np.uint8) + np.arange(3, dtype=np.uint8)[:, None, None, None])
    assert len(set(ids)) == 3
    a1, a2 = account_fingerprint("http://x", "k1"), account_fingerprint("http://x", "k2")
    with QueryCache(tmp_path) as c:
        c.put(a1, ids[:2], np.ones((2, 5), np.float32))
        assert c._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with QueryCache(tmp_path) as c:
        assert set(c.get(a1, ids)) == set(ids[:2]) and c.get(a2, ids) == {}
        assert c.count() == 2


def test_linear_mapper_recovers_affine():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 6)).astype(np.float32)
    a, b = rng.normal(size=(6, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    w, err = fit_linear_map(x @ a + b, x)
    assert err < 1e-3
    np.testing.assert_allclose(apply_map(w, x[:5] @ a + b), x[:5], atol=1e-3)


def test_drop_similar_removes_near_copies():
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    noisy = np.clip(imgs[:3].astype(int) + rng.integers(-3, 4, imgs[:3].shape), 0, 255).astype(np.uint8)
    keep = drop_similar(np.concatenate([imgs, noisy]))
    assert keep.tolist() == list(range(10))


def test_report_json_written(tmp_path):
    from attacker.measure import plot_accuracy, write_report

    j, m = write_report(tmp_path, {"stolen": {"probe_shape": 0.5}, "victim_api": {"probe_shape": 0.55},
                                   "ratio": {"probe_shape": 0.909}, "cost": {"queries": 10}, "command": "x"})
    assert json.loads(j.read_text())["ratio"]["probe_shape"] == 0.909 and "0.909" in m.read_text()
    p = plot_accuracy([{"loss": "mse", "queries": 10, "probe_shape": 0.5}], tmp_path / "p.png", 0.55)
    assert p.stat().st_size > 1000
