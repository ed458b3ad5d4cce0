"""ALSUV's generator gate: can a StyleGAN2 trained here render the held-out faces well enough
for the real encoders, before any attack is compared?

For each generator variant, the job's own code trains it on ORL's training identities (Ray
Train, cached by data and config), inverts the targets the job attacks (seed 0's starts,
the job's inversion tasks: pixel MSE through the attack's renderer) and judges the
inversions exactly as the job judges its ``pixel_inversion`` row: MobileFaceNet and dlib,
pretrained elsewhere and never trained here, type-1 success at FAR 1e-2 against thresholds
from the held-out people's own pairs. The job's gate is MobileFaceNet type-1 >= 0.5. Beside
each variant, the targets themselves on the same canvas: what a perfect generator would get.

A variant is spelled ``SIZE[+da][@STEPS]``: the output side in pixels (the canvas follows
it), ``+da`` for DiffAugment (colour, translation, cutout) on everything the discriminator
sees, and the training steps (batch 16; default ``--steps``). ``32+da@12000`` is the CPU
size the job trains (``32@1200`` the one before it). A larger size scales the CPU size's
width table with it (``channel_base``), so its last block has the same 32 channels (64 px:
64 channels at 4-32 px, 32 at 64 px).

Run: ``python benchmarks/alsuv_generator_gate.py --data-root ../shared/data --weights-root
../shared/weights --variants 32@1200,64+da@2400`` (the first training of a variant takes
most of the time; later runs reuse it).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time
from dataclasses import replace

VARIANT = re.compile(r"^(?P<size>\d+)(?P<da>\+da)?(?:@(?P<steps>\d+))?$")
GATE_ENCODER, GATE_FAR, GATE = "mobilefacenet", "far1e-2", 0.5


@dataclasses.dataclass(frozen=True)
class Variant:
    size: int
    diffaugment: bool
    steps: int

    @property
    def name(self) -> str:
        return f"{self.size}{'+da' if self.diffaugment else ''}@{self.steps}"


def parse_variants(text: str, default_steps: int) -> list[Variant]:
    variants = []
    for part in text.split(","):
        match = VARIANT.match(part.strip())
        if match is None:
            raise SystemExit(f"--variants: {part!r} is not SIZE[+da][@STEPS], e.g. 64+da@2400")
        steps = int(match["steps"]) if match["steps"] else default_steps
        variants.append(Variant(int(match["size"]), bool(match["da"]), steps))
    return variants


def variant_config(variant: Variant):
    """The job's CPU config with this variant's generator and canvas."""
    from raylab.methods.alsuv.config import CanvasConfig, cpu_config, cpu_generator
    from raylab.methods.alsuv.training.diffaugment import POLICIES

    config = cpu_config()
    base = cpu_generator()
    model = replace(base, size=variant.size, channel_base=base.channel_base * variant.size // base.size)
    train = replace(
        config.generator.train,
        iterations=variant.steps,
        diffaugment=POLICIES if variant.diffaugment else (),
    )
    return replace(
        config,
        data=replace(config.data, canvas=CanvasConfig(size=variant.size)),
        generator=replace(config.generator, model=model, train=train),
    )


def measure(variant: Variant, data_root: str, weights_root: str, seed: int) -> dict[str, float]:
    import numpy as np

    from raylab.methods.alsuv.experiment import (
        ModelsLog,
        evaluate_seed,
        held_out_references,
        held_out_rows,
        prepare_renderer,
    )
    from raylab.methods.alsuv.faces import choose_targets, load_protocol
    from raylab.methods.alsuv.inversion import invert_targets
    from raylab.methods.alsuv.model.encoders import make_encoder

    config = variant_config(variant)
    protocol = load_protocol(config.data, data_root)
    started = time.perf_counter()
    renderer = prepare_renderer(config, protocol, weights_root, ModelsLog({}, "", None))
    generator_s = time.perf_counter() - started
    encoders = {
        name: make_encoder(spec, name=name, weights_root=weights_root)
        for name, spec in config.encoders.unseen.items()
        if name in ("mobilefacenet", "dlib_resnet")
    }
    references = held_out_references(encoders, protocol, config)
    targets, _ = choose_targets(protocol, config.data.targets_per_identity)
    rows = held_out_rows(protocol, targets)
    started = time.perf_counter()
    inversions = invert_targets(targets.images, renderer, config.inversion, seed=seed)
    inversion_s = time.perf_counter() - started
    canvases = np.stack([inv.canvas for inv in inversions])
    judged = evaluate_seed(
        {"pixel_inversion": canvases, "targets": np.asarray(targets.images)}, references, encoders, rows, config
    )
    out = {
        "generator_s": generator_s,
        "inversion_s": inversion_s,
        "pixel_mse": float(np.mean([inv.pixel_mse for inv in inversions])),
        "targets": float(len(rows)),
    }
    for method, by_encoder in judged.items():
        for encoder, metrics in by_encoder.items():
            out[f"{method}/{encoder}"] = metrics[f"type1_{GATE_FAR}"]
    for name, ref in references.items():
        out[f"tar/{name}"] = ref.verification[f"tar_{GATE_FAR}"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--weights-root", required=True)
    parser.add_argument("--variants", default="32@1200,64+da@2400")
    parser.add_argument("--steps", type=int, default=1200, help="training steps of a variant without @STEPS")
    parser.add_argument("--seed", type=int, default=0, help="the inversion's starts (the job's seed)")
    args = parser.parse_args()
    variants = parse_variants(args.variants, args.steps)
    for variant in variants:
        variant_config(variant)  # every variant's config is valid before Ray starts

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(
        f"variant | generator s | inversion s | pixel MSE | {GATE_ENCODER} type-1 @ {GATE_FAR} "
        f"(targets themselves) | dlib type-1 (targets) | gate"
    )
    for variant in variants:
        m = measure(variant, args.data_root, args.weights_root, args.seed)
        passed = m[f"pixel_inversion/{GATE_ENCODER}"] >= GATE
        print(
            f"{variant.name} | {m['generator_s']:.0f} | {m['inversion_s']:.0f} | {m['pixel_mse']:.4f} | "
            f"{m['pixel_inversion/mobilefacenet']:.3f} ({m['targets/mobilefacenet']:.3f}) | "
            f"{m['pixel_inversion/dlib_resnet']:.3f} ({m['targets/dlib_resnet']:.3f}) | "
            f"{'passes' if passed else 'fails'} ({m['targets']:.0f} targets; held-out TAR @ {GATE_FAR}: "
            f"{GATE_ENCODER} {m['tar/mobilefacenet']:.3f}, dlib {m['tar/dlib_resnet']:.3f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
