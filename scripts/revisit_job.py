"""The main job's default evaluation (issue 22): leave and return, through a real headless ComfyUI.

The workflow's Storyboard continues a history of shot A (the first ``--history-seconds`` of ``--video``) followed
by a cutaway (the first ``--gap-seconds`` of ``--cutaway``, a bundled training-split clip) with A's prompt: the
return. The history goes in through Load Video as History from one lossless file of the whole sequence
(``scripts/revisit_eval.py``: A, the cutaway, A's real continuation; the node reads the first ``history`` frames), so
it is one VAE stream with the cut inside it. Three arms on one server: memory on (the workflow's memory mode),
memory off (the same prompt, ``memory_mode`` off; ComfyUI's cache reuses the encoded history), and the
shuffled-memory control (memory on, another clip's first frames in place of shot A before the same cutaway: only that
clip's A is encoded, its segments spliced into the cached history by the evaluation-only node of
``scripts/eval_nodes``, which :func:`install_eval_nodes` links into the server). A branch of stock nodes (LoadVideo -> GetVideoComponents -> ImageFromBatch ->
VAEEncode -> VAEDecode) gives the VAE's version of the history's last frame and the real return as one stream (17
frames): the "last frame through the VAE" and "VAE ceiling" reference rows. Scores: ``scripts/scores.py``.

No ComfyUI import: this runs in the client process, next to framememory.headless.comfy_server.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import example_eval
import revisit_eval

VAE_TAP_PREFIX = "framememory/eval_vae"
SPLICE_NODE = "FrameMemoryEvalSpliceHistory"  # scripts/eval_nodes
EVAL_NODES = Path(__file__).resolve().parent / "eval_nodes"
CONTEXT = 1  # frames of the history before the return that go through the VAE with it (its last frame: the stream start)


@dataclass
class RevisitPlan:
    """The leave-and-return of one main-job run (:func:`prepare`)."""

    seq: object  # revisit_eval.Sequence
    shuffled: object  # the control's Sequence (another clip before the same cutaway)
    storyboard_id: str
    file: str  # the sequence file in the server's input folder
    shuffled_file: str
    history_node: str  # the Load Video as History node's id
    vae_tap: str  # the SaveAnimatedPNG node of the VAE branch
    gap_seconds: float
    video: Path
    cutaway: Path | None  # None: the continuation test

    @property
    def kind(self) -> str:
        return "continuation" if self.cutaway is None else "revisit"


def shuffle_clip(video: Path, media_dir: Path) -> Path:
    """The clip whose first seconds stand in for A in the shuffled control: a bundled held-out clip other than
    ``video`` (bikes.mp4, else carphone_pristine.mp4)."""
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        if (media_dir / name).is_file() and (media_dir / name).resolve() != video.resolve():
            return media_dir / name
    raise example_eval.EvalError(f"no bundled clip for the shuffled control in {media_dir}: run scripts/setup.sh")


def check_within_clip(video: Path, fps: float, frames: int, what: str) -> None:
    """Raise EvalError naming ``what`` (the options asking for them) when ``video`` holds fewer than ``frames`` frames
    at ``fps`` (from the container's duration, before anything is decoded), with the clip's length and the fix; a
    file without a duration passes (the sequence's own length checks then refuse it after reading)."""
    available = example_eval.clip_frames(video, fps)
    if available is not None and available < frames:  # no duration in the file: read_clip's length decides
        raise example_eval.EvalError(f"{what} need {frames} frames ({frames / fps:.2f} s at {fps:g} fps) but "
                                     f"{video.name} holds {available} ({available / fps:.2f} s): ask for less or "
                                     f"give a longer clip")


def prepare(api: dict, video: Path, cutaway: Path, gap_seconds: float, history_seconds: float,
            return_seconds: float, input_dir: Path, media_dir: Path, evaluate: bool = True) -> tuple[dict, RevisitPlan]:
    """The leave-and-return: build the sequence (and the control's) at the Storyboard's size and fps, write them as
    lossless files into ``input_dir``, and return the prompt (history from Load Video as History, the storyboard = the
    return with A's prompt, with ``evaluate`` the VAE branch) and the plan. Raises EvalError (a clip too short, a bad
    length) naming the option to change."""
    sb_id, sb = example_eval.storyboard_node(api)
    width, height, fps = int(sb["width"]), int(sb["height"]), float(sb["fps"])
    ret = revisit_eval.whole_segments(return_seconds * fps)
    gap = revisit_eval.whole_segments(gap_seconds * fps)
    if ret < revisit_eval.PER or gap < revisit_eval.PER:
        raise example_eval.EvalError(f"--gap-seconds {gap_seconds:g} and the return ({return_seconds:g} s) need at "
                                     f"least {revisit_eval.PER} frames ({revisit_eval.PER / fps:g} s) each")
    try:
        a = revisit_eval.history_frames(history_seconds, fps)
    except ValueError as e:
        raise example_eval.EvalError(f"--history-seconds {history_seconds:g}: {e}") from e
    check_within_clip(video, fps, a + ret, f"--history-seconds {history_seconds:g} (shot A, {a} frames) and the "
                                          f"{ret}-frame return")
    check_within_clip(cutaway, fps, gap, f"--gap-seconds {gap_seconds:g}")
    a_clip = example_eval.read_clip(video, width, height, fps, a + ret)  # only what the sequence uses
    b_clip = example_eval.read_clip(cutaway, width, height, fps, gap)
    try:
        seq = revisit_eval.cutaway(a_clip, b_clip, a, gap, ret, video.name, cutaway.name)
        del a_clip  # the sequence holds its own copy
        other = shuffle_clip(video, media_dir)
        shuffled = revisit_eval.cutaway(example_eval.read_clip(other, width, height, fps, a + ret), b_clip, a, gap,
                                        ret, other.name, cutaway.name)
    except ValueError as e:
        raise example_eval.EvalError(f"{e} (--video {video.name}, --history-seconds, --gap-seconds)") from e
    api = json.loads(json.dumps(api))
    api[sb_id]["inputs"]["storyboard"] = seq.return_storyboard(fps)
    return _with_files(api, sb_id, seq, shuffled.frames[:a], f"revisit_{video.stem}_{cutaway.stem}_{gap}f", input_dir,
                       fps, evaluate, gap / fps, video, cutaway, shuffled)


def prepare_continuation(api: dict, video: Path, history_seconds: float, input_dir: Path, media_dir: Path,
                         evaluate: bool = True) -> tuple[dict, RevisitPlan]:
    """``--eval continuation``: the first H frames of ``video`` (``--history-seconds``, 13 + 16k) as the history, the
    workflow's own storyboard continues it, scored against the clip's real next frames; the control: the first H
    frames of another bundled clip. Raises EvalError when the clip is too short for history + generated frames."""
    sb_id, sb = example_eval.storyboard_node(api)
    width, height, fps = int(sb["width"]), int(sb["height"]), float(sb["fps"])
    generated = sum(example_eval.planned_frames(sb))
    check_within_clip(video, fps, int(history_seconds * fps + 1e-6) + generated,
                      f"--history-seconds {history_seconds:g} and the {generated} frames the storyboard generates")
    frames = example_eval.read_clip(video, width, height, fps, int(history_seconds * fps + 1e-6) + generated)
    h = example_eval.history_length(history_seconds, fps, int(sb["segment_latent_frames"]),
                                    max(len(frames) - generated, revisit_eval.FIRST))
    if len(frames) < h + generated:
        raise example_eval.EvalError(f"{video.name} has {len(frames)} frames at {fps:g} fps; the continuation needs "
                                     f"{h} history + {generated} generated (a longer clip, or --no-eval)")
    other = shuffle_clip(video, media_dir)
    prompt = revisit_eval.prompt_for(video)
    seqs = [revisit_eval.Sequence(f"continuation|{p.stem}", "continuation", f, h, generated, 0,
                                  [("A", prompt, 0, h, True), ("continuation", "(the workflow's storyboard)", h,
                                                               h + generated, False)], h)
            for p, f in ((video, frames[:h + generated]),
                         (other, example_eval.read_clip(other, width, height, fps, h)))]
    return _with_files(api, sb_id, seqs[0], seqs[1].frames[:h], f"continuation_{video.stem}", input_dir, fps,
                       evaluate, 0.0, video, None, seqs[1])


def _with_files(api: dict, sb_id: str, seq, control, tag: str, input_dir: Path, fps: float, evaluate: bool,
                gap_seconds: float, video: Path, cutaway: Path | None, shuffled=None) -> tuple[dict, RevisitPlan]:
    """Write the sequence (history + real frames to score) and the control's frames (uint8 ``control``: another
    clip's A for a revisit, spliced in by :func:`shuffled_prompt`; its whole history for a continuation) as lossless
    files, point Load Video as History at the first and, with ``evaluate``, add the VAE branch. ``shuffled``: the
    control's Sequence (default ``seq`` with ``control`` as its A). Returns ``(prompt, plan)``."""
    names = [f"framememory_{tag}.mkv", f"framememory_{tag}_shuffled.mkv"]
    example_eval.write_lossless(seq.frames, input_dir / names[0], fps)
    if evaluate:
        example_eval.write_lossless(control, input_dir / names[1], fps)
    api = example_eval.with_video_history(api, sb_id, names[0], seq.history)
    history_node = next(k for k, n in api.items() if n.get("class_type") == example_eval.VIDEO_HISTORY
                        and n["inputs"].get("video") == names[0])
    tap = None
    if evaluate:
        api, tap = with_vae_branch(api, sb_id, names[0], seq.history - CONTEXT, CONTEXT + seq.ret, fps)
    return api, RevisitPlan(seq, shuffled or seq, sb_id, names[0], names[1], history_node, tap, gap_seconds, video,
                            cutaway)


def with_vae_branch(api: dict, storyboard_id: str, file: str, start: int, length: int, fps: float) -> tuple[dict, str]:
    """A copy of ``api`` plus stock nodes that read ``file`` (LoadVideo), take frames ``[start, start + length)``
    (ImageFromBatch), encode and decode them with the Storyboard's VAE as one stream (VAEEncode, VAEDecode) and save
    them losslessly (SaveAnimatedPNG). Returns ``(prompt, id of the save node)``."""
    out = json.loads(json.dumps(api))
    vae = out[storyboard_id]["inputs"]["vae"]
    n = max(int(k) for k in out if str(k).isdigit()) + 1
    ids = [str(n + i) for i in range(6)]
    nodes = [("LoadVideo", {"file": file}), ("GetVideoComponents", {"video": [ids[0], 0]}),
             ("ImageFromBatch", {"image": [ids[1], 0], "batch_index": int(start), "length": int(length)}),
             ("VAEEncode", {"pixels": [ids[2], 0], "vae": vae}), ("VAEDecode", {"samples": [ids[3], 0], "vae": vae}),
             ("SaveAnimatedPNG", {"images": [ids[4], 0], "filename_prefix": VAE_TAP_PREFIX, "fps": float(fps),
                                  "compress_level": 1})]
    for node_id, (cls, inputs) in zip(ids, nodes):
        out[node_id] = {"class_type": cls, "_meta": {"title": f"FrameMemory eval: VAE reference ({cls})"},
                        "inputs": inputs}
    return out, ids[-1]


def shuffled_prompt(api: dict, plan: RevisitPlan) -> dict:
    """The control: ``api`` with its saves renamed ``..._shuffled``, without the VAE branch (its frames are already
    there), and the Storyboard's memory replaced. Revisit: another Load Video as History node reads the shuffled file
    (another clip's first ``a_frames``: the control's A) and the Splice History node (``scripts/eval_nodes``) puts
    its segments in place of A's in the real history, which ComfyUI's cache keeps from the memory-on run (the cutaway
    is not encoded again). Continuation: the history node reads the shuffled file (another clip's history)."""
    out = json.loads(json.dumps(api))
    hist = out[plan.history_node]["inputs"]
    if plan.cutaway is None:
        hist["video"] = plan.shuffled_file
    else:
        sb = out[plan.storyboard_id]["inputs"]
        if sb.get("memory") != [plan.history_node, 0]:
            raise example_eval.EvalError(f"the Storyboard's memory does not come from the history node "
                                         f"{plan.history_node}: cannot build the shuffled control")
        n = max(int(k) for k in out if str(k).isdigit()) + 1
        out[str(n)] = {"class_type": example_eval.VIDEO_HISTORY, "_meta": {"title": "FrameMemory eval: control's A"},
                       "inputs": {**hist, "video": plan.shuffled_file, "frame_load_cap": int(plan.seq.a_frames)}}
        out[str(n + 1)] = {"class_type": SPLICE_NODE, "_meta": {"title": "FrameMemory eval: shuffled history"},
                           "inputs": {"memory": [plan.history_node, 0], "other": [str(n), 0]}}
        sb["memory"] = [str(n + 1), 0]
    branch = [k for k, n in out.items() if n.get("_meta", {}).get("title", "").startswith("FrameMemory eval: VAE")]
    for k in branch:
        del out[k]
    for node in out.values():
        prefix = node.get("inputs", {}).get("filename_prefix")
        if isinstance(prefix, str):
            node["inputs"]["filename_prefix"] = prefix + "_shuffled"
    return out


def install_eval_nodes(custom_nodes: Path) -> Path:
    """Link ``scripts/eval_nodes`` (the Splice History node of the shuffled control) into a server's ``custom_nodes``
    folder as ``FrameMemoryEval`` (a copy where links fail). Returns the path. Call before the server starts."""
    import shutil

    target = Path(custom_nodes) / "FrameMemoryEval"
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    try:
        os.symlink(EVAL_NODES, target, target_is_directory=True)
    except OSError:
        shutil.copytree(EVAL_NODES, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def vae_pass(frames: np.ndarray, plan: RevisitPlan) -> np.ndarray:
    """The VAE branch's frames (the history's last CONTEXT frames and the return) placed at their sequence indices:
    uint8 ``[history + ret, H, W, 3]`` for ``scores.reference_frames`` (earlier indices are zeros, never read)."""
    seq = plan.seq
    if len(frames) != CONTEXT + seq.ret:
        raise example_eval.EvalError(f"the VAE branch wrote {len(frames)} frames, {CONTEXT + seq.ret} expected")
    out = np.zeros((seq.history + seq.ret, *frames.shape[1:]), dtype=np.uint8)
    out[seq.history - CONTEXT:] = frames
    return out


def saved_frames(server, run: dict, node_id: str, fps: float) -> np.ndarray:
    """Every frame a SaveAnimatedPNG node of ``run`` wrote, uint8 ``[F, H, W, 3]``. Raises EvalError when none."""
    files = server.output_files(run["history"], node_id, (".png",))
    if not files:
        raise example_eval.EvalError(f"the evaluation node {node_id} wrote no PNG")
    return example_eval.read_apng(files[0], fps)


def evaluate(server, api: dict, on: dict, on_frames: np.ndarray, plan: RevisitPlan, out: Path, run_prompt,
             frames_of, media_dir: Path, timeout: float) -> dict:
    """Run the memory-off arm and the shuffled control on ``server`` (``run_prompt(server, prompt, timeout, label)``;
    ``frames_of(run)``: a run's generated frames), score the three arms and the reference rows (:func:`entry`), write
    ``storyboard_memory_off.mp4`` and ``contact_sheet_eval.png`` into ``out``. Returns the report's "evaluation"."""
    import shutil

    fps = float(on["report"]["fps"])
    off = run_prompt(server, example_eval.memory_off_prompt(api, plan.storyboard_id), timeout, "memory off")
    shutil.copy2(off["video"], out / "storyboard_memory_off.mp4")
    sh = run_prompt(server, shuffled_prompt(api, plan), timeout, "shuffled memory (control)")
    arms = {"memory_on": on_frames, "memory_off": frames_of(off), "shuffled": frames_of(sh)}
    pool = bundled_pool(media_dir, plan, on["report"])
    vae = saved_frames(server, on, plan.vae_tap, fps)
    ev = entry(plan, arms, vae, pool)
    seq, ret = plan.seq, plan.seq.ret
    rows = [("real return (A')" if plan.cutaway else "real continuation", seq.real_return),
            *[(k.replace("_", " "), v[:ret]) for k, v in arms.items()],
            ("VAE ceiling (ref)", vae_pass(vae, plan)[seq.history:])]
    if plan.cutaway:
        rows[1:1] = [("A before it left", seq.before[-ret:]), ("cutaway (its end)", seq.frames[seq.history - ret:seq.history])]
    sheet = [seq.history + i for i in example_eval.eval_sheet(rows, out / "contact_sheet_eval.png", seq.history, fps)]
    return {"kind": plan.kind, plan.kind: ev, "contact_sheet_frames": sheet,
            "arm_seconds": {"memory_on": on["seconds"], "memory_off": off["seconds"], "shuffled": sh["seconds"]},
            "paths": {"memory_off_video": str(out / "storyboard_memory_off.mp4"),
                      "contact_sheet": str(out / "contact_sheet_eval.png"), "sequence": plan.file}}


POOL_CLIPS = ("bikes.mp4", "video_wan2_2_5B_ti2v-1.webp", "video_hunyuan_video_1.5_720p_t2v-1.webp",
              "carphone_pristine.mp4", "bigbuckbunny.mp4")  # retrieval candidates, in this order (first 8 shots)
TEMPLATES_PACKAGE = "comfyui_workflow_templates_media_video"  # a ComfyUI requirement: installed by scripts/setup.sh


def bundled_file(name: str, media_dir: Path) -> Path | None:
    """Where a bundled clip is: ``media_dir`` (scripts/setup.sh's media), else, for the two template webps, the
    ``templates`` folder of the installed ComfyUI requirement ``comfyui_workflow_templates_media_video`` (the same
    files training.media.fetch_media copies into .cache/media); None when neither has it."""
    if (media_dir / name).is_file():
        return media_dir / name
    spec = importlib.util.find_spec(TEMPLATES_PACKAGE)
    if spec is not None and spec.origin and name.endswith(".webp"):
        path = Path(spec.origin).parent / "templates" / name
        return path if path.is_file() else None
    return None


def bundled_pool(media_dir: Path, plan: RevisitPlan, report: dict, count: int = 8) -> dict:
    """The retrieval candidates besides A and the cutaway: the first ``count`` shots (``revisit_eval.shot_pool``) of
    :data:`POOL_CLIPS` other than A's and the cutaway's clip, at the report's size and fps, from only what a plain
    scripts/setup.sh provides (bikes.mp4 is a six-shot montage: six candidates; the two held-out template webps;
    carphone_pristine.mp4 and the training-split bigbuckbunny.mp4 when they are not A or the cutaway), so a fresh
    clone ranks A among 10 (A, the cutaway, 8 shots). A clip found nowhere is left out (the report's
    ``retrieval.chance`` says how many candidates there were); clips are read only until ``count`` shots are there."""
    skip = {plan.video.name, plan.cutaway.name if plan.cutaway else None}
    pool = {}
    for name in (n for n in POOL_CLIPS if n not in skip):
        path = bundled_file(name, media_dir)
        if path is not None and len(pool) < count:
            frames = example_eval.read_clip(path, int(report["width"]), int(report["height"]), float(report["fps"]),
                                            10_000)
            pool.update(revisit_eval.shot_pool({name: frames}))
    return dict(list(pool.items())[:count])


def entry(plan: RevisitPlan, arms: dict, vae: np.ndarray, pool: dict) -> dict:
    """The report's ``evaluation.revisit`` (or ``.continuation``): ``revisit_eval.evaluate`` of the arms
    (``{"memory_on", "memory_off", "shuffled": uint8 frames}``), plus the clips used."""
    ev = revisit_eval.evaluate(plan.seq, arms, vae_pass(vae, plan), dict(list(pool.items())[:8]),
                               round(plan.gap_seconds, 3) if plan.cutaway else None)
    ev["clips"] = {"a": str(plan.video), "cutaway": str(plan.cutaway) if plan.cutaway else None,
                   "shuffled_a": plan.shuffled.name.split("|")[1 if plan.kind == "continuation" else 0]}
    return ev
