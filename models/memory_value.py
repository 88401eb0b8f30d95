"""The MEMORY value: what flows between nodes on the MEMORY socket (Encode History, Load Video as History, Load
Memory, the Storyboard's memory output, Apply Memory): a history buffer plus the encoder, the video geometry and the
memory mode it was made with, and, from a Storyboard, where its run stands (:mod:`models.resume`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..memory.designs import ENCODED_MODES
from ..memory.history import HistoryBuffer
from .conds import attach_memory
from .encoding import MemoryEncoder, MultiEncoder, encode_pending
from .experts import expert_keys
from .memory_modes import MemoryInputs, memory_inputs
from .segment_sampler import memory_model


@dataclass
class Memory:
    """What the MEMORY socket carries: the history buffer plus the encoder and video geometry it was made with, and
    the memory mode (:data:`memory.designs.MEMORY_MODES`; only frame_preservation and pack_forcing encode the
    history's spans into compressed tokens); from a Storyboard also where its run stands (``position``, a
    :class:`memory.memory_file.StoryboardPosition`: an unfinished one is resumed, :mod:`models.resume`)."""

    history: HistoryBuffer
    encoder: MemoryEncoder | MultiEncoder
    fps: float
    width: int
    height: int
    mode: str = "frame_preservation"
    position: object = None  # memory.memory_file.StoryboardPosition of the Storyboard run that made it, or None

    @property
    def encodes(self) -> bool:
        """Whether this mode needs the history's compressed memory tokens (frame_preservation, pack_forcing)."""
        return self.mode in ENCODED_MODES

    def tokens(self, model, expert: int = 0):
        """``(tokens [M, D], positions [M, 3])`` for the segment after the history (time relative to its end), or
        ``(None, None)``; the whole context of the mode (see :meth:`conds`)."""
        inputs = self.conds(model, expert)
        return inputs.tokens, inputs.positions

    def conds(self, model, expert: int = 0) -> MemoryInputs:
        """What the segment after the history attends to in this memory's mode (:func:`models.memory_modes.
        memory_inputs`: tokens, positions, the cross-attention add-on's hidden states, PackForcing's partition labels,
        VideoSSM's state), for ``conds.attach_memory``. ``model`` is the ``expert``-th DiT of the schedule (1: a
        Wan 2.2 A14B low-noise expert, whose tokens come from its own patch embedding). Empty in mode "off"."""
        return memory_inputs(model, self.encoder, self.history, expert, self.mode)

    def for_expert(self, model, expert: int, vae=None) -> "Memory":
        """This memory with the history also encoded for the ``expert``-th DiT of a schedule (1: the Wan 2.2 A14B
        low-noise expert ``model``, whose LR branch is its own patch embedding). ``self`` when already encoded for it;
        otherwise a new Memory (``self`` is not changed) whose spans are encoded from the kept latents and LR latents
        (no pixels or VAE needed; ``vae`` is used only for spans whose LR latent is still missing).

        Raises:
            ValueError: like :func:`models.encoding.encode_pending`.
        """
        keys = expert_keys(self.encoder, expert)
        if not self.encodes or all(k in s.encoded for s in self.history.segments for k in keys):
            return self
        history = self.history.copy()
        encode_pending(model, vae, self.encoder, history, expert=expert)
        return dataclasses.replace(self, history=history)

    def apply(self, model, positive: list, negative: list, expert: int = 0, vae=None) -> tuple[object, list, list]:
        """What Apply Memory does: ``(patched model, positive, negative)`` for the stock KSampler, the model
        patched for memory attention (:func:`models.segment_sampler.memory_model`) and both conditionings carrying
        this memory. ``expert`` 1 gives the Wan 2.2 A14B low-noise expert ``model`` the tokens of its own patch
        embedding (for the second KSamplerAdvanced); see :meth:`for_expert`. Raises like :meth:`for_expert` and
        :meth:`MemoryEncoder.check`."""
        inp = self.for_expert(model, expert, vae).conds(model, expert)
        return (memory_model(model, self.encoder), attach_memory(positive, inp.tokens, inp.positions, inp.hidden, inp.extra),
                attach_memory(negative, inp.tokens, inp.positions, inp.hidden, inp.extra))


__all__ = ["Memory"]
