"""Host-memory and timing telemetry of the storyboard loop (report fields ``rss_mb``, ``peak_rss_mb``, ``*_s``)."""
from __future__ import annotations

import contextlib
import resource
import sys
import time

import torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def rss_mb() -> float:
    """Current resident set size of this process in MiB (psutil), for leak checks; ru_maxrss only grows."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def release_host_memory() -> None:
    """Give freed host memory back to the OS after a segment: ``gc.collect()`` plus glibc's ``malloc_trim(0)``
    where available. Without it glibc keeps freed VAE/sampler temporaries mapped: measured with tiny models on
    CPU, RSS sat ~1.1 GB higher and rose ~3.9 MB per segment instead of the 1.4 MB of frames and latents kept."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl or another libc without malloc_trim
            pass


@contextlib.contextmanager
def phase(stats: dict, name: str):
    """Time a phase of a segment into ``stats[name + "_s"]``; on CUDA also record the phase's peak allocated and
    reserved VRAM in MiB (``name + "_peak_alloc_mb"``, ``name + "_peak_reserved_mb"``)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        stats[f"{name}_s"] = round(time.perf_counter() - t0, 3)
        if cuda:
            stats[f"{name}_peak_alloc_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            stats[f"{name}_peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)


def segment_record(stats: dict) -> dict:
    """``stats`` plus the process's current and peak RSS (MiB), after releasing freed host memory."""
    release_host_memory()
    return {**stats, "rss_mb": round(rss_mb(), 1), "peak_rss_mb": round(peak_rss_mb(), 1)}


__all__ = ["peak_rss_mb", "rss_mb", "release_host_memory", "phase", "segment_record"]
