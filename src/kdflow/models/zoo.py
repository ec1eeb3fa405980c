"""Model zoo by name, plus size and compute reports.

Names: ``resnet20``, ``cnn-small``, ``mlp`` (as ../shared/BENCH.md defines them), ``mobilenet-tiny``
(a depthwise-separable student), ``cnn-wide`` (a fast mid-size teacher), the parametric family
``cnn-<width>x<depth>`` (:class:`ParamCNN`), any torchvision classification model as ``tv:<name>`` or by
its bare name (first conv and classifier adapted), any timm model as ``timm:<name>``, and the user's own
module as ``py:package.module:factory`` (called with ``num_classes`` and ``in_channels``). Pretrained
weights are loaded into these by :mod:`kdflow.infra.pretrained`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdflow.errors import ModelError


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet: 3 stages x 3 BasicBlocks, widths 16/32/64."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for i, (w, s) in enumerate([(16, 1), (32, 2), (64, 2)]):
            blocks = [BasicBlock(cin, w, s), BasicBlock(w, w, 1), BasicBlock(w, w, 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))  # type: ignore[operator]  # nn.Sequential of blocks
        return self.fc(torch.flatten(self.pool(x), 1))


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2))


ImageSize = int | tuple[int, int]  # a square's side, or (height, width)


def _hw(image_size: ImageSize) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


class SmallCNN(nn.Module):
    """conv(1->w1)-BN-ReLU-pool, conv(w1->w2)-BN-ReLU-pool, linear. w=(8,16) is BENCH.md's cnn-small."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, int] = (8, 16), image_size: ImageSize = 28
    ):
        super().__init__()
        self.block1 = _conv_bn(in_channels, widths[0])
        self.block2 = _conv_bn(widths[0], widths[1])
        h, w = _hw(image_size)
        self.fc = nn.Linear(widths[1] * (h // 4) * (w // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.block2(self.block1(x)), 1))


class ParamCNN(nn.Module):
    """``cnn-<width>x<depth>``: the parametric student family that makes the size axis continuous.

    ceil(depth/2) conv-BN-ReLU layers of ``width`` channels at full resolution, max-pool, floor(depth/2)
    layers of 2*width at half resolution, max-pool, linear classifier. ``cnn-8x2`` has cnn-small's shape.
    """

    def __init__(self, width: int, depth: int, num_classes: int = 10, in_channels: int = 1, image_size: ImageSize = 28):
        super().__init__()
        if width < 1 or depth < 2:
            raise ModelError("student.arch", f"cnn-{width}x{depth} is too small", "use width >= 1 and depth >= 2")
        layers: list[nn.Module] = []
        cin = in_channels
        for stage, n in enumerate((depth - depth // 2, depth // 2)):
            cout = width * (2**stage)
            for _ in range(n):
                layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        h, w = _hw(image_size)
        self.fc = nn.Linear(cin * (h // 4) * (w // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


PARAM_CNN = re.compile(r"^cnn-(\d+)x(\d+)$")


def param_cnn_name(width: int, depth: int) -> str:
    return f"cnn-{width}x{depth}"


class MLP(nn.Module):
    """784-256-ReLU-128-ReLU-10 (``in_features`` inputs, by default the image's pixels)."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, image_size: ImageSize = 28, in_features: int | None = None
    ):
        super().__init__()
        h, w = _hw(image_size)
        self.fc1 = nn.Linear(in_features or in_channels * h * w, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _dw_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU6(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class MobileNetTiny(nn.Module):
    """MobileNet-v1-style student: a stem conv then depthwise-separable blocks."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True)
        )
        self.features = nn.Sequential(_dw_separable(16, 32, 2), _dw_separable(32, 64, 2), _dw_separable(64, 64, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(self.stem(x))), 1))


def _torchvision(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision.models as tvm

    try:
        model = tvm.get_model(name, weights=None, num_classes=num_classes)
    except (ValueError, KeyError):
        raise ModelError(
            "arch", f"unknown model '{name}'", f"use one of {', '.join(ZOO)} or a torchvision name"
        ) from None
    if in_channels != 3:
        _adapt_first_conv(model, in_channels)
    return model


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels == 3:
            geometry: dict[str, Any] = {
                "kernel_size": mod.kernel_size,
                "stride": mod.stride,
                "padding": mod.padding,
                "dilation": mod.dilation,
            }
            new = nn.Conv2d(
                in_channels,
                mod.out_channels,
                groups=mod.groups if mod.groups == 1 else in_channels,
                bias=mod.bias is not None,
                **geometry,
            )
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return


ZOO: dict[str, Callable[..., nn.Module]] = {
    "resnet20": lambda nc, ic, size: ResNet20(nc, ic),
    "cnn-small": lambda nc, ic, size: SmallCNN(nc, ic, (8, 16), size),
    "cnn-wide": lambda nc, ic, size: SmallCNN(nc, ic, (32, 64), size),
    "mlp": lambda nc, ic, size: MLP(nc, ic, size),
    "mobilenet-tiny": lambda nc, ic, size: MobileNetTiny(nc, ic),
}


def _timm(name: str, num_classes: int, in_channels: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ModelError("arch", f"'timm:{name}' needs timm", "pip install timm") from None
    if not timm.is_model(name):
        raise ModelError("arch", f"timm has no model '{name}'", "see timm.list_models(), e.g. timm:resnet18") from None
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def _user_module(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    """``package.module:factory``: the user's own model, imported from their code."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ModelError(
            "arch",
            f"cannot import 'py:{spec}' ({type(e).__name__}: {str(e)[:80]})",
            "name an importable module and its factory, e.g. py:mypkg.models:build (on PYTHONPATH)",
        ) from None
    model = factory(num_classes=num_classes, in_channels=in_channels)
    if not isinstance(model, nn.Module):
        raise ModelError(
            "arch", f"py:{spec} returned {type(model).__name__}, not a torch nn.Module", "return the model"
        )
    return model


def build_model(name: str, num_classes: int = 10, in_channels: int = 1, image_size: ImageSize = 28) -> nn.Module:
    """Build a freshly initialised model by name (seed torch before calling for determinism)."""
    if name.startswith("timm:"):
        return _timm(name[5:], num_classes, in_channels)
    if name.startswith("py:"):
        return _user_module(name[3:], num_classes, in_channels)
    if name.startswith("hf:"):
        from kdflow.models.hf import HFImageClassifier

        return HFImageClassifier(name[3:], num_classes, in_channels)
    if name == "onnx":  # a teacher given as an ONNX file; its bytes come with the checkpoint's state dict
        from kdflow.models.onnx_teacher import OnnxTeacher

        return OnnxTeacher(num_classes, in_channels)
    if name in ZOO:
        return ZOO[name](num_classes, in_channels, image_size)
    family = PARAM_CNN.match(name)
    if family:
        return ParamCNN(int(family[1]), int(family[2]), num_classes, in_channels, image_size)
    tv_name = name[3:] if name.startswith("tv:") else name
    return _torchvision(tv_name, num_classes, in_channels)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_dict_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates for one sample (FLOPs / 2 from torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    return int(fc.get_total_flops() // 2)


def model_report(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    return {
        "parameters": num_parameters(model),
        "size_bytes": state_dict_bytes(model),
        "macs": count_macs(model, input_shape),
    }
