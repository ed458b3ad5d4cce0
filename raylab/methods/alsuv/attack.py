"""The ALSUV attack on Ray: parallel latent searches per target, then selection per method.

Every target's N searches are cut into tasks of ``searches_per_task`` (batched inside the
task; one GPU per task where the cluster has GPUs), all targets' tasks are submitted at
once so Ray spreads them over the cluster, and one selection task per target gathers its
searches and picks the output of each method:

* ``alsuv``: averaged latents, unsupervised validation with a pseudo target: the top-k
  candidates by source cosine are embedded by the validation encoder, their mean is the
  pseudo target, and the candidate closest to it (cosine) is the output (Sec. 3.3;
  ``test_utils._get_top1_sample`` of the official code, which averages the validation
  embeddings as they come out of the encoder);
* ``no_averaging``: the same selection over the last iterates;
* ``best_by_source``: averaged latents, the candidate with the highest source cosine;
* ``single_search``: the plain baseline: one search (the first), its last iterate.

The four share the same searches: searches are independent (see :mod:`.search`), so a
method that uses fewer of them, or another iterate of them, gets exactly what running it
alone would give. Only the source encoder (searches) and the validation encoder (selection)
travel to the tasks; evaluation encoders are never sent there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from raylab.methods.alsuv.config import AttackConfig
from raylab.methods.alsuv.model.encoders import FaceEncoder
from raylab.methods.alsuv.search import FaceRenderer, SearchBatch, check_embedding, latent_search
from raylab.resources import current as current_resources

METHODS = ("alsuv", "single_search", "no_averaging", "best_by_source")


def pseudo_target_select(
    canvas: Tensor, source_cosine: Tensor, validation: FaceEncoder, top_k: int, *, flip: bool = True
) -> int:
    """Index of the candidate closest (cosine, validation encoder) to the top-k pseudo target."""
    if len(canvas) != len(source_cosine) or len(canvas) == 0:
        raise ValueError(
            f"need one source cosine per candidate, got {len(canvas)} candidates and {len(source_cosine)} cosines"
        )
    k = min(top_k, len(canvas))
    top = torch.argsort(source_cosine, descending=True, stable=True)[:k]
    with torch.no_grad():
        embeddings = validation(canvas[top], flip=flip)
    pseudo = embeddings.mean(0, keepdim=True)
    closeness = F.cosine_similarity(embeddings, pseudo, dim=1)
    return int(top[int(torch.argmax(closeness))])


@dataclass
class Selection:
    """One method's output for one target."""

    canvas: np.ndarray  # (3, s, s) in [-1, 1]
    search_index: int
    source_cosine: float


def select_outputs(batch: SearchBatch, validation: FaceEncoder, config: AttackConfig) -> dict[str, Selection]:
    """Every method's output among one target's searches."""
    chosen = {
        "alsuv": (
            "averaged",
            pseudo_target_select(
                batch.canvas_averaged, batch.cosine_averaged, validation, config.top_k, flip=config.flip
            ),
        ),
        "single_search": ("last", 0),
        "no_averaging": (
            "last",
            pseudo_target_select(batch.canvas_last, batch.cosine_last, validation, config.top_k, flip=config.flip),
        ),
        "best_by_source": ("averaged", int(torch.argmax(batch.cosine_averaged))),
    }
    out = {}
    for method, (which, index) in chosen.items():
        canvas = getattr(batch, f"canvas_{which}")[index]
        cosine = getattr(batch, f"cosine_{which}")[index]
        out[method] = Selection(canvas.cpu().numpy(), index, float(cosine))
    return out


def _device() -> torch.device:
    import ray

    if torch.cuda.is_available() and ray.get_gpu_ids():
        return torch.device("cuda")
    return torch.device("cpu")


def _search_task(
    models: tuple[FaceRenderer, FaceEncoder], target: Tensor, initial_w: Tensor, config: AttackConfig
) -> SearchBatch:
    torch.set_num_threads(1)
    renderer, source = models
    device = _device()
    renderer, source = renderer.to(device), source.to(device)
    batch = latent_search(renderer, source, target.to(device), initial_w.to(device), config)
    return SearchBatch(
        *(
            t.cpu()
            for t in (
                batch.last,
                batch.averaged,
                batch.canvas_last,
                batch.canvas_averaged,
                batch.cosine_last,
                batch.cosine_averaged,
            )
        )
    )


def _select_task(validation: FaceEncoder, config: AttackConfig, *parts: SearchBatch) -> dict:
    torch.set_num_threads(1)
    batch = SearchBatch.concat(list(parts))
    selections = select_outputs(batch, validation, config)
    return {
        "selections": selections,
        "mean_cosine_last": float(batch.cosine_last.mean()),
        "mean_cosine_averaged": float(batch.cosine_averaged.mean()),
        "max_cosine_averaged": float(batch.cosine_averaged.max()),
    }


def run_attack(
    target_embeddings: Tensor,
    renderer: FaceRenderer,
    source: FaceEncoder,
    validation: FaceEncoder,
    config: AttackConfig,
    *,
    seed: int,
    task_cpus: float = 1.0,
) -> list[dict]:
    """Attack every target embedding ``(t, d)``; returns per target the methods' selections.

    The N starting latents are drawn once per ``seed`` and shared by all targets (as the
    official code does). ``task_cpus`` is what each search task reserves (the benchmark
    uses it to allow one or two tasks at a time).
    """
    import ray

    targets = torch.as_tensor(target_embeddings, dtype=torch.float32)
    if targets.ndim != 2 or len(targets) == 0:
        raise ValueError(f"target embeddings must be (t, d) with t >= 1, got shape {tuple(targets.shape)}")
    for i, embedding in enumerate(targets):
        check_embedding(embedding, source.embedding_dim, name=f"target embedding {i}")
    initial = renderer.initial_latents(config.num_searches, seed)
    resources = current_resources()
    search = ray.remote(_search_task).options(**resources.ray_options(resources.accelerators_per_task, cpus=task_cpus))
    select = ray.remote(_select_task).options(num_cpus=task_cpus)
    models_ref = ray.put((renderer, source))
    validation_ref = ray.put(validation)
    pending = []
    for target in targets:
        parts = [
            search.remote(models_ref, target, initial[start : start + config.searches_per_task], config)
            for start in range(0, config.num_searches, config.searches_per_task)
        ]
        pending.append(select.remote(validation_ref, config, *parts))
    return ray.get(pending)
