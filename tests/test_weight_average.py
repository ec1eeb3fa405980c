"""The data-free student's weight average (``distill.generator.student_ema``): the exponential moving average of
weights and BN buffers is the model reported and saved, and a resumed run continues it exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import tiny_config

from kdflow.data import prepared as data
from kdflow.models import zoo as models
from kdflow.training.data_free import DataFreeState, build_generator, fit_data_free
from kdflow.training.weight_average import weight_average


@pytest.mark.unit
def test_the_average_is_the_exponential_moving_average_of_weights_and_buffers():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    assert weight_average(m, 0.0) is None
    avg = weight_average(m, 0.9)
    assert avg is not None
    want: dict[str, torch.Tensor] = {}
    for step in range(3):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(1.0)
        m(torch.randn(5, 3))  # train mode: the BN running statistics move too
        avg.update_parameters(m)
        for k, v in m.state_dict().items():
            if v.is_floating_point():
                want[k] = v.clone() if step == 0 else 0.9 * want[k] + 0.1 * v
    got = avg.module.state_dict()
    assert {k for k in want if "running" in k} == {"1.running_mean", "1.running_var"}
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)


class _Stop(Exception):
    pass


@pytest.mark.integration
def test_a_data_free_run_saves_its_weight_average_and_resumes_it_exactly(tiny_data, tmp_path):
    gen = {"iterations": 4, "iterations_per_epoch": 2, "batch": 16, "student_steps": 2}
    prepared = data.load_prepared(tiny_data)
    torch.manual_seed(0)
    teacher = models.build_model("cnn-wide").eval()

    def run(ema: float, checkpoint, on_epoch=None) -> DataFreeState:
        cfg = tiny_config(
            tmp_path, distill={"method": "dfad", "data_free": True, "generator": {**gen, "student_ema": ema}}
        )
        torch.manual_seed(0)
        st = DataFreeState(
            models.build_model("cnn-small"),
            teacher,
            build_generator(cfg.distill.generator, 1, 28),
            cfg,
            prepared.mean,
            prepared.std,
        )
        st.history = fit_data_free(st, prepared.val, checkpoint, {"test": ema}, on_epoch).history  # type: ignore[attr-defined]
        return st

    averaged, last = run(0.9, tmp_path / "a.pt"), run(0.0, tmp_path / "c.pt")
    a, c = averaged.student.state_dict(), last.student.state_dict()
    assert any(not torch.allclose(a[k], c[k]) for k in a if a[k].is_floating_point())  # the average, not the last
    torch.manual_seed(0)
    init = models.build_model("cnn-small").state_dict()
    weights = [k for k in a if k.endswith("weight")]
    dist = lambda x: sum(float((x[k] - c[k]).norm()) for k in weights)  # noqa: E731
    assert dist(a) < 0.75 * dist(init)  # ... of the steps taken (not the initial weights kept)
    assert "val_acc_last" in averaged.history[-1] and "val_acc_last" not in last.history[-1]  # type: ignore[attr-defined]

    def stop(row: dict) -> None:
        raise _Stop

    with pytest.raises(_Stop):
        run(0.9, tmp_path / "b.pt", stop)  # killed after its first epoch's checkpoint
    b = run(0.9, tmp_path / "b.pt").student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
