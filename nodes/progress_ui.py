"""What the Storyboard shows in the ComfyUI frontend while and after it runs, besides its outputs.

One percentage for the whole run (:class:`models.run_progress.RunClock`: every segment's sampling steps, VAE decode
and memory encode), shown alike in three places:
* the node's progress text ("Segment 2/3: decoding its frames - 52 %" and a line on the memory: its tokens and the
  seconds of history they cover), which the frontend shows natively under the widgets;
* the node's progress bar (one ``comfy.utils.ProgressBar`` over the run, 0..:data:`BAR_UNITS`, in place of the
  sampler's per-segment bar and its latent previews), with a preview image: each finished segment's decoded frames
  as a grid (real pixels, whatever ``--preview-method`` says), which stays on the node while the next segment is
  sampled;
* a ``framememory.progress`` websocket event ``{prompt_id, node, value, max}`` that ``web/framememory.js`` folds into
  the queue panel's "Total" and the tab title (the frontend computes those from finished nodes only, so one long
  node would otherwise hold them at 0 %).
After the run the report summary replaces the progress text; after a cancel, :meth:`NodeDisplay.cancelled` says how
many segments were finished, where they were saved and how to continue. Outside a running ComfyUI server (tests
calling ``run_storyboard`` directly) nothing is sent.
"""
from __future__ import annotations

import torch

from ..models.run_progress import RunProgress

PROGRESS_EVENT = "framememory.progress"
BAR_UNITS = 1000  # the run-wide bar's resolution: 0.1 %
PREVIEW_FRAMES = 4  # frames of a finished segment in its preview grid (2 x 2)
PREVIEW_MAX_PX = 512  # the preview's longest side, px (ComfyUI's preview tuple: format, image, max size)
PHASE_WORDS = {"decode": "decoding its frames", "encode": "adding it to the memory", "segment done": "done"}


def progress_text(p: RunProgress) -> str:
    """The node's progress text for ``p``: where the run is and its one percentage, then (once the segment was
    sampled) what the memory held, e.g. ``"Segment 2/3: sampling, step 3/4 - 45 %"`` or
    ``"Segment 2/3: done - 67 %\\nMemory: 182 tokens for the last 1.8 s of video"``."""
    percent = int(100 * p.fraction)
    if p.segment >= p.segments:
        return f"All {p.segments} segments done - 100 %"
    what = f"sampling, step {p.step}/{p.steps}" if p.phase == "sample" else PHASE_WORDS[p.phase]
    line = f"Segment {p.segment + 1}/{p.segments}: {what} - {percent} %"
    if p.memory_tokens is None:
        return line
    if not p.memory_tokens:
        return line + "\nMemory: none (memory_mode off, or nothing before this segment)"
    return line + f"\nMemory: {p.memory_tokens} tokens for the last {p.history_seconds:.1f} s of video"


def frames_preview(frames: torch.Tensor):
    """A preview of a segment's decoded frames ``[F, H, W, 3]`` uint8: :data:`PREVIEW_FRAMES` frames spread over it
    (first to last) in a 2-column grid, as ComfyUI's preview tuple ``("JPEG", PIL.Image, max_px)``."""
    from PIL import Image
    from torchvision.utils import make_grid

    picks = torch.linspace(0, frames.shape[0] - 1, min(PREVIEW_FRAMES, frames.shape[0])).round().long()
    grid = make_grid(frames[picks].permute(0, 3, 1, 2), nrow=2, padding=2)  # [3, H', W'] uint8
    return "JPEG", Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy()), PREVIEW_MAX_PX


def reading_text(done: int, planned: int, seconds_per_segment: float) -> str:
    """Load Video as History's progress text after ``done`` of ``planned`` history segments, e.g.
    ``"Reading the video into memory: segment 3 of 7 (2.8 s of 6.6 s) - 42 %"``."""
    return (f"Reading the video into memory: segment {done} of {planned} ({done * seconds_per_segment:.1f} s of "
            f"{planned * seconds_per_segment:.1f} s) - {100 * done // max(planned, 1)} %")


class NodeDisplay:
    """Sends progress, previews and text for the node being executed (``comfy_execution.utils.get_executing_context``)
    through ``PromptServer.instance``; every call does nothing when there is no server or no executing node.
    """

    def __init__(self) -> None:
        self.server, self.context, self.bar = None, None, None
        self.finished, self.segments = 0, 0  # segments finished so far (resumed ones included) / of the run
        try:
            import comfy.utils
            from comfy_execution.utils import get_executing_context
            from server import PromptServer
        except ImportError:  # outside ComfyUI
            return
        self.server, self.context = getattr(PromptServer, "instance", None), get_executing_context()
        if self.live:
            self.bar = comfy.utils.ProgressBar(BAR_UNITS)

    @property
    def live(self) -> bool:
        """Whether messages go anywhere (a server is running this node)."""
        return self.server is not None and self.context is not None

    def progress(self, p: RunProgress) -> None:
        """``run_storyboard``'s ``progress`` callable: text, bar (with a preview) and the Total event for ``p``."""
        self.finished = p.segment + 1 if p.phase == "segment done" else p.segment
        self.segments = p.segments
        if not self.live:
            return
        value = round(p.fraction * BAR_UNITS)
        preview = None if p.frames is None else frames_preview(p.frames)
        self.server.send_progress_text(progress_text(p), self.context.node_id)
        self.bar.update_absolute(value, BAR_UNITS, preview)
        self.server.send_sync(PROGRESS_EVENT, {"prompt_id": self.context.prompt_id, "node": self.context.node_id,
                                               "value": value, "max": BAR_UNITS}, self.server.client_id)

    def show(self, text: str) -> None:
        """Show ``text`` (plain, lines split by newlines) on the node, replacing the progress line."""
        if self.live:
            self.server.send_progress_text(text, self.context.node_id)


__all__ = ["PROGRESS_EVENT", "BAR_UNITS", "progress_text", "reading_text", "frames_preview", "NodeDisplay"]
