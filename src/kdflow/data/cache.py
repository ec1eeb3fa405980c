"""Offline KD: a teacher-output cache that stays correct under augmentation (rule 7 of KD-CORRECTNESS).

For K seeded augmented views of every train sample the cache stores the augmentation parameters
(crop offsets and flip, or FKD's crop box and flip for RandomResizedCrop) and the teacher's RAW logits (fp16; never temperature-scaled probabilities). At
epoch e the student is shown view ``e mod K`` of each sample -- exactly the image the teacher saw -- and
the logits are looked up by (view, sample index). The cache is keyed by the teacher checkpoint's
sha256, the data digest, the augmentation spec, K and the view seed; any mismatch is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from kdflow.data.mixing import MixParams, apply_mix, draw_mix
from kdflow.data.prepared import PreparedData, stream_seed
from kdflow.data.views import apply_views, draw_views, view_size
from kdflow.errors import CheckpointError, ConfigError
from kdflow.infra.io import atomic_torch_save, safe_torch_load

FORMAT = "kdflow-teacher-cache-v2"  # v2: mixing partners and weights (function matching)


def cache_key(
    teacher_sha256: str, data: PreparedData, views: int, seed: int, mix: dict | None = None, topk: int | None = None
) -> dict:
    """``mix`` ({kind, alpha}) stores each view's partner and weight too, and the logits of the mixed image;
    ``topk`` keeps the k largest logits of each view (FKD) instead of all of them."""
    key = {
        "format": FORMAT,
        "teacher_sha256": teacher_sha256,
        "data_digest": data.digest,
        "augmentation": data.manifest["augmentation"],
        "views": views,
        "seed": seed,
        "num_train": len(data.train),
        "mix": mix,
    }
    if topk is not None and topk < data.num_classes:  # absent otherwise: full-logit keys stay as they were
        key["topk"] = topk
    return key


def key_name(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def view_params(n: int, augmentation: dict, seed: int, view: int, stored_hw: tuple[int, ...]) -> torch.Tensor:
    """(n, 3) pad-crop or (n, 5) crop-box parameters of one view; a pure function of (seed, view)."""
    gen = torch.Generator().manual_seed(stream_seed(seed, view))
    params = draw_views(n, augmentation, stored_hw, gen)
    return params if params is not None else torch.zeros(n, 3, dtype=torch.long)


def view_mix(n: int, mix: dict, image_hw: tuple[int, ...], seed: int, view: int) -> MixParams:
    """Partners and weights of one view: a pure function of (seed, view), apart from the crop stream."""
    gen = torch.Generator().manual_seed(stream_seed(seed, view) + 2**40)
    return draw_mix(n, n, mix["kind"], mix["alpha"], image_hw, gen)


@dataclass
class TopK:
    """The k largest raw logits of every view (their values live in ``TeacherCache.logits``), their classes,
    and the log-sum-exp of all C, so the rest of the distribution's mass is known."""

    index: torch.Tensor  # views x N x k (int16)
    lse: torch.Tensor  # views x N (fp32)
    num_classes: int


def expand_topk(values: torch.Tensor, index: torch.Tensor, lse: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Full logits from the top k: those k exact, every other class the same logit holding the rest of the
    softmax mass, so softmax at T=1 keeps the top-k probabilities exactly and the log-sum-exp is the teacher's."""
    k = values.shape[1]
    if k >= num_classes:
        return torch.zeros(len(values), num_classes).scatter_(1, index, values)
    rest = (1.0 - torch.exp(values - lse[:, None]).sum(1)).clamp_min(1e-12)
    fill = lse + torch.log(rest / (num_classes - k))
    return fill[:, None].expand(-1, num_classes).clone().scatter_(1, index, values)


@dataclass
class TeacherCache:
    key: dict
    params: torch.Tensor  # views x N x 3 or 5 (int16)
    logits: torch.Tensor  # views x N x C (fp16 or fp32, raw), or views x N x k with ``topk``
    build_seconds: float = 0.0
    mix: list[MixParams] | None = None  # per view, when the teacher saw mixed images
    topk: TopK | None = None

    def bytes_per_view(self) -> float:
        """Stored bytes per (sample, view): view parameters, logits, and the top-k classes and log-sum-exp."""
        tensors = [self.params, self.logits] + ([self.topk.index, self.topk.lse] if self.topk is not None else [])
        n = int(self.params.shape[0] * self.params.shape[1])
        return sum(t.numel() * t.element_size() for t in tensors) / max(n, 1)

    @property
    def views(self) -> int:
        return int(self.params.shape[0])

    def view_of(self, epoch: int) -> int:
        return epoch % self.views

    def params_for_epoch(self, epoch: int) -> torch.Tensor:
        return self.params[self.view_of(epoch)].long()

    def mix_for_epoch(self, epoch: int) -> MixParams | None:
        return self.mix[self.view_of(epoch)] if self.mix is not None else None

    def teacher_logits(self, indices: torch.Tensor, epoch: int) -> list[torch.Tensor]:
        """The teachers' logits for these samples at this epoch's view: one teacher here (see ensemble_cache)."""
        return [self.logits_for(indices, epoch)]

    def logits_for(self, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        v = self.view_of(epoch)
        values = self.logits[v][indices].float()
        if self.topk is None:
            return values
        return expand_topk(values, self.topk.index[v][indices].long(), self.topk.lse[v][indices], self.topk.num_classes)


def _kept_view(partial: Path | None, v: int) -> torch.Tensor | None:
    """View ``v``'s logits as an interrupted build left them, or None (none kept, or unreadable: recomputed)."""
    path = partial / f"view-{v:04d}.pt" if partial is not None else None
    if path is None or not path.is_file():
        return None
    try:
        blob = safe_torch_load(path, "distill.cache")
    except CheckpointError:
        return None
    return blob["logits"] if isinstance(blob, dict) and blob.get("view") == v else None


@torch.no_grad()
def build(
    teacher: nn.Module, data: PreparedData, key: dict, batch_size: int = 256, partial: Path | None = None
) -> TeacherCache:
    """``partial``: a folder (named by the key) that keeps each finished view, so a build that is killed
    continues at the next view instead of starting over (a 15-view cache of resnet20 on 52K images is an
    hour on 2 cores)."""
    teacher.eval()
    # the batches follow the teacher (CPU or GPU; a black-box ONNX teacher has buffers only); the cache lives on CPU
    device = next(iter([*teacher.parameters(), *teacher.buffers()]), torch.empty(0)).device
    norm = data.normalizer()
    n = len(data.train)
    aug = data.manifest["augmentation"]
    stored = tuple(int(d) for d in data.train.x.shape[-2:])
    t0 = time.perf_counter()
    all_params, all_logits, all_mix = [], [], []
    mix: dict = key.get("mix") or {}
    hw = view_size(aug, stored)
    bar = tqdm(
        total=key["views"] * ((n + batch_size - 1) // batch_size), desc="teacher cache", unit="batch", mininterval=5.0
    )
    for v in range(key["views"]):
        params = view_params(n, aug, key["seed"], v, stored)
        mp = view_mix(n, mix, hw, key["seed"], v) if mix else None
        view_logits = _kept_view(partial, v)
        if view_logits is None:
            out = []
            for start in range(0, n, batch_size):
                bar.update(1)
                sl = slice(start, start + batch_size)
                x = norm(apply_views(data.train.x[sl], params[sl], aug))
                if mp is not None:
                    part = mp.partner[sl]
                    mixed = norm(apply_views(data.train.x[part], params[part], aug))
                    x = apply_mix(x, mixed, mp.take(sl), mix["kind"])
                out.append(teacher(x.to(device)).float().cpu())
            view_logits = torch.cat(out)
            if partial is not None:
                partial.mkdir(parents=True, exist_ok=True)
                atomic_torch_save({"view": v, "logits": view_logits}, partial / f"view-{v:04d}.pt")
            tqdm.write(f"[teacher cache] view {v + 1}/{key['views']} done, {time.perf_counter() - t0:.0f} s")
        else:
            bar.update((n + batch_size - 1) // batch_size)
            tqdm.write(f"[teacher cache] view {v + 1}/{key['views']} kept from an interrupted build")
        all_params.append(params.to(torch.int16))
        if mp is not None:
            all_mix.append(mp)
        all_logits.append(view_logits)
    bar.close()
    logits, topk = torch.stack(all_logits), None
    if key.get("topk"):
        lse = torch.logsumexp(logits.float(), dim=-1)
        logits, index = logits.topk(int(key["topk"]), dim=-1)
        topk = TopK(index.to(torch.int16), lse, data.num_classes)
    return TeacherCache(
        key, torch.stack(all_params), compact(logits), time.perf_counter() - t0, all_mix if mix else None, topk
    )


FP16_SAFE = 6.0e4  # below float16's largest finite value (65504)


def compact(logits: torch.Tensor) -> torch.Tensor:
    """fp16 (half the bytes) when every logit fits it, else fp32: a teacher with logits of 1e7 (one that
    trained badly, or never normalised its head) turned into inf in fp16 and NaN in the student's first
    batch, reported as a learning-rate problem. Non-finite teacher logits are refused in one line."""
    if not bool(torch.isfinite(logits).all()):
        raise ConfigError(
            "teacher",
            "the teacher's logits are not finite (NaN or inf) on the training images",
            "check the teacher: evaluate it, or retrain it with a lower lr or train.amp=off",
        )
    return logits.half() if float(logits.abs().max()) < FP16_SAFE else logits


def save(cache: TeacherCache, path: Path) -> Path:
    mix = None
    if cache.mix is not None:
        mix = {
            "partner": torch.stack([m.partner for m in cache.mix]).to(torch.int32),
            "lam": torch.stack([m.lam for m in cache.mix]),
            "box": torch.stack([m.box for m in cache.mix]).to(torch.int16),
        }
    blob = {"key": cache.key, "params": cache.params, "logits": cache.logits, "build_seconds": cache.build_seconds}
    if cache.topk is not None:
        blob["topk"] = {"index": cache.topk.index, "lse": cache.topk.lse, "num_classes": cache.topk.num_classes}
    return atomic_torch_save({**blob, "mix": mix}, path)


def load(path: Path, expected: dict) -> TeacherCache:
    """Load a cache and refuse it unless every key field matches what this run would build."""
    blob = safe_torch_load(path, "distill.cache")
    key = blob.get("key", {}) if isinstance(blob, dict) else {}
    for field in (
        "format",
        "teacher_sha256",
        "data_digest",
        "augmentation",
        "views",
        "seed",
        "num_train",
        "mix",
        "topk",
    ):
        if key.get(field) != expected.get(field):
            raise ConfigError(
                "distill.cache",
                f"stale teacher cache '{path}': {field} is {key.get(field)!r}, this run needs {expected.get(field)!r}",
                "delete the file or let kdflow rebuild it (distill.cache_dir)",
            )
    params, logits = blob["params"], blob["logits"]
    if params.shape[:2] != (expected["views"], expected["num_train"]) or logits.shape[:2] != params.shape[:2]:
        raise ConfigError("distill.cache", f"teacher cache '{path}' has inconsistent shapes", "delete it and rebuild")
    stored = blob.get("mix")
    mix = None
    if stored is not None:
        mix = [
            MixParams(stored["partner"][v].long(), stored["lam"][v].float(), stored["box"][v].long())
            for v in range(params.shape[0])
        ]
    stored_topk = blob.get("topk")
    topk = TopK(stored_topk["index"], stored_topk["lse"], int(stored_topk["num_classes"])) if stored_topk else None
    if (topk is None) != ("topk" not in key):
        raise ConfigError("distill.cache", f"teacher cache '{path}' lacks its top-k classes", "delete it and rebuild")
    return TeacherCache(key, params, logits, float(blob.get("build_seconds", 0.0)), mix, topk)


def get_or_build(
    teacher: nn.Module,
    teacher_sha256: str,
    data: PreparedData,
    views: int,
    seed: int,
    cache_dir: Path,
    mix: dict | None = None,
    topk: int | None = None,
) -> tuple[TeacherCache, Path, bool]:
    """Reuse a matching cache from ``cache_dir`` or build and save one. Returns (cache, path, reused)."""
    key = cache_key(teacher_sha256, data, views, seed, mix, topk)
    path = Path(cache_dir) / f"teacher-cache-{key_name(key)}.pt"
    if path.is_file():
        try:
            return load(path, key), path, True
        except CheckpointError as e:  # corrupt or unreadable: derived data, so rebuilt (a stale key is refused)
            print(f"[distill_student] teacher cache unusable, rebuilding it: {e.problem}")
    partial = path.with_suffix(".partial")  # the finished views of a build that was killed
    cache = build(teacher, data, key, partial=partial)
    save(cache, path)
    shutil.rmtree(partial, ignore_errors=True)
    return cache, path, False
