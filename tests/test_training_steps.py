"""Training steps of arXiv 2512.23851 (training/stages.py) on a tiny ComfyUI WanModel with peft LoRA (CPU, seeded):
shapes, Stage I masking / loss restricted to Omega, frame positions, LoRA-only updates of the DiT, Stage II overfit,
determinism."""
from __future__ import annotations

import pytest
import torch

RANK = 8


@pytest.fixture()
def setup(comfy):
    pytest.importorskip("peft")
    from framememory.demo.tiny_models import tiny_encoder_config, tiny_wan21_dit
    from framememory.memory.encoder import HistoryEncoder
    from framememory.training import stages

    torch.manual_seed(0)
    dm = tiny_wan21_dit(seed=0)
    stages.add_lora(dm, rank=RANK)
    encoder = HistoryEncoder(tiny_encoder_config("2x2x1"))
    encoder.reset_parameters(torch.Generator().manual_seed(1))
    return dm, encoder, stages


def _data(seed=0, b=2, t_hist=4, t_next=2):
    g = torch.Generator().manual_seed(seed)
    history = torch.randn(b, 16, t_hist, 8, 8, generator=g)
    nxt = torch.randn(b, 16, t_next, 8, 8, generator=g)
    context = torch.randn(b, 5, 4096, generator=g) * 0.1
    return history, nxt, context


def test_lora_wraps_comfy_linears_and_freezes_the_base(setup):
    dm, encoder, stages = setup
    from peft.tuners.lora import Linear as LoraLinear

    import comfy.ops

    wrapped = {n for n, m in dm.named_modules() if isinstance(m, LoraLinear)}
    per_block = {f"self_attn.{x}" for x in "qkvo"} | {f"cross_attn.{x}" for x in "qkvo"} | {"ffn.0", "ffn.2"}
    assert wrapped == {f"blocks.{i}.{s}" for i in range(len(dm.blocks)) for s in per_block}
    base = dm.blocks[0].self_attn.q.base_layer
    assert isinstance(base, comfy.ops.disable_weight_init.Linear) and isinstance(base, torch.nn.Linear)
    assert dm.blocks[0].self_attn.q.lora_A["default"].weight.shape == (RANK, dm.dim)
    trainable = {n for n, p in dm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(stages.lora_state_dict(dm)) == 2 * len(wrapped)


def test_default_rank_is_128(comfy):
    pytest.importorskip("peft")
    from framememory.demo.tiny_models import tiny_wan21_dit
    from framememory.training import stages

    dm = tiny_wan21_dit(seed=0)
    stages.add_lora(dm)
    assert dm.blocks[1].ffn[0].lora_A["default"].weight.shape == (128, dm.dim)


def test_noise_level_distribution_is_shifted_logit_normal(setup):
    _, _, stages = setup
    t = stages.LogitNormal(0.2, 1.0).sample((20000,), torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() - 0.2) < 0.03 and abs(logit.std().item() - 1.0) < 0.03


def test_stage1_shapes_and_masking_only_outside_omega(setup):
    dm, encoder, stages = setup
    history, _, _ = _data()
    cfg = stages.StageConfig(omega_frames=2)
    prep = stages.prepare_stage1(history, cfg, torch.Generator().manual_seed(3))
    assert prep.omega.shape == (2, 2) and prep.masked.shape == history.shape and prep.eps.shape == (2, 16, 2, 8, 8)
    assert prep.t.shape == (2,) and prep.levels.shape == (2, 4)
    for b in range(2):
        omega = set(prep.omega[b].tolist())
        assert len(omega) == 2 and prep.omega[b].tolist() == sorted(omega)
        for f in range(4):
            same = torch.equal(prep.masked[b, :, f], history[b, :, f])
            assert same == (f in omega), (b, f)  # bit-identical in Omega, noised elsewhere
    # per-sample Omega: over a few draws, the two samples of a batch do not always share it
    draws = [stages.sample_omega(2, 8, 2, torch.Generator().manual_seed(s)) for s in range(5)]
    assert any(not torch.equal(d[0], d[1]) for d in draws)


def test_stage1_loss_only_on_omega_and_positions_are_original_times(setup):
    dm, encoder, stages = setup
    history, _, context = _data(1)
    cfg = stages.StageConfig(omega_frames=1)
    prep = stages.prepare_stage1(history, cfg, torch.Generator().manual_seed(4))
    with torch.no_grad():
        loss, pred = stages.stage1_loss(dm, encoder, history, context, prep, cfg)
        assert pred.shape == (2, 16, 1, 8, 8) and torch.isfinite(loss)
        # perturb a non-Omega frame of the target history (the encoder's masked input is prep.masked): same loss
        perturbed = history.clone()
        for b in range(2):
            other = next(f for f in range(4) if f not in prep.omega[b].tolist())
            perturbed[b, :, other] += 5.0
        loss2, _ = stages.stage1_loss(dm, encoder, perturbed, context, prep, cfg)
        assert torch.equal(loss, loss2)
        # perturbing an Omega frame does change it
        hit = history.clone()
        hit[0, :, prep.omega[0, 0]] += 5.0
        assert not torch.equal(loss, stages.stage1_loss(dm, encoder, hit, context, prep, cfg)[0])
        # the regenerated frame is a positional query: moving its RoPE time changes the prediction
        x_t, _ = stages.flow_pair(stages.gather_frames(history, prep.omega), prep.t, prep.eps)
        tokens, pos2 = stages.encode_history(dm, encoder, prep.masked, 0.0)
        a = stages.dit_forward(dm, x_t, prep.t, context, tokens, pos2, frame_times=prep.omega)
        b = stages.dit_forward(dm, x_t, prep.t, context, tokens, pos2, frame_times=(prep.omega + 1) % 4)
        torch.testing.assert_close(a, pred)
        assert (a - b).abs().max() > 1e-4


def test_frame_rope_matches_wan_rope_for_contiguous_times(setup):
    dm, _, stages = setup
    ref = dm.rope_encode(3, 8, 8, device="cpu", dtype=torch.float32)  # [1, 3*4*4, 1, d/2, 2, 2]
    ours = stages.frame_rope(dm, torch.arange(3)[None].expand(2, 3), 4, 4)
    assert ours.shape == (2, *ref.shape[1:])
    torch.testing.assert_close(ours, ref.expand_as(ours))
    # and with memory: explicit contiguous frame times equal the model's own positions
    history, nxt, context = _data(2)
    with torch.no_grad():
        tokens, pos2 = stages.encode_history(dm, stages_encoder(setup), history, -4.0)
        t = torch.tensor([0.3, 0.7])
        plain = stages.dit_forward(dm, nxt, t, context, tokens, pos2)
        explicit = stages.dit_forward(dm, nxt, t, context, tokens, pos2, frame_times=torch.arange(2)[None].expand(2, 2))
    torch.testing.assert_close(plain, explicit)


def stages_encoder(setup):
    return setup[1]


def test_memory_tokens_shapes_and_lr_stand_in(setup):
    dm, encoder, stages = setup
    history, _, _ = _data()
    tokens, pos2 = stages.encode_history(dm, encoder, history, -4.0)
    assert tokens.shape == (2, 4 * 2 * 2, dm.dim) and pos2.shape == (2, 16, 3) and pos2.dtype == torch.int64
    assert pos2[0, 0].tolist() == [-8, 1, 1]  # t = -4, centres of 2x2 token cells at 0.5
    lr = stages.lr_branch(dm, history, encoder.cfg)
    direct = dm.patch_embedding(history.float())  # [B, D, 4, 4, 4]
    torch.testing.assert_close(lr[:, :, 1, 0, 1], direct[:, :, 1, 0:2, 2:4].mean(dim=(2, 3)))
    # the untrained HR branch is zero: tokens are the LR branch
    torch.testing.assert_close(tokens, lr.flatten(2).transpose(1, 2))


def _step(dm, encoder, stages, opt, seed=5):
    history, nxt, context = _data(seed)
    g = torch.Generator().manual_seed(seed)
    opt.zero_grad()
    loss, _ = stages.stage2_loss(dm, encoder, history, nxt, context, generator=g)
    loss.backward()
    opt.step()
    return loss.item()


def test_one_step_changes_only_lora_and_encoder(setup):
    dm, encoder, stages = setup
    base = {n: p.detach().clone() for n, p in dm.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in dm.named_parameters() if "lora_" in n}
    enc = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    opt = torch.optim.AdamW(stages.trainable_parameters(dm, encoder), lr=1e-3, weight_decay=0.0)
    history, _, context = _data(6)
    cfg = stages.StageConfig(omega_frames=2)
    prep = stages.prepare_stage1(history, cfg, torch.Generator().manual_seed(6))
    loss, _ = stages.stage1_loss(dm, encoder, history, context, prep, cfg)
    loss.backward()
    lora_b = dm.blocks[0].self_attn.q.lora_B["default"].weight
    assert lora_b.grad is not None and lora_b.grad.abs().max() > 0  # gradients reach LoRA through comfy layers
    assert encoder.hr.proj.weight.grad.abs().max() > 0  # and the encoder through the memory tokens
    assert all(p.grad is None for n, p in dm.named_parameters() if "lora_" not in n)
    opt.step()
    params = dict(dm.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in base.items())  # base weights bit-identical
    assert any(not torch.equal(params[n], v) for n, v in lora.items())
    assert any(not torch.equal(p, enc[n]) for n, p in encoder.named_parameters())


def test_stage2_overfits_a_fixed_batch(setup):
    dm, encoder, stages = setup
    history, nxt, context = _data(7)
    t = torch.tensor([0.4, 0.8])
    eps = torch.randn(nxt.shape, generator=torch.Generator().manual_seed(8))
    opt = torch.optim.AdamW(stages.trainable_parameters(dm, encoder), lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss, pred = stages.stage2_loss(dm, encoder, history, nxt, context, t=t, eps=eps)
        assert pred.shape == nxt.shape and torch.isfinite(loss)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_deterministic_step(comfy):
    pytest.importorskip("peft")
    from framememory.demo.tiny_models import tiny_encoder_config, tiny_wan21_dit
    from framememory.memory.encoder import HistoryEncoder
    from framememory.training import stages

    def run():
        dm = tiny_wan21_dit(seed=0)
        torch.manual_seed(0)  # peft's lora_A init uses the global RNG
        stages.add_lora(dm, rank=RANK)
        encoder = HistoryEncoder(tiny_encoder_config("2x2x1"))
        encoder.reset_parameters(torch.Generator().manual_seed(1))
        opt = torch.optim.AdamW(stages.trainable_parameters(dm, encoder), lr=1e-3)
        first = _step(dm, encoder, stages, opt)
        return first, _step(dm, encoder, stages, opt)

    assert run() == run()
