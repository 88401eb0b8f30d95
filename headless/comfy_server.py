"""Drive a real headless ComfyUI server with ComfyUI-FrameMemory installed.

Used by the end-to-end tests (tests/test_e2e_*.py) and scripts/run_example.py. Standard library plus `requests`
and `websocket-client` only, so it can be imported by any interpreter that has those two and this pack installed
(`pip install -e .`: the server gets this checkout, REPO_ROOT, linked into its custom_nodes/).

    from framememory.headless.comfy_server import ComfyServer
    with ComfyServer() as server:                 # fresh base dir, free port, FRAMEMEMORY_DEMO=1
        info = server.object_info()
        prompt_id = server.post_prompt(api_prompt)
        events = server.follow(prompt_id, timeout=600)
        outputs = server.history(prompt_id)["outputs"]

Every failure raises `ServerError` (or a subclass) whose message ends with the tail of the server log.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

import requests
import websocket  # websocket-client

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "ComfyUI-FrameMemory"
MODEL_FOLDERS = ("diffusion_models", "vae", "text_encoders", "memory_encoders")
# Websocket message types that follow() returns; "status" and binary previews are dropped.
EVENT_TYPES = {
    "execution_start", "execution_cached", "executing", "progress", "executed",
    "execution_success", "execution_error", "execution_interrupted",
}
TERMINAL_EVENTS = {"execution_success", "execution_error", "execution_interrupted"}


class ServerError(RuntimeError):
    """The server failed to start, died, answered with an error, or a prompt failed."""


class PromptError(ServerError):
    """POST /prompt was rejected (HTTP 400): `.body` holds the server's JSON answer."""

    def __init__(self, message: str, body: dict | None = None):
        super().__init__(message)
        self.body = body or {}


def default_comfyui_dir() -> Path:
    """COMFYUI_DIR if set, else the ComfyUI 0.3.75 that scripts/setup.sh unpacks into .cache/."""
    return Path(os.environ.get("COMFYUI_DIR") or REPO_ROOT / ".cache" / "ComfyUI").resolve()


def comfyui_version(comfyui_dir: Path) -> str:
    """``__version__`` of ``comfyui_dir/comfyui_version.py`` ("unknown" when absent)."""
    try:
        text = (Path(comfyui_dir) / "comfyui_version.py").read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def default_venv(comfyui_dir: Path | None = None) -> Path:
    """The venv scripts/setup.sh makes for ``comfyui_dir`` (default :func:`default_comfyui_dir`): FRAMEMEMORY_VENV,
    else ``.venv`` for the bundled ComfyUI and ``.cache/venvs/comfyui-<version>`` for any other (one venv holds one
    ComfyUI's requirements, frontend included)."""
    if os.environ.get("FRAMEMEMORY_VENV"):
        return Path(os.environ["FRAMEMEMORY_VENV"])
    comfyui_dir = Path(comfyui_dir or default_comfyui_dir()).resolve()
    if comfyui_dir == (REPO_ROOT / ".cache" / "ComfyUI").resolve():
        return REPO_ROOT / ".venv"
    return REPO_ROOT / ".cache" / "venvs" / f"comfyui-{comfyui_version(comfyui_dir)}"


def default_python(comfyui_dir: Path | None = None) -> Path:
    """The interpreter of :func:`default_venv` (this interpreter when that venv does not exist)."""
    venv = default_venv(comfyui_dir)
    for candidate in (venv / "bin" / "python", venv / "Scripts" / "python.exe"):
        if candidate.exists():
            return candidate
    return Path(sys.executable)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server in its own base directory, as a context manager.

    Args:
        base_dir: directory for models/, input/, output/, custom_nodes/, user/ (made if missing);
            default: a fresh temporary directory, deleted by stop() unless keep_base=True.
        comfyui_dir: ComfyUI checkout holding main.py (default: default_comfyui_dir()).
        python: interpreter that runs main.py (default: default_python()).
        port: TCP port on 127.0.0.1 (default: a free one).
        env: extra environment variables for the server (FRAMEMEMORY_DEMO=1 is always set).
        extra_args: more command-line arguments for main.py (``--preview-method auto`` is added unless they name
            one: latent previews while sampling, as a user's ComfyUI Desktop shows them).
        cpu: pass --cpu (the default, for tests and the embedded default); False lets ComfyUI use the GPU.
        startup_timeout: seconds to wait for GET /object_info to answer.
        require_pack: raise if the server log says our custom node pack failed to import.
        keep_base: keep a temporary base dir after stop() (for debugging).
    """

    def __init__(self, base_dir: str | os.PathLike | None = None, *, comfyui_dir=None, python=None,
                 port: int | None = None, env: dict | None = None, extra_args: Iterable[str] = (),
                 startup_timeout: float = 300.0, require_pack: bool = True, keep_base: bool = False, cpu: bool = True):
        self.comfyui_dir = Path(comfyui_dir).resolve() if comfyui_dir else default_comfyui_dir()
        self.python = str(python or default_python(self.comfyui_dir))
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        self.extra_env = dict(env or {})
        self.extra_args = list(extra_args)
        self.cpu = cpu
        self.startup_timeout = startup_timeout
        self.require_pack = require_pack
        self._own_base = base_dir is None
        self.keep_base = keep_base
        self.base = Path(base_dir).resolve() if base_dir else Path(tempfile.mkdtemp(prefix="framememory_comfy_"))
        self.log_path = self.base / "comfyui_server.log"
        self.client_id = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self._ws: websocket.WebSocket | None = None
        self._ws_thread: threading.Thread | None = None
        self._events: "queue.Queue[dict]" = queue.Queue()
        self._stopping = threading.Event()

    # ---- layout -------------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.base / "models"

    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    def prepare_base(self) -> None:
        """Create the base layout and link this repository in as custom_nodes/ComfyUI-FrameMemory."""
        for sub in MODEL_FOLDERS:
            (self.models_dir / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("input", "output", "custom_nodes"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        link = self.base / "custom_nodes" / PACK_NAME
        if link.is_symlink() or link.exists():
            if link.resolve() != REPO_ROOT:
                raise ServerError(f"{link} exists and does not point at {REPO_ROOT}")
        else:
            link.symlink_to(REPO_ROOT, target_is_directory=True)

    # ---- life cycle -----------------------------------------------------------------------------
    def __enter__(self) -> "ComfyServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ComfyServer":
        if not (self.comfyui_dir / "main.py").exists():
            raise ServerError(f"no ComfyUI at {self.comfyui_dir} (run: bash scripts/setup.sh, or set COMFYUI_DIR)")
        self.prepare_base()
        cmd = [self.python, "main.py", *(["--cpu"] if self.cpu else []), "--listen", self.host, "--port", str(self.port),
               "--base-directory", str(self.base), "--disable-auto-launch", *self.extra_args]
        if "--preview-method" not in self.extra_args:  # sampling previews on the node, as ComfyUI Desktop shows them
            cmd += ["--preview-method", "auto"]
        if "--database-url" in (self.comfyui_dir / "comfy" / "cli_args.py").read_text(errors="replace") \
                and "--database-url" not in self.extra_args:
            # The database default is <ComfyUI>/user/comfyui.db even with --base-directory (0.3.75):
            # keep servers independent and the ComfyUI checkout untouched.
            cmd += ["--database-url", "sqlite:///:memory:"]
        env = dict(os.environ)
        env.update({"FRAMEMEMORY_DEMO": "1", "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        if "PYTHONPATH" not in self.extra_env:
            env.pop("PYTHONPATH", None)  # main.py puts the ComfyUI dir first; nothing else is needed
        env.pop("PYTHONSAFEPATH", None)  # (set by scripts/run_tests.sh) main.py needs its own dir on sys.path
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"$ cd {self.comfyui_dir} && {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui_dir, env=env, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        try:
            self._wait_ready()
            self._check_pack()
            self._connect_ws()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} during start-up"
                                  + self.log_tail_text())
            try:
                r = requests.get(self.url + "/object_info", timeout=30)
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise ServerError(f"ComfyUI did not answer /object_info within {self.startup_timeout:.0f} s"
                          + self.log_tail_text())

    def pack_import_error(self) -> str | None:
        """The server log's report of our pack failing to import, or None if it loaded."""
        log = self.log_text()
        lines = log.splitlines()
        for i, line in enumerate(lines):
            if ("Cannot import" in line or "IMPORT FAILED" in line) and PACK_NAME in line:
                return "\n".join(lines[i:i + 40])
        return None

    def _check_pack(self) -> None:
        err = self.pack_import_error()
        if err is not None and self.require_pack:
            raise ServerError(f"custom node pack {PACK_NAME} failed to import in ComfyUI:\n{err}"
                              + self.log_tail_text())

    def _connect_ws(self) -> None:
        ws_url = f"ws://{self.host}:{self.port}/ws?clientId={self.client_id}"
        self._ws = websocket.create_connection(ws_url, timeout=30)
        self._ws.settimeout(1.0)
        self._ws_thread = threading.Thread(target=self._ws_reader, name="comfy-ws", daemon=True)
        self._ws_thread.start()

    def _ws_reader(self) -> None:
        while not self._stopping.is_set():
            try:
                msg = self._ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception as e:  # connection closed: the server died or stop() was called
                if not self._stopping.is_set():
                    self._events.put({"type": "_ws_closed", "data": {"error": repr(e)}})
                return
            if not isinstance(msg, str):  # binary preview images
                continue
            try:
                event = json.loads(msg)
            except ValueError:
                continue
            if event.get("type") in EVENT_TYPES:
                self._events.put(event)

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate the server (SIGTERM to its process group, SIGKILL after `timeout` s)."""
        self._stopping.set()
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:
                pass
            self._ws = None
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_base and not self.keep_base and self.base.exists():
            shutil.rmtree(self.base, ignore_errors=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---- logs ---------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_tail_text(self, lines: int = 60) -> str:
        return f"\n--- last {lines} lines of {self.log_path} ---\n{self.log_tail(lines)}"

    # ---- HTTP API -----------------------------------------------------------------------------
    def _get(self, path: str, timeout: float = 60.0) -> requests.Response:
        try:
            r = requests.get(self.url + path, timeout=timeout)
        except requests.RequestException as e:
            raise ServerError(f"GET {path} failed: {e}" + self.log_tail_text()) from e
        if r.status_code != 200:
            raise ServerError(f"GET {path} -> HTTP {r.status_code}: {r.text[:2000]}" + self.log_tail_text())
        return r

    def object_info(self, node_class: str | None = None) -> dict:
        """GET /object_info (or /object_info/<node_class>): {class_type: spec}."""
        return self._get("/object_info" + (f"/{node_class}" if node_class else "")).json()

    def post_prompt(self, api_prompt: dict) -> str:
        """POST an API-format prompt ({id: {"class_type", "inputs"}}); returns its prompt_id.

        Raises PromptError with the server's `error` and `node_errors` text when it is rejected.
        """
        body = {"prompt": api_prompt, "client_id": self.client_id}
        try:
            r = requests.post(self.url + "/prompt", json=body, timeout=60)
        except requests.RequestException as e:
            raise ServerError(f"POST /prompt failed: {e}" + self.log_tail_text()) from e
        if r.status_code != 200:
            try:
                answer = r.json()
            except ValueError:
                answer = {"error": r.text}
            raise PromptError(f"POST /prompt -> HTTP {r.status_code}: "
                              f"error={json.dumps(answer.get('error'), indent=1)} "
                              f"node_errors={json.dumps(answer.get('node_errors'), indent=1)}"
                              + self.log_tail_text(), answer)
        return r.json()["prompt_id"]

    def follow(self, prompt_id: str, timeout: float = 600.0,
               on_event: Callable[[dict], None] | None = None) -> list[dict]:
        """Websocket events of `prompt_id` until execution_success / _error / _interrupted.

        Returns a list of {"type", "data"} dicts in arrival order (the terminal event last).
        `on_event(event)` is called for each as it arrives. Raises ServerError on timeout or if
        the server dies; an execution_error is returned, not raised (see raise_for_events()).
        """
        events: list[dict] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s "
                                  f"({len(events)} events so far)" + self.log_tail_text())
            try:
                event = self._events.get(timeout=min(left, 2.0))
            except queue.Empty:
                if not self.alive():
                    raise ServerError(f"ComfyUI died (exit code {self.proc.returncode}) while running "
                                      f"prompt {prompt_id}" + self.log_tail_text())
                continue
            if event["type"] == "_ws_closed":
                raise ServerError(f"websocket closed while following {prompt_id}: {event['data']}"
                                  + self.log_tail_text())
            data = event.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            events.append(event)
            if on_event is not None:
                on_event(event)
            if event["type"] in TERMINAL_EVENTS and data.get("prompt_id") == prompt_id:
                return events

    def raise_for_events(self, events: list[dict]) -> None:
        """Raise ServerError unless the last event is execution_success."""
        last = events[-1] if events else {"type": "none", "data": {}}
        if last["type"] == "execution_success":
            return
        d = last.get("data") or {}
        detail = ""
        if last["type"] == "execution_error":
            detail = (f" in node {d.get('node_id')} ({d.get('node_type')}): {d.get('exception_type')}: "
                      f"{d.get('exception_message')}\n" + "".join(d.get("traceback") or []))
        raise ServerError(f"prompt ended with {last['type']}{detail}" + self.log_tail_text())

    def run(self, api_prompt: dict, timeout: float = 600.0, on_event=None) -> tuple[str, list[dict]]:
        """post_prompt + follow + raise_for_events; returns (prompt_id, events)."""
        prompt_id = self.post_prompt(api_prompt)
        events = self.follow(prompt_id, timeout=timeout, on_event=on_event)
        self.raise_for_events(events)
        return prompt_id, events

    def history(self, prompt_id: str, wait: float = 60.0) -> dict:
        """GET /history/<id>: that prompt's entry ({"prompt", "outputs", "status", "meta"}). ComfyUI sends the
        terminal websocket event before its worker stores the history entry (main.py: ``execute`` then
        ``task_done``), so a missing entry is polled for up to ``wait`` seconds before it is an error."""
        deadline = time.monotonic() + wait
        while True:
            answer = self._get(f"/history/{prompt_id}").json()
            if prompt_id in answer:
                return answer[prompt_id]
            if time.monotonic() >= deadline:
                raise ServerError(f"prompt {prompt_id} not in /history after {wait:.0f} s" + self.log_tail_text())
            time.sleep(0.5)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt (global, or only if `prompt_id` is the running prompt)."""
        body = {"prompt_id": prompt_id} if prompt_id else {}
        r = requests.post(self.url + "/interrupt", json=body, timeout=30)
        if r.status_code != 200:
            raise ServerError(f"POST /interrupt -> HTTP {r.status_code}: {r.text}" + self.log_tail_text())

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Make the server idle for the next caller: drop every pending prompt (POST /queue clear), interrupt the
        running one (POST /interrupt: ComfyUI clears the flag when the next prompt starts) and wait until GET /queue
        shows nothing running. A shared server's tests call it where an earlier test may have left a run behind.

        Raises:
            ServerError: still busy after ``timeout`` seconds, or the server died."""
        r = requests.post(self.url + "/queue", json={"clear": True}, timeout=30)
        if r.status_code != 200:
            raise ServerError(f"POST /queue clear -> HTTP {r.status_code}: {r.text}" + self.log_tail_text())
        deadline = time.monotonic() + timeout
        while self._get("/queue").json().get("queue_running"):
            if not self.alive() or time.monotonic() > deadline:
                raise ServerError(f"the server is still running a prompt after {timeout:.0f} s" + self.log_tail_text())
            self.interrupt()
            time.sleep(1.0)

    # ---- outputs ------------------------------------------------------------------------------
    def output_file(self, entry: dict) -> Path:
        """Path of a UI result entry {"filename", "subfolder", "type"} on disk."""
        root = {"output": self.output_dir, "input": self.input_dir, "temp": self.base / "temp"}[entry.get("type", "output")]
        return root / entry.get("subfolder", "") / entry["filename"]

    def output_files(self, history: dict, node_id: str | None = None,
                     suffixes: tuple[str, ...] = ()) -> list[Path]:
        """Files listed in a history entry's outputs (all nodes or one), optionally by suffix."""
        found = []
        for nid, ui in (history.get("outputs") or {}).items():
            if node_id is not None and nid != node_id:
                continue
            for key in ("images", "videos", "gifs", "audio"):
                for entry in ui.get(key) or []:
                    if isinstance(entry, dict) and "filename" in entry:
                        path = self.output_file(entry)
                        if not suffixes or path.suffix.lower() in suffixes:
                            found.append(path)
        return found

    # ---- resources ----------------------------------------------------------------------------
    def rss_mb(self) -> float:
        """Resident memory of the server process and its children in MiB (needs psutil)."""
        import psutil
        if not self.alive():
            return 0.0
        try:
            p = psutil.Process(self.proc.pid)
            procs = [p, *p.children(recursive=True)]
            return sum(q.memory_info().rss for q in procs) / 2**20
        except psutil.Error:
            return 0.0


def add_demo_inputs(server: ComfyServer, media_dir: Path | None = None, clip: str = "bikes.mp4",
                    families: str = "wan21") -> None:
    """Give ``server`` what the shipped workflows name: the tiny random demo models of ``families`` (comma-separated,
    ``demo/make_tiny_models.py --families``, run with the server's interpreter) in its model folders and ``clip`` from
    ``media_dir`` (default ``.cache/media``, fetched by scripts/setup.sh) in its input folder. Call before
    :meth:`ComfyServer.start`.

    Raises:
        ServerError: the clip is missing or make_tiny_models.py failed (its output in the message)."""
    source = Path(media_dir or REPO_ROOT / ".cache" / "media") / clip
    if not source.is_file():
        raise ServerError(f"{source} is missing: run `bash scripts/setup.sh` (it fetches the example clips)")
    server.prepare_base()
    proc = subprocess.run([server.python, str(REPO_ROOT / "demo" / "make_tiny_models.py"), "--comfyui-dir",
                           str(server.comfyui_dir), "--out", str(server.models_dir), "--families", families],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise ServerError(f"demo/make_tiny_models.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    shutil.copy2(source, server.input_dir / clip)


def substitute_inputs(api_prompt: dict, values: dict[tuple[str, str], object]) -> dict:
    """Copy of an API prompt with inputs replaced by (class_type, input_name) -> value."""
    out = json.loads(json.dumps(api_prompt))
    for node in out.values():
        if not isinstance(node, dict):
            continue
        for (class_type, name), value in values.items():
            if node.get("class_type") == class_type and name in node.get("inputs", {}):
                node["inputs"][name] = value
    return out


if __name__ == "__main__":  # smoke test: start, list our nodes, stop
    with ComfyServer(require_pack=False) as srv:
        info = srv.object_info()
        ours = sorted(k for k in info if k.startswith("FrameMemory"))
        print(f"server on {srv.url}: {len(info)} node types; FrameMemory nodes: {ours or 'none'}")
        err = srv.pack_import_error()
        print("pack import:", "OK" if err is None else "FAILED\n" + err)
