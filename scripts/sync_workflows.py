"""Check or re-save the example workflows through the real ComfyUI frontend in headless Chromium.

For every UI-format workflow ``workflows/NAME.json`` (what the Templates browser lists) the frontend loads it and
makes its API prompt with its own ``graphToPrompt``; nothing of the workflow format is re-implemented here
(``framememory.headless.workflows``).

    .venv/bin/python scripts/sync_workflows.py            # check: no missing node, API file == graphToPrompt,
                                                          #   the saved view shows every node readably, thumbnail
    .venv/bin/python scripts/sync_workflows.py --write    # after editing a workflow or a node's inputs: fit the
                                                          #   view, re-save NAME.json, write api/NAME_api.json + NAME.jpg
    .venv/bin/python scripts/sync_workflows.py --server http://127.0.0.1:8188 workflows/storyboard_wan21.json
    COMFYUI_DIR=.cache/ComfyUI-0.33.0 .cache/venvs/comfyui-0.33.0/bin/python scripts/sync_workflows.py --write

The committed files are saved through the frontend of ComfyUI 0.33.0 (1.48.7, the newest tested: its nodes have
inputs 0.3.75 lacks, e.g. Create Video's bit_depth); the check passes on both (inputs a server neither defines nor
makes are not compared, ``headless.workflows.for_this_server``).

To change a workflow, open it in ComfyUI, edit, save it over ``workflows/NAME.json``, then run ``--write``. A node
input added after the last one gets its default when ``--write`` re-saves the file through the frontend.
Needs Debian's chromium and playwright (``bash scripts/setup.sh --test`` installs both). Exit status 1 when a
problem remains.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from framememory.headless.browser import ComfyFrontend
from framememory.headless.comfy_server import ComfyServer, add_demo_inputs
from framememory.headless.workflows import add_named_model_files, check_workflow, ui_workflows, write_workflow


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workflows", nargs="*", type=Path, help="UI workflows (default: every workflows/*.json)")
    ap.add_argument("--write", action="store_true", help="re-save each workflow with a fitted view and write its "
                    "API file and thumbnail (default: only check)")
    ap.add_argument("--server", help="a running ComfyUI with this pack (and FRAMEMEMORY_DEMO=1 for the tiny "
                    "workflows); default: start one (scripts/setup.sh's ComfyUI, a temporary base directory with the "
                    "tiny demo models, bikes.mp4, the lab files and empty placeholders for the real weights' names)")
    args = ap.parse_args(argv)
    paths = [p.resolve() for p in args.workflows] or ui_workflows()
    for path in paths:
        if not path.is_file():
            ap.error(f"{path}: no such workflow file")
    if args.server:
        failed = sync(args.server, paths, args.write)
    else:
        server = ComfyServer()
        add_demo_inputs(server)  # the files the workflows name, so the frontend shows them as a user would
        add_named_model_files(server.models_dir, paths)  # the lab files, placeholders for real weights (listing only)
        with server:
            failed = sync(server.url, paths, args.write)
    print(f"{len(paths) - failed} of {len(paths)} workflows {'written' if args.write else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
