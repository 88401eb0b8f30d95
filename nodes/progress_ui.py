"""What the Storyboard shows in the ComfyUI frontend while and after it runs, besides its outputs.

* Run-wide progress: ``progress_text`` on the node ("Segment 2/5, step 3/4 - 35 % of the run"; the frontend shows it
  natively under the widgets) and a ``framememory.progress`` websocket event ``{prompt_id, node, value, max}`` that
  ``web/framememory.js`` folds into the queue panel's "Total" (the frontend computes that from finished nodes only,
  so one long node would otherwise hold it at 0 %). The node's own progress bar stays the sampler's, per segment.
* After the run: the report summary as the node's progress text.

Outside a running ComfyUI server (tests calling ``run_storyboard`` directly) nothing is sent.
"""
from __future__ import annotations

PROGRESS_EVENT = "framememory.progress"


def progress_text(done: int, total: int, steps: int) -> str:
    """The run-wide progress line for ``done`` of ``total`` sampling steps, ``steps`` per segment, e.g.
    ``progress_text(11, 20, 4)`` -> ``"Segment 3/5, step 3/4 - 55 % of the run"``; after a segment's last step
    ``progress_text(12, 20, 4)`` -> ``"Segment 3/5 sampled, decoding and encoding it - 60 % of the run"``.

    Raises:
        ValueError: ``steps`` < 1, ``total`` not a positive multiple of ``steps``, or ``done`` outside 0..total.
    """
    if steps < 1 or total < steps or total % steps or not 0 <= done <= total:
        raise ValueError(f"progress needs 0 <= done <= total, total a multiple of steps >= 1; got done={done}, "
                         f"total={total}, steps={steps}")
    segments, percent = total // steps, 100 * done // total
    if done and done % steps == 0:  # a segment's last step: its decode and encode follow
        return f"Segment {done // steps}/{segments} sampled, decoding and encoding it - {percent} % of the run"
    segment = done // steps + 1
    return f"Segment {segment}/{segments}, step {done - (segment - 1) * steps}/{steps} - {percent} % of the run"


class NodeDisplay:
    """Sends text and run-wide progress for the node being executed (``comfy_execution.utils.get_executing_context``)
    through ``PromptServer.instance``; every call does nothing when there is no server or no executing node.

    Args:
        steps: sampling steps per segment (the Storyboard's ``steps``), to name segment and step in the text.
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.server, self.context = None, None
        try:
            from comfy_execution.utils import get_executing_context
            from server import PromptServer
        except ImportError:  # outside ComfyUI
            return
        self.server, self.context = getattr(PromptServer, "instance", None), get_executing_context()

    @property
    def live(self) -> bool:
        """Whether messages go anywhere (a server is running this node)."""
        return self.server is not None and self.context is not None

    def progress(self, done: int, total: int) -> None:
        """``run_storyboard``'s ``progress`` callable: ``done`` of ``total`` sampling steps of the whole run."""
        if not self.live:
            return
        self.server.send_progress_text(progress_text(done, total, self.steps), self.context.node_id)
        self.server.send_sync(PROGRESS_EVENT, {"prompt_id": self.context.prompt_id, "node": self.context.node_id,
                                               "value": int(done), "max": int(total)}, self.server.client_id)

    def show(self, text: str) -> None:
        """Show ``text`` (plain, lines split by newlines) on the node, replacing the progress line."""
        if self.live:
            self.server.send_progress_text(text, self.context.node_id)


__all__ = ["PROGRESS_EVENT", "progress_text", "NodeDisplay"]
