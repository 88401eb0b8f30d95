"""A stand-in for the umt5-xxl text encoder: deterministic, prompt-dependent, no weights.

It has the two methods ComfyUI's CLIPTextEncode and our Storyboard call on a CLIP (``tokenize`` and
``encode_from_tokens_scheduled``). Each word maps to a fixed pseudo-random vector (seeded by its CRC32), so
different prompts give different conditioning ``[1, L, 4096]`` (Wan's text width). It carries no meaning.
"""
from __future__ import annotations

import zlib

import torch

TEXT_DIM = 4096


class StandInTextEncoder:
    def __init__(self, dim: int = TEXT_DIM, max_words: int = 32) -> None:
        self.dim, self.max_words = dim, max_words

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs) -> list[int]:
        words = text.lower().split()[: self.max_words] or [""]
        return [zlib.crc32(w.encode("utf-8")) for w in words]

    def encode_from_tokens_scheduled(self, tokens: list[int], **kwargs) -> list:
        rows = []
        for t in tokens:
            g = torch.Generator().manual_seed(int(t))
            rows.append(torch.randn(self.dim, generator=g))
        cond = torch.stack(rows)[None] * 0.1  # [1, L, 4096]
        return [[cond, {"pooled_output": None}]]

    def encode_from_tokens(self, tokens, return_pooled=False, **kwargs):
        cond = self.encode_from_tokens_scheduled(tokens)[0][0]
        return (cond, None) if return_pooled else cond
