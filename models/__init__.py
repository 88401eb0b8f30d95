"""Adapters that put memory tokens into ComfyUI's diffusion models (the only ComfyUI-aware code besides nodes/)."""
