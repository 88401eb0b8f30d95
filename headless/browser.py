"""Drive the real ComfyUI frontend (the ``comfyui_frontend_package`` a ComfyUI server serves) in headless Chromium.

The frontend owns the workflow format: loading a UI workflow, turning it into an API prompt
(``app.graphToPrompt``), saving it (``app.graph.serialize``), queueing it (the Run button) all run the frontend's own
code here; nothing of it is re-implemented. Used by ``scripts/sync_workflows.py`` (API files, saved views,
thumbnails) and ``tests/test_browser.py``.

Needs Debian's Chromium (``apt-get install chromium``; ``FRAMEMEMORY_CHROMIUM`` overrides the path) and the
``playwright`` package (requirements-test.txt). Never ``playwright install``: it downloads a browser of its own.

    with ComfyServer() as server, ComfyFrontend(server.url) as ui:
        missing = ui.load_workflow(json.loads(path.read_text()), path.stem)
        prompt = ui.graph_to_prompt()
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import requests

# Chromium on a machine with a closed network: no background connections, no sandbox (root in CI), no GPU, no
# reliance on a large /dev/shm (containers).
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic")
VIEWPORT = {"width": 1920, "height": 1080}  # a full-HD browser window: the size the saved views are made for
# Settings stored on the server before the page opens: no Templates dialog on the first load.
FIRST_RUN_SETTINGS = {"Comfy.TutorialCompleted": True}
# The part of a 1920x1080 window that no overlay covers (frontend 1.32.9: banner + tabs + breadcrumb/Run toolbar
# above y = 140, side bar left of x = 60, minimap and zoom controls below y = 820 on the right): left, top, right,
# bottom in CSS px. ``fit_view`` places the graph inside it; ``hidden_nodes`` checks it with the real DOM.
SAFE_AREA = (90, 150, 1890, 810)
# The API prompt of the open graph as the Run button posts it (the frontend's graphToPrompt, through JSON.stringify).
GRAPH_TO_PROMPT = "async () => JSON.stringify((await window.app.graphToPrompt()).output)"
READY = "window.app && window.app.vueAppReady && window.app.graph && window.app.canvas"


class BrowserError(RuntimeError):
    """Chromium or Playwright is missing, the page did not come up, or the frontend raised."""


def chromium_path() -> str:
    """Path of the Chromium to drive: ``FRAMEMEMORY_CHROMIUM``, else ``chromium`` on PATH.

    Raises:
        BrowserError: none found (the message says how to install Debian's package)."""
    path = os.environ.get("FRAMEMEMORY_CHROMIUM") or shutil.which("chromium")
    if not path or not Path(path).exists():
        raise BrowserError("no Chromium found: install Debian's package (`apt-get install chromium`, done by "
                           "scripts/setup.sh --test) or set FRAMEMEMORY_CHROMIUM to a Chromium binary")
    return path


class ComfyFrontend:
    """One headless Chromium page on a ComfyUI server's frontend, as a context manager.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8188``.
        viewport: window size in CSS px (default :data:`VIEWPORT`).
        timeout_s: seconds to wait for the app to come up.
    Attributes:
        page: the Playwright page; errors: uncaught page errors (``pageerror``) seen so far.
    """

    def __init__(self, url: str, *, viewport: dict | None = None, timeout_s: float = 120.0):
        self.url = url.rstrip("/")
        self.viewport = dict(viewport or VIEWPORT)
        self.timeout_ms = int(timeout_s * 1000)
        self.errors: list[str] = []
        self._in_flight: set = set()  # the page's HTTP requests not yet finished or failed
        self._playwright = self.browser = self.page = None

    def __enter__(self) -> "ComfyFrontend":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Store :data:`FIRST_RUN_SETTINGS`, launch Chromium, open the app and wait until it is ready."""
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as e:
            raise BrowserError("the playwright package is missing: `pip install playwright` (requirements-test.txt); "
                               "do not run `playwright install`, Debian's chromium is used") from e
        executable = chromium_path()
        requests.post(self.url + "/api/settings", json=FIRST_RUN_SETTINGS, timeout=30).raise_for_status()
        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        self.page = self.browser.new_page(viewport=self.viewport)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self._in_flight.add(request))
        self.page.on("requestfinished", lambda request: self._in_flight.discard(request))
        self.page.on("requestfailed", lambda request: self._in_flight.discard(request))
        self.page.goto(self.url)
        self.page.wait_for_function(READY, timeout=self.timeout_ms)

    def close(self) -> None:
        if self.browser is not None:
            self.browser.close()
        if self._playwright is not None:
            self._playwright.stop()
        self._playwright = self.browser = self.page = None

    # ---- the graph --------------------------------------------------------------------------------
    def load_workflow(self, workflow: dict, name: str) -> list[str]:
        """Open a UI-format workflow as the frontend does (``app.loadGraphData``) and return the node types it
        uses that the server does not define (``[]`` when every node exists). The saved view (``extra.ds``) is
        applied as saved."""
        types = sorted({node["type"] for node in workflow.get("nodes", [])})
        missing = self.page.evaluate("types => types.filter(t => !window.LiteGraph.registered_node_types[t])", types)
        self.page.evaluate("async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }",
                           [workflow, name])
        self.settle()
        return missing

    def settle(self, timeout_s: float = 20.0, interval_ms: int = 400, stable_reads: int = 3) -> None:
        """Wait until the open graph stops changing: widgets that load asynchronously (the Load Video preview appears
        once its file has loaded, within the frontend's 8 s media timeout) add their values late. Returns when no
        request of the page is in flight and ``stable_reads`` ``graphToPrompt`` results ``interval_ms`` apart agree,
        or after ``timeout_s``."""
        reads: list[str] = []
        for _ in range(int(timeout_s * 1000 / interval_ms)):
            self.page.wait_for_timeout(interval_ms)
            if self._in_flight:
                reads.clear()
                continue
            reads.append(self.page.evaluate(GRAPH_TO_PROMPT))
            if len(reads) >= stable_reads and len(set(reads[-stable_reads:])) == 1:
                return

    def graph_to_prompt(self) -> dict:
        """The API prompt of the open graph, from the frontend's own ``app.graphToPrompt`` (``output``, as the Run
        button posts it: through ``JSON.stringify``)."""
        return json.loads(self.page.evaluate(GRAPH_TO_PROMPT))

    def node_inputs(self, types: list[str]) -> dict[str, list[str]]:
        """``{node type: input names}`` as this server defines them (``nodeData.input`` required + optional, the
        server's ``/object_info`` as the frontend registered it); unknown types are left out."""
        return self.page.evaluate("""types => { const out = {};
            for (const t of types) { const d = window.LiteGraph.registered_node_types[t]?.nodeData;
              if (d) out[t] = [...Object.keys(d.input?.required ?? {}), ...Object.keys(d.input?.optional ?? {})]; }
            return out; }""", types)

    def serialize(self) -> dict:
        """The open graph as the frontend saves it: ``JSON.stringify(app.graph.serialize())`` (undefined fields dropped),
        the view in ``extra.ds``."""
        return json.loads(self.page.evaluate("() => JSON.stringify(window.app.graph.serialize())"))

    def view(self) -> dict:
        """``{"scale", "offset", "low_quality"}``: the canvas view; ``low_quality`` is the frontend's own decision to
        draw nodes as blank boxes (text below ``LiteGraph.Canvas.MinFontSizeForLOD``)."""
        return self.page.evaluate("() => { const c = window.app.canvas; c.draw(true, true); return {scale: c.ds.scale,"
                                  " offset: Array.from(c.ds.offset), low_quality: !!c.low_quality}; }")

    def node_rects(self) -> dict[str, list[float]]:
        """``{node id: [x, y, w, h]}`` of every node on screen, CSS px, title bar included."""
        return self.page.evaluate("""() => { const c = window.app.canvas, out = {};
            for (const n of window.app.graph.nodes) { const [x, y, w, h] = n.boundingRect;
              const [sx, sy] = c.ds.convertOffsetToCanvas([x, y]);
              out[n.id] = [sx, sy, w * c.ds.scale, h * c.ds.scale]; } return out; }""")

    def fit_view(self, area: tuple[float, float, float, float] = SAFE_AREA, max_scale: float = 1.0) -> dict:
        """Zoom and pan so the whole graph fills ``area`` (left, top, right, bottom CSS px; default
        :data:`SAFE_AREA`) at the largest scale up to ``max_scale``; returns :meth:`view`."""
        self.page.evaluate("""([l, t, r, b, maxScale]) => { const c = window.app.canvas;
            const rects = window.app.graph.nodes.map(n => Array.from(n.boundingRect));
            const x0 = Math.min(...rects.map(q => q[0])), y0 = Math.min(...rects.map(q => q[1]));
            const x1 = Math.max(...rects.map(q => q[0] + q[2])), y1 = Math.max(...rects.map(q => q[1] + q[3]));
            const s = Math.min(maxScale, (r - l) / (x1 - x0), (b - t) / (y1 - y0));
            c.ds.scale = s; c.ds.offset = [(l + r) / 2 / s - (x0 + x1) / 2, t / s - y0]; c.setDirty(true, true);
            }""", [*area, max_scale])
        return self.view()

    def hidden_nodes(self) -> list[str]:
        """Titles of the nodes that are not wholly visible: a corner or the title bar outside the window or under an
        overlay (``document.elementFromPoint`` must hit the canvas or a widget of the graph, never the toolbar,
        side bar or minimap)."""
        return self.page.evaluate("""() => { const c = window.app.canvas, hidden = [];
            const onGraph = (x, y) => { const e = document.elementFromPoint(x, y);
              return !!e && (e === c.canvas || !!e.closest('.dom-widget')); };
            for (const n of window.app.graph.nodes) { const [x, y, w, h] = n.boundingRect;
              const [sx, sy] = c.ds.convertOffsetToCanvas([x, y]), sw = w * c.ds.scale, sh = h * c.ds.scale;
              const pts = [[sx + 4, sy + 4], [sx + sw / 2, sy + 4], [sx + sw - 4, sy + 4],
                           [sx + 4, sy + sh - 4], [sx + sw - 4, sy + sh - 4]];
              if (!pts.every(([px, py]) => onGraph(px, py))) hidden.push(n.title); } return hidden; }""")

    def screenshot(self, path: str | os.PathLike, clip: tuple[float, float, float, float] | None = None) -> Path:
        """Write a PNG or JPEG (by suffix) of the window, or of ``clip`` (left, top, right, bottom CSS px)."""
        path = Path(path)
        kwargs = {"path": str(path), "type": "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"}
        if clip is not None:
            left, top, right, bottom = clip
            kwargs["clip"] = {"x": left, "y": top, "width": right - left, "height": bottom - top}
        self.page.screenshot(**kwargs)
        return path
