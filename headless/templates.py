"""What each Templates-browser workflow is, needs and makes (issue 26, point 1): the text of its Note node, the
title and one-line description drawn into its thumbnail, and the thumbnail itself (frames of what it makes).

What the frontends show for a custom node's template (read from their built JS; both list the names the server's
``GET /api/workflow_templates`` gives, in its order, and read nothing else about them: no index, no metadata, no
per-template translation):
* 1.32.9 (ComfyUI 0.3.75): a card with the thumbnail ``workflows/NAME.jpg``, the file name as the title and the
  file name again, ``-``/``_`` turned into spaces, as the description;
* 1.48.7 (ComfyUI 0.33.0): a card with the thumbnail and the file name as the title, no description.
So the title and one-line description of :data:`TEMPLATES` are drawn into the caption band of each thumbnail, the
one place both frontends show text we choose; ``web/templates_order.js`` puts the lab template first.

Thumbnails (400x300 JPEG, < 40 KB, a JPEG comment names what the frames are, :data:`THUMBNAIL_MARK`): the lab
templates show frames of their real output (the workflow's API prompt run on a headless server with ``lab_model/``);
templates that need Wan weights show frames of the clip they start from, captioned "output not shown" and the
weights they need. ``scripts/sync_workflows.py --thumbnails`` makes them.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from ..models.video_reader import read_frames

THUMBNAIL_SIZE = (400, 300)  # px, 4:3 like the template cards
THUMBNAIL_MAX_BYTES = 40_000
THUMBNAIL_MARK = "framememory-thumbnail"  # first word of the JPEG comment of a thumbnail made here
CAPTION_HEIGHT = 92  # px of the 300: title, description, what the frames are
CAPTION_LINES = ((6, 22, (255, 255, 255)), (36, 15, (225, 225, 225)), (62, 15, (255, 210, 90)))  # y in band, size, RGB
NOTE_TYPE = "Note"  # the frontend's stock note node (1.32.9 and 1.48.7 both register Note and MarkdownNote)
NOTE_TITLE = "Read me: what this template needs"

LAB_FILES = (  # (file in the pack's lab_model/, models/ sub-folder)
    ("framememory_lab_wan21.safetensors", "diffusion_models"),
    ("framememory_lab_wan21_vae.safetensors", "vae"),
)
LAB_MODEL_TEXT = ("The lab model is a small Wan 2.1-architecture model trained by this pack on 11 real clips at "
                  "256x128: blurry by design, it is not Wan. It shows what memory does at a size a CPU runs in "
                  "minutes (README, \"The lab model\"). The text encoder is a stand-in (prompts barely matter).")
WAN21_FILES = (  # (file, models/ sub-folder, where to get it)
    ("wan2.1_t2v_1.3B_bf16.safetensors", "diffusion_models", "Comfy-Org/Wan_2.1_ComfyUI_repackaged"),
    ("wan_2.1_vae.safetensors", "vae", "Comfy-Org/Wan_2.1_ComfyUI_repackaged"),
    ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders", "Comfy-Org/Wan_2.1_ComfyUI_repackaged"),
)
WAN22_FILES = (
    ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "diffusion_models", "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"),
    ("wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "diffusion_models", "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"),
    ("wan_2.1_vae.safetensors", "vae", "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"),
    ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders", "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"),
)


@dataclass(frozen=True)
class Template:
    """One Templates-browser workflow ``workflows/<name>.json``.

    Attributes:
        name: the file stem (what the frontend lists and shows as the title).
        title, description: drawn into the thumbnail's caption (title <= ~36 characters, description one line).
        files: ``(file, models/ sub-folder, source)``; source "lab_model/" for files shipped in the pack.
        runs_here: True when it runs with no download (the lab model): its thumbnail shows its real output.
        needs: the weights it needs, for the Note ("" for lab templates).
        weights: their short name for the thumbnail's caption ("" for lab templates).
        mode_text: what is special about it (memory mode), one or two sentences for the Note.
    """
    name: str
    title: str
    description: str
    files: tuple[tuple[str, str, str], ...]
    runs_here: bool
    needs: str = ""
    weights: str = ""
    mode_text: str = ""


def _lab(*extra: tuple[str, str]) -> tuple[tuple[str, str, str], ...]:
    return tuple((f, folder, "lab_model/") for f, folder in (*LAB_FILES, *extra))


TEMPLATES = (  # the order the Templates browser shows (web/templates_order.js): the no-download lab template first
    Template("storyboard_wan21_lab", "Lab model: no download",
             "3-shot storyboard from a clip's memory, runs on CPU",
             _lab(("framememory_lab_wan21_lora.safetensors", "loras"),
                  ("framememory_lab_wan21_encoder.safetensors", "memory_encoders")), True,
             mode_text="Memory mode: Frame Preservation (the paper's encoder), read from the input video by the "
                       "History node."),
    Template("storyboard_wan21_lab_packforcing", "Lab model: PackForcing memory",
             "Same storyboard, PackForcing memory",
             _lab(("framememory_lab_wan21_packforcing_lora.safetensors", "loras"),
                  ("framememory_lab_wan21_packforcing_encoder.safetensors", "memory_encoders")), True,
             mode_text="Memory mode: PackForcing (sink 2, top-K 4, recent 3); its encoder and LoRA were trained "
                       "for this mode."),
    Template("storyboard_wan21_lab_videossm", "Lab model: VideoSSM memory",
             "Same storyboard, VideoSSM state memory",
             _lab(("framememory_lab_wan21_videossm_lora.safetensors", "loras"),
                  ("framememory_lab_wan21_videossm.safetensors", "memory_encoders")), True,
             mode_text="Memory mode: VideoSSM (a learned state per block, sink 1, recent 3); its state modules "
                       "and LoRA were trained for this mode."),
    Template("storyboard_wan21", "Wan 2.1 T2V 1.3B storyboard",
             "Memory-guided storyboard on real Wan 2.1 weights",
             WAN21_FILES, False, needs="Wan 2.1 T2V 1.3B + VAE + umt5 (~10 GB)", weights="Wan 2.1",
             mode_text="The memory encoder is the built-in 'untrained (LR branch only)': no trained encoder for Wan "
                       "is shipped yet; put one in models/memory_encoders when you have it."),
    Template("storyboard_wan22_a14b", "Wan 2.2 A14B storyboard",
             "Two experts (high + low noise) share one memory",
             WAN22_FILES, False, needs="Wan 2.2 A14B high + low noise + VAE + umt5 (~36 GB)",
             weights="Wan 2.2 A14B",
             mode_text="Each expert reads the memory through its own patch embedding; the Storyboard switches from "
                       "the high-noise to the low-noise model at switch_step."),
)
BY_NAME = {t.name: t for t in TEMPLATES}


def template_for(path_or_name: str | Path) -> Template:
    """The :data:`TEMPLATES` entry of ``workflows/NAME.json`` (or NAME).

    Raises:
        KeyError: not a Templates-browser workflow (add it to :data:`TEMPLATES` with its title and needs)."""
    name = Path(path_or_name).stem
    if name not in BY_NAME:
        raise KeyError(f"{name}: not in framememory.headless.templates.TEMPLATES (give it a title, description and "
                       "the files it needs there)")
    return BY_NAME[name]


def note_text(template: Template) -> str:
    """The text of the template's Note node: what it is, every file it needs with its ``models/`` folder and
    source, and how to switch to real weights (lab templates: also what the lab model is)."""
    lines = [f"{template.title} - {template.description}.", ""]
    if template.runs_here:
        lines += ["Runs with no download. Needs the pack's own lab files: copy or link each from",
                  "custom_nodes/ComfyUI-FrameMemory/lab_model/ into ComfyUI's models/ folder shown:"]
        lines += [f"  {folder}/{name}" for name, folder, _ in template.files]
        lines += ["and a video in input/ (any clip: its frames are the memory). The text encoder is the",
                  "pack's Lab Text Encoder, a stand-in the lab model was trained with (no download).", "",
                  LAB_MODEL_TEXT]
        if template.mode_text:
            lines += ["", template.mode_text]
        lines += ["", "Real weights: open the 'storyboard_wan21' template (Wan 2.1 T2V 1.3B) or, in this graph, pick",
                  "wan2.1_t2v_1.3B_bf16 in Load Diffusion Model, wan_2.1_vae in Load VAE, replace the stand-in",
                  "text encoder with Load CLIP (umt5_xxl_fp8_e4m3fn_scaled, type wan), bypass the LoRA, choose",
                  "'untrained (LR branch only)' as memory encoder and set the Storyboard to 832x480."]
    else:
        lines += [f"Needs real weights ({template.needs}); the thumbnail shows the input clip, not its output.",
                  "Put each file in ComfyUI's models/ folder shown (from Hugging Face):"]
        lines += [f"  {folder}/{name}  ({source})" for name, folder, source in template.files]
        lines += ["and a video in input/ (its frames are the memory).", "", template.mode_text, "",
                  "No weights yet? The 'storyboard_wan21_lab' template runs with the pack's small lab model",
                  "(blurry by design, not Wan) with no download."]
    return "\n".join(lines)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's bundled scalable font: the same on every machine


def compose_thumbnail(frames: list, template: Template, frames_are: str) -> bytes:
    """A 400x300 JPEG: up to 4 frames in a 2x2 grid (each 200x104, aspect kept, centre-cropped) above a caption
    band with the title, the description and ``frames_are`` (what the frames show); the JPEG comment is
    ``"<THUMBNAIL_MARK> <name>: <frames_are>"``.

    Args:
        frames: HxWx3 uint8 arrays or PIL images (at least 1; repeated when fewer than 4).
    Raises:
        ValueError: no frames, a caption line wider than the thumbnail, or the JPEG exceeds
            :data:`THUMBNAIL_MAX_BYTES` at quality 60."""
    from PIL import Image, ImageDraw, ImageOps

    if not frames:
        raise ValueError(f"{template.name}: no frames for its thumbnail")
    width, height = THUMBNAIL_SIZE
    tile = (width // 2, (height - CAPTION_HEIGHT) // 2)
    canvas = Image.new("RGB", THUMBNAIL_SIZE, (24, 24, 28))
    for i in range(4):
        frame = frames[i * len(frames) // 4] if len(frames) >= 4 else frames[i % len(frames)]
        image = frame if isinstance(frame, Image.Image) else Image.fromarray(frame)
        inner = (tile[0] - 2, tile[1] - 2)  # a 2 px seam between the frames
        canvas.paste(ImageOps.fit(image.convert("RGB"), inner, Image.Resampling.LANCZOS),
                     ((i % 2) * tile[0] + 1, (i // 2) * tile[1] + 1))
    draw = ImageDraw.Draw(canvas)
    top = height - CAPTION_HEIGHT
    draw.rectangle((0, top, width, height), fill=(24, 24, 28) if template.runs_here else (70, 24, 24))
    for (y, size, colour), text in zip(CAPTION_LINES, (template.title, template.description, frames_are)):
        if draw.textlength(text, font=_font(size)) > width - 20:
            raise ValueError(f"{template.name}: caption line {text!r} is wider than the thumbnail: shorten it")
        draw.text((10, top + y), text, font=_font(size), fill=colour)
    comment = f"{THUMBNAIL_MARK} {template.name}: {frames_are}".encode()
    for quality in (85, 75, 60):
        jpeg = io.BytesIO()
        canvas.save(jpeg, format="JPEG", quality=quality, optimize=True, comment=comment)
        if jpeg.tell() <= THUMBNAIL_MAX_BYTES:
            return jpeg.getvalue()
    raise ValueError(f"{template.name}: thumbnail is {jpeg.tell()} bytes at quality 60 (max {THUMBNAIL_MAX_BYTES})")


def frames_are_text(template: Template) -> str:
    """The caption's third line: what the thumbnail's frames are."""
    if template.runs_here:
        return "Frames of its output with the lab model (blurry)"
    return f"Input clip only: output not shown (needs {template.weights})"


def video_frames(path: Path, count: int = 4, last: int | None = None) -> list:
    """``count`` evenly spaced RGB frames (HxWx3 uint8) of the video at ``path`` (PyAV), from its last ``last``
    frames when given (the generated part of a storyboard video that starts with its history).

    Raises:
        ValueError: the file has no video frames."""
    frames, _ = read_frames(path)
    if not frames:
        raise ValueError(f"{path}: no video frames")
    frames = frames[-last:] if last else frames
    return [frames[min(len(frames) - 1, (2 * i + 1) * len(frames) // (2 * count))] for i in range(count)]


def storyboard_frame_count(api_prompt: dict) -> int:
    """Frames the Storyboard of ``api_prompt`` generates: sum of its shots' seconds x fps (its history excluded)."""
    board = next(n["inputs"] for n in api_prompt.values() if n.get("class_type") == "FrameMemoryStoryboard")
    seconds = sum(float(line.split("|", 1)[0]) for line in board["storyboard"].splitlines() if "|" in line)
    return max(1, round(seconds * float(board["fps"])))


def input_clip_frames(api_prompt: dict, input_dir: Path, count: int = 4) -> list:
    """``count`` frames of the clip the workflow starts from: the Load Video file (in ``input_dir``), limited to
    the Image From Batch range when the workflow has one."""
    clip = next(n["inputs"]["file"] for n in api_prompt.values() if n.get("class_type") == "LoadVideo")
    pick = next((n["inputs"] for n in api_prompt.values() if n.get("class_type") == "ImageFromBatch"), None)
    first, length = (int(pick["batch_index"]), int(pick["length"])) if pick else (0, None)
    frames, _ = read_frames(Path(input_dir) / clip)
    frames = frames[first:first + length] if length else frames[first:]
    return [frames[(2 * i + 1) * len(frames) // (2 * count)] for i in range(count)]


def make_thumbnail(server, template: Template, api_path: Path, timeout_s: float = 1800.0) -> bytes:
    """The thumbnail of ``template`` (:func:`compose_thumbnail`): a lab template's API prompt (``api_path``) is run
    on ``server`` (a started :class:`~framememory.headless.comfy_server.ComfyServer` with the lab files and the
    input clip) and 4 frames of its generated part are shown; other templates show their input clip.

    Raises:
        ServerError: the run failed; ValueError: no video came out."""
    import json

    api = json.loads(Path(api_path).read_text())
    if not template.runs_here:
        return compose_thumbnail(input_clip_frames(api, server.input_dir), template, frames_are_text(template))
    prompt_id, _ = server.run(api, timeout=timeout_s)
    save = [nid for nid, n in api.items() if n.get("class_type") == "SaveVideo"]
    videos = server.output_files(server.history(prompt_id), save[0] if save else None, (".mp4", ".webm"))
    if not videos:
        raise ValueError(f"{template.name}: the run made no video")
    frames = video_frames(videos[0], last=storyboard_frame_count(api))
    return compose_thumbnail(frames, template, frames_are_text(template))
