"""``jobs/alsuv_attack.py``: ALSUV and its ablations on held-out faces, judged on unseen encoders.

Steps (one MLflow parent run, a nested run per stage and per method x seed):

1. the identity-disjoint face protocol (:mod:`.faces`): training identities for the
   generator and the encoders, held-out identities for targets and thresholds;
2. the generator: a user's rosinality-layout StyleGAN2 checkpoint, or a StyleGAN2 trained
   here with Ray Train (cached; its ``generator.pt`` and a sample grid are artifacts);
3. the encoders: source and validation (trained here with margin losses, cached) and the
   unseen ones (the pretrained MobileFaceNet, raylab-trained others) with their thresholds
   from the held-out pairs;
4. per seed, the attack on every target's source template with Ray (:mod:`.attack`), then
   each method's reconstructions embedded by each unseen encoder (:mod:`.evaluate`).

Summary rows: ``method`` in {alsuv, single_search, no_averaging, best_by_source},
``encoder`` (each unseen encoder), ``seed``, metrics ``type1_far1e-2``, ``type1_far1e-3``,
``type2_far1e-2``, ``type2_far1e-3``, ``type1_acc``, ``type2_acc``, ``rank1``,
``rank1_type2``, ``mean_type1_cosine``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from raylab.config import from_mapping
from raylab.jobs import init_ray, job_parser, parse_seeds, summary_row, write_summary
from raylab.methods.alsuv.attack import METHODS, run_attack
from raylab.methods.alsuv.config import AlsuvConfig, cpu_config, quick_config
from raylab.methods.alsuv.encoder_training import train_encoder
from raylab.methods.alsuv.encoders import FaceEncoder, make_encoder
from raylab.methods.alsuv.evaluate import attack_metrics, embed, reference
from raylab.methods.alsuv.faces import FaceProtocol, choose_targets, load_protocol
from raylab.methods.alsuv.gan_training import train_generator
from raylab.methods.alsuv.report import face_grid, generator_samples
from raylab.methods.alsuv.search import FaceRenderer
from raylab.methods.alsuv.stylegan2 import load_rosinality
from raylab.report.tables import aggregate, format_table
from raylab.tracking import tracked_run

JOB = "alsuv_attack"
TABLE_METRICS = ("type1_far1e-2", "type1_far1e-3", "type2_far1e-2", "type2_far1e-3", "rank1")
# Printed beside them: the source (white-box) cosine of the chosen outputs to the template.
PRINTED_METRICS = (*TABLE_METRICS, "source_cosine")
METRICS_HELP = (
    "type1_far1e-2, type1_far1e-3, type2_far1e-2, type2_far1e-3 (attack success rates at the unseen "
    "encoder's FAR thresholds), type1_acc, type2_acc (best-accuracy threshold), rank1, rank1_type2; "
    "rows carry method and encoder"
)


def parser() -> argparse.ArgumentParser:
    parser = job_parser(
        JOB,
        "ALSUV face reconstruction transfer attack: N parallel latent searches per target (Ray tasks) "
        "through a StyleGAN2, averaged latents, unsupervised validation with a pseudo target, and the "
        "single-search / no-averaging / best-by-source ablations, judged on unseen encoders.",
        default_dataset="orl",
        metrics_help=METRICS_HELP,
    )
    parser.add_argument(
        "--weights-root", default=None,
        help="folder holding pretrained weights named in the config (MobileFaceNet, a StyleGAN2 checkpoint); "
        "relative weight paths are resolved against it",
    )
    return parser


def resolve_config(path: str | None, dataset: str) -> AlsuvConfig:
    """The CPU size (``profile: cpu``, the default) or the paper's (``profile: full``), then the YAML keys."""
    values: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise SystemExit(f"{path}: the top level must be a mapping")
        values = dict(loaded)
    profile = values.pop("profile", "cpu")
    if profile not in ("cpu", "full"):
        raise SystemExit(f"{path}: profile must be 'cpu' or 'full', got {profile!r}")
    base = cpu_config() if profile == "cpu" else AlsuvConfig()
    config = from_mapping(AlsuvConfig, values, where=str(path or "config"), base=base)
    if config.data.dataset != dataset:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=dataset))
    return config


def _weights_path(name: str, weights_root: str | None) -> Path:
    path = Path(name)
    return path if path.is_absolute() or weights_root is None else Path(weights_root) / path


def prepare_renderer(config: AlsuvConfig, protocol: FaceProtocol, weights_root: str | None, run) -> FaceRenderer:
    """The generator (loaded or trained here) wrapped with truncation, fixed noise and the face crop."""
    setup = config.generator
    if setup.checkpoint is not None:
        path = _weights_path(setup.checkpoint, weights_root)
        generator, latent_avg = load_rosinality(path)
        run.log_metrics({"generator_loaded": 1.0})
        source = str(path)
    else:
        trained = train_generator(
            protocol.train.images, setup.model, setup.train, mean_latent_samples=config.attack.mean_latent_samples, grayscale=setup.grayscale
        )
        generator, latent_avg = trained.generator, trained.latent_avg
        run.log_metrics({f"gan/{k}": v for k, v in trained.metrics.items()})
        run.log_artifact(trained.path, "generator")
        source = str(trained.path)
    if latent_avg is None:
        latent_avg = generator.mean_latent(config.attack.mean_latent_samples)
    renderer = FaceRenderer(generator, latent_avg, truncation=config.attack.truncation, crop=setup.crop, grayscale=setup.grayscale)
    with tempfile.TemporaryDirectory() as scratch:
        run.log_artifact(generator_samples(renderer, Path(scratch) / "generator_samples.png"))
    run.log_text(f"{source}\n{generator.config}\n", "generator.txt")
    return renderer


def prepare_encoders(config: AlsuvConfig, protocol: FaceProtocol, weights_root: str | None, run) -> dict[str, FaceEncoder]:
    """``source``, ``validation`` and every unseen encoder by name (trained here where needed)."""
    specs = {"source": config.encoders.source, "validation": config.encoders.validation, **config.encoders.unseen}
    clash = {"source", "validation"} & set(config.encoders.unseen)
    if clash:
        raise ValueError(f"unseen encoder names {sorted(clash)} clash with the attack's own encoders")
    encoders = {}
    for name, spec in specs.items():
        state = None
        if spec.weights is None and spec.kind != "mobilefacenet":
            trained = train_encoder(protocol.train.images, protocol.train.identities, spec)
            state = trained.state_dict
            run.log_metrics({f"encoder/{name}/{k}": v for k, v in trained.metrics.items()})
        elif spec.kind != "mobilefacenet":
            state = torch.load(_weights_path(spec.weights, weights_root), map_location="cpu", weights_only=True)
        encoders[name] = make_encoder(spec, name=name, state_dict=state, weights_root=weights_root)
    return encoders


def evaluate_seed(results: list[dict], references: dict, unseen: dict[str, FaceEncoder], target_rows, config: AlsuvConfig) -> dict:
    """``{method: {encoder: metrics}}`` for one seed's attack results."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in METHODS:
        canvas = np.stack([r["selections"][method].canvas for r in results])
        out[method] = {}
        for name, encoder in unseen.items():
            embeddings = embed(encoder, canvas, flip=config.evaluation.flip)
            out[method][name] = attack_metrics(references[name], embeddings, target_rows)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    config = resolve_config(args.config, args.dataset)
    if args.quick:
        config = quick_config(config)
    seeds = parse_seeds(args.seeds) or config.seeds
    init_ray()
    started = time.time()
    params = {"config": config, "quick": args.quick, "seeds": seeds}
    with tracked_run(JOB, f"alsuv-{args.dataset}", params=params, tags={"dataset": args.dataset, "method": "alsuv"}) as parent:
        protocol = load_protocol(config.data, args.data_root)
        parent.log_metrics({f"data/{k}": v for k, v in protocol.counts().items()})
        with tracked_run(JOB, "models", params=config.generator, tags={"dataset": args.dataset}, parent_run_id=parent.run_id) as run:
            renderer = prepare_renderer(config, protocol, args.weights_root, run)
            encoders = prepare_encoders(config, protocol, args.weights_root, run)
        source, validation = encoders["source"], encoders["validation"]
        unseen = {name: encoders[name] for name in config.encoders.unseen}
        targets, skipped = choose_targets(protocol, config.data.targets_per_identity)
        if args.quick:
            targets = targets.take(range(min(config.quick.max_targets, len(targets))))
        target_rows = [int(np.flatnonzero(protocol.held_out.sample_ids == sid)[0]) for sid in targets.sample_ids]
        parent.log_text("\n".join(skipped) + "\n", "targets_skipped_by_face_check.txt")
        parent.log_text("\n".join(targets.sources.tolist()) + "\n", "targets.txt")
        template = embed(source, targets.images, flip=True)  # the leaked source templates
        references = {
            name: reference(encoder, protocol.held_out.images, protocol.held_out.identities, config.evaluation.fars, flip=config.evaluation.flip)
            for name, encoder in {**unseen, "source": source, "validation": validation}.items()
        }
        for name, ref in references.items():
            parent.log_metrics({f"verification/{name}/{k}": v for k, v in ref.verification.items()})
        rows = []
        for seed in seeds:
            t0 = time.time()
            results = run_attack(torch.from_numpy(template), renderer, source, validation, config.attack, seed=seed)
            seconds = time.time() - t0
            scores = evaluate_seed(results, references, unseen, target_rows, config)
            search_stats = {
                k: float(np.mean([r[k] for r in results])) for k in ("mean_cosine_last", "mean_cosine_averaged", "max_cosine_averaged")
            }
            for method in METHODS:
                source_cos = float(np.mean([r["selections"][method].source_cosine for r in results]))
                with tracked_run(JOB, f"{method}-s{seed}", tags={"dataset": args.dataset, "method": method, "seed": seed}, parent_run_id=parent.run_id) as run:
                    run.log_metrics({f"{name}/{k}": v for name, m in scores[method].items() for k, v in m.items()} | {"source_cosine": source_cos})
                for name, metrics in scores[method].items():
                    rows.append(summary_row(method, args.dataset, None, seed, metrics, encoder=name, source_cosine=source_cos))
            parent.log_metrics({f"search/{k}": v for k, v in search_stats.items()} | {"attack_seconds": seconds}, step=seed)
            with tempfile.TemporaryDirectory() as scratch:
                grid = face_grid(targets.images, {m: np.stack([r["selections"][m].canvas for r in results]) for m in METHODS}, Path(scratch) / f"reconstructions_s{seed}.png")
                parent.log_artifact(grid)
        table = aggregate(rows, by=("encoder", "method"), metrics=PRINTED_METRICS)
        order = {m: i for i, m in enumerate(METHODS)}
        table = table.sort_values(["encoder", "method"], key=lambda c: c.map(order) if c.name == "method" else c).reset_index(drop=True)
        text = format_table(table, PRINTED_METRICS)
        verification = "; ".join(
            f"{name}: TAR {ref.verification['tar_far1e-2']:.3f} @ FAR 1e-2, {ref.verification['tar_far1e-3']:.3f} @ 1e-3"
            for name, ref in references.items()
        )
        header = (
            f"ALSUV on {args.dataset}: {len(targets)} targets from {len(set(protocol.held_out.identities.tolist()))} held-out identities, "
            f"N={config.attack.num_searches} searches x {config.attack.iterations} iterations, seeds {list(seeds)}; "
            f"encoders on held-out pairs: {verification}\nattack success rates on the unseen encoders (mean ± std over seeds)\n"
        )
        parent.log_text(header + text + "\n", "results_table.txt")
        parent.log_text(table.to_csv(index=False), "results_table.csv")
        parent.log_metrics({"job_seconds": time.time() - started})
    print(header + text)
    if args.summary_json:
        write_summary(args.summary_json, JOB, rows, targets=len(targets), num_searches=config.attack.num_searches)
    return {"rows": rows, "table": table, "references": references}

