"""The promotion lease is fenced (#25): each registry write checks the lease by the holder's own clock and the
fence token; a lost lease stops the writes with one line naming what was already written."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from kdflow.errors import TrackingError
from kdflow.release import lease
from kdflow.release.registry import _move_champion

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(tmp_path):
    """A sqlite MLflow registry with model 'm' at two versions, v1 the champion."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=str(tmp_path))
    client.set_registered_model_alias("m", "champion", "1")
    return client


def test_the_holder_stops_by_its_own_monotonic_clock_before_waiters_may_take_over(registry, monkeypatch):
    held = lease.acquire(registry, "m", ttl_s=60, wait_s=1)
    held.fence()
    assert registry.get_registered_model("m").tags[lease.FENCE_TAG] == str(held.generation)
    now = held.acquired + lease.HOLDER_SHARE * 60  # 54 s later by the holder's clock; the wall clock says nothing
    monkeypatch.setattr(lease.time, "monotonic", lambda: now)
    with pytest.raises(lease.LeaseLost, match="expired or superseded"):
        held.fence()
    # a waiter on another host takes an expired lease only after the clock-skew margin
    wall = lease.time.time()
    assert not lease._free({"expires_at": f"{wall - 1:.3f}"})
    assert lease._free({"expires_at": f"{wall - lease.SKEW_MARGIN_S - 1:.3f}"})


def test_a_newer_generation_fences_out_the_older_holder(registry):
    old = lease.acquire(registry, "m", ttl_s=60, wait_s=1)
    old.fence()
    registry.set_registered_model_tag(old.model_name, "released", "true")  # as if it had expired
    newer = lease.acquire(registry, "m", ttl_s=60, wait_s=1)
    newer.fence()
    with pytest.raises(lease.LeaseLost):
        old.fence()
    registry.delete_registered_model(newer.model_name)  # even with the newer lease gone, its token stays
    with pytest.raises(lease.LeaseLost, match=f"generation {newer.generation} wrote after this lease"):
        old.fence()


def test_a_lease_lost_between_two_alias_writes_stops_with_what_was_written(registry):
    held = lease.acquire(registry, "m", ttl_s=60, wait_s=1)
    write_alias = registry.set_registered_model_alias

    def another_promoter_takes_over_after_the_first_write(name, alias, version):
        write_alias(name, alias, version)
        registry.create_registered_model(lease.lease_name("m", held.generation + 1), tags={lease.TAG: "true"})

    registry.set_registered_model_alias = another_promoter_takes_over_after_the_first_write
    champion = registry.get_model_version_by_alias("m", "champion")
    with pytest.raises(TrackingError) as lost:
        _move_champion(registry, held, "m", "2", champion, "beats champion", "run", False)
    message = str(lost.value)
    assert message.startswith("gate.promotion_lease_s: lost the promotion lease of 'm' before writing champion -> v2")
    assert "written before it: previous_champion -> v1" in message and "fix:" in message
    assert str(registry.get_model_version_by_alias("m", "champion").version) == "1"  # the champion did not move
