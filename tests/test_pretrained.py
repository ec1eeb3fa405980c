"""Pretrained teachers and students (#26): torchvision-format, timm and wrapped weights files, a torchvision
weights name in the hub cache, the user's own module (py:), new head and grey first conv, fine-tuning.

Every weights file is saved by the test from a freshly built model; nothing is downloaded.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torchvision.models as tvm
from helpers import tiny_config

from kdflow import steps
from kdflow.errors import CheckpointError, ModelError
from kdflow.infra import checkpoints, pretrained
from kdflow.models.zoo import build_model


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    """A torchvision mobilenet_v3_small state dict with ImageNet's shape (1,000 classes, RGB)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("w") / "mobilenet_v3_small-imagenet.pth"
    torch.save(tvm.mobilenet_v3_small(num_classes=1000).state_dict(), path)
    return path


@pytest.mark.unit
def test_torchvision_weights_get_a_new_head_and_a_grey_first_conv(imagenet_file):
    source = torch.load(imagenet_file, weights_only=True)
    model = build_model("tv:mobilenet_v3_small", num_classes=10, in_channels=1)
    done = pretrained.start_from(model, str(imagenet_file), "full", 0.1, 10, "teacher.weights")
    assert done["new_head"] == ["classifier.3.bias", "classifier.3.weight"]
    assert done["first_conv_summed_to_grey"] == ["features.0.0.weight"]
    state = model.state_dict()
    assert torch.equal(state["features.0.0.weight"], source["features.0.0.weight"].sum(1, keepdim=True))
    assert torch.equal(state["features.3.block.0.0.weight"], source["features.3.block.0.0.weight"])
    assert state["classifier.3.weight"].shape == (10, 1024)
    # a grey image is answered as the RGB network answered the same image in colour (up to the new head)
    model.eval()
    rgb = build_model("tv:mobilenet_v3_small", 1000, 3).eval()
    rgb.load_state_dict(source)
    grey = torch.rand(2, 1, 64, 64)
    assert torch.allclose(model.features(grey), rgb.features(grey.expand(-1, 3, -1, -1)), atol=1e-4)


@pytest.mark.unit
def test_wrapped_and_ddp_saved_weights_load_alike(imagenet_file, tmp_path):
    source = torch.load(imagenet_file, weights_only=True)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in source.items()}}, wrapped)
    a, b = build_model("tv:mobilenet_v3_small", 10, 3), build_model("tv:mobilenet_v3_small", 10, 3)
    pretrained.start_from(a, str(imagenet_file), "full", 0.1, 10, "w")
    pretrained.start_from(b, str(wrapped), "full", 0.1, 10, "w")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith("classifier.3"))


@pytest.mark.unit
def test_fine_tuning_head_freezes_the_backbone_and_full_scales_its_lr(imagenet_file):
    head_only = build_model("tv:mobilenet_v3_small", 10, 3)
    pretrained.start_from(head_only, str(imagenet_file), "head", 0.1, 10, "w")
    assert {n for n, p in head_only.named_parameters() if p.requires_grad} == {
        "classifier.3.weight",
        "classifier.3.bias",
    }
    full = build_model("tv:mobilenet_v3_small", 10, 3)
    pretrained.start_from(full, str(imagenet_file), "full", 0.25, 10, "w")
    groups = pretrained.param_groups(list(full.parameters()), 0.1)
    assert [g["lr"] for g in groups] == [0.1, pytest.approx(0.025)] and len(groups[0]["params"]) == 2


@pytest.mark.unit
def test_weights_of_another_architecture_or_no_weights_are_one_line(imagenet_file, tmp_path):
    model = build_model("resnet20", 10, 1)
    with pytest.raises(ModelError, match=r"^teacher.weights: the weights are not for this architecture \(\d+ tensors"):
        pretrained.start_from(model, str(imagenet_file), "full", 0.1, 10, "teacher.weights")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"^teacher.weights: .*text.pt"):
        pretrained.start_from(model, str(tmp_path / "text.pt"), "full", 0.1, 10, "teacher.weights")
    torch.save({"lr": 0.1}, tmp_path / "no-tensors.pt")
    with pytest.raises(CheckpointError, match="holds no state dict of tensors"):
        pretrained.start_from(model, str(tmp_path / "no-tensors.pt"), "full", 0.1, 10, "teacher.weights")
    with pytest.raises(CheckpointError, match="neither a file nor a torchvision weights name"):
        pretrained.weights_file(str(tmp_path / "absent.pth"), "teacher.weights")


@pytest.mark.unit
def test_a_torchvision_weights_name_is_read_from_the_hub_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # get_dir() follows TORCH_HOME
    with pytest.raises(
        CheckpointError, match=r"^student.weights: .* not in the torch hub cache .*fix: put the file from https://"
    ):
        pretrained.weights_file("MobileNet_V3_Small_Weights.IMAGENET1K_V1", "student.weights")
    url = tvm.get_weight("MobileNet_V3_Small_Weights.IMAGENET1K_V1").url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"a file that is not the published one")
    with pytest.raises(CheckpointError, match="does not match the sha256 its name carries"):
        pretrained.weights_file("MobileNet_V3_Small_Weights.IMAGENET1K_V1", "student.weights")
    with pytest.raises(CheckpointError, match="is not a torchvision weights name"):
        pretrained.weights_file("NoSuch_Weights.V1", "student.weights")


@pytest.mark.unit
def test_a_timm_checkpoint_loads_into_timm_arch(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    path = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=1000).state_dict(), path)
    model = build_model("timm:test_resnet", 7, 1)
    done = pretrained.start_from(model, str(path), "full", 0.1, 7, "teacher.weights")
    assert done["new_head"] == ["fc.bias", "fc.weight"] and len(done["first_conv_summed_to_grey"]) == 1
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 7)
    with pytest.raises(ModelError, match=r"^arch: timm has no model 'no_such_net'"):
        build_model("timm:no_such_net", 7, 1)


USER_MODULE = """
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


def build(num_classes, in_channels):
    return Net(num_classes, in_channels)


def not_a_model(num_classes, in_channels):
    return "a string"
"""


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    pkg = tmp_path / "usercode" / "mynets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "small.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "usercode"))
    return "py:mynets.small:build"


@pytest.mark.unit
def test_the_users_own_module_builds_saves_and_loads(user_package, tmp_path):
    torch.manual_seed(0)
    model = build_model(user_package, 4, 3)
    checkpoints.save_model(model, user_package, 4, 3, 16, tmp_path / "model.pt")
    loaded, meta = checkpoints.load_model(tmp_path / "model.pt")
    assert meta["arch"] == user_package
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    with pytest.raises(ModelError, match=r"^arch: cannot import 'py:mynets.nowhere:build' \(ModuleNotFoundError"):
        build_model("py:mynets.nowhere:build", 4, 3)
    with pytest.raises(ModelError, match=r"^arch: py:mynets.small:not_a_model returned str"):
        build_model("py:mynets.small:not_a_model", 4, 3)


@pytest.mark.integration
def test_the_teacher_step_fine_tunes_a_pretrained_users_module(user_package, tiny_data, tmp_path):
    """A teacher pretrained elsewhere (5 classes, RGB) adapted to Fashion-MNIST (10 classes, grey) by the
    teacher step: head only, so the backbone's weights are exactly the pretrained ones after training."""
    torch.manual_seed(3)
    source = build_model(user_package, 5, 3)
    weights = tmp_path / "pretrained.pt"
    torch.save(source.state_dict(), weights)
    cfg = tiny_config(tmp_path)
    cfg.teacher.arch, cfg.teacher.weights, cfg.teacher.finetune, cfg.teacher.epochs = (
        user_package,
        str(weights),
        "head",
        1,
    )
    result = steps.train(cfg, "teacher", tiny_data, tmp_path / "teacher")
    assert len(result["fingerprint"]["teacher.weights_sha256"]) == 64 and "teacher.weights" not in result["fingerprint"]
    assert result["fingerprint"]["teacher.finetune"] == "head"
    trained, meta = checkpoints.load_model(tmp_path / "teacher" / "model.pt")
    assert meta["arch"] == user_package and meta["num_classes"] == 10
    assert torch.equal(trained.body[0].weight, source.body[0].weight.sum(1, keepdim=True))  # frozen, summed to grey
    assert trained.head.weight.shape == (10, 32)
    metrics = json.loads((tmp_path / "teacher" / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.15  # above chance (0.10): the new head learned on the frozen features


@pytest.fixture
def hf_dir(tmp_path):
    """A tiny Hugging Face ResNet image classifier (5 classes, RGB), written with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(2)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
    transformers.ResNetForImageClassification(config).save_pretrained(str(tmp_path / "hf-resnet"))
    return tmp_path / "hf-resnet"


@pytest.mark.unit
def test_a_hugging_face_directory_is_a_model_with_its_own_weights(hf_dir):
    from safetensors.torch import load_file

    source = load_file(str(hf_dir / "model.safetensors"))
    model = build_model(f"hf:{hf_dir}", 10, 1)
    done = pretrained.start_from(model, pretrained.default_weights(f"hf:{hf_dir}", None), "full", 0.1, 10, "w")
    assert done["new_head"] == ["net.classifier.1.bias", "net.classifier.1.weight"]
    assert done["first_conv_summed_to_grey"] == ["net.resnet.embedder.embedder.convolution.weight"]
    conv = "resnet.embedder.embedder.convolution.weight"
    assert torch.equal(model.state_dict()[f"net.{conv}"], source[conv].sum(1, keepdim=True))
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)  # plain logits, like every zoo model
    with pytest.raises(ModelError, match=r"^arch: .* holds no config.json"):
        build_model(f"hf:{hf_dir.parent / 'nowhere'}", 10, 1)


@pytest.mark.integration
def test_a_hugging_face_teacher_is_fine_tuned_and_distilled(hf_dir, tiny_data, tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.teacher.arch, cfg.teacher.epochs = f"hf:{hf_dir}", 1
    teacher = steps.train(cfg, "teacher", tiny_data, tmp_path / "teacher")
    assert len(teacher["fingerprint"]["teacher.weights_sha256"]) == 64  # started from the directory's weights
    loaded, meta = checkpoints.load_model(tmp_path / "teacher" / "model.pt")
    assert meta["arch"] == f"hf:{hf_dir}" and loaded(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    student = steps.distill(cfg, tiny_data, tmp_path / "teacher" / "model.pt", tmp_path / "student")
    assert student is not None and student["lineage"]["kdflow.teacher_arch"] == f"hf:{hf_dir}"
