"""What benchmarks/vram_estimate.py's plan says (issue 25): each row's verdict on a 12 GiB card (fits, fits with a
larger ``--reserve-vram``, or why it cannot and what to set instead: :func:`add_why_not`, stored in the JSON rows as
``why_not`` / ``set_instead``) and the README section benchmarks/results/vram_estimate.md (:func:`markdown`).

Reads the constants of benchmarks/vram_specs.py."""
from __future__ import annotations

import os
import textwrap

from common import ROOT
from framememory.headless.comfy_import import import_comfyui
from vram_specs import (CARD_GIB, CUDA_CONTEXT_GIB, DEFAULT_RESERVE_GIB, FLAT_TOLERANCE, MARGIN, MIXED, MODE_MODELS,
                        MODE_RATE, RATES, SSM_KEY_DIM, SSM_VALUE_DIM, TARGET_GIB)

PHASES = ("text", "absorb", "sample", "decode", "encode")


# ------------------------------------------------------------------------------------------------ verdicts


def limiting_phase(row: dict) -> str:
    """The phase with the largest planned peak + margin."""
    return max((p for p in PHASES if f"{p}_gib" in row), key=lambda p: row[f"{p}_gib"] + row[f"{p}_margin_gib"])


def verdict(row: dict) -> str:
    """``fits`` (ComfyUI's default reserve), ``--reserve-vram G`` (the smallest that fits) or ``no``."""
    reserve = row["reserve_vram_needed_gib"]
    return "fits" if row["fits"] else f"--reserve-vram {reserve}" if reserve is not None else "no"


def _label(row: dict) -> str:
    mode = row.get("mode", "frame_preservation")
    return f"{mode} at {row['rate']}" if mode != "video_ssm" else mode


def _alternatives(row: dict, peers: list[dict]) -> list[dict]:
    """Rows of the same model at the same history that fit (with at most ComfyUI's default reserve first), smallest
    peak first."""
    same = [p for p in peers if p["model"] == row["model"] and p["history_s"] == row["history_s"] and p is not row
            and p["reserve_vram_needed_gib"] is not None]
    return sorted(same, key=lambda p: (p["reserve_vram_needed_gib"], p["peak_plus_margin_gib"]))


def _setting(row: dict, peers: list[dict]) -> str:
    """What to set instead: the best fitting other mode / rate at this history, or a shorter history at this one."""
    alt = _alternatives(row, peers)
    if alt:
        a, reserve = alt[0], alt[0]["reserve_vram_needed_gib"]
        extra = "" if reserve <= DEFAULT_RESERVE_GIB else f" with --reserve-vram {reserve}"
        how = (f"memory_mode {a.get('mode', 'frame_preservation')}" + ("" if a.get("mode") == "video_ssm" else
                                                                        f" with a {a['rate']} encoder"))
        return f"{how}{extra} ({a['peak_plus_margin_gib']:.2f} GiB)"
    shorter = [p for p in peers if p["model"] == row["model"] and p.get("mode") == row.get("mode")
               and p["rate"] == row["rate"] and p["history_s"] < row["history_s"] and p["reserve_vram_needed_gib"]]
    if shorter:
        p = max(shorter, key=lambda p: p["history_s"])
        return f"at most {p['history_s']} s of history in this mode and rate (chain Storyboards through shorter memories)"
    return f"a card with more than {CARD_GIB:g} GiB"


def why_not(row: dict, peers: list[dict]) -> tuple[str, str]:
    """``(why, set_instead)`` for a row that fits with no ``--reserve-vram`` up to 4 GiB, from its limiting phase."""
    phase, gib = limiting_phase(row), row["peak_plus_margin_gib"]
    if phase == "absorb":
        why = (f"VideoSSM's absorb of one latent frame needs {row['absorb_act_gib']:.2f} GiB of activations (declared "
               f"{row['absorb_declared_gib']:.2f}) while its {row['absorb_proj_gib']:.2f} GiB float32 absorb_proj is on "
               f"the card: {gib:.2f} GiB planned, more than a {CARD_GIB:g} GiB card holds at any --reserve-vram")
    elif phase == "sample":
        why = (f"the DiT step with {row['M']} memory tokens needs {row['dit_act_b1_gib']:.2f} GiB of activations even "
               f"for one CFG half, beside the streamed weights in flight: {gib:.2f} GiB planned; offloading weights "
               "(--reserve-vram, --lowvram) cannot shrink activations")
    else:
        why = f"its {phase} phase plans {gib:.2f} GiB, more than a {CARD_GIB:g} GiB card holds"
    return why, _setting(row, peers)


def add_why_not(rows: list[dict], mode_rows: list[dict]) -> None:
    """Set ``why_not`` / ``set_instead`` on every row (Frame Preservation ``rows`` and bounded ``mode_rows``) that
    does not fit with any ``--reserve-vram`` up to 4 GiB; alternatives are looked up among all rows of its model."""
    peers = [{**r, "mode": "frame_preservation"} for r in rows] + mode_rows
    for row, peer in zip(rows + mode_rows, peers):
        if row["reserve_vram_needed_gib"] is None:
            row["why_not"], row["set_instead"] = why_not(peer, peers)


# ------------------------------------------------------------------------------------------------ README section


def _md_table(rows: list[dict], cols: list[str], heads: list[str]) -> str:
    def cell(v) -> str:
        return ("yes" if v else "**no**") if isinstance(v, bool) else f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]) + "\n"


def _fill(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), 118, break_long_words=False, break_on_hyphens=False) + "\n"


def _md_method() -> str:
    return "### 6. VRAM at real size without a GPU (`python benchmarks/vram_estimate.py`)\n\n" + _fill(f"""
ComfyUI's own classes at real size (`WanModel`, `HunyuanVideo`, Wan 2.1 / 2.2 VAE, HunyuanVideo's `AutoencoderKL`,
umt5-xxl and LLaVA-Llama-3-8B + CLIP-L text encoders, our `HistoryEncoder` and `StateMemory`) built under PyTorch's
`FakeTensorMode` (no weights, no GPU) and run in inference mode under `torch.distributed._tools.mem_tracker.MemTracker`.
The DiT runs through the product path: the family adapter's memory wrapper and per-block patches (`install`), memory
tokens as the Storyboard passes them, so every block carries the extra tokens. Attention is PyTorch SDPA (ComfyUI's
`--use-pytorch-cross-attention`, plus `optimized_attention_override`), as a GPU without sageattention runs it. One
segment = 4 latent frames; Wan 832x480, HunyuanVideo 848x480. Cond and uncond run as one batch of 2 when ComfyUI
batches them (`samplers._calc_cond_batch`: while 1.5 x `memory_required` < free memory), else one after the other;
HunyuanVideo T2V is guidance-distilled and runs at cfg 1, where ComfyUI drops the uncond (batch 1). Weights: Wan 2.1
1.3B bf16, Wan 2.1 14B fp8 e4m3fn (bf16 compute, `manual_cast`), Wan 2.2 TI2V 5B bf16 (and fp8), HunyuanVideo 13B
fp8; text encoders fp8-scaled (Comfy-Org files); VAEs bf16. Memory tokens are counted as `benchmarks/tokens.py` counts
the storyboard's history.""") + "\n" + _fill(f"""
Each phase's measurement is replayed through ComfyUI 0.3.75's own loading rules on a {CARD_GIB:g} GiB NVIDIA card
(`Card` / `Patcher` in the script: `load_models_gpu`, `free_memory`, `ModelPatcher.load` / `partially_unload`, module
lists from ComfyUI's `ModelPatcher._load_list`; `minimum_inference_memory` = 0.8 GiB + `EXTRA_RESERVED_VRAM` 0.4 GiB
(Linux; 0.6 GiB on Windows), `NUM_STREAMS` = 2 and `MIN_WEIGHT_MEMORY_RATIO` = 0 on NVIDIA; the DiT's
`memory_required` from `BaseModel.memory_required` with the `memory_usage_factor` of `comfy.supported_models`; the
VAE's `memory_used_decode` / `memory_used_encode` from `comfy/sd.py`). The loop order is `generate_segment`'s: text
encoding (at a shot change), VideoSSM's absorb, sampling, decode (continuing the VAE stream), encode-append (LR clip
through the VAE, encoder, the DiT's patch embedding). Peaks are the larger of the first segment (empty card) and the
next one (steady state), with a {CUDA_CONTEXT_GIB} GiB CUDA context.""") + "\n" + _fill("""
**The memory is declared to ComfyUI** (`models/memory_plan.py`, issue 25): the model that the Storyboard and Apply
Memory patch hands ComfyUI's `_prepare_sampling` (through a `PREPARE_SAMPLING` wrapper) the noise shape with the
memory tokens each forward attends to added as latent volume (a token = the 4 latent cells of a video token), and
counts the same through `memory_usage_factor_conds` in `_calc_cond_batch`; VideoSSM's absorb is declared to
`load_models_gpu` as its `memory_required`. The plan below is what ComfyUI does with that: `ComfyUI plan b2` is its
`memory_required` for cond + uncond, memory included. `tests/test_memory_declared.py` checks on ComfyUI 0.3.75 and
0.33.0 that ComfyUI's plan grows by exactly that.""")


def _shown(rows: list[dict]) -> list[dict]:
    return [{**r, "verdict": verdict(r), **{c: "-" for c in ("absorb_gib", "absorb_declared_gib", "encode_gib") if c not in r}}
            for r in rows]


def _md_tables(rows: list[dict]) -> str:
    cols = ["model", "history_s", "rate", "M", "batch", "dit_act_b2_gib", "comfy_memory_required_b2_gib", "text_gib",
            "sample_gib", "decode_gib", "encode_gib", "peak_plus_margin_gib", "verdict"]
    heads = ["model", "history s", "rate", "memory tokens M", "CFG batch", "DiT act. batch 2", "ComfyUI plan b2",
             "text", "DiT step", "decode", "encode", "max peak + margin", f"fits {TARGET_GIB}"]
    out = (f"\n**Planned peak per phase on a {CARD_GIB:g} GiB card** (GiB, CUDA context included; `DiT act. batch 2`: "
           "the DiT step's activations + inputs at batch 2 alone; margin: see below; last column: `fits` with "
           f"ComfyUI's default `--reserve-vram` {DEFAULT_RESERVE_GIB}, else the smallest `--reserve-vram` that fits, "
           "else `no` and the reason below):\n\n" + _md_table(_shown(rows), cols, heads))
    at = [r for r in rows if r["history_s"] == 120 and r["rate"] == RATES[0]]
    cols = ["model", "text_loaded", "sample_loaded", "decode_loaded", "encode_loaded", "decode"]
    return out + (f"\n**What ComfyUI keeps on the card per phase** (120 s at {RATES[0]}; GiB on the card / model "
                  "size, `low-VRAM`: the rest streams per call; `buffer`: ComfyUI's reserve for the streamed weights in "
                  "flight, counted only while that model runs):\n\n"
                  + _md_table(at, cols, ["model", "text", "DiT step", "decode", "encode", "VAE decode"]))


def _md_verdicts(rows: list[dict], title: str) -> str:
    """The 120 s rows: fit, fit with a reserve, or why not and what to set."""
    at = [r for r in rows if r["history_s"] == 120]
    ok = [f"{r['model']} {_label(r)} ({r['peak_plus_margin_gib']:.2f})" for r in at if r["fits"]]
    res = [f"{r['model']} {_label(r)} (`--reserve-vram {r['reserve_vram_needed_gib']}`: "
           f"{r['reserve_peak_plus_margin_gib']:.2f})" for r in at if not r["fits"] and r["reserve_vram_needed_gib"]]
    no = [f"  - {r['model']} {_label(r)}: {r['why_not']}. Set instead: {r['set_instead']}." for r in at if "why_not" in r]
    return (f"\n**{title} at 120 s of history** (planned peak + margin <= {TARGET_GIB} GiB in every phase, GiB):\n\n"
            f"- fits with ComfyUI's defaults: {', '.join(ok) or 'none'}\n"
            f"- fits with a larger `--reserve-vram` (fewer weights on the card, more streamed per step): "
            f"{', '.join(res) or 'none'}\n- does not fit:" + ("\n" + "\n".join(no) if no else " none") + "\n")


def _md_growth(growth: list[dict]) -> str:
    cols = ["model", "rate", "M_20s", "M_120s", "act_b2_20s", "act_b2_120s", "act_growth_gib", "act_ratio",
            "sample_20s", "sample_120s", "sample_growth_gib"]
    heads = ["model", "rate", "M 20 s", "M 120 s", "DiT act. b2 20 s", "120 s", "growth GiB", "ratio",
             "planned DiT step 20 s", "120 s", "growth GiB"]
    return ("\n**Growth from 20 s to 120 s** (Frame Preservation's memory grows with the history, so its activations "
            "grow too; a bounded memory mode should be flat within 5 %):\n\n" + _md_table(growth, cols, heads))


def _md_levers() -> str:
    return "\nWhat each lever does, under ComfyUI's rules as replayed here:\n" + "\n".join("- " + _fill(t)[:-1].replace(
        "\n", "\n  ") for t in (
        "**The declaration** (built in): ComfyUI unloads or streams enough weights to leave room for the memory "
        "tokens' activations, and splits cond and uncond when the pair does not fit.",
        "**`--reserve-vram G`** (ComfyUI's `EXTRA_RESERVED_VRAM`, default 0.4 GiB) makes ComfyUI keep G more free, so it "
        "loads fewer weights and streams the rest per call: for what ComfyUI's estimate does not see (the allocator's "
        "fragmentation, workspaces), at the cost of speed.",
        "**Partial loading** is automatic: a DiT that does not fit streams its other weights per call (reserved buffer "
        "`(NUM_STREAMS + 1) x` the largest streamed layer); it cannot shrink a step's activations.",
        "**Tiling**: ComfyUI retries an out-of-memory VAE decode with `decode_tiled_3d` (256 px tiles).",
        "**fp8** weights for the bf16 DiTs (loader `weight_dtype`), as the 14B and HunyuanVideo rows use.",
        f"**A coarser rate or a bounded mode**: the DiT's activations follow the attended tokens almost linearly; row "
        f"`{MIXED}` (the last 20 s at 2x2x2, the rest at 4x4x2) is a combination the pack does not offer yet.")) + "\n"


def _md_validation(val: list[dict]) -> str:
    if not val:
        return "\n(validation skipped: run without `--skip-validation`)\n"
    cols = [c for c in ("case", "fake_peak_mib", "real_peak_mib", "diff_pct", "stock_tracker_mib", "profiler_mib",
                        "profiler_vs_fake_pct") if c in val[0]]
    worst = max(abs(r["diff_pct"]) for r in val)
    pct = {r["case"]: r.get("profiler_vs_fake_pct", 0) for r in val}
    dit = max((v for k, v in pct.items() if k not in ("vae", "encoder")), default=0)
    return ("\n**Validation** (small configurations of the same classes and the same product path, fake tensors vs "
            "real CPU tensors under the same tracker; `stock` = the unmodified `MemTracker`; `profiler` = allocator "
            "events of the real run from the PyTorch profiler, MiB):\n\n"
            + _md_table(val, cols, [c.replace("_mib", " MiB").replace("_pct", " %").replace("_", " ") for c in cols])
            + "\n" + _fill(f"""
Fake and real tensors agree within {worst:.2f} % (the difference is the real run's contiguous position tensor), and
the global-peak tracker equals the stock `MemTracker`. The profiler sees what the tracker cannot: op-internal
workspaces: CPU flash attention's blocks (up to {dit:.1f} % on the DiT cases), the CPU's unfolded Conv3d buffers
({pct.get("encoder", 0):.1f} % on the encoder case, {pct.get("vae", 0):.0f} % on the small VAE case; a CPU artefact: a
GPU runs cuDNN, whose PyTorch binding falls back to algorithms with smaller workspaces when memory is short). It does
not see weights the run leaves untouched, which the tracker counts as resident (the absorb case: the read-out layers,
{pct.get("absorb", 0):.1f} %). The bounded-mode cases run the product's top-K selection on real tensors and agree with
the fake runs, whose selection is fixed (see above).""") + "\n" + _fill(f"""
**Margin** added to every planned peak (the CUDA context, {CUDA_CONTEXT_GIB} GiB, is already in the plan, where
ComfyUI also sees it as used memory): {MARGIN['allocator_frac']:.0%} of the phase's activations for the caching
allocator's rounding and fragmentation, {MARGIN['workspaces_gib']} GiB for cuBLAS / cuDNN workspaces, and for the DiT
step with sageattention its quantised q, k (int8) and v (fp16) of one attention call (4 bytes x B x (N + M) x D).
On a GPU, `bash benchmarks/gpu_check.sh` measures these peaks beside this plan."""))


def _md_parts(parts: list[dict]) -> str:
    if not parts:
        return ""
    cols = list(parts[0])
    heads = ["model", "TE weights", "text act.", "DiT weights", "DiT act. b2, no memory", "ComfyUI DiT estimate b2",
             "VAE weights", "decoded latent T x h x w", "decode act.", "tiled decode act. (1 tile)",
             "ComfyUI decode estimate", "LR encode act.", "encoder weights", "append act."]
    return ("\n**Measured parts** (GiB; activation peaks of each part alone; the LR encode and append at 4x4x2; "
            "`ComfyUI ... estimate`: `memory_required` / `memory_used_decode` without memory):\n\n"
            + _md_table(parts, cols, heads))


def _md_modes(modes: list[dict], growth: list[dict]) -> str:
    if not modes:
        return ""
    cols = ["model", "mode", "history_s", "rate", "M", "M_carried", "batch", "dit_act_b2_gib",
            "comfy_memory_required_b2_gib", "state_weights_gib", "cond_host_gib", "text_gib", "absorb_gib",
            "absorb_declared_gib", "sample_gib", "decode_gib", "encode_gib", "peak_plus_margin_gib", "verdict"]
    heads = ["model", "mode", "history s", "rate", "tokens attended M'", "tokens in the conds M", "CFG batch",
             "DiT act. batch 2", "ComfyUI plan b2", "state modules", "conds on the host", "text", "absorb",
             "absorb declared", "DiT step", "decode", "encode", "max peak + margin", f"fits {TARGET_GIB}"]
    gcols = ["model", "mode", "M_20s", "M_120s", "carried_20s", "carried_120s", "act_only_growth_pct", "act_b2_20s",
             "act_b2_120s", "act_b2_growth_pct", "sample_20s", "sample_120s", "sample_growth_pct", "peak_20s",
             "peak_120s", "peak_growth_pct", "flat"]
    gheads = ["model", "mode", "M' 20 s", "M' 120 s", "conds M 20 s", "120 s", "DiT activations alone, growth %",
              "DiT act. + inputs b2 20 s", "120 s", "growth %", "planned DiT step 20 s", "120 s", "growth %",
              "max peak + margin 20 s", "120 s", "growth %", f"flat within {FLAT_TOLERANCE:.0%}"]
    return (_md_modes_method() + "\n**Planned peak per phase, bounded memory modes** (GiB, as the table above; `absorb`: "
            "VideoSSM's state absorb before sampling, one latent frame per call; `state modules`: VideoSSM's float32 "
            "`StateMemory`, loaded with the DiT; `conds on the host`: the memory conds in CPU RAM, full count):\n\n"
            + _md_table(_shown(modes), cols, heads)
            + "\n**Growth from 20 s to 120 s, bounded modes vs Frame Preservation at the same rate** (`flat`: the "
            f"step's activations + inputs, the planned step and the max peak + margin all within {FLAT_TOLERANCE:.0%}; "
            "`M'`: tokens the blocks attend to, `conds M`: tokens carried in the conds):\n\n"
            + _md_table(growth, gcols, gheads) + _md_verdicts(modes, "Bounded modes"))


def _md_modes_method() -> str:
    from framememory.memory.designs.pack_forcing import DEFAULTS as PACK_DEFAULTS
    from framememory.memory.designs.video_ssm import DEFAULTS as SSM_DEFAULTS
    from framememory.models.memory_modes import ABSORB_FRAMES
    from framememory.models.memory_plan import ABSORB_FACTOR

    pf, ssm = PACK_DEFAULTS, SSM_DEFAULTS
    return "\n" + _fill(f"""**Bounded memory modes** (`models/memory_modes.py`, Wan only: {", ".join(MODE_MODELS)};
20 / 60 / 120 s), through the same product path and the same ComfyUI replay. *PackForcing* (`pack_forcing`, defaults
S {pf["sink_latent_frames"]}, R {pf["overlap_latent_frames"]}, top-K {pf["top_k"]}, mid blocks from the Fig. 2
encoder at {MODE_RATE}): the conds carry the sink and recent latent frames uncompressed (1560 tokens each on Wan 2.1
at 832x480, 390 on Wan 2.2 5B) and every compressed mid block of the history (91 tokens a block on Wan 2.1, 18 on the
5B); `models/families/wan21.py`'s `pack_context` scores all mid blocks against the segment's queries and keeps K per forward, so
the blocks attend to a bounded M' (what the pack declares to ComfyUI) while the conds (M) and the scoring pass grow
with the history. It appends with the Fig. 2 encoder like Frame Preservation (`encode`). *VideoSSM* (`video_ssm`, S
{ssm["sink_latent_frames"]}, R {ssm["overlap_latent_frames"]}): sink + recent frames uncompressed and a gated
delta-rule state `[H, dv, dk]` per block (dv {SSM_VALUE_DIM}, H = D / dv: 12 heads on the 1.3B, 40 on the 14B, 24 on
the 5B; dk {SSM_KEY_DIM}; trained state modules on every block), read out after each block by `StateMemory.read`. Its
`StateMemory` (float32, as `MemoryEncoder.network` builds it whatever the file's dtype: `absorb_proj` D x
L*H*(dk+dv+2), per block `read_proj` D x (H*dk+H) and `out` D x D) is the DiT's additional model, so ComfyUI loads it
with the DiT for sampling; in the DiT step only the read-out layers run. Before sampling, the frames that left the
window (4 latent frames a segment) are absorbed {ABSORB_FRAMES} latent frame per call (`memory_modes.absorbed_state`):
the frame's patch embedding (loads the DiT), then `memory_plan.load_for_absorb` loads the state modules with the
absorb declared as `memory_required` ({ABSORB_FACTOR} x its float32 projection at the padded length, `absorb
declared`), then `StateMemory.absorb` on the card (`absorb_proj` for all blocks at once, then `gated_delta_rule`
batched over the blocks, torch path in chunks of 64, as without the optional fla-core). VideoSSM has no encoder.
Everything, `StateMemory` included, runs under the fake mode: the conds' labels, window sizes and positions are
FakeTensor constants, so the product's selection and re-packing run on them; only the top-K choice (it depends on
score values fake tensors lack) keeps the most recent K blocks, all blocks being the same size (the validation runs
the real choice on real tensors). `conds on the host`: the carried tokens float32, positions, labels, state, and the
float32 cond + uncond concatenation ComfyUI makes before casting them to the card in bf16 (that bf16 copy is in the
DiT step's inputs).""")


def markdown(rows: list[dict], growth: list[dict], val: list[dict], parts: list[dict], modes: list[dict] = (),
             mode_growth_: list[dict] = ()) -> str:
    """The README section (benchmarks/results/vram_estimate.md)."""
    return (_md_method() + _md_tables(rows) + _md_verdicts(rows, "Frame Preservation") + _md_growth(growth)
            + _md_modes(list(modes), list(mode_growth_)) + _md_levers() + _md_parts(parts) + _md_validation(val))


def write_markdown(rows: list[dict], growth: list[dict], val: list[dict], parts: list[dict], modes: list[dict] = (),
                   mode_growth_: list[dict] = ()) -> str:
    md = os.path.join(ROOT, "benchmarks", "results", "vram_estimate.md")
    with open(md, "w") as f:
        f.write(markdown(rows, growth, val, parts, modes, mode_growth_))
    return md


def write_markdown_from_json() -> None:
    import json

    with open(os.path.join(ROOT, "benchmarks", "results", "vram_estimate.json")) as f:
        data = json.load(f)
    import_comfyui(cpu=True, sdpa=True)  # the modes' text reads models.memory_modes' defaults
    print("written:", write_markdown(data["rows"], data["growth"], data["validation"], data.get("parts", []),
                                     data.get("mode_rows", []), data.get("mode_growth", [])))
