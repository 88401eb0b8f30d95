"""The ComfyUI contract: every ComfyUI symbol, signature and tensor layout the pack relies on, asserted directly.

A new ComfyUI that renames, removes or reshapes one of them fails here with the symbol's name, in seconds, before
any end-to-end test gets to it. Where the pack supports two layouts by feature detection (the Wan VAE cache, the
HunyuanVideo token order, ``apply_mod``'s modulation rows, context-window cond callbacks), the contract is that one
of the known layouts is present. The list follows ``grep -rn "comfy\\." models nodes memory training demo headless``
(tests and benchmarks excluded); tested on ComfyUI 0.3.75 and 0.33.0.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest
import torch

# (module, attribute path): what the pack imports or reads by name.
SYMBOLS = [
    ("comfy.cli_args", "args.cpu"), ("comfy.cli_args", "args.use_pytorch_cross_attention"),
    ("comfy.conds", "CONDRegular"),
    ("comfy.patcher_extension", "WrappersMP.DIFFUSION_MODEL"), ("comfy.patcher_extension", "WrappersMP.OUTER_SAMPLE"),
    ("comfy.patcher_extension", "add_callback_with_key"), ("comfy.patcher_extension", "get_callbacks_with_key"),
    ("comfy.patcher_extension", "get_all_wrappers"), ("comfy.patcher_extension", "WrapperExecutor.new_class_executor"),
    ("comfy.model_patcher", "ModelPatcher.clone"), ("comfy.model_patcher", "ModelPatcher.add_wrapper_with_key"),
    ("comfy.model_patcher", "ModelPatcher.remove_wrappers_with_key"),
    ("comfy.model_patcher", "ModelPatcher.set_model_patch_replace"),
    ("comfy.model_patcher", "ModelPatcher.set_additional_models"),
    ("comfy.model_management", "load_models_gpu"), ("comfy.model_management", "get_torch_device"),
    ("comfy.model_management", "unet_offload_device"), ("comfy.model_management", "get_free_memory"),
    ("comfy.model_management", "dtype_size"), ("comfy.model_management", "throw_exception_if_processing_interrupted"),
    ("comfy.model_management", "interrupt_current_processing"),
    ("comfy.model_management", "InterruptProcessingException"), ("comfy.model_management", "unload_all_models"),
    ("comfy.sd", "VAE.encode"), ("comfy.sd", "VAE.decode"), ("comfy.sd", "load_diffusion_model"),
    ("comfy.sd", "load_diffusion_model_state_dict"), ("comfy.sd", "load_lora_for_models"), ("comfy.sd", "load_clip"),
    ("comfy.sd", "CLIPType.WAN"), ("comfy.sd", "CLIPType.HUNYUAN_VIDEO"),
    ("comfy.sample", "sample"), ("comfy.sample", "prepare_noise"), ("comfy.sample", "fix_empty_latent_channels"),
    ("comfy.samplers", "KSampler.SAMPLERS"), ("comfy.samplers", "KSampler.SCHEDULERS"),
    ("comfy.utils", "load_torch_file"), ("comfy.utils", "ProgressBar"), ("comfy.utils", "PROGRESS_BAR_ENABLED"),
    ("comfy.ops", "manual_cast.Linear"), ("comfy.ops", "manual_cast.Conv3d"), ("comfy.ops", "disable_weight_init.Linear"),
    ("comfy.ops", "disable_weight_init.Conv3d"),
    ("comfy.latent_formats", "Wan21"), ("comfy.latent_formats", "Wan22"), ("comfy.latent_formats", "HunyuanVideo"),
    ("comfy.lora", "model_lora_keys_unet"), ("comfy.lora", "load_lora"),
    ("comfy.ldm.wan.model", "WanModel"), ("comfy.ldm.wan.model", "sinusoidal_embedding_1d"),
    ("comfy.ldm.wan.model", "repeat_e"),
    ("comfy.ldm.wan.vae", "WanVAE"), ("comfy.ldm.wan.vae", "CACHE_T"), ("comfy.ldm.wan.vae2_2", "WanVAE"),
    ("comfy.ldm.hunyuan_video.model", "HunyuanVideo"), ("comfy.ldm.hunyuan_video.model", "HunyuanVideoParams"),
    ("comfy.ldm.flux.layers", "apply_mod"), ("comfy.ldm.flux.layers", "timestep_embedding"),
    ("comfy.ldm.models.autoencoder", "AutoencoderKL"),
    ("comfy.ldm.modules.attention", "optimized_attention"), ("comfy.ldm.modules.attention", "attention_pytorch"),
    ("comfy.ldm.modules.attention", "attention_sage"),
    ("comfy.context_windows", "IndexListContextHandler"), ("comfy.context_windows", "IndexListCallbacks"),
    ("comfy_api.latest", "ComfyExtension"), ("comfy_api.latest", "io.ComfyNode"), ("comfy_api.latest", "io.Schema"),
    ("comfy_api.latest", "io.NodeOutput"), ("comfy_api.latest", "io.Custom"), ("comfy_api.latest", "io.UploadType.video"),
    *[("comfy_api.latest", f"io.{t}.Input") for t in ("Int", "Float", "String", "Boolean", "Combo", "Model", "Vae",
                                                      "Clip", "Conditioning", "Image", "Latent")],
    *[("comfy_api.latest", f"io.{t}.Output") for t in ("String", "Conditioning", "Clip", "Model", "Image")],
    ("comfy_execution.utils", "get_executing_context"),
    *[("folder_paths", f) for f in ("add_model_folder_path", "exists_annotated_filepath", "filter_files_content_types",
                                    "folder_names_and_paths", "get_annotated_filepath", "get_filename_list",
                                    "get_full_path_or_raise", "get_input_directory", "get_output_directory",
                                    "models_dir")],
    ("latent_preview", "prepare_callback"),
]
# server.py is read, not imported: importing it in a test process drags in the whole web server (and on 0.3.75 its
# `utils` package clashes with other `utils` modules on sys.path).
SERVER_METHODS = ["send_sync", "send_progress_text"]

# (module, callable path, parameters the pack passes by name or position, in that order where positional)
SIGNATURES = [
    ("comfy.ldm.wan.model", "WanModel.forward",
     ["x", "timestep", "context", "clip_fea", "time_dim_concat", "transformer_options"]),
    ("comfy.ldm.wan.model", "WanModel.rope_encode", ["t", "h", "w", "t_start", "steps_t", "steps_h", "steps_w"]),
    ("comfy.ldm.hunyuan_video.model", "HunyuanVideo._forward",
     ["x", "timestep", "context", "y", "txt_byt5", "clip_fea", "guidance", "attention_mask", "guiding_frame_index",
      "ref_latent", "disable_time_r", "control", "transformer_options"]),
    ("comfy.ldm.hunyuan_video.model", "HunyuanVideo.forward_orig",
     ["img", "img_ids", "txt", "txt_ids", "txt_mask", "timesteps", "y"]),
    ("comfy.ldm.flux.layers", "apply_mod", ["tensor", "m_mult", "m_add", "modulation_dims"]),
    ("comfy.ldm.flux.layers", "timestep_embedding", ["t", "dim", "max_period", "time_factor"]),
    ("comfy.model_patcher", "ModelPatcher.set_model_patch_replace", ["patch", "name", "block_name", "number"]),
    ("comfy.model_patcher", "ModelPatcher.add_wrapper_with_key", ["wrapper_type", "key", "wrapper"]),
    ("comfy.model_patcher", "ModelPatcher.set_additional_models", ["key", "models"]),
    ("comfy.patcher_extension", "add_callback_with_key", ["call_type", "key", "callback", "transformer_options"]),
    ("comfy.sample", "sample", ["model", "noise", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                                "latent_image", "denoise", "disable_noise", "start_step", "last_step",
                                "force_full_denoise", "noise_mask", "sigmas", "callback", "disable_pbar", "seed"]),
    ("comfy.sd", "load_diffusion_model", ["unet_path", "model_options"]),
    ("comfy.sd", "VAE.__init__", ["sd"]),
    ("comfy.utils", "ProgressBar.update_absolute", ["value", "total"]),
    ("comfy.ldm.wan.vae", "WanVAE.__init__", ["dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales",
                                               "temperal_downsample", "dropout"]),
]


def _resolve(module: str, path: str):
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("module,path", SYMBOLS, ids=[f"{m}.{p}" for m, p in SYMBOLS])
def test_symbol_exists(comfy, module, path):
    try:
        _resolve(module, path)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"ComfyUI symbol {module}.{path} is gone: {e}")


def test_prompt_server_methods(comfyui_dir):
    import ast

    tree = ast.parse((comfyui_dir / "server.py").read_text())
    classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
    assert "PromptServer" in classes, "ComfyUI server.PromptServer is gone"
    methods = {f.name for f in classes["PromptServer"].body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    missing = [m for m in SERVER_METHODS if m not in methods]
    assert not missing, f"ComfyUI server.PromptServer lacks {missing}"


@pytest.mark.parametrize("module,path,params", SIGNATURES, ids=[f"{m}.{p}" for m, p, _ in SIGNATURES])
def test_signature(comfy, module, path, params):
    got = [p for p in inspect.signature(_resolve(module, path)).parameters if p != "self"]
    assert got[:len(params)] == params or set(params) <= set(got), (
        f"ComfyUI signature {module}.{path} changed: the pack passes {params}, it takes {got}")


def test_feature_detected_layouts_are_known(comfy):
    """Each detected layout is one of those the adapters handle: the Wan VAE's cache counter, the HunyuanVideo
    double block's token order, the ``apply_mod`` row layout; HunyuanVideoParams has no field the tiny config misses."""
    import comfy.ldm.wan.vae as wan_vae
    from comfy.ldm.hunyuan_video.model import HunyuanVideoParams

    from framememory.demo.tiny_hunyuan import NEW_PARAMS, TINY_DIT, tiny_hunyuan_dit
    from framememory.models.families import hunyuan_video as hunyuan
    from framememory.models.vae_stream import cache_slots

    assert hasattr(wan_vae, "count_cache_layers") or hasattr(wan_vae, "count_conv3d"), \
        "comfy.ldm.wan.vae has neither count_cache_layers (>= 0.18) nor count_conv3d: unknown Wan VAE cache layout"
    missing = {f.name for f in dataclasses.fields(HunyuanVideoParams)} - set(TINY_DIT) - set(NEW_PARAMS)
    assert not missing, f"comfy.ldm.hunyuan_video.model.HunyuanVideoParams has new fields {missing}"
    assert hunyuan.modulation_rows() in (3, 4)
    hv = tiny_hunyuan_dit(depth=1, depth_single_blocks=1)
    assert isinstance(hunyuan.text_first(hv), bool)
    from framememory.demo.tiny_models import tiny_wan21_vae

    vae = tiny_wan21_vae(1)
    for module in (vae.encoder, vae.decoder):
        params = inspect.signature(module.forward).parameters
        assert "feat_cache" in params and "feat_idx" in params, f"WanVAE {type(module).__name__}.forward: {list(params)}"
        assert cache_slots(vae, module) > 0


def test_vae_instance_attributes(comfy):
    """A stock ``comfy.sd.VAE`` of a (tiny) Wan 2.1 VAE state dict: what the VAE stream and the input checks read."""
    import comfy.sd

    from framememory.demo.tiny_models import tiny_wan21_vae

    vae = comfy.sd.VAE(sd=tiny_wan21_vae(1).state_dict())
    for name in ("first_stage_model", "device", "latent_channels", "memory_used_decode", "memory_used_encode"):
        assert hasattr(vae, name), f"comfy.sd.VAE instances have no {name!r}"
    assert type(vae.first_stage_model).__name__ == "WanVAE" and vae.latent_channels == 16
    assert vae.memory_used_decode((1, 16, 2, 4, 4), torch.float32) > 0, "comfy.sd.VAE.memory_used_decode(shape, dtype)"
    assert vae.memory_used_encode((1, 3, 5, 32, 32), torch.float32) > 0, "comfy.sd.VAE.memory_used_encode(shape, dtype)"


def _record_block_args(dm, forward):
    """Run ``forward(transformer_options)`` with a recording replace patch on every block; returns {key: args}."""
    seen = {}

    def spy(key):
        def patch(args, extra):
            seen[key] = {k: (tuple(v.shape) if isinstance(v, torch.Tensor) else v) for k, v in args.items()
                         if k != "transformer_options"}
            seen[key]["transformer_options"] = set(args.get("transformer_options", {}))
            return extra["original_block"](args)
        return patch

    blocks = {}
    for name in ("blocks", "double_blocks", "single_blocks"):
        kind = "single_block" if name == "single_blocks" else "double_block"
        for i in range(len(getattr(dm, name, []))):
            blocks[(kind, i)] = spy((kind, i))
    with torch.no_grad():
        forward({"patches_replace": {"dit": blocks}})
    return seen


def test_wan_block_patch_args_and_layouts(comfy):
    """``patches_replace["dit"][("double_block", i)]`` of WanModel gets img [B, N, D], pe [1, N, 1, d/2, 2, 2] (RoPE
    of ``rope_encode``, extendable on dim 1), vec (``e0``) [B, L, 6, D], txt; the wrapper kwargs reach the diffusion
    model through ``WrappersMP.DIFFUSION_MODEL`` with the WanModel as ``executor.class_obj``."""
    import comfy.patcher_extension

    from framememory.demo.tiny_models import tiny_wan21_dit

    dm = tiny_wan21_dit(seed=0, num_layers=2)
    x, t, ctx = torch.randn(1, 16, 2, 4, 6), torch.tensor([500.0]), torch.randn(1, 8, 4096)
    seen_wrapper = {}

    def wrapper(executor, *args, **kwargs):
        seen_wrapper.update(cls=type(executor.class_obj), kwargs=set(kwargs))
        return executor(*args, **kwargs)

    def forward(options):
        options["wrappers"] = {comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL: {"k": [wrapper]}}
        return dm(x, t, ctx, transformer_options=options, memory_tokens=None)

    seen = _record_block_args(dm, forward)
    n, d = 2 * 2 * 3, dm.dim
    for key in (("double_block", 0), ("double_block", 1)):
        args = seen.get(key)
        assert args is not None, f"WanModel.forward_orig did not call patches_replace['dit'][{key}]"
        assert args["img"] == (1, n, d), f"WanModel block {key} img {args['img']}"
        assert args["pe"] == (1, n, 1, d // dm.num_heads // 2, 2, 2), f"WanModel block {key} pe {args['pe']}"
        assert len(args["vec"]) == 4 and args["vec"][0] == 1 and args["vec"][2:] == (6, d), \
            f"WanModel block {key} vec (e0) {args['vec']}"
        assert "txt" in args
    assert seen_wrapper["cls"] is type(dm) and "memory_tokens" in seen_wrapper["kwargs"]
    ids = torch.zeros(1, 3, 3)
    assert dm.rope_embedder(ids).movedim(1, 2).shape == (1, 3, 1, d // dm.num_heads // 2, 2, 2), "rope_embedder"
    assert dm.patch_embedding(x.float()).shape == (1, d, 2, 2, 3), "WanModel.patch_embedding"


def test_hunyuan_block_patch_args_and_layouts(comfy):
    """HunyuanVideo's double blocks get img / txt apart, pe over both [B, 1, N + L, d/2, 2, 2], a 2-D vec, the text
    mask over N + L keys and the modulation dims; single blocks get the concatenation; the forward's text attention
    mask reaches them as an additive float mask."""
    from framememory.demo.tiny_hunyuan import tiny_hunyuan_dit

    dm = tiny_hunyuan_dit(seed=0, depth=1, depth_single_blocks=1)
    x, t = torch.randn(1, 16, 2, 4, 6), torch.tensor([500.0])
    ctx, mask = torch.randn(1, 5, 4096) * 0.1, torch.tensor([[1, 1, 1, 0, 0]])
    kw = {"y": torch.randn(1, 768), "guidance": torch.tensor([6.0]), "attention_mask": mask}
    seen = _record_block_args(dm, lambda options: dm(x, t, ctx, transformer_options=options, **kw))
    n, txt, d = 2 * 2 * 3, 5, dm.hidden_size
    double, single = seen.get(("double_block", 0)), seen.get(("single_block", 0))
    assert double is not None and single is not None, "HunyuanVideo.forward_orig did not call the block patches"
    for k in ("img", "txt", "vec", "pe", "attention_mask", "modulation_dims_img", "modulation_dims_txt"):
        assert k in double, f"HunyuanVideo double_block args lack {k!r}: {sorted(double)}"
    for k in ("img", "vec", "pe", "attention_mask", "modulation_dims"):
        assert k in single, f"HunyuanVideo single_block args lack {k!r}: {sorted(single)}"
    assert double["img"] == (1, n, d) and double["txt"] == (1, txt, d) and double["vec"] == (1, d)
    assert double["pe"][:3] == (1, 1, n + txt) and double["pe"][-2:] == (2, 2), f"pe {double['pe']}"
    assert double["attention_mask"][-1] == n + txt and single["img"] == (1, n + txt, d)
    if "img_slice" in single["transformer_options"]:
        assert "flipped_img_txt" not in vars(dm.double_blocks[0]), "img_slice with a flipped_img_txt block"


def test_context_window_cond_hooks(comfy):
    """Context windows: where the handler slices model conds by their dim (ComfyUI 0.33), it must offer the
    ``RESIZE_COND_ITEM`` callback that keeps the memory conds whole (``models.conds.exempt_memory_conds``)."""
    import comfy.context_windows as cw

    source = inspect.getsource(cw.IndexListContextHandler.get_resized_cond)
    slices_by_dim = "self.dim < cond_value.cond.ndim" in source or "self.dim < cond_value.ndim" in source
    if slices_by_dim:
        assert hasattr(cw.IndexListCallbacks, "RESIZE_COND_ITEM"), \
            "comfy.context_windows slices model conds by dim but has no IndexListCallbacks.RESIZE_COND_ITEM"
        assert "RESIZE_COND_ITEM" in source, "get_resized_cond no longer calls the RESIZE_COND_ITEM callbacks"


def test_model_patcher_class_for_own_models(comfy):
    """Own models (encoder, cross-attention layers) are wrapped in ``CoreModelPatcher`` where it exists (ComfyUI's
    dynamic-VRAM patcher on NVIDIA when main.py swaps it in), else ``ModelPatcher``; both take (model, load_device,
    offload_device)."""
    import comfy.model_patcher as mp

    cls = getattr(mp, "CoreModelPatcher", mp.ModelPatcher)
    params = list(inspect.signature(cls.__init__).parameters)
    assert params[1:4] == ["model", "load_device", "offload_device"], f"{cls.__name__}.__init__ {params}"
