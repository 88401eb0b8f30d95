"""ComfyUI's loader, replayed (benchmarks/vram_estimate.py): ``comfy.model_management.load_models_gpu`` /
``free_memory`` and ``ModelPatcher.load`` / ``partially_unload`` on a 12 GiB NVIDIA card (:class:`Card`,
:class:`Patcher`), fed with the measured phases (benchmarks/vram_measure.py) to say what stays loaded per phase and
the peak per phase as ComfyUI 0.3.75 runs the pack (:func:`plan`), plus the margin the tracker cannot see
(:func:`margin_bytes`). Bytes throughout."""
from __future__ import annotations

import dataclasses
import math

from vram_specs import CARD_GIB, CUDA_CONTEXT_GIB, GIB, MARGIN, MIB, PATCH_VOLUME, SEGMENT_LATENTS

# comfy.model_management on an NVIDIA card (this machine has none, so they cannot be read from the module):
NUM_STREAMS = 2            # async weight offload streams, "Enable by default on Nvidia"
MIN_WEIGHT_MEMORY_RATIO = 0.0  # "if is_nvidia(): MIN_WEIGHT_MEMORY_RATIO = 0.0"


@dataclasses.dataclass(eq=False)
class Patcher:
    """A model patcher as ``comfy.model_management`` sees it: its leaf modules (:func:`load_list`), which of them are
    on the card, the offload buffer ComfyUI reserved for streaming the others (``model_offload_buffer_memory``), and
    whether parameters outside the leaf modules (VideoSSM's ``distance_weight``) are on the card: ``ModelPatcher.load``
    moves them only on a complete load with ``full_load`` (``self.model.to(device_to)``), a full unload (``detach``)
    moves them back, a partial unload leaves them."""

    name: str
    modules: list
    loaded: set = dataclasses.field(default_factory=set)
    buffer: int = 0
    lowvram: bool = False
    root: bool = False

    @property
    def size(self) -> int:
        return sum(m[1] for m in self.modules)

    @property
    def on_card(self) -> int:
        return sum(self.modules[i][1] for i in self.loaded)

    def _order(self, largest_first: bool) -> list[int]:
        return sorted(range(len(self.modules)), key=lambda i: self.modules[i][:2], reverse=largest_first)

    def load(self, lowvram_model_memory: float, full: bool) -> None:
        """``ModelPatcher.load``: largest modules first; a module goes on the card while the loaded bytes, its bytes and
        the offload buffer (``(NUM_STREAMS + 1) x`` the largest streamed module) stay below the budget; castable
        modules that do not fit stream their weights per call (low-VRAM)."""
        mem = buffer = 0
        loaded, lowvram = set(), False
        for i in self._order(largest_first=True):
            off, size, castable = self.modules[i][:3]
            potential = max(buffer, off * (NUM_STREAMS + 1))
            fits = mem + size + potential < lowvram_model_memory
            if not full and castable and not fits:
                buffer, lowvram = potential, True
            elif full or fits:
                mem += size
                loaded.add(i)
            else:
                buffer = potential
        self.loaded, self.buffer, self.lowvram = loaded, buffer, lowvram
        self.root = self.root or (full and not lowvram)

    def partially_unload(self, memory_to_free: float) -> int:
        """``ModelPatcher.partially_unload``: smallest loaded modules first until ``memory_to_free`` (plus any growth
        of the offload buffer) is freed. Returns the bytes freed."""
        old = buffer = self.buffer
        freed = 0
        for i in self._order(largest_first=False):
            if memory_to_free + buffer - old < freed:
                break
            if i in self.loaded:
                self.loaded.discard(i)
                freed += self.modules[i][1]
                buffer = max(buffer, (NUM_STREAMS + 1) * self.modules[i][0])
        self.buffer, self.lowvram = buffer, True
        return freed

    def partially_load(self, extra_memory: float) -> None:
        """``ModelPatcher.partially_load`` (called by ``LoadedModel.model_load`` with the low-VRAM budget)."""
        if extra_memory < 0:
            self.partially_unload(-extra_memory)
        elif self.lowvram or self.on_card == 0:
            self.load(self.on_card + extra_memory, full=self.on_card + extra_memory > self.size)

    def in_flight(self, runs: tuple[str, ...] | None = None) -> int:
        """Streamed weights in flight while this model computes (0 unless low-VRAM): ComfyUI's reserved buffer, or with
        ``runs`` (name prefixes of the modules that compute in this phase, for a model of which only some modules run)
        ``min(their streamed modules, NUM_STREAMS + 1) x`` the largest of them."""
        if not self.lowvram or runs is None:
            return self.buffer if self.lowvram else 0
        off = [m[0] for i, m in enumerate(self.modules) if i not in self.loaded and m[3].startswith(runs)]
        return min(len(off), NUM_STREAMS + 1) * max(off, default=0)

    def state(self) -> str:
        if not self.loaded and not self.lowvram:
            return f"{self.name} off"
        extra = f" low-VRAM, buffer {self.buffer / GIB:.2f}" if self.lowvram else ""
        return f"{self.name} {self.on_card / GIB:.2f}/{self.size / GIB:.2f}{extra}"


class Card:
    """``comfy.model_management``'s loaded-model list on one NVIDIA card of ``total`` bytes (0.3.75 rules; module
    constants of an NVIDIA machine: :data:`NUM_STREAMS`, :data:`MIN_WEIGHT_MEMORY_RATIO`; ``minimum_inference_memory``
    and ``extra_reserved_memory`` read from ComfyUI, Linux values). Free memory = total - CUDA context - weights on the
    card (the caching allocator's free blocks count as free, as ``get_free_memory`` counts them). ``reserve``: the
    ``EXTRA_RESERVED_VRAM`` bytes (``--reserve-vram``; None: ComfyUI's default read from the module). Not modelled:
    the ``sys.getrefcount`` tie-break of ``free_memory`` (equal offloaded bytes are ordered by size instead), pinned
    memory, LoRA patches."""

    def __init__(self, total: float, context: float, reserve: float | None = None) -> None:
        import comfy.model_management as mm

        self.total, self.context = total, context
        self.reserve = mm.extra_reserved_memory() if reserve is None else reserve
        # minimum_inference_memory() = 0.8 GiB + extra_reserved_memory()
        self.inference = mm.minimum_inference_memory() - mm.extra_reserved_memory() + self.reserve
        self.models: list[Patcher] = []   # current_loaded_models, most recently loaded first
        self.known: list[Patcher] = []    # everything with weights on the card

    def free(self) -> float:
        return self.total - self.context - sum(p.on_card for p in self.known)

    def _unload(self, p: Patcher, memory_to_free: float) -> bool:
        """``LoadedModel.model_unload``: a partial unload when that frees enough, else the whole model."""
        if memory_to_free < p.on_card and p.partially_unload(memory_to_free) >= memory_to_free:
            return False
        p.loaded, p.buffer, p.lowvram, p.root = set(), 0, False, False
        return True

    def free_memory(self, required: float) -> None:
        """``free_memory``: unload models (most offloaded first) until ``required`` bytes are free."""
        order = sorted(range(len(self.models)), key=lambda i: (-(self.models[i].size - self.models[i].on_card), self.models[i].size))
        gone = []
        for i in order:
            if self.free() > required:
                break
            if self._unload(self.models[i], required - self.free()):
                gone.append(self.models[i])
        self.models = [p for p in self.models if p not in gone]

    def load_models_gpu(self, patchers: list[Patcher], memory_required: float = 0,
                        minimum_memory_required: float | None = None, force_full_load: bool = False) -> None:
        """``load_models_gpu``: free ``1.1 x`` the weights to load + the inference memory, then give each model the
        low-VRAM budget ``free - minimum_memory_required`` (at least ``minimum_inference_memory``)."""
        inference, reserved = self.inference, self.reserve
        extra_mem = max(inference, memory_required + reserved)
        min_req = extra_mem if minimum_memory_required is None else max(inference, minimum_memory_required + reserved)
        for p in patchers:  # a model being loaded leaves the list (is_clone unload) and cannot be freed below
            self.known += [] if p in self.known else [p]
            self.models = [q for q in self.models if q is not p]
        self.free_memory(sum(p.size - p.on_card for p in patchers) * 1.1 + extra_mem)
        if self.free() < min_req:
            self.free_memory(min_req)
        for p in patchers:
            budget = 1e32  # model_load: lowvram_model_memory 0 -> use_more_vram 1e32
            if not force_full_load:
                cur = self.free() + p.on_card
                budget = max(0, cur - min_req, min(cur * MIN_WEIGHT_MEMORY_RATIO, cur - inference)) - p.on_card
                budget = 0.1 if budget == 0 else budget
            p.partially_load(budget)
            self.models.insert(0, p)

    def peak(self, act: float, running: list[Patcher], runs: dict | None = None) -> float:
        """Bytes in use while ``running`` compute with ``act`` bytes of activations: context + all weights on the card
        + activations + the streamed weights in flight of the running low-VRAM models (:meth:`Patcher.in_flight`,
        ``runs[patcher]``: the module name prefixes that compute, default all: ComfyUI's reserved buffer)."""
        flight = sum(p.in_flight((runs or {}).get(p)) for p in running)
        return self.context + sum(p.on_card for p in self.known) + act + flight

    def state(self) -> str:
        return ", ".join(p.state() for p in self.known if p.loaded or p.lowvram) or "nothing"


def dit_memory_required(spec: dict, batch: int, attended: int = 0) -> float:
    """ComfyUI's estimate of the DiT's inference memory (``BaseModel.memory_required``, the branch for PyTorch
    flash / xformers attention on NVIDIA): ``area * 2 (bf16) * 0.01 * memory_usage_factor`` MiB, the factor from
    ``comfy.supported_models`` (Wan: ``dim / 2222``; HunyuanVideo: 1.8), ``area`` the volume of the noise shape as
    the pack declares it (``models.memory_plan.planned_shape``: ``attended`` memory tokens added as latent cells)."""
    import comfy.supported_models as sm

    from framememory.models.memory_plan import planned_shape

    ft, fh, fw = spec["stride"]
    if spec["kind"] == "wan":
        factor = sm.WAN21_T2V({"image_model": "wan2.1", "model_type": "t2v", "dim": spec["dit"]["dim"]}).memory_usage_factor
    else:
        factor = sm.HunyuanVideo.memory_usage_factor
    shape = planned_shape([batch, spec["channels"], SEGMENT_LATENTS, spec["height"] // fh, spec["width"] // fw],
                          attended, PATCH_VOLUME)
    return shape[0] * math.prod(shape[2:]) * 2 * 0.01 * factor * MIB


def vae_memory_used(spec: dict, shape: list, decode: bool) -> float:
    """``comfy.sd.VAE.memory_used_decode`` / ``memory_used_encode`` of the family's VAE in bf16 (2 bytes), ``shape``
    the latent (decode) or pixel (encode) batch ``[B, C, T, H, W]``."""
    t, h, w = shape[2], shape[3], shape[4]
    if spec["vae"] == "wan21":
        return (7000 * h * w * 64 if decode else 6000 * h * w) * 2
    if spec["vae"] == "wan22":
        return (8000 * h * w * 256 if decode else 3300 * h * w) * 2
    return (1500 * t * h * w * 256 if decode else 900 * max(t, 2) * h * w) * 2  # HunyuanVideo's AutoencoderKL


def plan_segment(card: Card, pt: dict, meas: dict, spec: dict, dit_act, out: dict, attended: int = 0) -> None:
    """One segment of the storyboard loop (``models.storyboard.generate_segment``) on ``card``: text encoding (at a
    shot change), VideoSSM's state absorb (when ``meas`` has one), sampling, decode, encode-append (modes with an
    encoder); each phase's peak (max over calls) and what was loaded go to ``out[phase]``. ``pt``: the patchers
    (``pt["ssm"]``: VideoSSM's state modules, loaded with the DiT as its additional model; only their read-out
    modules run in the DiT step); ``meas``: measurements; ``dit_act(batch)``: DiT activation bytes; ``attended``: the
    memory tokens a forward attends to, which the pack declares to ComfyUI (``models.memory_plan``: counted in
    ``memory_required`` for the load and for ``_calc_cond_batch``'s batching)."""
    def note(phase: str, act: float, running: list, runs: dict | None = None, **extra) -> None:
        peak = card.peak(act, running, runs)
        if peak >= out.get(phase, {}).get("peak", -1):
            out[phase] = {"peak": peak, "act": act, "loaded": card.state(), **extra}

    card.load_models_gpu([pt["te"]])  # CLIP.encode_from_tokens -> load_model -> load_model_gpu
    note("text", meas["text"]["act"], [pt["te"]])
    if "absorb" in meas:
        _plan_absorb(card, pt, meas["absorb"], note)
    dit, runs = [pt["dit"]], None  # prepare_sampling: [model] + additional models
    if "ssm" in pt:
        dit, runs = dit + [pt["ssm"]], {pt["ssm"]: ("read_proj.", "out.")}
    mr2, mr1 = dit_memory_required(spec, 2, attended), dit_memory_required(spec, 1, attended)
    card.load_models_gpu(dit, mr2, mr1)  # sampler_helpers.prepare_sampling
    # samplers._calc_cond_batch: cond + uncond in one call while memory_required * 1.5 < free; cfg 1 drops uncond
    batch = 2 if spec["cfg"] != 1.0 and mr2 * 1.5 < card.free() else 1
    note("sample", dit_act(batch), dit, runs, batch=batch, **({"state_root": pt["ssm"].root} if runs else {}))
    dec = meas["decode"]
    card.load_models_gpu([pt["vae"]], vae_memory_used(spec, dec["latent"], True))  # VAE.decode
    untiled = card.peak(dec["act"], [pt["vae"]])
    tiled = untiled > card.total  # OOM -> VAE.decode retries with decode_tiled_3d
    note("decode", meas["decode_tiled" if tiled else "decode"]["act"], [pt["vae"]], tiled=tiled, untiled=untiled)
    if "append" not in meas:  # VideoSSM: no compressed memory to encode
        return
    enc = meas["lr_encode"]
    card.load_models_gpu([pt["vae"]], vae_memory_used(spec, enc["pixels"], False))  # LR clip: VAE.encode
    note("encode", enc["act"], [pt["vae"]])
    card.load_models_gpu([pt["enc"]])  # encoding.encode_segment
    card.load_models_gpu([pt["dit"]])  # families.patch_embed (LR branch's first projection)
    note("encode", meas["append"]["act"], [pt["enc"], pt["dit"]])


def _plan_absorb(card: Card, pt: dict, absorb: dict, note) -> None:
    """VideoSSM before sampling (``models.memory_modes.ssm_inputs``): the local window's patch embedding (loads the
    DiT), ``state_network`` (loads the state modules), then per latent frame that left the window (4 a segment)
    ``absorbed_state``: its patch embedding (loads the DiT), ``memory_plan.load_for_absorb`` (loads the state modules
    with the absorb declared as ``memory_required``) and ``StateMemory.absorb`` on the card, where only
    ``absorb_proj`` computes."""
    from framememory.models.memory_modes import ABSORB_FRAMES

    card.load_models_gpu([pt["dit"]])
    card.load_models_gpu([pt["ssm"]])
    for _ in range(SEGMENT_LATENTS // ABSORB_FRAMES):
        card.load_models_gpu([pt["dit"]])
        card.load_models_gpu([pt["ssm"]], absorb["declared"])
        note("absorb", absorb["act"] + absorb["inputs"], [pt["ssm"]], {pt["ssm"]: ("absorb_proj",)})


def plan(spec: dict, meas: dict, lists: dict, dit_act, attended: int = 0, reserve: float | None = None,
         total: float = CARD_GIB * GIB, context: float = CUDA_CONTEXT_GIB * GIB) -> dict:
    """ComfyUI's plan for two segments (the first from an empty card, the second in steady state) on a card of
    ``total`` bytes: ``{phase: {"peak" bytes, "act", "loaded", ...}}`` with the larger peak of the two segments
    (``attended``: see :func:`plan_segment`; ``reserve``: ``--reserve-vram`` in bytes, see :class:`Card`)."""
    card = Card(total, context, reserve)
    names = (("te", "TE"), ("dit", "DiT"), ("vae", "VAE"), ("enc", "encoder"), ("ssm", "state"))
    pt = {k: Patcher(name, lists[k]) for k, name in names if k in lists}
    out: dict = {}
    for _ in range(2):
        plan_segment(card, pt, meas, spec, dit_act, out, attended)
    return out


def margin_bytes(phase: str, act: float, batch: int, tokens: int, dim: int) -> float:
    """What the tracker cannot see (:data:`MARGIN`), for one phase: allocator rounding / fragmentation as a fraction
    of the activation peak, cuBLAS / cuDNN workspaces, and for sampling with sageattention its quantised copies of
    q, k (int8) and v (fp16) of one attention call over ``tokens`` (``batch x tokens x dim x 4`` bytes)."""
    sage = batch * tokens * dim * 4 if (phase == "sample" and MARGIN["sage"]) else 0
    return MARGIN["allocator_frac"] * act + MARGIN["workspaces_gib"] * GIB + sage

