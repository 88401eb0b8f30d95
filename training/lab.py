"""The lab model set: a small Wan 2.1-architecture model trained here on real clips, the main job's embedded default.

    .venv/bin/python training/lab.py --out .cache/lab_v2/out           # full recipe (see benchmarks/README.md)
    .venv/bin/python training/lab.py --preset smoke --out /tmp/lab      # the same recipe shortened (CI, minutes)

One command regenerates every file from scratch (seeded; the same clips give the same files up to float
non-determinism of the CPU kernels). Every phase is checkpointed (``--work``, default ``.cache/lab/<preset>``): a
stopped run started again with the same command continues where it stopped (finished phases are skipped, a phase
in progress resumes from its last checkpoint); ``--fresh`` starts over. Phases, all with the project's own code and
ComfyUI's own classes:

1. **vae** (:mod:`training.vae_train`): ComfyUI's ``WanVAE`` at base width ``vae.dim`` trained as an autoencoder on
   the first ``vae_seconds`` of every training clip (warm-up + cosine decay); saved fp16, reloaded through
   ``comfy.sd.VAE`` (what the stock **Load VAE** does) and measured on held-out clips streamed whole (up to
   ``heldout_frames`` frames, one VAE stream each, as the nodes stream a history), fp16 file vs fp32 weights.
2. **sequences** (:mod:`training.lab_data`): ``frames``-frame training sequences (10 s), each encoded as one VAE
   stream with its LR latents at both trained rates: plain chunks of the clips in ``plain`` and ``returns``
   leave-and-return sequences (shot A, a cutaway from another training clip, A's real continuation; per-shot prompts).
3. **dit** (:func:`training.pretrain.pretrain_dit`): ComfyUI's ``WanModel`` (t2v, width ``dit_dim``, one 128-wide head
   per 128 channels as ComfyUI's checkpoint detection assumes) pretrained on ``segment``-latent-frame windows inside
   one shot of the sequences (rectified flow, no memory); saved fp16 and reloaded from that file.
4. **stage1 / stage2** (:func:`training.loop.train`, Accelerate + peft) at ``rate``: the history encoder with a LoRA
   (Stage I: ``omega_frames`` frame queries anywhere in ``stage1_window`` latent frames, i.e. up to 8 s back), then a
   new LoRA with the Stage I encoder (Stage II: the next segment after a history of ``history_choices`` latent frames,
   about half of the samples leave-and-return, the 3-frame overlap window on). Files: encoder + Stage II LoRA (what
   the nodes load) and the Stage I LoRA (the recall probe).
5. **stage1_b / stage2_b**: the same at ``rate_b`` (4x4x2) -> ``*_4x4x2_encoder`` / ``*_4x4x2_lora``.
6. **nomemory / sliding**: Stage II LoRAs on the same data and steps without memory and with only the last 3 latent
   frames uncompressed (memory modes ``off`` and ``sliding_window``): the honest floors.
7. **pack_forcing / video_ssm**: Stage II of PackForcing (the Stage I encoder, selection and re-packing in every step)
   and of VideoSSM (new state modules) on the same mixture and steps.

Every file carries ``framememory_recipe`` metadata (preset, recipe, seed, clip list with sizes, code commit,
command); LoRAs and the DiT / VAE are stored fp16. The summary JSON (``--summary``) has losses, each phase's wall
seconds with the machine's load average, the VAE's held-out numbers and the file sizes.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import tyro

from framememory.headless.comfy_import import import_comfyui
from framememory.training.lab_phases import run, start_lab
from framememory.training.lab_recipe import ALL_FILES, FILES, LAB_DIR, MODE_SET, PRESETS, REPO_ROOT, WORK_DIR, log


def load_lab_model(folder: str | os.PathLike = LAB_DIR, lora_strength: float = 1.0, mode: str = "frame_preservation"):
    """The lab model set as ComfyUI's stock nodes load it: ``(MODEL with its LoRA, VAE, memory encoder)`` via
    ``comfy.sd.load_diffusion_model`` (Load Diffusion Model), ``comfy.sd.load_lora_for_models``
    (LoraLoaderModelOnly), ``comfy.sd.VAE`` (Load VAE) and ``MemoryEncoder.from_file`` (Load Memory Encoder).
    ``mode``: a memory mode (``memory.designs.MEMORY_MODES``) or ``frame_preservation_4x4x2``; pack_forcing and
    video_ssm get their own encoder / state file and LoRA, off / sliding_window their floor LoRA when the set has it
    (:data:`MODE_SET`), the others the Frame Preservation set. Needs ComfyUI importable.
    Raises FileNotFoundError naming the missing file and the command that makes it."""
    import comfy.sd
    import comfy.utils

    from framememory.memory.designs import DESIGNS
    from framememory.models.encoding import MemoryEncoder

    enc_key, lora_key = MODE_SET.get(mode, ("encoder", "lora"))
    floor = mode in DESIGNS and DESIGNS[mode].NETWORK is None  # off, sliding_window: no memory network of their own
    if floor and not (Path(folder) / ALL_FILES[lora_key]).is_file():
        lora_key = "lora"
    names = {"dit": FILES["dit"], "vae": FILES["vae"], "encoder": ALL_FILES[enc_key], "lora": ALL_FILES[lora_key]}
    paths = {k: Path(folder) / f for k, f in names.items()}
    for k, p in paths.items():
        if not p.is_file():
            raise FileNotFoundError(f"lab model {k} file {p} is missing: run `.venv/bin/python training/lab.py "
                                    f"--out {folder}` (it resumes a stopped run)")
    model = comfy.sd.load_diffusion_model(str(paths["dit"]))
    lora = comfy.utils.load_torch_file(str(paths["lora"]), safe_load=True)
    model, _ = comfy.sd.load_lora_for_models(model, None, lora, lora_strength, 0)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(paths["vae"])))
    return model, vae, MemoryEncoder.from_file(str(paths["encoder"]))


def _setup(comfyui_dir: str | None, threads: int) -> None:
    """ComfyUI importable on the CPU (:func:`framememory.headless.comfy_import.import_comfyui`), ``threads`` torch
    threads (0: torch's default), denormal floats flushed."""
    import torch

    import_comfyui(comfyui_dir, cpu=True)
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # denormal floats make CPU kernels 10x slower late in training


@dataclass(frozen=True)
class Args:
    """The lab model set (training/lab.py): every phase, resumable; the same command continues a stopped run."""

    preset: Literal[tuple(sorted(PRESETS))] = "lab"  # type: ignore[valid-type]
    """lab (the shipped files) or smoke (CI)"""
    out: str = str(LAB_DIR)
    """folder of the files"""
    work: Optional[str] = None
    """folder of checkpoints, shards and stage runs (default .cache/lab/<preset>)"""
    summary: Optional[str] = None
    """summary JSON (default benchmarks/results/lab_model_<preset>.json; smoke: <out>/summary.json)"""
    fresh: bool = False
    """delete the work folder first (no resume)"""
    threads: int = 2
    """torch CPU threads (0: torch's default)"""
    comfyui_dir: Optional[str] = None
    """ComfyUI source folder (default: $COMFYUI_DIR, else .cache/ComfyUI)"""


def main(argv: list[str] | None = None) -> int:
    a = tyro.cli(Args, args=argv, description=__doc__.split("\n")[0], config=(tyro.conf.FlagCreatePairsOff,))
    _setup(a.comfyui_dir, a.threads)
    out = Path(a.out).resolve()
    work = Path(a.work).resolve() if a.work else WORK_DIR / a.preset
    command = " ".join([Path(sys.executable).name, "training/lab.py", *(argv if argv is not None else sys.argv[1:])])
    summary = run(start_lab(a.preset, out, work, command, a.fresh))
    default = out / "summary.json" if a.preset == "smoke" else \
        REPO_ROOT / "benchmarks" / "results" / f"lab_model_{a.preset}.json"
    path = Path(a.summary) if a.summary else default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    log(f"done; {summary['total_bytes'] / 1e6:.1f} MB in {len(summary['files'])} files; summary {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
