"""Pure-torch core of ComfyUI-FrameMemory (no ComfyUI imports).

- :mod:`.config`     frozen :class:`EncoderConfig` (rate, widths), JSON round trip.
- :mod:`.grid`       token-grid arithmetic: tokens per segment / per second, RoPE positions of memory tokens.
- :mod:`.encoder`    the history encoder phi(H) of arXiv 2512.23851 (HR branch weights + LR branch pixel prep).
- :mod:`.history`    :class:`HistoryBuffer`: latents of everything generated so far, cached memory tokens.
- :mod:`.storyboard` shots, timestamped prompts and segment arithmetic (frames <-> latent frames).
- :mod:`.io`         safetensors save/load with the config in the metadata.
"""
