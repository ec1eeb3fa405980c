"""Building a KFP pipeline without KFP's costly self-naming.

Each task setter KFP offers (``set_cpu_limit``, ``set_memory_request``, ...) first calls ``inspect.stack()``
only to put its own name in an error message. That formats every frame of the stack with its source line:
~40 ms a call with torch and mlflow loaded (more under pytest's deep stacks), 4 setters x 9 tasks, twice per
local run (KFP builds the graph, then runs the function again): 3 s of a 37 s smoke DAG. While a run is built
here, ``kfp.dsl.pipeline_task`` (its only user of ``inspect``) sees a stand-in whose ``stack()`` gives the
same frames and names without reading source. Nothing else in KFP or elsewhere sees it. The pipeline
builders (``build_pipeline``, ``build_autodistill``) run under it too (``cheaply_named``).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class _FrameNames:
    """``inspect.stack()`` as KFP reads it (``[i][3]``: the i-th caller's function name), without source."""

    @staticmethod
    def stack(context: int = 1) -> list[tuple[FrameType, None, None, str, None, None]]:
        frames = []
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            frames.append((frame, None, None, frame.f_code.co_name, None, None))
            frame = frame.f_back
        return frames


@contextlib.contextmanager
def cheap_self_naming() -> Iterator[None]:
    from kfp.dsl import pipeline_task

    original = pipeline_task.inspect
    pipeline_task.inspect = _FrameNames()
    try:
        yield
    finally:
        pipeline_task.inspect = original


def cheaply_named(build: F) -> F:
    """A pipeline builder that runs under :func:`cheap_self_naming`: ``@dsl.pipeline`` builds the graph when
    it decorates, so this covers the import-time build, compiling and the local runner's build (the module
    build at import took 5.9 s under pytest, whose hundreds of loaded modules ``inspect.getmodule`` walks)."""

    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        with cheap_self_naming():
            return build(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
