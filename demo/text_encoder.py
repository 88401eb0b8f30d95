"""A stand-in for the umt5-xxl text encoder: deterministic, prompt-dependent, no weights.

It has the two methods ComfyUI's CLIPTextEncode and our Storyboard call on a CLIP (``tokenize`` and
``encode_from_tokens_scheduled``). Each word maps to a fixed pseudo-random vector (seeded by its CRC32), so
different prompts give different conditioning ``[1, L, 4096]`` (Wan's text width). It carries no meaning.
With ``pooled_dim`` (768 for HunyuanVideo's CLIP-L) it also gives a pooled vector ``[1, pooled_dim]`` (the mean of
the words' vectors, seeded apart from the sequence), which HunyuanVideo needs as ``y``; without it (the default,
as for Wan's umt5-xxl) ``pooled_output`` is None.
"""
from __future__ import annotations

import zlib

import torch

TEXT_DIM = 4096


class StandInTextEncoder:
    def __init__(self, dim: int = TEXT_DIM, max_words: int = 32, pooled_dim: int | None = None) -> None:
        self.dim, self.max_words, self.pooled_dim = dim, max_words, pooled_dim

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs) -> list[int]:
        words = text.lower().split()[: self.max_words] or [""]
        return [zlib.crc32(w.encode("utf-8")) for w in words]

    def encode_from_tokens_scheduled(self, tokens: list[int], **kwargs) -> list:
        rows = []
        for t in tokens:
            g = torch.Generator().manual_seed(int(t))
            rows.append(torch.randn(self.dim, generator=g))
        cond = torch.stack(rows)[None] * 0.1  # [1, L, 4096]
        return [[cond, {"pooled_output": self._pooled(tokens)}]]

    def _pooled(self, tokens: list[int]) -> torch.Tensor | None:
        if not self.pooled_dim:
            return None
        rows = [torch.randn(self.pooled_dim, generator=torch.Generator().manual_seed(int(t) ^ 0x5EED)) for t in tokens]
        return torch.stack(rows).mean(0, keepdim=True)  # [1, pooled_dim]

    def encode_from_tokens(self, tokens, return_pooled=False, **kwargs):
        cond, extra = self.encode_from_tokens_scheduled(tokens)[0]
        return (cond, extra["pooled_output"]) if return_pooled else cond
