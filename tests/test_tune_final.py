"""The final rung of a multi-fidelity tune (#28): the search's best trials trained again at full fidelity on
the whole train split, the pick and its twin chosen there on validation, best.yaml as the final rung trained,
the plan's cost printed before any trial, a second run that trains nothing again, and a final run interrupted
part-way that continues from its checkpoint to the same result."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
import yaml
from helpers import tiny_config

from kdflow.config import build_config
from kdflow.data import prepared as data
from kdflow.errors import ConfigError
from kdflow.evaluation.significance import unpack_correct
from kdflow.tune import rounds, tune

pytestmark = pytest.mark.integration


def _config(tmp):
    cfg = tiny_config(
        tmp,
        data={"window": "0:3000", "train_subset": 600, "val_size": 400},
        teacher={"epochs": 1},
        student={"epochs": 2},
        train={"lr": 0.05},
    ).to_dict()
    cfg["tune"] = {
        "trials": 3,
        "objectives": ["val_accuracy"],
        "startup_trials": 3,
        "space": {"students": ["cnn"], "cnn_width": [4, 12], "cnn_depth": [2, 2], "epochs": [1, 1]},
        "final": {"top_k": 2},
    }
    return build_config(cfg)


def test_the_final_rung_retrains_the_best_at_full_fidelity_and_picks_there(
    tmp_path, capsys, monkeypatch, fashion_available
):
    out = tmp_path / "study"
    result = tune(_config(tmp_path), out)
    printed = capsys.readouterr().out
    search, full = data.load_prepared(out / "data"), data.load_prepared(out / "final" / "data")
    assert search.manifest["counts"]["train"] == 600 and full.manifest["counts"]["train"] > 2000
    assert torch.equal(search.val.x, full.val.x)  # one validation set for the search and the final rung
    n = full.manifest["counts"]["train"]
    assert f"final rung: the 2 best of each at 2 epochs on {n:,}" in printed
    assert printed.index("[tune] plan:") < printed.index("distill trial 0")  # the cost before any trial

    rows = list(csv.DictReader((out / "final.csv").open()))
    kd = [r for r in rows if r["study"] == "distill"]
    twin = [r for r in rows if r["study"] == "scratch"]
    assert len(kd) == 2 and len(twin) == 2 and all(r["epochs"] == "2" for r in rows)
    searched = sorted(
        (
            r
            for r in csv.DictReader((out / "trials.csv").open())
            if r["study"] == "distill" and r["state"] == "complete"
        ),
        key=lambda r: -float(r["val_accuracy"]),
    )
    assert {r["trial"] for r in kd} == {r["number"] for r in searched[:2]}  # the search's two best
    best_kd = max(kd, key=lambda r: float(r["final_val_accuracy"]))
    assert [r["pick"] for r in kd].count("*") == 1 and best_kd["pick"] == "*"
    assert result.pick["val_accuracy"] == pytest.approx(float(best_kd["final_val_accuracy"]))
    assert result.pick["recipe"]["epochs"] == 2 and result.pick["arch"] == best_kd["arch"]
    assert {r["arch"] for r in twin} == {best_kd["arch"]}  # the twin is tuned for the final pick's student
    assert result.kd_gain_val == pytest.approx(
        float(best_kd["final_val_accuracy"]) - max(float(r["final_val_accuracy"]) for r in twin)
    )
    # the verdict is tested against chance on the validation images both got right or wrong (per-image records)
    kept_pick = json.loads((out / "final" / f"distill-{int(best_kd['trial']):04d}.json").read_text())["user_attrs"]
    pick_correct = unpack_correct(kept_pick["val_correct"])
    assert len(pick_correct) == len(full.val.y) and pick_correct.float().mean().item() == pytest.approx(
        kept_pick["val_accuracy"]
    )
    test = json.loads((out / "tune.json").read_text())["kd_gain_val_mcnemar"]
    assert test["images"] == len(full.val.y) and 0 <= test["p_value"] <= 1
    assert test["distilled_only_correct"] - test["twin_only_correct"] == round(result.kd_gain_val * test["images"])
    assert result.pays == (result.kd_gain_val > 0 and test["p_value"] < 0.05)
    teacher = json.loads((out / "tune.json").read_text())["teacher_val_accuracy"]  # the "why" reads its lead
    assert 0.1 < teacher <= 1 and teacher * len(full.val.y) == pytest.approx(round(teacher * len(full.val.y)))
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["data"]["train_subset"] is None and best["distill"]["cache_views"] == 2
    assert best["student"]["arch"] == best_kd["arch"]

    again = tune(_config(tmp_path), out)  # the same command: every final run is kept
    assert "[tune] final rung:" not in capsys.readouterr().out
    assert again.pick == result.pick and again.kd_gain_val == result.kd_gain_val
    stated = next(line for line in printed.splitlines() if line.startswith("[tune] plan:"))
    _the_cluster_form_picks_the_same(tmp_path, out, result, rows, stated, monkeypatch)

    # the final rung ranks the search's second best first (its kept record edited): the search's front and
    # plot mark that pick, not the search's best
    reranked = tmp_path / "reranked"
    shutil.copytree(out, reranked, ignore=shutil.ignore_patterns("final.csv", "best.yaml"))
    second = searched[1]["number"]
    record = reranked / "final" / f"distill-{int(second):04d}.json"
    kept = json.loads(record.read_text())
    kept["user_attrs"]["val_accuracy"] = 1.0
    record.write_text(json.dumps(kept))
    assert tune(_config(tmp_path), reranked).pick["arch"] == kept["user_attrs"]["arch"]
    front = list(csv.DictReader((reranked / "pareto.csv").open()))
    marked = [r["number"] for r in front if r["pick"] == "True"]
    assert marked == [r["number"] for r in front if r["number"] == second] and searched[0]["number"] not in marked

    # the same study with one final run gone, trained again and interrupted after its first epoch
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed, ignore=shutil.ignore_patterns("final.csv", "best.yaml"))
    sorted((resumed / "final").glob("distill-*.json"))[0].unlink()
    interrupted = _interrupt_fit_once(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        tune(_config(tmp_path), resumed)
    assert (interrupted[0] / "checkpoint.pt").is_file()  # kept for the next run
    capsys.readouterr()
    tune(_config(tmp_path), resumed)
    assert "resumed from epoch 1" in capsys.readouterr().out
    assert list(csv.DictReader((resumed / "final.csv").open())) == rows  # as if never interrupted
    assert not any((resumed / "final" / "runs").iterdir())  # each folder gone once its run ended


def _interrupt_fit_once(monkeypatch) -> list:
    """The next trial.fit raises KeyboardInterrupt once its first epoch is checkpointed (a kill, a lost pod);
    later calls train through. Returns the list its interrupted run folder goes to."""
    from kdflow.tune import trial as trial_module

    real_fit, interrupted = trial_module.fit, []

    def fit_interrupted_once(*args, **kwargs):
        def on_epoch(row):
            kwargs["on_epoch"](row)
            if not interrupted:
                interrupted.append(kwargs["out_dir"])
                raise KeyboardInterrupt

        return real_fit(*args, **{**kwargs, "on_epoch": on_epoch})

    monkeypatch.setattr(trial_module, "fit", fit_interrupted_once)
    return interrupted


def _the_cluster_form_picks_the_same(tmp_path, local, result, rows, stated, monkeypatch):
    """The autodistill DAG's steps, called in-process as its pods call them: each study's round, then its final
    rung (the best trials asked again at the final length, trained on the whole train split prepared by setup,
    their records told), then conclude. Same seeds, same trials: the final rung and the pick equal the local
    tune's (its 3 trials are the sampler's startup draws, so one round asks what the local loop asked), and
    setup states the same cost before any trial as the local tune's plan (3 trials per study, as compiled). The
    first final pod is lost after its first epoch and retried: it continues from the checkpoint kept in
    storage.state_dir, to the same final runs."""
    cfg, teacher, w = _config(tmp_path), local / "teacher" / "model.pt", tmp_path / "cluster"
    rounds.setup(cfg, local / "data", teacher, w / "study-0", w / "cache", w / "final-data", "cluster-run", 3)
    assert rounds.read_plan(w / "study-0") == stated
    assert data.load_prepared(w / "final-data").digest == data.load_prepared(local / "final" / "data").digest
    study_dir = w / "study-0"
    for kind in ("distill", "scratch"):
        for rung, data_dir in (("search", local / "data"), ("final", w / "final-data")):
            asked, told = w / f"{kind}-{rung}-asked", w / f"{kind}-{rung}-told"
            specs = rounds.ask(cfg, study_dir, asked, data_dir, kind, 3, rung)
            assert len(specs) == (3 if rung == "search" else 2)
            if (kind, rung) == ("distill", "final"):
                interrupted = _interrupt_fit_once(monkeypatch)
                with pytest.raises(KeyboardInterrupt):
                    rounds.run_spec(cfg, data_dir, teacher, w / "cache", specs[0], "cluster-run")
                kept = tmp_path / "state" / "running" / "tune-final"  # in state_dir, not the pod's temp folder
                assert interrupted[0].parent == kept and (interrupted[0] / "checkpoint.pt").is_file()
            results = [rounds.run_spec(cfg, data_dir, teacher, w / "cache", spec, "cluster-run") for spec in specs]
            if (kind, rung) == ("distill", "final"):  # the retried pod continued; its kept folder is gone
                assert results[0]["user_attrs"]["resumed_from_epoch"] == 1
                assert not list((tmp_path / "state" / "running" / "tune-final").iterdir())
            rounds.tell(cfg, asked, told, results)
            study_dir = told
    with pytest.raises(ValueError, match=r"final rung record distill-\d{4}\.json was trained on data"):
        # records read against other data than theirs (here the search's subset) are refused, not skipped
        rounds.conclude(cfg, study_dir, local / "data", teacher, w / "other", w / "other.yaml", local / "data")
    assert not (w / "other.yaml").exists() and not (w / "other").exists()  # refused before anything is written
    concluded = rounds.conclude(cfg, study_dir, local / "data", teacher, w / "out", w / "best.yaml", w / "final-data")
    assert list(csv.DictReader((w / "out" / "final.csv").open())) == rows
    assert rounds.read_plan(study_dir) == stated  # carried through every ask and tell to conclude
    assert concluded.pick == result.pick and concluded.kd_gain_val == result.kd_gain_val
    best = yaml.safe_load((w / "best.yaml").read_text())  # the students after the tune train as the rung did
    assert best["data"]["train_subset"] is None and best["distill"]["cache_views"] == 2


def test_the_cluster_form_refuses_a_final_rung_it_was_not_compiled_with_and_a_budget_before_any_step(
    tmp_path, monkeypatch
):
    from pipelines.runner import run_local

    cfg = build_config({"tune": {"final": {"top_k": 2}}})
    with pytest.raises(ConfigError, match="tune.final.top_k: is 2 but the autodistill pipeline was compiled with a"):
        rounds.check_cluster_form(cfg, final_top_k=0)  # the check step, between prep and the teacher
    rounds.check_cluster_form(cfg, final_top_k=2)
    monkeypatch.chdir(tmp_path)  # the local runner compiles the config's rung, and refuses another before any step
    with pytest.raises(ConfigError, match="--final-top-k 2"):
        run_local(
            profile="smoke",
            root=str(tmp_path / "root"),
            which="autodistill",
            overrides=["tune.final.top_k=2"],
            final_top_k=1,
        )
    assert not (tmp_path / "root").exists()  # no pipeline root: no step ran
    with pytest.raises(ConfigError, match="no student in the search space meets the budget"):  # inputs known
        run_local(profile="smoke", root=str(tmp_path / "root"), which="autodistill", overrides=["tune.max_params=50"])
    assert not (tmp_path / "root").exists()
