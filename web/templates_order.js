// ComfyUI-FrameMemory: the order of the pack's templates in the Templates browser (issue 26; tested with frontends
// 1.32.9 and 1.48.7).
//
// Both frontends list a custom node's templates in the order of the server's GET /api/workflow_templates, which is
// the order the server's file system lists workflows/*.json (ComfyUI does not sort it; on ext4 it is a hash order),
// and neither reads an order, title or description from the pack. So the no-download lab template would land
// anywhere. This wraps the api client's getWorkflowTemplates (the call both frontends' template store makes once,
// when the Templates browser first opens) and puts this pack's templates in ORDER; names it does not know follow,
// sorted. Other packs' lists are returned untouched. The same order is framememory.headless.templates.TEMPLATES.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const ORDER = [
  "storyboard_wan21_lab", // runs with no download: the pack's lab model
  "storyboard_wan21_lab_packforcing",
  "storyboard_wan21_lab_videossm",
  "storyboard_wan21", // real weights from here on
  "storyboard_wan22_a14b",
];

function ordered(names) {
  const rank = (name) => (ORDER.includes(name) ? ORDER.indexOf(name) : ORDER.length);
  return [...names].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

// Wrapped when the extension module loads (before the app finishes its setup, so before any template list is fetched).
function wrapTemplateList() {
  if (typeof api.getWorkflowTemplates !== "function" || api.getWorkflowTemplates.framememoryOrdered) return;
  const original = api.getWorkflowTemplates.bind(api);
  const wrapped = async (...args) => {
    const byPack = await original(...args);
    const out = {};
    for (const [pack, names] of Object.entries(byPack ?? {}))
      out[pack] = Array.isArray(names) && names.includes(ORDER[0]) ? ordered(names) : names;
    return out;
  };
  wrapped.framememoryOrdered = true;
  api.getWorkflowTemplates = wrapped;
}

wrapTemplateList();
app.registerExtension({ name: "FrameMemory.TemplatesOrder", setup: wrapTemplateList });
