"""Training and inference run one encoder (issue: "One Figure-2 encoder for training and inference").

A real clip becomes history twice: through the nodes' path (``history_from_frames``: VAE stream, LR stream, Fig. 2
with the DiT's patch embedding through ComfyUI's model management) and through the training path (``prepare_dataset``
shards with LR latents -> ``ModelSpaceDataset`` -> ``stages.encode_history``). The memory tokens must agree.
"""
from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch


def _write_clip(path, frames: torch.Tensor, fps: int = 16) -> None:
    """Losslessly encode ``frames`` [F, H, W, 3] 0..1 as an FFV1 video (so both paths read the same pixels)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for f in (frames * 255).round().to(torch.uint8).numpy():
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        out.mux(stream.encode())


@pytest.mark.parametrize("rate", ["4x4x2", "2x2x1"])
def test_training_tokens_equal_inference_tokens(tiny_wan, tmp_path, rate):
    import dataclasses

    from framememory.memory.encoder import HistoryEncoder
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.families import diffusion_model
    from framememory.models.history_writer import history_from_frames
    from framememory.training import stages
    from framememory.training.data import ClipSettings, ModelSpaceDataset, ShardDataset, prepare_dataset
    from framememory.training.dits import dit_family

    model, vae, trained, _, clip = tiny_wan
    cfg = dataclasses.replace(trained.cfg, rate=rate)
    net = HistoryEncoder(cfg)
    with torch.no_grad():  # a non-zero HR branch, so both branches shape the tokens
        net.hr.proj.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    encoder = MemoryEncoder(cfg, net.state_dict(), "test")
    width, height, frames = 128, 64, 29  # 13 + 16 frames: two segments of one stream, 8 latent frames
    video = torch.nn.functional.interpolate(clip[:frames].movedim(-1, 1), size=(height, width), mode="area")
    video = (video.movedim(1, -1).clamp(0, 1) * 255).round() / 255  # the pixels the lossless file holds
    src = tmp_path / "videos"
    src.mkdir()
    _write_clip(src / "clip.mkv", video)

    # inference: the nodes' path
    mem, dropped = history_from_frames(model, vae, encoder, video, 4, 16.0, width, height)
    assert dropped == 0 and [s.num_frames for s in mem.history.segments] == [13, 16]
    infer, infer_pos = mem.history.memory(now_latent=0)

    # training: shards -> dataset -> encode_history
    prepare_dataset(src, tmp_path / "shards", ClipSettings(width=width, height=height, fps=16, chunk_frames=frames,
                                                           dtype="float32", lr_rates=(rate,)),
                    vae.encode, lambda p: torch.zeros(4, 4096), progress=False)
    dm = diffusion_model(model)
    item = ModelSpaceDataset(ShardDataset(tmp_path / "shards", lr_rate=rate), dit_family(dm).latent_format())[0]
    with torch.no_grad():
        out = stages.encode_history(dm, net.eval(), item["latent"][None], t_start=0.0, lr_latent=item["lr_latent"][None])
    diff = (out.tokens[0] - infer).abs().max().item()
    print(json.dumps({"rate": rate, "tokens": int(infer.shape[0]), "max_abs_diff": diff}))
    assert out.tokens.shape[1] == infer.shape[0] > 0
    assert diff <= 1e-5
    torch.testing.assert_close(out.positions2[0].double() / 2, infer_pos.double())


def test_old_shards_are_refused_with_the_rebuild_command(tmp_path):
    from framememory.training.data import ShardDataset

    (tmp_path / "manifest.json").write_text(json.dumps({"format": "framememory-shards/1", "videos": []}))
    with pytest.raises(ValueError, match="prepare_data.py"):
        ShardDataset(tmp_path)
