"""Training sequences of the lab model (issue 23): plain chunks and leave-and-return sequences, one VAE stream each.

The first lab set saw one history length and the next second of the same shot, so its loss was won by copying the
last frames. Here every training sequence is ``frames`` video frames at ``fps`` (the recipe's 161 = 10 s, 41 latent
frames), encoded by the lab VAE as **one stream** (as the nodes encode a history), and is one of:

* **plain**: ``frames`` consecutive frames of one training clip (its caption as the prompt);
* **return** (leave-and-return): shot A (``a`` frames of clip X from a random start), a cutaway B (``b`` frames of
  another training clip Y), then A's real continuation A' (the frames of X right after A) up to ``frames``; the cut
  lies inside the stream, so the latent frames at each cut mix both shots exactly as they do at inference. The
  prompt is X's caption (the shot whose continuation is generated: per-shot prompts), and the shard records
  ``cut = (first latent frame wholly in A', last latent frame wholly in A)`` for :func:`training.loop.crop_stage2`.

Shards are written in :mod:`training.data`'s format (``latent``, ``lr_latent_<rate>`` per LR rate, ``text``, metadata
under ``framememory_shard`` with ``kind``, ``parts`` and ``cut``) with a ``manifest.json`` that
:class:`training.data.ShardDataset` reads; a shard already on disk is skipped (a stopped run resumes).
Held-out clips never enter (the caller passes training clips only).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .data import FORMAT, META_KEY, ClipSettings, chunk_lr_latents, save_shard_atomic, shard_ok
from ..memory.io import write_file_atomic


@dataclass(frozen=True)
class Part:
    clip: str       # training clip name
    start: int      # first frame at fps
    frames: int     # frames taken


@dataclass(frozen=True)
class SequencePlan:
    """One training sequence: its parts in order (frames at ``fps``), the prompt, and for returns the cut."""

    name: str                    # shard file stem
    kind: str                    # "plain" or "return"
    parts: tuple                 # Part, ... (plain: 1, return: A, B, A')
    prompt: str
    cut: tuple = (0, 0)          # (first latent frame of the return, last latent frame of shot A); plain: (0, T)
    meta: dict = field(default_factory=dict)


def latent_cut(a_frames: int, b_frames: int) -> tuple[int, int]:
    """``(first latent frame wholly in A', last latent frame wholly in A)`` of a causal Wan stream (latent frame 0 =
    video frame 0, latent frame j >= 1 = frames 4j-3 .. 4j) whose A' starts at video frame ``a_frames + b_frames``."""
    start_return = a_frames + b_frames
    return (start_return + 3 + 3) // 4, (a_frames - 1) // 4


def plan_sequences(lengths: dict[str, int], captions: dict[str, str], *, frames: int, plain: dict[str, int],
                   returns: int, a_range: tuple[int, int], b_choices: tuple[int, ...], a_clips: tuple[str, ...],
                   seed: int) -> list[SequencePlan]:
    """The training sequences of a run (deterministic in ``seed``).

    Args:
        lengths: frames at fps of each training clip. captions: prompt of each clip.
        frames: frames per sequence (4k+1). plain: clip -> plain chunks of it, spread evenly over the clip.
        returns: leave-and-return sequences; shot A from ``a_clips`` in turn (those long enough), a cutaway clip
            drawn from the other training clips, ``a`` frames of A drawn in ``a_range``, ``b`` from ``b_choices``.
    Raises ValueError when a plain clip is shorter than ``frames`` or no A clip can hold ``a + A'``.
    """
    g = torch.Generator().manual_seed(seed + 23)
    rnd = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    t_latent = 1 + (frames - 1) // 4
    plans = []
    for clip, n in plain.items():
        total = lengths.get(clip, 0)
        if n and total < frames:
            raise ValueError(f"plain chunks of {clip} need {frames} frames, it has {total}")
        for k in range(n):
            start = (total - frames) * k // max(1, n - 1) if n > 1 else (total - frames) // 2
            plans.append(SequencePlan(f"plain_{clip}_{k:02d}", "plain", (Part(clip, start, frames),), captions[clip],
                                      (0, t_latent)))
    for k in range(returns):
        b = b_choices[rnd(0, len(b_choices) - 1)]
        a = rnd(*a_range)
        rest = frames - a - b
        usable = [c for c in a_clips if lengths.get(c, 0) >= a + rest]
        if rest < 16 or not usable:
            raise ValueError(f"return sequence {k}: A {a} + B {b} frames leave {rest} for A' (need >= 16) or no clip "
                             f"of {a_clips} has {a + rest} frames")
        x = usable[k % len(usable)]
        others = [c for c in lengths if c != x and lengths[c] >= b] or [x]  # one training clip: a cutaway of itself
        y = others[rnd(0, len(others) - 1)]
        xs, ys = rnd(0, lengths[x] - a - rest), rnd(0, lengths[y] - b)
        parts = (Part(x, xs, a), Part(y, ys, b), Part(x, xs + a, rest))
        plans.append(SequencePlan(f"return_{k:02d}", "return", parts, captions[x], latent_cut(a, b),
                                  {"cutaway_prompt": captions[y]}))
    return plans


def sequence_pixels(plan: SequencePlan, clips: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[F, H, W, 3]`` float32 in 0..1: the plan's parts cut from ``clips`` (uint8 ``[F, H, W, 3]`` each) in order."""
    return torch.cat([clips[p.clip][p.start:p.start + p.frames] for p in plan.parts]).float().div_(255.0)


def build_sequences(plans: list[SequencePlan], clips: dict[str, torch.Tensor], out: Path, cfg: ClipSettings,
                    encode_video: Callable[[torch.Tensor], torch.Tensor], encode_text: Callable[[str], torch.Tensor],
                    log: Callable[[str], None] = print) -> dict:
    """Encode every plan as one stream (``encode_video``: ``[F, H, W, 3]`` 0..1 -> ``[1, C, T, h, w]``) with its LR
    latents at ``cfg.lr_rates`` and write its shard under ``out`` (skipped when already there), then the manifest.
    Returns the manifest (``num_shards``, ``kinds``: shards per kind, ``seconds``)."""
    out.mkdir(parents=True, exist_ok=True)
    t0, texts, entries = time.perf_counter(), {}, []
    for i, plan in enumerate(plans):
        path = out / f"{plan.name}.safetensors"
        entries.append({"source": plan.name, "key": plan.name, "status": "ok", "chunks": 1,
                        "shards": [path.name], "kind": plan.kind})
        if shard_ok(path):
            continue
        if plan.prompt not in texts:
            text = encode_text(plan.prompt).detach()
            texts[plan.prompt] = text.reshape(-1, text.shape[-1])
        pixels = sequence_pixels(plan, clips)
        with torch.no_grad():
            latent = encode_video(pixels)[0].float()
            lrs = {r: v[0].float() for r, v in chunk_lr_latents(pixels, latent.shape[1], cfg, encode_video).items()}
        meta = {"format": FORMAT, "source": plan.name, "video_key": plan.name, "chunk": 0, "fps": cfg.fps,
                "frame_range": [0, int(pixels.shape[0])], "resolution": [cfg.width, cfg.height],
                "prompt": plan.prompt, "shot": None, "kind": plan.kind, "cut": list(plan.cut),
                "parts": [asdict(p) for p in plan.parts], **plan.meta}
        save_shard_atomic(path, latent, texts[plan.prompt].float(), meta, lr_latents=lrs)
        log(f"sequence {i + 1}/{len(plans)} {plan.name} ({plan.kind}, {pixels.shape[0]} frames) encoded "
            f"at {time.perf_counter() - t0:.0f} s")
    manifest = {"format": FORMAT, "settings": json.loads(json.dumps(asdict(cfg))), "videos": entries, "failed": [],
                "num_shards": len(entries), "kinds": {k: sum(e["kind"] == k for e in entries)
                                                      for k in ("plain", "return")},
                "seconds": round(time.perf_counter() - t0, 1)}
    write_file_atomic(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


class LabSequences(torch.utils.data.Dataset):
    """The lab shards as training items: ``dataset`` (a :class:`training.data.ModelSpaceDataset` over the shards)
    items plus ``cut`` ``[2]`` int64 from their metadata (:func:`training.loop.crop_stage2`), with every return
    shard listed ``return_repeat`` times so that about half of the Stage II samples are leave-and-return
    (``kinds``: None = all shards, else only shards of those kinds)."""

    def __init__(self, dataset, return_repeat: int = 1, kinds: tuple | None = None) -> None:
        from safetensors import safe_open

        self.dataset = dataset
        self.kind, self.cut = [], []
        for p in dataset.dataset.paths:
            with safe_open(str(p), "pt") as f:
                meta = json.loads(f.metadata()[META_KEY])
            self.kind.append(meta.get("kind", "plain"))
            self.cut.append(tuple(meta.get("cut", (0, 0))))
        self.index = [i for i, k in enumerate(self.kind) if kinds is None or k in kinds
                      for _ in range(return_repeat if k == "return" else 1)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        j = self.index[i]
        item = dict(self.dataset[j])
        item.pop("meta", None)
        item["cut"] = torch.tensor(self.cut[j], dtype=torch.int64)
        return item

    def shot_starts(self, i: int, window: int, frames: int) -> list[int]:
        """Starts of ``window`` latent frames inside one shot of item ``i`` (``frames`` latent frames long): a
        return's A or A', where its prompt holds, anywhere in a plain chunk (DiT pretraining on the right prompt)."""
        j = self.index[i]
        if self.kind[j] != "return":
            return list(range(0, frames - window + 1))
        seg_min, a_last = self.cut[j]
        return [s for s in range(0, frames - window + 1) if s + window - 1 <= a_last or s >= seg_min]
