"""The train view of prepared data: the same samples with the random crop and flip a config asks for, or none.

The view is recorded in the prepared data's manifest at prep time, and training reads it there. kdflow tune
can search it (``tune.space.augment``), so a trial, and the scratch twin whose view was tuned apart
(``scratch_twin.augment``), train on the samples under their own view, without preparing them again.
"""

from __future__ import annotations

from dataclasses import replace

from kdflow.config.sections import DataConfig
from kdflow.data import prepared as data


def with_train_view(prepared: data.PreparedData, data_cfg: DataConfig) -> data.PreparedData:
    """``prepared`` under the view ``data_cfg`` asks for (itself when that is the prepared view already)."""
    view = data.augmentation_spec(data_cfg)
    if prepared.manifest.get("augmentation") == view:
        return prepared
    return replace(prepared, manifest={**prepared.manifest, "augmentation": view})
