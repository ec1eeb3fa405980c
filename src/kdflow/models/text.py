"""Text students over WordPiece ids (the named input ``tokens``: ids and attention mask, 2 x L floats).

- ``text-bag``: token embeddings, masked mean pooling, an MLP (fastText-like; ~2M parameters at 30,522 x 64).
- ``text-transformer``: token + position embeddings, 2 pre-norm Transformer encoder layers (4 heads), masked
  mean pooling, the head: attention maps and hidden states for feature losses (``core.encoder.layers.1``).
Both read ids as floats (exact below 2^24) and cast them, so they export to ONNX with one float input.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class TextBag(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, dim: int = 64, hidden: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0].long(), x[:, 1].float()
        return self.head(torch.relu(self.fc1(_pool(self.embed(ids), mask))))


class TextTransformer(nn.Module):
    def __init__(
        self, vocab_size: int, num_classes: int, max_tokens: int, dim: int = 64, layers: int = 2, heads: int = 4
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.zeros(1, max_tokens, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0].long(), x[:, 1].float()
        h = self.embed(ids) + self.position[:, : ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=mask < 0.5)
        return self.head(self.norm(_pool(h, mask)))


TEXT_ARCHS = ("text-bag", "text-transformer")


def build_text(arch: str, num_classes: int, shape: list[int], vocab_size: int) -> nn.Module:
    if arch == "text-bag":
        return TextBag(vocab_size, num_classes)
    return TextTransformer(vocab_size, num_classes, int(shape[1]))
