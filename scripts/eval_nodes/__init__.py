"""Evaluation-only ComfyUI node of the main job (issue 22): the shuffled-memory control without encoding a second
history.

The control asks whether memory on wins because of *A's* content: it runs the same return with a memory whose shot A
is another clip's, before the same cutaway. Encoding that whole second history (A' + the cutaway, one VAE stream)
costs as much as the first; here only the other clip's A is encoded (its own Load Video as History node) and its
segments replace A's segments of the real history, whose cutaway segments (latents, memory tokens, LR latents, as
encoded after A) are kept: :func:`splice_history`. benchmarks/revisit.py builds its shuffled row the same way.

scripts/run_example.py links this folder into the headless server's ``custom_nodes`` (as ``FrameMemoryEval``); it
is not part of the pack (``nodes/``) and needs nothing but the pack's MEMORY objects (V1 node API, no ComfyUI
import). The node: ``FrameMemoryEvalSpliceHistory(memory, other) -> memory``.
"""
from __future__ import annotations

import dataclasses

MEMORY = "FRAMEMEMORY_MEMORY"  # nodes/sockets.py MemoryType


def splice_history(mem, other):
    """A copy of the Memory ``mem`` (``models.storyboard.Memory``: shot A, then the cutaway) whose first segments,
    as many as make ``other``'s history (another clip's A encoded alone, as many frames as A), are ``other``'s
    segments; ``mem``'s later segments, LR streams and colour statistics are kept (shared, not copied: segments are
    immutable). A VideoSSM state is not carried over (it is absorbed again from the spliced latents). Neither input
    is changed.

    Raises:
        ValueError: ``other`` is empty, longer than ``mem``, or its segments' frame counts differ from ``mem``'s
        first segments (the same A length is needed: 13 + 16k frames at the same size and fps), or the two memories
        differ in size, fps or mode.
    """
    own, alien = mem.history.segments, other.history.segments
    k = len(alien)
    if not k or k >= len(own):
        raise ValueError(f"the control's A has {k} segments; the history has {len(own)} (A + the cutaway): the control "
                         "needs fewer, at least one")
    if [s.num_frames for s in alien] != [s.num_frames for s in own[:k]]:
        raise ValueError(f"the control's A ({[s.num_frames for s in alien]} frames per segment) does not match this "
                         f"history's A ({[s.num_frames for s in own[:k]]}): read the same number of frames")
    for what in ("width", "height", "fps", "mode"):
        if getattr(mem, what) != getattr(other, what):
            raise ValueError(f"the control's memory has {what} {getattr(other, what)}, the history "
                             f"{getattr(mem, what)}")
    if tuple(alien[0].latent.shape) != tuple(own[0].latent.shape):
        raise ValueError(f"the control's A latents {tuple(alien[0].latent.shape)} differ from the history's "
                         f"{tuple(own[0].latent.shape)}")
    history = type(mem.history)(list(alien) + list(own[k:]), mem.history.lr_streams)
    history.colour_stats = mem.history.colour_stats
    return dataclasses.replace(mem, history=history)


class SpliceHistory:
    """ComfyUI node (V1 API): :func:`splice_history`."""

    CATEGORY = "FrameMemory/eval"
    RETURN_TYPES = (MEMORY,)
    RETURN_NAMES = ("memory",)
    FUNCTION = "splice"
    DESCRIPTION = ("Evaluation only (issue 22): the history with its first shot replaced by another clip's "
                   "(the shuffled-memory control).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"memory": (MEMORY, {"tooltip": "shot A then the cutaway (Load Video as History)"}),
                             "other": (MEMORY, {"tooltip": "another clip's first frames, as many as A"})}}

    def splice(self, memory, other):
        return (splice_history(memory, other),)


NODE_CLASS_MAPPINGS = {"FrameMemoryEvalSpliceHistory": SpliceHistory}
NODE_DISPLAY_NAME_MAPPINGS = {"FrameMemoryEvalSpliceHistory": "Splice History (FrameMemory eval)"}
