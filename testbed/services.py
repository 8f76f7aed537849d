"""Run the testbed's services natively: a real ``heist-server serve`` process on loopback.

The same command and environment as the compose file's ``victim-api`` / ``suspect-api`` services;
used by the demo, the benchmarks and the end-to-end tests. Every process started here is stopped
when its context exits (also on Ctrl-C), so nothing is left behind.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.proc import popen

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None = None, log_path: Path | None = None, timeout_s: float = 120.0,
               path: str = "/readyz") -> None:
    """Poll ``url + path`` until it answers 200; raise with the server log's tail if the process exits
    or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text()[-2000:] if log_path and log_path.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {tail}")
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}{path} not ready after {timeout_s:.0f} s")


class ThreadedServer:
    """An ASGI app served by uvicorn in a daemon thread on a free loopback port (small stand-in
    servers for tests and benches). Use as a context manager; ``url`` is set at construction."""

    def __init__(self, app, start_timeout_s: float = 10.0) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"in-thread server at {self.url} did not start within {self.start_timeout_s:.0f} s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class Server:
    url: str
    admin_token: str
    proc: subprocess.Popen
    log_path: Path
    ids: dict[str, str] = field(default_factory=dict)  # account name -> id, for the accounts made here

    def new_account(self, name: str, tier: str) -> str:
        """Create an account through the admin endpoint; returns its API key (shown once)."""
        created = create_account(self.url, self.admin_token, tier, name)
        self.ids[name] = created["account"]["id"]
        return created["api_key"]

    def account(self, name: str) -> dict:
        """Admin view of an account made here: tier, usage counters."""
        return self._admin_get(f"/v1/admin/accounts/{self.ids[name]}")

    def account_defences(self, name: str) -> dict:
        """Admin view of an account's defence state: coverage, sigma, similar hits, PoW bits."""
        return self._admin_get(f"/v1/admin/accounts/{self.ids[name]}/defences")

    def query_log(self, name: str) -> dict:
        """Admin view of an account's query log (its tier's ``query_log``): base64 PNGs, oldest first."""
        return self._admin_get(f"/v1/admin/accounts/{self.ids[name]}/queries")

    def _admin_get(self, path: str) -> dict:
        r = httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30)
        r.raise_for_status()
        return r.json()


def create_account(url: str, admin: str, tier: str, name: str) -> dict:
    """POST /v1/admin/accounts; the AccountCreated JSON (account info + the key, shown once)."""
    r = httpx.post(url + "/v1/admin/accounts", json={"name": name, "tier": tier},
                   headers={"Authorization": f"Bearer {admin}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def new_key(url: str, admin: str, tier: str, name: str) -> str:
    return create_account(url, admin, tier, name)["api_key"]


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit in the main thread, so context managers stop their servers."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def terminate(proc: subprocess.Popen | None, timeout_s: float = 10) -> None:
    """SIGTERM (a graceful stop), then SIGKILL after ``timeout_s``; nothing when already gone."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class ServerProcess:
    """A running ``heist-server serve`` subprocess (stdout and stderr in ``log``)."""

    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL after ``timeout_s``."""
        terminate(self.proc, timeout_s)


def server_env(admin_token: str, secret: str, *, redis_url: str | None = None, prefix: str | None = None,
               torch_threads: int = 1, **extra: str) -> dict[str, str]:
    """The server's environment: this process's, minus every ``HEIST_*`` and ``REDIS_URL`` setting,
    plus the secrets, the store and ``extra`` (``HEIST_*`` names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIST_") and k != "REDIS_URL"}
    env.update(HEIST_ADMIN_TOKEN=admin_token, HEIST_SERVER_SECRET=secret, HEIST_TORCH_THREADS=str(torch_threads),
               PYTHONUNBUFFERED="1", **extra)
    if redis_url:
        env.update(REDIS_URL=redis_url, HEIST_STORE_PREFIX=prefix or "heist-tb-" + secrets.token_hex(4))
    elif prefix:
        env["HEIST_STORE_PREFIX"] = prefix
    return env


def start_server(checkpoint: str | Path, env: dict[str, str], log_path: Path, *, config_file: Path | None = None,
                 args: list[str] | tuple[str, ...] = (), port: int | None = None, wait: bool = True,
                 timeout_s: float = 300, ready_path: str = "/healthz", discard_stdout: bool = False) -> ServerProcess:
    """The one launcher of ``heist-server serve`` (testbed, benches and tests): a free loopback port,
    the child tied to this process (``shared.proc``), ready when ``ready_path`` answers 200.
    Its output goes to ``log_path``; ``discard_stdout`` keeps only stderr there (load benchmarks)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "server.cli", "serve", "--checkpoint", str(checkpoint), "--port", str(port)]
    if config_file is not None:
        cmd += ["--config", str(config_file)]
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as fh:
        proc = popen([*cmd, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL if discard_stdout else fh,
                     stderr=fh if discard_stdout else subprocess.STDOUT)
    server = ServerProcess(proc, port, log_path)
    if wait:
        try:
            wait_ready(server.url, proc, log_path, timeout_s=timeout_s, path=ready_path)
        except BaseException:
            server.stop()
            raise
    return server


@contextmanager
def serve(checkpoint: str | Path, config: dict | None = None, *, redis_url: str | None = None, prefix: str | None = None,
          secret: str | None = None, log_path: Path | None = None, torch_threads: int = 1,
          timeout_s: float = 300) -> Iterator[Server]:
    """``heist-server serve --checkpoint CKPT --config <config as JSON>`` on a free loopback port.

    ``redis_url`` None = the embedded store; otherwise a Redis under ``prefix`` (default: a fresh
    random one). Secrets (admin token, server secret) are generated here and passed by environment.
    """
    _exit_on_sigterm()
    token = "tb-admin-" + secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="heist-serve-") as d:
        cf = Path(d) / "server.json"
        cf.write_text(json.dumps(config or {}))
        env = server_env(token, secret or "tb-" + secrets.token_hex(16), redis_url=redis_url, prefix=prefix,
                         torch_threads=torch_threads)
        server = start_server(checkpoint, env, Path(log_path) if log_path else Path(d) / "server.log", config_file=cf,
                              timeout_s=timeout_s)
        try:
            yield Server(server.url, token, server.proc, server.log)
        finally:
            server.stop()


# AOF with an fsync per write: a SIGKILL loses no acknowledged write
AOF = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")


@dataclass
class RedisProcess:
    """A private ``redis-server`` on a loopback port with its data and log in ``dir``; ``args`` are its
    other options (default :data:`AOF`); ``restart()`` starts it again on the same port and data."""

    dir: Path
    port: int
    proc: subprocess.Popen | None = None
    args: tuple[str, ...] = AOF

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10) -> RedisProcess:
        import shutil

        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "redis.log", "a")
        self.proc = popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), *self.args,
                           "--protected-mode", "no"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-1000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} not ready after {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> RedisProcess:
        self.kill()
        return self.start()

    def stop(self) -> None:
        terminate(self.proc)


def start_redis(dir: str | Path, port: int | None = None) -> RedisProcess:
    return RedisProcess(Path(dir), port or free_port()).start()


NGINX_CONF = REPO / "deploy" / "nginx.conf"


def nginx_config(upstream_ports: list[int], listen_port: int, template: Path = NGINX_CONF) -> str:
    """``deploy/nginx.conf`` with the replicas' loopback ports as the upstream and ``listen_port``."""
    lines = []
    for line in template.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("server victim-api:8000"):
            indent = line[: len(line) - len(line.lstrip())]
            rest = stripped[len("server victim-api:8000"):]
            lines += [f"{indent}server 127.0.0.1:{p}{rest}" for p in upstream_ports]
        elif stripped.startswith("listen 8080"):
            lines.append(line.replace("listen 8080", f"listen 127.0.0.1:{listen_port}"))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


@dataclass
class NginxProcess:
    """A native nginx (``nginx -p dir``, in the foreground) balancing over loopback replicas."""

    dir: Path
    port: int
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        terminate(self.proc)  # nginx: fast shutdown


def nginx_binary() -> str | None:
    import shutil

    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def start_nginx(dir: str | Path, upstream_ports: list[int], port: int | None = None,
                timeout_s: float = 10) -> NginxProcess:
    exe = nginx_binary()
    if exe is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx-light)")
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    (d / "nginx.conf").write_text(nginx_config(upstream_ports, port))
    log = open(d / "nginx.log", "a")
    proc = popen([exe, "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;"],
                 stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(d / 'nginx.log').read_text()[-1000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return NginxProcess(d, port, proc)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"nginx on port {port} not listening after {timeout_s} s")


@dataclass
class RedisClusterProcess:
    """A private local Redis Cluster: masters (no replicas) on free loopback ports, each a
    :class:`RedisProcess` with ``--cluster-enabled yes`` (no persistence), the 16384 slots spread over
    them by ``redis-cli --cluster create``. ``url`` (``redis+cluster://``) selects the clustered store."""

    nodes: list[RedisProcess]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def node_urls(self) -> list[str]:
        """A plain ``redis://`` URL per node (to ask one node directly: CLUSTER KEYSLOT, DBSIZE)."""
        return [n.url for n in self.nodes]

    def cli(self, port: int, *args: str, timeout_s: float = 10) -> str:
        from shared.proc import run

        out = run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, text=True,
                  timeout=timeout_s)
        return out.stdout

    def stop(self) -> None:
        """SIGTERM every node (no persistence: nothing to save), SIGKILL after 10 s."""
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.terminate()
        for n in self.nodes:
            terminate(n.proc)


def start_redis_cluster(dir: str | Path, nodes: int = 3, timeout_s: float = 30) -> RedisClusterProcess:
    """Start a ``nodes``-master Redis Cluster on loopback (``redis-server`` and ``redis-cli`` 7+), wait
    until every node says ``cluster_state:ok``; stopped by ``stop()`` (also on a failed start)."""
    import shutil

    if shutil.which("redis-cli") is None:
        raise FileNotFoundError("redis-cli is not installed (apt-get install redis-server redis-tools)")
    if nodes < 3:
        raise ValueError("redis-cli --cluster create needs at least 3 masters")
    d = Path(dir)
    ports = [free_port() for _ in range(nodes)]
    # the bus port on a free port of its own: the default (port + 10000) fails above 55535 or may be taken
    cluster = RedisClusterProcess([RedisProcess(d / str(p), p, args=(
        "--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--cluster-config-file", f"nodes-{p}.conf",
        "--appendonly", "no", "--save", "")) for p in ports])
    try:
        for node in cluster.nodes:
            node.start(timeout_s)
        from shared.proc import run

        made = run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                    "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=timeout_s)
        if made.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {made.stdout[-1000:]}{made.stderr[-1000:]}")
        deadline = time.monotonic() + timeout_s
        for port in ports:  # every node must have learned the whole slot map
            while "cluster_state:ok" not in cluster.cli(port, "cluster", "info"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cluster node :{port} not in cluster_state:ok after {timeout_s} s")
                time.sleep(0.1)
    except BaseException:
        cluster.stop()
        raise
    return cluster
