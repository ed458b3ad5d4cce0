"""What a job asks Ray for: an accelerator per Train worker, extraction actors, task slots,
concurrent trials.

Every request is explicit configuration. An autoscaler adds only what is asked for: a job
that decided GPU use from ``ray.cluster_resources()`` when it started would, on a cluster
that starts with no GPU node (every shipped recipe does), ask for none and never get one.
So the ``gpu`` profile asks for accelerators whether or not any exist yet, and the
accelerator's resource name is configurable (``GPU``, or a custom resource such as the one
the autoscaling test's fake nodes carry).

``None`` sizes are *auto*: the laptop's behaviour, sized from the CPUs of a Ray this
process started itself (a local, fixed-size Ray). Joined to a cluster through an address,
auto sizes are 1: there, ask explicitly (``--set resources.max_concurrent_trials=8``).

The runner makes the job's :class:`Resources` current (:func:`use`) in the driver and in
every trial process, so the shared layers (Train harness, feature extraction, MeDS partial
memories, ALSUV searches) read one policy instead of each probing the cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from raylab.config import require

# Torch threads per CPU extraction actor where this process cannot see the nodes' CPUs (joined
# to a cluster); on a Ray it started, see extraction_threads (each reserves one CPU, see
# features/extract.py).
THREADS_PER_ACTOR = 2


@dataclass(frozen=True)
class Resources:
    accelerator: str = "GPU"
    accelerators_per_train_worker: float = 0.0
    extraction_actors: int | None = None
    accelerators_per_extraction_actor: float = 0.0
    task_slots: int | None = None  # parallel MeDS partial-memory / LOF tasks
    accelerators_per_task: float = 0.0  # MeDS partial-memory and ALSUV latent-search tasks
    max_concurrent_trials: int | None = None

    def __post_init__(self) -> None:
        require(bool(self.accelerator), "accelerator", "must name a Ray resource, e.g. GPU")
        for key in ("accelerators_per_train_worker", "accelerators_per_extraction_actor", "accelerators_per_task"):
            require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        for key in ("extraction_actors", "task_slots", "max_concurrent_trials"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, f"must be >= 1 or null (auto), got {value}")

    @property
    def uses_accelerator(self) -> bool:
        return (
            max(self.accelerators_per_train_worker, self.accelerators_per_extraction_actor, self.accelerators_per_task)
            > 0
        )

    def ray_options(self, accelerators: float, cpus: float | None = None) -> dict[str, Any]:
        """``.options(...)`` / ``map_batches(...)`` keywords asking for ``accelerators`` of this kind."""
        options: dict[str, Any] = {} if cpus is None else {"num_cpus": cpus}
        if accelerators > 0:
            if self.accelerator == "GPU":
                options["num_gpus"] = accelerators
            else:
                options["resources"] = {self.accelerator: accelerators}
        return options

    def extraction_pool(self) -> int:
        if self.extraction_actors is not None:
            return self.extraction_actors
        # On CPUs each actor reserves one CPU but runs THREADS_PER_ACTOR torch threads, so half
        # the cores stay free for the read and decode tasks that feed the actors.
        return max(1, local_cpus() // THREADS_PER_ACTOR)

    def parallel_tasks(self) -> int:
        return self.task_slots if self.task_slots is not None else local_cpus()

    def concurrent_trials(self, cpus_per_trial: float) -> int:
        """``max_concurrent_trials``, else as many trials as the local CPUs hold at ``cpus_per_trial`` each."""
        if self.max_concurrent_trials is not None:
            return self.max_concurrent_trials
        return max(1, int(local_cpus() // max(cpus_per_trial, 1e-9)))


def gpu_profile(accelerator: str = "GPU", workers: int = 1) -> Resources:
    """One accelerator per Train worker, extraction actor and search task; ``workers`` of each at once."""
    return Resources(
        accelerator=accelerator,
        accelerators_per_train_worker=1.0,
        extraction_actors=workers,
        accelerators_per_extraction_actor=1.0,
        task_slots=workers,
        accelerators_per_task=1.0,
        max_concurrent_trials=workers,
    )


def _started_here():
    """The head node of the Ray this process started, or ``None`` (not started, or joined)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None) if ray.is_initialized() else None
    return node if node is not None and node.head else None


def local_cpus() -> int:
    """CPUs of the Ray this process started (what ``ray.init`` was given), 1 when joined to a cluster."""
    import ray

    if not ray.is_initialized():
        return os.cpu_count() or 1
    node = _started_here()
    if node is None:
        return 1
    return int(node._ray_params.num_cpus or os.cpu_count() or 1)


def started_local_ray() -> bool:
    """Whether this process started the Ray it is connected to (a local, fixed-size Ray)."""
    return _started_here() is not None


def extraction_threads(workers: int) -> int:
    """Torch threads of each of ``workers`` CPU feature extractors: the CPUs each effectively has.

    On a Ray this process started, its CPUs shared out (2 CPUs, 1 worker: 2 threads; 16 CPUs,
    the default 8 workers: 2 each; 16 CPUs, 16 workers: 1). Joined to a cluster, whose
    nodes this process cannot see, ``THREADS_PER_ACTOR``.
    """
    if not started_local_ray():
        return THREADS_PER_ACTOR
    return max(1, local_cpus() // max(workers, 1))


def extraction_actor_cpus() -> float:
    """CPUs each feature-extraction actor reserves.

    One, except on a one-CPU Ray this process started: there Ray Data's file listing, read
    and decode tasks each need the whole CPU, so an actor holding any of it would wait
    forever for the batches they feed it. The actor then reserves nothing and shares the CPU.
    """
    return 0.0 if started_local_ray() and local_cpus() < 2 else 1.0


def local_shortfall(cpus_at_once: float) -> str | None:
    """Why a trial needing ``cpus_at_once`` CPUs together could never start on the local Ray, or ``None``.

    Only for a Ray this process started: a cluster's autoscaler adds nodes for what is asked.
    """
    if not started_local_ray() or cpus_at_once <= local_cpus() + 1e-9:
        return None
    return f"it asks for {cpus_at_once:g} CPUs at once but the local Ray has {local_cpus()}, so it would wait forever"


_CURRENT = Resources()


def use(resources: Resources) -> None:
    """Make ``resources`` this process's policy (the runner calls it in the driver and in each trial)."""
    global _CURRENT
    _CURRENT = resources


def current() -> Resources:
    return _CURRENT
