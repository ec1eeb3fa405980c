"""The automated-distillation DAG: prep -> check (the budget) -> teacher -> tune (ask/tell rounds, trials in parallel pods)
-> the pick distilled || its tuned scratch twin -> evaluate -> export -> If(gate) promote, all inside the
distillation DAG's ExitHandler (finalize closes the MLflow parent run with the final status).

Rounds and parallelism are fixed when the pipeline is compiled (KFP unrolls them): ``rounds`` rounds of
``parallel`` distillation trials, then as many scratch-twin rounds. So is the final rung (``final_top_k``,
which must equal the config's ``tune.final.top_k``; the check step says so): after each study's rounds, its
``final_top_k`` best trials again in parallel pods at the final length on the whole train split, and the pick,
its twin's student and the students trained after the tune come from there. Locally, ``kdflow tune`` runs the
same study in one process (with pruning, which needs trials to see each other).
"""

from kfp import dsl

from components import train_teacher, tune_ask, tune_check, tune_conclude, tune_setup, tune_tell, tune_trial
from pipelines.distillation import EMBEDDED_CONFIG, _configure, _gpu, exit_handler, prep_task, students_and_release
from pipelines.kfp_build import cheaply_named

PIPELINE_NAME = "kdflow-autodistill"
ROUNDS, PARALLEL = 3, 4


def _round(cfg, ds, teacher_model, cache, study, kind: str, count: int, label: str, run_id, use_gpu: bool, **rung):
    """Ask ``count`` trials (``rung="final"``: the study's best again at the final length), train each in its
    own pod (``count`` at once), tell their results to a new copy of the study."""
    ask = tune_ask(config=cfg, dataset=ds, study=study, kind=kind, count=count, **rung)
    _configure(ask, "light", cache=False).set_display_name(f"ask {kind} {label}")
    loop = f"{kind}-final" if rung else f"{kind}-trials-{label.removeprefix('round ')}"
    with dsl.ParallelFor(ask.outputs["Output"], parallelism=count, name=loop) as spec:
        trial = tune_trial(
            config=cfg, dataset=ds, teacher=teacher_model, teacher_cache=cache, spec=spec, pipeline_run_id=run_id
        )
        _gpu(_configure(trial, "train", cache=False, retries=1, shm=True), use_gpu)
    tell = tune_tell(config=cfg, study=ask.outputs["study_out"], results=dsl.Collected(trial.output))
    _configure(tell, "light", cache=False).set_display_name(f"tell {kind} {label}")
    return tell.outputs["study_out"]


def _tune_rounds(cfg, ds, teacher_model, cache, study, kind: str, rounds: int, parallel: int, run_id, use_gpu: bool):
    for r in range(rounds):
        study = _round(cfg, ds, teacher_model, cache, study, kind, parallel, f"round {r + 1}", run_id, use_gpu)
    return study


def _final_rung(cfg, final_ds, teacher_model, cache, study, kind: str, top_k: int, run_id, use_gpu: bool):
    """The study's ``top_k`` best trials again at the final length, one pod each, their records told to it."""
    return _round(cfg, final_ds, teacher_model, cache, study, kind, top_k, "final rung", run_id, use_gpu, rung="final")


@cheaply_named
def build_autodistill(use_gpu: bool = False, rounds: int = ROUNDS, parallel: int = PARALLEL, final_top_k: int = 0):
    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Find the student and recipe for which distillation pays under a budget; train, gate, promote it.",
    )
    def kdflow_autodistill(config_yaml: str = EMBEDDED_CONFIG, profile: str = "default", extra_overrides: list = []):  # noqa: B006
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        with exit_handler(config_yaml, profile, extra_overrides, run_id):
            prep = prep_task(config_yaml, profile, extra_overrides, run_id)
            cfg, ds = prep.outputs["config"], prep.outputs["dataset"]
            # a budget no student meets fails here, before the teacher (an image folder's shape is known only now)
            check = _configure(tune_check(config=cfg, dataset=ds, final_top_k=final_top_k), "light", cache=False)
            teacher = train_teacher(config=cfg, dataset=ds, pipeline_run_id=run_id).after(check)
            _gpu(_configure(teacher, "train", cache=True, retries=2, shm=True), use_gpu)
            teacher_model = teacher.outputs["teacher"]

            setup = tune_setup(
                config=cfg, dataset=ds, teacher=teacher_model, pipeline_run_id=run_id, trials=rounds * parallel
            )
            _gpu(_configure(setup, "train", cache=True, shm=True), use_gpu)
            cache, final_ds = setup.outputs["teacher_cache"], setup.outputs["final_dataset"]
            study = setup.outputs["study"]
            for kind in ("distill", "scratch"):  # the twin's study is of the distillation pick's student
                study = _tune_rounds(cfg, ds, teacher_model, cache, study, kind, rounds, parallel, run_id, use_gpu)
                if final_top_k:
                    study = _final_rung(cfg, final_ds, teacher_model, cache, study, kind, final_top_k, run_id, use_gpu)
            pick = tune_conclude(config=cfg, dataset=ds, teacher=teacher_model, study=study, final_dataset=final_ds)
            _configure(pick, "light", cache=False)

            # the students are trained as the pick was: on the final rung's data where there is one
            students_and_release(
                pick.outputs["best_config"], final_ds if final_top_k else ds, teacher_model, run_id, use_gpu
            )

    return kdflow_autodistill
