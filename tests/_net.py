"""Helpers for tests that start real servers on this machine (loopback only)."""

import socket
import tempfile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_tempdir(prefix: str) -> str:
    """Ray's Unix socket paths must stay short: pytest's tmp_path is too long."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def stop_ray(temp: str) -> None:
    """Stop the Ray started with this temp dir (``--temp-dir`` or ``RAY_TMPDIR``), and only
    it: ``ray stop --force`` would kill every Ray on the machine, a benchmark or a suite
    running beside the tests included. Its processes name the temp dir in their command
    lines; the workers are their children."""
    import shutil

    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp in a for a in p.info["cmdline"] or ()):
                procs += [p, *p.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    shutil.rmtree(temp, ignore_errors=True)


def wait_http(url: str, timeout: float = 120) -> None:
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def start_mlflow_server(store, env=None):
    """A real MLflow tracking server on loopback, in its own process group; (proc, uri)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    port = free_port()
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"), "--workers", "1"],
        env=env or os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    wait_http(f"{uri}/health")
    return proc, uri


def token_auth_env(folder) -> dict:
    """Env for a Ray cluster and its clients with token authentication on (as shipped),
    the token in a file of this test's own (never the user's ~/.ray/auth_token)."""
    import os
    import secrets
    from pathlib import Path

    path = Path(folder) / "ray_auth_token"
    path.write_text(secrets.token_hex(32))
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path),
            "RAY_USAGE_STATS_ENABLED": "0"}
