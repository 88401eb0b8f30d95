"""Memory files: a storyboard's whole memory on disk, so a run can stop (interrupt, server restart, SIGKILL, power cut)
and continue later with the same frames it would have made without stopping.

A memory file is a folder ``<name>.fmem`` (format ``memory/2``) that a run *appends* to after every segment, so a
run's writes grow linearly with its length (the single-file ``memory/1`` was rewritten whole after every segment:
about 20 GB written for 2 minutes of 480p, 500 GB for 10):

- ``segment-{i}-{g}.safetensors``: segment ``i`` as written by generation ``g``: its latent ``latent`` ``[C, T, h, w]``,
  its pixels ``frames`` ``[F, H, W, 3]`` uint8 only while an encoder's LR branch still needs them (or in the modes
  that encode nothing), its LR latents ``lr.{part}``, its memory tokens per encoder and expert (:class:`~memory.
  history.PartKey`) ``encoded.{part}.{expert}.{j}``; its description (frame counts, offsets) in the metadata. A
  segment is written once; only one whose content changed later (its pixels dropped when the next segment completes
  its encoder group) is written again, under the new generation.
- ``state-{g}.safetensors``: what every segment changes, of constant size: the state of every encoder's LR VAE stream
  (:class:`StreamState`: the causal cache ``lr_stream.{part}.cache.{k}`` or the context tail ``lr_stream.{part}.tail``),
  VideoSSM states ``state.{expert}`` and the colour statistics ``history.colour_stats`` (:mod:`models.colour_match`).
- ``index.json``: the commit point: generation, which file holds each segment, the state file, the encoder configs,
  fps, width, height, memory mode, the VAE the LR streams were made with, and the storyboard position
  (:class:`StoryboardPosition`). ``len(segments)`` small integers are its only part that grows (about 8 bytes per
  segment).

Crash safety: new files are written under temporary names, flushed to disk (``fsync``) and renamed; then the index is
replaced atomically (``os.replace``); only then are the files the new index no longer names removed. A stop at any
moment leaves the previous index and every file it names intact, or the new ones complete: the folder always loads
as the last committed segment. Temporary and unreferenced files left by a stop are removed by the next write.

Appending writes only what changed: the writer remembers (per folder, in this process) the segment objects it wrote
or read (``HistorySegment`` is immutable: a changed segment is a new object) and the index generation they belong to;
when the folder's generation is another (another process wrote it) or the objects are gone, it writes every segment
again (once). Loading a folder registers it, so a resumed run appends to the file it was loaded from.

The single-file format ``memory/1`` (``<name>.safetensors``, tensors ``segment.{i}.*``) is still read; the next
write of a resumed run goes to the folder. The frames of finished segments are not stored: a resumed run decodes
them again from the latents, which gives the same frames (models/resume.py). No ComfyUI import: LR streams travel as
:class:`StreamState`; ``models/resume.py`` turns them into ``VideoStream`` objects.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import threading
import time
import weakref
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from .config import EncoderConfig
from .history import HistoryBuffer, HistorySegment, PartKey

META_KEY = "framememory_memory"
FORMAT = "memory/2"
LEGACY_FORMAT = "memory/1"
SUFFIX = ".fmem"
LEGACY_SUFFIX = ".safetensors"
INDEX = "index.json"
CACHE_REP = "Rep"  # WanVAE's marker in a causal cache slot (comfy/ldm/wan/vae.py)
_OWN_FILE = re.compile(r"^(segment-\d{6}-\d{6}\.safetensors|state-\d{6}\.safetensors|\..*\.tmp)$")
INDEX_KEYS = ("generation", "segments", "state", "encoders", "encoder_names", "fps", "width", "height", "mode",
              "position", "lr_streams", "states")
FIX_DAMAGED = ("save the memory again (Save Memory, or a Storyboard with save_path), or pick another memory file")


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
    """Everything a memory file holds. ``history.lr_streams`` maps encoder index -> :class:`StreamState`. ``vae``:
    a description of the VAE the LR streams were made with (``models.resume.vae_signature``), or None (no LR
    stream, or a ``memory/1`` file)."""

    history: HistoryBuffer
    encoders: list[EncoderConfig]
    encoder_names: list[str]
    fps: float
    width: int
    height: int
    mode: str
    position: StoryboardPosition | None = None
    vae: dict | None = None


def storyboard_hash(shots) -> str:
    """SHA-256 (hex) of a parsed storyboard: every shot's prompt and duration (whitespace and comment lines of the
    text do not change it). ``shots``: objects with ``prompt`` and ``duration_s`` (memory.storyboard.Shot)."""
    import hashlib

    text = json.dumps([[s.prompt, float(s.duration_s)] for s in shots])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- paths ---------------------------------------------------------------------------------------------------------
def memory_folder(path: str | os.PathLike) -> str:
    """The memory folder of ``path``: ``.fmem`` added unless present; a ``.safetensors`` ending (the ``memory/1``
    name) is replaced by it. Absolute."""
    text = os.path.abspath(os.fspath(path))
    if text.endswith(LEGACY_SUFFIX):
        text = text[: -len(LEGACY_SUFFIX)]
    return text if text.endswith(SUFFIX) else text + SUFFIX


def legacy_file(path: str | os.PathLike) -> str:
    """The ``memory/1`` single file of the same name as ``path`` (``<name>.safetensors``)."""
    return memory_folder(path)[: -len(SUFFIX)] + LEGACY_SUFFIX


def find_memory(path: str | os.PathLike) -> str | None:
    """Where the memory named ``path`` is: its folder when that holds an index, else a ``memory/1`` file of that
    name (or ``path`` itself when it is such a file), else None (nothing saved yet, or a folder whose first write
    never finished)."""
    folder = memory_folder(path)
    if os.path.isfile(os.path.join(folder, INDEX)):
        return folder
    for candidate in (os.fspath(path), legacy_file(path)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    return None


# ---- tensors <-> descriptions ----------------------------------------------------------------------------------------
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


def _segment_out(seg: HistorySegment, prefix: str, tensors: dict) -> dict:
    """JSON description of ``seg``; its tensors go into ``tensors`` under ``prefix`` (``""`` or ``"segment.{i}."``)."""
    tensors[f"{prefix}latent"] = seg.latent
    if seg.frames is not None:
        tensors[f"{prefix}frames"] = seg.frames
    encoded = {}
    for key, entry in seg.encoded.items():
        encoded[f"{key.part},{key.expert}"] = len(entry)
        for j, t in enumerate(entry):
            tensors[f"{prefix}encoded.{key.part}.{key.expert}.{j}"] = t
    for part, lr in seg.lr_latents.items():
        tensors[f"{prefix}lr.{part}"] = lr
    return {"num_frames": seg.num_frames, "start_frame": seg.start_frame, "start_latent": seg.start_latent,
            "stream_start": seg.stream_start, "frames": seg.frames is not None, "encoded": encoded,
            "lr": sorted(seg.lr_latents)}


def _segment_in(desc: dict, prefix: str, tensors: dict) -> HistorySegment:
    encoded = {}
    for name, n in desc["encoded"].items():
        part, expert = (int(v) for v in name.split(","))
        encoded[PartKey(part, expert)] = tuple(tensors[f"{prefix}encoded.{part}.{expert}.{j}"] for j in range(n))
    return HistorySegment(
        latent=tensors[f"{prefix}latent"], frames=tensors[f"{prefix}frames"] if desc["frames"] else None,
        num_frames=int(desc["num_frames"]), start_frame=int(desc["start_frame"]),
        start_latent=int(desc["start_latent"]), stream_start=bool(desc["stream_start"]), encoded=encoded,
        lr_latents={int(part): tensors[f"{prefix}lr.{part}"] for part in desc["lr"]})


def _state_out(record: MemoryRecord) -> tuple[dict, dict]:
    """``(tensors, description)`` of what every segment changes: LR streams, VideoSSM states, colour statistics.

    Raises:
        TypeError: an LR stream is not a :class:`StreamState`. ValueError: a cache slot of another kind.
    """
    history, tensors, streams = record.history, {}, {}
    for part, state in history.lr_streams.items():
        if not isinstance(state, StreamState):
            raise TypeError(f"LR stream {part} is a {type(state).__name__}; save_memory takes StreamState objects")
        streams[str(part)] = _stream_out(f"lr_stream.{part}", state, tensors)
    for expert, (_, state) in history.states.items():
        tensors[f"state.{expert}"] = state
    if history.colour_stats is not None:
        tensors["history.colour_stats"] = history.colour_stats
    return tensors, {"lr_streams": streams, "states": {str(e): int(a) for e, (a, _) in history.states.items()}}


def _state_in(desc: dict, tensors: dict, history: HistoryBuffer) -> None:
    history.lr_streams = {int(p): _stream_in(f"lr_stream.{p}", d, tensors) for p, d in desc["lr_streams"].items()}
    history.states = {int(e): (a, tensors[f"state.{e}"]) for e, a in desc["states"].items()}
    if "history.colour_stats" in tensors:
        history.colour_stats = tensors["history.colour_stats"]


def _owning(tensors: dict) -> dict:
    """CPU contiguous tensors, each owning its storage: safetensors refuses tensors that share storage (e.g. the empty
    token entries of a group's other segments are views of its last segment's, or one tensor under two keys)."""
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().to("cpu").contiguous()
        storage = v.untyped_storage()
        shared = storage.data_ptr() in seen or storage.nbytes() != v.numel() * v.element_size()
        out[k] = v.clone() if shared and v.numel() else v
        seen.add(out[k].untyped_storage().data_ptr())
    return out


# ---- writing -----------------------------------------------------------------------------------------------------------
class MemoryFileError(OSError):
    """A memory file could not be written (disk full, folder not writable, a file in the way): names the file,
    the cause and the fix; the memory folder still loads as its last committed segment."""


def _fix_for(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "the disk is full (or a file size limit was hit): free disk space, or choose a save_path on another disk"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is not writable: choose a save_path in a writable folder, or fix its permissions"
    if err.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return "a file is where a folder is expected (or the reverse): choose another save_path"
    return "check the disk and the save_path"


def _write_bytes(path: str, data: bytes) -> int:
    """Write ``data`` to ``path`` durably and atomically (temporary name, fsync, rename). Returns ``len(data)``."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise MemoryFileError(e.errno, f"could not write the memory file {path}: {e.strerror or e}; {_fix_for(e)}") \
            from e
    return len(data)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_folder(folder: str) -> None:
    """Create ``folder`` (and its parents). Raises MemoryFileError naming it when that is impossible."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise MemoryFileError(errno.EEXIST, f"the memory folder {folder} is a file: choose another save_path, or "
                                            "delete or rename the file")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise MemoryFileError(e.errno, f"could not create the memory folder {folder}: {e.strerror or e}; "
                                       f"{_fix_for(e)}") from e


@dataclass
class _Known:
    """What this process wrote or read in a folder: its index generation and, per segment, a weak reference to the
    segment object and the generation of the file holding it."""

    generation: int
    refs: list
    gens: list[int]
    state: int


_KNOWN: dict[str, _Known] = {}
_LOCK = threading.Lock()


def _remember(folder: str, generation: int, segments: list, gens: list[int], state: int) -> None:
    _KNOWN[folder] = _Known(generation, [weakref.ref(s) for s in segments], list(gens), state)


def _segment_name(i: int, gen: int) -> str:
    return f"segment-{i:06d}-{gen:06d}.safetensors"


def _state_name(gen: int) -> str:
    return f"state-{gen:06d}.safetensors"


def _index_meta(record: MemoryRecord, generation: int, gens: list[int], state_desc: dict) -> dict:
    history = record.history
    last = history.segments[-1] if history.segments else None
    tokens = next((e[0] for s in history.segments for e in s.encoded.values() if e[0].numel()), None)
    return {"format": FORMAT, "generation": generation, "segments": gens, "state": generation,
            "encoders": [json.loads(c.to_json()) for c in record.encoders], "encoder_names": list(record.encoder_names),
            "fps": record.fps, "width": record.width, "height": record.height, "mode": record.mode,
            "position": None if record.position is None else dataclasses.asdict(record.position), "vae": record.vae,
            "summary": {"frames": history.num_frames, "latent": None if last is None else
                        [int(last.latent.shape[0]), *(int(n) for n in last.latent.shape[2:])],
                        "token_dim": None if tokens is None else int(tokens.shape[-1])},
            **state_desc}


def save_memory(path: str | os.PathLike, record: MemoryRecord) -> dict:
    """Append ``record`` to the memory folder of ``path`` (:func:`memory_folder`; module docstring): the segments
    that are new or changed since this process last wrote or read the folder, the state, then the index (the commit
    point). A folder holding another memory is replaced the same way (every segment written, then the old files go).

    Returns:
        ``{"bytes", "files", "segments_written", "generation", "seconds"}`` of this write.
    Raises:
        TypeError: an LR stream is not a :class:`StreamState` (convert VideoStream objects first, models/resume.py).
        ValueError: an LR stream cache holds something other than tensors, None or 'Rep'.
        MemoryFileError: the folder cannot be created or written (disk full, not writable, a file in the way),
        naming the file and the fix; the folder still loads as before this call.
    """
    t0 = time.perf_counter()
    folder = memory_folder(path)
    state_tensors, state_desc = _state_out(record)
    with _LOCK:
        _make_folder(folder)
        old = _read_index_or_none(folder)
        known = _KNOWN.get(folder)
        if known is not None and (old is None or known.generation != old["generation"]):
            known = None
        gen = (old["generation"] if old else 0) + 1
        segments = record.history.segments
        gens, written = [], 0
        for i, seg in enumerate(segments):
            if known is not None and i < len(known.refs) and known.refs[i]() is seg:
                gens.append(known.gens[i])
                continue
            tensors = {}
            desc = _segment_out(seg, "", tensors)
            meta = {META_KEY: json.dumps({"format": FORMAT, "index": i, "segment": desc})}
            written += _write_bytes(os.path.join(folder, _segment_name(i, gen)), safetensors_bytes(_owning(tensors), meta))
            gens.append(gen)
        written += _write_bytes(os.path.join(folder, _state_name(gen)),
                                safetensors_bytes(_owning(state_tensors), {META_KEY: json.dumps({"format": FORMAT})}))
        _fsync_dir(folder)
        index = _index_meta(record, gen, gens, state_desc)
        written += _write_bytes(os.path.join(folder, INDEX), json.dumps(index).encode("utf-8"))
        _fsync_dir(folder)
        _remember(folder, gen, segments, gens, gen)
        _remove_stale(folder, index)
    return {"bytes": written, "files": sum(g == gen for g in gens) + 2, "segments_written": sum(g == gen for g in gens),
            "generation": gen, "seconds": round(time.perf_counter() - t0, 4)}


def _remove_stale(folder: str, index: dict) -> None:
    """Remove every file of ours in ``folder`` (segment and state files, temporary files left by a stop) that
    ``index`` does not name. Only names of this format are touched; anything else in the folder stays."""
    keep = {_segment_name(i, g) for i, g in enumerate(index["segments"])} | {_state_name(index["state"])}
    for name in sorted(n for n in os.listdir(folder) if _OWN_FILE.match(n) and n not in keep):
        try:
            os.remove(os.path.join(folder, name))
        except FileNotFoundError:
            pass


# ---- reading -----------------------------------------------------------------------------------------------------------
def _read_index_or_none(folder: str) -> dict | None:
    """The folder's index, or None when it has none or an unreadable one (a write then replaces every segment)."""
    try:
        return _read_index(folder)
    except (FileNotFoundError, ValueError):
        return None


def _read_index(folder: str) -> dict:
    """The index of ``folder``, checked. Raises FileNotFoundError (none) or ValueError naming the file and the fix."""
    path = os.path.join(folder, INDEX)
    with open(path, "rb") as f:
        text = f.read()
    try:
        index = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): the memory folder is damaged; {FIX_DAMAGED}") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path} holds {type(index).__name__}, not a JSON object: the memory folder is damaged; "
                         f"{FIX_DAMAGED}")
    if index.get("format") != FORMAT:
        raise ValueError(f"{path} is a memory index of format {index.get('format')!r}; this version reads {FORMAT!r} "
                         f"(and {LEGACY_FORMAT!r} single files): update ComfyUI-FrameMemory, or {FIX_DAMAGED}")
    missing = [k for k in INDEX_KEYS if k not in index]
    if missing or not isinstance(index["segments"], list):
        raise ValueError(f"{path} lacks {', '.join(missing) or 'a segments list'}: the memory folder is damaged; "
                         f"{FIX_DAMAGED}")
    return index


def _read_tensors(path: str, what: str) -> tuple[dict, dict]:
    """``(tensors, our metadata JSON)`` of one safetensors file. Raises ValueError naming it."""
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path} is missing: the memory folder is damaged (a file was deleted or not copied); "
                         f"{FIX_DAMAGED}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta_text = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{what} {path} is not a readable safetensors file ({e}); {FIX_DAMAGED}") from e
    try:
        meta = json.loads(meta_text) if meta_text is not None else None
    except ValueError as e:
        raise ValueError(f"{what} {path}: its '{META_KEY}' metadata is not valid JSON ({e}); {FIX_DAMAGED}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} has no '{META_KEY}' metadata object: it is not a FrameMemory memory file (Save "
                         "Memory or the Storyboard's save_path write them); pick a memory file")
    return tensors, meta


def _described(path: str, build):
    """``build()``; a KeyError / TypeError / ValueError of a description that does not fit its tensors becomes a
    ValueError naming ``path``."""
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: the memory description does not match its tensors ({type(e).__name__}: {e}): the "
                         f"file is damaged; {FIX_DAMAGED}") from None


def _record(meta: dict, history: HistoryBuffer, path: str) -> MemoryRecord:
    def build() -> MemoryRecord:
        position = meta["position"]
        return MemoryRecord(history, [EncoderConfig.from_json(json.dumps(c), source=path) for c in meta["encoders"]],
                            list(meta["encoder_names"]), float(meta["fps"]), int(meta["width"]), int(meta["height"]),
                            str(meta["mode"]), None if position is None else StoryboardPosition(**position),
                            meta.get("vae"))
    return _described(path, build)


def _load_folder(folder: str) -> MemoryRecord:
    index = _read_index(folder)
    segments = []
    for i, gen in enumerate(index["segments"]):
        path = os.path.join(folder, _segment_name(i, int(gen)))
        tensors, meta = _read_tensors(path, f"segment {i}")
        segments.append(_described(path, lambda: _segment_in(meta["segment"], "", tensors)))
    history = HistoryBuffer(segments)
    state_path = os.path.join(folder, _state_name(int(index["state"])))
    tensors, _ = _read_tensors(state_path, "the state file")
    _described(state_path, lambda: _state_in(index, tensors, history))
    record = _record(index, history, os.path.join(folder, INDEX))
    with _LOCK:
        _remember(folder, int(index["generation"]), segments, [int(g) for g in index["segments"]], int(index["state"]))
    return record


def _load_legacy(path: str) -> MemoryRecord:
    """A ``memory/1`` single file (tensors ``segment.{i}.*`` and the whole description in the metadata)."""
    tensors, meta = _read_tensors(path, "memory file")
    if meta.get("format") != LEGACY_FORMAT:
        raise ValueError(f"{path} is a memory file of format {meta.get('format')!r}; this version reads "
                         f"{FORMAT!r} folders and {LEGACY_FORMAT!r} files: update ComfyUI-FrameMemory, or "
                         f"{FIX_DAMAGED}")
    if not isinstance(meta.get("segments"), list):
        raise ValueError(f"{path}: its '{META_KEY}' metadata has no 'segments' list: the file is damaged or not a "
                         f"memory file; {FIX_DAMAGED}")

    def build() -> HistoryBuffer:
        history = HistoryBuffer([_segment_in(d, f"segment.{i}.", tensors) for i, d in enumerate(meta["segments"])])
        _state_in(meta, tensors, history)
        return history
    return _record(meta, _described(path, build), path)


def load_memory(path: str | os.PathLike) -> MemoryRecord:
    """Read the memory named ``path`` (:func:`find_memory`: its ``.fmem`` folder, or a ``memory/1`` single file);
    tensors on the CPU as saved (float32 latents and tokens, uint8 frames), LR streams as :class:`StreamState`.

    Raises:
        FileNotFoundError: nothing saved under that name (or a folder whose first write never finished).
        ValueError: naming the file and the fix: not a memory file, metadata that is not JSON or lacks its fields,
        a file the index names is missing, a format this version cannot read.
    """
    found = find_memory(path)
    if found is None:
        folder = memory_folder(path)
        what = (f"{folder} holds no committed segment (its first write never finished)" if os.path.isdir(folder)
                else f"memory file not found: {folder} (nor {legacy_file(path)})")
        raise FileNotFoundError(f"{what}: check the name (relative to ComfyUI's output folder), or run the Storyboard "
                                "with save_path first")
    return _load_folder(found) if os.path.isdir(found) else _load_legacy(found)


__all__ = ["StreamState", "StoryboardPosition", "MemoryRecord", "MemoryFileError", "storyboard_hash", "memory_folder",
           "legacy_file", "find_memory", "save_memory", "load_memory"]
