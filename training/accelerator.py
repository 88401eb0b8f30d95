"""The Accelerate side of the training loop (training/loop.py): the ``Accelerator`` (with the switch that runs an FSDP
launch on CPU over gloo), checkpoints of only the trainable weights, the newest checkpoint to resume from, and the
export of the trained LoRA and encoder. See training/loop.py's docstring for what a checkpoint holds."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from ..memory.encoder import EncoderSet

CHECKPOINTS = "checkpoints"


def latest_checkpoint(output_dir: str) -> str:
    """Newest ``output_dir/checkpoints/step_*``. Raises FileNotFoundError when there is none."""
    root = Path(output_dir) / CHECKPOINTS
    found = sorted(root.glob("step_*")) if root.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no checkpoint under {root} to resume from")
    return str(found[-1])


def make_accelerator(args):
    """An ``accelerate.Accelerator`` for ``args`` (a :class:`training.loop.TrainArgs`: mixed precision, gradient
    accumulation, seed, output folder, tracker), with a seedable sampler and the project dir for trackers."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    cpu = not torch.cuda.is_available()  # so that torchrun / --multi_gpu without GPUs means DDP over gloo
    fsdp_plugin = _cpu_fsdp_plugin() if cpu else None
    accelerator = Accelerator(
        cpu=cpu, fsdp_plugin=fsdp_plugin,
        mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        project_config=ProjectConfiguration(project_dir=args.output_dir or ".", logging_dir=args.output_dir),
        log_with=args.report_to)
    if fsdp_plugin is not None:
        _fsdp_on_cpu(accelerator, fsdp_plugin)
    return accelerator


def _cpu_fsdp_plugin():
    """The FSDP plugin of an FSDP launch (``ACCELERATE_USE_FSDP``, e.g. ``training/accelerate/fsdp_cpu.yaml``) on a
    machine without GPUs, else None. Accelerate's plugin and torch's FSDP refuse ``sync_module_states`` without an
    accelerator device, so the plugin goes without it (:func:`sync_module_states_on_cpu` does the broadcast)."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.environment import str_to_bool

    if not str_to_bool(os.environ.get("ACCELERATE_USE_FSDP", "false")):
        return None
    return FullyShardedDataParallelPlugin(sync_module_states=False)


def sync_module_states_on_cpu(accelerator, module: torch.nn.Module) -> None:
    """FSDP on CPU (:func:`_fsdp_on_cpu`) whose config asks for ``sync_module_states``: broadcast rank 0's parameters
    and buffers of ``module`` to every process (gloo) before wrapping, what FSDP does itself on GPUs but refuses for
    CPU tensors."""
    from accelerate.utils import DistributedType
    from accelerate.utils.environment import str_to_bool

    if (accelerator.distributed_type != DistributedType.FSDP or accelerator.device.type != "cpu"
            or not str_to_bool(os.environ.get("FSDP_SYNC_MODULE_STATES", "false"))):
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(t.data, src=0)


def _fsdp_on_cpu(accelerator, plugin) -> None:
    """Accelerate (1.x) turns a multi-process CPU launch into MULTI_CPU (DDP over gloo) even when the config asks for
    FSDP: its FSDP branch lists only accelerator devices. torch's FSDP runs on CPU over gloo, so switch the
    accelerator's state to FSDP with ``plugin`` (the same settings Accelerate gives a GPU launch of the config)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    # both shared states: every later AcceleratorState() copies PartialState's fields over its own
    for shared in (PartialState._shared_state, state._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
        shared["device"] = torch.device("cpu")  # FSDP compares device_id with the parameters' device: cpu:0 != cpu
    state.fsdp_plugin = plugin


def trainable_only_hooks(accelerator) -> None:
    """Checkpoint only parameters with ``requires_grad`` (LoRA + encoder): the frozen base DiT is the user's file.
    On load, the saved names must equal the model's trainable names (else ValueError: a different run/model)."""
    from safetensors.torch import load_file

    def save_hook(models, weights, output_dir):
        for model, w in zip(models, weights):
            keep = {n for n, p in model.named_parameters() if p.requires_grad}
            for k in list(w):
                if k not in keep:
                    del w[k]

    def load_hook(models, input_dir):
        if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
            return  # those engines save and load their own (sharded) model states
        for i, model in enumerate(list(models)):
            path = Path(input_dir) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
            sd = load_file(str(path))
            keep = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
            got = {n: tuple(t.shape) for n, t in sd.items()}
            if got != keep:
                extra, missing = sorted(set(got) - set(keep))[:3], sorted(set(keep) - set(got))[:3]
                shapes = [f"{n} {got[n]} vs {keep[n]}" for n in sorted(set(got) & set(keep)) if got[n] != keep[n]][:3]
                raise ValueError(f"checkpoint {input_dir} does not fit this model (unexpected {extra}, missing "
                                 f"{missing}, other shapes {shapes}): resume with the same DiT, encoder config and "
                                 "LoRA rank")
            model.load_state_dict(sd, strict=False)
        models.clear()  # loaded here: Accelerate must not load them again

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def export_trained(accelerator, module, args, state) -> dict:
    """Write the trained LoRA (``OUT/lora_stageS.safetensors``, ComfyUI keys) and encoder (``encoder_stageS``, one
    file per part of an EncoderSet) of the prepared ``module`` into ``args.output_dir``, with the run's settings as
    metadata (``args``: :class:`training.loop.TrainArgs`; ``state``: its ``TrainState``, for the step count). Every
    process must call it (FSDP gathers the shards); only the main process writes. Returns
    ``{"lora", "encoder" | "encoder_partI": path}`` (empty without ``output_dir`` and on other processes)."""
    from .export import export_encoder, save_lora

    out = {}
    if not args.output_dir:
        return out
    full = accelerator.get_state_dict(module)  # every process takes part (FSDP gathers the shards to process 0)
    if not accelerator.is_main_process:
        return out
    inner = accelerator.unwrap_model(module)
    part = {name: {k[len(name) + 1:]: v for k, v in full.items() if k.startswith(name + ".")}
            for name in ("dm", "encoder")}
    meta = {"framememory_training": json.dumps({"stage": args.stage, "step": state.step,
                                                "args": dataclasses.asdict(args)})}
    lora_path = os.path.join(args.output_dir, f"lora_stage{args.stage}.safetensors")
    save_lora(lora_path, inner.dm, meta, state_dict=part["dm"])
    out["lora"] = lora_path
    if isinstance(inner.encoder, EncoderSet):  # one file per part, combined again by the nodes
        for i, enc in enumerate(inner.encoder.parts):
            enc_path = os.path.join(args.output_dir, f"encoder_stage{args.stage}_part{i}.safetensors")
            sd = {k[len(f"parts.{i}."):]: v for k, v in part["encoder"].items() if k.startswith(f"parts.{i}.")}
            if export_encoder(enc_path, enc, state_dict=sd):
                out[f"encoder_part{i}"] = enc_path
    elif inner.encoder is not None:
        enc_path = os.path.join(args.output_dir, f"encoder_stage{args.stage}.safetensors")
        if export_encoder(enc_path, inner.encoder, state_dict=part["encoder"]):
            out["encoder"] = enc_path
    return out
