// ComfyUI-FrameMemory: one place for each setting (issue 26; tested with ComfyUI frontend 1.32.9 and 1.48.7).
//
// A Load Video as History whose memory output feeds a Storyboard's memory input reads width, height, fps,
// segment_latent_frames and memory_mode from that Storyboard. This extension shows it in the graph: the history
// node's five widgets take the Storyboard's values when the link is made, when a workflow is loaded and whenever one
// of the Storyboard's widgets changes, and are read-only (disabled) with a tooltip saying they are set on the
// Storyboard. Unlinked, the history node's widgets are editable again. The server does the same when a prompt is
// queued (nodes/history_settings.py), so a prompt from a script or an older page cannot disagree either.
//
// Only the widgets' values, disabled flag, label and tooltip change: nothing is added to the saved workflow, and
// widgets_values keeps its order. The frontend's LiteGraph API is used as both versions expose it
// (node.outputs[].links, graph.getLink / graph.links, node.widgets, onConnectionsChange, widget callbacks).
import { app } from "../../scripts/app.js";

const HISTORY = "FrameMemoryLoadVideoHistory";
const STORYBOARD = "FrameMemoryStoryboard";
const SHARED = ["width", "height", "fps", "segment_latent_frames", "memory_mode"];
const MEMORY_OUTPUT = 0; // Load Video as History's memory output
const MEMORY_INPUT = "memory"; // the Storyboard input it feeds
const FOLLOWING = Symbol("framememory.followsStoryboard"); // on a widget: its tooltip and label before following

function linkById(graph, id) {
  return graph?.getLink?.(id) ?? graph?.links?.get?.(id) ?? graph?.links?.[id] ?? null;
}

// The Storyboards whose memory input is linked to this history node's memory output, in link order.
function storyboardsFed(node) {
  const graph = node.graph;
  const out = [];
  for (const id of node.outputs?.[MEMORY_OUTPUT]?.links ?? []) {
    const link = linkById(graph, id);
    const target = link && graph.getNodeById(link.target_id);
    if (target?.type === STORYBOARD && target.inputs?.[link.target_slot]?.name === MEMORY_INPUT) out.push(target);
  }
  return out;
}

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name) ?? null;
}

function label(node) {
  return `'${node.title}' (#${node.id})`;
}

// Read-only, following the Storyboard. Both frontends draw a disabled widget on the canvas without its value, so the
// label carries it ("width = 256, set on the Storyboard"); labels are display only (not saved in the workflow).
function follow(w, storyboard) {
  if (!(FOLLOWING in w)) w[FOLLOWING] = { tooltip: w.tooltip, label: w.label };
  w.disabled = true;
  w.label = `${w.name} = ${w.value}, set on the Storyboard`;
  w.tooltip = `Set on the Storyboard ${label(storyboard)}: this value follows its ${w.name} (change it there). `
    + "Unlink the memory output to edit it here.";
}

function restore(w, key, value) {
  if (value === undefined) delete w[key];
  else w[key] = value;
}

function release(w) {
  if (!(FOLLOWING in w)) return;
  w.disabled = false;
  restore(w, "tooltip", w[FOLLOWING].tooltip);
  restore(w, "label", w[FOLLOWING].label);
  delete w[FOLLOWING];
}

// Bring one history node in line with the Storyboard it feeds (the first, where it feeds several: the server refuses
// Storyboards that disagree when the prompt runs), or make its widgets editable when it feeds none.
export function syncHistoryNode(node) {
  const storyboard = storyboardsFed(node)[0] ?? null;
  for (const name of SHARED) {
    const own = widget(node, name);
    if (!own) continue;
    const theirs = storyboard && widget(storyboard, name);
    if (!theirs) {
      release(own);
      continue;
    }
    if (own.value !== theirs.value) {
      own.value = theirs.value;
      own.callback?.(own.value);
    }
    follow(own, storyboard);
  }
  node.setDirtyCanvas?.(true, true);
}

function syncGraph(graph = app.graph) {
  for (const node of graph?.nodes ?? graph?._nodes ?? []) {
    if (node.type === HISTORY) syncHistoryNode(node);
  }
}

// After the current event: connection callbacks fire while links are half made (and during a graph's configure).
let pending = false;
function syncSoon() {
  if (pending) return;
  pending = true;
  setTimeout(() => {
    pending = false;
    syncGraph();
  }, 0);
}

function watchStoryboardWidgets(node) {
  for (const name of SHARED) {
    const w = widget(node, name);
    if (!w || w.framememoryWatched) continue;
    const original = w.callback;
    w.callback = function (...args) {
      const result = original?.apply(this, args);
      syncSoon();
      return result;
    };
    w.framememoryWatched = true;
  }
}

app.registerExtension({
  name: "FrameMemory.HistorySettings",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== HISTORY && nodeData.name !== STORYBOARD) return;
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (...args) {
      const result = onConnectionsChange?.apply(this, args);
      syncSoon();
      return result;
    };
  },
  nodeCreated(node) {
    if (node.type === STORYBOARD || node.comfyClass === STORYBOARD) watchStoryboardWidgets(node);
  },
  loadedGraphNode(node) {
    if (node.type === STORYBOARD) watchStoryboardWidgets(node);
  },
  afterConfigureGraph() {
    syncGraph();
  },
});
