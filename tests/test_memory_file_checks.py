"""The save_path checks made before a storyboard's first segment (models/input_checks.check_save_path) and the memory
path rules of the nodes (nodes/memory_file_nodes.memory_path): a file where a folder is expected, a folder that is
not writable (the kernel decides: a real write probe), not enough free disk space, and paths that leave ComfyUI's
output folder, lexically or through a symbolic link. Each refusal names save_path, the cause and the fix."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from framememory.models.input_checks import check_save_path

GIB = 2 ** 30


def test_a_fine_folder_passes_and_the_probe_leaves_nothing(tmp_path):
    check_save_path(str(tmp_path / "out" / "story.fmem"), 1024, root=str(tmp_path))
    assert os.listdir(tmp_path) == []  # nothing created: the probe file is gone, no folder made before the run


def test_folder_name_is_a_file(tmp_path):
    (tmp_path / "story.fmem").write_text("x")
    with pytest.raises(ValueError, match=r"story.fmem is a file, not a memory folder: choose another save_path"):
        check_save_path(str(tmp_path / "story.fmem"), 1024)


def test_parent_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("x")
    with pytest.raises(ValueError, match=r"runs is a file where a folder is expected: choose a save_path"):
        check_save_path(str(tmp_path / "runs" / "a" / "story.fmem"), 1024)


def test_symlink_out_of_the_output_folder(tmp_path):
    out, elsewhere = tmp_path / "output", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    with pytest.raises(ValueError, match=r"through a symbolic link, outside ComfyUI's output folder"):
        check_save_path(str(out / "link" / "story.fmem"), 1024, root=str(out))
    check_save_path(str(out / "story.fmem"), 1024, root=str(out))


def test_not_enough_free_space(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(ValueError) as err:
        check_save_path(str(tmp_path / "story.fmem"), free + GIB)
    message = str(err.value)
    assert "this run's memory file needs about" in message and f"{free / GIB:.2f} GiB free" in message, message
    assert "free disk space, choose a save_path on another disk, or shorten the storyboard" in message


def test_read_only_folder(tmp_path, comfyui_dir):
    """A folder this user cannot write to. As root (this machine), permissions do not bind, so the check runs in a
    child process that drops to the 'nobody' user; otherwise the folder is made read-only."""
    ro = tmp_path / "ro"
    ro.mkdir()
    target = str(ro / "story.fmem")
    if os.geteuid() != 0:
        ro.chmod(0o555)
        try:
            with pytest.raises(ValueError, match=r"is not writable \(Permission denied\): choose a save_path in a "
                                                 r"writable folder"):
                check_save_path(target, 1024)
        finally:
            ro.chmod(0o755)
        return
    tmp_path.chmod(0o755)
    code = ("import os, sys; sys.path.insert(0, sys.argv[2]); import comfy.cli_args; comfy.cli_args.args.cpu = True; "
            "from framememory.models.input_checks import check_save_path; os.setgid(65534); os.setuid(65534)\n"
            "try:\n    check_save_path(sys.argv[1], 1024)\nexcept ValueError as e:\n    print(e)")
    proc = subprocess.run([sys.executable, "-c", code, target, str(comfyui_dir)], capture_output=True, text=True,
                          timeout=120,
                          env={**os.environ, "PYTHONSAFEPATH": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "is not writable (Permission denied): choose a save_path in a writable folder" in proc.stdout, proc.stdout


@pytest.fixture
def output_dir(comfy, tmp_path):
    import folder_paths

    before = folder_paths.get_output_directory()
    out = tmp_path / "output"
    out.mkdir()
    folder_paths.set_output_directory(str(out))
    yield out
    folder_paths.set_output_directory(before)


def test_memory_path_names_the_folder_and_refuses_escapes(output_dir, tmp_path):
    from framememory.nodes.memory_file_nodes import memory_path

    assert memory_path("framememory/story") == str(output_dir / "framememory" / "story.fmem")
    assert memory_path("story.safetensors") == str(output_dir / "story.fmem")  # the old single-file name
    assert memory_path(" story.fmem ") == str(output_dir / "story.fmem")
    with pytest.raises(ValueError, match="outside ComfyUI's output folder"):
        memory_path("../story")
    (tmp_path / "elsewhere").mkdir()
    (output_dir / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"leads to .*elsewhere/story.fmem through a symbolic link"):
        memory_path("link/story")
    with pytest.raises(ValueError, match="the memory file path is empty"):
        memory_path("  ")
