"""A promotion lease held in the tracking database: one judge-and-move at a time per registered model.

MLflow has no compare-and-set on aliases, but creating a registered model is create-if-absent: the
tracking database's unique name constraint lets exactly one of several concurrent creators win. A lease
is the registered model ``<name>.lease.<generation>`` (tagged ``kdflow.lease``), created by its holder
with an expiry time. The next promoter waits while the newest generation is held and not expired, then
creates the next generation; of several waiters exactly one succeeds. A holder killed with kill -9 never
releases, so its lease simply expires after ``ttl_s`` and the registry is free again.

Fencing: the generation is a monotonically increasing token. Right before each registry write (each alias,
each tag) the holder checks that its lease is still the newest and unexpired by its *own* monotonic clock
(it stops at 90% of ``ttl_s``; waiters on other hosts treat a lease as expired only ``SKEW_MARGIN_S`` after
its recorded wall-clock expiry), and that no newer generation has written to the registered model (the tag
``kdflow.lease.fence`` holds the highest generation that wrote; the holder sets it to its own). A lost
lease stops the promotion with one line naming what was written before it was lost, and a non-zero exit.
MLflow offers no compare-and-set, so a holder paused for longer than the margins between its check and
its write is the remaining window; the margins make it seconds wide against a TTL of minutes.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kdflow.errors import TrackingError

TAG = "kdflow.lease"
FENCE_TAG = "kdflow.lease.fence"
SKEW_MARGIN_S = 2.0  # clocks of different hosts: a waiter takes an expired lease only this much later
HOLDER_SHARE = 0.9  # the holder stops using its lease at this share of ttl_s, by its own monotonic clock


class LeaseLost(Exception):
    """The lease expired or a newer holder wrote: nothing more may be written."""


@dataclass
class Lease:
    client: Any  # mlflow.tracking.MlflowClient
    name: str  # the registered model the lease protects
    generation: int
    owner: str
    expires_at: float  # wall clock, for waiters on other hosts
    ttl_s: float
    acquired: float = field(default_factory=time.monotonic)  # the holder's own clock

    @property
    def model_name(self) -> str:
        return lease_name(self.name, self.generation)

    def still_held(self) -> bool:
        if time.monotonic() - self.acquired >= HOLDER_SHARE * self.ttl_s:
            return False
        newest = _newest(self.client, self.name)
        return newest is not None and newest[0] == self.generation

    def fence(self) -> None:
        """Check right before one registry write; raises LeaseLost when this holder may no longer write."""
        if not self.still_held():
            raise LeaseLost(f"lease generation {self.generation} expired or superseded")
        written = self.client.get_registered_model(self.name).tags.get(FENCE_TAG)
        if written is not None and int(written) > self.generation:
            raise LeaseLost(f"generation {written} wrote after this lease (generation {self.generation})")
        if written != str(self.generation):
            self.client.set_registered_model_tag(self.name, FENCE_TAG, str(self.generation))


def lease_name(name: str, generation: int) -> str:
    return f"{name}.lease.{generation:06d}"


def _newest(client, name: str) -> tuple[int, dict[str, str]] | None:
    found = client.search_registered_models(filter_string=f"name LIKE '{name}.lease.%'")
    leases = [(int(m.name.rsplit(".", 1)[1]), dict(m.tags)) for m in found if m.name.rsplit(".", 1)[1].isdigit()]
    return max(leases, key=lambda g: g[0]) if leases else None


def _free(tags: dict[str, str]) -> bool:
    return tags.get("released") == "true" or float(tags.get("expires_at", "0")) + SKEW_MARGIN_S <= time.time()


def _already_exists(e: Exception) -> bool:
    return "RESOURCE_ALREADY_EXISTS" in str(getattr(e, "error_code", "")) or "already exists" in str(e)


def acquire(client, name: str, ttl_s: float, wait_s: float) -> Lease:
    """Wait (at most ``wait_s``) for the newest lease to be released or expired, then win the next one."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.time() + wait_s
    while True:
        newest = _newest(client, name)
        if newest is None or _free(newest[1]):
            generation = newest[0] + 1 if newest else 0
            expires_at = time.time() + ttl_s
            tags = {TAG: "true", "owner": owner, "expires_at": f"{expires_at:.3f}", "released": "false"}
            try:
                client.create_registered_model(
                    lease_name(name, generation), tags=tags, description=f"kdflow promotion lease of {name}"
                )
                return Lease(client, name, generation, owner, expires_at, ttl_s)
            except Exception as e:  # noqa: BLE001 - MlflowException; another promoter won this generation
                if not _already_exists(e):
                    raise
        if time.time() >= deadline:
            holder = newest[1].get("owner", "?") if newest else "?"
            raise TrackingError(
                "gate.promotion_lease_wait_s",
                f"the promotion lease of '{name}' is held by {holder}",
                "wait for that promotion to finish (a killed one expires after "
                "gate.promotion_lease_s) or raise gate.promotion_lease_wait_s",
            )
        time.sleep(0.2)


def release(lease: Lease) -> None:
    """Mark the lease released and drop the generations before it (they can no longer matter)."""
    lease.client.set_registered_model_tag(lease.model_name, "released", "true")
    for generation in range(max(0, lease.generation - 3), lease.generation):
        try:
            lease.client.delete_registered_model(lease_name(lease.name, generation))
        except Exception:  # noqa: BLE001 - already gone
            pass


@contextmanager
def held(client, name: str, ttl_s: float, wait_s: float) -> Iterator[Lease]:
    lease = acquire(client, name, ttl_s, wait_s)
    try:
        yield lease
    finally:
        release(lease)
