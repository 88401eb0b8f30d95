"""The lab model's training data (issue 23): leave-and-return sequences (training/lab_data.py), the Stage II crop
that makes them returns (training.loop.crop_stage2), the sliding-window floor's memory (training.baselines
SlidingWindow) and the LR schedule (training.lr_schedule.warmup_cosine): the pieces that make the training need
memory."""
from __future__ import annotations

import pytest
import torch

from framememory.training.lab_data import LabSequences, latent_cut, plan_sequences, sequence_pixels
from framememory.training.loop import crop_stage2
from framememory.training.lr_schedule import warmup_cosine


def test_latent_cut_matches_the_causal_wan_stream():
    # latent frame 0 = video frame 0, latent frame j >= 1 = frames 4j-3 .. 4j
    seg_min, a_last = latent_cut(45, 80)          # A = frames 0..44, B = 45..124, A' from 125
    assert 4 * seg_min - 3 >= 125 and 4 * (seg_min - 1) - 3 < 125   # first latent frame wholly in A'
    assert 4 * a_last <= 44 and 4 * (a_last + 1) > 44               # last latent frame wholly in A
    assert latent_cut(9, 8) == (5, 2)


def test_plans_cut_real_continuations_and_keep_prompts_per_shot():
    lengths = {"a.mp4": 300, "b.mp4": 200, "c.webp": 81}
    captions = {"a.mp4": "street", "b.mp4": "rabbit", "c.webp": "dog"}
    plans = plan_sequences(lengths, captions, frames=161, plain={"a.mp4": 2}, returns=6, a_range=(33, 64),
                           b_choices=(32, 80), a_clips=("a.mp4", "c.webp"), seed=0)
    assert [p.kind for p in plans] == ["plain"] * 2 + ["return"] * 6
    assert plans[0].parts[0].start == 0 and plans[1].parts[0].start == 300 - 161  # spread over the clip
    for p in plans[2:]:
        a, b, a2 = p.parts
        assert a.clip == a2.clip != b.clip and a2.start == a.start + a.frames  # A' is A's real continuation
        assert a.frames + b.frames + a2.frames == 161 and a2.start + a2.frames <= lengths[a.clip]
        assert p.prompt == captions[a.clip] and p.cut == latent_cut(a.frames, b.frames)
    assert plan_sequences(lengths, captions, frames=161, plain={"a.mp4": 2}, returns=6, a_range=(33, 64),
                          b_choices=(32, 80), a_clips=("a.mp4", "c.webp"), seed=0) == plans  # seeded
    clips = {n: torch.full((k, 2, 2, 3), i, dtype=torch.uint8) for i, (n, k) in enumerate(lengths.items())}
    px = sequence_pixels(plans[2], clips)
    a, b, _ = plans[2].parts
    assert px.shape == (161, 2, 2, 3) and px[a.frames - 1].max() != px[a.frames].max()  # the cut is in the stream
    with pytest.raises(ValueError, match="need 161 frames"):
        plan_sequences({"c.webp": 81}, captions, frames=161, plain={"c.webp": 1}, returns=0, a_range=(33, 33),
                       b_choices=(32,), a_clips=(), seed=0)


def test_crop_stage2_puts_shot_a_in_the_history_and_the_segment_in_the_return():
    t, seg = 41, 4
    latent = torch.arange(t).float().view(1, 1, t, 1, 1).expand(3, 2, t, 2, 2).contiguous()
    cut = torch.tensor([[32, 11], [0, 41], [32, 11]])
    seen_plain = set()
    for seed in range(20):
        out, _, returns = crop_stage2(latent, 24, seg, torch.Generator().manual_seed(seed), cut=cut)
        starts = out[:, 0, 0, 0, 0].long().tolist()
        for i in (0, 2):
            s = starts[i]
            assert s + 24 >= 32 and s <= 11  # segment in A', history from inside A through the cutaway
        seen_plain.add(starts[1])
        assert returns == 2 and out.shape == (3, 2, 28, 2, 2)
    assert len(seen_plain) > 3  # plain samples start anywhere
    # too short a history to reach back into A: the segment still lies in the return, the history starts earliest
    out, _, returns = crop_stage2(latent, 8, seg, torch.Generator().manual_seed(0), cut=cut)
    assert returns == 0 and out[0, 0, 0, 0, 0].item() == 24
    lr = torch.arange(t // 2).float().view(1, 1, -1, 1, 1).expand(3, 1, -1, 1, 1).contiguous()
    out, lr_out, _ = crop_stage2(latent, 8, seg, torch.Generator().manual_seed(1), lr, unit=2, cut=cut)
    assert torch.equal(lr_out[:, 0, :, 0, 0] * 2, out[:, 0, ::2, 0, 0])  # LR crop follows, on memory time steps
    with pytest.raises(ValueError, match="fewer than history"):
        crop_stage2(latent, 40, seg, torch.Generator())


def test_sliding_window_memory_is_the_last_three_frames_at_negative_times(comfy):
    from framememory.demo.tiny_models import tiny_wan21_dit
    from framememory.memory.designs.context import uncompressed
    from framememory.training.baselines import SlidingWindow
    from framememory.training.dits import dit_family
    from framememory.training.stages import encode_history

    dm = tiny_wan21_dit(seed=0)
    hist = torch.randn(2, 16, 10, 4, 8, generator=torch.Generator().manual_seed(0))
    win = SlidingWindow(dm.dim, 3)
    mem = encode_history(dm, win, hist, t_start=-10.0, overlap=True)
    embed = lambda z: dit_family(dm).embed(dm, z)  # noqa: E731
    tokens, pos = uncompressed(embed, hist[:, :, -3:], -3.0)  # what mode sliding_window gives at inference
    assert torch.equal(mem.tokens, tokens) and mem.tokens.shape == (2, 3 * 2 * 4, dm.dim)
    assert torch.equal(mem.positions2[0], (pos * 2).round().long()) and mem.positions2[0, :, 0].tolist()[0] == -6
    assert list(win.parameters()) == []


def test_warmup_cosine_is_torch_schedulers_per_step():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = warmup_cosine(opt, 12, 4, 0.1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and lrs[4] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] > 0.1 > 0.0
    opt2 = torch.optim.AdamW([{"params": [p], "lr": 1.0}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 2.0}])
    with pytest.raises(ValueError, match="one learning rate"):
        warmup_cosine(opt2, 10, 0, 0.1)
    const = warmup_cosine(opt2, 10, 0, 1.0)  # constant keeps both groups
    opt2.step()
    const.step()
    assert [g["lr"] for g in opt2.param_groups] == [1.0, 2.0]


def test_lab_sequences_repeat_returns_and_read_cuts_from_shards(tmp_path):
    from framememory.training.data import save_shard_atomic

    paths = []
    for name, meta in (("p", {"kind": "plain", "cut": [0, 9]}), ("r", {"kind": "return", "cut": [5, 2]})):
        paths.append(tmp_path / f"{name}.safetensors")
        save_shard_atomic(paths[-1], torch.zeros(16, 9, 2, 2), torch.zeros(3, 8), meta)

    class Shards(torch.utils.data.Dataset):  # the ShardDataset interface LabSequences reads: .paths and items
        def __init__(self):
            self.paths = paths

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"latent": torch.full((16, 9, 2, 2), float(i)), "text": torch.zeros(3, 8), "meta": {}}

    class ModelSpace(torch.utils.data.Dataset):  # ModelSpaceDataset's shape: .dataset is the ShardDataset
        dataset = Shards()

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return self.dataset[i]

    data = LabSequences(ModelSpace(), return_repeat=3)
    assert len(data) == 4 and data.kind == ["plain", "return"]
    assert [data[i]["latent"][0, 0, 0, 0].item() for i in range(4)] == [0.0, 1.0, 1.0, 1.0]
    assert data[1]["cut"].tolist() == [5, 2] and data[0]["cut"].tolist() == [0, 9] and "meta" not in data[0]
    assert data.shot_starts(1, 4, 9) == [5] and data.shot_starts(0, 4, 9) == list(range(6))
    assert len(LabSequences(ModelSpace(), 3, kinds=("plain",))) == 1


class Stop(Exception):
    """A run stopped from the outside (a killed process) at a chosen step."""


def test_vae_and_base_training_resume_to_the_same_weights(comfy, tmp_path):
    """A VAE / DiT pretraining stopped mid-run continues from its last checkpoint to the very weights an uninterrupted
    run reaches (optimizer, LR scheduler and generator restored): the lab recipe's phases lose nothing when stopped."""
    from framememory.demo.tiny_models import tiny_wan21_dit
    from framememory.training.pretrain import pretrain_dit
    from framememory.training.vae_train import VAETraining, train_vae

    clip = [torch.randint(0, 255, (9, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))]
    s = VAETraining(dim=4, steps=5, batch_size=1, crop=16, frames=5, warmup_steps=2, min_lr_frac=0.1, burn_in=4)
    quiet = lambda m: None  # noqa: E731
    ref, _ = train_vae(clip, s, quiet)

    def stop_at_3(vae):
        if stop_at_3.armed and stop_at_3.calls == 2:
            raise Stop
        stop_at_3.calls += 1
        return {}

    stop_at_3.armed, stop_at_3.calls = True, 0
    with pytest.raises(Stop):  # stopped after step 3, before its checkpoint (saved every 2 steps)
        train_vae(clip, s, quiet, checkpoint_dir=tmp_path / "vae", save_every=2, evaluate=stop_at_3, eval_every=1)
    assert torch.load(tmp_path / "vae" / "state.pt", weights_only=True)["step"] == 2
    stop_at_3.armed = False
    resumed, info = train_vae(clip, s, quiet, checkpoint_dir=tmp_path / "vae", save_every=2, evaluate=stop_at_3,
                              eval_every=1)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()))
    assert len(info["losses"]) == 5 and [e["step"] for e in info["evals"]] == [1, 2, 3, 4, 5][:len(info["evals"])]

    calls = {"n": 0, "stop": None}

    def batches(g):
        if calls["n"] == calls["stop"]:
            raise Stop
        calls["n"] += 1
        return torch.randn(2, 16, 2, 4, 4, generator=g), torch.randn(2, 3, 4096, generator=g)

    def run(ckpt=None):
        dm = tiny_wan21_dit(seed=0, num_layers=1)
        pretrain_dit(dm, batches, steps=4, lr=1e-3, warmup_steps=2, min_lr_frac=0.1, log=quiet, checkpoint_dir=ckpt,
                     save_every=1)
        return dm

    ref = run()
    calls.update(n=0, stop=2)
    with pytest.raises(Stop):
        run(tmp_path / "dit")
    calls.update(n=0, stop=None)
    resumed = run(tmp_path / "dit")
    assert calls["n"] == 2  # only the two steps left were taken
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()))


def _real_stream(media_dir, frames: int, size: int = 32) -> torch.Tensor:
    """The first ``frames`` frames of a training clip at 16 fps, ``[1, 3, frames, size, size]`` in [-1, 1]."""
    import itertools

    import numpy as np

    from framememory.training.data import decode_frames, resample

    x = np.stack(list(itertools.islice(resample(decode_frames(media_dir / "bigbuckbunny.mp4", size, size), 16.0),
                                       frames)))
    return torch.from_numpy(x).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0


def test_vae_burn_in_streams_exactly_what_one_stock_pass_does(comfy, media_dir):
    """The VAE burn-in (training.vae_train.stream_loss) drives WanVAE's chunk loop itself: a stream split into a
    gradient-free head and a trained tail gives the latents and frames of one stock ``WanVAE.encode`` / ``decode``
    pass over the whole stream, the loss is that of the tail of the stock reconstruction, and gradients reach the
    weights through the tail only."""
    from framememory.training.vae_train import (VAETraining, decode_chunks, encode_chunks, make_vae, stream_caches,
                                                stream_loss)

    vae = make_vae(4, seed=3).eval()
    x = _real_stream(media_dir, 21)
    with torch.no_grad():
        mu_ref = vae.encode(x)                                       # stock: [1, 16, 6, 4, 4]
        y_ref = vae.decode(mu_ref)
        enc, dec = stream_caches(vae)
        mu = torch.cat([encode_chunks(vae, x[:, :, :9], enc, True), encode_chunks(vae, x[:, :, 9:], enc, False)], 2)
        y = torch.cat([decode_chunks(vae, mu[:, :, :3], dec), decode_chunks(vae, mu[:, :, 3:], dec)], 2)
    assert mu.shape == mu_ref.shape == (1, 16, 6, 4, 4) and y.shape == y_ref.shape == x.shape
    assert torch.allclose(mu, mu_ref, atol=1e-5) and torch.allclose(y, y_ref, atol=1e-5)

    s = VAETraining(dim=4, frames=13, latent_noise=0.0, moment_weight=0.0)  # burn 8: head 9 frames, tail 12
    loss, _ = stream_loss(vae, x, 8, s, torch.Generator().manual_seed(0))
    tail = (y_ref[:, :, 9:], x[:, :, 9:])
    expect = (tail[0] - tail[1]).abs().mean() + torch.nn.functional.mse_loss(*tail)
    assert abs(loss.item() - expect.item()) < 1e-5
    loss.backward()
    grads = [p.grad for p in vae.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    with pytest.raises(ValueError, match="encode_chunks needs 4k frames"):
        encode_chunks(vae, x[:, :, :5], stream_caches(vae)[0], False)


def test_vae_training_checks_its_chunk_settings():
    """Crop and burn-in lengths that are not whole 4-frame chunks are refused before any training, naming the setting."""
    from framememory.training.vae_train import VAETraining, train_vae

    clip = [torch.zeros(40, 32, 32, 3, dtype=torch.uint8)]
    with pytest.raises(ValueError, match="VAETraining.frames must be 4k\\+1"):
        train_vae(clip, VAETraining(frames=8), print)
    with pytest.raises(ValueError, match="VAETraining.burn_in must be a multiple of 4"):
        train_vae(clip, VAETraining(burn_in=6), print)
