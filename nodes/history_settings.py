"""One place for each setting: a Load Video as History whose memory output feeds a Storyboard's memory input takes
width, height, fps, segment_latent_frames and memory_mode from that Storyboard.

Two halves, both on the API-format prompt (``{node id: {"class_type", "inputs", "_meta": {"title"}}}``, a link being
``[source node id, output index]``), the dict ``POST /prompt`` carries:

* :func:`follow_storyboards`, run by :func:`on_prompt` (registered with ComfyUI's
  ``PromptServer.add_on_prompt_handler``, called with the POST /prompt body before the prompt is validated), copies
  the five values of the Storyboards a history node feeds into it, when those Storyboards agree and hold constants.
* :func:`settings_conflict` is what the history node checks at the very start of ``execute`` (V3 hidden inputs
  ``prompt`` and ``unique_id``), before any frame is read: whatever the handler left (Storyboards that disagree, a
  value that comes through a link, a prompt queued without the handler) is refused there, naming both nodes.

Pure dict code: no ComfyUI import, so it is tested without a server.
"""
from __future__ import annotations

import logging

log = logging.getLogger("FrameMemory")

HISTORY_NODE = "FrameMemoryLoadVideoHistory"
STORYBOARD_NODE = "FrameMemoryStoryboard"
MEMORY_OUTPUT = 0  # index of Load Video as History's memory output
SHARED_SETTINGS = ("width", "height", "fps", "segment_latent_frames", "memory_mode")
STORYBOARD_DEFAULTS = {"memory_mode": "frame_preservation"}  # optional Storyboard inputs a prompt may leave out


def is_link(value) -> bool:
    """Whether an API-prompt input value is a link ``[node id, output index]`` rather than a constant."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def node_label(prompt: dict, node_id: str) -> str:
    """``'Title' (#id)`` of a prompt's node: its ``_meta.title`` (what the frontend shows), else its class."""
    node = prompt.get(str(node_id), {})
    title = (node.get("_meta") or {}).get("title") or node.get("class_type", "node")
    return f"'{title}' (#{node_id})"


def storyboards_fed(prompt: dict, history_id: str) -> list[str]:
    """Ids of the Storyboard nodes whose ``memory`` input is linked directly to ``history_id``'s memory output."""
    return [nid for nid, node in prompt.items()
            if isinstance(node, dict) and node.get("class_type") == STORYBOARD_NODE
            and (node.get("inputs") or {}).get("memory") == [str(history_id), MEMORY_OUTPUT]]


def storyboard_value(prompt: dict, storyboard_id: str, name: str):
    """The Storyboard's value of setting ``name`` (a constant or a link), its default where the prompt omits it."""
    return (prompt[storyboard_id].get("inputs") or {}).get(name, STORYBOARD_DEFAULTS.get(name))


def follow_storyboards(prompt: dict) -> list[str]:
    """Copy the shared settings of the Storyboards each Load Video as History feeds into it, in place.

    A setting is copied only when every Storyboard the node feeds holds the same constant (not a link); anything
    else is left for :func:`settings_conflict` to refuse when the node runs.

    Returns:
        One line per changed value, naming both nodes, the setting and both values (logged by :func:`on_prompt`).
    """
    changes = []
    for hid, node in prompt.items():
        if not isinstance(node, dict) or node.get("class_type") != HISTORY_NODE:
            continue
        inputs = node.setdefault("inputs", {})
        fed = storyboards_fed(prompt, hid)
        for name in SHARED_SETTINGS if fed else ():
            values = [storyboard_value(prompt, sid, name) for sid in fed]
            if any(is_link(v) or v is None for v in values) or any(v != values[0] for v in values[1:]):
                continue
            if inputs.get(name) != values[0]:
                changes.append(f"{node_label(prompt, hid)} {name}: {inputs.get(name)!r} -> {values[0]!r}, as on the "
                               f"Storyboard {node_label(prompt, fed[0])}")
                inputs[name] = values[0]
    return changes


def on_prompt(json_data: dict) -> dict:
    """ComfyUI prompt handler (``PromptServer.add_on_prompt_handler``): :func:`follow_storyboards` on the body's
    ``prompt``, one info line logged per changed value. Returns ``json_data`` (changed in place)."""
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    if isinstance(prompt, dict):
        for line in follow_storyboards(prompt):
            log.info("FrameMemory: %s", line)
    return json_data


def settings_conflict(prompt: dict | None, history_id: str | None, values: dict) -> str | None:
    """Why Load Video as History ``history_id`` must not run with its settings ``values`` (name -> the value it got),
    or None when every Storyboard it feeds agrees (or it feeds none, or ``prompt`` is unknown).

    Returns:
        A message naming the setting, both nodes (title and id), both values and the fix.
    """
    if not prompt or history_id is None or str(history_id) not in prompt:
        return None
    hid = str(history_id)
    own = (prompt[hid].get("inputs") or {})
    for sid in storyboards_fed(prompt, hid):
        for name in SHARED_SETTINGS:
            theirs = storyboard_value(prompt, sid, name)
            if is_link(theirs):
                if own.get(name) == theirs:
                    continue
                return (f"{name}: the Storyboard {node_label(prompt, sid)} takes {name} through a link from node "
                        f"#{theirs[0]}, but {node_label(prompt, hid)} feeding its memory has {values[name]!r}; the two "
                        f"must be equal: link the same node to both {name} inputs, or type the value on the Storyboard")
            if theirs is not None and theirs != values[name]:
                return (f"{name}: {node_label(prompt, hid)} has {values[name]!r} but the Storyboard "
                        f"{node_label(prompt, sid)} its memory feeds has {theirs!r}; the history must be read with the "
                        f"Storyboard's {name}: set {name} to {theirs!r} on the Storyboard (the history node follows it "
                        f"when queued from the ComfyUI page), or feed Storyboards that agree on {name}")
    return None


def register(server_module=None) -> bool:
    """Register :func:`on_prompt` with ComfyUI's ``PromptServer.instance`` once (``server.PromptServer.
    add_on_prompt_handler``). Returns False where there is no running server instance (tests, scripts)."""
    if server_module is None:
        try:
            import server as server_module
        except ImportError:  # ComfyUI's server module cannot be imported here (a test process, a script)
            return False
    instance = getattr(getattr(server_module, "PromptServer", None), "instance", None)
    if instance is None or not hasattr(instance, "add_on_prompt_handler"):
        return False
    if on_prompt not in getattr(instance, "on_prompt_handlers", []):
        instance.add_on_prompt_handler(on_prompt)
    return True


__all__ = ["SHARED_SETTINGS", "follow_storyboards", "on_prompt", "settings_conflict", "register", "node_label"]
