"""Starts the real ComfyUI server with this pack loaded and talks to it over its HTTP API.

Used by the tests, the demo and the benchmarks, so all of them exercise the same path a user's
browser does: POST /prompt, poll /history, POST /interrupt.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
# The host under test: .host/ComfyUI (0.3.75) unless PROCACHE_HOST names another tree of the host matrix
# (scripts/setup_hosts.sh), whose own venv PROCACHE_HOST_PY names.
COMFY_DIR = Path(os.environ.get("PROCACHE_HOST") or ROOT / ".host" / "ComfyUI").resolve()
VENV_PY = Path(os.environ.get("PROCACHE_HOST_PY") or ROOT / ".venv" / "bin" / "python")


class PromptError(RuntimeError):
    """The server refused a prompt (HTTP 400) or the prompt failed while executing."""

    def __init__(self, message: str, payload: Any = None) -> None:
        super().__init__(message)
        self.payload = payload


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ComfyServer:
    """One real ComfyUI process on 127.0.0.1, with its own output/user/temp folders."""

    port: int = 0
    workdir: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    launcher: list[str] = field(default_factory=list)   # a command prefix, e.g. setpriv (fault tests)
    cpu: bool = True
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240.0) -> "ComfyServer":
        """Launch the server and wait until it answers as itself.

        Without a fixed ``port`` a free one is picked; if another process takes it before ComfyUI binds
        (parallel test runs), a new port is tried. The server that answers must be this process: its
        ``/system_stats`` argv must name this server's own output folder, so a fixture never attaches to
        someone else's server on the same port."""
        if not (COMFY_DIR / "main.py").exists():
            raise RuntimeError("ComfyUI is not installed: run `bash scripts/setup_host.sh` first")
        fixed = bool(self.port)
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="procache-comfy-"))
        for sub in ("output", "user", "temp", "input"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "server.log"
        deadline = time.monotonic() + timeout
        for _attempt in range(1 if fixed else 5):
            if not fixed:
                self.port = free_port()
            self._launch()
            if self._wait_ready(deadline):
                return self
            self.stop()
            if fixed:
                raise RuntimeError(f"port {self.port} is taken by another process (another server answered there)")
        raise RuntimeError(f"no free port after 5 tries; last log:\n{self.log()[-4000:]}")

    def _launch(self) -> None:
        cmd = [*self.launcher, str(VENV_PY), "main.py", *(["--cpu"] if self.cpu else []), "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--output-directory", str(self.workdir / "output"),
               "--user-directory", str(self.workdir / "user"), "--temp-directory", str(self.workdir / "temp"),
               "--input-directory", str(self.workdir / "input"),
               "--database-url", "sqlite:///:memory:", *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=COMFY_DIR, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def _is_ours(self, stats: dict) -> bool:
        argv = stats.get("system", {}).get("argv") or []
        return str(self.workdir / "output") in argv

    def _wait_ready(self, deadline: float) -> bool:
        """True once this process answers; False when the port turned out to belong to another process."""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "address already in use" in self.log().lower():
                    return False
                raise RuntimeError(f"ComfyUI exited during start-up:\n{self.log()[-4000:]}")
            try:
                r = requests.get(self.base_url + "/system_stats", timeout=2)
                if r.ok:
                    if self._is_ours(r.json()):
                        return True
                    return False  # someone else's server on this port: ours cannot bind it
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer in time:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def client(self) -> "ComfyClient":
        return ComfyClient(self.base_url, output_dir=self.workdir / "output", server=self)

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class ComfyClient:
    base_url: str
    output_dir: Path | None = None
    server: ComfyServer | None = None
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.base_url + path, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.base_url + path, timeout=kw.pop("timeout", 30), **kw)

    def object_info(self, node: str | None = None) -> dict:
        r = self.get("/object_info" + (f"/{node}" if node else ""))
        r.raise_for_status()
        return r.json()

    def queue(self, prompt: dict) -> str:
        """POST /prompt; a validation refusal (HTTP 400) raises PromptError with the server's reasons."""
        r = self.post("/prompt", json={"prompt": prompt, "client_id": self.client_id})
        if r.status_code != 200:
            raise PromptError(f"/prompt refused ({r.status_code}): {r.text[:2000]}", r.json() if r.content else None)
        return r.json()["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        r = self.get(f"/history/{prompt_id}")
        r.raise_for_status()
        return r.json().get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 600.0, raise_on_error: bool = True) -> dict:
        """Polls /history until the prompt finished; returns its entry (status, outputs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("status_str") in ("success", "error")):
                if raise_on_error and entry["status"]["status_str"] == "error":
                    raise PromptError(error_message(entry), entry)
                return entry
            if self.server is not None and not self.server.alive():
                raise RuntimeError(f"ComfyUI died:\n{self.server.log()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f}s")

    def run(self, prompt: dict, timeout: float = 600.0, raise_on_error: bool = True) -> dict:
        return self.wait(self.queue(prompt), timeout, raise_on_error)

    def interrupt(self) -> None:
        self.post("/interrupt", json={}).raise_for_status()

    def queue_state(self) -> dict:
        return self.get("/queue").json()

    def output_files(self, entry: dict, kind: str) -> list[Path]:
        """Paths of the files a finished prompt wrote, e.g. kind='images' or 'latents'."""
        out = []
        for node_out in entry.get("outputs", {}).values():
            for f in node_out.get(kind, []) or []:
                if isinstance(f, dict) and "filename" in f and f.get("type", "output") == "output":
                    out.append(Path(self.output_dir) / f.get("subfolder", "") / f["filename"])
        return out


def error_message(entry: dict) -> str:
    """The exception message of a failed prompt as /history reports it."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_message', '').strip()}"
    return json.dumps(entry.get("status"))[:2000]


def load_latent(path: Path):
    """Reads a .latent file written by the host's SaveLatent node."""
    from safetensors.torch import load_file

    return load_file(str(path))["latent_tensor"]


if __name__ == "__main__":  # manual use: python scripts/comfy_client.py  -> serves until Ctrl-C
    srv = ComfyServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8188).start()
    print(f"serving {srv.base_url} (log {srv.log_path})")
    try:
        srv.proc.wait()
    except KeyboardInterrupt:
        srv.stop()
