"""Check or re-save the example workflows through the real ComfyUI frontend in headless Chromium; make the
templates' thumbnails.

For every UI-format workflow, the templates ``workflows/NAME.json`` (what the Templates browser lists) and the
test-only ``demo/workflows/NAME.json``, the frontend loads it and makes its API prompt with its own ``graphToPrompt``;
nothing of the workflow format is re-implemented here (``framememory.headless.workflows``). Each template gets a
Note node (the frontend's ``Note``, added with LiteGraph.createNode + graph.add) with what it needs, its text from
``framememory.headless.templates.TEMPLATES``.

    .venv/bin/python scripts/sync_workflows.py            # check: no missing node, API file == graphToPrompt,
                                                          #   the saved view shows every node readably, the Note,
                                                          #   a frame thumbnail per template
    .venv/bin/python scripts/sync_workflows.py --write    # after editing a workflow, a node's inputs or a template's
                                                          #   text: add/update the Note, fit the view, re-save
                                                          #   NAME.json, write api/NAME_api.json
    .venv/bin/python scripts/sync_workflows.py --thumbnails   # only remake the templates' NAME.jpg (runs the 3
                                                          #   lab templates: ~4 min each on 2 busy CPU cores)
    .venv/bin/python scripts/sync_workflows.py --server http://127.0.0.1:8188 workflows/storyboard_wan21.json
    COMFYUI_DIR=.cache/ComfyUI-0.33.0 .cache/venvs/comfyui-0.33.0/bin/python scripts/sync_workflows.py --write

Thumbnails (``--thumbnails``, 400x300 JPEG under 40 KB, ``framememory.headless.templates.make_thumbnail``): a lab
template's API prompt is run on a headless server with the ``lab_model/`` files and 4 frames of its generated video
are shown; a template that needs Wan weights shows 4 frames of the clip it starts from, captioned "output not shown"
with the weights it needs. Every thumbnail has a caption band with the template's title and one-line description
(the frontends show only the file name for a custom node's template) and a JPEG comment naming what the frames are.

The committed files are saved through the frontend of ComfyUI 0.33.0 (1.48.7, the newest tested: its nodes have
inputs 0.3.75 lacks, e.g. Create Video's bit_depth); the check passes on both (inputs a server neither defines nor
makes are not compared, ``headless.workflows.for_this_server``).

To change a workflow, open it in ComfyUI, edit, save it over ``workflows/NAME.json``, then run ``--write``. A node
input added after the last one gets its default when ``--write`` re-saves the file through the frontend.
Needs Debian's chromium and playwright (``bash scripts/setup.sh --test`` installs both). Exit status 1 when a
problem remains.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from framememory.headless.browser import ComfyFrontend
from framememory.headless.comfy_server import ComfyServer, add_demo_inputs
from framememory.memory.io import write_file_atomic
from framememory.headless.templates import make_thumbnail, template_for
from framememory.headless.workflows import (add_named_model_files, api_path_for, check_workflow, is_template,
                                            thumbnail_path_for, ui_workflows, write_workflow)


def sync(url: str, paths: list[Path], write: bool) -> int:
    """Check (or with ``write`` re-save) ``paths`` in the frontend of the server at ``url``; prints one line per
    workflow and returns the number of workflows with problems."""
    failed = 0
    with ComfyFrontend(url) as ui:
        for path in paths:
            problems = write_workflow(ui, path) if write else check_workflow(ui, path)
            failed += bool(problems)
            verdict = ("written" if write else "ok") if not problems else "FAILED"
            print(f"{path.name}: {verdict}" + "".join(f"\n  - {p}" for p in problems), flush=True)
    return failed


def make_thumbnails(server: ComfyServer, paths: list[Path]) -> int:
    """Write ``workflows/NAME.jpg`` for each template of ``paths`` (others are skipped) with ``server`` (started,
    with the lab files and the input clip); prints one line per template and returns the number that failed."""
    failed = 0
    for path in filter(is_template, paths):
        try:
            jpeg = make_thumbnail(server, template_for(path), api_path_for(path))
        except (RuntimeError, ValueError, KeyError) as e:
            failed += 1
            print(f"{path.stem}.jpg: FAILED\n  - {e}", flush=True)
            continue
        write_file_atomic(thumbnail_path_for(path), jpeg)
        print(f"{path.stem}.jpg: written ({len(jpeg)} bytes)", flush=True)
    return failed


@dataclass(frozen=True)
class Args:
    """The command line (module docstring)."""

    workflows: tyro.conf.Positional[tuple[Path, ...]] = ()
    """UI workflows (none: workflows/*.json and demo/workflows/*.json)"""
    write: bool = False
    """re-save each workflow (a template with its Note) with a fitted view and write its API file (off: only check)"""
    server: str | None = None
    """a running ComfyUI with this pack (and FRAMEMEMORY_DEMO=1 for the tiny workflows); None: start one
    (scripts/setup.sh's ComfyUI, a temporary base directory with the tiny demo models, bikes.mp4, the lab files and
    empty placeholders for the real weights' names)"""
    thumbnails: bool = False
    """remake the templates' thumbnails (runs the lab templates; needs the default server, not --server)"""


def usage_error(message: str) -> None:
    """Exit with status 2 and ``message`` on stderr, as a command-line parser does."""
    print(f"sync_workflows.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, description=__doc__, config=(tyro.conf.FlagCreatePairsOff,))
    if args.thumbnails and args.server:
        usage_error("--thumbnails starts its own server (it needs the lab files and the clip in its folders)")
    paths = [p.resolve() for p in args.workflows] or ui_workflows()
    for path in paths:
        if not path.is_file():
            usage_error(f"{path}: no such workflow file")
    if args.server:
        failed = sync(args.server, paths, args.write)
    else:
        server = ComfyServer()
        add_demo_inputs(server)  # the files the workflows name, so the frontend shows them as a user would
        add_named_model_files(server.models_dir, paths)  # the lab files, placeholders for real weights (listing only)
        with server:
            failed = make_thumbnails(server, paths) if args.thumbnails else sync(server.url, paths, args.write)
    done = "thumbnails written" if args.thumbnails else "written" if args.write else "ok"
    print(f"{len(paths) - failed} of {len(paths)} workflows: {done}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
