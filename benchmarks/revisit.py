"""Benchmark (issue 22): leave-and-return on the lab model. Does a scene that left the screen come back as it was?

Usage:
  .venv/bin/python benchmarks/revisit.py [--lab-dir lab_model/] [--gaps 2 5 10 20] [--seeds 0 1 2]
      [--pan-gaps 2 5] [--rows off sliding fp fp_4x4x2 pack_forcing video_ssm shuffled] [--out STEM] [--quick]

Sequences (``scripts/revisit_eval.py``; real held-out footage only, training.reproduce.HELDOUT_CLIPS, 256x128, 16 fps):

* **cutaway**: shot A (the first 61 frames = 3.81 s of tree.avi, a 29.6 s held-out clip: 13 + 16k frames, the
  shortest A of at least 3 s), then a cutaway of ``gap`` seconds (the other held-out footage in a fixed order:
  bikes.mp4, carphone_pristine.mp4, the two held-out template webps: 160 + 64 + 48 + 48 = 320 frames, exactly the
  20 s cutaway), then A's real continuation (16 frames, 1 s), generated with A's prompt after A + cutaway as the
  history (one VAE stream, the cut inside it). ``--a-clips 2`` adds carphone_pristine.mp4 as a second A (4 s: its
  A is cut to the 45 frames = 2.81 s that leave a 1 s return).
* **pan**: a 256x128 window over a still held-out frame (the first frame of each held-out template webp, 832x480):
  holds top-left for 45 frames, slides to the bottom-right corner over 16 frames (1 s), holds there for ``gap - 1``
  seconds, and the return (16 frames) is the window back top-left (a cut back: the model has no camera control).

Rows: ``off`` (memory mode off; the no-memory LoRA ``framememory_lab_wan21_nomemory_lora.safetensors`` when the lab set
has it, else the Frame Preservation LoRA with memory removed, said in the row's name), ``sliding`` (mode
sliding_window: its own LoRA ``..._sliding_lora`` when present, else the Frame Preservation LoRA), ``fp`` (Frame
Preservation at the lab encoder's rate, its Stage II LoRA), ``fp_4x4x2`` (``..._4x4x2_encoder`` + ``..._4x4x2_lora``),
``pack_forcing`` and ``video_ssm`` (their lab sets), ``shuffled`` (Frame Preservation with the memory of the other
sequence of the same kind and gap: another A before the same cutaway). A row whose files are missing is reported
"not trained". Reference rows (``scripts/scores.py``): mean colour of the history, last history frame (raw and through
the VAE), the VAE ceiling (the real return through the VAE, decoded after the history's last 4 latent frames, as the
generated segments are decoded).

Scores of the return against A's real frames: PSNR / SSIM on full frames and 8x thumbnails, scene retrieval top-1
among A, the cutaway and 8 other held-out shots (chance 10 %). Every row runs ``--seeds`` (the seed of the return
segment); the table gives means over seeds and sequences, per gap, and each row's margin over the best trivial row
(memory off, mean colour, last frame). One process: models loaded once, each history encoded once per memory design
and snapshotted at every gap. Writes ``<out>.json`` (every number per sequence, row and seed) and ``<out>.png``
(contact sheet: real return / rows at the longest cutaway, first seed).
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Literal, Optional

import tyro

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/ (also under PYTHONSAFEPATH)
from common import ROOT, fetch_heldout, lab_set_files, load_lab_set, print_table, write_result  # noqa: E402  (scripts/ on sys.path)

import revisit_eval  # noqa: E402
import scores  # noqa: E402

WIDTH, HEIGHT, FPS, SEGMENT = 256, 128, 16.0, 4
A_CLIPS = ("tree.avi", "carphone_pristine.mp4")
CUTAWAY_ORDER = ("bikes.mp4", "carphone_pristine.mp4", "tree.avi", "video_wan2_2_5B_ti2v-1.webp",
                 "video_hunyuan_video_1.5_720p_t2v-1.webp")
PAN_SOURCES = ("video_wan2_2_5B_ti2v-1.webp", "video_hunyuan_video_1.5_720p_t2v-1.webp")
POOL_CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "tree.avi", "video_wan2_2_5B_ti2v-1.webp",
              "video_hunyuan_video_1.5_720p_t2v-1.webp")  # training.reproduce.HELDOUT_CLIPS
MEDIA = os.path.join(ROOT, ".cache", "media")
ROW_NAMES = {"off": "off", "sliding": "sliding window", "fp": "Frame Preservation",
             "fp_4x4x2": "Frame Preservation 4x4x2", "pack_forcing": "PackForcing", "video_ssm": "VideoSSM",
             "shuffled": "shuffled memory (Frame Preservation)"}
MEMORY_ROWS = ("sliding", "fp", "fp_4x4x2", "pack_forcing", "video_ssm")
MODES = {"off": "off", "sliding": "sliding_window", "fp": "frame_preservation", "fp_4x4x2": "frame_preservation",
         "pack_forcing": "pack_forcing", "video_ssm": "video_ssm", "shuffled": "frame_preservation"}
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[revisit +{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


def read(name: str, max_frames: int = 10_000, width: int | None = None, height: int | None = None):
    """uint8 ``[F, height, width, 3]`` frames of a clip in .cache/media at 16 fps (default size: ``--size``)."""
    from example_eval import read_clip

    return read_clip(os.path.join(MEDIA, name), width or WIDTH, height or HEIGHT, FPS, max_frames)


# ---- sequences ----------------------------------------------------------------------------------------------------
def a_length(clip: str, want: int, ret: int) -> int:
    """Shot A's frames for ``clip``: the largest 13 + 16k not above ``want`` that leaves ``ret`` return frames.
    Raises ValueError when the clip is shorter than 13 + ``ret`` frames at :data:`FPS`."""
    n = len(read(clip))
    if n < revisit_eval.FIRST + ret:
        raise ValueError(f"{clip} has {n} frames at {FPS:g} fps, shot A and a {ret}-frame return need "
                         f"{revisit_eval.FIRST + ret}")
    fit = min(want, n - ret)
    return revisit_eval.FIRST + revisit_eval.PER * ((fit - revisit_eval.FIRST) // revisit_eval.PER)


def cutaway_sequences(gaps: list[float], a_frames: int, ret: int, a_clips=A_CLIPS) -> dict:
    """``{A clip: (Sequence at the longest gap, {gap: history frames})}``: each A's sequence is built once at the
    longest gap; a shorter gap's history is its prefix."""
    import numpy as np

    out = {}
    longest = max(revisit_eval.whole_segments(g * FPS) for g in gaps)
    for a in a_clips:
        parts, need = [], longest
        for n in (n for n in CUTAWAY_ORDER if n != a):
            if need > 0:  # only the frames the longest cutaway uses
                parts.append(read(n, need))
                need -= len(parts[-1])
        b = np.concatenate(parts)
        names = [n for n in CUTAWAY_ORDER if n != a]
        seq = revisit_eval.cutaway(read(a), b, a_frames, longest, ret, a, "+".join(names),
                                   b_prompt=revisit_eval.prompt_for(names[0]))
        out[a] = (seq, {g: a_frames + revisit_eval.whole_segments(g * FPS) for g in gaps})
    return out


def sub_sequence(seq, history: int):
    """The sequence cut at ``history`` frames (a shorter cutaway), the same return."""
    frames = __import__("numpy").concatenate([seq.frames[:history], seq.real_return])
    shots = [*seq.shots[:1], (seq.shots[1][0], seq.shots[1][1], seq.a_frames, history, True),
             (seq.shots[2][0], seq.shots[2][1], history, history + seq.ret, False)]
    return dataclasses.replace(seq, frames=frames, history=history, gap_frames=history - seq.a_frames, shots=shots,
                               name=seq.name.rsplit("|", 1)[0] + f"|{history - seq.a_frames}f")


def pan_sequences(gaps: list[float], a_frames: int, ret: int, sources=PAN_SOURCES) -> dict:
    """``{"pan:<source> <gap>": Sequence}``: the window over each source's first frame, a 1 s move, a ``gap - 1`` s
    hold."""
    import numpy as np

    out = {}
    for src in sources:
        still = read(src, 1, 832, 480)
        for g in gaps:
            hold = revisit_eval.whole_segments(g * FPS) - int(FPS)
            n = a_frames + int(FPS) + hold + ret
            out[f"{src}|{g:g}"] = revisit_eval.pan(np.repeat(still, n, axis=0), WIDTH, HEIGHT, a_frames, int(FPS),
                                                   hold, ret, src)
    return out


def pool_for(exclude: str) -> dict:
    """8 held-out shots for retrieval, none from ``exclude`` (A's clip or the pan's source)."""
    pool = revisit_eval.shot_pool({n: read(n) for n in POOL_CLIPS if n != exclude})
    return dict(list(pool.items())[:8])


# ---- histories ----------------------------------------------------------------------------------------------------
def encode_history(lab, frames, mode: str, cuts: list[int], ret: int = 0, vae_refs: bool = False) -> dict:
    """:func:`snapshots` collected: ``{cut: Memory}`` and, with ``vae_refs``, ``{("vae", cut): frames}``."""
    out = {}
    for cut, mem, vae in snapshots(lab, frames, mode, cuts, ret, vae_refs):
        out[cut] = mem
        if vae is not None:
            out[("vae", cut)] = vae
    return out


def snapshots(lab, frames, mode: str, cuts: list[int], ret: int = 0, vae_refs: bool = False):
    """Encode the history ``frames`` (uint8 ``[N, H, W, 3]``) once with ``lab``'s encoder in ``mode``
    (``models.storyboard.HistoryWriter``: one VAE stream), yielding ``(cut, Memory, vae frames or None)`` as soon as
    the history reaches each length in ``cuts``. With ``vae_refs`` the frames are uint8 ``[cut + ret, H, W, 3]``: the
    VAE's version of the last history frame and of the ``ret`` real frames after ``cut`` (encoded continuing the
    stream; the history's last 4 latent frames and the return decoded as one stream, as ``decode_stream`` decodes
    generated segments); only index ``cut - 1`` and the last ``ret`` frames are filled."""
    import torch

    from framememory.memory.frames import to_uint8
    from framememory.models.history_writer import HistoryWriter
    from framememory.models.vae_stream import CONTEXT_LATENTS, VideoStream

    model, vae, encoder = lab
    height, width = frames.shape[1:3]
    writer = HistoryWriter(model, vae, encoder, SEGMENT, FPS, width, height, mode=mode)
    frames, pos = torch.from_numpy(frames), 0
    while pos < max(cuts):
        n = writer.frames_needed
        writer.append(frames[pos:pos + n])
        pos += n
        if pos in cuts:
            mem, refs = dataclasses.replace(writer.mem, history=writer.mem.history.copy()), None
            if vae_refs:
                ret_latent = writer.stream.copy().encode(frames[pos:pos + ret].float() / 255.0)
                dec = VideoStream(vae, "decode", time_stride=4)
                last = to_uint8(dec.decode(writer.mem.history.last_latents(CONTEXT_LATENTS)[None]))[-1:]
                back = to_uint8(dec.decode(ret_latent))
                filler = torch.zeros((pos - 1, height, width, 3), dtype=torch.uint8)  # never read
                refs = torch.cat([filler, last, back]).numpy()
            yield pos, mem, refs


def with_segments(mem, segments, strip: bool = False):
    """A copy of the Memory ``mem`` whose history holds ``segments`` (``HistorySegment`` s, shared), its LR stream and
    colour statistics kept; ``strip``: without their memory tokens (another encoder of the same rate encodes them
    again from the kept latents and LR latents, no VAE: ``models.storyboard.run_storyboard`` does at its start)."""
    from framememory.memory.history import HistoryBuffer

    history = HistoryBuffer([dataclasses.replace(s, encoded={}) if strip else s for s in segments],
                            mem.history.lr_streams)
    history.colour_stats = mem.history.colour_stats
    return dataclasses.replace(mem, history=history)


def splice(partner, mem, a_frames: int):
    """The shuffled control's history: the segments of ``partner`` (another clip's first ``a_frames``, encoded alone)
    in place of shot A's segments of ``mem``, then ``mem``'s cutaway segments (their latents and tokens as encoded
    after A: a causal VAE's few frames of context are the only difference to a history encoded from the start).
    The main job's Splice History node does the same (``scripts/eval_nodes.splice_history``)."""
    from eval_nodes import splice_history

    if partner.history.num_frames != a_frames:
        raise ValueError(f"the control's A has {partner.history.num_frames} frames, shot A {a_frames}")
    return splice_history(mem, partner)


def cache_warmups() -> None:
    """Compute each history's decode warm-up once: ``models.storyboard.decode_stream`` (the last 4 latent frames of the
    history decoded, then discarded, before a generated segment) is the same for every row and seed of a sequence, and
    the decode dominates a 1 s return on the CPU. The cached stream is copied (``VideoStream.copy``) for each run."""
    import framememory.models.storyboard as sb

    original, cache = sb.decode_stream, {}

    def cached(vae, history, time_stride):
        key = (id(vae), time_stride, tuple(id(s.latent) for s in history.segments))
        if key not in cache:
            cache[key] = (original(vae, history, time_stride), history)  # the history pins the ids
        return cache[key][0].copy()

    sb.decode_stream = cached


def skip_final_encode() -> None:
    """Skip the memory-token encoding of a return after it is generated: ``models.storyboard.generate_segment``
    appends every new segment to the history and encodes it for the *next* segment, but a return is one segment whose
    memory is then dropped, so that encoding (memory encoder + the LR branch's VAE pass) changes no scored frame. The
    encoding at a run's start (``run_storyboard``: memories stripped for another encoder of the same rate) still
    runs."""
    import framememory.models.storyboard as sb

    encode, segment, inside = sb.encode_pending_experts, sb.generate_segment, [False]

    def encode_outside(*args, **kwargs):
        return None if inside[0] else encode(*args, **kwargs)

    def segment_without_encode(run, plan):
        inside[0] = True
        try:
            return segment(run, plan)
        finally:
            inside[0] = False

    sb.encode_pending_experts, sb.generate_segment = encode_outside, segment_without_encode


def generate(lab, start, mode: str, prompt: str, frames: int, seed: int, steps: int):
    """The return: ``frames`` frames after the history ``start`` (a Memory) with ``prompt``, memory ``mode``;
    uint8 ``[frames, H, W, 3]`` and the report (``models.storyboard.run_storyboard``, euler / simple, cfg 1)."""
    from framememory.demo.text_encoder import StandInTextEncoder
    from framememory.memory.frames import to_uint8
    from framememory.memory.storyboard import Shot
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model, vae, encoder = lab
    clip = StandInTextEncoder()
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    out, _, report = run_storyboard(model, vae, clip, encoder, negative, [Shot(0, prompt, 0.0, frames / FPS)],
                                    SamplerSettings(steps, 1.0, "euler", "simple", seed), start.width, start.height, FPS, SEGMENT,
                                    start, mode=mode)
    return to_uint8(out).numpy(), report


# ---- rows ---------------------------------------------------------------------------------------------------------
def row_sets(lab_dir: str, rows: list[str]) -> dict:
    """``{row: {"files": {...}, "note": str} or {"missing": [...]}}``: which lab files each row uses
    (:func:`common.lab_set_files`), or what it lacks ("not trained")."""
    return {r: lab_set_files(lab_dir, "frame_preservation" if r == "shuffled" else r) for r in rows}


def score_sequence(seq, arms: dict, refs: dict, pool: dict) -> dict:
    """Every arm (``{row: uint8 return}``) and reference row scored against A's real return
    (``scores.row``: PSNR, thumbnail PSNR, SSIM, retrieval among A + cutaway + ``pool``)."""
    cands = revisit_eval.candidates(seq, pool)
    return {name: scores.row(frames[:seq.ret], seq.real_return, cands, "A") for name, frames in {**arms, **refs}.items()}


def histories(family: dict, loaded: dict, hist: dict):
    """Fill ``hist[key] = {design: {cut: Memory}, "vae": {cut: frames}, "shuffled": {cut: Memory}}`` one history
    length at a time, yielding ``(key, cut)`` as each becomes ready (so the first returns are generated while longer
    histories are still to be encoded). Each sequence's history is encoded once with the Frame Preservation set (VAE
    references included); the other designs' memories come from it (VideoSSM, off, sliding window: its latents;
    PackForcing and other encoders of the same rate: its latents and LR latents, tokens encoded again; another rate: a
    pass of its own, in step); the shuffled control is spliced from the partner clip's A (:func:`splice`)."""
    fp = loaded["fp"]
    rate = fp[2].check(fp[0]).rate_str
    for key, (seq, cuts, partner_frames, _) in family.items():
        t0, cut_list = time.perf_counter(), sorted(set(cuts.values()))
        entry = hist.setdefault(key, {"fp": {}, "vae": {}})
        other = None if partner_frames is None else encode_history(
            fp, partner_frames[:seq.a_frames], "frame_preservation", [seq.a_frames])[seq.a_frames]
        own = {d: snapshots(loaded[d], seq.frames[:max(cut_list)], MODES[d], cut_list) for d in ("fp_4x4x2", "pack_forcing")
               if d in loaded and loaded[d][2].check(loaded[d][0]).rate_str != rate}
        for cut, mem, vae in snapshots(fp, seq.frames[:max(cut_list) + seq.ret], "frame_preservation", cut_list,
                                       seq.ret, True):
            entry["fp"][cut], entry["vae"][cut] = mem, vae
            for d in ("fp_4x4x2", "pack_forcing"):
                if d in own:
                    entry.setdefault(d, {})[cut] = next(own[d])[1]
                elif d in loaded:
                    entry.setdefault(d, {})[cut] = with_segments(mem, mem.history.segments, strip=True)
            if other is not None:
                entry.setdefault("shuffled", {})[cut] = splice(other, mem, seq.a_frames)
            log(f"{key}: history of {cut} frames ready after {time.perf_counter() - t0:.1f} s")
            yield key, cut


def one_gap(args, loaded: dict, family: dict, hist: dict, key: str, label, pool: dict,
            seeds: list[int]) -> tuple[dict, tuple]:
    """Every row x seed of one sequence at one gap: ``({seed: scores}, (sequence, first seed's arms, refs))``."""
    import numpy as np

    seq, cuts, _, _ = family[key]
    h = cuts[label]
    sub = sub_sequence(seq, h) if h != seq.history else seq
    vae = hist[key]["vae"][h]
    refs = scores.reference_frames(sub.frames[:h], sub.ret, np.concatenate([vae[:h], vae[h:h + sub.ret]]))
    per_seed, shown = {}, None
    for seed in seeds:
        arms = {}
        for r in args.rows:
            memory = hist[key].get(r if r in ("fp_4x4x2", "pack_forcing", "shuffled") else "fp", {}).get(h)
            lab = loaded.get("fp" if r == "shuffled" else r)
            if memory is None or lab is None:
                continue
            t0 = time.perf_counter()
            arms[r], _ = generate(lab, memory, MODES[r], sub.shots[2][1], sub.ret, seed, args.steps)
            log(f"{key} gap {label:g} s seed {seed} {r}: {time.perf_counter() - t0:.1f} s")
        per_seed[seed] = score_sequence(sub, arms, refs, pool)
        shown = shown or (sub, arms, refs)
    return per_seed, shown


def families(args) -> dict:
    """``{key: (Sequence at its longest gap, {gap: history frames}, the shuffle partner's frames, pool exclude)}``:
    the cutaway sequences (the partner: the next clip of A_CLIPS, its first frames stand in for A) and the pan
    sequences (the partner: the window over the other pan source)."""
    fam = {}
    for i, a in enumerate(A_CLIPS[:args.a_clips]):
        a_frames = a_length(a, args.a_frames, args.return_frames)
        seq, cuts = cutaway_sequences(args.gaps, a_frames, args.return_frames, (a,))[a]
        fam[f"cutaway:{a}"] = (seq, cuts, read(A_CLIPS[(i + 1) % len(A_CLIPS)], a_frames), a)
    for i, src in enumerate(PAN_SOURCES[:args.pan_sources] if args.pan_gaps else ()):
        seqs = pan_sequences(args.pan_gaps, args.a_frames, args.return_frames, (src,))
        seq = max(seqs.values(), key=lambda q: q.history)
        cuts = {g: args.a_frames + revisit_eval.whole_segments(g * FPS) for g in args.pan_gaps}
        partner = pan_sequences([min(args.pan_gaps)], args.a_frames, args.return_frames,
                                (PAN_SOURCES[(i + 1) % len(PAN_SOURCES)],))
        fam[f"pan:{src}"] = (seq, cuts, next(iter(partner.values())).frames, src)
    return fam


# ---- the table ----------------------------------------------------------------------------------------------------
COLS = ("psnr_db", "thumb_psnr_db", "ssim", "retrieval_top1")


def table(results: dict, names: dict) -> list[dict]:
    """One printed row per (kind, gap, row): means over sequences and seeds of :data:`COLS`, the margin over the
    best trivial row (mean of the per-sequence-and-seed margins) and how many runs it won."""
    rows = []
    for kind in ("cutaway", "pan"):
        by_gap = {}
        for key, gaps in results.items():
            if key.startswith(kind + ":"):
                for gap, res in gaps.items():
                    by_gap.setdefault(float(gap), []).extend(res["seeds"].values())
        for gap in sorted(by_gap):
            runs = by_gap[gap]
            for name in runs[0]:
                vals = [r[name] for r in runs if name in r]
                row = {"kind": kind, "gap s": gap, "row": names.get(name, name.replace("_", " ")), "key": name,
                       "runs": len(vals), **{c: round(statistics.fmean(v[c] for v in vals), 3) for c in COLS}}
                if name not in scores.REFERENCES and name != "off":
                    margins = [scores.margin(r, name, off="off") for r in runs if name in r]
                    row["margin dB"] = round(statistics.fmean(margins), 3)
                    row["won"] = f"{sum(m > 0 for m in margins)}/{len(margins)}"
                rows.append(row)
    return rows


def contact_sheet(shown: dict, path: str, names: dict) -> None:
    """Real return / every row / reference rows at the longest cutaway of the first A, first seed."""
    from example_eval import eval_sheet

    (sub, arms, refs) = shown
    rows = [("real return (A')", sub.real_return), ("A before it left", sub.before[-sub.ret:]),
            ("cutaway (end)", sub.frames[sub.history - sub.ret:sub.history])]
    rows += [(names.get(k, k), v[:sub.ret]) for k, v in arms.items()]
    rows += [(k.replace("_", " ") + " (ref)", v) for k, v in refs.items()]
    eval_sheet(rows, path, sub.history, FPS)


# ---- main ---------------------------------------------------------------------------------------------------------
def load_rows(args, sets: dict) -> tuple[dict, dict]:
    """``({row: (model, vae, encoder)}, {row: name})`` for the rows whose files the lab set has; the names say which
    files each row used (e.g. "off (memory LoRA, memory removed)")."""
    loaded, names, vae = {}, dict(ROW_NAMES), None
    for r in dict.fromkeys(["fp", *args.rows]):  # the Frame Preservation set encodes every history
        info = sets.get(r)
        if r == "shuffled" or not info or info.get("missing"):
            continue
        loaded[r] = load_lab_set(args.lab_dir, info["files"], vae)  # one VAE object: shared decode warm-ups
        vae = loaded[r][1]
        names[r] = ROW_NAMES[r] + (f" {loaded[r][2].check(loaded[r][0]).rate_str}" if r == "fp" else "") + (
            f" ({info['note']})" if info.get("note") else "")
        log(f"row {r}: {names[r]} <- {', '.join(os.path.basename(p) for p in info['files'].values())}")
    return loaded, names


def run(args) -> dict:
    """Load the rows, build the sequences, encode the histories, generate and score every row x seed x gap; writes
    partial results after every gap. Returns the result dict (``write_result`` extra)."""
    fetch_heldout(A_CLIPS + CUTAWAY_ORDER + POOL_CLIPS + PAN_SOURCES)
    sets = row_sets(args.lab_dir, list(dict.fromkeys(["fp", *args.rows])))
    if sets["fp"].get("missing"):
        raise SystemExit(f"the lab set in {args.lab_dir} lacks {sets['fp']['missing']}: every history is encoded with "
                         "the Frame Preservation set (run training/lab.py)")
    loaded, names = load_rows(args, sets)
    cache_warmups()
    skip_final_encode()
    fam = families(args)
    hist = {}
    results, shown = {}, None
    status = {r: ("not trained: " + ", ".join(sets[r]["missing"])) if sets.get(r, {}).get("missing") else "ran"
              for r in args.rows}
    pools = {key: pool_for(fam[key][3]) for key in fam}

    def cell(seed: int, key: str, label) -> None:
        nonlocal shown
        h = fam[key][1][label]
        per_seed, sheet = one_gap(args, loaded, fam, hist, key, label, pools[key], [seed])
        sub = sub_sequence(fam[key][0], h) if h != fam[key][0].history else fam[key][0]
        entry = results.setdefault(key, {}).setdefault(label, {
            "history_frames": h, "return_frames": fam[key][0].ret, "seeds": {}, "storyboard": sub.storyboard(FPS),
            "pool": list(pools[key])})
        entry["seeds"].update(per_seed)
        if key.startswith("cutaway:") and label == max(fam[key][1]) and shown is None:
            shown = sheet
        write_result(os.path.abspath(args.out) + "_partial", [], {"results": results, "status": status, "names": names})

    for key, cut in histories(fam, loaded, hist):  # the first seed while the histories grow: every gap early
        for label in [g for g, h in fam[key][1].items() if h == cut]:
            cell(args.seeds[0], key, label)
    for seed in args.seeds[1:]:
        for key in fam:
            for label in fam[key][1]:
                cell(seed, key, label)
    return {"results": results, "status": status, "names": names, "shown": shown,
            "files": {r: {k: os.path.basename(p) for k, p in s.get("files", {}).items()} for r, s in sets.items()}}


def print_report(rows: list[dict], status: dict) -> list[str]:
    """Print the table and the plain statements; returns the statements."""
    print_table(rows, ["kind", "gap s", "row", "runs", *COLS, "margin dB", "won"], digits=2)
    lines = [f"{r}: {s}" for r, s in status.items() if s != "ran"]
    for kind in ("cutaway", "pan"):
        for gap in sorted({r["gap s"] for r in rows if r["kind"] == kind}):
            sel = {r["key"]: r for r in rows if r["kind"] == kind and r["gap s"] == gap}
            memory = [k for k in sel if k not in scores.REFERENCES and k not in ("off", "shuffled")]
            lines += [f"{kind} {gap:g} s: {s}" for s in scores.losses(
                sel, memory, against=("off", *scores.TRIVIAL, "last_frame_vae"), names={k: v["row"] for k, v in sel.items()})]
    for s in lines:
        print(s)
    return lines


def summarize(path: str) -> None:
    """Print the table and statements of a result file (a finished run's or a ``_partial.json`` of a stopped one)."""
    with open(path) as f:
        data = json.load(f)
    names = data.get("names") or {}
    rows = table(data["results"], names)
    print_report(rows, data.get("status", {}))
    runs = {k: sorted({int(s) for g in v.values() for s in g["seeds"]}) for k, v in data["results"].items()}
    print("seeds per sequence:", runs)


def main(argv=None) -> None:
    global WIDTH, HEIGHT
    args = parse_args(argv)
    if args.summarize:
        return summarize(args.summarize)
    WIDTH, HEIGHT = args.size
    from long_run import setup

    setup()
    import torch

    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        res = run(args)
    rows = table(res["results"], res["names"])
    statements = print_report(rows, res["status"])
    if res["shown"] is not None:
        contact_sheet(res["shown"], args.out + ".png", res["names"])
    path = write_result(os.path.abspath(args.out), rows, {
        "settings": {k: v for k, v in vars(args).items()}, "status": res["status"], "files": res["files"],
        "names": res["names"], "statements": statements, "results": res["results"]})
    partial = os.path.abspath(args.out) + "_partial.json"
    if os.path.exists(partial):
        os.remove(partial)
    print("written:", path, args.out + ".png")


@dataclasses.dataclass(frozen=True)
class Args:
    """The leave-and-return benchmark on the lab model."""

    lab_dir: str = os.path.join(ROOT, "lab_model")
    """the lab model set"""
    rows: tuple[Literal[tuple(ROW_NAMES)], ...] = tuple(ROW_NAMES)  # type: ignore[valid-type]
    """rows to run (keys)"""
    gaps: tuple[float, ...] = (2, 5, 10, 20)
    """cutaway seconds"""
    pan_gaps: tuple[float, ...] = (2,)
    """pan: seconds away, the 1 s move included (none: no pan sequences)"""
    pan_sources: int = 1
    """how many of the two held-out webps pan"""
    seeds: tuple[int, ...] = (0, 1, 2)
    """sampling seeds"""
    a_frames: int = 61
    """frames of shot A (13 + 16k; 61 = 3.81 s; a clip too short for it and a 1 s return gets the longest A that fits)"""
    return_frames: int = 16
    """frames of the return (16k; 16 = 1 s)"""
    a_clips: int = 1
    """how many of tree, carphone are A (1: tree; the other gives the shuffled control's A)"""
    size: tuple[int, int] = (WIDTH, HEIGHT)
    """frame width height"""
    steps: int = 12
    """Euler steps per segment (12, as the main job)"""
    threads: int = 2
    """torch CPU threads"""
    out: str = os.path.join(ROOT, "benchmarks", "results", "revisit_lab")
    """result stem: <out>.json, <out>.png"""
    summarize: Optional[str] = None
    """print the table of a result JSON (also a stopped run's _partial.json) and exit"""
    quick: bool = False
    """test size: 128x64, A 13 frames, a 1 s cutaway, no pan, seed 0, 2 steps"""


def parse_args(argv=None) -> Args:
    """The command line; ``--quick`` replaces the sizes with the test's."""
    args = tyro.cli(Args, args=argv, description=__doc__)
    if args.quick:
        args = dataclasses.replace(args, gaps=(1.0,), pan_gaps=(), seeds=(0,), steps=2, a_frames=13, size=(128, 64))
    return args


if __name__ == "__main__":
    main()
