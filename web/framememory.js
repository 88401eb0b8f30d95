// ComfyUI-FrameMemory frontend extension (tested with ComfyUI frontend 1.32.9 and 1.48.7: ComfyUI 0.3.75 and 0.33.0).
//
// 1. The Storyboard's multiline text box keeps a minimum height, so previews and the progress text that share the
//    node cannot squeeze it below a few shots (DOM widget option getMinHeight; display only, nothing serialised).
// 2. The queue panel's "Total" (and the [NN%] in the tab title) moves with the Storyboard's run-wide progress. The
//    frontend computes it as finished nodes / nodes of the prompt, so one node doing all the work held it at 0 %
//    until the end. The server sends "framememory.progress" {prompt_id, node, value, max} after every sampling step
//    (nodes/progress_ui.py); each Storyboard then counts as UNITS extra entries of the prompt's node table, marked
//    done in proportion to value / max (the run-wide fraction through every segment's sampling, decode and encode,
//    nodes/progress_ui.py). No frontend offers extensions an API to that table: it is found by feature in
//    the execution store (queuedPrompts in 1.32, queuedJobs from 1.48 on); where neither exists the Total is left
//    alone and the run-wide progress shows on the node only (its progress text, "... 35 % of the run").
// 3. The report summary (the node's ui "text", as ComfyUI's PreviewText) is shown on the node again when the output
//    comes from cache; a fresh run shows it through the server's progress_text, which the frontend displays natively.
//    That text is display only: it is kept out of the saved workflow's widgets_values. The node grows to show every
//    line of it.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const STORYBOARD = "FrameMemoryStoryboard";
const TEXT_WIDGET = "storyboard";
const PROGRESS_TEXT_WIDGET = "$$node-text-preview"; // the frontend's widget for progress_text messages
const TEXT_MIN_HEIGHT = 150; // px (graph units) with the 10 px margins: a box of 130 px, about eight lines
const PROGRESS_EVENT = "framememory.progress";
const REPORT_LINE_HEIGHT = 16; // px (graph units) per line of the report summary
// Entries one Storyboard adds to the prompt's node table. 1000 against a workflow's ten-odd other nodes keeps the
// Total within about 1 % of the Storyboard's own run-wide percentage (its progress text and bar), so the node, the
// queue panel's Total and the tab title show one number.
const UNITS = 1000;

// The frontend's Pinia execution store: app.extensionManager is the workspace store, whose _p is the Pinia instance
// holding every store by id.
function executionStore() {
  return app.extensionManager?._p?._s?.get("execution") ?? null;
}

let noTableNotice = false;
// The execution store's table of queued prompts by id, each {nodes: {id: done}}: queuedJobs (1.48+) or queuedPrompts
// (1.32); null (with a one-time notice) when this frontend has neither.
function promptTable() {
  const store = executionStore();
  const table = store?.queuedJobs ?? store?.queuedPrompts ?? null;
  if (!table && !noTableNotice) {
    noTableNotice = true;
    console.info("FrameMemory: this frontend's execution store has no prompt table; run-wide progress shows on the "
      + "Storyboard node only");
  }
  return table;
}

function setRunFraction(promptId, nodeId, fraction) {
  const prompt = promptTable()?.[promptId];
  if (!prompt?.nodes) return;
  const done = Math.round(Math.min(Math.max(fraction, 0), 1) * UNITS);
  for (let i = 0; i < UNITS; i++) {
    const key = `framememory:${nodeId}:${i}`;
    if (prompt.nodes[key] !== i < done) prompt.nodes[key] = i < done;
  }
}

function hasUnits(promptId, nodeId) {
  return `framememory:${nodeId}:0` in (promptTable()?.[promptId]?.nodes ?? {});
}

function isStoryboard(nodeId) {
  return app.graph?.getNodeById?.(nodeId)?.comfyClass === STORYBOARD;
}

// At the start, every Storyboard of the prompt (top-level ones; others join at their first progress event) counts
// as UNITS undone entries, so the Total does not fall when its progress begins.
api.addEventListener("execution_start", ({ detail }) => {
  setTimeout(() => {  // after the execution store has registered the prompt
    const nodes = promptTable()?.[detail.prompt_id]?.nodes ?? {};
    for (const id of Object.keys(nodes).filter(isStoryboard)) setRunFraction(detail.prompt_id, id, 0);
  }, 0);
});
api.addEventListener(PROGRESS_EVENT, ({ detail }) => {
  if (detail.max > 0) setRunFraction(detail.prompt_id, detail.node, detail.value / detail.max);
});
api.addEventListener("execution_cached", ({ detail }) => {
  for (const id of detail.nodes ?? []) {
    if (hasUnits(detail.prompt_id, id) || isStoryboard(id)) setRunFraction(detail.prompt_id, id, 1);
  }
});
api.addEventListener("executed", ({ detail }) => {
  if (hasUnits(detail.prompt_id, detail.node)) setRunFraction(detail.prompt_id, detail.node, 1);
});

// The frontend sizes its progress-text widget for two lines; the report summary has about eight: grow the widget
// (and the node) to show every line.
function fitReport(node, lines) {
  const widget = node.widgets?.find((w) => w.name === PROGRESS_TEXT_WIDGET);
  if (!widget?.options) return;
  widget.options.getMinHeight = () => REPORT_LINE_HEIGHT * lines + 16;
  node.setSize([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "FrameMemory.Storyboard",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== STORYBOARD) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const box = this.widgets?.find((w) => w.name === TEXT_WIDGET);
      if (box?.options) {
        box.options.getMinHeight = () => TEXT_MIN_HEIGHT;
        this.setSize([this.size[0], Math.max(this.size[1], this.computeSize()[1])]);
      }
      return result;
    };

    // 1.32.9 marks its progress-text widget serialize: false in widget.options only, which the API prompt honours
    // but the saved workflow does not: keep the shown text out of widgets_values.
    const serialize = nodeType.prototype.serialize;
    nodeType.prototype.serialize = function () {
      for (const w of this.widgets ?? []) if (w.name === PROGRESS_TEXT_WIDGET) w.serialize = false;
      return serialize.apply(this, arguments);
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const text = message?.text?.[0];
      if (typeof text === "string" && text) {
        // the frontend's own progress-text display (the widget a server progress_text message fills)
        api.dispatchCustomEvent("progress_text", { nodeId: String(this.id), text });
        requestAnimationFrame(() => fitReport(this, text.split("\n").length));
      }
      return result;
    };
  },
});
