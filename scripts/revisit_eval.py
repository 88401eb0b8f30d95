"""Leave-and-return sequences (issue 22): a shot A, a cutaway B, then A again, built from real footage, and the
scoring of a generated return against A's real continuation. Used by the main job (scripts/run_example.py, its
default evaluation) and benchmarks/revisit.py.

A **cutaway** sequence is one video of ``A[:a] + B[:gap] + A[a:a + r]``: the first ``a`` frames of clip A, then
``gap`` frames of another clip B, then A's real continuation. The first ``a + gap`` frames are the history (one VAE
stream, the cut inside it); the model generates the last ``r`` frames with A's prompt, and they are scored against
A's real continuation (:mod:`scores`). A **pan** sequence moves a 256x128 window over a larger real frame: it holds
on the start position for ``a`` frames, slides away over ``move`` frames, holds there for ``gap`` frames, and the
return is the window back at the start position (a cut back: the model has no camera control to follow a pan).

Every length keeps the history one Wan VAE stream of whole segments: ``a`` is ``13 + 16k`` frames (Wan 2.1 at 4
latent frames per segment), ``gap`` and ``move`` multiples of 16, ``r`` a multiple of 16 (the return continues the
stream). Pure numpy / torch: no ComfyUI.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import scores

FIRST, PER = 13, 16  # video frames of a stream's first segment and of each later one (Wan, 4 latent frames)

PROMPTS = {  # one prompt per clip, in the lab captions' words where they fit (the stand-in text encoder: word identity)
    "bikes.mp4": "a street with cyclists and pedestrians on a sunny day",
    "carphone_pristine.mp4": "a man talking in a car, close-up of a person",
    "tree.avi": "a tree with green leaves moving in the wind",
    "video_wan2_2_5B_ti2v-1.webp": "generated video of a scene",
    "video_hunyuan_video_1.5_720p_t2v-1.webp": "generated video of a person",
    "bigbuckbunny.mp4": "animated cartoon of a big rabbit in a green meadow with trees",
}
GENERIC_PROMPT = "the same scene as before"


def prompt_for(clip: str | Path) -> str:
    """The evaluation prompt of a clip (by file name; :data:`GENERIC_PROMPT` for an unknown one)."""
    return PROMPTS.get(Path(clip).name, GENERIC_PROMPT)


def whole_segments(frames: int, per: int = PER) -> int:
    """``frames`` rounded down to a multiple of ``per`` (a part of the stream made of whole segments)."""
    return per * (int(frames) // per)


@dataclass
class Sequence:
    """One leave-and-return sequence: uint8 ``frames [history + ret, H, W, 3]`` at the model's fps, the first
    ``history`` of them given (A then the cutaway), the last ``ret`` A's real return; ``shots``: the storyboard,
    ``(label, prompt, start frame, end frame, given)`` per shot, ``given`` for the real footage in the history."""

    name: str
    kind: str  # "cutaway" | "pan"
    frames: np.ndarray
    history: int
    ret: int
    gap_frames: int
    shots: list = field(default_factory=list)
    a_frames: int = 0  # frames of A before the cutaway

    @property
    def real_return(self) -> np.ndarray:
        return self.frames[self.history:self.history + self.ret]

    @property
    def before(self) -> np.ndarray:
        """A's frames before it left (the retrieval candidate of shot A)."""
        return self.frames[:self.a_frames]

    def storyboard(self, fps: float) -> str:
        """The sequence as one storyboard text, ``seconds | prompt`` per shot (the given shots first)."""
        return "\n".join(f"{(b - a) / fps:.3f} | {p}" for _, p, a, b, _ in self.shots)

    def return_storyboard(self, fps: float) -> str:
        """The generated part only (what the Storyboard node runs after the given history)."""
        return "\n".join(f"{(b - a) / fps:g} | {p}" for _, p, a, b, given in self.shots if not given)


def cutaway(a_clip: np.ndarray, b_clip: np.ndarray, a_frames: int, gap_frames: int, ret: int, a_name: str = "A",
            b_name: str = "B", a_prompt: str | None = None, b_prompt: str | None = None) -> Sequence:
    """``A[:a_frames] + B[:gap_frames] + A[a_frames:a_frames + ret]`` (uint8 ``[F, H, W, 3]`` clips of one size).

    Raises:
        ValueError: a length that breaks the stream's segments (``a_frames`` not 13 + 16k, ``gap_frames`` or ``ret``
        not a positive multiple of 16), or a clip too short for it (the message names the clip and its length).
    """
    if a_frames < FIRST or (a_frames - FIRST) % PER:
        raise ValueError(f"shot A must be 13 + 16k frames (one VAE stream of whole segments), got {a_frames}")
    for what, n in (("the cutaway", gap_frames), ("the return", ret)):
        if n <= 0 or n % PER:
            raise ValueError(f"{what} must be a positive multiple of {PER} frames, got {n}")
    if len(a_clip) < a_frames + ret:
        raise ValueError(f"{a_name} has {len(a_clip)} frames; shot A ({a_frames}) and its return ({ret}) need "
                         f"{a_frames + ret}")
    if len(b_clip) < gap_frames:
        raise ValueError(f"the cutaway {b_name} has {len(b_clip)} frames, a {gap_frames}-frame cutaway needs more")
    if a_clip.shape[1:] != b_clip.shape[1:]:
        raise ValueError(f"{a_name} and {b_name} differ in frame size: {a_clip.shape[1:]} vs {b_clip.shape[1:]}")
    frames = np.concatenate([a_clip[:a_frames], b_clip[:gap_frames], a_clip[a_frames:a_frames + ret]])
    pa, pb = a_prompt or prompt_for(a_name), b_prompt or prompt_for(b_name)
    h = a_frames + gap_frames
    shots = [("A", pa, 0, a_frames, True), ("B (cutaway)", pb, a_frames, h, True), ("A' (return)", pa, h, h + ret, False)]
    return Sequence(f"{Path(a_name).stem}|{Path(b_name).stem}|{gap_frames}f", "cutaway", frames, h, ret, gap_frames,
                    shots, a_frames)


def pan_path(a_frames: int, move: int, gap_frames: int, ret: int, start: tuple[int, int], away: tuple[int, int]):
    """Top-left corner ``(y, x)`` of the window for every frame: ``start`` for ``a_frames``, a linear slide to
    ``away`` over ``move`` frames, ``away`` for ``gap_frames``, ``start`` again for the ``ret`` return frames."""
    path = [start] * a_frames
    for k in range(1, move + 1):
        f = k / move
        path.append((round(start[0] + f * (away[0] - start[0])), round(start[1] + f * (away[1] - start[1]))))
    return path + [away] * gap_frames + [start] * ret


def pan(clip: np.ndarray, width: int, height: int, a_frames: int, move: int, gap_frames: int, ret: int,
        name: str = "clip", prompt: str | None = None) -> Sequence:
    """A ``width x height`` window over the larger frames of ``clip`` (uint8 ``[F, H, W, 3]``, played in time):
    held on the top-left corner, slid to the bottom-right corner over ``move`` frames, held for ``gap_frames``,
    then back at the top-left for the ``ret`` return frames (module docstring). The history ends when the window has
    been away for ``gap_frames``. Raises ValueError for a clip too short or too small, or lengths that break the
    stream's segments (as :func:`cutaway`)."""
    if clip.shape[1] < height or clip.shape[2] < width or (clip.shape[1], clip.shape[2]) == (height, width):
        raise ValueError(f"{name}: a {width}x{height} window needs larger frames, got {clip.shape[2]}x{clip.shape[1]}")
    if a_frames < FIRST or (a_frames - FIRST) % PER or (move + gap_frames) % PER or ret <= 0 or ret % PER:
        raise ValueError(f"pan lengths break the stream's segments: A {a_frames}, move + hold {move + gap_frames}, "
                         f"return {ret} (A: 13 + 16k, the others multiples of 16)")
    n = a_frames + move + gap_frames + ret
    if len(clip) < n:
        raise ValueError(f"{name} has {len(clip)} frames, the pan needs {n}")
    path = pan_path(a_frames, move, gap_frames, ret, (0, 0), (clip.shape[1] - height, clip.shape[2] - width))
    frames = np.stack([clip[i, y:y + height, x:x + width] for i, (y, x) in enumerate(path)])
    p = prompt or prompt_for(name)
    h = a_frames + move + gap_frames
    shots = [("A", p, 0, a_frames, True), ("pan away + hold", p, a_frames, h, True), ("A' (return)", p, h, n, False)]
    return Sequence(f"pan|{Path(name).stem}|{gap_frames}f", "pan", frames, h, ret, move + gap_frames, shots, a_frames)


# ---- candidates for scene retrieval -------------------------------------------------------------------------------
def shot_pool(clips: dict, every: int = 2, min_frames: int = 8) -> dict:
    """``{"<clip>#k": uint8 frames}``: the shots of each clip (``{name: uint8 [F, H, W, 3]}``, cut at hard cuts by
    :func:`scores.split_shots`), every ``every``-th frame kept."""
    pool = {}
    for name, frames in clips.items():
        for k, (a, b) in enumerate(scores.split_shots(frames, min_frames=min_frames)):
            pool[f"{Path(name).name}#{k}"] = frames[a:b:every]
    return pool


def candidates(seq: Sequence, others: dict, count: int = 8) -> dict:
    """The retrieval candidates of a sequence: ``"A"`` (A's frames before it left), ``"B"`` (the cutaway, or the
    window away for a pan; none for a plain continuation) and the first ``count`` shots of ``others``
    (``shot_pool`` output)."""
    b = seq.frames[seq.a_frames:seq.history]
    return {"A": seq.before, **({"B": b} if len(b) else {}), **dict(list(others.items())[:count])}


def evaluate(seq: Sequence, arms: dict, vae_pass: np.ndarray | None, pool: dict, gap_seconds: float,
             memory: str = "memory_on", off: str = "memory_off") -> dict:
    """The ``evaluation.revisit`` entry: every arm ``{name: uint8 [>= ret, H, W, 3]}`` (generated return) and the
    reference rows (:func:`scores.reference_frames` with the one-stream VAE pass of the whole sequence) scored against
    A's real return, ``{"psnr_db", "thumb_psnr_db", "ssim", "retrieval_top1", ...}`` each; ``margin_db`` =
    ``memory`` minus max(``off``, mean colour, last frame); ``losses``: plain sentences (:func:`scores.losses`)."""
    real, cands = seq.real_return, candidates(seq, pool)
    refs = scores.reference_frames(seq.frames[:seq.history], seq.ret, vae_pass)
    rows = {name: scores.row(np.asarray(frames)[:seq.ret], real, cands, "A") for name, frames in arms.items()}
    ref_rows = {name: scores.row(frames, real, cands, "A") for name, frames in refs.items()}
    both = {**rows, **ref_rows}
    return {"gap_seconds": gap_seconds, **rows, "references": ref_rows,
            "margin_db": scores.margin(both, memory, off),
            "losses": scores.losses(both, [memory], against=(off, *scores.TRIVIAL, "last_frame_vae")),
            "retrieval": {"candidates": list(cands), "chance": round(1 / len(cands), 4), "target": "A"},
            "sequence": {"name": seq.name, "kind": seq.kind, "history_frames": seq.history,
                         "a_frames": seq.a_frames, "gap_frames": seq.gap_frames, "return_frames": seq.ret,
                         "storyboard": [{"shot": s[0], "prompt": s[1], "frames": [s[2], s[3]], "given": s[4]}
                                        for s in seq.shots]}}


def summary_lines(ev: dict, memory: str = "memory_on", off: str = "memory_off") -> list[str]:
    """A few printable lines of an :func:`evaluate` entry."""
    def fmt(r):
        return (f"PSNR {r['psnr_db']:.2f} dB, thumb {r['thumb_psnr_db']:.2f} dB, SSIM {r['ssim']:.3f}, "
                f"retrieval {'A' if r.get('retrieval_top1') else 'miss'}")

    what = (f"return after a {ev['gap_seconds']:g} s cutaway" if ev.get("gap_seconds") is not None
            else "continuation")
    lines = [f"{what} ({ev['sequence']['return_frames']} frames vs the real frames; retrieval chance "
             f"{ev['retrieval']['chance']:.0%}):"]
    for name in (memory, off, *[k for k in ev if k.startswith("shuffled")]):
        if isinstance(ev.get(name), dict):
            lines.append(f"  {name.replace('_', ' '):18s} {fmt(ev[name])}")
    for name, r in ev["references"].items():
        lines.append(f"  {name.replace('_', ' '):18s} {fmt(r)}  (reference)")
    lines.append(f"  margin over the best trivial row: {ev['margin_db']:+.2f} dB")
    lines += [f"  NOTE: {s}" for s in ev["losses"]]
    return lines


def history_frames(seconds: float, fps: float) -> int:
    """Shot A's frames for ``seconds``: the largest 13 + 16k not above ``seconds * fps``. Raises ValueError below 13."""
    limit = math.floor(seconds * fps + 1e-6)
    if limit < FIRST:
        raise ValueError(f"shot A needs at least {FIRST} frames ({FIRST / fps:.2f} s), {seconds:g} s gives {limit}")
    return FIRST + PER * ((limit - FIRST) // PER)
