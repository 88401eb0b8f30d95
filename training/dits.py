"""The DiT families the training losses of arXiv 2512.23851 run on: one small object per family, chosen from the
DiT's class by the family modules' own ``matches`` (``models/families/wan21.py``, ``models/families/hunyuan_video.py``).

:mod:`training.stages` is family-agnostic; it asks the family object (:func:`dit_family`) for

(a) **the forward with memory** (:meth:`DitFamily.forward`): the DiT is called directly with the memory wrapper and
    block patches that ``models.families.install_memory`` installs at inference (on a bare DiT it returns them as
    ``transformer_options`` instead of patching a ModelPatcher, so training runs exactly the inference mechanism),
    each block patch wrapped so that the video tokens' RoPE can be replaced by per-frame times (Stage I: the frames
    Omega at their original indices in the history);
(b) **the first projection** (:meth:`DitFamily.embed`), the LR branch's ``embed`` in Fig. 2 as at inference:
    Wan's ``patch_embedding``, HunyuanVideo's ``img_in``;
(c) **LoRA targets** (:attr:`DitFamily.lora_targets`, regexes of module names for peft);
(d) **text conditioning**: every family takes ``context`` ``[B, L, 4096]`` (Wan: umt5-xxl; HunyuanVideo: the
    LLaVA-Llama-3 hidden states); HunyuanVideo also takes the pooled CLIP-L embedding ``y`` ``[B, 768]``
    (``pooled_output`` of its text encoder) and, where its config has ``guidance_embed`` (T2V 1.0), the embedded
    guidance ``[B]`` (:meth:`DitFamily.inputs`).

Families: ``wan21`` (:data:`WAN`, ``comfy.ldm.wan.model.WanModel`` T2V / I2V) and ``hunyuan_video``
(:data:`HUNYUAN`, ``comfy.ldm.hunyuan_video.model.HunyuanVideo`` T2V 1.0). Both use ComfyUI's rectified flow
(``ModelSamplingDiscreteFlow``, multiplier 1000): the DiT gets timestep ``1000 t`` and predicts ``eps - X_0``.
"""
from __future__ import annotations

import contextlib

import torch

# ------------------------------------------------------------------------------------------- shared helpers


@contextlib.contextmanager
def comfy_training_mode():
    """While autograd records, set ComfyUI's documented training flag ``comfy.model_management.in_training`` (what
    ComfyUI's own Train LoRA node sets around its loop, ``comfy_extras/nodes_train.py``): from ComfyUI 0.2x its RoPE
    (``comfy.ldm.flux.math.apply_rope1``) otherwise runs a comfy_kitchen kernel that has no backward. Restored on
    exit; nothing changes under ``torch.no_grad`` or on a ComfyUI without the flag (0.3.75)."""
    import comfy.model_management as mm

    if not torch.is_grad_enabled() or not hasattr(mm, "in_training"):
        yield
        return
    before, mm.in_training = mm.in_training, True
    try:
        yield
    finally:
        mm.in_training = before


def frame_ids(frame_times: torch.Tensor, ht: int, wt: int) -> torch.Tensor:
    """RoPE positions ``(t, h, w)`` of the video tokens of ``k`` latent frames at times ``frame_times`` ``[B, k]``
    on an ``ht x wt`` token grid: ``[B, k*ht*wt, 3]`` float32 in ``(t, h, w)`` row-major token order (the order of
    the DiTs' flattened token sequence), ``h = 0..ht-1``, ``w = 0..wt-1``."""
    b, k = frame_times.shape
    t = frame_times.to(torch.float32)[:, :, None, None].expand(b, k, ht, wt)
    h = torch.arange(ht, dtype=torch.float32, device=t.device)[None, None, :, None].expand(b, k, ht, wt)
    w = torch.arange(wt, dtype=torch.float32, device=t.device)[None, None, None, :].expand(b, k, ht, wt)
    return torch.stack([t, h, w], dim=-1).reshape(b, -1, 3)


class DitFamily:
    """What the training losses need from a DiT family (module docstring). Subclasses fill in the hooks."""

    name: str = ""
    lora_targets: str = ""
    zero_padded_text: bool = True  # texts of unequal length may share a batch, zero-padded (training.loop.collate)

    @property
    def adapter(self):
        """The family module of this family (``models.families.wan21`` / ``hunyuan_video``): its inference hooks."""
        from ..models import families

        return families.family(self.name)

    def matches(self, dm) -> bool:
        return self.adapter.matches(dm)

    def width(self, dm) -> int:
        """Inner width D of the DiT (the memory tokens' width)."""
        return self.adapter.width(dm)

    def latent_format(self):
        """ComfyUI's latent format of the family (``process_in``: VAE latent -> model space)."""
        return self.adapter.latent_format()

    def needs_pooled(self, dm) -> bool:
        """True when the DiT needs a pooled text embedding (:meth:`inputs`)."""
        return False

    def token_grid(self, dm, x: torch.Tensor) -> tuple[int, int]:
        """``(Ht, Wt)`` video tokens per latent frame of ``x`` ``[B, C, k, h, w]`` (the family's ``token_grid``)."""
        return self.adapter.token_grid(dm, x)

    def embed(self, dm, latent: torch.Tensor) -> torch.Tensor:
        """The DiT's own first projection of a model-space latent ``[B, C, T, h, w]`` -> ``[B, D, T, Ht, Wt]``
        float32 on the latent's device, without gradient (frozen, no LoRA): the adapter's ``patch_embed``."""
        return self.adapter.patch_embed(dm, latent, device=None)

    def frame_rope(self, dm, frame_times: torch.Tensor, ht: int, wt: int) -> torch.Tensor:
        """RoPE of the video tokens of frames at ``frame_times`` ``[B, k]`` in the layout of the family's ``pe``."""
        raise NotImplementedError

    def video_pe_patch(self, dm, inner, frame_pe: torch.Tensor | None):
        """Wrap a block replace patch so that the video tokens get ``frame_pe`` (None: unchanged)."""
        raise NotImplementedError

    def inputs(self, dm, batch: int, device, pooled: torch.Tensor | None, guidance) -> dict:
        """Extra keyword inputs of the DiT's forward besides ``x``, ``timestep``, ``context`` (text conditioning)."""
        return {}

    def autograd_safe(self, dm):
        """Context manager around the forward that makes it differentiable: :func:`comfy_training_mode` while grad
        is enabled (families add their own fixes)."""
        return comfy_training_mode()

    def options(self, dm, frame_pe: torch.Tensor | None, memory=None) -> dict:
        """``transformer_options`` with the memory wrapper and block patches (``models.families.install_memory`` on
        the bare DiT, as at inference, with the memory's timestep rule), every block patch wrapped by
        :meth:`video_pe_patch`, and the add-ons' layers where the memory has them (cross-attention, VideoSSM
        read-out)."""
        from ..models.families import install_memory

        if memory is None:
            opts = install_memory(dm)
        else:
            cross = memory.cross if memory.hidden is not None else None
            opts = install_memory(dm, memory.memory_t0, cross=cross, readout=getattr(memory, "readout", None))
        opts["patches_replace"]["dit"] = {key: self.video_pe_patch(dm, patch, frame_pe)
                                          for key, patch in opts["patches_replace"]["dit"].items()}
        return opts

    def forward(self, dm, x_t: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, memory=None,
                frame_times: torch.Tensor | None = None, pooled: torch.Tensor | None = None,
                guidance=None) -> torch.Tensor:
        """The DiT's prediction with memory (see :func:`training.stages.dit_forward`; ``timestep`` already in the
        DiT's units, ``1000 t``; ``memory`` from :func:`training.stages.encode_history` or None)."""
        frame_pe = None
        if frame_times is not None:
            frame_pe = self.frame_rope(dm, frame_times, *self.token_grid(dm, x_t))
        opts = self.options(dm, frame_pe, memory)
        kwargs = self.inputs(dm, x_t.shape[0], x_t.device, pooled, guidance)
        if memory is not None:
            kwargs.update(memory_tokens=memory.tokens, memory_positions2=memory.positions2)
            if memory.hidden is not None and memory.cross is not None:
                kwargs.update(memory_hidden=memory.hidden)
            kwargs.update(getattr(memory, "extra", None) or {})
        with self.autograd_safe(dm):
            return dm(x_t, timestep, context, transformer_options=opts, **kwargs)


# ----------------------------------------------------------------------------------------------------- Wan 2.1


class WanFamily(DitFamily):
    """``comfy.ldm.wan.model.WanModel`` (Wan 2.1 T2V / I2V 1.3B, 14B; :mod:`models.families.wan21`).

    * forward: block patches ``wan21._block_patch`` on every block, wrapper ``wan21._diffusion_wrapper``; Stage I's
      per-frame RoPE replaces ``pe`` ``[B, N, 1, d/2, 2, 2]`` (the blocks see only video tokens in ``args["pe"]``;
      the patch appends the memory RoPE) and broadcasts the memory RoPE to the batch.
    * first projection: ``patch_embedding`` (Conv3d k=s=(1,2,2)) of :func:`models.families.wan21.model_input` (I2V:
      the channels of a clean known frame): :func:`models.families.wan21.patch_embed`.
    * LoRA: every block's self- and cross-attention ``q, k, v, o`` and FFN ``ffn.0``, ``ffn.2``.
    * text: ``context`` ``[B, L, 4096]`` only (``pooled`` / ``guidance`` are ignored).
    """

    name = "wan21"
    lora_targets = r"blocks\.\d+\.(?:(?:self_attn|cross_attn)\.(?:q|k|v|o)|ffn\.(?:0|2))"

    def frame_rope(self, dm, frame_times, ht, wt):
        """``[B, k*ht*wt, 1, d/2, 2, 2]``, matching ``WanModel.rope_encode`` for contiguous times."""
        return dm.rope_embedder(frame_ids(frame_times, ht, wt)).movedim(1, 2)

    def video_pe_patch(self, dm, inner, frame_pe):
        from ..models.conds import PATCH_KEY

        def patch(args: dict, extra: dict) -> dict:
            if frame_pe is None:
                return inner(args, extra)
            pe = frame_pe.to(device=args["pe"].device, dtype=args["pe"].dtype)
            mem = args["transformer_options"].get(PATCH_KEY)
            if mem is not None and mem["freqs"].shape[0] != pe.shape[0]:
                mem["freqs"] = mem["freqs"].expand(pe.shape[0], *mem["freqs"].shape[1:])
            return inner({**args, "pe": pe}, extra)

        return patch


# -------------------------------------------------------------------------------------------------- HunyuanVideo

DEFAULT_GUIDANCE = 1.0
"""HunyuanVideo's embedded guidance during training. The rectified-flow target ``eps - X_0`` is the *unguided*
conditional velocity, which the guidance-distilled model predicts at guidance 1 (LoRA trainers for HunyuanVideo,
e.g. musubi-tuner, default to 1.0 as well); sampling then uses the usual embedded guidance (ComfyUI's default 6.0).
``StageConfig.guidance`` / ``--guidance`` change it."""


def _clone_saved_input(module, args):
    """Forward pre-hook of a block LayerNorm: hand it a copy of its input while autograd records (see
    :meth:`HunyuanFamily.autograd_safe`)."""
    x = args[0]
    if torch.is_grad_enabled() and x.requires_grad:
        return (x.clone(), *args[1:])
    return None


class HunyuanFamily(DitFamily):
    """``comfy.ldm.hunyuan_video.model.HunyuanVideo`` T2V 1.0 (13B; :mod:`models.families.hunyuan_video`).

    * forward: the adapter's ``_double_patch`` / ``_single_patch`` on every double and single block and its
      ``_diffusion_wrapper`` (sequence ``[video N | memory M | txt L]``, memory modulated at timestep 0). The stock
      ``forward_orig`` builds one ``pe`` ``[B, 1, N + L, d/2, 2, 2]`` from ``cat(img_ids, txt_ids)`` and hands it to
      every block; Stage I's per-frame RoPE replaces its first ``N`` rows (the video tokens) before the adapter's
      patch inserts the memory RoPE at ``N``. The positions are ``forward_orig``'s ``img_ids`` of the same frames in
      the full clip (:func:`frame_ids`: ``(t, h, w)`` with ``t`` the frame's index in the history); text stays at
      position 0.
    * first projection: ``img_in`` (``PatchEmbed``, Conv3d k=s=(1,2,2), pads odd sizes):
      :func:`models.families.hunyuan_video.patch_embed`.
    * LoRA: double blocks' ``img_attn.qkv``, ``img_attn.proj``, ``img_mlp.0``, ``img_mlp.2`` and the same four of
      the ``txt_`` stream; single blocks' ``linear1`` (fused qkv + MLP in) and ``linear2`` (fused proj + MLP out).
      The modulation linears (``img_mod.lin``, ``txt_mod.lin``, ``modulation.lin``) are left out, as Wan's
      modulation is (not a LoRA target there): they also set the memory tokens' clean (timestep 0) modulation.
    * text: ``context`` ``[B, L, 4096]``, ``y`` = ``pooled`` ``[B, 768]`` (required when the config has
      ``vec_in_dim``), ``guidance`` ``[B]`` when the config has ``guidance_embed`` (default
      :data:`DEFAULT_GUIDANCE`). Zero-padded texts must not share a batch (``zero_padded_text`` False): the text
      refiner averages over every token and the text takes part in the joint attention, and ``forward_orig`` accepts
      a text mask for batch 1 only, so padding would change the condition.
    * autograd: ComfyUI's flux-style blocks add to their input in place (``img += ...``, ``x += ...``) after a
      LayerNorm has saved that input for backward, which is harmless at inference and a "modified by an inplace
      operation" error under autograd (in fp32; bf16 autocast happens to hide it). :meth:`autograd_safe` gives
      each block LayerNorm (``img_norm1/2``, ``txt_norm1/2``, ``pre_norm``) a copy of its input while the forward
      runs with grad (forward pre-hooks, removed afterwards): the same values, one extra copy of the token stream
      per LayerNorm. Under ``torch.no_grad`` nothing is copied.
    """

    name = "hunyuan_video"
    zero_padded_text = False  # see the class docstring, "text"
    lora_targets = (r"(?:double_blocks\.\d+\.(?:img|txt)_(?:attn\.(?:qkv|proj)|mlp\.(?:0|2))"
                    r"|single_blocks\.\d+\.linear(?:1|2))")

    def needs_pooled(self, dm) -> bool:
        return dm.vector_in is not None

    def frame_rope(self, dm, frame_times, ht, wt):
        """``[B, 1, k*ht*wt, d/2, 2, 2]``: ``pe_embedder`` of :func:`frame_ids`, i.e. of ``forward_orig``'s
        ``img_ids`` rows of those frames in the full clip."""
        return dm.pe_embedder(frame_ids(frame_times, ht, wt))

    def video_pe_patch(self, dm, inner, frame_pe):
        """The stock ``pe`` is over ``cat(txt, video)`` where ``hunyuan_video.text_first(dm)`` (ComfyUI >= 0.14): the
        video rows are its last ``N``; else over ``cat(video, txt)``: its first ``N``."""
        text_first = self.adapter.text_first(dm)

        def patch(args: dict, extra: dict) -> dict:
            if frame_pe is None:
                return inner(args, extra)
            pe = args["pe"]  # [B, 1, N + L, d/2, 2, 2]: the stock pe of every block
            n = frame_pe.shape[2]
            if pe.shape[2] <= n:
                raise ValueError(f"the block's RoPE covers {pe.shape[2]} tokens, fewer than the {n} video tokens")
            fpe = frame_pe.to(device=pe.device, dtype=pe.dtype)
            expand = lambda t: t.expand(fpe.shape[0], *([-1] * (pe.ndim - 1)))  # noqa: E731
            parts = [expand(pe[:, :, :-n]), fpe] if text_first else [fpe, expand(pe[:, :, n:])]
            return inner({**args, "pe": torch.cat(parts, dim=2)}, extra)

        return patch

    def inputs(self, dm, batch, device, pooled, guidance):
        kw = {}
        if dm.vector_in is not None:
            dim = dm.params.vec_in_dim
            if pooled is None:
                raise ValueError(f"HunyuanVideo needs the pooled text embedding y [B, {dim}] (CLIP-L pooled_output of "
                                 "its text encoder): pass pooled= (shards from training/prepare_data.py "
                                 "--clip-type hunyuan_video carry it)")
            if tuple(pooled.shape) != (batch, dim):
                raise ValueError(f"pooled must be [B, {dim}] = [{batch}, {dim}], got {tuple(pooled.shape)}")
            kw["y"] = pooled.to(device)
        if dm.params.guidance_embed:
            g = DEFAULT_GUIDANCE if guidance is None else guidance
            kw["guidance"] = torch.as_tensor(g, dtype=torch.float32).to(device).expand(batch).clone()
        return kw

    @contextlib.contextmanager
    def autograd_safe(self, dm):
        norms = [n for b in dm.double_blocks for n in (b.img_norm1, b.img_norm2, b.txt_norm1, b.txt_norm2)]
        norms += [b.pre_norm for b in dm.single_blocks]
        hooks = [n.register_forward_pre_hook(_clone_saved_input) for n in norms]
        try:
            with comfy_training_mode():
                yield
        finally:
            for h in hooks:
                h.remove()


WAN = WanFamily()
HUNYUAN = HunyuanFamily()
FAMILIES = (WAN, HUNYUAN)


def dit_family(dm) -> DitFamily:
    """The training family of a DiT (``dm``: the ``diffusion_model`` module, unwrapped, peft LoRA allowed).

    Raises:
        TypeError: the DiT is of no trainable family (Wan 2.2 TI2V 5B, HunyuanVideo I2V / 1.5, other models).
    """
    for family in FAMILIES:
        if family.matches(dm):
            return family
    raise TypeError(f"training supports {', '.join(f.name for f in FAMILIES)} DiTs (Wan 2.1 T2V/I2V 1.3B or 14B, "
                    f"HunyuanVideo T2V); this DiT is {type(dm).__name__}")


__all__ = ["DitFamily", "WanFamily", "HunyuanFamily", "WAN", "HUNYUAN", "FAMILIES", "dit_family", "frame_ids",
           "DEFAULT_GUIDANCE"]
