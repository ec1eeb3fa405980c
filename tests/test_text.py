"""Text distillation on the packaged data (#27): WordNet noun glosses (Debian wordnet-base) -> supersense, the
frozen MiniLM encoder from the hash-pinned wheel as the teacher's view, a text-bag student on WordPiece ids
with the transfer set, its ONNX export, and `kdflow predict` on raw text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import experiment_config

from kdflow import steps
from kdflow.data import prepared as data
from kdflow.data.text import LEXNAMES, find_wordnet, keep_classes, read_glosses, tokenize
from kdflow.errors import ConfigError, ModelError
from kdflow.evaluation.metrics import predict_logits
from kdflow.infra.checkpoints import load_model

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
DATASET = "wordnet-supersense"
TOP_TWO = ("core.bert.encoder.layer.4.", "core.bert.encoder.layer.5.")


def _config(tmp: Path, *extra: str):
    return experiment_config("wordnet_supersense.yaml", tmp, *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("text")
    cfg = _config(work)
    steps.prep(cfg, work / "data")
    steps.train(cfg, "teacher", work / "data", work / "teacher")
    steps.train(cfg, "scratch", work / "data", work / "scratch")
    steps.distill(cfg, work / "data", work / "teacher" / "model.pt", work / "distill")
    return work


def test_prep_reads_the_glosses_into_tokens_and_the_encoders_view(trained):
    manifest = data.load_manifest(trained / "data")
    texts, labels = read_glosses(find_wordnet(None))
    assert len(texts) == 82115 and manifest["class_names"] == [LEXNAMES[c] for c in keep_classes(labels, 10)]
    assert manifest["inputs"]["tokens"] == {"columns": [0, 64], "shape": [2, 32], "vocab_size": 30522}
    assert manifest["inputs"]["view:minilm"] == {"columns": [64, 448], "shape": [384]}
    assert manifest["mean"][:64] == [0.0] * 64 and manifest["std"][:64] == [1.0] * 64  # ids are not scaled
    counts = manifest["counts"]
    assert counts["train"] == 100 and counts["unlabeled"] == 300 and counts["test"] == 200
    pool = data.load_split(trained / "data", "unlabeled")
    assert bool((pool.y == -1).all())
    test = data.load_split(trained / "data", "test")
    norms = test.x[:, 64:].norm(dim=1)
    assert bool((norms > 0.1).all())  # every kept row has its embedding


def test_prep_is_deterministic_with_or_without_the_kept_embeddings(trained, tmp_path):
    first = data.load_manifest(trained / "data")["digest"]
    assert steps.prep(_config(trained), tmp_path / "kept")["digest"] == first  # the same state: read back
    assert steps.prep(_config(tmp_path), tmp_path / "fresh")["digest"] == first  # a fresh state: computed again
    assert len(list((trained / "state").rglob("minilm-*.pt"))) == 1


def test_a_text_model_reads_token_ids_only(trained, tmp_path):
    with pytest.raises(ModelError, match="text models read one input of token ids"):
        steps.train(_config(tmp_path, "student.inputs=[view:minilm]"), "scratch", trained / "data", tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before the step claimed its --out
    student, meta = load_model(trained / "distill" / "model.pt")
    assert meta["inputs"]["names"] == ["tokens"] and meta["arch"] == "text-bag"
    teacher, meta = load_model(trained / "teacher" / "model.pt")
    assert meta["inputs"]["names"] == ["view:minilm"]


@pytest.mark.parametrize("arch", ["text-bag", "text-transformer"])
def test_the_text_student_exports_and_predict_serves_raw_text(trained, tmp_path, capsys, arch):
    from kdflow.release.predict import predict_cli

    student_dir = trained / "distill"
    if arch != "text-bag":
        student_dir = tmp_path / "student"
        steps.train(_config(tmp_path, f"student.arch={arch}"), "scratch", trained / "data", student_dir)
    cfg = _config(tmp_path, "gate.min_accuracy=0", "gate.min_retention=0", "gate.max_latency_p95_ms=1000")
    report = steps.export_student(cfg, trained / "data", student_dir, None, tmp_path / "export")
    assert report["forms"]["onnx"]["max_abs_diff"] < 1e-3  # fp32 parity (int8 is judged by the gate)
    int8 = report["forms"]["onnx_int8"]["manifest"]["quantization"]  # attention graphs: int8 weights, dynamic
    assert int8 == ("dynamic (attention graph)" if arch == "text-transformer" else "static-qdq-per-channel")
    manifest = json.loads((tmp_path / "export" / "student.onnx.manifest.json").read_text())
    assert manifest["input_shape"] == ["batch", 2, 32] and manifest["text"]["tokenizer"] == "tokenizer.json"
    prepared = data.load_prepared(trained / "data")
    texts, _ = read_glosses(find_wordnet(None))
    wanted = {bytes(r[:64].numpy().astype(np.float32).tobytes()): i for i, r in enumerate(prepared.test.x[:12])}
    by_row = {}
    for text, row in zip(texts, tokenize(texts, 32).flatten(1), strict=True):
        key = bytes(row.numpy().astype(np.float32).tobytes())
        if key in wanted and key not in by_row:
            by_row[key] = text
    order = sorted(by_row, key=wanted.get)  # raw glosses of test rows, as a user would send them
    (tmp_path / "texts.txt").write_text("\n".join(by_row[k] for k in order) + "\n")
    student, _ = load_model(student_dir / "model.pt")
    idx = torch.tensor([wanted[k] for k in order])
    expected = predict_logits(student, data.Split(prepared.test.x[idx], prepared.test.y[idx]), prepared.normalizer())
    capsys.readouterr()
    predict_cli(str(tmp_path / "export" / "student.onnx"), [str(tmp_path / "texts.txt")], as_json=True)
    got = [json.loads(line)["index"] for line in capsys.readouterr().out.splitlines()]
    assert len(got) == len(order) >= 10 and got == expected.argmax(1).tolist()


def test_the_minilm_architecture_is_the_pinned_encoders_and_pools_as_prep_does(trained):
    from kdflow.data.text import encoder_dir
    from kdflow.infra.pretrained import start_from
    from kdflow.models.inputs import build_for_data
    from kdflow.models.text import MINILM

    pinned = json.loads((encoder_dir() / "config.json").read_text())
    assert {k: pinned[k] for k in MINILM} == MINILM
    prepared = data.load_prepared(trained / "data")
    layout = prepared.inputs
    model = build_for_data("minilm", 10, prepared.input_shape, layout, ["tokens"], "teacher.inputs", DATASET)
    done = start_from(model, str(encoder_dir()), "full", 0.01, 10, "teacher.weights", top_layers=2)
    assert done["tensors_loaded"] == 101 and done["new_head"] == ["core.head.bias", "core.head.weight"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("core.head.", *TOP_TWO))}
    bert = model.core.bert.eval()  # type: ignore[union-attr]
    rows = prepared.test.x[:16]
    tokens = rows[:, :64].reshape(16, 2, 32)
    with torch.no_grad():
        hidden = bert(input_ids=tokens[:, 0].long(), attention_mask=tokens[:, 1].long()).last_hidden_state
    m = tokens[:, 1].unsqueeze(-1)
    assert torch.allclose((hidden * m).sum(1) / m.sum(1), rows[:, 64:448], atol=1e-4)  # prep's view:minilm


def test_a_fine_tuned_minilm_teacher_teaches_a_tiny_transformer_its_layers(trained, tmp_path):
    """configs/wordnet_minilm.yaml at smoke: the top layer fine-tuned (the rest equal to the pinned weights),
    then the student's hidden states and attention distilled from the teacher's, live."""
    from safetensors.torch import load_file

    from kdflow.data.text import encoder_dir

    cfg = experiment_config("wordnet_minilm.yaml", tmp_path)
    taught = steps.train(cfg, "teacher", trained / "data", tmp_path / "teacher")
    assert taught["metrics"]["parameters"] > 22_000_000
    teacher, meta = load_model(tmp_path / "teacher" / "model.pt")
    assert meta["arch"] == "minilm" and meta["inputs"]["names"] == ["tokens"]
    pinned = load_file(str(encoder_dir() / "model.safetensors"))
    state = teacher.state_dict()
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.4.output.dense.weight"):
        assert torch.equal(state[f"core.bert.{key}"], pinned[key])  # frozen below the top layer
    assert not torch.equal(
        state["core.bert.encoder.layer.5.output.dense.weight"], pinned["encoder.layer.5.output.dense.weight"]
    )
    distilled = steps.distill(cfg, trained / "data", tmp_path / "teacher" / "model.pt", tmp_path / "student")
    assert distilled["arch"] == "text-transformer"
    history = json.loads((tmp_path / "student" / "history.json").read_text())
    assert all(0 < e["feature"] < 1e3 for e in history) and len(history) == cfg.epochs_for("student")
    with pytest.raises(ConfigError, match="distill: a teacher cache holds logits only"):  # no hidden states
        experiment_config("wordnet_minilm.yaml", tmp_path, "distill.cache=true")
