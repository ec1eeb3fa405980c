"""Export: parity, int8 accuracy, manifests, predict on real Fashion-MNIST PNGs, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_config
from PIL import Image

from kdflow.cli import main
from kdflow.data import prepared as data
from kdflow.errors import ExportError
from kdflow.infra import checkpoints
from kdflow.models import zoo as models
from kdflow.release.export import calibration_batches, export_all
from kdflow.training.objective import SupervisedObjective
from kdflow.training.trainer import fit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_data):
    tmp = tmp_path_factory.mktemp("export")
    cfg = tiny_config(tmp, student={"epochs": 2}, export={"calibration_samples": 256, "int8_min_agreement": 0.95})
    d = data.load_prepared(tiny_data)
    torch.manual_seed(0)
    model = models.build_model("cnn-small")
    fit(model, SupervisedObjective(), d, cfg.train, epochs=2, lr=0.05, out_dir=tmp / "fit")
    checkpoints.save_model(model, "cnn-small", 10, 1, 28, tmp / "student" / "model.pt")
    result = export_all(model, d, cfg.export, cfg.evaluate, tmp / "out", source_model="test")
    return {"tmp": tmp, "result": result, "data": d, "model": model, "cfg": cfg}


def test_fp32_parity_and_int8_accuracy(exported):
    r = exported["result"]
    assert r["parity_ok"], r["parity_problems"]
    for form in ("onnx", "torchscript"):
        assert r["forms"][form]["max_abs_diff"] < 1e-3
        assert r["forms"][form]["top1_agreement"] == 1.0
        assert r["forms"][form]["accuracy"] == pytest.approx(r["pytorch_accuracy"])
    q = r["forms"]["onnx_int8"]
    assert q["top1_agreement"] > 0.95
    assert abs(q["accuracy"] - r["pytorch_accuracy"]) < 0.02
    assert q["size_bytes"] < r["forms"]["onnx"]["size_bytes"]
    assert q["manifest"]["quantization"] == "static-qdq-per-channel"


def test_manifests(exported):
    from kdflow.infra.io import sha256_file

    out = exported["tmp"] / "out"
    for f in ("student.onnx", "student.int8.onnx", "student.torchscript.pt"):
        m = json.loads((out / f"{f}.manifest.json").read_text())
        assert m["sha256"] == sha256_file(out / f)
        assert m["input_shape"] == ["batch", 1, 28, 28]
        assert m["class_names"][0] == "T-shirt/top" and len(m["class_names"]) == 10
        assert m["normalization"]["mean"] == [pytest.approx(0.2860)]
        assert m["source_model"] == "test"
    assert json.loads((out / "student.onnx.manifest.json").read_text())["opset"] == 17


def test_parity_failure_is_reported(exported):
    cfg = exported["cfg"].model_copy(deep=True)
    cfg.export.parity_atol = 1e-12
    cfg.export.formats = ["onnx"]
    r = export_all(exported["model"], exported["data"], cfg.export, cfg.evaluate, exported["tmp"] / "strict", "t")
    assert r["forms"]["onnx"]["max_abs_diff"] > cfg.export.parity_atol  # onnxruntime is never bit-exact here
    assert not r["parity_ok"] and "max |logit diff|" in r["parity_problems"][0]


def test_empty_calibration_set(exported):
    with pytest.raises(ExportError, match="calibration"):
        calibration_batches(exported["data"], 0, 0)


def _pngs(d, tmp, n=4):
    paths = []
    for i in range(n):
        p = tmp / f"img{i}.png"
        Image.fromarray(d.test.x[i, 0].numpy()).save(p)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("fname", ["student.onnx", "student.int8.onnx", "student.torchscript.pt"])
def test_predict_on_real_pngs(exported, fname, capsys):
    d, tmp = exported["data"], exported["tmp"]
    paths = _pngs(d, tmp)
    assert main(["predict", "--model", str(tmp / "out" / fname), "--json", *paths]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with torch.no_grad():
        x = data.Normalizer(d.mean, d.std)(d.test.x[:4])
        want = exported["model"].eval()(x).argmax(1).tolist()
    got = [r["index"] for r in rows]
    agree = np.mean([a == b for a, b in zip(got, want, strict=True)])
    assert agree >= (0.75 if "int8" in fname else 1.0)
    assert all(0 < r["probability"] <= 1 for r in rows)
    assert rows[0]["class"] in d.class_names


def test_predict_bad_inputs(exported, tmp_path, capsys):
    onnx_path = str(exported["tmp"] / "out" / "student.onnx")
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(big)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(rgb)
    corrupt = tmp_path / "bad.onnx"
    corrupt.write_bytes(b"\x08\x01garbage")
    (tmp_path / "bad.onnx.manifest.json").write_text(
        (exported["tmp"] / "out" / "student.onnx.manifest.json").read_text()
    )
    good = _pngs(exported["data"], tmp_path, 1)
    for argv, needle in [([onnx_path, str(big)], "resize to 28x28"), ([str(corrupt), *good], "not a valid ONNX model")]:
        assert main(["predict", "--model", argv[0], *argv[1:]]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("kdflow: error:") and needle in err and "\n" not in err
    # a colour image for a greyscale model is converted by its mode (as PIL's L), not refused
    grey = tmp_path / "grey.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(grey)
    assert main(["predict", "--model", onnx_path, str(rgb), str(grey), "--json"]) == 0
    rgb_row, grey_row = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines())
    assert (rgb_row["class"], rgb_row["probability"]) == (grey_row["class"], grey_row["probability"])


class _FFTNet(torch.nn.Module):
    """An op (aten::fft_fft2) the ONNX exporter cannot express at opset 17."""

    def forward(self, x):
        return torch.fft.fft2(x).abs().flatten(1)[:, :10]


def test_unexportable_op_is_a_clear_error(tmp_path):
    from kdflow.release.export import export_onnx

    with pytest.raises(ExportError, match=r"export\.opset: the model cannot be exported at opset 17"):
        export_onnx(_FFTNet(), (1, 28, 28), tmp_path / "fft.onnx", 17)
    assert not (tmp_path / "fft.onnx").exists()
