"""``alsuv_attack``: ALSUV and its ablations on held-out faces, judged on unseen encoders.

Shared by every seed, made once in ``prepare`` (after Ray starts, before the sweep's MLflow
parent run exists):

1. the identity-disjoint face protocol (:mod:`.faces`): training identities for the
   generator and the encoders, held-out identities for targets and thresholds;
2. the generator: a user's rosinality-layout StyleGAN2 checkpoint, or a StyleGAN2 trained
   here with Ray Train (cached by a hash of its data and config);
3. the encoders: source and validation (trained here with margin losses, cached) and the
   unseen ones (the pretrained MobileFaceNet, raylab-trained others), their thresholds
   from the held-out pairs, the targets and their leaked source templates.

One trial = one seed, run in the driver: the attack on every target's source template with
Ray tasks (:mod:`.attack`), the generator's pixel inversion of every target image, also in
Ray tasks (:mod:`.inversion`: the ceiling), then each method's reconstructions and the
inversions embedded by each unseen encoder (:mod:`.evaluate`). What ``prepare`` made is
logged as the nested ``models`` run by the first seed's trial (the parent run exists by
then): training metrics, the generator file and samples, data counts, the encoders'
verification on held-out pairs, the targets.

Summary rows: ``method`` in {alsuv, single_search, no_averaging, best_by_source,
pixel_inversion}, ``encoder`` (each unseen encoder), ``seed``, metrics ``type1_far1e-2``,
``type1_far1e-3``, ``type2_far1e-2``, ``type2_far1e-3``, ``type1_acc``, ``type2_acc``,
``rank1``, ``rank1_type2``, ``mean_type1_cosine``; beside them ``source_cosine`` (of the
output to the leaked template), ``pixel_mse`` (of the output to the target image),
``targets``, ``held_out_identities`` and ``verification`` (each encoder's TAR on held-out
pairs). ``pixel_inversion`` is not an attack: it sees the target image, and is the ceiling
the summary's top-level ``verdict`` (:mod:`.verdict`) compares the attacks with.
"""

# Heavy imports (numpy, torch, the generator, encoders and faces) are deferred into the
# functions that use them, so the job's --help and config validation answer in well under a second.
from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raylab.digests import file_digest
from raylab.experiment import Experiment, Prepared, Report, Request, Row, Setting, TrialContext, TrialResult
from raylab.experiment.arguments import parse_list
from raylab.experiment.cost import CostModel
from raylab.methods.alsuv.config import PRETRAINED_KINDS, AlsuvConfig, cpu_config, quick_config, resolved_weights

if TYPE_CHECKING:
    import numpy as np

    from raylab.methods.alsuv.evaluate import EncoderReference
    from raylab.methods.alsuv.faces import FaceProtocol, FaceSet
    from raylab.methods.alsuv.model.encoders import FaceEncoder
    from raylab.methods.alsuv.search import FaceRenderer

NAME = "alsuv_attack"
# The ceiling row: the generator's pixel inversion of each target image (:mod:`.inversion`).
CEILING = "pixel_inversion"
TABLE_METRICS = ("type1_far1e-2", "type1_far1e-3", "type2_far1e-2", "type2_far1e-3", "rank1")
# Printed beside them: the source (white-box) cosine of the chosen outputs to the template.
PRINTED_METRICS = (*TABLE_METRICS, "source_cosine")
METRICS_HELP = (
    "type1_far1e-2, type1_far1e-3, type2_far1e-2, type2_far1e-3 (attack success rates at the unseen "
    "encoder's FAR thresholds), type1_acc, type2_acc (best-accuracy threshold), rank1, rank1_type2; "
    "rows carry method (the attacks and the pixel_inversion ceiling) and encoder; the summary's verdict says "
    "whether the run can compare the attacks"
)


def arguments(parser) -> None:
    parser.add_argument(
        "--weights-root",
        default=None,
        help="folder holding pretrained weights named in the config (MobileFaceNet, a StyleGAN2 checkpoint); "
        "relative weight paths are resolved against it",
    )


def apply_arguments(config: AlsuvConfig, args) -> AlsuvConfig:
    """``--dataset`` names the face set (``data.dataset``, which the config layers may not set)."""
    return dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=args.dataset))


def axes(request: Request[AlsuvConfig]) -> dict[str, tuple]:
    return {"seed": parse_list(request.args.seeds, int, "--seeds") or request.config.seeds}


def weight_files(config: AlsuvConfig, weights_root: str | None) -> dict[str, Path]:
    """Every pretrained file the run loads: the generator checkpoint and encoder weights, by role."""
    files = {}
    if config.generator.checkpoint is not None:
        files["generator"] = resolved_weights(config.generator.checkpoint, weights_root)
    for name, spec in config.encoders.by_role().items():
        if spec.weights is not None:
            files[f"encoder/{name}"] = resolved_weights(spec.weights, weights_root)
        elif spec.kind == "dlib":  # the model file its package installed
            from raylab.methods.alsuv.model.dlib_encoder import model_path

            files[f"encoder/{name}"] = model_path()
    return files


def check(request: Request[AlsuvConfig]) -> None:
    """Every weight file exists, and a generator checkpoint is the generator the config describes, before Ray starts.

    The config's ``generator.model`` is what its sizes are validated against (face crop vs
    canvas) and what ``--dry-run`` costs, so a checkpoint of another architecture (a 512 px
    file under a 256 px config) is refused here, from the file's tensor shapes alone.
    """
    config = request.config
    files = weight_files(config, request.args.weights_root)
    missing = [f"{role}: {path}" for role, path in files.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"weight files not found (relative names resolve against --weights-root): {'; '.join(missing)}"
        )
    if "generator" in files:
        from raylab.methods.alsuv.model.stylegan2 import checkpoint_config

        found = checkpoint_config(files["generator"])
        if found.architecture() != config.generator.model.architecture():
            size, style_dim, n_mlp, widths = found.architecture()
            raise ValueError(
                f"generator.model: {files['generator']} holds a {size} px generator "
                f"(style_dim {style_dim}, n_mlp {n_mlp}, widths {list(widths)} from 4 px up) "
                f"but the config describes {config.generator.model}; set generator.model to the file's"
            )


@dataclass
class ModelsLog:
    """What making the models produced for the ``models`` run: metrics and the trained generator's file."""

    metrics: dict[str, float]
    generator_source: str
    generator_file: Path | None  # a generator trained here (logged as an artifact)


@dataclass
class AttackInputs:
    """Everything the seeds share: models, targets, templates, the encoders' thresholds."""

    protocol: FaceProtocol
    renderer: FaceRenderer
    source: FaceEncoder
    validation: FaceEncoder
    unseen: dict[str, FaceEncoder]
    targets: FaceSet
    skipped: list[str]
    target_rows: list[int]
    template: np.ndarray
    references: dict[str, EncoderReference]
    models_log: ModelsLog
    first_seed: int


def prepare_renderer(
    config: AlsuvConfig, protocol: FaceProtocol, weights_root: str | None, log: ModelsLog
) -> FaceRenderer:
    """The generator (loaded or trained here) wrapped with truncation, fixed noise and the face crop."""
    from raylab.methods.alsuv.model.stylegan2 import load_rosinality
    from raylab.methods.alsuv.search import FaceRenderer
    from raylab.methods.alsuv.training.generator import train_generator

    setup = config.generator
    if setup.checkpoint is not None:
        path = resolved_weights(setup.checkpoint, weights_root)
        generator, latent_avg = load_rosinality(path)
        log.metrics["generator_loaded"] = 1.0
        log.generator_source = str(path)
    else:
        trained = train_generator(
            protocol.train.images,
            setup.model,
            setup.train,
            mean_latent_samples=config.attack.mean_latent_samples,
            grayscale=setup.grayscale,
        )
        generator, latent_avg = trained.generator, trained.latent_avg
        log.metrics |= {f"gan/{k}": v for k, v in trained.metrics.items()}
        log.generator_source, log.generator_file = str(trained.path), trained.path
    if latent_avg is None:
        latent_avg = generator.mean_latent(config.attack.mean_latent_samples)
    return FaceRenderer(
        generator,
        latent_avg,
        truncation=config.attack.truncation,
        crop=setup.crop,
        grayscale=setup.grayscale,
        size=config.face_size,
    )


def prepare_encoders(
    config: AlsuvConfig, protocol: FaceProtocol, weights_root: str | None, log: ModelsLog
) -> dict[str, FaceEncoder]:
    """``source``, ``validation`` and every unseen encoder by name (trained here where needed)."""
    import torch

    from raylab.methods.alsuv.model.encoders import make_encoder
    from raylab.methods.alsuv.training.encoder import train_encoder

    encoders = {}
    for name, spec in config.encoders.by_role().items():
        state = None
        if spec.trained_here:
            trained = train_encoder(protocol.train.images, protocol.train.identities, spec)
            state = trained.state_dict
            log.metrics |= {f"encoder/{name}/{k}": v for k, v in trained.metrics.items()}
        elif spec.kind not in PRETRAINED_KINDS:
            state = torch.load(resolved_weights(spec.weights, weights_root), map_location="cpu", weights_only=True)
        encoders[name] = make_encoder(spec, name=name, state_dict=state, weights_root=weights_root)
    return encoders


def held_out_rows(protocol: FaceProtocol, targets: FaceSet) -> list[int]:
    """Each target's row among the held-out images (whose pairs set the encoders' thresholds)."""
    import numpy as np

    return [int(np.flatnonzero(protocol.held_out.sample_ids == sid)[0]) for sid in targets.sample_ids]


def held_out_references(
    encoders: Mapping[str, FaceEncoder], protocol: FaceProtocol, config: AlsuvConfig
) -> dict[str, EncoderReference]:
    """Per encoder, the held-out people's embeddings and the thresholds at the config's FARs."""
    from raylab.methods.alsuv.evaluate import reference

    held_out = protocol.held_out
    return {
        name: reference(
            encoder, held_out.images, held_out.identities, config.evaluation.fars, flip=config.evaluation.flip
        )
        for name, encoder in encoders.items()
    }


def prepare(request: Request[AlsuvConfig]) -> Prepared:
    """Protocol, models (the Train runs keep their own names: a hash of their data and config,
    so every sweep that trains the same generator or encoder reuses it), targets, templates
    and thresholds. The fingerprint covers the face corpus and every pretrained file's bytes."""

    from raylab.data.store import corpus_fingerprint
    from raylab.experiment.identity import content_hash
    from raylab.methods.alsuv.faces import choose_targets, load_protocol
    from raylab.tasks.faces.embedding import embed

    config, weights_root = request.config, request.args.weights_root
    protocol = load_protocol(config.data, request.data_root)
    log = ModelsLog({}, "", None)
    renderer = prepare_renderer(config, protocol, weights_root, log)
    encoders = prepare_encoders(config, protocol, weights_root, log)
    source, validation = encoders["source"], encoders["validation"]
    unseen = {name: encoders[name] for name in config.encoders.unseen}
    targets, skipped = choose_targets(protocol, config.data.targets_per_identity)
    if config.max_targets is not None:
        targets = targets.take(range(min(config.max_targets, len(targets))))
    target_rows = held_out_rows(protocol, targets)
    references = held_out_references({**unseen, "source": source, "validation": validation}, protocol, config)
    inputs = AttackInputs(
        protocol,
        renderer,
        source,
        validation,
        unseen,
        targets,
        skipped,
        target_rows,
        template=embed(source, targets.images, flip=True),  # the leaked source templates
        references=references,
        models_log=log,
        first_seed=axes(request)["seed"][0],
    )
    data = {
        "corpus": corpus_fingerprint(protocol.corpus),
        "weights": {role: file_digest(path, 20) for role, path in weight_files(config, weights_root).items()},
    }
    return Prepared(inputs, content_hash(data, 20))


def log_models(inputs: AttackInputs, config: AlsuvConfig, context: TrialContext) -> None:
    """The nested ``models`` run: how the shared models were made and how good the encoders are."""
    from raylab.methods.alsuv.report import generator_samples

    log = inputs.models_log
    with context.nested_run("models", params=config.generator) as run:
        run.log_metrics(log.metrics | {f"data/{k}": v for k, v in inputs.protocol.counts().items()})
        for name, ref in inputs.references.items():
            run.log_metrics({f"verification/{name}/{k}": v for k, v in ref.verification.items()})
        if log.generator_file is not None:
            run.log_artifact(log.generator_file, "generator")
        with tempfile.TemporaryDirectory() as scratch:
            run.log_artifact(generator_samples(inputs.renderer, Path(scratch) / "generator_samples.png"))
        run.log_text(f"{log.generator_source}\n{inputs.renderer.generator.config}\n", "generator.txt")
        run.log_text("\n".join(inputs.skipped) + "\n", "targets_skipped_by_face_check.txt")
        run.log_text("\n".join(inputs.targets.sources.tolist()) + "\n", "targets.txt")


def evaluate_seed(
    outputs: Mapping[str, np.ndarray],
    references: dict,
    unseen: dict[str, FaceEncoder],
    target_rows,
    config: AlsuvConfig,
) -> dict:
    """``{method: {encoder: metrics}}`` for one seed's reconstructions ``{method: (targets, 3, s, s)}``.

    The attacks' outputs and the pixel inversions go through this one function: same
    encoders, same flip-averaging, same thresholds, same metrics.
    """
    from raylab.methods.alsuv.evaluate import attack_metrics
    from raylab.tasks.faces.embedding import embed

    out: dict[str, dict[str, dict[str, float]]] = {}
    expected = (3, config.face_size, config.face_size)
    for method, canvas in outputs.items():
        if canvas.shape[1:] != expected:
            raise ValueError(f"{method}: reconstructions are {canvas.shape[1:]}, the targets' canvas is {expected}")
        out[method] = {}
        for name, encoder in unseen.items():
            embeddings = embed(encoder, canvas, flip=config.evaluation.flip)
            out[method][name] = attack_metrics(references[name], embeddings, target_rows)
    return out


def trial(setting: Setting, inputs: AttackInputs, config: AlsuvConfig, context: TrialContext) -> TrialResult:
    """The attack for one seed (Ray tasks) and the pixel-inversion ceiling, every output
    judged by every unseen encoder."""
    import numpy as np
    import torch

    from raylab.methods.alsuv.attack import METHODS, run_attack
    from raylab.methods.alsuv.inversion import invert_targets
    from raylab.methods.alsuv.report import face_grid
    from raylab.tasks.faces.embedding import embed

    seed = int(setting["seed"])
    if seed == inputs.first_seed:
        log_models(inputs, config, context)
    started = time.time()
    results = run_attack(
        torch.from_numpy(inputs.template), inputs.renderer, inputs.source, inputs.validation, config.attack, seed=seed
    )
    seconds = time.time() - started
    started = time.time()
    inversions = invert_targets(inputs.targets.images, inputs.renderer, config.inversion, seed=seed)
    inversion_seconds = time.time() - started
    outputs = {m: np.stack([r["selections"][m].canvas for r in results]) for m in METHODS}
    outputs[CEILING] = np.stack([inv.canvas for inv in inversions])
    scores = evaluate_seed(outputs, inputs.references, inputs.unseen, inputs.target_rows, config)
    source_cosines = {m: float(np.mean([r["selections"][m].source_cosine for r in results])) for m in METHODS}
    ceiling_embeddings = embed(inputs.source, outputs[CEILING], flip=True)
    ceiling_embeddings /= np.linalg.norm(ceiling_embeddings, axis=1, keepdims=True)
    template = inputs.template / np.linalg.norm(inputs.template, axis=1, keepdims=True)
    source_cosines[CEILING] = float(np.mean(np.sum(template * ceiling_embeddings, axis=1)))
    pixel_mse = {m: float(np.mean((canvas - inputs.targets.images) ** 2)) for m, canvas in outputs.items()}
    search_stats = {
        k: float(np.mean([r[k] for r in results]))
        for k in ("mean_cosine_last", "mean_cosine_averaged", "max_cosine_averaged")
    }
    with context.nested_run(f"attack-s{seed}", tags={"seed": seed}) as run:
        run.log_metrics(
            {f"search/{k}": v for k, v in search_stats.items()}
            | {"attack_seconds": seconds, "inversion_seconds": inversion_seconds}
        )
        with tempfile.TemporaryDirectory() as scratch:
            attacks = {m: outputs[m] for m in METHODS}
            run.log_artifact(
                face_grid(
                    inputs.targets.images,
                    attacks,
                    Path(scratch) / f"reconstructions_s{seed}.png",
                    size=config.face_size,
                )
            )
            run.log_artifact(
                face_grid(
                    inputs.targets.images,
                    {CEILING: outputs[CEILING]},
                    Path(scratch) / f"pixel_inversions_s{seed}.png",
                    size=config.face_size,
                )
            )
    shared = {
        "targets": len(inputs.targets),
        "held_out_identities": len(set(inputs.protocol.held_out.identities.tolist())),
        "verification": {
            name: {k: ref.verification[k] for k in ("tar_far1e-2", "tar_far1e-3")}
            for name, ref in inputs.references.items()
        },
    }
    rows = []
    for method in (*METHODS, CEILING):
        extra = {"source_cosine": source_cosines[method], "pixel_mse": pixel_mse[method]}
        with context.nested_run(f"{method}-s{seed}", tags={"method": method, "seed": seed}) as run:
            run.log_metrics({f"{name}/{k}": v for name, m in scores[method].items() for k, v in m.items()} | extra)
        for name, metrics in scores[method].items():
            rows.append(Row(method, context.dataset, {"seed": seed}, metrics, {"encoder": name, **extra, **shared}))
    return TrialResult(rows)


def verdict(rows: Sequence[Mapping[str, Any]], config: AlsuvConfig) -> dict[str, Any]:
    """The summary's ``verdict`` (:func:`raylab.methods.alsuv.verdict.informative_verdict`) under the config's rule."""
    from raylab.methods.alsuv.verdict import informative_verdict
    from raylab.tasks.faces.protocol import far_label

    rule = config.evaluation
    return informative_verdict(
        rows, encoder=rule.verdict_encoder, metric=f"type1_{far_label(rule.verdict_far)}", ceiling=rule.verdict_ceiling
    )


def report(rows: Sequence[Row], request: Request[AlsuvConfig]) -> Report:
    from raylab.methods.alsuv.attack import METHODS
    from raylab.report.tables import aggregate, format_table

    config = request.config
    dicts = [row.to_dict() for row in rows]
    table = aggregate(dicts, by=("encoder", "method"), metrics=PRINTED_METRICS)
    order = {m: i for i, m in enumerate((*METHODS, CEILING))}
    table = table.sort_values(
        ["encoder", "method"], key=lambda c: c.map(order) if c.name == "method" else c
    ).reset_index(drop=True)
    first = dicts[0]
    seeds = list(dict.fromkeys(r["seed"] for r in dicts))
    verification = "; ".join(
        f"{name}: TAR {tars['tar_far1e-2']:.3f} @ FAR 1e-2, {tars['tar_far1e-3']:.3f} @ 1e-3"
        for name, tars in first["verification"].items()
    )
    header = (
        f"ALSUV on {request.dataset}: {first['targets']} targets from {first['held_out_identities']} "
        f"held-out identities, N={config.attack.num_searches} searches x {config.attack.iterations} iterations, "
        f"seeds {seeds}; encoders on held-out pairs: {verification}\n"
        "attack success rates on the unseen encoders (mean ± std over seeds; "
        f"{CEILING}: the generator's inversion of each target image by pixel loss, "
        f"{config.inversion.searches} starts x {config.inversion.steps} steps, the ceiling)\n"
    )
    shown = [m for m in order if m in set(table["method"])]
    mse = {
        m: sum(r["pixel_mse"] for r in dicts if r["method"] == m) / sum(r["method"] == m for r in dicts) for m in shown
    }
    footer = (
        "\npixel MSE to the target image (canvas in [-1, 1]): "
        + ", ".join(f"{m} {v:.3f}" for m, v in mse.items())
        + f"\nverdict: {verdict(dicts, config)['reason']}"
    )
    text = header + format_table(table, PRINTED_METRICS) + footer
    return Report(text, tables={"results_table.csv": table.to_csv(index=False)}, table=table)


def summary_extra(request: Request[AlsuvConfig], rows: Sequence[Row]) -> Mapping[str, Any]:
    return {
        "targets": rows[0].extra["targets"] if rows else 0,
        "num_searches": request.config.attack.num_searches,
        "verdict": verdict([row.to_dict() for row in rows], request.config),
    }


# --smoke: a paper-size config's networks and sizes unchanged, its work shrunk to one target,
# one seed and ten one-iteration searches (ten: the paper's top-10 validation needs as many
# candidates), one one-step pixel inversion, four faces per person, and one optimiser step of
# one epoch per encoder trained here.
SMOKE = {
    "seeds": [0],
    "max_targets": 1,
    "data": {"images_per_identity": 4, "targets_per_identity": 1},
    "attack": {"num_searches": 10, "iterations": 1},
    "inversion": {"searches": 1, "steps": 1},
    "generator": {"train": {"iterations": 2}},
    "encoders": {"epochs": 1, "steps": 1},
}


def search_step_bytes(config: AlsuvConfig) -> tuple[float, int]:
    """Accelerator bytes of one search task's step (its latents through the renderer and the
    source encoder, and the gradient back to them; the networks stay frozen), and its batch."""
    import torch

    from raylab.methods.alsuv.model.encoders import FaceEncoder, build_backbone
    from raylab.methods.alsuv.model.stylegan2 import Generator
    from raylab.methods.alsuv.search import FaceRenderer
    from raylab.step_memory import step_peak_bytes

    batch = config.attack.searches_per_task
    source = config.encoders.by_role()["source"]

    class SearchStep(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            generator = Generator(config.generator.model)
            self.renderer = FaceRenderer(
                generator,
                torch.zeros(generator.style_dim),
                truncation=config.attack.truncation,
                crop=config.generator.crop,
                grayscale=config.generator.grayscale,
                size=config.face_size,
            )
            self.encoder = FaceEncoder(build_backbone(source), source, "source").requires_grad_(False)

    def step(module: SearchStep) -> torch.Tensor:
        renderer = module.renderer
        latents = torch.empty(batch, renderer.n_latent, renderer.style_dim, requires_grad=True)
        return module.encoder(renderer(latents)).sum()

    return float(step_peak_bytes(SearchStep, step, train=True)), batch


def cost(request: Request[AlsuvConfig]) -> CostModel:
    """One seed's generator syntheses (every search's and pixel inversion's steps and final
    renders) and what stays on disk.

    Counts the face set's identities from its file list and sizes the networks on the meta
    device, so it answers in seconds for FFHQ-256 without its checkpoint or a GPU.
    """
    from raylab.data import load_corpus
    from raylab.experiment.cost import ADAM_STATE_COPIES, FLOAT32, parameter_count
    from raylab.methods.alsuv.model.encoders import build_backbone
    from raylab.methods.alsuv.model.stylegan2 import Discriminator, Generator
    from raylab.step_memory import state_bytes

    config, data = request.config, request.config.data
    corpus = load_corpus(
        data.dataset, request.data_root, n_folds=data.n_folds, fold=data.fold, split_seed=data.split_seed
    )
    rows = corpus.select(["class_name", "split"]).to_pylist()
    per_identity: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row["class_name"], row["split"])
        per_identity[key] = min(per_identity.get(key, 0) + 1, data.images_per_identity or len(rows))
    images = sum(per_identity.values())
    held_out = sum(1 for _, split in per_identity if split == "test")
    targets = held_out * data.targets_per_identity
    targets = min(targets, config.max_targets) if config.max_targets is not None else targets
    attack, inversion = config.attack, config.inversion
    renders = 1 if attack.averaged_iterates == 1 else 2
    work = targets * attack.num_searches * (attack.iterations + renders) + targets * inversion.searches * (
        inversion.steps + 1
    )

    face = 3 * config.face_size**2 * FLOAT32
    # All canvases stay in memory; each target's searches come back with two canvases each.
    array_bytes = images * face + targets * attack.num_searches * 2 * face
    trained = {name: spec for name, spec in config.encoders.by_role().items() if spec.trained_here}
    loaded = sorted(set(config.encoders.by_role()) - set(trained))
    # A Train run keeps its last checkpoint (weights and SGD momentum) and raylab a final backbone state.
    sgd_copies = 2
    checkpoints = sum(
        parameter_count(lambda spec=spec: build_backbone(spec)) * FLOAT32 * (sgd_copies + 1)
        for spec in trained.values()
    )
    model = config.generator.model
    # A generator trained here is logged once, as its rosinality file (the EMA weights).
    generator_file = state_bytes(lambda: Generator(model)) if config.generator.checkpoint is None else 0
    if config.generator.checkpoint is None:
        g, d = parameter_count(lambda: Generator(model)), parameter_count(lambda: Discriminator(model))
        checkpoints += (
            g * (ADAM_STATE_COPIES + 1) + d * ADAM_STATE_COPIES
        ) * FLOAT32  # G, its EMA copy, D, both optimisers
        generator = f"a {model.size} px StyleGAN2 trained here for {config.generator.train.iterations} steps"
    else:
        generator = (
            f"{config.generator.checkpoint} loaded ({model.size} px, "
            f"face crop {config.generator.face_side} px -> {config.face_size} px canvas)"
        )
    accelerator, batch = search_step_bytes(config)
    return CostModel(
        work=work,
        work_unit="generator syntheses",
        array_bytes=array_bytes,
        checkpoint_bytes=checkpoints,
        cache_bytes=0.0,
        model_bytes=generator_file,
        accelerator_bytes=accelerator,
        accelerator_step=f"a search step of {batch} latents: "
        "synthesis, the source encoder and the gradient back to the latents",
        notes=(
            f"{targets} targets x {attack.num_searches} searches x ({attack.iterations} steps + {renders} render"
            f"{'s' if renders > 1 else ''}), and {targets} targets x {inversion.searches} pixel inversions x "
            f"({inversion.steps} steps + 1 render) for the ceiling; {images} faces of {len(per_identity)} identities",
            f"generator: {generator}",
            f"encoders trained here (once, shared by the seeds): {', '.join(trained) or 'none'}; "
            f"loaded: {', '.join(loaded) or 'none'}",
        ),
    )


EXPERIMENT = Experiment(
    name=NAME,
    description="ALSUV face reconstruction transfer attack: N parallel latent searches per target (Ray tasks) "
    "through a StyleGAN2, averaged latents, unsupervised validation with a pseudo target, and the "
    "single-search / no-averaging / best-by-source ablations, judged on unseen encoders.",
    config_type=AlsuvConfig,
    profiles={"cpu": cpu_config, "full": AlsuvConfig},
    default_dataset="orl",
    metrics_help=METRICS_HELP,
    axes=axes,
    prepare=prepare,
    trial=trial,
    report=report,
    executor="driver",
    # No dataset overlay: the cpu profile *is* the ORL size (raylab/configs/alsuv/orl.yaml lists
    # its knobs), and an overlay of CPU sizes under --profile full would mix the two sizes.
    quick=quick_config,
    arguments=arguments,
    apply_arguments=apply_arguments,
    check=check,
    setting_keys=("data.dataset",),
    summary_extra=summary_extra,
    smoke=SMOKE,
    cost=cost,
)
