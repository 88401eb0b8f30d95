"""The main job's workflow plumbing for its evaluations (scripts/run_example.py, scripts/revisit_job.py): the history
through Load Video as History, the lossless frame tap, the memory-off prompt, clip reading, the contact sheet. The
scores themselves come from scripts/scores.py (one code path for every evaluation).

The history goes in through Load Video as History (``FrameMemoryLoadVideoHistory``, models/video_history.py): the
node streams the clip itself (frame_load_cap = H frames from 0 s), resampled to the model's fps by the training
reader's rule (nearest frame in time) and fitted by the nodes' ``fit_frames``, the pixels ``training/data.py`` gives
(tested equal). The real continuation is read here by ``training/data.py``'s reader at the Storyboard's
width x height x fps, so generated frame j continues real frame H + j. The generated frames are compared as the node
outputs them: a SaveAnimatedPNG node (8-bit PNG, lossless) is added to the prompt next to the workflow's own
SaveVideo (h264 mp4, lossy).

No ComfyUI import: this runs in the client process, next to framememory.headless.comfy_server.
"""
from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scores.py next to this file (also when loaded by path)
import scores  # noqa: E402
from framememory.memory.storyboard import parse_storyboard, plan_segments, segment_frames
from framememory.models.video_reader import clip_seconds, read_frames
from framememory.training.data import decode_frames, resample

STORYBOARD = "FrameMemoryStoryboard"
VIDEO_HISTORY = "FrameMemoryLoadVideoHistory"
START_CHAIN = ("ImageFromBatch", "GetVideoComponents", "LoadVideo")  # a Storyboard's start_images from a video file
VAE_TIME_STRIDE = 4  # video frames per latent frame (Wan 2.1 / 2.2, HunyuanVideo)
TAP_PREFIX = "framememory/eval_frames"
PSNR_CAP_DB = scores.PSNR_CAP_DB


class EvalError(RuntimeError):
    pass


# ---- the workflow -------------------------------------------------------------------------------------------------
def metrics_missing() -> str | None:
    """Why the metrics cannot be computed here (torchmetrics not installed), or None."""
    import importlib.util

    if importlib.util.find_spec("torchmetrics") is None:
        return "torchmetrics is not installed (pip install torchmetrics, or: bash scripts/setup.sh --test)"
    return None


def history_input(api: dict) -> str | None:
    """Why the prompt cannot take the clip as history (no LoadVideo or Load Video as History, not exactly one
    Storyboard), or None."""
    if not any(isinstance(n, dict) and n.get("class_type") in ("LoadVideo", VIDEO_HISTORY) for n in api.values()):
        return f"the workflow has no LoadVideo or {VIDEO_HISTORY}"
    count = sum(isinstance(n, dict) and n.get("class_type") == STORYBOARD for n in api.values())
    return None if count == 1 else f"the workflow has {count} {STORYBOARD} nodes, not one"


def with_video_history(api: dict, storyboard_id: str, video: str, frames: int) -> dict:
    """A copy of ``api`` whose Storyboard takes its history from Load Video as History: the first ``frames`` frames of
    ``video`` (a file in the server's input folder) at the Storyboard's size, fps, segment length and memory_mode. The
    workflow's own Load Video as History node is used when it has one; otherwise one is added and the Storyboard's
    start_images chain (LoadVideo -> GetVideoComponents -> ImageFromBatch) is removed, a memory the Storyboard
    continued goes to the new node's memory input. Raises EvalError when neither is there."""
    out = json.loads(json.dumps(api))
    sb = out[storyboard_id]["inputs"]
    found = [nid for nid, n in out.items() if isinstance(n, dict) and n.get("class_type") == VIDEO_HISTORY]
    if found:
        node_id = found[0]
    elif isinstance(sb.get("start_images"), list):
        node_id = str(max(int(k) for k in out if str(k).isdigit()) + 1)
        _drop_start_chain(out, sb.pop("start_images")[0])
        out[node_id] = {"class_type": VIDEO_HISTORY, "_meta": {"title": "History: first seconds of the clip"},
                        "inputs": {k: sb[k] for k in ("model", "vae", "memory_encoder")}}
        if isinstance(sb.get("memory"), list):
            out[node_id]["inputs"]["memory"] = sb["memory"]
        sb["memory"] = [node_id, 0]
    else:
        raise EvalError(f"the Storyboard {storyboard_id} takes no history from a video ({VIDEO_HISTORY} or start_images "
                        "from LoadVideo)")
    out[node_id]["inputs"].update(
        video=video, frame_load_cap=int(frames), skip_first_seconds=0.0, select_every_nth=1,
        **{k: sb.get(k, d) for k, d in (("width", 832), ("height", 480), ("fps", 16.0), ("segment_latent_frames", 4),
                                         ("memory_mode", "frame_preservation"))})
    return out


def _drop_start_chain(api: dict, node_id: str) -> None:
    """Remove ``node_id`` and, up the first input link, the rest of the LoadVideo -> GetVideoComponents ->
    ImageFromBatch chain, each only when no other node uses it."""
    for class_type in START_CHAIN:
        node = api.get(node_id)
        if not node or node.get("class_type") != class_type:
            return
        if any(isinstance(v, list) and v and v[0] == node_id for n in api.values() for v in n["inputs"].values()):
            return  # still feeds another node
        del api[node_id]
        links = [v[0] for v in node["inputs"].values() if isinstance(v, list) and v]
        if not links:
            return
        node_id = links[0]


def storyboard_node(api: dict) -> tuple[str, dict]:
    """``(node id, inputs)`` of the API prompt's one Storyboard node. Raises EvalError when there is none or several."""
    found = [(nid, n["inputs"]) for nid, n in api.items() if isinstance(n, dict) and n.get("class_type") == STORYBOARD]
    if len(found) != 1:
        raise EvalError(f"the workflow has {len(found)} {STORYBOARD} nodes; the evaluation needs exactly one")
    return found[0]


def planned_frames(inputs: dict) -> list[int]:
    """Video frames of each segment the Storyboard ``inputs`` will generate after a history (its own plan:
    shot seconds at its fps, in segments of ``segment_latent_frames``)."""
    shots = parse_storyboard(inputs["storyboard"])
    plans = plan_segments(shots, float(inputs["fps"]), int(inputs["segment_latent_frames"]), VAE_TIME_STRIDE,
                          continues=True)
    return [p.frames for p in plans]


def history_length(seconds: float, fps: float, latent_frames: int, available: int) -> int:
    """H, the history frames: the largest ``first + per * k`` (one VAE stream: 13 then 16 each on Wan at 4 latent
    frames) not above ``seconds * fps`` nor ``available``. Raises EvalError when not even ``first`` fits."""
    first = segment_frames(latent_frames, VAE_TIME_STRIDE, stream_start=True)
    per = segment_frames(latent_frames, VAE_TIME_STRIDE, stream_start=False)
    limit = min(math.floor(seconds * fps + 1e-6), available)
    if limit < first:
        raise EvalError(f"a history needs at least {first} frames at {fps:g} fps ({first / fps:.2f} s); "
                        f"--history-seconds {seconds:g} and a clip of {available} frames give {limit}")
    return first + per * ((limit - first) // per)


# ---- the clip -----------------------------------------------------------------------------------------------------
def read_clip(path: Path, width: int, height: int, fps: float, max_frames: int) -> np.ndarray:
    """The first ``max_frames`` (or fewer: the clip's end) frames of ``path`` as the training reader gives them:
    uint8 ``[F, height, width, 3]`` at ``fps``, decoded into one array (no second copy of the frames while reading;
    it is sized from the clip's duration where the container gives one, :func:`clip_frames`, else grown by halves, so
    a large ``max_frames`` costs nothing). Raises ``training.data.VideoReadError``, EvalError when no frame decodes."""
    frames = itertools.islice(resample(decode_frames(path, width, height), fps), max_frames)
    first = next(frames, None)
    if first is None:
        raise EvalError(f"{path}: no frames decoded")
    expected = clip_frames(path, fps)
    out = np.empty((max(min(max_frames, (expected or 64) + 1), 1), *first.shape), dtype=np.uint8)
    out[0], count = first, 1
    for frame in frames:
        if count == len(out):  # no duration in the file, or the container's was short: grow
            out = np.concatenate([out, np.empty_like(out[:max(count // 2, 1)])])
        out[count], count = frame, count + 1
    return out[:count]


def clip_frames(path: Path, fps: float) -> int | None:
    """About how many frames ``path`` holds at ``fps``: its duration from the container (no decoding) x ``fps``,
    rounded down, plus one (a frame at 0 s); None where the container gives no duration (e.g. animated WebP). For
    checks before reading; :func:`read_clip` gives the exact frames. Raises EvalError for a file PyAV cannot open."""
    import av

    try:
        seconds = clip_seconds(path)
    except av.error.FFmpegError as e:
        raise EvalError(f"{Path(path).name}: PyAV cannot open it ({e})") from e
    return None if seconds is None else math.floor(seconds * fps + 1e-6) + 1


def write_lossless(frames: np.ndarray, path: Path, fps: float) -> None:
    """Write uint8 ``[F, H, W, 3]`` RGB frames as FFV1 (pix_fmt bgr0, lossless) in Matroska at ``fps``, then decode the
    file as ComfyUI's LoadVideo does (PyAV, rgb24) and raise EvalError unless every pixel comes back."""
    import av
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    back = decode_video_frames(path)
    if back.shape != frames.shape or not np.array_equal(back, frames):
        raise EvalError(f"{path} does not round-trip exactly ({back.shape} vs {frames.shape})")


def decode_video_frames(path: Path) -> np.ndarray:
    """Every frame of a video file, uint8 ``[F, H, W, 3]`` RGB (PyAV, as LoadVideo decodes)."""
    return np.stack(read_frames(path)[0])


def read_apng(path: Path, fps: float) -> np.ndarray:
    """Frames of an animated PNG (SaveAnimatedPNG at ``fps``), uint8 ``[F, H, W, 3]``. Pillow's APNG writer merges
    identical consecutive frames into one longer frame (e.g. a 10 fps clip resampled to 16 fps repeats frames), so
    each stored frame is repeated ``round(duration * fps / 1000)`` times."""
    from PIL import Image, ImageSequence

    frames = []
    with Image.open(path) as im:
        for f in ImageSequence.Iterator(im):
            repeat = max(1, round(float(f.info.get("duration", 1000.0 / fps)) * fps / 1000.0))
            frames.extend([np.asarray(f.convert("RGB"))] * repeat)
    return np.stack(frames)


# ---- the two arms -------------------------------------------------------------------------------------------------
def with_frame_tap(api: dict, storyboard_id: str, fps: float, prefix: str = TAP_PREFIX) -> tuple[dict, str]:
    """A copy of ``api`` plus a SaveAnimatedPNG node on the Storyboard's IMAGE output (lossless 8-bit frames, as
    the node outputs them). Returns ``(prompt, tap node id)``."""
    out = json.loads(json.dumps(api))
    tap = str(max(int(k) for k in out if str(k).isdigit()) + 1)
    out[tap] = {"class_type": "SaveAnimatedPNG", "_meta": {"title": "FrameMemory eval: lossless frames"},
                "inputs": {"images": [storyboard_id, 0], "filename_prefix": prefix, "fps": float(fps),
                           "compress_level": 1}}
    return out, tap


def memory_off_prompt(api: dict, storyboard_id: str) -> dict:
    """A copy of ``api`` whose Storyboard runs with ``memory_mode`` "off" and whose saves get their own names
    (``..._memory_off``); everything else (seed, models, history) is the same, so ComfyUI reuses the cached loaders."""
    out = json.loads(json.dumps(api))
    out[storyboard_id]["inputs"]["memory_mode"] = "off"
    for node in out.values():
        prefix = node.get("inputs", {}).get("filename_prefix")
        if isinstance(prefix, str) and not node.get("_meta", {}).get("title", "").startswith("FrameMemory eval: VAE"):
            node["inputs"]["filename_prefix"] = prefix + "_memory_off"
    return out


def generated_part(frames: np.ndarray, report: dict) -> np.ndarray:
    """The generated frames of the node's output (the last ``report["total_frames"]``; the starting clip comes first
    when include_history is on). Raises EvalError when the output does not have the report's frame count."""
    total, expected = int(report["total_frames"]), int(report.get("output_frames", report["total_frames"]))
    if frames.shape[0] != expected:
        raise EvalError(f"the saved frames are {frames.shape[0]}, the report says {expected}")
    return frames[expected - total:]


# ---- metrics ------------------------------------------------------------------------------------------------------
def frame_metrics(pred: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ``(PSNR dB [F], SSIM [F])``: :func:`scores.frame_metrics` (the one code path of every evaluation)."""
    return scores.frame_metrics(pred, real)


def arm_metrics(pred: np.ndarray, real: np.ndarray, seg_frames: list[int]) -> dict:
    """:func:`scores.score` (``psnr_db``, ``ssim``, ``thumb_psnr_db``, ``thumb_ssim``, ``per_frame_psnr_db``) plus
    ``per_segment_psnr_db``: a segment's PSNR is the mean over its frames (``seg_frames``: frames per segment, in
    order; frames past the compared ones are left out)."""
    out = scores.score(pred, real)
    psnr = np.asarray(out["per_frame_psnr_db"])
    bounds = np.cumsum([0, *seg_frames])
    out["per_segment_psnr_db"] = [round(float(psnr[a:min(b, len(psnr))].mean()), 3)
                                  for a, b in zip(bounds, bounds[1:]) if a < len(psnr)]
    return out


# ---- contact sheet ------------------------------------------------------------------------------------------------
def eval_sheet(rows: list[tuple[str, np.ndarray]], out: Path, first_index: int, fps: float, cols: int = 6) -> list[int]:
    """A labelled grid: one row per ``(label, uint8 [F, H, W, 3])``, the same ~``cols`` evenly spaced frame indices in
    every row, headed by their clip frame index (``first_index + i``) and time. Returns the indices used (into F)."""
    from PIL import Image, ImageDraw

    n = min(len(frames) for _, frames in rows)
    idx = sorted({round(i * (n - 1) / max(min(cols, n) - 1, 1)) for i in range(min(cols, n))})
    h, w = rows[0][1].shape[1:3]
    scale = 320 / w if w > 320 else max(1, -(-192 // w))  # integer upscale for tiny videos, downscale for big ones
    tw, th, label_w, head_h = round(w * scale), round(h * scale), 150, 18
    sheet = Image.new("RGB", (label_w + len(idx) * tw, head_h + len(rows) * th), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for c, i in enumerate(idx):
        draw.text((label_w + c * tw + 4, 3), f"frame {first_index + i} ({(first_index + i) / fps:.2f} s)",
                  fill=(255, 255, 255))
    for r, (label, frames) in enumerate(rows):
        y = head_h + r * th
        draw.text((6, y + th // 2 - 6), label, fill=(150, 200, 255))
        for c, i in enumerate(idx):
            sheet.paste(Image.fromarray(frames[i]).resize((tw, th), Image.BILINEAR), (label_w + c * tw, y))
    sheet.save(out)
    return idx
