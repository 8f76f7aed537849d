"""The compose scenario (profile "heist"), run natively: no Docker engine here, so every service of
docker-compose.yml is started as a local process with the file's own command and environment, in
the order its depends_on conditions give (service_healthy via the file's healthchecks,
service_completed_successfully via exit codes). Only host names, ports and mount points are mapped
to this machine; the images' entrypoints (``sh -c``) are kept. Docker itself is the one thing mocked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from shared.images import encode_image
from shared.proc import popen
from shared.proc import run as run_child
from shared.schemas import API_KEY_PREFIX
from tests.support import REPO, SERVER_ADMIN_TOKEN, compose_env, free_port, wait_http

ORDER = ["redis", "victim-api", "provision", "attacker", "suspect-api", "defender"]  # the scenario's services
LB = "lb"  # profile "lb": nginx in front of the victim-api replicas (tests/server/test_faults.py runs it natively)


def _toposort(services: dict) -> list[str]:
    done: list[str] = []

    def visit(name: str, stack: tuple = ()) -> None:
        assert name not in stack, f"dependency cycle through {name}"
        for dep in services[name].get("depends_on", {}):
            visit(dep, (*stack, name))
        if name not in done:
            done.append(name)

    for n in services:
        visit(n)
    return done


def test_scenario_dependencies_and_profiles():
    spec = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    svc = spec["services"]
    assert [n for n in _toposort(svc) if n != LB] == ORDER
    assert svc[LB]["profiles"] == ["lb"] and svc[LB]["depends_on"] == {"victim-api": {"condition": "service_healthy"}}
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in svc[LB]["volumes"]
    assert {n for n, s in svc.items() if "heist" in s.get("profiles", [])} == {"provision", "attacker", "suspect-api", "defender"}
    cond = {n: {d: c["condition"] for d, c in s.get("depends_on", {}).items()} for n, s in svc.items()}
    assert cond["provision"] == {"victim-api": "service_healthy"}
    assert cond["attacker"] == {"provision": "service_completed_successfully"}
    assert cond["suspect-api"] == {"attacker": "service_completed_successfully"}
    assert cond["defender"] == {"suspect-api": "service_healthy"}
    for n in ("victim-api", "suspect-api", "redis"):
        assert "healthcheck" in svc[n]
    text = (REPO / "docker-compose.yml").read_text()
    assert API_KEY_PREFIX not in text and "HEIST_ADMIN_TOKEN: ${HEIST_ADMIN_TOKEN:?" in text  # no secret in the file


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (CI installs it)")
def test_scenario_compose_config_valid():
    env = {**os.environ, "HEIST_ADMIN_TOKEN": "x" * 32, "HEIST_SERVER_SECRET": "y" * 32}
    out = subprocess.run(["docker-compose", "-f", str(REPO / "docker-compose.yml"), "--profile", "heist", "config"],
                         capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)["services"]
    assert set(resolved) == {*ORDER, LB}


@pytest.mark.slow
@pytest.mark.live
@pytest.mark.timeout(600)
def test_scenario_runs_natively(trained_victim, redis_server_factory, tmp_path, data_root):
    spec = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    redis_srv = redis_server_factory()
    ports = {"victim-api": free_port(), "suspect-api": free_port()}
    mounts = {"/checkpoints": str(trained_victim.parent), "/data": str(data_root), "/keys": str(tmp_path / "keys"),
              "/work": str(tmp_path / "work"), "/results": str(tmp_path / "results")}
    for d in ("keys", "work", "results"):
        (tmp_path / d).mkdir()
    host_env = {"HEIST_ADMIN_TOKEN": "compose-admin-" + "a" * 16, "HEIST_SERVER_SECRET": "compose-secret-" + "s" * 16,
                "HEIST_VICTIM": trained_victim.name, "HEIST_DEVICE": "cpu", "HEIST_QUERIES": "300", "HEIST_EPOCHS": "1",
                "HEIST_OBFUSCATE": "affine",
                "HEIST_VERIFY_ARGS": "--wm-n 100 --align-n 100 --di-fit 100 --di-private 100 --di-public 100"}
    bin_dir = str(Path(sys.executable).parent)

    def native(text: str) -> str:
        text = compose_env(text, host_env)
        text = text.replace("redis://redis:6379", f"redis://127.0.0.1:{redis_srv.port}")
        for name, port in ports.items():
            text = text.replace(f"http://{name}:8000", f"http://127.0.0.1:{port}")
        for inside, outside in mounts.items():
            text = text.replace(inside + "/", outside + "/")
        return text

    def command(name: str) -> list[str]:
        s = spec[name]
        cmd = [native(str(c)) for c in (s.get("entrypoint") or []) + s["command"]]
        if "--port" in cmd:
            cmd[cmd.index("--port") + 1] = str(ports[name])
            cmd[cmd.index("--host") + 1] = "127.0.0.1"
        return cmd

    def environment(name: str) -> dict[str, str]:
        env = {k: native(str(v)) for k, v in (spec[name].get("environment") or {}).items()}
        base = {k: v for k, v in os.environ.items() if not k.startswith("HEIST_") and k != "REDIS_URL"}
        return {**base, **{k: v for k, v in env.items() if v != ""}, "PATH": bin_dir + os.pathsep + os.environ["PATH"],
                "HEIST_TORCH_THREADS": "1"}

    def healthy(name: str) -> None:
        wait_http(f"http://127.0.0.1:{ports[name]}/readyz", timeout=120)
        check = [a.replace("127.0.0.1:8000", f"127.0.0.1:{ports[name]}") for a in spec[name]["healthcheck"]["test"][1:]]
        check[0] = sys.executable if check[0] == "python" else check[0]
        assert subprocess.run(check, capture_output=True).returncode == 0, f"{name} healthcheck failed"

    procs: list[subprocess.Popen] = []
    try:
        for name in ORDER[1:]:
            cmd, env = command(name), environment(name)
            if name.endswith("-api"):
                log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115
                procs.append(popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
                healthy(name)
            else:
                done = run_child(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
                assert done.returncode == 0, f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        key = (tmp_path / "keys" / "thief.key").read_text().strip()
        assert key.startswith(API_KEY_PREFIX) and len(key.splitlines()) == 1
        stolen = trained_victim.parent / "stolen"
        assert json.loads((stolen / "config.json").read_text())["kind"] == "stolen"
        rep = json.loads((tmp_path / "results" / "verify" / "verify.json").read_text())
        assert {r["method"] for r in rep["rows"]} >= {"watermark_aligned", "dataset_inference", "similarity"}
        assert rep["suspect"] and rep["queries"]["sent"] > 0
        assert rep["overall"] in ("stolen", "independent", "inconclusive")
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)


# ---- the default services (victim-api + redis), natively -------------------------------------------

def _img() -> str:
    return encode_image(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))


def test_docker_compose_config_valid():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose binary not installed here (CI installs it: .ci/run)")
    env = {**os.environ, "HEIST_ADMIN_TOKEN": "x" * 32, "HEIST_SERVER_SECRET": "y" * 32}
    out = subprocess.run([exe, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "victim-api" in out.stdout and "redis" in out.stdout and "healthcheck" in out.stdout


@pytest.mark.live
@pytest.mark.timeout(120)
def test_compose_services_run_natively(tiny_checkpoint, redis_server_factory, tmp_path):
    """Start what docker-compose.yml describes, natively: the redis service's redis-server, then the
    victim-api command with the file's environment (secrets from env, REDIS_URL at the redis service),
    and run both healthchecks. Only host names, ports and mount points are mapped to this machine."""
    spec = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    api, red = spec["services"]["victim-api"], spec["services"]["redis"]
    assert red["command"][0] == "redis-server" and "--appendonly" in red["command"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(v.endswith(":/checkpoints:ro") for v in api["volumes"]) and any(v.endswith(":/data") for v in api["volumes"])
    with pytest.raises(AssertionError, match="HEIST_ADMIN_TOKEN"):  # refuses to start without the secret
        compose_env(api["environment"]["HEIST_ADMIN_TOKEN"], {})
    redis_srv = redis_server_factory()
    probe = red["healthcheck"]["test"][1:]
    out = subprocess.run(probe[:1] + ["-p", str(redis_srv.port)] + probe[1:], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "PONG"
    host_env = {"HEIST_ADMIN_TOKEN": SERVER_ADMIN_TOKEN, "HEIST_SERVER_SECRET": "compose-secret-" + "s" * 16,
                "HEIST_VICTIM": tiny_checkpoint.name, "HEIST_DEVICE": "cpu"}
    env = {k: compose_env(str(v), host_env) for k, v in api["environment"].items()}
    port = free_port()
    env["REDIS_URL"] = env["REDIS_URL"].replace("redis://redis:6379", f"redis://127.0.0.1:{redis_srv.port}")
    env["HEIST_CHECKPOINT"] = env["HEIST_CHECKPOINT"].replace("/checkpoints", str(tiny_checkpoint.parent))
    env["HEIST_DATA_DIR"] = str(tmp_path)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HEIST_") and k != "REDIS_URL"},
           **{k: v for k, v in env.items() if v != ""}, "HEIST_STORE_PREFIX": "compose"}
    cmd = [sys.executable, "-m", "server.cli"] + api["command"][1:]
    cmd[cmd.index("--port") + 1] = str(port)
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    log = (tmp_path / "api.log").open("w")
    proc = popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/readyz", proc=proc)
        check = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in api["healthcheck"]["test"][1:]]
        check[0] = sys.executable if check[0] == "python" else check[0]
        assert subprocess.run(check, capture_output=True).returncode == 0
        admin = {"Authorization": f"Bearer {SERVER_ADMIN_TOKEN}"}
        key = httpx.post(url + "/v1/admin/accounts", json={"name": "c", "tier": "free"}, headers=admin).json()["api_key"]
        r = httpx.post(url + "/v1/embeddings", json={"input": [_img()]}, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 32
    finally:
        proc.terminate()
        proc.wait(15)
