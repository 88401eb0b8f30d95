"""One continuous video through the VAE in parts (models/vae_stream.py) and the storyboard as one stream.

With ComfyUI's WanVAE (the tiny Wan 2.1 VAE of the demo, through ``comfy.sd.VAE``) and real frames of bikes.mp4:
decoding a latent in parts of 4 latent frames equals one ``vae.decode`` of the whole latent, encoding 13 + 16 + 16
frames in parts equals one ``vae.encode`` of the 45 frames, and a copied stream continues like the original without
sharing its state. Then the storyboard loop: segments of 13, 16, 16 frames for a fresh storyboard and of 16 when it
continues a history, one seam ratio per boundary, and frames equal to one decode of all the segments' latents.
"""
from __future__ import annotations

import time

import pytest
import torch

W, H = 128, 64  # storyboard frames: the tiny VAE dominates the run time on the CPU
VW, VH = 64, 32  # frames of the VAE stream tests (the tiny VAE's cost grows with the pixels)


@pytest.fixture(scope="module")
def vae(comfy):
    import comfy.sd
    from framememory.demo.tiny_models import tiny_wan21_vae

    return comfy.sd.VAE(sd=tiny_wan21_vae(1).state_dict())


@pytest.fixture(scope="module")
def clip45(media_dir):
    """45 real frames of bikes.mp4 (1 + 4 * 11: 12 latent frames of one stream), fitted to VW x VH, float 0..1."""
    import av

    from framememory.memory.frames import fit_frames

    with av.open(str(media_dir / "bikes.mp4")) as c:
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for _, f in zip(range(45), c.decode(video=0))]
    assert len(frames) == 45
    return fit_frames(torch.stack(frames).float() / 255.0, VW, VH)  # [45, VH, VW, 3]


@pytest.fixture(scope="module")
def latent12(vae, clip45):
    """The one-shot latent of the 45 frames: [1, 16, 12, VH / 8, VW / 8]."""
    z = vae.encode(clip45).float()
    assert z.shape == (1, 16, 12, VH // 8, VW // 8)
    return z


def _frames(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, *x.shape[-3:]).float()


def test_decode_in_parts_equals_one_decode(vae, latent12):
    from framememory.models.vae_stream import VideoStream

    t0 = time.perf_counter()
    whole = _frames(vae.decode(latent12))  # [45, H, W, 3]
    t_whole = time.perf_counter() - t0
    stream = VideoStream(vae, "decode")
    assert stream.exact and not stream.started and stream.frames_for(4) == 13
    parts, t0 = [], time.perf_counter()
    for k in range(3):
        parts.append(stream.decode(latent12[:, :, 4 * k:4 * k + 4]))
        assert stream.started and stream.frames_for(4) == 16
    t_parts = time.perf_counter() - t0
    assert [p.shape[0] for p in parts] == [13, 16, 16]
    got = torch.cat(parts)
    assert got.shape == whole.shape == (45, VH, VW, 3) and got.dtype == torch.float32
    diff = (got - whole).abs().max().item()
    print(f"\ndecode 4+4+4 latent frames in parts vs one-shot: max abs diff {diff:.3e} (0..1 pixels); "
          f"one-shot {t_whole:.2f} s, parts {t_parts:.2f} s")
    assert diff <= 1e-5
    # each part alone (a fresh stream per part) restarts the causal VAE: a different video
    alone = _frames(vae.decode(latent12[:, :, 4:8]))
    assert alone.shape[0] == 13 and (alone - whole[13:26]).abs().max() > 1e-2


def test_encode_in_parts_equals_one_encode(vae, clip45, latent12):
    from framememory.models.vae_stream import VideoStream

    stream = VideoStream(vae, "encode")
    bounds = [0, 13, 29, 45]  # 13 (the stream's first latent is one frame), then 16, 16
    parts = []
    for a, b in zip(bounds, bounds[1:]):
        assert stream.frames_for(4) == b - a
        parts.append(stream.encode(clip45[a:b]))
    assert [p.shape[2] for p in parts] == [4, 4, 4]
    got = torch.cat(parts, dim=2)
    diff = (got - latent12).abs().max().item()
    print(f"\nencode 13+16+16 frames in parts vs one-shot: max abs diff {diff:.3e} (latent scale {latent12.abs().max():.2f})")
    assert got.shape == latent12.shape and diff <= 1e-5
    with pytest.raises(ValueError, match="continuation part needs 0 \\+ 4k frames, got 13"):
        stream.encode(clip45[:13])
    with pytest.raises(ValueError, match="this VideoStream encodes"):
        stream.decode(latent12[:, :, :4])
    stream.reset()  # a new stream starts with the one-frame latent again
    assert not stream.started and stream.frames_for(4) == 13
    torch.testing.assert_close(stream.encode(clip45[:13]), latent12[:, :, :4], rtol=0, atol=1e-5)


def test_cache_layout_is_the_installed_vaes_and_the_loader_sees_through_the_stream(vae, latent12):
    """The stream's cache has the length the installed ComfyUI's WanVAE allocates (``count_cache_layers`` of the
    module from v0.18, ``count_conv3d`` of the decoder before); a cache of another length (a memory file of another
    VAE layout) is refused. With the VAE unloaded before each part, ComfyUI's loader loads it while the stream's
    stand-in replaces the decoder (``model_patcher._load_list`` walks ``decoder.conv1`` etc.): the parts still equal
    the one-shot decode."""
    import comfy.ldm.wan.vae as wan_vae
    import comfy.model_management

    from framememory.models.vae_stream import VideoStream, cache_slots

    fsm = vae.first_stage_model
    if hasattr(wan_vae, "count_cache_layers"):
        assert cache_slots(fsm, fsm.encoder) == wan_vae.count_cache_layers(fsm.encoder)
    else:
        assert cache_slots(fsm, fsm.encoder) == cache_slots(fsm, fsm.decoder) == wan_vae.count_conv3d(fsm.decoder)
    whole = _frames(vae.decode(latent12[:, :, :8]))
    stream, parts = VideoStream(vae, "decode"), []
    for k in range(2):
        comfy.model_management.unload_all_models()
        parts.append(stream.decode(latent12[:, :, 4 * k:4 * k + 4]))
    assert len(stream.cache) == cache_slots(fsm, fsm.decoder)
    assert (torch.cat(parts) - whole).abs().max() <= 1e-5
    stream.cache = stream.cache + [None]  # e.g. restored from a memory file made with another Wan VAE layout
    with pytest.raises(ValueError, match="causal cache has .* slots, the VAE's layout"):
        stream.decode(latent12[:, :, 8:12])


def test_a_copied_stream_continues_identically_and_shares_no_state(vae, latent12):
    from framememory.models.vae_stream import VideoStream

    whole = _frames(vae.decode(latent12))
    stream = VideoStream(vae, "decode")
    stream.decode(latent12[:, :, :4])
    copy = stream.copy()
    assert copy.started and copy.cache is not stream.cache and copy.mode == "decode"
    a = stream.decode(latent12[:, :, 4:8])
    b = copy.decode(latent12[:, :, 4:8])  # the copy continues from where it was copied, not from the original's state
    assert torch.equal(a, b)
    assert (a - whole[13:29]).abs().max() <= 1e-3
    c = stream.decode(latent12[:, :, 8:12])  # the original is not disturbed by the copy's decode
    assert (c - whole[29:45]).abs().max() <= 1e-3
    d = copy.decode(latent12[:, :, 8:12])
    assert torch.equal(c, d)
    fresh = VideoStream(vae, "decode").copy()  # a copy of a stream that has not started
    assert not fresh.started and fresh.cache is None and fresh.frames_for(4) == 13


def test_context_mode_decodes_each_part_after_the_last_4_latent_frames(vae, latent12):
    """Every VAE but WanVAE runs in context mode: a part is decoded together with the stream's last 4 latent frames
    (their frames dropped). With the tiny WanVAE forced into that mode: the first part equals one decode of the whole
    latent, and so does the second (its context is the whole stream so far); the third equals the decode of latent
    frames 4..11 as a clip of its own, minus the context's 13 frames: an approximation of the one-shot decode (the
    VAE's causal receptive field reaches further back than 4 latent frames; printed)."""
    from framememory.models.vae_stream import CONTEXT_LATENTS, VideoStream

    assert CONTEXT_LATENTS == 4
    whole = _frames(vae.decode(latent12))
    stream = VideoStream(vae, "decode")
    stream.exact = False
    parts = [stream.decode(latent12[:, :, 4 * k:4 * k + 4]) for k in range(3)]
    assert [p.shape[0] for p in parts] == [13, 16, 16]
    torch.testing.assert_close(parts[0], whole[:13], rtol=0, atol=1e-3)  # no context: the stream's start
    torch.testing.assert_close(parts[1], whole[13:29], rtol=0, atol=1e-3)  # context = everything before it
    with_context = _frames(vae.decode(latent12[:, :, 4:12]))  # 29 frames: 13 of context, then the part's 16
    torch.testing.assert_close(parts[2], with_context[13:], rtol=0, atol=1e-5)
    diff = (parts[2] - whole[29:]).abs()
    print(f"\ncontext mode, third part vs one-shot decode (tiny random VAE): max abs diff {diff.max():.3e}, "
          f"mean {diff.mean():.3e}")
    assert torch.isfinite(parts[2]).all() and 0 <= parts[2].min() and parts[2].max() <= 1


# ---- the storyboard loop as one continuous video (tiny Wan 2.1 models of the embedded default) ---------------------

def test_storyboard_segments_are_one_stream(tiny_wan):
    """A fresh storyboard: segments of 13, 16, 16 frames, one seam ratio per boundary, and frames equal to one decode
    of all the generated latents (the decode stream keeps the VAE cache). Continuing a history: segments of 16."""
    from framememory.memory.frames import to_uint8
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model, vae, encoder, clip, video = tiny_wan
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    settings = SamplerSettings(2, 3.0, "euler", "simple", 1)

    shots = parse_storyboard("1.4 | a cyclist\n1.4 | a car")  # 44.8 frames at 16 fps: 13 + 16 + 16 = 45 is closest
    frames, final, report = run_storyboard(model, vae, clip, encoder, neg, shots, settings, W, H, 16.0, 4)
    segs = report["segments"]
    assert [s["frames"] for s in segs] == [13, 16, 16] and [s["start_frame"] for s in segs] == [0, 13, 29]
    assert [s["latent_frames"] for s in segs] == [4, 4, 4] and [s["shot"] for s in segs] == [0, 0, 1]
    assert frames.shape == (45, H, W, 3) and report["total_frames"] == 45
    seams = report["seams"]
    assert len(seams["per_boundary"]) == len(segs) - 1 == 2
    assert all(r is not None and r > 0 for r in seams["per_boundary"]) and seams["inside_mean_abs"] > 0
    assert report["decode"].startswith("exact")
    assert [s.stream_start for s in final.history.segments] == [True, False, False]
    latents = torch.cat([s.latent for s in final.history.segments], dim=1)[None]  # [1, 16, 12, h, w]
    one = to_uint8(_frames(vae.decode(latents))).float() / 255.0
    diff = (frames - one).abs().max().item()
    print(f"\nstoryboard frames vs one decode of all its latents: max abs diff {diff:.3e}")
    assert diff <= 1.5 / 255  # uint8 rounding of two equal decodes (<= 1e-3 apart)

    start, dropped = history_from_frames(model, vae, encoder, video[:13], 4, 16.0, W, H)
    assert dropped == 0 and start.history.num_frames == 13
    shots = parse_storyboard("1.0 | a cyclist\n1.0 | a car")  # 32 frames: 16 + 16
    frames2, final2, report2 = run_storyboard(model, vae, clip, encoder, neg, shots, settings, W, H, 16.0, 4, start)
    segs2 = report2["segments"]
    assert [s["frames"] for s in segs2] == [16, 16] and [s["start_frame"] for s in segs2] == [13, 29]
    assert [s["shot"] for s in segs2] == [0, 1] and frames2.shape == (32, H, W, 3)
    assert len(report2["seams"]["per_boundary"]) == 1
    assert [s.stream_start for s in final2.history.segments] == [True, False, False]
    # the history is one segment (4 latent frames = the decode stream's context): the continuation is exact too
    latents2 = torch.cat([s.latent for s in final2.history.segments], dim=1)[None]
    one2 = to_uint8(_frames(vae.decode(latents2))).float() / 255.0
    assert (frames2 - one2[13:]).abs().max().item() <= 1.5 / 255
