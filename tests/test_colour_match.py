"""Colour-drift correction (models/colour_match.py) on real frames of bikes.mp4, drift measured with scikit-image's
CIEDE2000 colour difference."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def street(media_dir) -> torch.Tensor:
    """One shot of bikes.mp4 (frames 32..75, after the cut at 28), every second pixel: [44, 136, 320, 3] uint8."""
    import av

    with av.open(str(media_dir / "bikes.mp4")) as c:
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for _, f in zip(range(76), c.decode(video=0))]
    return torch.stack(frames[32:])[:, ::2, ::2].contiguous()


def drift(frames: torch.Tensor, amount: float) -> torch.Tensor:
    """A colour drift of generated video (tint, saturation and brightness creep) through torchvision's colour ops."""
    import torchvision.transforms.functional as TF

    x = frames.permute(0, 3, 1, 2)  # [F, 3, H, W] uint8
    x = TF.adjust_hue(TF.adjust_saturation(TF.adjust_brightness(x, 1 + 0.5 * amount), 1 + amount), 0.08 * amount)
    return x.permute(0, 2, 3, 1).contiguous()


def delta_e(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean CIEDE2000 difference (skimage) between two uint8 clips of one shape."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    return float(np.mean(deltaE_ciede2000(rgb2lab(a.numpy()), rgb2lab(b.numpy()))))


def mean_colour_delta_e(a: torch.Tensor, b: torch.Tensor) -> float:
    """CIEDE2000 between the mean Lab colours of two clips (skimage): the drift of the clip's overall colour."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    return float(deltaE_ciede2000(rgb2lab(a.numpy()).mean(axis=(0, 1, 2)), rgb2lab(b.numpy()).mean(axis=(0, 1, 2))))


def test_matching_to_the_history_undoes_a_colour_drift(street):
    """Drift = CIEDE2000 between a segment's mean colour and the history's. Full strength removes it; half strength
    also brings the pixels closer to the real (undrifted) frames, which brighten a little over the shot."""
    from framememory.models.colour_match import lab_stats, match_colour

    history, truth = street[:16], street[16:32]  # the next 16 frames as they really look
    drifted = drift(truth, 0.4)
    full, half = (match_colour(drifted, lab_stats(history), s) for s in (1.0, 0.5))
    assert full.dtype == torch.uint8 and full.shape == truth.shape
    before, after_full, after_half = (mean_colour_delta_e(x, history) for x in (drifted, full, half))
    assert before > 5.0 and after_full < 0.05 * before and after_full < after_half < 0.7 * before, \
        (before, after_half, after_full)
    assert delta_e(half, truth) < 0.6 * delta_e(drifted, truth), (delta_e(half, truth), delta_e(drifted, truth))
    assert torch.equal(match_colour(drifted, lab_stats(history), 0.0), drifted)


def test_accumulating_drift_stays_bounded_with_correction(street):
    """Segments that drift further and further (as an autoregressive loop would): matched against the running
    history statistics, every segment's mean colour stays near the history's; uncorrected, it runs away."""
    from framememory.memory.history import HistoryBuffer
    from framememory.models.colour_match import correct_segment, record_colour

    history = HistoryBuffer()
    record_colour(history, street[:16])
    start = street[:16]
    raw, fixed = [], []
    for k in range(1, 4):
        segment = drift(street[8 * k: 8 * k + 16], 0.25 * k)  # drift grows each segment
        out = correct_segment(history, segment, 1.0)
        record_colour(history, out)
        raw.append(mean_colour_delta_e(segment, start))
        fixed.append(mean_colour_delta_e(out, start))
    assert raw[-1] > raw[0] > 2.0, raw  # the drift is real and grows
    assert max(fixed) < 0.25 * raw[-1], (raw, fixed)
    assert fixed[-1] < 0.5 * raw[0], (raw, fixed)


def test_statistics_add_up_and_bad_input_is_named(street):
    from framememory.models.colour_match import lab_stats, match_colour, mean_std

    a, b = street[:5], street[5:9]
    both = lab_stats(torch.cat([a, b]))
    assert torch.allclose(lab_stats(a) + lab_stats(b), both, rtol=1e-9)
    mean, std = mean_std(both)
    assert 0 < mean[0] < 100 and (std > 0).all()
    with pytest.raises(ValueError, match="colour_strength"):
        match_colour(a, both, 1.5)
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        lab_stats(a[0])
    with pytest.raises(ValueError, match="reference"):
        match_colour(a, torch.zeros(3, 3, dtype=torch.float64), 1.0)
