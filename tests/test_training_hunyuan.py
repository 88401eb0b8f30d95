"""Stage I / Stage II training of arXiv 2512.23851 on HunyuanVideo (training/stages.py through training/dits.py) with a
tiny ComfyUI HunyuanVideo and peft LoRA (CPU, seeded): LoRA targets in double and single blocks, one step of each
stage changes only LoRA + encoder, Stage I masks outside Omega and its loss sees only Omega, Omega's RoPE positions are
the full clip's, gradients through ComfyUI's in-place blocks are right, the exported LoRA is the same model under
ComfyUI's stock LoRA loader, and the command line (--tiny-dit hunyuan_video, shards with pooled text and LR latents)
runs. The LR branch takes a real (here random, correctly shaped) LR latent through ``img_in``; there is no stand-in."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from types import SimpleNamespace

import accelerate  # noqa: F401  required (requirements-train.txt): a missing one fails, never skips
import peft  # noqa: F401  required (requirements-train.txt): a missing one fails, never skips
import pytest
import torch

RANK = 8
B, T, H, W = 2, 4, 8, 8  # latent frames 8x8 cells = 4x4 DiT tokens per frame


def lr_latent_for(latent: torch.Tensor, cfg, seed: int = 0) -> torch.Tensor:
    """A random LR latent of the right shape for ``latent`` [B, C, T, h, w] (or one sample [C, T, h, w]) under encoder
    config ``cfg``: [.., C, Tm, Hm * ph, Wm * pw] with (Tm, Hm, Wm) = memory_grid, so ``img_in`` lands on the grid."""
    from framememory.memory.grid import memory_grid

    tm, hm, wm = memory_grid(tuple(latent.shape[-3:]), cfg)
    _, ph, pw = cfg.patch_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*latent.shape[:-4], cfg.latent_channels, tm, hm * ph, wm * pw, generator=g)


def _memory(tokens, pos2):
    """encode_history's namespace for hand-made memory tokens (no cross-attention, timestep-0 rule)."""
    return SimpleNamespace(tokens=tokens, positions2=pos2, hidden=None, cross=None, memory_t0=True)


@pytest.fixture()
def setup(comfy):
    from framememory.demo.tiny_hunyuan import tiny_hunyuan_dit, tiny_hunyuan_encoder_config
    from framememory.memory.encoder import HistoryEncoder
    from framememory.training import stages

    torch.manual_seed(0)  # peft's lora_A init uses the global RNG
    dm = tiny_hunyuan_dit(seed=0)
    stages.add_lora(dm, rank=RANK)
    encoder = HistoryEncoder(tiny_hunyuan_encoder_config("2x2x1"))
    encoder.reset_parameters(torch.Generator().manual_seed(1))
    return dm, encoder, stages


def _data(seed=0, b=B, t_hist=T, t_next=2):
    """history [b, 16, t_hist, 8, 8], next segment, context [b, 5, 4096], pooled y [b, 768]."""
    g = torch.Generator().manual_seed(seed)
    history = torch.randn(b, 16, t_hist, H, W, generator=g)
    nxt = torch.randn(b, 16, t_next, H, W, generator=g)
    context = torch.randn(b, 5, 4096, generator=g) * 0.1
    pooled = torch.randn(b, 768, generator=g)
    return history, nxt, context, pooled


def _snapshot(dm, encoder):
    return ({n: p.detach().clone() for n, p in dm.named_parameters()},
            {n: p.detach().clone() for n, p in encoder.named_parameters()})


def _assert_only_lora_and_encoder_changed(dm, encoder, before):
    dm0, enc0 = before
    params = dict(dm.named_parameters())
    base = [n for n in params if "lora_" not in n]
    assert all(torch.equal(params[n], dm0[n]) for n in base)  # frozen DiT bit-identical
    changed = {n for n in params if "lora_" in n and not torch.equal(params[n], dm0[n])}
    assert any(n.startswith("double_blocks.") for n in changed) and any(n.startswith("single_blocks.") for n in changed)
    assert any(not torch.equal(p, enc0[n]) for n, p in encoder.named_parameters())


def _step(dm, encoder, stages, loss_fn):
    """One AdamW step on loss_fn(); checks gradients reach LoRA (both block kinds) and the encoder only."""
    before = _snapshot(dm, encoder)
    opt = torch.optim.AdamW(stages.trainable_parameters(dm, encoder), lr=1e-3, weight_decay=0.0)
    loss, pred = loss_fn()
    assert torch.isfinite(loss)
    loss.backward()
    for lora_b in (dm.double_blocks[0].img_attn.qkv.lora_B["default"].weight,
                   dm.double_blocks[1].txt_mlp[2].lora_B["default"].weight,
                   dm.single_blocks[1].linear2.lora_B["default"].weight):
        assert lora_b.grad is not None and lora_b.grad.abs().max() > 0
    assert encoder.hr.proj.weight.grad.abs().max() > 0  # through the memory tokens
    assert all(p.grad is None for n, p in dm.named_parameters() if "lora_" not in n)
    opt.step()
    _assert_only_lora_and_encoder_changed(dm, encoder, before)
    return loss, pred


def test_lora_targets_hunyuan_double_and_single_blocks(setup):
    dm, _, stages = setup
    from peft.tuners.lora import Linear as LoraLinear

    import comfy.ops
    from framememory.training import dits

    assert stages.dit_family(dm) is dits.HUNYUAN
    wrapped = {n for n, m in dm.named_modules() if isinstance(m, LoraLinear)}
    double = {f"{s}_{m}" for s in ("img", "txt") for m in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")}
    expected = {f"double_blocks.{i}.{m}" for i in range(len(dm.double_blocks)) for m in double}
    expected |= {f"single_blocks.{i}.linear{k}" for i in range(len(dm.single_blocks)) for k in (1, 2)}
    assert wrapped == expected  # not the modulation linears, not txt_in / img_in / final_layer
    base = dm.single_blocks[0].linear1.base_layer
    assert isinstance(base, comfy.ops.disable_weight_init.Linear)
    assert dm.double_blocks[0].img_attn.qkv.lora_A["default"].weight.shape == (RANK, dm.hidden_size)
    trainable = {n for n, p in dm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_stage1_step_masks_outside_omega_and_loss_sees_only_omega(setup):
    dm, encoder, stages = setup
    history, _, context, pooled = _data(1)
    lr = lr_latent_for(history, encoder.cfg)
    cfg = stages.StageConfig(omega_frames=2)
    prep = stages.prepare_stage1(history, cfg, torch.Generator().manual_seed(3), lr_latent=lr, rt=1)
    for b in range(B):
        omega = set(prep.omega[b].tolist())
        for f in range(T):  # the encoder's input: bit-identical in Omega, noised elsewhere (history and LR latent)
            assert torch.equal(prep.masked[b, :, f], history[b, :, f]) == (f in omega), (b, f)
            assert torch.equal(prep.lr_masked[b, :, f], lr[b, :, f]) == (f in omega), (b, f)
    with torch.no_grad():
        loss, pred = stages.stage1_loss(dm, encoder, history, context, prep, cfg, pooled=pooled)
        assert pred.shape == (B, 16, 2, H, W) and torch.isfinite(loss)
        other = history.clone()  # the target outside Omega does not enter the loss
        for b in range(B):
            other[b, :, next(f for f in range(T) if f not in prep.omega[b].tolist())] += 5.0
        assert torch.equal(stages.stage1_loss(dm, encoder, other, context, prep, cfg, pooled=pooled)[0], loss)
        hit = history.clone()
        hit[1, :, prep.omega[1, 1]] += 5.0
        assert not torch.equal(stages.stage1_loss(dm, encoder, hit, context, prep, cfg, pooled=pooled)[0], loss)
    loss2, _ = _step(dm, encoder, stages,
                     lambda: stages.stage1_loss(dm, encoder, history, context, prep, cfg, pooled=pooled))
    assert torch.equal(loss2.detach(), loss)
    norms = [dm.double_blocks[0].img_norm1, dm.single_blocks[1].pre_norm]
    assert all(not n._forward_pre_hooks for n in norms)  # autograd_safe removed its hooks


def test_stage2_step_and_text_inputs(setup):
    dm, encoder, stages = setup
    history, nxt, context, pooled = _data(2)
    lr = lr_latent_for(history, encoder.cfg)
    g = torch.Generator().manual_seed(4)
    _, pred = _step(dm, encoder, stages, lambda: stages.stage2_loss(dm, encoder, history, nxt, context, generator=g,
                                                                    lr_latent=lr, pooled=pooled))
    assert pred.shape == nxt.shape
    t, eps = torch.tensor([0.3, 0.8]), torch.randn(nxt.shape, generator=g)
    kw = dict(t=t, eps=eps, lr_latent=lr)
    with torch.no_grad():
        a = stages.stage2_loss(dm, encoder, history, nxt, context, pooled=pooled, **kw)[0]
        none = stages.stage2_loss(dm, None, history, nxt, context, t=t, eps=eps, pooled=pooled)[0]  # no-memory baseline
        guided = stages.stage2_loss(dm, encoder, history, nxt, context, pooled=pooled,
                                    cfg=stages.StageConfig(guidance=6.0), **kw)[0]
        other_lr = stages.stage2_loss(dm, encoder, history, nxt, context, pooled=pooled,
                                      **{**kw, "lr_latent": lr + 1.0})[0]
        with pytest.raises(ValueError, match="pooled text embedding"):
            stages.stage2_loss(dm, encoder, history, nxt, context, **kw)
        with pytest.raises(ValueError, match=r"pooled must be \[B, 768\]"):
            stages.stage2_loss(dm, encoder, history, nxt, context, pooled=pooled[:, :700], **kw)
        with pytest.raises(ValueError, match="LR latent"):
            stages.stage2_loss(dm, encoder, history, nxt, context, t=t, eps=eps, pooled=pooled)
    assert torch.isfinite(none) and none != a and guided != a  # memory and the embedded guidance both matter
    assert other_lr != a  # and so does the LR latent


def test_stage1_positions_are_the_full_clip_positions(setup):
    """Omega frames get exactly the img_ids rows (and RoPE) they have in the whole history, and the forward with
    frame_times equals ComfyUI's forward_orig called with those img_ids."""
    dm, encoder, stages = setup
    from framememory.training import dits

    history, _, context, pooled = _data(5)
    omega = torch.tensor([[0, 2], [1, 3]])
    ht, wt = dits.HUNYUAN.token_grid(dm, history)
    full = dm.img_ids(history)  # [B, T*ht*wt, 3]: the stock positions of the full clip
    rows = (omega[:, :, None] * ht * wt + torch.arange(ht * wt)).reshape(B, -1)  # token rows of the Omega frames
    at_full = torch.stack([full[b, rows[b]] for b in range(B)])
    ids = dits.frame_ids(omega, ht, wt)
    assert torch.equal(ids, at_full)
    pe_full = dm.pe_embedder(full)
    pe = stages.frame_rope(dm, omega, ht, wt)
    assert pe.shape == (B, 1, 2 * ht * wt, *pe_full.shape[3:])
    assert torch.equal(pe, torch.stack([pe_full[b, :, rows[b]] for b in range(B)]))

    x = stages.gather_frames(history, omega)
    t = torch.tensor([0.4, 0.7])
    with torch.no_grad():
        ours = stages.dit_forward(dm, x, t, context, None, frame_times=omega, pooled=pooled, guidance=2.0)
        stock = dm.forward_orig(x, at_full, context, torch.zeros(B, context.shape[1], 3), None, t * 1000.0, pooled,
                                guidance=torch.full((B,), 2.0), transformer_options={})
        torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)
        # with memory: explicit contiguous times are the DiT's own positions; other times change the prediction
        memory = stages.encode_history(dm, encoder, history, 0.0, lr_latent=lr_latent_for(history, encoder.cfg))
        plain = stages.dit_forward(dm, x, t, context, memory, pooled=pooled)
        explicit = stages.dit_forward(dm, x, t, context, memory, frame_times=torch.arange(2).expand(B, 2),
                                      pooled=pooled)
        moved = stages.dit_forward(dm, x, t, context, memory, frame_times=omega, pooled=pooled)
    torch.testing.assert_close(explicit, plain, atol=1e-6, rtol=1e-6)
    assert (moved - plain).abs().max() > 1e-4


def test_lr_branch_is_img_in_of_the_lr_latent(setup):
    """Fig. 2 on HunyuanVideo: the LR branch is the DiT's own img_in (the inference adapter's patch_embed) of the LR
    latent, on the memory grid; an untrained HR branch adds nothing."""
    dm, encoder, stages = setup
    from framememory.models.families import hunyuan_video as hunyuan

    history = _data(6)[0]
    lr = lr_latent_for(history, encoder.cfg)  # rate 2x2x1 on 4x4 tokens: [B, 16, 4, 4, 4]
    assert lr.shape == (B, 16, T, 4, 4)
    with torch.no_grad():
        emb = hunyuan.patch_embed(dm, lr, device=None)  # [B, D, 4, 2, 2]
        memory = stages.encode_history(dm, encoder, history, -4.0, lr_latent=lr)
    assert emb.shape == (B, dm.hidden_size, T, 2, 2)
    torch.testing.assert_close(memory.tokens, emb.flatten(2).transpose(1, 2))
    assert memory.positions2[0, 0].tolist() == [-8, 1, 1] and memory.memory_t0 is True
    with pytest.raises(ValueError, match="LR latent"):
        stages.encode_history(dm, encoder, history, -4.0)


def test_shared_memory_timestep_is_refused_on_hunyuan(setup):
    """The memory-token timestep rule reaches training: "shared" is a Wan 2.1 ablation, and the HunyuanVideo adapter's
    install (which training uses) refuses it, as the nodes do."""
    dm, encoder, stages = setup
    from framememory.memory.encoder import HistoryEncoder

    shared = HistoryEncoder(dataclasses.replace(encoder.cfg, memory_timestep="shared"))
    shared.load_state_dict(encoder.state_dict())
    history, nxt, context, pooled = _data(8)
    with torch.no_grad(), pytest.raises(ValueError, match="always get timestep 0"):
        stages.stage2_loss(dm, shared, history, nxt, context, t=torch.tensor([0.5, 0.5]), pooled=pooled,
                           lr_latent=lr_latent_for(history, encoder.cfg))


def test_gradients_through_comfyui_inplace_blocks_are_exact(comfy, monkeypatch):
    """ComfyUI's flux-style blocks add to LayerNorm-saved inputs in place; training's autograd_safe copies those
    inputs: backward works (it fails without) and matches a float64 central difference, memory tokens included."""
    from framememory.demo.tiny_hunyuan import tiny_hunyuan_dit
    from framememory.training import dits, stages

    import comfy.model_management

    if hasattr(comfy.model_management, "in_training"):  # ComfyUI >= 0.2x: RoPE's eager float64-capable path throughout
        monkeypatch.setattr(comfy.model_management, "in_training", True)  # (the no-grad central difference too)
    dm = tiny_hunyuan_dit(seed=0).double()
    dm.requires_grad_(False)
    weights = [dm.double_blocks[0].img_attn.qkv.weight, dm.double_blocks[1].txt_mlp[0].weight,
               dm.single_blocks[0].linear1.weight]
    for w in weights:
        w.requires_grad_(True)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 16, 2, H, W, generator=g, dtype=torch.float64)
    ctx = torch.randn(1, 5, 4096, generator=g, dtype=torch.float64) * 0.1
    pooled = torch.randn(1, 768, generator=g, dtype=torch.float64)
    tokens = torch.randn(1, 4, dm.hidden_size, generator=g, dtype=torch.float64) * 0.5
    pos2 = torch.tensor([[[-2, 1, 1], [-2, 1, 5], [-2, 5, 1], [-2, 5, 5]]])
    t = torch.tensor([0.6], dtype=torch.float64)

    def loss():
        return stages.dit_forward(dm, x, t, ctx, _memory(tokens, pos2), pooled=pooled).square().mean()

    loss().backward()
    directions = [torch.randn(w.shape, generator=g, dtype=torch.float64) for w in weights]
    analytic = sum((w.grad * d).sum() for w, d in zip(weights, directions)).item()
    h = 1e-5
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            for w, d in zip(weights, directions):
                w.add_(sign * h * d)
            values.append(loss().item())
            for w, d in zip(weights, directions):
                w.sub_(sign * h * d)
    numeric = (values[0] - values[1]) / (2 * h)
    assert abs(analytic) > 1e-3 and abs(analytic - numeric) < 1e-3 * abs(analytic), (analytic, numeric)
    monkeypatch.setattr(dits.HunyuanFamily, "autograd_safe", lambda self, dm: dits.contextlib.nullcontext())
    with pytest.raises(RuntimeError, match="inplace"):
        loss().backward()


def _hv_dataset(n=2, frames=6, seed=0, rate="2x2x2"):
    """Samples with latent, text, pooled and the LR latent at the encoder's ``rate``."""
    from framememory.demo.tiny_hunyuan import tiny_hunyuan_encoder_config

    cfg = tiny_hunyuan_encoder_config(rate)
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        latent = torch.randn(16, frames, H, W, generator=g)
        items.append({"latent": latent, "text": torch.randn(5, 4096, generator=g) * 0.1,
                      "pooled": torch.randn(768, generator=g), "lr_latent": lr_latent_for(latent, cfg, seed * 100 + i)})
    return items


def test_exported_lora_is_the_same_hunyuan_model_under_comfyui_stock_loader(comfy, tmp_path):
    import comfy.model_management
    import comfy.sd
    import comfy.utils
    from safetensors.torch import save_file

    from framememory.demo.tiny_hunyuan import tiny_hunyuan_dit, tiny_hunyuan_encoder_config
    from framememory.memory.encoder import HistoryEncoder
    from framememory.models.encoding import MemoryEncoder
    from framememory.training import loop, stages

    dm = tiny_hunyuan_dit(seed=0)
    enc = HistoryEncoder(tiny_hunyuan_encoder_config("2x2x2"))
    enc.reset_parameters(torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="needs a pooled text embedding"):
        loop.train(loop.TrainArgs(stage=2, steps=1, lora_rank=RANK), tiny_hunyuan_dit(seed=0), enc,
                   [{k: v for k, v in it.items() if k != "pooled"} for it in _hv_dataset()])
    uneven = _hv_dataset()
    uneven[1]["text"] = uneven[1]["text"][:3]  # zero padding would change HunyuanVideo's condition: refused
    with pytest.raises(ValueError, match=r"text lengths \[5, 3\]|text lengths \[3, 5\]"):
        loop.train(loop.TrainArgs(stage=2, steps=1, lora_rank=RANK, batch_size=2, segment_frames=2),
                   tiny_hunyuan_dit(seed=0), enc, uneven)
    res = loop.train(loop.TrainArgs(stage=2, steps=2, lora_rank=RANK, lora_alpha=4.0, learning_rate=1e-2, segment_frames=2,
                                    output_dir=str(tmp_path)), dm, enc, _hv_dataset())
    sd = comfy.utils.load_torch_file(res["exported"]["lora"])
    assert all(k.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks.")) for k in sd)
    assert sd["diffusion_model.single_blocks.1.linear2.alpha"].item() == 4.0
    assert sd["diffusion_model.double_blocks.0.txt_attn.qkv.lora_A.weight"].shape == (RANK, 128)

    # ComfyUI's stock path on the untouched base DiT file: UNETLoader + LoraLoaderModelOnly (load_lora_for_models)
    base_sd = {k: v.contiguous() for k, v in tiny_hunyuan_dit(seed=0).state_dict().items()}
    save_file(base_sd, str(tmp_path / "dit.safetensors"))
    base = comfy.sd.load_diffusion_model(str(tmp_path / "dit.safetensors"))
    lora_model, _ = comfy.sd.load_lora_for_models(base, None, sd, 1.0, 0)
    assert len(lora_model.patches) == 2 * 8 + 2 * 2  # every LoRA module of the 2 double + 2 single blocks
    comfy.model_management.load_models_gpu([lora_model])  # applies the patches to the weights
    stock_dm = lora_model.model.diffusion_model

    history, nxt, context, pooled = _data(9, b=1)
    t = torch.tensor([0.5])
    with torch.no_grad():
        memory = stages.encode_history(dm, enc, history, -float(T), lr_latent=lr_latent_for(history, enc.cfg))
        ours = stages.dit_forward(dm, nxt, t, context, memory, pooled=pooled)
        stock = stages.dit_forward(stock_dm, nxt, t, context, memory, pooled=pooled)
        plain = stages.dit_forward(tiny_hunyuan_dit(seed=0), nxt, t, context, memory, pooled=pooled)
    assert (ours - plain).abs().max() > 1e-3  # the LoRA learned something
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-4)

    mem = MemoryEncoder.from_file(res["exported"]["encoder"])  # what the Load Memory Encoder node does
    assert mem.cfg == enc.cfg and mem.cfg.family == "hunyuan_video"
    assert mem.check(base).dim == 128


def test_command_line_stage1_with_tiny_hunyuan_and_pooled_shards(comfy, tmp_path, comfyui_dir, monkeypatch):
    """training/train.py main (in process): --tiny-dit hunyuan_video on shards that carry the pooled embedding;
    latents are mapped to HunyuanVideo's model space; --dit loads a HunyuanVideo file through ComfyUI's detection."""
    from safetensors.torch import save_file

    import comfy.latent_formats
    from framememory.demo.tiny_hunyuan import tiny_hunyuan_dit
    from framememory.training import train as cli
    from framememory.training.data import FORMAT, ModelSpaceDataset, ShardDataset, save_shard_atomic
    from framememory.training.loop import collate

    names = []
    for i, item in enumerate(_hv_dataset(n=2, frames=4)):
        p = tmp_path / "shards" / "clip" / f"chunk_{i:05d}.safetensors"
        p.parent.mkdir(parents=True, exist_ok=True)
        save_shard_atomic(p, item["latent"], item["text"], {"chunk": i}, pooled=item["pooled"],
                          lr_latents={"2x2x2": item["lr_latent"]})
        names.append(f"clip/chunk_{i:05d}.safetensors")
    manifest = {"format": FORMAT, "settings": {"lr_rates": ["2x2x2"]}, "videos": [{"shards": names}]}
    (tmp_path / "shards" / "manifest.json").write_text(json.dumps(manifest))
    raw = ShardDataset(tmp_path / "shards", lr_rate="2x2x2")
    ds = ModelSpaceDataset(raw, comfy.latent_formats.HunyuanVideo())
    assert raw[1]["pooled"].shape == (768,) and raw[1]["lr_latent"].shape == (16, 2, 4, 4)
    torch.testing.assert_close(ds[1]["latent"], raw[1]["latent"] * 0.476986)
    torch.testing.assert_close(ds[1]["lr_latent"], raw[1]["lr_latent"] * 0.476986)  # LR latent in model space too
    assert "lr_latent" not in ShardDataset(tmp_path / "shards")[0]
    batch = collate([ds[0], ds[1]])
    assert batch["pooled"].shape == (2, 768) and batch["context"].shape == (2, 5, 4096)
    assert batch["lr_latent"].shape == (2, 16, 2, 4, 4)
    assert batch["context_lengths"].tolist() == [5, 5]

    monkeypatch.setenv("COMFYUI_DIR", str(comfyui_dir))
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() edits sys.path (ComfyUI, scripts/): undo afterwards
    out = tmp_path / "run"
    assert cli.main(["--stage", "1", "--data", str(tmp_path / "shards"), "--tiny-dit", "hunyuan_video",
                     "--out", str(out), "--steps", "1", "--lora-rank", str(RANK), "--hr-channels", "16,32,64,64",
                     "--attn-heads", "4", "--rate", "2x2x2", "--guidance", "1.0"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 1 and log[-1]["loss"] == log[-1]["loss"]  # finite
    assert (out / "lora_stage1.safetensors").is_file() and (out / "encoder_stage1.safetensors").is_file()

    path = tmp_path / "hv.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_hunyuan_dit(seed=0).state_dict().items()}, str(path))
    dm = cli.load_dit(str(path), "float32")
    new = argparse.Namespace(no_memory=False, encoder=None, hr_channels="16,32,64,64", rate="4x4x2", attn_heads=4,
                             only_lr=False, without_lr=False)
    enc = cli.build_encoder(dm, new)
    assert type(dm).__name__ == "HunyuanVideo" and enc.cfg.family == "hunyuan_video" and enc.cfg.dim == 128
    from framememory.demo.tiny_models import tiny_wan21_dit

    trained = argparse.Namespace(no_memory=False, encoder=str(out / "encoder_stage1.safetensors"))
    with pytest.raises(SystemExit, match="is for hunyuan_video width 128, the DiT is wan21"):
        cli.build_encoder(tiny_wan21_dit(seed=0), trained)
