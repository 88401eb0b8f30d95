"""What a Storyboard run starts from: the memory input, the stopped run saved under ``save_path`` (``resume``), and a
starting clip made history (or found already in a resumed history), decided before the loop
(:func:`models.storyboard.run_storyboard`) takes over."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..memory.storyboard import split_clip
from . import families
from .history_writer import history_from_frames
from .memory_value import Memory
from .resume import resume_memory, resumes


@dataclass(frozen=True)
class StoryboardStart:
    """Where a Storyboard run starts.

    memory: the memory the run continues as given or resumed (the memory input, or the stopped run loaded from
        ``save_path``), without the starting clip; None for neither.
    start: the history the loop continues (``memory`` with the starting clip appended, unless a resumed history
        already holds it), or None.
    dropped: oldest frames of the starting clip that fill no segment (not in the history).
    loaded: whether ``memory`` was loaded from ``save_path`` here (then the checks of the node, made before it was
        loaded, did not see its history: the loop checks the run again).
    """

    memory: Memory | None
    start: Memory | None
    dropped: int
    loaded: bool


def storyboard_start(model, vae, encoder, shots: list, memory: Memory | None, start_images: torch.Tensor | None,
                     save_path: str | None, resume: bool, latent_frames: int, fps: float, width: int, height: int,
                     model_low_noise=None, mode: str = "frame_preservation") -> StoryboardStart:
    """The start of a Storyboard run (the node's inputs; ``start_images`` already RGB ``[F, H, W, 3]``, ``save_path``
    the full memory folder path or None): with ``resume``, the unfinished run of these ``shots`` saved under
    ``save_path`` (:func:`models.resume.resume_memory`); then the starting clip appended as history
    (:func:`models.history_writer.history_from_frames`), unless the memory is an unfinished run of these shots,
    whose history already holds it (only the count of its dropped frames is computed).

    Raises:
        ValueError: like :func:`models.resume.resume_memory` and :func:`models.history_writer.history_from_frames`.
    """
    given = memory
    memory = resume_memory(save_path, resume, memory, encoder, vae, shots)  # the stopped run, or refused
    start, dropped = memory, 0
    if start_images is not None and resumes(memory, shots):  # the saved history already holds the clip
        dropped = split_clip(int(start_images.shape[0]), latent_frames, families.family_for(model).VAE_STRIDE[0])[0]
    elif start_images is not None:
        start, dropped = history_from_frames(model, vae, encoder, start_images, latent_frames, fps, width, height,
                                             memory, model_low_noise, mode)
    return StoryboardStart(memory, start, dropped, memory is not given)


__all__ = ["StoryboardStart", "storyboard_start"]
