"""Placement groups that outlived the job that made them, released before a job on a cluster asks for its own.

Ray removes a placement group when its lifetime ends: for a non-detached group, once its
creator job has ended and its creator actor (if an actor made it) is dead. A race in Ray
breaks that rule when a job is stopped while a Ray Train run is starting its workers
(``ray job stop``, then submitting the same sweep again to resume it): the driver dies, Ray
marks the job finished and removes the job's groups, the Train controller, not yet killed,
sees its workers cancelled and retries with a *new* worker group placement group, registered
after the job's clean-up and never removed. Its bundles (two workers' CPUs, say) stay
reserved for ever, and the resubmitted job's trial waits for them without a word: a stopped
sweep that hangs when resumed.

So a job that joins a running cluster first releases every group that Ray's own rule says
should be gone (not detached, creator job ended, creator actor dead or none) and says which.
A group made by a live detached actor (Ray Serve's replicas, for instance) has a live
creator and is kept, whatever job made that actor; a live job's groups are kept.

The group's creator actor and the jobs' states are read from the GCS tables through
``ray._private.state``: Ray's public state API lists a group's creator job but not its
creator actor, and needs a dashboard.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class OrphanedGroup:
    placement_group_id: str
    creator_job_id: str
    bundles: tuple[dict[str, float], ...]

    def describe(self) -> str:
        shapes = ", ".join(str(bundle) for bundle in self.bundles)
        return f"placement group {self.placement_group_id} ({shapes}) of finished job {self.creator_job_id}"


def finished_jobs() -> set[str]:
    """The hex ids of the connected cluster's jobs whose driver has exited."""
    from ray._private.state import state

    return {job["JobID"] for job in state.job_table() if job["IsDead"]}


def orphaned_placement_groups() -> list[OrphanedGroup]:
    """The connected cluster's groups whose lifetime, by Ray's rule, has already ended."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    dead_jobs = finished_jobs()
    found = []
    for raw in accessor.get_placement_group_table():
        group = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if group.state == gcs_pb2.PlacementGroupTableData.REMOVED or group.is_detached:
            continue
        if group.creator_job_id.hex() not in dead_jobs or _actor_alive(accessor, group.creator_actor_id):
            continue
        bundles = tuple(
            {name: float(amount) for name, amount in bundle.unit_resources.items()} for bundle in group.bundles
        )
        found.append(OrphanedGroup(group.placement_group_id.hex(), group.creator_job_id.hex(), bundles))
    return found


def _actor_alive(accessor, actor_id: bytes) -> bool:
    """Whether the group's creator actor can still use it (a group a driver made has none)."""
    import ray
    from ray.core.generated import gcs_pb2

    if not actor_id or ray.ActorID(actor_id).is_nil():
        return False
    raw = accessor.get_actor_info(ray.ActorID(actor_id))
    return raw is not None and gcs_pb2.ActorTableData.FromString(raw).state != gcs_pb2.ActorTableData.DEAD


def release_orphaned_placement_groups() -> list[OrphanedGroup]:
    """Remove the groups :func:`orphaned_placement_groups` finds, naming each on stderr."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    released = orphaned_placement_groups()
    for group in released:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group.placement_group_id))))
        print(f"raylab: released {group.describe()}: Ray should have removed it when that job ended", file=sys.stderr)
    return released
