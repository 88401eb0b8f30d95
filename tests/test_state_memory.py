"""Tests of VideoSSM's global state memory (memory/designs/video_ssm.py, arXiv 2512.04519): the chunked gated delta rule
against the literal per-token loop, its closed forms (pure decay, exact recall), and StateMemory's absorb / read
(continuation, zero-init output, gradients, init, comfy.ops.manual_cast)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from framememory.memory.config import EncoderConfig
from framememory.memory.designs.video_ssm import StateMemory, gated_delta_rule, gated_delta_rule_reference

CFG = EncoderConfig(dim=32, dit_blocks=3, ssm_heads=2, ssm_key_dim=8, memory_type="video_ssm")  # dv = 16


def _inputs(b=2, h=3, n=70, dk=8, dv=5, seed=0, dtype=torch.float32, with_state=True, alpha_min=0.95):
    """Random (k, v, alpha, beta, state): unit keys, alpha in [alpha_min, 1), beta in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    k = F.normalize(torch.randn(b, h, n, dk, generator=g, dtype=dtype), dim=-1)
    v = torch.randn(b, h, n, dv, generator=g, dtype=dtype)
    alpha = alpha_min + (1 - alpha_min) * torch.rand(b, h, n, generator=g, dtype=dtype)
    beta = torch.rand(b, h, n, generator=g, dtype=dtype)
    state = torch.randn(b, h, dv, dk, generator=g, dtype=dtype) if with_state else None
    return k, v, alpha, beta, state


def _randomise(mem: StateMemory, seed: int = 0, scale: float = 0.3) -> StateMemory:
    """Every parameter random (gate rows, W_o, w_d included), so no test passes by a zero weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mem.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return mem


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 16, 64, 100])
def test_chunked_equals_per_token_loop(chunk_size, with_state):
    k, v, alpha, beta, state = _inputs(with_state=with_state)  # N = 70: not a multiple of 7, 16, 64
    got = gated_delta_rule(k, v, alpha, beta, state, chunk_size=chunk_size)
    want = gated_delta_rule_reference(k, v, alpha, beta, state)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 5, 8)
    assert want.abs().max() > 0.3  # a state worth comparing
    if with_state:  # the initial state still matters after N tokens
        assert (want - gated_delta_rule_reference(k, v, alpha, beta)).abs().max() > 0.01
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_chunked_gradients_equal_per_token_loop():
    inputs = [t.requires_grad_() for t in _inputs(n=37, dtype=torch.float64)]
    cot = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = torch.autograd.grad((gated_delta_rule(*inputs, chunk_size=8) * cot).sum(), inputs)
    want = torch.autograd.grad((gated_delta_rule_reference(*inputs) * cot).sum(), inputs)
    for name, a, b in zip(["k", "v", "alpha", "beta", "state"], got, want):
        assert b.abs().max() > 1e-3, name
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=lambda m, name=name: f"grad {name}: {m}")


def test_pure_decay_when_beta_is_zero():
    k, v, alpha, beta, state = _inputs(n=20, alpha_min=0.7)
    got = gated_delta_rule(k, v, alpha, torch.zeros_like(beta), state, chunk_size=16)
    torch.testing.assert_close(got, state * alpha.prod(-1)[..., None, None], atol=1e-6, rtol=1e-5)


def test_delta_rule_recalls_the_written_value():
    """alpha = beta = 1: S' = S (I - k k^T) + v k^T, so S' k = v whatever S was."""
    k, v, _, _, state = _inputs(n=1)
    ones = torch.ones(2, 3, 1)
    for s0 in (None, state):
        s = gated_delta_rule(k, v, ones, ones, s0)
        torch.testing.assert_close(s @ k[:, :, 0, :, None], v[:, :, 0, :, None], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(state @ k[:, :, 0, :, None], v[:, :, 0, :, None], atol=1e-2)  # S alone did not


def test_gated_delta_rule_edge_cases():
    k, v, alpha, beta, state = _inputs(n=0)
    assert torch.equal(gated_delta_rule(k, v, alpha, beta, state), state)
    assert torch.equal(gated_delta_rule(k, v, alpha, beta), torch.zeros(2, 3, 5, 8))
    k, v, alpha, beta, state = _inputs()
    with pytest.raises(ValueError, match="state must be"):
        gated_delta_rule(k, v, alpha, beta, state.transpose(-1, -2))
    with pytest.raises(ValueError, match="alpha and beta"):
        gated_delta_rule(k, v, alpha[..., :-1], beta)
    with pytest.raises(ValueError, match="chunk_size"):
        gated_delta_rule(k, v, alpha, beta, chunk_size=0)


def test_absorb_in_two_parts_equals_one_part():
    mem = _randomise(StateMemory(CFG))
    with torch.no_grad():
        mem.absorb_proj.bias.view(3, -1)[:, 48:50] += 4.0  # decay near 0.98: the first part is remembered
    tokens = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(3))
    whole = mem.absorb(tokens)
    parts = mem.absorb(tokens[:, 20:], state=mem.absorb(tokens[:, :20]))
    assert whole.shape == (2, 3, 2, 16, 8) and whole.dtype == torch.float32
    assert whole.abs().max() > 0.1 and not torch.allclose(whole, mem.absorb(tokens[:, 20:]), atol=1e-3)
    torch.testing.assert_close(parts, whole, atol=1e-5, rtol=1e-5)
    assert mem.state_numel() == 3 * 2 * 16 * 8 == whole[0].numel()


def test_absorb_block_states_follow_their_own_projections():
    """Block i's state is the delta rule over block i's slice of the fused projection (the [k | v | a | b] rows)."""
    mem = _randomise(StateMemory(CFG), seed=4)
    tokens = torch.randn(1, 9, 32, generator=torch.Generator().manual_seed(5))
    width = mem.absorb_proj.out_features // 3
    proj = mem.absorb_proj(tokens)[..., width: 2 * width]  # block 1
    k, v, a, b = proj.split([16, 32, 2, 2], dim=-1)
    k = F.normalize(k.reshape(1, 9, 2, 8), dim=-1).transpose(1, 2)
    v = v.reshape(1, 9, 2, 16).transpose(1, 2)
    want = gated_delta_rule_reference(k, v, a.sigmoid().transpose(1, 2), b.sigmoid().transpose(1, 2))
    torch.testing.assert_close(mem.absorb(tokens)[:, 1], want, atol=1e-5, rtol=1e-5)


def test_read_is_zero_until_w_o_is_trained_then_depends_on_state():
    mem = StateMemory(CFG)
    x = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(6))
    state = mem.absorb(torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(7)))[:, 2]
    dist = torch.arange(6.0)
    assert torch.equal(mem.read(2, x, state, dist), torch.zeros_like(x))
    with torch.no_grad():
        mem.out[2].weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(8))
    y1, y2 = mem.read(2, x, state, dist), mem.read(2, x, 2 * state, dist)
    assert y1.shape == x.shape and y1.abs().max() > 1e-3
    torch.testing.assert_close(y2, 2 * y1)  # linear in the state, nothing else (zero W_o bias)
    assert torch.equal(mem.read(2, x, torch.zeros_like(state), dist), torch.zeros_like(x))


def test_read_router_uses_distance():
    mem = _randomise(StateMemory(CFG), seed=9)
    x = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(10))
    state = mem.absorb(torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(11)))[:, 0]
    near, far = mem.read(0, x, state, torch.zeros(4)), mem.read(0, x, state, torch.full((4,), 20.0))
    assert (near - far).abs().max() > 1e-3
    with torch.no_grad():
        mem.distance_weight.zero_()
    torch.testing.assert_close(mem.read(0, x, state, torch.zeros(4)), mem.read(0, x, state, torch.full((4,), 20.0)))


def test_gradients_reach_every_projection():
    mem = _randomise(StateMemory(CFG), seed=12)
    tokens = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(13))
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(14))
    state = mem.absorb(tokens)
    loss = sum(mem.read(i, x, state[:, i], torch.arange(5.0) + 1).square().sum() for i in range(3))
    loss.backward()
    rows = mem.absorb_proj.weight.grad.view(3, -1, 32)
    for name, sl in {"W_k": slice(0, 16), "W_v": slice(16, 48), "W_a": slice(48, 50), "W_b": slice(50, 52)}.items():
        assert rows[:, sl].abs().amax(dim=(1, 2)).min() > 0, name  # every block
    for i in range(3):
        assert mem.read_proj[i].weight.grad[:16].abs().max() > 0  # W_q
        assert mem.read_proj[i].weight.grad[16:].abs().max() > 0  # W_g
        assert mem.out[i].weight.grad.abs().max() > 0
    assert mem.distance_weight.grad.abs().min() > 0


def test_reset_parameters_is_deterministic_and_sets_the_gates():
    a, b = StateMemory(CFG), StateMemory(CFG)
    a.reset_parameters(torch.Generator().manual_seed(0))
    b.reset_parameters(torch.Generator().manual_seed(0))
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    b.reset_parameters(torch.Generator().manual_seed(1))
    assert not torch.equal(a.absorb_proj.weight, b.absorb_proj.weight)
    x = 50 * torch.randn(1, 7, 32)  # whatever the hidden-state scale
    gates = a.absorb_proj(x).view(1, 7, 3, -1)[..., 48:].sigmoid()
    torch.testing.assert_close(gates[..., :2], torch.full_like(gates[..., :2], 0.99))
    torch.testing.assert_close(gates[..., 2:], torch.full_like(gates[..., 2:], 1 / (1 + math.exp(2))))
    assert all(torch.equal(o.weight, torch.zeros_like(o.weight)) for o in a.out)


def test_config_errors():
    with pytest.raises(ValueError, match="ssm_heads"):
        StateMemory(EncoderConfig(dim=30, dit_blocks=2, ssm_heads=4))
    with pytest.raises(ValueError, match="ssm_heads"):
        StateMemory(EncoderConfig(dim=32, dit_blocks=0, ssm_heads=2))


def test_low_precision_inputs_keep_their_dtype():
    mem = _randomise(StateMemory(CFG), seed=15)
    tokens, x = torch.randn(1, 8, 32), torch.randn(1, 3, 32)
    state = mem.absorb(tokens.bfloat16())
    assert state.dtype == torch.float32
    torch.testing.assert_close(state, mem.absorb(tokens), atol=0.05, rtol=0.05)
    y = mem.read(1, x.bfloat16(), state[:, 1], torch.ones(3))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), mem.read(1, x, state[:, 1], torch.ones(3)), atol=0.05, rtol=0.05)


def test_comfy_manual_cast_fp16_weights_fp32_inputs(comfy):
    ref = _randomise(StateMemory(CFG), seed=16)
    mem = StateMemory(CFG, ops=comfy.ops.manual_cast)
    assert type(mem.absorb_proj).__module__ == "comfy.ops"
    mem.load_state_dict(ref.state_dict())
    mem.half()
    tokens, x = torch.randn(1, 10, 32), torch.randn(1, 4, 32)
    state = mem.absorb(tokens)
    torch.testing.assert_close(state, ref.absorb(tokens), atol=0.02, rtol=0.02)
    y = mem.read(0, x, state[:, 0], torch.arange(4.0))
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref.read(0, x, state[:, 0], torch.arange(4.0)), atol=0.02, rtol=0.02)
