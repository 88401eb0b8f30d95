"""The tree keeps the shape of issue 27: scripts/code_counts.py finds no file over 600 lines, no function over 60, no
argparse, no ComfyUI bootstrap besides headless/comfy_import.py, no PyAV reader besides models/video_reader.py and no
import cycle among the package's modules."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_tree_has_no_long_pieces_hand_clis_bootstraps_readers_or_cycles():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "code_counts.py")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "counts: file 0, function 0, argparse 0, bootstrap 0, reader 0, cycle 0" in done.stdout, done.stdout
