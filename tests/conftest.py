"""Fixtures of the end-to-end tests: a fault-injecting origin, a real node process, the CLI.

    def test_x(origin, node, ais):
        origin.add("/a.bin", payload("a", 1000))
        job = ais("start", "download", origin.url_for("/a.bin"), "ais://b/a.bin").stdout.strip()
        status = wait_job(ais, job)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from aistore.sdk import Client as SdkClient

from aisdl.client import Client
from helpers import free_port as _free_port
from helpers_app import InProcessNode, running_node
from origin import Origin

pytest_plugins = ["conftest_cloud"]  # S3, GCS and Azure emulators

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy")
HEALTH_TIMEOUT = 20.0


# -- network hygiene ------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def _no_proxies() -> Iterator[None]:
    """No proxy variables for the tests and their children: nothing leaves 127.0.0.1."""
    with pytest.MonkeyPatch.context() as mp:
        for name in PROXY_VARS:
            mp.delenv(name, raising=False)
            mp.delenv(name.upper(), raising=False)
        yield


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per test too, in case a test or fixture set one."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def free_port() -> Callable[[], int]:
    """`free_port()`: a free TCP port on 127.0.0.1 (also `from helpers import free_port`)."""
    return _free_port


# -- origin ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def _origin_server() -> Iterator[Origin]:
    server = Origin().start()
    yield server
    server.stop()


@pytest.fixture
def origin(_origin_server: Origin) -> Iterator[Origin]:
    """The origin server (one per session), empty and fault-free at the start of every test."""
    _origin_server.reset()
    yield _origin_server
    _origin_server.reset()


# -- node -----------------------------------------------------------------------------------
def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _healthy(endpoint: str, timeout: float = 0.5) -> bool:
    try:
        with requests.Session() as s:
            s.trust_env = False
            return s.get(f"{endpoint}/v1/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


class Node:
    """A real node process (`python -m aisdl serve`) on 127.0.0.1:port with its own home."""

    def __init__(self, port: int, home: Path, log_path: Path,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.port = port
        self.home = home
        self.log_path = log_path
        self.extra_args = extra_args
        self.env = env or {}  # e.g. a cloud emulator's endpoint and credentials
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def cmd(self) -> list[str]:
        return [sys.executable, "-m", "aisdl", "serve", "--port", str(self.port),
                "--home", str(self.home), *self.extra_args]

    def client(self) -> Client:
        return Client(self.endpoint)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = HEALTH_TIMEOUT) -> None:
        assert not self.running(), "the node is already running"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"the node exited with {self.proc.returncode} before answering "
                            f"{self.endpoint}/v1/health; log tail:\n{_tail(self.log_path)}")
            if _healthy(self.endpoint):
                return
            if time.monotonic() >= deadline:
                self.kill9()
                pytest.fail(f"the node did not answer {self.endpoint}/v1/health with 200 in "
                            f"{timeout}s; log tail:\n{_tail(self.log_path)}")
            time.sleep(0.05)

    def kill9(self) -> None:
        """SIGKILL, as in a crash: no cleanup runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL (and a test failure) if it does not exit in `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                pytest.fail(f"the node did not stop within {timeout}s of SIGTERM; log tail:\n"
                            f"{_tail(self.log_path)}")
        return self.proc.returncode

    def restart(self, timeout: float = HEALTH_TIMEOUT) -> None:
        """Stop (SIGTERM) if running, then start again with the same home and port."""
        self.stop()
        self.start(timeout)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A started node on a free port with home tmp_path/"home"; stopped at teardown."""
    # Quick retries keep fault-injection tests short; the policy itself is the node's default.
    n = Node(_free_port(), tmp_path / "home", tmp_path / "node.log",
             extra_args=("--retry-delay", "50ms"))
    try:
        n.start()
        yield n
    finally:
        if n.running():
            n.proc.terminate()  # type: ignore[union-attr]
            try:
                n.proc.wait(15)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                n.kill9()
        # a node the CLI auto-started at our port while ours was down: stop it through its API
        if _healthy(n.endpoint, timeout=0.3):
            try:
                n.client().shutdown()
            except Exception:  # noqa: BLE001 - best effort
                pass


# -- CLI ------------------------------------------------------------------------------------
@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Ais:
    """`ais(*args, input=None, check=True, timeout=60, env=None) -> Result`."""

    def __init__(self, node: Node, home: Path, cwd: Path) -> None:
        self.node = node
        self.endpoint = node.endpoint
        self.cwd = cwd
        self.env = {
            **os.environ,
            "AIS_ENDPOINT": node.endpoint,
            "HOME": str(home),  # no stray background node in the real home
            "AISDL_HOME": str(home / ".aisdl"),
            "COLUMNS": "200",  # wide tables: no wrapping in assertions
            "NO_COLOR": "1",
            "PYTHONUNBUFFERED": "1",
        }

    def __call__(self, *args: Any, input: str | bytes | None = None, check: bool = True,
                 timeout: float = 60, env: dict[str, str | None] | None = None) -> Result:
        cmd = [sys.executable, "-m", "aisdl", *(str(a) for a in args)]
        full_env = dict(self.env)
        for k, v in (env or {}).items():  # a None value removes the variable
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
        text = not isinstance(input, bytes)
        try:
            proc = subprocess.run(cmd, input=input, capture_output=True, text=text,
                                  timeout=timeout, env=full_env, cwd=self.cwd)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"`ais {' '.join(cmd[3:])}` did not finish in {timeout}s\n"
                        f"stdout:\n{_s(exc.stdout)}\nstderr:\n{_s(exc.stderr)}")
        result = Result(cmd[3:], proc.returncode, _s(proc.stdout), _s(proc.stderr))
        if check:
            assert result.returncode == 0, (
                f"`ais {' '.join(result.args)}` exited with {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result


def _s(out: str | bytes | None) -> str:
    if out is None:
        return ""
    return out.decode(errors="replace") if isinstance(out, bytes) else out


@pytest.fixture
def ais(node: Node, tmp_path: Path) -> Ais:
    """Run the CLI (`python -m aisdl ...`) against `node`; see `Ais.__call__`."""
    home = tmp_path / "cli-home"
    home.mkdir(exist_ok=True)
    return Ais(node, home, tmp_path)


# -- an in-process node and AIStore's SDK ---------------------------------------------------
@pytest.fixture(scope="module")
def inproc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessNode]:
    """A node served in this process (one per test module)."""
    with running_node(tmp_path_factory.mktemp("home")) as n:
        yield n


@pytest.fixture
def sdk(inproc: InProcessNode, monkeypatch: pytest.MonkeyPatch) -> SdkClient:
    """AIStore's own Python SDK, talking to `inproc` (no CA bundle or token from the env)."""
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AIS_AUTHN_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return SdkClient(inproc.endpoint)
