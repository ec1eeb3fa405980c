"""What is deployed of a model on named inputs: the model on its own inputs alone, and the data as it sees them.

A student trained beside a teacher that saw six views reads one of them; its export must ask for that view
only. :func:`deployed` turns the :class:`~kdflow.models.inputs.Selected` model into its core and every split
into the model's columns in its input shape (the pixel view a 1x16x15 image), with the normalisation of
those columns, so export, parity, int8 calibration and ``kdflow predict`` all work on what deployment has.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from kdflow.data.batches import Split
from kdflow.data.prepared import PreparedData
from kdflow.models.inputs import Selected


def ship_tokenizer(data: PreparedData, out_dir: Path) -> None:
    """The text student's tokenizer beside its export, so ``kdflow predict`` serves raw text."""
    if "deployed_text" not in data.manifest:
        return
    from kdflow.data.text import TOKENIZER_FILE, encoder_dir
    from kdflow.infra.io import atomic_write_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / TOKENIZER_FILE, (encoder_dir() / TOKENIZER_FILE).read_bytes())


def deployed(model: nn.Module, data: PreparedData) -> tuple[nn.Module, PreparedData]:
    """(the model to export, the data in its input shape); an image model and its data pass as they are."""
    if not isinstance(model, Selected):
        return model, data
    core, shape = model.deployable()
    cols = torch.tensor(model.columns(), dtype=torch.long)

    def project(split: Split | None) -> Split | None:
        if split is None:
            return None
        x = split.x[:, cols]  # feature rows are in-memory tensors
        return Split(x.reshape(len(x), *shape).contiguous(), split.y)

    manifest = {**data.manifest, "input_shape": list(shape), "deployed_inputs": list(model.names)}
    if model.names == ["tokens"]:  # raw text in: the tokenizer ships beside the export (export_student copies it)
        from kdflow.data.text import TOKENIZER_FILE

        manifest["deployed_text"] = {"tokenizer": TOKENIZER_FILE, "max_tokens": int(shape[-1])}
    return core, replace(
        data,
        train=project(data.train),  # type: ignore[arg-type]
        val=project(data.val),  # type: ignore[arg-type]
        test=project(data.test),  # type: ignore[arg-type]
        release=project(data.release),
        mean=tuple(data.mean[c] for c in cols.tolist()),
        std=tuple(data.std[c] for c in cols.tolist()),
        manifest=manifest,
    )
