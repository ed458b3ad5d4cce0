"""GPU check: the CUDA code paths of raylab give the CPU's answers, and how much faster.

For whoever has an NVIDIA GPU (never run in CI; CI has none). On one GPU, in at most about
10 minutes (``--quick``: about 2), it checks and times, GPU against CPU in one process:

1. faiss: ``MemoryBank`` flat L2 index on the GPU vs on the CPU, same neighbours
   (equal indices, or equal distances where two points tie).
2. Coreset: ``greedy_coreset`` (PatchCore's greedy k-center) on a CUDA tensor vs a CPU one,
   same picks (or, if float rounding swaps a near-tie, where and the coverage radii).
3. Ray Train with GPU workers: ``TrainSpec(use_gpu=True)`` / ``fit`` on a local Ray with the
   GPU; the worker must see CUDA through Ray Train and train a small model there.
4. MeDS stage 1: ``bootstrap_memory_scores`` (partial memories) with ``device="gpu"`` vs
   ``"cpu"``, same scores.
5. One training step of each trained method (MeDS distillation, CKD, DCAE, NNGuide's
   classifier), built with the methods' own networks, losses and update code, on CUDA vs CPU.

Prints one line per check: PASS / FAIL, what was compared, and throughputs with the ratio
GPU/CPU. Exit code 0 when every check passed, 1 when one failed, and 0 with the message
``no CUDA device: nothing to check`` when torch sees no CUDA device.

Run: ``python benchmarks/gpu_check.py [--quick]`` from the repository root, with the GPU
stack installed (``pip install -e '.[gpu]'``; see cluster/README.md for driver and CUDA).
Put its output in cluster/README.md ("Running jobs on a cluster": GPU check) with the GPU's name.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

BUDGET_S = 570.0  # stop starting new checks after this; leaves time to tear Ray down


@dataclass(frozen=True)
class Sizes:
    bank: int  # faiss: stored vectors
    queries: int
    dim: int
    coreset_points: int
    coreset_picks: int
    meds_images: int
    meds_patches: int
    meds_bootstraps: int
    train_steps: int  # timed steps per method and device

    @staticmethod
    def of(quick: bool) -> Sizes:
        if quick:
            return Sizes(50_000, 2_000, 128, 30_000, 600, 40, 64, 10, 3)
        return Sizes(400_000, 10_000, 128, 200_000, 4_000, 120, 196, 40, 10)


def cuda_seconds(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls (after one warm-up call), synchronising CUDA."""
    import torch

    out = fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def rates(label: str, unit: str, count: float, cpu_s: float, gpu_s: float) -> str:
    cpu, gpu = count / cpu_s, count / gpu_s
    return f"{label}: CPU {cpu:,.1f} {unit}/s, GPU {gpu:,.1f} {unit}/s, GPU/CPU {gpu / cpu:.1f}x"


# ---------------------------------------------------------------- checks ---------------


def check_faiss(sizes: Sizes) -> tuple[bool, str]:
    from raylab.memory import MemoryBank
    from raylab.memory.bank import gpu_available

    if not gpu_available():
        return False, "faiss cannot use the GPU (faiss-cpu installed?): install raylab[gpu] (faiss-gpu)"
    rng = np.random.default_rng(0)
    stored = rng.standard_normal((sizes.bank, sizes.dim)).astype(np.float32)
    queries = rng.standard_normal((sizes.queries, sizes.dim)).astype(np.float32)
    k = 5
    results = {}
    times = {}
    for device in ("cpu", "gpu"):
        bank = MemoryBank(sizes.dim, device=device)
        bank.add(stored)
        assert bank.device == device
        times[device], results[device] = cuda_seconds(lambda bank=bank: bank.search(queries, k=k), repeats=2)
    (d_cpu, i_cpu), (d_gpu, i_gpu) = results["cpu"], results["gpu"]
    differ = i_cpu != i_gpu
    ties = np.isclose(d_cpu[differ], d_gpu[differ], rtol=1e-4, atol=1e-4)
    same = bool(ties.all()) and np.allclose(d_cpu, d_gpu, rtol=1e-4, atol=1e-3)
    detail = (
        f"{sizes.queries} queries x {sizes.bank} x {sizes.dim}, k={k}: "
        f"{int(differ.sum())} of {differ.size} neighbour ids differ ({int((~ties).sum())} not ties), "
        f"max |d| diff {float(np.abs(d_cpu - d_gpu).max()):.2e}; "
        + rates("search", "queries", sizes.queries, times["cpu"], times["gpu"])
    )
    return same, detail


def check_coreset(sizes: Sizes) -> tuple[bool, str]:
    import torch

    from raylab.memory import coverage_radius, greedy_coreset

    rng = np.random.default_rng(1)
    # patch-embedding-like: a decaying spectrum, clipped at zero (post-ReLU)
    scale = (1.0 / np.sqrt(np.arange(1, 153))).astype(np.float32)
    features = np.maximum(rng.standard_normal((sizes.coreset_points, 152)).astype(np.float32) * scale, 0)
    cpu_features, gpu_features = torch.from_numpy(features), torch.from_numpy(features).cuda()
    select = dict(n_select=sizes.coreset_picks, method="approximate", projection_dim=128, seed=0)
    cpu_s, cpu_picks = cuda_seconds(lambda: greedy_coreset(cpu_features, **select))
    gpu_s, gpu_picks = cuda_seconds(lambda: greedy_coreset(gpu_features, **select))
    speed = rates("selection", "picks", sizes.coreset_picks, cpu_s, gpu_s)
    if np.array_equal(cpu_picks, gpu_picks):
        return True, f"{sizes.coreset_picks} of {sizes.coreset_points} points, identical picks; {speed}"
    first = int(np.argmax(cpu_picks != gpu_picks))
    radius_cpu = float(coverage_radius(features, cpu_picks))
    radius_gpu = float(coverage_radius(features, gpu_picks))
    close = abs(radius_cpu - radius_gpu) <= 1e-2 * radius_cpu
    return close, (
        f"picks differ from pick {first} of {sizes.coreset_picks} (float rounding of a near-tie?); "
        f"coverage radius CPU {radius_cpu:.5f} GPU {radius_gpu:.5f}; {speed}"
    )


def _gpu_train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from raylab.train import prepare

    device = ray.train.torch.get_device()
    torch.manual_seed(0)
    model = prepare(torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 10)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(1024, 512, device=device)
    y = torch.randint(0, 10, (1024,), device=device)
    steps = config["steps"]
    start = time.perf_counter()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    ray.train.report(
        {
            "device": str(device),
            "parameter_device": str(next(model.parameters()).device),
            "cuda_available": torch.cuda.is_available(),
            "steps_per_s": steps / (time.perf_counter() - start),
            "loss": float(loss),
        }
    )


def check_ray_train(sizes: Sizes) -> tuple[bool, str]:
    import ray

    from raylab.train import TrainSpec, fit

    ray.init(address="local", num_gpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    gpus = ray.cluster_resources().get("GPU", 0)
    with tempfile.TemporaryDirectory(prefix="raylab-gpu-check-") as storage:
        spec = TrainSpec(name="gpu_check", num_workers=1, use_gpu=True, storage_path=storage)
        result = fit(_gpu_train_loop, {"steps": 50 * sizes.train_steps}, spec)
    metrics = result.metrics
    ok = (
        metrics["device"].startswith("cuda")
        and metrics["parameter_device"].startswith("cuda")
        and np.isfinite(metrics["loss"])
    )
    return ok, (
        f"Ray sees {gpus:g} GPU; Train worker device {metrics['device']} (parameters on "
        f"{metrics['parameter_device']}), {metrics['steps_per_s']:,.1f} steps/s of a 1024 x 512 MLP"
    )


def check_meds_stage1(sizes: Sizes) -> tuple[bool, str]:
    from raylab.methods.meds.partial_memory import bootstrap_memory_scores, l2_normalise

    rng = np.random.default_rng(2)
    features = l2_normalise(rng.standard_normal((sizes.meds_images, sizes.meds_patches, 152)).astype(np.float32))
    run = dict(bootstraps=sizes.meds_bootstraps, rho=0.1, seed=0, use_ray=False)
    cpu_s, cpu_scores = cuda_seconds(lambda: bootstrap_memory_scores(features, device="cpu", **run))
    gpu_s, gpu_scores = cuda_seconds(lambda: bootstrap_memory_scores(features, device="gpu", **run))
    diff = float(np.abs(cpu_scores - gpu_scores).max())
    ok = np.allclose(cpu_scores, gpu_scores, rtol=1e-4, atol=1e-5)
    return ok, (
        f"{sizes.meds_images} images x {sizes.meds_patches} patches, {sizes.meds_bootstraps} partial memories: "
        f"max |score| diff {diff:.2e}; " + rates("stage 1", "bootstraps", sizes.meds_bootstraps, cpu_s, gpu_s)
    )


# -------------------------------------------------- one training step per method ----------


def _meds_step(device: str) -> Callable[[], float]:
    import torch

    from raylab.methods.meds.config import MeDSConfig
    from raylab.methods.meds.losses import distillation_loss
    from raylab.methods.meds.method import network_kwargs
    from raylab.methods.meds.model import token_distance
    from raylab.methods.meds.training import _step, build_network
    from raylab.train.optim import StableAdamW

    config = MeDSConfig()
    d = config.distillation
    in_dim = max(end for group in config.groups for _, end in group)
    torch.manual_seed(0)
    network = build_network(network_kwargs(config, in_dim)).to(device).train()
    optimizer = StableAdamW(network.parameters(), lr=d.lr, weight_decay=d.weight_decay)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(d.batch_size, 256, in_dim, generator=generator).to(device)  # DINOv2 ViT-B/14 at 224 px
    targets = torch.rand(d.batch_size, 256, generator=generator).to(device)

    def step() -> float:
        encoded, decoded = network(tokens)
        return _step(
            distillation_loss(token_distance(encoded, decoded), targets, d.loss_weight, d.loss),
            network,
            optimizer,
            d.grad_clip,
        )

    return step


def _ckd_step(device: str) -> Callable[[], float]:
    import torch

    from raylab.methods.ckd.config import CKDConfig, variant
    from raylab.methods.ckd.losses import ckd_loss
    from raylab.methods.ckd.model import build_ckd_net

    ckd, chosen, classes, batch = CKDConfig(), variant("ckd"), 1000, 64
    net = build_ckd_net(ckd.network, classes, chosen, seed=0).to(device).train()
    train = ckd.train
    optimizer = torch.optim.SGD(net.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    generator = torch.Generator().manual_seed(0)
    faces = torch.randn(batch, 3, *ckd.network.face_size, generator=generator).to(device)
    periocular = torch.randn(batch, 3, *ckd.network.periocular_size, generator=generator).to(device)
    labels = torch.randint(0, classes, (batch,), generator=generator).to(device)

    def step() -> float:
        out = net(faces, periocular)
        terms = ckd_loss(out.face_logits, out.periocular_logits, labels, chosen, train.tau)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        return float(terms["loss"].detach())

    return step


def _dcae_step(device: str) -> Callable[[], float]:
    import torch

    from raylab.methods.dcae.config import TRAINED, LossWeights, NetworkConfig, TrainConfig
    from raylab.methods.dcae.training import VariantTrainer, build_model

    network, train = NetworkConfig(), TrainConfig()
    torch.manual_seed(0)
    model = build_model(network, TRAINED["dcae"], channels=1, image_size=32).to(device)
    trainer = VariantTrainer(model, LossWeights(), train)
    trainer.wrap(lambda module: module, torch.device(device))
    trainer.train()
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(train.batch_size, 1, 32, 32, generator=generator) * 2 - 1).to(device)
    prior = (torch.rand(train.batch_size, network.latent_dim, generator=generator) * 2 - 1).to(device)
    return lambda: trainer.step(images, prior)["loss"]


def _nnguide_step(device: str) -> Callable[[], float]:
    import torch
    import torch.nn.functional as F

    from raylab.methods.nnguide.config import TrainConfig
    from raylab.methods.nnguide.training import random_translate
    from raylab.tasks.ood.classifiers import build_classifier
    from raylab.tasks.ood.config import ClassifierConfig

    config, train = ClassifierConfig(), TrainConfig()
    torch.manual_seed(0)
    model = build_classifier(config).to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=True
    )
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(train.batch_size, 3, 32, 32, generator=generator)
    targets = torch.randint(0, config.num_classes, (train.batch_size,), generator=generator).to(device)

    def step() -> float:
        batch = random_translate(pixels, train.pad, torch.Generator().manual_seed(1)).to(device)
        loss = F.cross_entropy(model(batch), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


TRAINED_METHODS: dict[str, Callable[[str], Callable[[], float]]] = {
    "meds": _meds_step,
    "ckd": _ckd_step,
    "dcae": _dcae_step,
    "nnguide": _nnguide_step,
}


def check_training_step(name: str, sizes: Sizes) -> tuple[bool, str]:
    import torch

    first_loss, seconds = {}, {}
    for device in ("cpu", "cuda"):
        step = TRAINED_METHODS[name](device)
        first_loss[device] = step()  # the first update, from the same weights and batch
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(sizes.train_steps):
            loss = step()
        torch.cuda.synchronize()
        seconds[device] = time.perf_counter() - start
        if not np.isfinite(loss):
            return False, f"non-finite loss on {device}"
    same = bool(np.isclose(first_loss["cpu"], first_loss["cuda"], rtol=1e-2, atol=1e-4))
    return same, (
        f"first-step loss CPU {first_loss['cpu']:.5f} CUDA {first_loss['cuda']:.5f}; "
        + rates("training", "steps", sizes.train_steps, seconds["cpu"], seconds["cuda"])
    )


# ------------------------------------------------------------------ main ---------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False  # compare like with like (float32 on both)
    torch.backends.cudnn.allow_tf32 = False
    sizes = Sizes.of(args.quick)
    print(
        f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
        f"CPU threads {torch.get_num_threads()}",
        flush=True,
    )
    checks: list[tuple[str, Callable[[], tuple[bool, str]]]] = [
        ("faiss GPU index", lambda: check_faiss(sizes)),
        ("coreset on CUDA", lambda: check_coreset(sizes)),
        ("Ray Train GPU workers", lambda: check_ray_train(sizes)),
        ("MeDS stage 1", lambda: check_meds_stage1(sizes)),
        *[(f"{name} training step", lambda name=name: check_training_step(name, sizes)) for name in TRAINED_METHODS],
    ]
    start = time.perf_counter()
    failed = []
    for name, check in checks:
        if time.perf_counter() - start > BUDGET_S:
            print(f"SKIP {name}: over the {BUDGET_S:.0f} s budget", flush=True)
            failed.append(name)
            continue
        began = time.perf_counter()
        try:
            ok, detail = check()
        except Exception as error:  # noqa: BLE001 - report every check, then fail
            ok, detail = False, f"{type(error).__name__}: {error}"
            traceback.print_exc()
        print(f"{'PASS' if ok else 'FAIL'} {name} ({time.perf_counter() - began:.1f} s): {detail}", flush=True)
        if not ok:
            failed.append(name)
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001
        pass
    print(
        f"{len(checks) - len(failed)} of {len(checks)} checks passed in {time.perf_counter() - start:.0f} s"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
