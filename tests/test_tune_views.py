"""The train view as a tune knob (tune.space.augment): trials and the scratch twin train on the same prepared
samples under the view they sampled, exactly as on data prepared with that view, and best.yaml carries it."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from helpers import tiny_config

from kdflow import steps
from kdflow.config import build_config, load_config
from kdflow.data import prepared as data
from kdflow.infra.io import safe_torch_load
from kdflow.tune import tune

pytestmark = pytest.mark.integration


def test_a_searched_train_view_trains_as_data_prepared_with_it(tmp_path, tiny_data):
    cfg = tiny_config(tmp_path).to_dict()
    cfg["tune"] = {
        "trials": 2,
        "objectives": ["val_accuracy"],
        "startup_trials": 2,
        "cache_views": 3,  # asked for, yet a plain view needs one
        "space": {"students": ["cnn-small"], "epochs": [1, 1], "augment": [False]},
    }
    out = tmp_path / "study"
    result = tune(build_config(cfg), out)
    assert data.load_manifest(out / "data")["augmentation"]["enabled"]  # prepared with crop and flip
    rows = [r for r in csv.DictReader((out / "trials.csv").open()) if r["state"] == "complete"]
    assert rows and {r["augment"] for r in rows} == {"False"}  # every trial of both studies sampled the view
    caches = [safe_torch_load(p, "distill.cache") for p in (out / "teacher_cache").glob("*.pt")]
    assert caches and all(not c["key"]["augmentation"]["enabled"] for c in caches)  # the teacher saw that view
    assert all(c["key"]["views"] == 1 for c in caches)  # every view the same image: one teacher pass, exact
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["data"]["augment"] is False and best["scratch_twin"]["augment"] is False
    assert result.pick["recipe"]["augment"] is False

    # the DAG's scratch step on the augmented split, with the twin's view, trains as on a plain prep
    twin_cfg = load_config(out / "best.yaml", None, [f"storage.state_dir={tmp_path / 'state2'}"])
    viewed = steps.train(twin_cfg, "scratch", tiny_data, tmp_path / "viewed")
    assert viewed["fingerprint"]["data.augment"] is False and "data_augmentation" not in viewed["fingerprint"]
    plain_data = tmp_path / "plain"
    data.prepare(twin_cfg.data, plain_data)
    assert not data.load_manifest(plain_data)["augmentation"]["enabled"]
    again = load_config(out / "best.yaml", None, [f"storage.state_dir={tmp_path / 'state3'}"])
    direct = steps.train(again, "scratch", plain_data, tmp_path / "direct")
    assert "reused_from" not in direct and direct["metrics"]["test_accuracy"] == viewed["metrics"]["test_accuracy"]

    def epochs(run):  # every figure of every epoch but its wall time
        return [
            {k: v for k, v in e.items() if k != "seconds"}
            for e in json.loads((tmp_path / run / "history.json").read_text())
        ]

    assert epochs("direct") == epochs("viewed")
