"""Resuming a storyboard from its memory file (memory/memory_file.py): what makes a continued run give the frames the
uninterrupted run would have given.

A storyboard run writes its memory (history, memory tokens, LR VAE streams, colour statistics) and its
:class:`~memory.memory_file.StoryboardPosition` after every segment. Given back (Load Memory -> the Storyboard's
``memory``, or ``resume`` with ``save_path``), :func:`models.storyboard.run_storyboard` continues at the next segment
with the run's own seed and settings, from exactly the saved history and LR streams. The frames of the segments
already made are decoded again (:func:`replay_segments`): the decode stream restarts where the run started (from the
history before it, as the run did) and decodes the saved latents one segment at a time, as the run did, which
gives the same frames and leaves the decode stream in the state the next segment continues from.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from ..memory.history import HistoryBuffer
from ..memory.memory_file import (MemoryRecord, StoryboardPosition, StreamState, find_memory, load_memory, save_memory,
                                  storyboard_hash)
from ..memory.frames import to_uint8
from .colour_match import correct_segment, record_colour
from .memory_value import Memory
from .vae_stream import VideoStream

log = logging.getLogger("FrameMemory")
# settings a resumed run must share with the saved one (the seed is taken from the file)
RESUME_SETTINGS = ("steps", "cfg", "sampler_name", "scheduler", "switch_step", "latent_frames", "fps", "width",
                   "height", "mode", "colour_correction")


def stream_state(stream: VideoStream) -> StreamState:
    """The state of a VideoStream as plain data (shares its tensors; they are replaced, never changed)."""
    return StreamState(stream.mode, stream.ft, stream.context, stream.started,
                       None if stream.cache is None else tuple(stream.cache), stream.tail)


def restore_stream(state: StreamState, vae) -> VideoStream:
    """A VideoStream of ``vae`` in the saved ``state``. Raises ValueError when the state was made with a VAE of the
    other kind (exact WanVAE cache vs context mode)."""
    stream = VideoStream(vae, state.mode, time_stride=state.time_stride, context=state.context)
    if state.started and stream.exact != (state.cache is not None):
        raise ValueError("the memory file's LR stream was made with another kind of VAE "
                         f"({'WanVAE' if state.cache is not None else 'not WanVAE'}); load the VAE it was made with")
    stream.cache = None if state.cache is None else list(state.cache)
    stream.tail, stream.started = state.tail, state.started
    return stream


def vae_signature(vae) -> dict:
    """What identifies a VAE's architecture for the LR streams of a memory (their causal caches only fit the VAE that
    made them): the class of ``vae.first_stage_model`` (comfy.sd.VAE), its latent channels and parameter count."""
    inner = getattr(vae, "first_stage_model", vae)
    params = sum(int(p.numel()) for p in inner.parameters()) if hasattr(inner, "parameters") else 0
    return {"class": type(inner).__name__, "latent_channels": int(getattr(vae, "latent_channels", 0) or 0),
            "parameters": params}


def memory_record(mem) -> MemoryRecord:
    """A :class:`~memory.memory_file.MemoryRecord` of ``mem`` (a :class:`models.memory_value.Memory`) for
    :func:`~memory.memory_file.save_memory`, with the :func:`vae_signature` of its LR streams' VAE."""
    history = mem.history.copy()
    vaes = [s.vae for s in history.lr_streams.values() if isinstance(s, VideoStream)]
    history.lr_streams = {p: stream_state(s) if isinstance(s, VideoStream) else s for p, s in history.lr_streams.items()}
    parts = mem.encoder.parts
    return MemoryRecord(history, [p.cfg for p in parts], [p.name for p in parts], mem.fps, mem.width, mem.height,
                        mem.mode, getattr(mem, "position", None), vae_signature(vaes[0]) if vaes else None)


def save_memory_file(path: str, mem) -> dict:
    """Append ``mem`` (with its position) to the memory folder of ``path``, crash-safe
    (:func:`memory.memory_file.save_memory`: only new or changed segments are written). Returns its write stats
    (``bytes``, ``files``, ``segments_written``, ``generation``, ``seconds``). Raises like ``save_memory``."""
    return save_memory(path, memory_record(mem))


def load_memory_file(path: str, encoder, vae):
    """The Memory saved under ``path`` (a ``.fmem`` folder or a ``memory/1`` file,
    :func:`memory.memory_file.find_memory`), its LR streams bound to ``vae``; ``encoder`` (MemoryEncoder or
    MultiEncoder) and ``vae`` must be the ones it was made with.

    Raises:
        FileNotFoundError, ValueError: like :func:`~memory.memory_file.load_memory`; ValueError also when ``encoder``
        has another config than the file's (naming the fields) or ``vae`` is another VAE than the one the memory's
        LR streams were made with.
    """
    record = load_memory(path)
    source = find_memory(path) or path
    check_encoder(encoder, record.encoders, source)
    if record.vae is not None and record.history.lr_streams:
        given = vae_signature(vae)
        if given != record.vae:
            raise ValueError(f"{source} was made with another VAE ({_vae_text(record.vae)}) than the one given "
                             f"({_vae_text(given)}): connect the VAE the memory was made with to Load Memory")
    history = record.history
    history.lr_streams = {p: restore_stream(s, vae) for p, s in history.lr_streams.items()}
    return Memory(history, encoder, record.fps, record.width, record.height, record.mode, record.position)


def _vae_text(sig: dict) -> str:
    return f"{sig.get('class')}, {sig.get('latent_channels')} latent channels, {sig.get('parameters'):,} parameters"


def resume_memory(save_path: str | None, resume: bool, memory, encoder, vae, shots):
    """What a Storyboard with ``resume`` continues from: ``memory`` (the memory input) when given; with ``resume``,
    the unfinished run of this storyboard saved under ``save_path``; None when nothing was saved there yet (the run
    starts at its first segment). Without ``resume``, ``memory``.

    Raises:
        ValueError: ``resume`` without ``save_path``; the file holds a finished run of this storyboard, or a run of
        another storyboard (each naming the file and what to change); like :func:`load_memory_file`.
    """
    if not resume:
        if save_path and find_memory(save_path) is not None:
            log.warning("FrameMemory: resume is off: the memory saved in %s is replaced by this run's", save_path)
        return memory
    if not save_path:
        raise ValueError("resume is on but save_path is empty: set save_path to the memory file of the run to continue "
                         "(a memory input from Load Memory continues a run without resume), or turn resume off")
    if memory is not None:
        return memory  # the memory input wins (Load Memory -> memory continues the same way)
    if find_memory(save_path) is None:
        log.info("FrameMemory: resume is on but %s holds no saved segment yet: starting the storyboard", save_path)
        return None
    memory = load_memory_file(save_path, encoder, vae)
    pos, source = memory.position, find_memory(save_path)
    if pos is not None and pos.storyboard_sha256 == storyboard_hash(shots) and pos.finished:
        raise ValueError(f"resume is on but {source} holds a finished run of this storyboard ({pos.total_segments} of "
                         f"{pos.total_segments} segments): turn resume off to start it again (the file is replaced), "
                         "or add shots to the storyboard and continue it through Load Memory -> memory with another "
                         "save_path")
    if pos is None or pos.storyboard_sha256 != storyboard_hash(shots):
        raise ValueError(f"resume is on but {source} holds "
                         + ("a memory of no storyboard run" if pos is None else "a run of another storyboard (its text "
                            "or durations differ)")
                         + ": set the storyboard back to the one saved there to continue it, or turn resume off to "
                           "start this one (the file is replaced), or continue that history through Load Memory -> "
                           "memory with another save_path")
    return memory


def check_encoder(encoder, configs: list, source: str) -> None:
    """Raise ValueError unless ``encoder``'s parts have exactly ``configs`` (the memory's), naming what differs."""
    mine = [p.cfg for p in encoder.parts]
    if len(mine) != len(configs):
        raise ValueError(f"{source} was made with {len(configs)} memory encoder(s), the memory_encoder given has "
                         f"{len(mine)}: connect the encoder the memory was made with")
    for i, (a, b) in enumerate(zip(mine, configs)):
        wrong = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
        if wrong:
            raise ValueError(f"{source} was made with another memory encoder (part {i}: "
                             + "; ".join(f"{k} {getattr(b, k)} in the memory, {getattr(a, k)} given" for k in wrong)
                             + "): connect the encoder the memory was made with")


def run_settings(sampler, latent_frames: int, fps: float, width: int, height: int, mode: str,
                 colour_correction: float) -> dict:
    """What a run's segments depend on besides the seed (JSON-able; see :data:`RESUME_SETTINGS`)."""
    return {"steps": sampler.steps, "cfg": sampler.cfg, "sampler_name": sampler.sampler_name,
            "scheduler": sampler.scheduler, "switch_step": sampler.switch_step, "latent_frames": latent_frames,
            "fps": fps, "width": width, "height": height, "mode": mode, "colour_correction": colour_correction}


def resume_position(start, shots, settings: dict, encoder) -> StoryboardPosition | None:
    """The position to continue from: ``start``'s (a Memory or None) when it is unfinished and of this storyboard
    (same :func:`~memory.memory_file.storyboard_hash`); None otherwise (the storyboard then starts at its first
    segment, continuing the history, as with any memory).

    Raises:
        ValueError: the saved run used other settings (steps, cfg, ..., naming them) or another encoder.
    """
    pos = getattr(start, "position", None)
    if pos is None or pos.finished:
        return None
    if pos.storyboard_sha256 != storyboard_hash(shots):
        log.warning("FrameMemory: the memory stopped at segment %d of another storyboard; starting this storyboard at "
                    "its first segment after that history", pos.next_segment)
        return None
    wrong = [k for k in RESUME_SETTINGS if pos.settings.get(k) != settings[k]]
    if wrong:
        raise ValueError("the memory is an unfinished run made with other settings: "
                         + "; ".join(f"{k} {pos.settings.get(k)!r} (now {settings[k]!r})" for k in wrong)
                         + ". Set them back to continue it, or change the storyboard text to start a new one")
    check_encoder(encoder, [p.cfg for p in start.encoder.parts], "the memory")
    return pos


def resumes(memory, shots) -> bool:
    """Whether ``memory`` (a Memory or None) holds an unfinished run of the storyboard ``shots`` (what
    :func:`resume_position` continues, settings not yet checked)."""
    pos = getattr(memory, "position", None)
    return pos is not None and not pos.finished and pos.storyboard_sha256 == storyboard_hash(shots)


def make_position(plans, shots, seed: int, done: int, run_start: int, settings: dict,
                  colour_start: list | None) -> StoryboardPosition:
    """The position after ``done`` segments of ``plans`` (a memory.storyboard.SegmentSchedule of the whole run);
    ``colour_start``: the history's colour statistics when the run started (``[3, 3]`` as nested lists) or None."""
    finished = done >= len(plans)
    frames = plans.total_frames if finished else plans[done].start_frame
    return StoryboardPosition(storyboard_hash(shots), len(plans), done, -1 if finished else plans[done].shot, seed,
                              frames / settings["fps"], run_start, settings,
                              colour_start)


def replay_segments(decoder: VideoStream, history: HistoryBuffer, run_start: int, plans, colour: float,
                    colour_start: list | None) -> list[torch.Tensor]:
    """The frames ``[F, H, W, 3]`` uint8 of the finished segments ``plans`` (the first ones of the run), decoded again
    from ``history.segments[run_start:]`` by ``decoder`` (the run's decode stream as it started; left where the next
    segment continues it), colour-corrected as the run did (``colour`` strength against the statistics the run
    started with, ``colour_start``). Raises ValueError when a segment decodes to another frame count than planned."""
    reference = HistoryBuffer()
    reference.colour_stats = None if colour_start is None else torch.tensor(colour_start, dtype=torch.float64)
    out = []
    for plan, seg in zip(plans, history.segments[run_start:]):
        images = correct_segment(reference, to_uint8(decoder.decode(seg.latent[None])), colour)
        if images.shape[0] != plan.frames:
            raise ValueError(f"saved segment {plan.index} decodes to {images.shape[0]} frames, the plan has {plan.frames}")
        record_colour(reference, images)
        out.append(images)
    return out


__all__ = ["stream_state", "restore_stream", "vae_signature", "memory_record", "resume_memory", "save_memory_file", "load_memory_file", "check_encoder",
           "run_settings", "resume_position", "resumes", "make_position", "replay_segments"]
