"""Benchmark 6 (issue 13, point 1): VRAM at real size without a GPU, per phase of the storyboard loop.

Usage:
  python benchmarks/vram_estimate.py                 # all models (+ the 5B in fp8) and modes, 7-9 min on 2 shared cores
  python benchmarks/vram_estimate.py --models wan21_1.3b_bf16 --skip-validation   # one model, quick
  python benchmarks/vram_estimate.py --skip-modes    # without the PackForcing / VideoSSM rows

Method (docs/design.md section 6). ComfyUI's own model classes are built at real size under
``torch._subclasses.fake_tensor.FakeTensorMode`` (no weights, no GPU) and run in inference mode under
``torch.distributed._tools.mem_tracker.MemTracker`` (:func:`peak_tracker_class`: same accounting, global peak only).
The DiT runs through the product path: the memory wrapper and per-block patches that ``models.families.install_memory``
installs on the bare DiT (the family modules ``models/families/wan21.py``, ``wan22.py``, ``hunyuan_video.py``, as
``transformer_options``), with memory tokens and positions as the Storyboard passes them, so every block
sees the extra tokens. Attention: PyTorch SDPA, chosen ComfyUI's documented way (the ``--use-pytorch-cross-attention``
flag, ``comfy.cli_args.args.use_pytorch_cross_attention = True`` before ``comfy.model_management`` is imported, so
``comfy.ldm.modules.attention.optimized_attention is attention_pytorch``), and per call through
``transformer_options["optimized_attention_override"]`` (``models.attention.attention_override("sdpa")``). SDPA
reaches the tracker as one op whose only allocation is its output, as with a GPU's flash / memory-efficient kernels
(their fp32 log-sum-exp, B x heads x L, is negligible): no L x L attention matrix.

Phases per 1 s segment (4 latent frames; Wan 832x480, HunyuanVideo 848x480): text encoding (umt5-xxl fp8-scaled
for Wan, LLaVA-Llama-3-8B fp8-scaled + CLIP-L for HunyuanVideo), one DiT step with 0 / 20 / 60 / 120 s of history as
memory tokens at 4x4x2 and 2x2x2 (counted like benchmarks/tokens.py: the storyboard's continuous segments),
the VAE decode of one segment (untiled, and ComfyUI's tiled fallback), the memory-encoder append (LR clip through
the VAE, the DiT's patch embedding, HR branch at widths 64..512). Each phase's measurement is fed to :class:`Card`,
a replay of ``comfy.model_management.load_models_gpu`` / ``free_memory`` and ``ModelPatcher.load`` /
``partially_unload`` on a 12 GiB NVIDIA card (module lists from ComfyUI's own ``ModelPatcher._load_list``), which
says what stays loaded per phase and gives the peak per phase as ComfyUI 0.3.75 runs the pack, the memory declared to
its ``memory_required`` as ``models/memory_plan.py`` declares it (issue 25), plus the smallest ``--reserve-vram`` that
fits. A margin (:data:`MARGIN`) covers what the tracker cannot see. Rows that fit at no reserve say why and what to
set instead (``why_not`` / ``set_instead``, benchmarks/vram_report.py, which also writes the README section).

Bounded memory modes (:data:`MODES`, ``models/memory_modes.py``; :data:`MODE_MODELS` at 20 / 60 / 120 s): PackForcing
(sink + top-K compressed mid blocks + recent frames, selected per forward by ``models/families/wan21.py``'s ``pack_context``
from conds that carry the whole compressed history) and VideoSSM (sink + recent frames and a gated delta-rule state per
block, read out after every block by ``StateMemory.read``; its state modules loaded with the DiT, and the absorb of
the frames leaving the window as a phase of its own) through the same product path and replay (:func:`mode_rows`).
The conds' index metadata are FakeTensor constants (:class:`fake_constants`), so the product's selection code runs.

Validation (:func:`validate`): seven small configurations (Wan bf16 / fp8 and HunyuanVideo fp8 DiTs with memory
through the product path, a Wan VAE decode, the encoder append) run on fake and on real CPU tensors under the same
tracker (two also under the stock MemTracker), plus the Wan DiT in each bounded mode; the real runs' allocations are
also counted by the PyTorch profiler.
Modules: the models and the card (benchmarks/vram_specs.py), the measurement (vram_measure.py), ComfyUI's loader
replay (vram_plan.py), the validation (vram_validate.py), the rows and this command (here), the verdicts and the
README section (vram_report.py).
Prints tables, writes benchmarks/results/vram_estimate.json (``rows``, ``mode_rows``: benchmarks/gpu_check.py reads
them) and the README section benchmarks/results/vram_estimate.md.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Literal

import tyro

from common import print_table, write_result
from framememory.headless.comfy_import import import_comfyui
import vram_report
from vram_measure import (absorb_step, attention_name, build_state_memory, build_text_encoder, build_vae, build_dit,
                          dit_options, dit_step, encoder_append, fake_mode, load_list, mode_config, mode_step,
                          text_encode, vae_decode, vae_encode_lr)
from vram_plan import NUM_STREAMS, dit_memory_required, margin_bytes, plan, vae_memory_used
from vram_specs import (CARD_GIB, CUDA_CONTEXT_GIB, DEFAULT_RESERVE_GIB, FLAT_TOLERANCE, GIB, HISTORIES, MARGIN, MIXED,
                        MODE_HISTORIES, MODE_MODELS, MODE_RATE, MODELS, MODES, RATES, TARGET_GIB)
from vram_validate import validate

# ------------------------------------------------------------------------------------------------ per model


def measure_parts(spec: dict, log=print) -> tuple[dict, dict, object, tuple]:
    """Build the text encoder, VAE, DiT and encoders of ``spec`` under the active fake mode and measure the
    history-independent phases. Returns ``(meas, lists, dit_act, (dm, opts))``: ``meas[rate]`` per-phase dicts,
    ``lists`` the module lists per model (``lists["enc"][rate]``), ``dit_act(seconds, rate, batch)`` a cached DiT-step
    measurement, the DiT and its ``transformer_options``."""
    t0 = time.perf_counter()
    te = build_text_encoder(spec)
    text, lists = text_encode(spec, te), {"te": load_list(te)}
    del te
    vae = build_vae(spec)
    dec, tiled = vae_decode(spec, vae, tiled=False), vae_decode(spec, vae, tiled=True)
    lists["vae"] = load_list(vae)
    dm = build_dit(spec)
    opts, lists["dit"], lists["enc"] = dit_options(spec, dm), load_list(dm), {}
    meas = {}
    for rate in RATES:
        app = encoder_append(spec, dm, rate)
        lists["enc"][rate] = load_list(app.pop("net"))
        meas[rate] = {"text": text, "decode": dec, "decode_tiled": tiled, "lr_encode": vae_encode_lr(spec, vae, rate),
                      "append": app}
    meas[MIXED], lists["enc"][MIXED] = meas["2x2x2"], lists["enc"]["2x2x2"]  # new segments at the fine rate
    log(f"  parts measured in {time.perf_counter() - t0:.1f} s")
    cache: dict = {}

    def dit_act(seconds: int, rate: str, batch: int) -> dict:
        key = (seconds, rate if seconds else "-", batch)
        if key not in cache:
            t1 = time.perf_counter()
            cache[key] = dit_step(spec, dm, opts, batch, seconds, rate)
            log(f"  DiT step {seconds:>3} s {key[1]:>5} batch {batch}: M={cache[key]['M']:>6} "
                f"act {cache[key]['act'] / GIB:.2f} GiB ({time.perf_counter() - t1:.1f} s)")
        return cache[key]

    return meas, lists, dit_act, (dm, opts)


def case_row(name: str, spec: dict, seconds: int, rate: str, meas: dict, lists: dict, dit_act) -> dict:
    """One table row: ComfyUI's plan for ``seconds`` of history at ``rate`` as the pack runs it (memory declared,
    ``models.memory_plan``): per-phase peaks (GiB, CUDA context included), what is loaded, margins, the verdict
    against :data:`TARGET_GIB`, and the smallest ``--reserve-vram`` with which it fits. ``meas`` / ``lists``: this
    rate's (or memory mode's) measurements and module lists, as :func:`plan` takes them."""
    def step_bytes(batch: int) -> float:  # activations + the step's inputs (latent, text, memory tokens on the card)
        m = dit_act(seconds, rate, batch)
        return m["act"] + m["inputs"]

    b2, dim = dit_act(seconds, rate, 2), spec["dit"].get("dim", spec["dit"].get("hidden_size"))
    tokens = b2["M"] + b2["N"]
    phases = plan(spec, meas, lists, step_bytes, b2["M"])
    row = {"model": name, "history_s": seconds, "rate": rate if seconds else "-", "M": b2["M"], "N": b2["N"],
           "dit_weights_gib": round(b2["weights"] / GIB, 2), "dit_act_b2_gib": round(step_bytes(2) / GIB, 2),
           "dit_act_only_b2_gib": round(b2["act"] / GIB, 3), "dit_act_b1_gib": round(step_bytes(1) / GIB, 2),
           "comfy_memory_required_b2_gib": round(dit_memory_required(spec, 2, b2["M"]) / GIB, 2),
           "comfy_memory_declared_b2_gib": round((dit_memory_required(spec, 2, b2["M"]) - dit_memory_required(
               spec, 2)) / GIB, 2),
           "batch": phases["sample"]["batch"], "decode": "tiled (OOM fallback)" if phases["decode"]["tiled"] else "untiled"}
    for ph in phases:  # text, (absorb), sample, decode, (encode)
        row[f"{ph}_gib"] = round(phases[ph]["peak"] / GIB, 2)
        row[f"{ph}_margin_gib"] = round(margin_bytes(ph, phases[ph]["act"], phases[ph].get("batch", 1), tokens, dim) / GIB, 2)
        row[f"{ph}_loaded"] = phases[ph]["loaded"]
    row["peak_gib"] = max(row[f"{ph}_gib"] for ph in phases)
    row["peak_plus_margin_gib"] = round(_worst(phases, tokens, dim) / GIB, 2)
    row["fits"] = row["peak_plus_margin_gib"] <= TARGET_GIB  # the target: peak + margin <= 11.5 GiB
    reserve = reserve_needed(spec, meas, lists, step_bytes, b2["M"], tokens, dim)
    row["reserve_vram_needed_gib"] = reserve
    if reserve is not None and reserve > DEFAULT_RESERVE_GIB:
        at = plan(spec, meas, lists, step_bytes, b2["M"], reserve=reserve * GIB)
        row.update(reserve_peak_plus_margin_gib=round(_worst(at, tokens, dim) / GIB, 2),
                   reserve_batch=at["sample"]["batch"], reserve_sample_loaded=at["sample"]["loaded"])
    if "absorb" in phases:
        row.update(absorb_declared_gib=round(meas["absorb"]["declared"] / GIB, 2),
                   state_root_on_card=phases["sample"]["state_root"])
    return row


def reserve_needed(spec: dict, meas: dict, lists: dict, step_bytes, attended: int, tokens: int, dim: int):
    """Smallest ``--reserve-vram`` (GiB, 0.1 steps from ComfyUI's 0.4 to 4) with which the plan's peak + margin stays
    <= :data:`TARGET_GIB` in every phase, or None."""
    for tenth in range(round(DEFAULT_RESERVE_GIB * 10), 41):
        if _worst(plan(spec, meas, lists, step_bytes, attended, reserve=tenth / 10 * GIB), tokens, dim) <= TARGET_GIB * GIB:
            return tenth / 10
    return None


def _worst(phases: dict, tokens: int, dim: int) -> float:
    """Largest planned peak + margin over the phases, bytes."""
    return max(p["peak"] + margin_bytes(ph, p["act"], p.get("batch", 1), tokens, dim) for ph, p in phases.items())


def growth_rows(rows: list[dict]) -> list[dict]:
    """Per model and rate: the DiT step's activations (batch 2) and planned sampling peak at 20 s and 120 s."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for rate in RATES:
            at = {r["history_s"]: r for r in rows if r["model"] == model and r["rate"] == rate}
            if 20 not in at or 120 not in at:
                continue
            a, b = at[20], at[120]
            out.append({"model": model, "rate": rate, "M_20s": a["M"], "M_120s": b["M"],
                        "act_b2_20s": a["dit_act_b2_gib"], "act_b2_120s": b["dit_act_b2_gib"],
                        "act_growth_gib": round(b["dit_act_b2_gib"] - a["dit_act_b2_gib"], 2),
                        "act_ratio": round(b["dit_act_b2_gib"] / a["dit_act_b2_gib"], 2),
                        "sample_20s": a["sample_gib"], "sample_120s": b["sample_gib"],
                        "sample_growth_gib": round(b["sample_gib"] - a["sample_gib"], 2)})
    return out


def mode_parts(spec: dict, mode: str, meas: dict, lists: dict, dit_act, dit, log=print) -> tuple[dict, dict, object]:
    """``(meas, lists, act)`` of ``mode`` for :func:`case_row`: PackForcing appends like Frame Preservation at
    :data:`MODE_RATE` (same encoder); VideoSSM has no encode phase but the absorb (:func:`absorb_step`, one call of
    ``ABSORB_FRAMES`` latent frames, as ``memory_modes.absorbed_state`` runs it) and its state
    modules (``lists["ssm"]``) loaded with the DiT. ``act(seconds, rate, batch)``: :func:`mode_step`, cached (0 s: the
    DiT without memory, ``dit_act``). ``dit``: ``(dm, opts)`` of :func:`measure_parts`. Call under its fake mode."""
    dm, opts = dit
    meas, lists, ssm = dict(meas[MODE_RATE]), {**lists, "enc": lists["enc"][MODE_RATE]}, None
    if mode == "video_ssm":
        ssm = build_state_memory(spec)
        meas = {k: meas[k] for k in ("text", "decode", "decode_tiled")}
        from framememory.models.memory_modes import ABSORB_FRAMES

        meas["absorb"], lists = absorb_step(spec, ssm, ABSORB_FRAMES), {**lists, "ssm": load_list(ssm)}
        del lists["enc"]
        log(f"  {mode} absorb of {meas['absorb']['tokens']} tokens: act {meas['absorb']['act'] / GIB:.2f} GiB "
            f"(declared {meas['absorb']['declared'] / GIB:.2f}), state modules "
            f"{sum(x[1] for x in lists['ssm']) / GIB:.2f} GiB")
    cache: dict = {}

    def act(seconds: int, rate: str, batch: int) -> dict:
        if not seconds:
            return dit_act(0, rate, batch)
        if (seconds, batch) not in cache:
            t1 = time.perf_counter()
            cache[seconds, batch] = m = mode_step(spec, dm, opts, batch, seconds, mode, ssm)
            log(f"  {mode} DiT step {seconds:>3} s batch {batch}: M={m['M']:>6} (carried {m['M_carried']:>6}) "
                f"act {m['act'] / GIB:.2f} GiB ({time.perf_counter() - t1:.1f} s)")
        return cache[seconds, batch]

    return meas, lists, act


def mode_rows(name: str, spec: dict, meas: dict, lists: dict, dit_act, dit, log=print) -> list[dict]:
    """Rows of the bounded memory modes (:data:`MODES`) for one model at :data:`MODE_HISTORIES`: :func:`case_row`
    (the same ComfyUI replay) plus the mode, the tokens carried in the conds and their host memory, the state
    modules, and for VideoSSM the absorb's activations and the bytes declared for it."""
    rows = []
    for mode in MODES:
        m_meas, m_lists, act = mode_parts(spec, mode, meas, lists, dit_act, dit, log)
        rate = MODE_RATE if mode == "pack_forcing" else "-"
        for s in MODE_HISTORIES:
            row, step = {"mode": mode, **case_row(name, spec, s, rate, m_meas, m_lists, act)}, act(s, rate, 2)
            row.update(rate=rate, M_carried=step["M_carried"],
                       cond_host_gib=round(cond_host_bytes(spec, mode, step) / GIB, 3),
                       dit_weights_gib=round(sum(x[1] for x in lists["dit"]) / GIB, 2),
                       state_weights_gib=round(sum(x[1] for x in m_lists.get("ssm", [])) / GIB, 2))
            if "absorb" in m_meas:
                row.update(absorb_act_gib=round(m_meas["absorb"]["act"] / GIB, 2),
                           absorb_proj_gib=round(max(x[1] for x in m_lists["ssm"]) / GIB, 2))
            rows.append(row)
    return rows


def cond_host_bytes(spec: dict, mode: str, step: dict) -> float:
    """Host (CPU) memory of one segment's memory conds (``conds.attach_memory`` on positive and negative): the carried
    tokens float32 ``[M, D]`` (shared by both), twice the int64 positions ``[M, 3]``, PackForcing's labels ``[M]``,
    VideoSSM's float32 state ``[L, H, dv, dk]``, plus ``samplers._calc_cond_batch``'s float32 concatenation of cond +
    uncond ``[2, M, D]`` (and ``[2, L, H, dv, dk]``) made on the host before ComfyUI casts it to the device in bf16
    (``convert_tensor``)."""
    cfg, m = mode_config(spec, mode), step["M_carried"]
    state = cfg.dit_blocks * cfg.dim * cfg.ssm_key_dim * 4 if mode == "video_ssm" else 0
    return 4 * m * cfg.dim * 3 + 2 * 8 * 3 * m + (8 * m if mode == "pack_forcing" else 0) + 3 * state


def mode_growth(mode_rows_: list[dict], rows: list[dict]) -> list[dict]:
    """Per model and mode (and Frame Preservation at the same rate for comparison): attended and carried tokens, the
    DiT step's activations alone and with its inputs (batch 2), the planned DiT step and the max planned peak +
    margin, at 20 s and 120 s; ``flat``: the last three stay within :data:`FLAT_TOLERANCE` (the issue's target)."""
    out = []
    fp = [{**r, "mode": "frame_preservation", "M_carried": r["M"]} for r in rows if r["rate"] == MODE_RATE]
    for model in dict.fromkeys(r["model"] for r in mode_rows_):
        for mode in ("frame_preservation", *MODES):
            at = {r["history_s"]: r for r in fp + mode_rows_ if r["model"] == model and r["mode"] == mode}
            if 20 not in at or 120 not in at:
                continue
            a, b = at[20], at[120]
            row = {"model": model, "mode": mode, "M_20s": a["M"], "M_120s": b["M"],
                   "carried_20s": a["M_carried"], "carried_120s": b["M_carried"]}
            for key, col in (("dit_act_only_b2_gib", "act_only"), ("dit_act_b2_gib", "act_b2"), ("sample_gib", "sample"),
                             ("peak_plus_margin_gib", "peak")):
                row.update({f"{col}_20s": a[key], f"{col}_120s": b[key], f"{col}_growth_pct": _pct(a[key], b[key])})
            row["flat"] = all(abs(row[f"{c}_growth_pct"]) <= 100 * FLAT_TOLERANCE for c in ("act_b2", "sample", "peak"))
            out.append(row)
    return out


def _pct(a: float, b: float) -> float:
    return round(100 * (b - a) / a, 1)


def cases() -> list[tuple[int, str]]:
    """``(history seconds, rate)`` of the table: no memory, then every history length at every rate, then 120 s
    with the last 20 s at 2x2x2 and the rest at 4x4x2."""
    return [(0, RATES[0])] + [(s, r) for r in RATES for s in HISTORIES if s] + [(120, MIXED)]


def run_models(names: list[str], log=print, modes: bool = True) -> tuple[list[dict], list[dict], list[dict]]:
    """``(rows, parts, mode_rows)``: :func:`case_row` for every model in ``names``, history length and rate,
    :func:`parts_row` per model, and (``modes``) :func:`mode_rows` for the models of :data:`MODE_MODELS`."""
    rows, parts, modes_ = [], [], []
    for name in names:
        spec = MODELS[name]
        log(f"{name}:")
        with fake_mode():
            meas, lists, dit_act, dit = measure_parts(spec, log)
            rows += [case_row(name, spec, s, r, meas[r], {**lists, "enc": lists["enc"][r]}, dit_act)
                     for s, r in spec.get("cases", cases())]
            parts.append(parts_row(name, spec, meas, lists, dit_act))
            if modes and name in MODE_MODELS:
                modes_ += mode_rows(name, spec, meas, lists, dit_act, dit, log)
    return rows, parts, modes_


def parts_row(name: str, spec: dict, meas: dict, lists: dict, dit_act) -> dict:
    """The history-independent measurements of one model (GiB): weights and activation peaks per part, and ComfyUI's
    own estimates for them (``memory_required``, ``memory_used_decode``)."""
    m = meas[RATES[0]]
    size = {k: sum(x[1] for x in v) / GIB for k, v in lists.items() if k != "enc"}
    return {"model": name, "te_weights": round(size["te"], 2), "text_act": round(m["text"]["act"] / GIB, 2),
            "dit_weights": round(size["dit"], 2), "dit_act_b2_0s": round(dit_act(0, RATES[0], 2)["act"] / GIB, 2),
            "comfy_dit_required_b2": round(dit_memory_required(spec, 2) / GIB, 2),
            "vae_weights": round(size["vae"], 2), "decode_latent": "x".join(map(str, m["decode"]["latent"][2:])),
            "decode_act": round(m["decode"]["act"] / GIB, 2), "decode_tiled_act": round(m["decode_tiled"]["act"] / GIB, 2),
            "comfy_decode_required": round(vae_memory_used(spec, m["decode"]["latent"], True) / GIB, 2),
            "lr_encode_act": round(m["lr_encode"]["act"] / GIB, 3),
            "encoder_weights": round(sum(x[1] for x in lists["enc"][RATES[0]]) / GIB, 3),
            "append_act": round(m["append"]["act"] / GIB, 3)}


TABLE = ["model", "history_s", "rate", "M", "batch", "dit_act_b2_gib", "text_gib", "sample_gib", "decode_gib",
         "encode_gib", "peak_plus_margin_gib", "fits", "reserve_vram_needed_gib"]


@dataclasses.dataclass(frozen=True)
class Args:
    """Benchmark 6: VRAM at real size without a GPU, per phase of the storyboard loop."""

    models: tuple[Literal[tuple(MODELS)], ...] = tuple(MODELS)  # type: ignore[valid-type]
    """models to estimate (default all)"""
    skip_validation: bool = False
    """skip the fake-vs-real validation on small configurations"""
    skip_modes: bool = False
    """no PackForcing / VideoSSM rows"""
    markdown_only: bool = False
    """rewrite results/vram_estimate.md from results/vram_estimate.json without measuring"""


def print_rows(rows: list[dict], parts: list[dict], growth: list[dict], modes: list[dict], mgrowth: list[dict]) -> None:
    """The tables of a run (GiB), and each row's verdict that does not fit."""
    print("\nmeasured parts (GiB; act = activation peak of the part alone):")
    print_table(parts, list(parts[0]))
    print(f"\nplanned peak per phase on a {CARD_GIB:g} GiB card (GiB, incl. {CUDA_CONTEXT_GIB} GiB CUDA context):")
    print_table(rows, TABLE, digits=2)
    print("\ngrowth of the DiT step from 20 s to 120 s of history:")
    print_table(growth, list(growth[0]) if growth else ["model"])
    for r in (r for r in rows + modes if "why_not" in r):
        print(f"  {r['model']} {r.get('mode', '')} {r['history_s']} s {r['rate']}: {r['why_not']}; set {r['set_instead']}")
    if modes:
        print("\nbounded memory modes (GiB):")
        print_table(modes, ["mode", *TABLE[:3], "M_carried", *TABLE[3:8], "absorb_gib", *TABLE[8:]], digits=2)
        print("\ngrowth from 20 s to 120 s, bounded modes vs Frame Preservation:")
        print_table(mgrowth, list(mgrowth[0]))


def main(args: Args) -> None:
    if args.markdown_only:
        return vram_report.write_markdown_from_json()
    t0 = time.perf_counter()
    import_comfyui(cpu=True, sdpa=True)
    print(f"attention: {attention_name()} (ComfyUI --use-pytorch-cross-attention) + optimized_attention_override sdpa")
    val = []
    if not args.skip_validation:
        val = validate()
        print("\nvalidation (small configurations, fake vs real CPU tensors, MiB):")
        print_table(val, list(val[0]))
    rows, parts, modes = run_models(list(args.models), modes=not args.skip_modes)
    growth, mgrowth = growth_rows(rows), mode_growth(modes, rows)
    vram_report.add_why_not(rows, modes)
    print_rows(rows, parts, growth, modes, mgrowth)
    extra = {"attention": attention_name(), "card_gib": CARD_GIB, "cuda_context_gib": CUDA_CONTEXT_GIB,
             "target_gib": TARGET_GIB, "margin": MARGIN, "num_streams": NUM_STREAMS, "validation": val,
             "growth": growth, "parts": parts, "models": MODELS, "mode_rows": modes, "mode_growth": mgrowth,
             "seconds": round(time.perf_counter() - t0, 1)}
    print("written:", write_result("vram_estimate", rows, extra))
    print("written:", vram_report.write_markdown(rows, growth, val, parts, modes, mgrowth),
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__.split("\n")[0]))
