"""Small-scale reproduction of arXiv 2512.23851's frame-retrieval table (v1) and of its Stage II claim, on real clips.

    .venv/bin/python training/reproduce.py --preset cpu-small [--out benchmarks/results/reproduction_cpu-small.json]
    .venv/bin/python training/reproduce.py --preset gpu --seeds 0 1 2
    .venv/bin/python training/reproduce.py --preset cpu-small --vae lab --paper-rows-only   # the lab model's Wan VAE

What it does (each step logged, the whole run written as JSON and printed as tables):

1. **Clips.** Real videos from the registries (docs/design.md section 3), fetched into ``.cache/media/`` only when missing
   (:func:`training.media.fetch_media`): ``bikes.mp4`` and ``carphone_pristine.mp4`` (scripts/setup.sh),
   ``vtest.avi``, ``tree.avi``, ``Megamind.avi`` (Debian ``opencv-doc``), Big Buck Bunny (PyPI ``moviepy`` sdist) and
   animated webp outputs of Wan 2.1 / 2.2 and HunyuanVideo 1.5 (PyPI ``comfyui-workflow-templates-media-video``).
   Training and held-out clips are *different videos* (:data:`training.media.TRAIN_CLIPS`,
   :data:`training.media.HELDOUT_CLIPS`); a source that cannot be fetched is reported and skipped. Frames are decoded
   with :mod:`training.data` (PyAV / Pillow), scaled to cover ``width x height``, center-cropped and sampled at
   ``fps / 4`` (one stand-in latent frame per 4 video frames of a 16 fps clip, as Wan's VAE; see
   :mod:`training.standin_vae`).
2. **VAE stand-in.** :class:`training.standin_vae.PatchPCAVAE` fitted on the training clips only; its reconstruction
   PSNR / SSIM on the held-out frames is the ceiling of the table.
3. **Base DiT.** ComfyUI's own ``WanModel`` (t2v, tiny width, random init) stands in for pretrained Wan weights after
   a short *base pretraining*: every weight trained as a text-free video generator of ``segment_frames``-frame
   segments (rectified flow, no memory) on the training clips (:func:`training.reproduce_training.pretrain_base`),
   so that Stage I spends its steps on memory, not on learning images at all. Cached per preset and seed under
   ``.cache/reproduction/``.
4. **Stage I per variant**, same token budget at 4x4x2 (``training.loop.train``: a fresh LoRA on a copy of the
   base DiT + the encoder): Large Patchifier (:class:`training.baselines.LargePatchifier`), Only LR, Without LR,
   Proposed 4x4x2 (both branches), and Proposed 2x2x1 (4x the tokens). The LR branch is the paper's inference-time
   one through the stand-in VAE (:meth:`PatchPCAVAE.lr_latent`, exact on masked histories). Then
   :func:`training.evaluate.frame_query_metrics` on held-out histories: PSNR / SSIM of frames regenerated from the
   memory at random history positions (the same positions and noises for every variant: ``--eval-seed``) against
   the original frames. Reference rows: the VAE ceiling (ground-truth latent), and the base DiT without memory.
5. **Stage II** (next-segment loss on held-out (history, segment) pairs, :func:`training.evaluate.next_segment_loss`):
   the Stage I Proposed 4x4x2 encoder with a new LoRA vs the same DiT + LoRA without memory vs a 4x4x2 encoder that
   skipped Stage I, each trained ``stage2_steps``.

**Diffusion time.** The paper does not give the distribution of t; ``training.stages`` defaults to SD3's ``L(0, 1)``.
At this scale a tiny DiT trained with ``L(0, 1)`` barely learns to read *compressed* memory within a CPU budget
(Proposed 4x4x2 after 800 Stage I steps: held-out loss 1.334 with the clip's own memory vs 1.355 with another clip's,
about 10-11 dB), while ``L(1.5, 1)`` (more weight on high noise, where only the memory can tell what the frame was;
Wan samples with a time shift for a similar reason) gives a clear gap (1.333 vs 1.508) and about 13-14 dB. Every
training stage here uses ``L(timestep_loc, 1)``: the base pretraining directly, Stage I / II through
``TrainArgs.timestep_loc``.

**``--vae lab``** replaces steps 1, 2 and the LR branch of step 4 by the lab model's real Wan VAE
(:mod:`training.reproduce_labvae`): frames read at ``fps`` and encoded as causal streams (``1 + 4k`` frames ->
``1 + k`` latent frames; training windows inside chunks of ``lab_chunk_frames`` frames, held-out histories each their
own stream), the LR latents made from pixels by ``memory.encoder.lr_clip`` + that VAE (``training.data``'s
``chunk_lr_latents``, as the shards; Stage I masks them in the loop), and frame queries decoded in their history's
stream (the ceiling row is that VAE's reconstruction). The base DiT cache name carries the VAE kind
(:func:`training.reproduce_training.base_dit_file`). ``--paper-rows-only`` skips the "Proposed, shared timestep" row.

The paper's ordering (PSNR) Large Patchifier < Only LR, Without LR < Proposed 4x4x2 < Proposed 2x2x1 is checked on
the seed means and reported. All random draws are seeded (``--seeds``); timings are wall-clock on this machine.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import tyro

from framememory.headless.comfy_import import import_comfyui
from framememory.training.reproduce_config import PAPER_V1, PRESETS, REPO_ROOT, VARIANTS, Preset, log
from framememory.training.reproduce_data import clips_record, load_clips, vae_and_windows
from framememory.training.reproduce_report import bench_common, orderings, print_report, stage2_means, variant_means
from framememory.training.reproduce_training import (RunContext, base_dit, base_row, ceiling_row, common_train_args,
                                                     stage1_rows, stage2_rows)


def _device(p: Preset, preset_name: str, device_name: str | None):
    """The torch device (``device_name``, default cuda if available, else cpu); on cpu ``p.threads`` torch threads
    (0: torch's default). Logs the preset and the device."""
    import torch

    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and p.threads:
        torch.set_num_threads(p.threads)
    log(f"preset {preset_name}: {p}")
    log(f"device {device}, torch threads {torch.get_num_threads()}")
    return device



def run(p: Preset, preset_name: str, seeds, eval_seed: int, out: Path, device_name: str | None,
        vae_kind: str = "standin", variants=VARIANTS) -> dict:
    """The whole reproduction (module docstring, steps 1-5) for each of ``seeds``; prints the tables and writes the
    result JSON to ``out``. Returns the result: ``benchmark``, ``paper``, ``preset``, ``preset_values``, ``seeds``,
    ``eval_seed``, ``machine``, ``command``, ``wall_s`` (seconds), ``clips``, ``standin_vae``, ``base_dit``,
    ``rows`` (Stage I and reference rows: PSNR dB, SSIM, held-out losses, seconds), ``means``, ``vae_kind``,
    ``ordering_psnr`` / ``ordering_ssim`` / ``ordering_heldout_loss``, ``stage2``, ``stage2_means``, ``paper_v1``.
    Raises SystemExit: no training or held-out clips, too few held-out windows."""
    t_start = time.perf_counter()
    device = _device(p, preset_name, device_name)
    media, clips, train_names, held_names, too_short = load_clips(p, vae_kind)
    vae, fit_key, wins, vae_record = vae_and_windows(p, preset_name, vae_kind, clips, train_names, held_names,
                                                     device, variants)
    ctx = RunContext(p, preset_name, eval_seed, device, vae, fit_key, **wins, common=common_train_args(p),
                     vae_kind=vae_kind, variants=tuple(variants))
    rows, arm_rows, base_info = [], [], {}
    for i, seed in enumerate(seeds):
        base, base_info[seed] = base_dit(ctx, seed)  # 3. base DiT
        if i == 0:  # reference rows (evaluation only); the VAE ceiling does not depend on the seed
            rows.append(ceiling_row(ctx, base))
        rows.append(base_row(ctx, base, seed))
        seed_rows, proposed_442 = stage1_rows(ctx, base, seed)  # 4. Stage I per variant
        rows.extend(seed_rows)
        arm_rows.extend(stage2_rows(ctx, base, seed, proposed_442))  # 5. Stage II
    means = variant_means(rows)  # summary
    orders = orderings(means)
    s2_means = stage2_means(arm_rows)
    wall = time.perf_counter() - t_start
    print_report(ctx, seeds, rows, means, orders, arm_rows, wall)
    result = {
        "benchmark": "reproduction", "paper": "arXiv 2512.23851", "preset": preset_name,
        "preset_values": dataclasses.asdict(p), "seeds": list(seeds), "eval_seed": eval_seed,
        "machine": bench_common().machine(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "wall_s": wall,
        "clips": clips_record(p, clips, train_names, held_names, media, too_short, vae_kind), "vae_kind": vae_kind,
        ("standin_vae" if vae_kind == "standin" else "vae"): vae_record,
        "base_dit": base_info, "rows": rows, "means": means,
        "ordering_psnr": orders["psnr"], "ordering_ssim": orders["ssim"], "ordering_heldout_loss": orders["loss"],
        "stage2": arm_rows, "stage2_means": s2_means, "paper_v1": PAPER_V1,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    log(f"wrote {out}")
    return result


def override(p: Preset, items: list[str]) -> Preset:
    """``p`` with the ``FIELD=VALUE`` items applied (each value parsed as the field's type; tuples comma-separated).
    Raises SystemExit naming the field when a field does not exist or a value does not parse."""
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    changes = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        default = getattr(p, name)
        try:
            if isinstance(default, tuple):
                kind = type(default[0]) if default else int
                changes[name] = tuple(kind(v) for v in value.split(",") if v)
            else:
                changes[name] = type(default)(value)
        except ValueError as e:
            raise SystemExit(f"--set {item!r}: {e}") from e
    return dataclasses.replace(p, **changes)


@dataclass(frozen=True)
class Args:
    """Small-scale reproduction of arXiv 2512.23851's frame-retrieval table and Stage II claim."""

    preset: Literal[tuple(sorted(PRESETS))] = "cpu-small"  # type: ignore[valid-type]
    """run sizes"""
    seeds: Optional[tuple[int, ...]] = None
    """training seeds (default: the preset's)"""
    eval_seed: int = 1234
    """seed of the held-out queries (same for every variant)"""
    out: Optional[str] = None
    """JSON output (default benchmarks/results/reproduction_<preset>.json)"""
    device: Optional[str] = None
    """torch device (default cuda if available, else cpu)"""
    threads: Optional[int] = None
    """torch CPU threads (default: the preset's; 0 = torch's)"""
    overrides: Annotated[tuple[str, ...], tyro.conf.arg(name="set", metavar="FIELD=VALUE"),
                         tyro.conf.UseAppendAction] = ()
    """override one preset field, e.g. --set stage1_steps=1000 (repeatable; tuples as 64,128)"""
    vae: Literal["standin", "lab"] = "standin"
    """standin: the linear patch-PCA stand-in; lab: the lab model's Wan VAE (lab_model/,
    training/reproduce_labvae.py)"""
    paper_rows_only: bool = False
    """run only the five variants of the paper's v1 table (skip 'Proposed, shared timestep')"""
    variants: Optional[tuple[str, ...]] = None
    """run only these Stage I variants, e.g. 'Without LR 4x4x2' 'Proposed 2x2x1' (to finish a stopped run; the base
    DiT and the encoded windows come from the cache)"""
    comfyui_dir: Optional[str] = None
    """ComfyUI source folder (default: $COMFYUI_DIR, else .cache/ComfyUI)"""


def main(argv=None) -> int:
    a = tyro.cli(Args, args=argv, description=__doc__.split("\n")[0])
    names = {f"{v[0]} {v[1]}" for v in VARIANTS}
    if a.variants and not set(a.variants) <= names:
        raise SystemExit(f"--variants: unknown {sorted(set(a.variants) - names)}; choose from {sorted(names)}")
    p = override(PRESETS[a.preset], list(a.overrides))
    if a.threads is not None:
        p = dataclasses.replace(p, threads=a.threads)
    import torch

    import_comfyui(a.comfyui_dir, cpu=(a.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu")
    out = Path(a.out) if a.out else REPO_ROOT / "benchmarks" / "results" / f"reproduction_{a.preset}.json"
    variants = tuple(v for v in VARIANTS if f"{v[0]} {v[1]}" in PAPER_V1) if a.paper_rows_only else VARIANTS
    if a.variants:
        variants = tuple(v for v in variants if f"{v[0]} {v[1]}" in a.variants)
    run(p, a.preset, tuple(a.seeds) if a.seeds else p.seeds, a.eval_seed, out, a.device, a.vae, variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
