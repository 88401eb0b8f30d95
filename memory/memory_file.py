"""Memory files: a storyboard's whole memory in one safetensors file, so a run can stop (interrupt, server restart)
and continue later with the same frames it would have made without stopping.

One file (``safetensors.torch`` tensors + JSON under the metadata key ``framememory_memory``) holds:

- the history (:class:`~memory.history.HistoryBuffer`): every segment's latent ``segment.{i}.latent`` ``[C, T, h, w]``,
  its pixels ``segment.{i}.frames`` ``[F, H, W, 3]`` uint8 only while an encoder's LR branch still needs them, its LR
  latents ``segment.{i}.lr.{part}``, its memory tokens per encoder and expert (the per-expert encoded state,
  :class:`~memory.history.PartKey`) ``segment.{i}.encoded.{part}.{expert}.{j}``, VideoSSM states ``state.{expert}``
  and the colour statistics ``history.colour_stats`` (:mod:`models.colour_match`);
- the state of every encoder's LR VAE stream (:class:`StreamState`: the causal cache ``lr_stream.{part}.cache.{k}``
  or the context tail ``lr_stream.{part}.tail``), so the next span continues it exactly;
- the encoder configs, fps, width, height and memory mode;
- the storyboard position (:class:`StoryboardPosition`), when the memory comes from a Storyboard.

The frames of finished segments are not stored: a resumed run decodes them again from the latents, which gives the
same frames (models/resume.py). Written atomically (:func:`memory.io.save_safetensors_atomic`). No ComfyUI import:
LR streams travel as :class:`StreamState`; ``models/resume.py`` turns them into ``VideoStream`` objects.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from .config import EncoderConfig
from .history import HistoryBuffer, HistorySegment, PartKey
from .io import save_safetensors_atomic

META_KEY = "framememory_memory"
FORMAT = "memory/1"
CACHE_REP = "Rep"  # WanVAE's marker in a causal cache slot (comfy/ldm/wan/vae.py)


@dataclass(frozen=True)
class StreamState:
    """A ``models.vae_stream.VideoStream`` between parts, as plain data.

    cache: exact mode, the WanVAE causal cache: one entry per causal conv, a CPU tensor, :data:`CACHE_REP` or None;
        None before the first part or in context mode. tail: context mode, the last frames ``[F, H, W, 3]`` (encode)
        or latents ``[1, C, T, h, w]`` (decode) of the stream, or None.
    """

    mode: str
    time_stride: int
    context: int
    started: bool
    cache: tuple | None = None
    tail: torch.Tensor | None = None

    def copy(self) -> "StreamState":
        return self  # immutable (HistoryBuffer.copy copies its streams)


@dataclass(frozen=True)
class StoryboardPosition:
    """Where a storyboard run stands after its last finished segment.

    storyboard_sha256: :func:`storyboard_hash` of the shots. total_segments: segments of the whole storyboard.
    next_segment: index of the next segment to generate (== total_segments: finished). next_shot: its shot (-1 when
    finished). seed: the run's base seed (segment k uses seed + k). elapsed_s: seconds of video generated so far by
    this storyboard. run_start_segment: index in ``history.segments`` of the run's first generated segment (those
    before are the history it started from). settings: what the segments were sampled with (JSON-able; a resumed run
    must match it). colour_start: the history's colour statistics when the run started (``[3, 3]`` float64 as nested
    lists), or None.
    """

    storyboard_sha256: str
    total_segments: int
    next_segment: int
    next_shot: int
    seed: int
    elapsed_s: float
    run_start_segment: int
    settings: dict = field(default_factory=dict)
    colour_start: list | None = None

    @property
    def next_seed(self) -> int:
        return self.seed + self.next_segment

    @property
    def finished(self) -> bool:
        return self.next_segment >= self.total_segments


@dataclass
class MemoryRecord:
    """Everything a memory file holds. ``history.lr_streams`` maps encoder index -> :class:`StreamState`."""

    history: HistoryBuffer
    encoders: list[EncoderConfig]
    encoder_names: list[str]
    fps: float
    width: int
    height: int
    mode: str
    position: StoryboardPosition | None = None


def storyboard_hash(shots) -> str:
    """SHA-256 (hex) of a parsed storyboard: every shot's prompt and duration (whitespace and comment lines of the
    text do not change it). ``shots``: objects with ``prompt`` and ``duration_s`` (memory.storyboard.Shot)."""
    import hashlib

    text = json.dumps([[s.prompt, float(s.duration_s)] for s in shots])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _stream_out(prefix: str, state: StreamState, tensors: dict) -> dict:
    """JSON description of ``state``; its tensors go into ``tensors`` under ``prefix``."""
    desc = {"mode": state.mode, "time_stride": state.time_stride, "context": state.context, "started": state.started,
            "cache": None, "tail": state.tail is not None}
    if state.cache is not None:
        desc["cache"] = []
        for k, entry in enumerate(state.cache):
            if isinstance(entry, torch.Tensor):
                tensors[f"{prefix}.cache.{k}"] = entry
                desc["cache"].append("tensor")
            elif entry is None or entry == CACHE_REP:
                desc["cache"].append(entry)
            else:
                raise ValueError(f"LR stream cache slot {k} holds {type(entry).__name__}, not a tensor, None or 'Rep'")
    if state.tail is not None:
        tensors[f"{prefix}.tail"] = state.tail
    return desc


def _stream_in(prefix: str, desc: dict, tensors: dict) -> StreamState:
    cache = None
    if desc["cache"] is not None:
        cache = tuple(tensors[f"{prefix}.cache.{k}"] if e == "tensor" else e for k, e in enumerate(desc["cache"]))
    return StreamState(desc["mode"], int(desc["time_stride"]), int(desc["context"]), bool(desc["started"]), cache,
                       tensors[f"{prefix}.tail"] if desc["tail"] else None)


def _segments_out(history: HistoryBuffer, tensors: dict) -> list[dict]:
    """JSON descriptions of the history's segments; their tensors go into ``tensors``."""
    out = []
    for i, seg in enumerate(history.segments):
        p = f"segment.{i}"
        tensors[f"{p}.latent"] = seg.latent
        if seg.frames is not None:
            tensors[f"{p}.frames"] = seg.frames
        encoded = {}
        for key, entry in seg.encoded.items():
            encoded[f"{key.part},{key.expert}"] = len(entry)
            for j, t in enumerate(entry):
                tensors[f"{p}.encoded.{key.part}.{key.expert}.{j}"] = t
        for part, lr in seg.lr_latents.items():
            tensors[f"{p}.lr.{part}"] = lr
        out.append({"num_frames": seg.num_frames, "start_frame": seg.start_frame, "start_latent": seg.start_latent,
                    "stream_start": seg.stream_start, "frames": seg.frames is not None, "encoded": encoded,
                    "lr": sorted(seg.lr_latents)})
    return out


def _segments_in(descs: list[dict], tensors: dict) -> list[HistorySegment]:
    segments = []
    for i, d in enumerate(descs):
        p = f"segment.{i}"
        encoded = {}
        for name, n in d["encoded"].items():
            part, expert = (int(v) for v in name.split(","))
            encoded[PartKey(part, expert)] = tuple(tensors[f"{p}.encoded.{part}.{expert}.{j}"] for j in range(n))
        segments.append(HistorySegment(
            latent=tensors[f"{p}.latent"], frames=tensors[f"{p}.frames"] if d["frames"] else None,
            num_frames=int(d["num_frames"]), start_frame=int(d["start_frame"]), start_latent=int(d["start_latent"]),
            stream_start=bool(d["stream_start"]), encoded=encoded,
            lr_latents={int(part): tensors[f"{p}.lr.{part}"] for part in d["lr"]}))
    return segments


def save_memory(path: str, record: MemoryRecord) -> None:
    """Write ``record`` to ``path`` (safetensors, atomic: a temporary file in the same folder, then ``os.replace``).

    Raises:
        TypeError: an LR stream is not a :class:`StreamState` (convert VideoStream objects first, models/resume.py).
        ValueError: an LR stream cache holds something other than tensors, None or 'Rep'.
    """
    history, tensors = record.history, {}
    streams = {}
    for part, state in history.lr_streams.items():
        if not isinstance(state, StreamState):
            raise TypeError(f"LR stream {part} is a {type(state).__name__}; save_memory takes StreamState objects")
        streams[str(part)] = _stream_out(f"lr_stream.{part}", state, tensors)
    for expert, (absorbed, state) in history.states.items():
        tensors[f"state.{expert}"] = state
    colour = history.colour_stats
    if colour is not None:
        tensors["history.colour_stats"] = colour
    meta = {"format": FORMAT, "segments": _segments_out(history, tensors), "lr_streams": streams,
            "states": {str(e): int(a) for e, (a, _) in history.states.items()},
            "encoders": [json.loads(c.to_json()) for c in record.encoders], "encoder_names": list(record.encoder_names),
            "fps": record.fps, "width": record.width, "height": record.height, "mode": record.mode,
            "position": None if record.position is None else dataclasses.asdict(record.position)}
    # safetensors refuses tensors that share storage (e.g. the empty token entries of a group's other segments are
    # views of its last segment's): copy every tensor that does not own its whole storage
    tensors = {k: v if v.untyped_storage().nbytes() == v.numel() * v.element_size() else v.clone()
               for k, v in tensors.items()}
    save_safetensors_atomic(path, tensors, {META_KEY: json.dumps(meta)})


def load_memory(path: str) -> MemoryRecord:
    """Read a file written by :func:`save_memory`; tensors on the CPU as saved (float32 latents and tokens, uint8
    frames), LR streams as :class:`StreamState`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a safetensors file, not a memory file, or a memory file of another format version.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"memory file not found: {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta_text = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
    if meta_text is None:
        raise ValueError(f"{path} has no '{META_KEY}' metadata: it is not a FrameMemory memory file (Save Memory or "
                         "the Storyboard's save_path write them)")
    meta = json.loads(meta_text)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is a memory file of format {meta.get('format')!r}; this version reads {FORMAT!r}")
    history = HistoryBuffer(_segments_in(meta["segments"], tensors))
    history.lr_streams = {int(p): _stream_in(f"lr_stream.{p}", d, tensors) for p, d in meta["lr_streams"].items()}
    history.states = {int(e): (a, tensors[f"state.{e}"]) for e, a in meta["states"].items()}
    if "history.colour_stats" in tensors:
        history.colour_stats = tensors["history.colour_stats"]
    position = meta["position"]
    return MemoryRecord(history, [EncoderConfig.from_json(json.dumps(c)) for c in meta["encoders"]],
                        list(meta["encoder_names"]), float(meta["fps"]), int(meta["width"]), int(meta["height"]),
                        meta["mode"], None if position is None else StoryboardPosition(**position))


__all__ = ["StreamState", "StoryboardPosition", "MemoryRecord", "storyboard_hash", "save_memory", "load_memory"]
