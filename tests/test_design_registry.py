"""The memory-design registry (memory/designs/, issue 27): every design module declares the same attributes, an
encoder file's ``memory_type`` names the network it holds (:func:`memory.designs.network_class`), a design without a
network of its own refuses with a clear message, and the titles are the names the Storyboard's summary showed."""
from __future__ import annotations

from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import pytest

from framememory.memory.config import MEMORY_TYPES
from framememory.memory.designs import DESIGNS, MEMORY_MODES, design, network_class
from framememory.memory.designs.video_ssm import StateMemory
from framememory.memory.encoder import HistoryEncoder

ATTRIBUTES = ("NAME", "TITLE", "ENCODED", "SINGLE_ENCODER", "FOLLOWS_MEMORY_TIMESTEP", "NETWORK", "PER_BLOCK_STATE",
              "MEMORY_GROWS", "config", "encoder_config", "context")
# what nodes/report_summary.py's MODE_NAMES held before the titles moved into the design modules
TITLES_BEFORE = {"frame_preservation": "Frame Preservation", "pack_forcing": "PackForcing", "video_ssm": "VideoSSM",
                 "sliding_window": "sliding window", "off": "off"}


@pytest.mark.parametrize("mode", MEMORY_MODES)
def test_every_design_module_declares_the_full_interface(mode):
    module = design(mode)
    missing = [a for a in ATTRIBUTES if not hasattr(module, a)]
    assert not missing, f"{module.__name__} lacks {missing}"
    assert module.NAME == mode
    assert all(callable(getattr(module, f)) for f in ("config", "encoder_config", "context"))
    assert all(isinstance(getattr(module, f), bool) for f in ("ENCODED", "SINGLE_ENCODER", "FOLLOWS_MEMORY_TIMESTEP",
                                                              "PER_BLOCK_STATE", "MEMORY_GROWS"))


def test_network_class_per_memory_type():
    assert {t: network_class(t) for t in MEMORY_TYPES} == {
        "frame_preservation": HistoryEncoder, "pack_forcing": HistoryEncoder, "video_ssm": StateMemory}
    # the designs with a network are exactly the memory types an encoder file can hold
    assert tuple(name for name, m in DESIGNS.items() if m.NETWORK is not None) == MEMORY_TYPES


@pytest.mark.parametrize("mode", ["sliding_window", "off"])
def test_a_design_without_a_network_refuses_clearly(mode):
    assert design(mode).NETWORK is None
    with pytest.raises(ValueError, match=rf"memory design '{mode}' holds no network of its own.*must be one of "
                                         r"\['frame_preservation', 'pack_forcing', 'video_ssm'\]"):
        network_class(mode)


def test_network_class_of_an_unknown_mode_names_the_modes():
    with pytest.raises(ValueError, match="memory_mode must be one of"):
        network_class("bogus")


def test_flags_single_out_the_designs_they_describe():
    assert [m for m in MEMORY_MODES if design(m).PER_BLOCK_STATE] == ["video_ssm"]
    assert [m for m in MEMORY_MODES if design(m).MEMORY_GROWS] == ["frame_preservation"]


def test_titles_are_the_names_the_summary_showed():
    assert {name: m.TITLE for name, m in DESIGNS.items()} == TITLES_BEFORE
    # report_summary.py is also loaded by path (scripts/example_report.py): its names come from the registry there too
    spec = spec_from_file_location("rs", Path(__file__).resolve().parents[1] / "nodes" / "report_summary.py")
    rs = module_from_spec(spec)
    spec.loader.exec_module(rs)
    assert rs.MODE_NAMES == TITLES_BEFORE
    report = {"fps": 16.0, "memory_mode": "pack_forcing", "total_frames": 48, "width": 256, "height": 128,
              "segments": [{"memory_tokens": 10, "history_frames_covered": 32}]}
    assert "Memory (PackForcing): 10 tokens held the last 2.0 s of video" in rs.report_summary(report)
