"""The text Transformers' probes and the TinyBERT-style terms (#27) without data or pretrained weights: the
attention distributions a probe records are the ones the layer uses, the hidden-state probes zero padding,
the attention loss compares only text positions, token sequences are projected per token, and what fine-tuning
by layer count accepts. The pinned encoder itself is tested in test_text.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from kdflow.config import Config
from kdflow.errors import ModelError
from kdflow.infra.pretrained import top_layers_only
from kdflow.models.features import Adapter, FeatureTap
from kdflow.models.text import TextTransformer, attention_probs
from kdflow.training.losses import attention_kl_loss

pytestmark = pytest.mark.unit
L = 12


def _tokens(batch: int = 3, lengths=(12, 7, 3)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 500, (batch, L), generator=g).float()
    mask = torch.zeros(batch, L)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return torch.stack([ids * mask, mask], 1)


def test_the_attention_probe_records_the_distributions_the_layer_uses():
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    h = torch.randn(3, L, 16)
    pad = _tokens()[:, 1] < 0.5
    _, expected = attn(h, h, h, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
    assert torch.allclose(attention_probs(attn, h, pad), expected, atol=1e-6)


def test_the_probed_forward_equals_the_encoders_and_records_only_when_tapped():
    torch.manual_seed(0)
    model = TextTransformer(500, 5, L).eval()
    x = _tokens()
    ids, mask = x[:, 0].long(), x[:, 1]
    h = model.embed(ids) + model.position[:, :L]
    h = model.encoder(h, src_key_padding_mask=mask < 0.5)  # nn.TransformerEncoder, the layers unprobed
    reference = model.head(model.norm((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)))
    assert torch.allclose(model(x), reference, atol=1e-5)
    tap = FeatureTap(model, ["hidden.2", "attention.1"], "distill.features.student_module", "student")
    model(x)
    feats = tap.pop()
    assert feats["hidden.2"].shape == (3, L, 64) and feats["attention.1"].shape == (3, 4, L, L)
    assert bool((feats["hidden.2"][2, 3:] == 0).all()) and bool((feats["hidden.2"][2, :3] != 0).any())
    rows = feats["attention.1"][1].sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows)) and bool((feats["attention.1"][1, :, :, 7:] == 0).all())
    tap.remove()
    assert not model.attention[1].wanted  # untapped: the distributions are not computed


def _attention(heads: int, lengths=(12, 7, 3), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(len(lengths), heads, L, L, generator=g)
    pad = _tokens(len(lengths), lengths)[:, 1] < 0.5
    return scores.masked_fill(pad[:, None, None, :], float("-inf")).softmax(-1)


def test_the_attention_loss_is_zero_on_equal_maps_and_blind_to_padded_rows():
    teacher, student = _attention(12), _attention(4, seed=1)
    assert attention_kl_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    loss = attention_kl_loss(student, teacher)  # 4 vs 12 heads: the heads' mean
    assert loss.item() > 0.01
    padded = student.clone()
    padded[2, :, 5:] = torch.full((L,), 1.0 / L)  # rows of padded positions (example 2 has 3 tokens)
    assert attention_kl_loss(padded, teacher).item() == pytest.approx(loss.item(), rel=1e-6)
    changed = student.clone()
    changed[2, :, 1] = changed[2, :, 0]  # a text row
    assert attention_kl_loss(changed, teacher).item() != pytest.approx(loss.item(), rel=1e-6)
    same_heads = attention_kl_loss(_attention(12, seed=1), teacher)  # as many heads: per head
    averaged = attention_kl_loss(_attention(12, seed=1).mean(1, keepdim=True), teacher.mean(1, keepdim=True))
    assert same_heads.item() > averaged.item()


def test_token_sequences_are_projected_per_token_and_lengths_must_agree():
    adapter = Adapter(torch.Size([2, L, 64]), torch.Size([2, L, 384]), project=True, where="f")
    s, t = adapter(torch.zeros(3, L, 64), torch.ones(3, L, 384))
    assert s.shape == t.shape == (3, L, 384) and bool((s == 0).all())  # no bias: padding stays zero
    with pytest.raises(ModelError, match="token sequences of one length"):
        Adapter(torch.Size([2, L, 64]), torch.Size([2, 2 * L, 384]), project=True, where="f")
    with pytest.raises(ModelError, match="cannot bridge"):
        Adapter(torch.Size([2, L, 64]), torch.Size([2, 384]), project=True, where="f")


def test_fine_tuning_by_layer_count_needs_a_full_finetune_and_a_layered_model():
    with pytest.raises(ValueError, match="finetune_layers: picks the layers a full fine-tune trains"):
        Config.model_validate({"teacher": {"arch": "minilm", "finetune": "head", "finetune_layers": 2}})
    with pytest.raises(
        ValueError, match="finetune_layers: fine-tunes pretrained weights and this model starts from none"
    ):
        Config.model_validate({"student": {"arch": "text-transformer", "finetune_layers": 1}})
    with pytest.raises(ModelError, match="teacher.finetune_layers: this architecture has no layers"):
        top_layers_only(nn.Linear(2, 2), 1, "teacher.finetune_layers")

    class Layered(nn.Module):
        def blocks(self) -> list[str]:
            return ["enc.0", "enc.1", "enc.2"]

    assert top_layers_only(Layered(), 2, "f") == ("enc.1.", "enc.2.")
    assert top_layers_only(Layered(), 0, "f") == () and top_layers_only(Layered(), None, "f") == ("",)
    with pytest.raises(ModelError, match="4 layers asked for, the model has 3"):
        top_layers_only(Layered(), 4, "f")
