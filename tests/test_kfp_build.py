"""The stand-in KFP's task setters see while a local run is built: the same caller names as inspect.stack(),
KFP's own error for a setter on a pipeline-as-component unchanged, and the real inspect back afterwards."""

# no `from __future__ import annotations`: KFP reads the components' annotations as types

import inspect

import pytest

from pipelines.kfp_build import _FrameNames, cheap_self_naming

pytestmark = pytest.mark.unit


def _names(stack) -> list[str]:
    return [frame[3] for frame in stack]


def test_the_stand_in_names_the_same_frames_as_inspect():
    def setter():
        return _names(inspect.stack()), _names(_FrameNames.stack())

    def caller():
        return setter()

    real, cheap = caller()
    assert cheap == real and cheap[:3] == ["setter", "caller", "test_the_stand_in_names_the_same_frames_as_inspect"]


def test_a_setter_on_a_pipeline_as_component_fails_as_in_kfp():
    from kfp import dsl
    from kfp.dsl import pipeline_task

    @dsl.component
    def leaf() -> str:
        return "leaf"

    @dsl.pipeline
    def inner():
        leaf()

    with cheap_self_naming():
        assert pipeline_task.inspect is not inspect  # the stand-in is in place

        @dsl.pipeline
        def outer():
            task = inner()
            with pytest.raises(ValueError, match=r"^set_cpu_limit can only be used on single-step components"):
                task.set_cpu_limit("1")
            leaf().set_cpu_limit("1").set_memory_limit("1G")  # a single-step task takes them

    assert pipeline_task.inspect is inspect
    assert outer.pipeline_spec is not None
