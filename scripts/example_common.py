"""What every part of the main job (scripts/run_example.py) shares: the repository's paths, its console lines
(``[run_example] ...``, banners) and its error type."""
from __future__ import annotations

import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MEDIA_DIR = REPO_ROOT / ".cache" / "media"  # scripts/setup.sh's clips


class ExampleError(RuntimeError):
    """A failure of the main job, reported as one line ("FAILED: ...") with exit status 1."""


def log(msg: str) -> None:
    print(f"[run_example] {msg}", flush=True)


def banner(text: str) -> None:
    """``text`` wrapped in a box of ``!``, for what a reader must not miss (the embedded models, a lost comparison)."""
    bar = "!" * 100
    print(f"\n{bar}", flush=True)
    for line in textwrap.wrap(text, 96):
        print(f"! {line}", flush=True)
    print(f"{bar}\n", flush=True)


def short(path: Path) -> str:
    """``path`` relative to the repository where it is inside it, else as given."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)
