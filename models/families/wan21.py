"""Memory tokens in ComfyUI's Wan DiT (``comfy.ldm.wan.model.WanModel``), arXiv 2512.23851 Sec. 3.

This module is the ``wan21`` family (Wan 2.1 T2V and I2V, 16 latent channels; also the Wan 2.2 A14B experts,
which have the Wan 2.1 architecture) and holds the mechanism that ``wan22.py`` (Wan 2.2 TI2V 5B) reuses.

Mechanism (docs/design.md section 2), with no re-implementation of ComfyUI's forward:

- The memory travels in each conditioning entry's ``model_conds`` as two ``CONDRegular`` tensors:
  ``memory_tokens`` ``[B, M, D]`` and ``memory_positions2`` ``[B, M, 3]`` int64 holding *twice* the RoPE
  positions (centres are half-integers; int64 survives ComfyUI's cast of conds to the model dtype exactly).
- A ``DIFFUSION_MODEL`` wrapper takes them out of the forward's kwargs, embeds the positions with the model's
  own ``rope_embedder`` and puts both into ``transformer_options["framememory"]``.
- ``patches_replace["dit"][("double_block", i)]`` on every block: block 0 appends the memory tokens to the video
  tokens, every block extends ``pe`` with the memory RoPE (and, where needed, the modulation ``vec``, below),
  the last block drops the memory tokens again, so the head and ``unpatchify`` see only the video tokens.
  Memory tokens thus pass through every block as clean context that the video tokens attend to in self-attention.
  Newer ComfyUI appends its own clean context the same way (Bernini ``context_latents``, 0.33.0): the sequence is
  then ``[video | context latents | memory]``, the memory leaves after the last block and ``forward_orig`` strips the
  context latents before ``unpatchify`` (tested); the add-ons below query the video tokens only (:func:`video_tokens`).

Timestep of the memory tokens. Wan modulates every token with ``vec = e0`` ``[B, L, 6, D]`` (``L = 1``: one
timestep per sample; ``L = T``: one per latent frame, Wan 2.2's per-token timesteps, expanded to the tokens by
``repeat_e``, which repeats each row ``N // L`` times).

One rule for every family (``EncoderConfig.memory_timestep = "zero"``, the default): memory tokens are *clean*
context (arXiv 2512.23851: "extra, clean context tokens"), so they get the modulation of timestep 0, computed with
the model's own ``time_embedding`` / ``time_projection``, exactly as Wan 2.2 S2V gives its packed motion frames
timestep 0 and as the HunyuanVideo adapter modulates them; Wan 2.2 TI2V 5B's clean first frame is trained the same
way. The ablation ``"shared"`` (Wan 2.1 only; ``install(memory_t0=False)``) gives them the video tokens' sampling
timestep when the sampler passes one timestep per sample (``L = 1``; ``vec`` unchanged); the reproduction measures
both (benchmarks/README.md). With per-token timesteps (``L > 1``) memory tokens always get timestep 0. ``vec`` is extended to
  ``(N + M) / r`` rows (``r`` = gcd of the video tokens per row and M) so that ``repeat_e`` repeats every row
  exactly ``r`` times: video rows keep their own timestep, memory rows timestep 0. It is built once per forward
  and used by every block. The head gets the model's own per-frame ``e``, never this ``vec``, and only video
  tokens (the memory is dropped after the last block).

Wan 2.1 I2V (``in_dim`` 36 = 16 noise + 4 mask + 16 image channels, ``clip_fea``): the LR branch's patch embedding
feeds a memory latent as the I2V model sees a *known, clean* frame: noise channels = the clean latent, mask = 1
(``WAN21.concat_cond`` gives known frames ``1 - concat_mask = 1``), image channels = the same latent (see
:func:`model_input`). This puts the history's content where the I2V model learned to copy it from, and makes a
memory token exactly the token of a clean known frame (``tests/test_wan22_adapter.py``).

Cross-attention add-on (``EncoderConfig.cross_attention``, arXiv 2512.23851): when the conditioning carries
``memory_hidden`` ``[B, M_h, Ch]``, block ``i``'s patch runs the encoder's cross-attention layer ``i`` (handed over in
``transformer_options["framememory_cross"]`` by ``encoding.install_cross_attention``) after the original block, with
queries from the block's video tokens only and keys/values from the hidden states. Its zero-initialised output
projection makes an untrained layer leave the output unchanged. :func:`cross_layers` and :func:`cross_attend` are
shared with the HunyuanVideo adapter (``hunyuan_video.py``), which counts its blocks differently (:func:`cross_blocks`).
"""
from __future__ import annotations

import math

import torch

import comfy.patcher_extension

from ...memory.designs import pack_forcing as packing
from ..conds import BLOCKS_KEY, CROSS_KEY, PACK_KEY, PATCH_KEY, STATE_KEY, pop_hidden, pop_memory
from ..cross_attention import cross_attend, cross_layers
from ..state_readout import STATE_MODULE_KEY, state_read

FAMILY = "wan21"
LATENT_CHANNELS = 16  # comfy.latent_formats.Wan21
VAE_STRIDE = (4, 8, 8)  # video frames, pixels per latent cell (t, h, w)
PATCH_SIZE = (1, 2, 2)  # latent cells per DiT token (t, h, w)
FPS = 16  # frame rate the family was trained at
MEMORY_TIMESTEPS = ("zero", "shared")  # EncoderConfig.memory_timestep rules; "shared" = install(memory_t0=False)
# every mode: PackForcing selects per forward (pack_context), VideoSSM reads its state out per block (state_read)
MEMORY_MODES = ("frame_preservation", "pack_forcing", "video_ssm", "sliding_window", "off")
I2V_MASK_CHANNELS = 4  # WAN21.concat_cond: [noise C | mask 4 | image C]


def matches(dm) -> bool:
    """True for ComfyUI's ``WanModel`` with 16 latent channels out: T2V (``in_dim`` 16) or I2V / FLF2V
    (``model_type`` i2v, ``in_dim`` 36). Not Wan 2.2 TI2V 5B (48 channels: ``wan22.py``), Fun Control
    (``in_dim`` 48), VACE, S2V, HuMo, Animate or camera models (subclasses or other inputs)."""
    import comfy.ldm.wan.model as wan_model

    if type(dm) is not wan_model.WanModel or dm.out_dim != LATENT_CHANNELS:
        return False
    in_dim = dm.patch_embedding.in_channels
    if dm.model_type == "t2v":
        return in_dim == LATENT_CHANNELS
    return dm.model_type == "i2v" and in_dim == 2 * LATENT_CHANNELS + I2V_MASK_CHANNELS


def latent_format():
    """ComfyUI's latent format of the family (``process_in``: VAE latent -> model space)."""
    import comfy.latent_formats

    return comfy.latent_formats.Wan21()


def width(dm) -> int:
    """Inner width D of the DiT (1536 for Wan 2.1 1.3B, 5120 for 14B, 3072 for Wan 2.2 5B)."""
    return int(dm.dim)


def token_grid(dm, x: torch.Tensor) -> tuple[int, int]:
    """``(Ht, Wt)`` video tokens per latent frame of ``x`` ``[B, C, T, h, w]`` (``h // 2``, ``w // 2``)."""
    _, ph, pw = dm.patch_size
    return x.shape[3] // ph, x.shape[4] // pw


def model_input(dm, latent: torch.Tensor) -> torch.Tensor:
    """The DiT's input channels for a clean model-space latent: the latent itself (T2V, Wan 2.2 5B), or for I2V
    ``[latent | ones(4) | latent]``, the channels of a known clean frame (module docstring).

    Args:
        latent: ``[B, C, T, h, w]`` float, model space (after ``process_latent_in``).
    Returns:
        ``[B, in_dim, T, h, w]``, same dtype and device.
    Raises:
        ValueError: the model's ``in_dim`` is neither ``C`` nor ``2 C + 4``.
    """
    c = latent.shape[1]
    in_dim = dm.patch_embedding.in_channels
    if in_dim == c:
        return latent
    if in_dim == 2 * c + I2V_MASK_CHANNELS:
        mask = latent.new_ones((latent.shape[0], I2V_MASK_CHANNELS, *latent.shape[2:]))
        return torch.cat([latent, mask, latent], dim=1)
    raise ValueError(f"cannot feed a {c}-channel latent to a Wan patch embedding with {in_dim} input channels")


def patch_embed(dm, latent: torch.Tensor, device: str | torch.device | None = "cpu") -> torch.Tensor:
    """The DiT's own first projection (``patch_embedding``, Conv3d k=s=(1,2,2)) applied to a model-space latent
    (through :func:`model_input` for I2V models), without gradient.

    Args:
        latent: ``[B, C, T, h, w]`` float (after ``process_latent_in``).
        device: where the result goes (default the CPU, where the history lives; None: stay on the latent's device,
            as training wants).
    Returns:
        ``[B, D, T, h // 2, w // 2]`` float32.
    Raises:
        ValueError: see :func:`model_input`.
    """
    with torch.no_grad():  # Wan keeps patch_embedding in fp32 and feeds it x.float() (WanModel.forward_orig)
        y = dm.patch_embedding(model_input(dm, latent.float())).float()
    return y if device is None else y.to(device)


def timestep_zero_modulation(dm, dtype: torch.dtype, device) -> torch.Tensor:
    """``e0`` of timestep 0, ``[1, 1, 6, D]`` in ``dtype``: the model's own ``time_embedding`` and
    ``time_projection`` of a zero timestep, as ``WanModel.forward_orig`` computes them."""
    from comfy.ldm.wan.model import sinusoidal_embedding_1d

    t = torch.zeros(1, device=device)
    e = dm.time_embedding(sinusoidal_embedding_1d(dm.freq_dim, t).to(dtype=dtype))  # [1, D]
    return dm.time_projection(e).unflatten(-1, (6, dm.dim))[:, None]  # [1, 1, 6, D]


def memory_vec(dm, vec: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Extend a block's modulation ``vec`` from ``n`` video tokens to ``n + m`` tokens (video + memory), memory
    tokens at timestep 0 (module docstring).

    Args:
        vec: ``[B, L, 6, D]`` (or ``[B, 6, D]``, one row); row ``l`` modulates tokens ``l * n // L ...``, as in
            ``repeat_e``.
    Returns:
        ``[B, (n + m) // r, 6, D]`` with ``r = gcd(n // L, m)`` (``gcd(1, m)`` when ``L`` does not divide ``n``),
        so that ``repeat_e`` repeats every row exactly ``r`` times.
    """
    from comfy.ldm.wan.model import repeat_e

    if vec.ndim == 3:
        vec = vec[:, None]
    rows = vec.shape[1]
    if n % rows:  # repeat_e's uneven case: expand to one row per token exactly as the model would
        vec, rows = repeat_e(vec, vec.new_empty((1, n, 0))), n
    per = n // rows  # video tokens per row
    r = math.gcd(per, m)
    video = vec.repeat_interleave(per // r, dim=1) if per > r else vec  # [B, n / r, 6, D]
    zero = timestep_zero_modulation(dm, vec.dtype, vec.device)
    return torch.cat([video, zero.expand(vec.shape[0], m // r, -1, -1)], dim=1)


def video_tokens(transformer_options: dict, tokens: int) -> int:
    """The video tokens at the start of a block's sequence of ``tokens`` non-memory tokens: ``prod(grid_sizes)`` where
    ``forward_orig`` publishes its patch grid in ``transformer_options`` (0.33.0 does, 0.3.75 does not; there Bernini's
    ``context_latents`` may follow the video tokens and are no video), else all ``tokens``."""
    grid = transformer_options.get("grid_sizes")
    return tokens if grid is None else min(tokens, math.prod(int(g) for g in grid))


def _block_patch(index: int, count: int, memory_t0: bool = True):
    """Replacement for block ``index`` of ``count``. ``memory_t0``: memory tokens always get timestep 0 (the rule,
    module docstring); False (the "shared" ablation): only when the model runs with per-token timesteps."""

    def patch(args: dict, extra: dict) -> dict:
        mem = args["transformer_options"].get(PATCH_KEY)
        if mem is None:
            return extra["original_block"](args)
        x, vec = args["img"], args["vec"]
        m = mem["tokens"].shape[1]
        if index == 0:
            x = torch.cat([x, mem["tokens"].to(device=x.device, dtype=x.dtype)], dim=1)
        if memory_t0 or (vec.ndim == 4 and vec.shape[1] > 1):
            cached = mem.get("vec")
            if cached is None or cached[0] is not vec:  # once per forward: every block gets the same e0
                cached = mem["vec"] = (vec, memory_vec(mem["model"], vec, x.shape[1] - m, m))
            vec = cached[1]
        pe = torch.cat([args["pe"], mem["freqs"].to(device=args["pe"].device, dtype=args["pe"].dtype)], dim=1)
        out = extra["original_block"]({**args, "img": x, "vec": vec, "pe": pe})
        n = video_tokens(args["transformer_options"], out["img"].shape[1] - m)
        if mem.get("hidden") is not None:  # add-on: video tokens cross-attend to the encoder's hidden states
            out = {**out, "img": cross_attend(mem, index, out["img"], n)}
        if mem.get("state") is not None:  # VideoSSM: add the block's global-memory read-out to the video tokens
            out = {**out, "img": state_read(mem, index, out["img"], n)}
        if index == count - 1:
            out = {**out, "img": out["img"][:, : out["img"].shape[1] - m]}
        return out

    return patch


def cross_blocks(dm) -> int:
    """DiT blocks that get a cross-attention layer of the add-on (``EncoderConfig.dit_blocks``): every block
    (30 for Wan 2.1 1.3B, 40 for 14B and the Wan 2.2 A14B experts, 30 for Wan 2.2 5B)."""
    return len(dm.blocks)


def pack_context(dm, x: torch.Tensor, tokens: torch.Tensor, ids: torch.Tensor, blocks: torch.Tensor,
                 pack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PackForcing per forward (:mod:`memory.designs.pack_forcing`): score the mid blocks by their mean query-key affinity with the
    current segment's queries at the first DiT block (its ``self_attn.q`` / ``k`` and qk norms applied to the
    patch-embedded noisy latent and to the memory tokens, before modulation: a cheap stand-in for the per-layer
    queries), keep the top-K, re-pack their RoPE times.

    Args:
        x: ``[B, C, T, h, w]`` the forward's input latent. tokens: ``[B, M, D]``. ids: ``[1, M, 3]`` positions.
        blocks: ``[M]`` int64 labels. pack: ``[4]`` int64 ``(top_k, rt, S, R)``.
    Returns:
        ``(tokens [B, M', D], ids [1, M', 3])``.
    """
    top_k, rt, sink, recent = (int(v) for v in pack.tolist())
    blocks = blocks.to(tokens.device)
    nb = int(blocks.max().item()) + 1 if blocks.numel() else 0
    if top_k <= 0 or nb <= top_k:
        kept = torch.arange(max(nb, 0))
    else:
        attn = dm.blocks[0].self_attn
        with torch.no_grad():
            video = dm.patch_embedding(x.float()).flatten(2).transpose(1, 2).to(tokens.dtype)  # [B, n, D]
            q, k = attn.norm_q(attn.q(video)), attn.norm_k(attn.k(tokens))
            kept = packing.select_blocks(packing.block_affinity(q, k, blocks, attn.num_heads), top_k)
    index, pos = packing.repack_positions(ids[0].double(), blocks, kept, rt, recent, sink)
    index = index.to(tokens.device)
    return tokens[:, index], pos.to(ids)[None]


def _diffusion_wrapper(executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs):
    tokens, ids = pop_memory(kwargs, x.device)  # [B, M, D], [1, M, 3]
    hidden = pop_hidden(kwargs)  # [B, M_h, Ch] or None
    blocks, pack, state = (kwargs.pop(k, None) for k in (BLOCKS_KEY, PACK_KEY, STATE_KEY))  # memory-mode conds
    if tokens is not None:
        dm = executor.class_obj
        if blocks is not None:
            tokens, ids = pack_context(dm, x, tokens, ids, blocks[0], pack[0])
        freqs = dm.rope_embedder(ids).movedim(1, 2)  # [1, M, 1, d/2, 2, 2], like WanModel.rope_encode
        mem = {"tokens": tokens, "freqs": freqs, "model": dm}
        if hidden is not None:
            mem.update(hidden=hidden, cross=cross_layers(transformer_options.get(CROSS_KEY), hidden, cross_blocks(dm), dm.dim))
        if state is not None:
            mem.update(state=state, grid=(x.shape[2], x.shape[3] // 2, x.shape[4] // 2),
                       readout=transformer_options.get(STATE_MODULE_KEY), recent=int(pack[0, 3]))
        transformer_options = {**transformer_options, PATCH_KEY: mem}
    return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)


def install(model, dm, memory_t0: bool = True) -> None:
    """Install the memory wrapper and per-block patches on ``model`` (a clone; replaces earlier ones).
    ``memory_t0``: memory tokens at timestep 0 (the rule); False: the "shared" ablation (module docstring)."""
    model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, PATCH_KEY)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, PATCH_KEY, _diffusion_wrapper)
    count = len(dm.blocks)
    for i in range(count):
        model.set_model_patch_replace(_block_patch(i, count, memory_t0), "dit", "double_block", i)
