"""Several DiTs in one sampling schedule (Wan 2.2 A14B: the high-noise expert, then the low-noise expert).

The experts share the history, its latents, its LR latents and the encoder (HR branch weights); only the LR branch's
first projection differs (each expert's own patch embedding), so each expert caches its own memory tokens under its
own :class:`~memory.history.PartKey` (``expert`` index). Each new span is encoded once for the schedule: one LR VAE
encode and one HR branch, then every expert's own patch embedding of the LR latent (incremental, as for one model),
from the kept latent and LR latent: no expert ever needs the pixels again, so a memory made with one model continues
with a pair without decoding anything.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..memory.designs import ENCODED_MODES
from ..memory.history import HistoryBuffer, PartKey
from . import families
from .encoding import HRCache, encode_pending
from .memory_modes import mode_config


def expert_keys(encoder, expert: int = 0) -> list[PartKey]:
    """History keys of every encoder of ``encoder`` (MemoryEncoder or MultiEncoder) for the ``expert``-th DiT."""
    return [PartKey(i, expert) for i in range(len(encoder.parts))]


def memory_token_count(history: HistoryBuffer, encoder, expert: int = 0) -> int:
    """Memory tokens cached for one expert (every encoder of ``encoder``), without the overlap window: what one DiT
    of the schedule attends to. ``history.num_tokens`` counts every expert's copy."""
    keys = expert_keys(encoder, expert)
    return sum(int(s.encoded[k][0].shape[0]) for s in history.segments for k in keys if k in s.encoded)


def expert_models(model, model_low_noise=None) -> list:
    """The DiTs of the sampling schedule: ``[model]``, or ``[model, model_low_noise]`` for a Wan 2.2 A14B pair (the
    high-noise expert first). Raises ValueError when the two are of different families (they must share the
    latent space of one history), TypeError for an unsupported family."""
    if model_low_noise is None:
        return [model]
    high, low = families.family_for(model), families.family_for(model_low_noise)
    if high is not low:
        raise ValueError(f"model_low_noise is a {low.FAMILY} model but model is {high.FAMILY}: the two experts of a "
                         "pair must be of one family (Wan 2.2 A14B: two Wan 2.1-architecture DiTs)")
    return [model, model_low_noise]


def encode_pending_experts(models: list, vae, encoder, history: HistoryBuffer) -> int:
    """:func:`models.encoding.encode_pending` for every DiT of a sampling schedule (``models[e]`` caches its tokens
    under the keys of expert ``e``); with one model exactly ``encode_pending``. What does not depend on the DiT is
    computed once per span: the LR clip's VAE encode (the history keeps one LR latent per encoder) and the HR branch
    (an :class:`~models.encoding.HRCache` for this pass); each expert runs only its own patch embedding on the LR
    latent. The last expert is encoded first: it is the one still loaded after sampling, and the first one, needed
    next, ends up loaded. Returns how many segments the busiest expert encoded. Raises like ``encode_pending``."""
    n, hr_cache = 0, HRCache()
    for e in reversed(range(len(models))):
        n = max(n, encode_pending(models[e], vae, encoder, history, expert=e, hr_cache=hr_cache))
    return n


@dataclass(frozen=True)
class BoundEncoder:
    """The memory encoder bound once per run to the DiTs of its sampling schedule (:func:`bind_encoder`): the one
    object a Storyboard run or a clip's ingestion passes down instead of re-checking encoder, models and mode."""

    models: list  # the DiTs of the schedule (:func:`expert_models`), the high-noise expert first
    vae: object  # their VAE (LR branch encodes, history encodes)
    encoder: object  # MemoryEncoder or MultiEncoder
    mode: str  # memory.designs.MEMORY_MODES

    @property
    def encodes(self) -> bool:
        """Whether the mode encodes the history into compressed memory tokens (frame_preservation, pack_forcing)."""
        return self.mode in ENCODED_MODES


def bind_encoder(model, model_low_noise, vae, encoder, mode: str) -> BoundEncoder:
    """``encoder`` bound to the schedule of ``model`` (and the Wan 2.2 A14B ``model_low_noise``, or None) in ``mode``,
    each DiT checked once (:func:`models.memory_modes.mode_config`). Raises ValueError like :func:`expert_models`,
    ``mode_config`` and :meth:`models.encoding.MemoryEncoder.check`; TypeError for an unsupported family."""
    models = expert_models(model, model_low_noise)
    for m in models:
        mode_config(encoder, m, mode)
    return BoundEncoder(models, vae, encoder, mode)


__all__ = ["expert_keys", "memory_token_count", "expert_models", "encode_pending_experts", "BoundEncoder",
           "bind_encoder"]
