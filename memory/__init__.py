"""Pure-torch core of ComfyUI-FrameMemory (no ComfyUI imports).

- :mod:`.config`     frozen :class:`EncoderConfig` (rate, widths), JSON round trip.
- :mod:`.grid`       token-grid arithmetic: tokens per segment / per second, RoPE positions of memory tokens.
- :mod:`.encoder`    the history encoder phi(H) of arXiv 2512.23851, Fig. 2 whole (LR clip, HR branch, sum).
- :mod:`.designs`    the memory designs, one module each (Frame Preservation, PackForcing, VideoSSM, sliding window,
                     off), looked up by memory mode name; each builds the context a DiT block sees.
- :mod:`.history`    :class:`HistoryBuffer`: the latent stream of everything generated so far, LR latents, tokens.
- :mod:`.storyboard` shots, timestamped prompts, segment arithmetic of one continuous stream, seam ratios.
- :mod:`.frames`     the one resize/crop and float->uint8 conversion (nodes and training data).
- :mod:`.io`         atomic safetensors writing; encoder files with the config in the metadata.
"""
