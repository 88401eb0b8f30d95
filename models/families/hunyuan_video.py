"""Memory tokens in ComfyUI's HunyuanVideo DiT (``comfy.ldm.hunyuan_video.model.HunyuanVideo``, T2V 1.0),
arXiv 2512.23851 Sec. 3.

Same mechanism as the Wan adapter (``wan21.py``): a ``DIFFUSION_MODEL`` wrapper takes the memory out of the
forward's kwargs (``conds.pop_memory``) and puts it into ``transformer_options["framememory"]``; replace patches
on every double and single block carry the memory tokens through ComfyUI's own ``forward_orig``. What differs:

- **Two token streams.** Double blocks keep ``img`` (video) and ``txt`` apart and attend over their
  concatenation; single blocks see that concatenation as one sequence, and ``pe`` (built by ``pe_embedder``) and the
  text attention mask follow the same order. Memory tokens are appended to ``img``, so the video stream is
  ``[video N | memory M]`` in every block, and the memory RoPE (the model's own ``pe_embedder`` on the memory
  positions) and zero mask columns are inserted right after the video tokens. ``N`` counts ``ref_latent`` tokens
  too (they are prepended to ``img`` in ``forward_orig``). The last single block removes the memory tokens, so the
  head sees exactly the sequence it would without memory.
- **Token order, detected, not assumed.** ComfyUI < 0.14 attends over ``[video | txt]`` (the double block's
  ``flipped_img_txt``), ComfyUI >= 0.14 over ``[txt | video]`` (single blocks get the video's place as
  ``transformer_options["img_slice"]``). :func:`text_first` reads the block; the single blocks check it against
  ``img_slice`` and raise when the two disagree, so a ComfyUI with yet another layout fails loudly instead of putting
  RoPE, mask and modulation on the wrong tokens. Sequence: ``[video N | memory M | txt L]`` or
  ``[txt L | video N | memory M]``.
- **Clean memory tokens.** HunyuanVideo has per-token modulation (``modulation_dims``, used by I2V's
  ``guiding_frame_index``): memory tokens are modulated with the timestep-0 vector ``vec - time_in(t) +
  time_in(0)`` (text, pooled and guidance embeddings unchanged), as clean context. ``vec`` is handed to the
  blocks with two rows (index 0: the sampled timestep, 1: clean) in the layout the installed ``apply_mod`` indexes
  per batch (:func:`modulation_rows`, probed once): ``[B, 2, D]`` where it slices ``m_mult[:, k:k+1]`` (ComfyUI
  >= 0.17), ``[B, 2, 1, D]`` where it indexes ``m_mult[:, k]`` (earlier; ``[B, 2, D]`` there works for batch 1
  only).
- **Text at t = 0.** Text tokens sit at RoPE position (0, 0, 0), i.e. at the first frame of the segment being
  generated; memory tokens at negative times are therefore "before" the text, exactly as when the segment
  starts at time 0 of a longer video (tests/test_hunyuan_adapter.py checks this equivalence).

Cross-attention add-on (``EncoderConfig.cross_attention``, arXiv 2512.23851 "cross-attention from the encoder's last
hidden states into every DiT block"), with the Wan adapter's helpers (``cross_attention.cross_layers``, ``cross_attention.cross_attend``):

- **Block count.** Every double and every single block gets a layer: ``dit_blocks = len(double_blocks) +
  len(single_blocks)`` (:func:`cross_blocks`; HunyuanVideo 13B: 20 + 40 = 60, the tiny test model 2 + 2 = 4).
  Layer ``cross.i`` runs after double block ``i`` for ``i < doubles`` and after single block ``i - doubles``
  otherwise, i.e. in the order the blocks run.
- **Tokens.** Queries are the block output's ``N`` video tokens only (including ``ref_latent`` tokens, which
  ``forward_orig`` prepends to them): in a double block the ``img`` stream minus the memory tokens, in a single
  block the video part of the sequence. Memory and text tokens pass unchanged.
  Keys/values: the encoder's hidden states ``memory_hidden`` ``[B, M_h, Ch]``, a third model cond next to the memory
  tokens (``conds.pop_hidden``), ignored when the conditioning has no memory tokens.
- Zero-initialised output projections: an untrained add-on leaves the output bit-identical.

Not supported with memory (raises NotImplementedError): per-token timesteps already present
(``guiding_frame_index``; only HunyuanVideo I2V uses them) and ControlNet residuals added to double blocks.
"""
from __future__ import annotations

import functools

import torch
from einops import rearrange

import comfy.patcher_extension
from comfy.ldm.flux.layers import timestep_embedding

from ..conds import CROSS_KEY, PATCH_KEY, pop_hidden, pop_memory
from ..cross_attention import cross_attend, cross_layers

FAMILY = "hunyuan_video"
LATENT_CHANNELS = 16  # comfy.latent_formats.HunyuanVideo
VAE_STRIDE = (4, 8, 8)  # video frames, pixels per latent cell (t, h, w)
PATCH_SIZE = (1, 2, 2)  # latent cells per DiT token (t, h, w)
FPS = 24  # frame rate the family was trained at
MEMORY_TIMESTEPS = ("zero",)  # EncoderConfig.memory_timestep rules: memory tokens always at timestep 0
# no pack_forcing (its per-forward block selection, wan21.pack_context) nor video_ssm (its per-block read-out,
# wan21's state_read) in this adapter's wrapper and block patches yet
MEMORY_MODES = ("frame_preservation", "sliding_window", "off")


def matches(dm) -> bool:
    """True for ComfyUI's HunyuanVideo 1.0 T2V (16 latent channels, 1x2x2 patches); not I2V (33 channels),
    SkyReels I2V (32), HunyuanVideo 1.5 or HunyuanImage 2.1, which share the class."""
    import comfy.ldm.hunyuan_video.model as hv

    return (type(dm) is hv.HunyuanVideo and list(dm.patch_size) == list(PATCH_SIZE)
            and dm.in_channels == LATENT_CHANNELS and dm.vision_in is None and dm.time_r_in is None)


def latent_format():
    """ComfyUI's latent format of the family (``process_in``: VAE latent -> model space)."""
    import comfy.latent_formats

    return comfy.latent_formats.HunyuanVideo()


def width(dm) -> int:
    """Inner width D of the DiT (3072 for HunyuanVideo 13B)."""
    return int(dm.hidden_size)


def token_grid(dm, x: torch.Tensor) -> tuple[int, int]:
    """``(Ht, Wt)`` video tokens per latent frame of ``x`` ``[B, C, T, h, w]``: ``ceil(h / 2)``, ``ceil(w / 2)``, as
    ``HunyuanVideo.img_ids`` (``img_in`` pads odd sizes)."""
    _, ph, pw = dm.patch_size
    return (x.shape[3] + ph // 2) // ph, (x.shape[4] + pw // 2) // pw


def patch_embed(dm, latent: torch.Tensor, device: str | torch.device | None = "cpu") -> torch.Tensor:
    """The DiT's own first projection (``img_in``, Conv3d k=s=(1,2,2)) applied to a model-space latent, without
    gradient.

    Args:
        latent: ``[B, C, T, h, w]`` float (after ``process_latent_in``).
        device: where the result goes (default the CPU, where the history lives; None: stay on the latent's device,
            as training wants).
    Returns:
        ``[B, D, T, ceil(h / 2), ceil(w / 2)]`` float32 (``img_in`` pads odd sizes, as in sampling).
    """
    proj = dm.img_in.proj  # manual-cast layers (fp8 / mixed storage, low-VRAM) cast their weights to the input: fp32
    dtype = torch.float32 if getattr(proj, "comfy_cast_weights", False) else proj.weight.dtype
    t, h, w = (-(-s // p) for s, p in zip(latent.shape[2:], dm.patch_size))
    with torch.no_grad():
        y = dm.img_in(latent.to(dtype))  # [B, T*Ht*Wt, D]
    y = rearrange(y.float(), "b (t h w) d -> b d t h w", t=t, h=h, w=w)
    return y if device is None else y.to(device)


def text_first(dm) -> bool:
    """True when the installed ComfyUI's HunyuanVideo blocks attend over ``[txt | video]`` (ComfyUI >= 0.14: the
    double block has no ``flipped_img_txt``), False for ``[video | txt]`` (earlier: ``flipped_img_txt=True``)."""
    return not getattr(dm.double_blocks[0], "flipped_img_txt", False)


@functools.lru_cache(maxsize=1)
def modulation_rows() -> int:
    """Dimensions of a two-row ``vec`` that ``comfy.ldm.flux.layers.apply_mod`` applies per batch and per row: 3
    (``[B, 2, D]``, ``m_mult[:, k:k+1]``) or 4 (``[B, 2, 1, D]``, ``m_mult[:, k]``), probed on 2 x 2 numbers.
    Raises NotImplementedError when neither layout gives row ``k`` of batch ``b`` to the tokens of row ``k``."""
    from comfy.ldm.flux.layers import apply_mod

    mult = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[..., None]  # [B=2, rows=2, D=1]
    for ndim in (3, 4):
        try:
            out = apply_mod(torch.ones(2, 2, 1), mult if ndim == 3 else mult[:, :, None], None, [(0, 1, 0), (1, None, 1)])
        except RuntimeError:
            continue
        if out.shape == (2, 2, 1) and torch.equal(out, mult):
            return ndim
    raise NotImplementedError("comfy.ldm.flux.layers.apply_mod applies per-token modulation rows in a layout "
                              "FrameMemory does not know (models/families/hunyuan_video.py)")


def _with_memory(args: dict, mem: dict, at: int, m: int) -> dict:
    """The block's args with the memory's RoPE, attention-mask columns and clean modulation inserted at sequence
    position ``at`` (right after the video tokens)."""
    pe = args["pe"]  # [B, 1, N + L, d/2, 2, 2] in the blocks' token order
    mpe = mem["pe"].to(device=pe.device, dtype=pe.dtype).expand(pe.shape[0], *mem["pe"].shape[1:])
    out = {"pe": torch.cat([pe[:, :, :at], mpe, pe[:, :, at:]], dim=2)}
    mask = args.get("attention_mask")
    if mask is not None:  # [.., N + L] additive mask over keys
        zeros = torch.zeros((*mask.shape[:-1], m), device=mask.device, dtype=mask.dtype)
        out["attention_mask"] = torch.cat([mask[..., :at], zeros, mask[..., at:]], dim=-1)
    vec = args["vec"]
    if vec.ndim != 2 or args.get("modulation_dims", args.get("modulation_dims_img")) is not None:
        raise NotImplementedError("FrameMemory does not support HunyuanVideo with per-token timesteps "
                                  "(guiding_frame_index, HunyuanVideo I2V) yet")
    clean = vec + mem["delta"].to(device=vec.device, dtype=vec.dtype)
    rows = torch.stack([vec, clean], dim=1)  # [B, 2, D]: row 0 the sampled timestep, row 1 clean
    out["vec"] = rows if mem["rows"] == 3 else rows[:, :, None]
    return out


def _single_video_start(args: dict, mem: dict, m: int) -> int:
    """Where the video tokens start in a single block's sequence: after the text (``img_slice``) or at 0.
    Raises RuntimeError when ``img_slice`` contradicts the double blocks' order (an unknown ComfyUI layout)."""
    img_slice = args["transformer_options"].get("img_slice")
    if mem["text_first"] != (img_slice is not None):
        raise RuntimeError("HunyuanVideo token layout not recognised: the double blocks put the "
                           f"{'text' if mem['text_first'] else 'video'} first, but the single blocks "
                           f"{'have no' if img_slice is None else 'have an'} img_slice (models/families/hunyuan_video.py)")
    if img_slice is None:
        return 0
    start, end = int(img_slice[0]), int(img_slice[1])
    if end - start != mem["n"] + m:
        raise RuntimeError(f"HunyuanVideo img_slice {img_slice} does not hold the {mem['n']} video + {m} memory tokens")
    return start


def cross_blocks(dm) -> int:
    """DiT blocks that get a cross-attention layer of the add-on (``EncoderConfig.dit_blocks``): double + single
    blocks (HunyuanVideo 13B: 20 + 40 = 60). Layer ``i < len(double_blocks)`` follows double block ``i``, the
    others single block ``i - len(double_blocks)``."""
    return len(dm.double_blocks) + len(dm.single_blocks)


def _double_patch(index: int, strip: bool):
    def patch(args: dict, extra: dict) -> dict:
        mem = args["transformer_options"].get(PATCH_KEY)
        if mem is None:
            return extra["original_block"](args)
        img = args["img"]
        m = mem["tokens"].shape[1]
        if index == 0:
            mem["n"] = img.shape[1]  # video (+ ref_latent) tokens; mem is this forward call's own dict
            img = torch.cat([img, mem["tokens"].to(device=img.device, dtype=img.dtype)], dim=1)
        n = mem["n"]
        at = n + (args["txt"].shape[1] if mem["text_first"] else 0)  # memory right after the video in [txt | video]
        new = _with_memory(args, mem, at, m)
        new["modulation_dims_img"] = [(0, n, 0), (n, None, 1)]
        new["modulation_dims_txt"] = [(0, None, 0)]
        out = extra["original_block"]({**args, **new, "img": img})
        if mem.get("hidden") is not None:  # add-on, layer `index`: out["img"] = [video N | memory M]
            out = {**out, "img": cross_attend(mem, index, out["img"], n)}
        if strip:
            out = {**out, "img": out["img"][:, :n]}
        return out

    return patch


def _single_patch(index: int, strip: bool, layer: int):
    """Replacement for single block ``index``; ``layer``: its cross-attention layer (``doubles + index``)."""

    def patch(args: dict, extra: dict) -> dict:
        mem = args["transformer_options"].get(PATCH_KEY)
        if mem is None:
            return extra["original_block"](args)
        n, m = mem["n"], mem["tokens"].shape[1]
        start = _single_video_start(args, mem, m)  # [video N | memory M | txt L] or [txt L | video N | memory M]
        at = start + n
        new = _with_memory(args, mem, at, m)
        new["modulation_dims"] = [(0, at, 0), (at, at + m, 1), (at + m, None, 0)]
        out = extra["original_block"]({**args, **new})
        if mem.get("hidden") is not None:  # add-on: queries = the video tokens
            out = {**out, "img": cross_attend(mem, layer, out["img"], n, start)}
        if strip:
            x = out["img"]
            out = {**out, "img": torch.cat([x[:, :at], x[:, at + m:]], dim=1)}
        return out

    return patch


def _diffusion_wrapper(executor, x, timestep, context, y=None, txt_byt5=None, clip_fea=None, guidance=None,
                       attention_mask=None, guiding_frame_index=None, ref_latent=None, disable_time_r=False,
                       control=None, transformer_options={}, **kwargs):
    tokens, ids = pop_memory(kwargs, x.device)  # [B, M, D], [1, M, 3]
    hidden = pop_hidden(kwargs)  # [B, M_h, Ch] or None (cross-attention add-on)
    if tokens is not None:
        if control is not None:
            raise NotImplementedError("FrameMemory does not support ControlNet on HunyuanVideo yet")
        dm = executor.class_obj
        pe = dm.pe_embedder(ids)  # [1, 1, M, d/2, 2, 2], like forward_orig's pe
        ts = torch.cat([torch.zeros_like(timestep), timestep])
        t_emb = dm.time_in(timestep_embedding(ts, 256, time_factor=1.0).to(x.dtype))  # as in forward_orig
        delta = t_emb[: timestep.shape[0]] - t_emb[timestep.shape[0]:]  # time_in(0) - time_in(t): [B, D]
        mem = {"tokens": tokens, "pe": pe, "delta": delta, "text_first": text_first(dm), "rows": modulation_rows()}
        if hidden is not None:
            mem.update(hidden=hidden, cross=cross_layers(transformer_options.get(CROSS_KEY), hidden, cross_blocks(dm),
                                                         dm.hidden_size))
        transformer_options = {**transformer_options, PATCH_KEY: mem}
    return executor(x, timestep, context, y, txt_byt5, clip_fea, guidance, attention_mask, guiding_frame_index,
                    ref_latent, disable_time_r, control, transformer_options, **kwargs)


def install(model, dm, memory_t0: bool = True) -> None:
    """Install the memory wrapper and per-block patches on ``model`` (a clone; replaces earlier ones); memory tokens
    are modulated at timestep 0. Raises ValueError for ``memory_t0`` False (the "shared" ablation is Wan 2.1 only)."""
    if not memory_t0:
        raise ValueError("HunyuanVideo memory tokens always get timestep 0 (memory_timestep 'zero')")
    modulation_rows()  # an apply_mod of unknown layout fails here, before sampling
    model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, PATCH_KEY)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, PATCH_KEY, _diffusion_wrapper)
    doubles, singles = len(dm.double_blocks), len(dm.single_blocks)
    for i in range(doubles):
        model.set_model_patch_replace(_double_patch(i, strip=singles == 0 and i == doubles - 1), "dit", "double_block", i)
    for i in range(singles):
        model.set_model_patch_replace(_single_patch(i, strip=i == singles - 1, layer=doubles + i), "dit", "single_block", i)
