"""The reference: a minimal hand-written PyTorch KD loop, what anyone would write in ~40 lines.

torchvision FashionMNIST + PIL transforms + DataLoader, teacher in eval/no_grad, L = a*CE + (1-a)*T^2*KL.
It reads the same IDX files as kdflow (the Debian package), laid out where torchvision expects them.
"""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch.utils.data import DataLoader
from torchvision.datasets import FashionMNIST

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def torchvision_root(work: Path) -> Path:
    """Unzip the Debian IDX files into work/FashionMNIST/raw/ (torchvision's layout), once."""
    raw = work / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in DEBIAN.glob("*.gz"):
        out = raw / gz.name[:-3]
        if not out.exists():
            with gzip.open(gz) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return work


def loader(work: Path, batch_size: int = 128, num_workers: int = 0, train: bool = True) -> DataLoader:
    tf = [T.RandomCrop(28, padding=2), T.RandomHorizontalFlip()] if train else []
    tf += [T.ToTensor(), T.Normalize((0.2860,), (0.3530,))]
    ds = FashionMNIST(str(torchvision_root(work)), train=train, download=False, transform=T.Compose(tf))
    return DataLoader(ds, batch_size=batch_size, shuffle=train, num_workers=num_workers, drop_last=train)


def kd_step(student, teacher, opt, x, y, temperature: float = 4.0, alpha: float = 0.1) -> float:
    with torch.no_grad():
        t_logits = teacher(x)
    s_logits = student(x)
    soft = (
        F.kl_div(F.log_softmax(s_logits / temperature, 1), F.softmax(t_logits / temperature, 1), reduction="batchmean")
        * temperature**2
    )
    loss = alpha * F.cross_entropy(s_logits, y) + (1 - alpha) * soft
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def student_step(student, opt, x, y) -> float:
    loss = F.cross_entropy(student(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def kd_epoch(student, teacher, dl: DataLoader, lr: float = 0.1) -> float:
    """One epoch of the hand-written loop; returns seconds."""
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    student.train()
    teacher.eval()
    t0 = time.perf_counter()
    for x, y in dl:
        kd_step(student, teacher, opt, x, y)
    return time.perf_counter() - t0


def teacher_epoch(model, dl: DataLoader, lr: float = 0.1) -> float:
    """One epoch of the hand-written teacher loop of BENCH.md (channels_last, fp32, CE); returns seconds."""
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    t0 = time.perf_counter()
    for x, y in dl:
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0
