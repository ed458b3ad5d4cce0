"""``ckd_train``: CKD and its ablations on identity-disjoint folds, a Ray Tune grid over method x fold x seed.

For every fold of the protocol, the face corpus is split into training identities (fit and
validation images) and unseen test identities; every (method, fold, seed) trial trains one
variant with Ray Train (its per-epoch metrics reach Tune through ``TuneReportCallback``),
evaluates the periocular encoder on the fold's unseen identities and logs a nested MLflow
run. The trial itself reserves ~0 CPU; its Train workers reserve ``cpus_per_worker`` each
(0.99 by default: under one CPU, so the trial's own sliver still fits on the node), so the
config's ``max_concurrent`` trials' workers must fit the cluster. The job prints two
tables: each method's mean ± std over its (fold, seed) runs, and each method's paired
difference to periocular-only training (same fold, same seed, same gallery draws), which
is what says whether distillation helps beyond the run-to-run spread.

Train run names stay the content hash of :func:`raylab.methods.ckd.training.run_name` (the
fit and validation pairs' bytes, the CKD config, the variant, the seed, the number of
workers) rather than :meth:`TrialContext.run_name`: that hash already covers every input of
a training, and unlike the sweep's name it does not change with the rest of the grid, so
``--folds 0,1`` after ``--folds 0`` reuses fold 0's trainings.

Summary rows: ``method`` in {ckd, periocular_only, per_modality_bn, no_sharing, f2p_only},
``fold``, ``seed``, metrics ``rank1``, ``rank5``, ``eer``, ``tar_at_far1e-3``,
``tar_at_far1e-2``, ``tar_at_far1e-1``, ``best_epoch``, ``best_val_accuracy``.
"""

# Heavy imports (pandas, the pair protocol, torch models) are deferred into the functions that
# use them, so the job's --help and config validation answer in well under a second.
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raylab.experiment import Experiment, Prepared, Report, Request, Row, Setting, TrialContext, TrialResult
from raylab.experiment.arguments import parse_list
from raylab.experiment.cost import CostModel
from raylab.experiment.identity import content_hash
from raylab.methods.ckd.config import VARIANTS, CKDJobConfig, cpu_config, with_epochs

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from raylab.methods.ckd.evaluate import PeriocularEvaluation
    from raylab.methods.ckd.model import PeriocularEncoder
    from raylab.methods.ckd.pairs import FoldRoles
    from raylab.methods.ckd.training import TrainedCKD

NAME = "ckd_train"
METRICS = ("rank1", "eer", "tar_at_far1e-2", "tar_at_far1e-3", "rank5")
BASELINE = "periocular_only"
METRICS_HELP = (
    "rank1 / rank5 (closed-set CMC on unseen identities, mean over gallery draws), eer and "
    "tar_at_far1e-3 / 1e-2 / 1e-1 (all pairs, no self-pairs), best_epoch, best_val_accuracy; one row per "
    "method x fold x seed"
)


def quick(config: CKDJobConfig) -> CKDJobConfig:
    """``--quick``: fewer epochs, the quick folds and methods."""
    reduced = config.quick
    return dataclasses.replace(
        config,
        ckd=with_epochs(config.ckd, reduced.epochs),
        methods=reduced.methods,
        protocol=dataclasses.replace(config.protocol, folds=reduced.folds),
    )


def arguments(parser) -> None:
    parser.add_argument(
        "--methods", default=None, help=f"comma-separated methods from {', '.join(VARIANTS)} (default: the config's)"
    )
    parser.add_argument(
        "--folds", default=None, help="comma-separated fold indices in [0, protocol.n_folds) (default: the config's)"
    )
    parser.add_argument(
        "--no-models",
        action="store_true",
        help="do not log encoders as MLflow models (by default each method and fold's first-seed encoder is logged)",
    )


def axes(request: Request[CKDJobConfig]) -> dict[str, tuple]:
    config, args = request.config, request.args
    methods = parse_list(args.methods, str, "--methods") or config.methods
    unknown = [m for m in methods if m not in VARIANTS]
    if unknown:
        raise ValueError(f"--methods {args.methods}: unknown {unknown}; known: {', '.join(VARIANTS)}")
    folds = parse_list(args.folds, int, "--folds") or config.protocol.folds
    outside = [f for f in folds if not 0 <= f < config.protocol.n_folds]
    if outside:
        raise ValueError(
            f"--folds {args.folds}: folds {outside} are outside [0, {config.protocol.n_folds}) (protocol.n_folds)"
        )
    seeds = parse_list(args.seeds, int, "--seeds") or config.seeds
    return {"method": methods, "fold": folds, "seed": seeds}


# The fold roles check() built before Ray started, left for prepare() (the same driver process).
_ROLES: dict[str, tuple[dict[int, FoldRoles], str]] = {}


def fold_roles_of(request: Request[CKDJobConfig], *, reuse: bool = False) -> tuple[dict[int, FoldRoles], str]:
    """Each fold's (fit, validation, test) pairs, and a content fingerprint of the fold corpora.

    ``check`` builds them before Ray starts, so a missing folder, an unreadable image or an
    identity with too few images fails in seconds (as the job always did); ``prepare`` takes
    that copy (``reuse``) instead of building it twice.
    """
    from raylab.data import load_corpus
    from raylab.data.store import corpus_fingerprint
    from raylab.methods.ckd.pairs import fold_roles

    config = request.config
    protocol = config.protocol
    folds = axes(request)["fold"]
    key = content_hash([request.dataset, request.data_root, protocol, config.ckd.pairs, config.ckd.network, folds])
    if reuse and key in _ROLES:
        return _ROLES.pop(key)
    roles, fingerprints = {}, []
    for fold in folds:
        table = load_corpus(
            request.dataset, request.data_root, n_folds=protocol.n_folds, fold=fold, split_seed=protocol.split_seed
        )
        fingerprints.append(corpus_fingerprint(table))
        roles[fold] = fold_roles(
            table,
            config.ckd.pairs,
            config.ckd.network,
            val_per_identity=protocol.val_per_identity,
            split_seed=protocol.split_seed,
        )
    built = roles, content_hash(fingerprints, 20)
    if not reuse:
        _ROLES.clear()
        _ROLES[key] = built
    return built


def check(request: Request[CKDJobConfig]) -> None:
    fold_roles_of(request)


@dataclass(frozen=True)
class CKDInputs:
    roles: dict[int, FoldRoles]
    log_models: bool
    first_seed: int


def prepare(request: Request[CKDJobConfig]) -> Prepared:
    roles, fingerprint = fold_roles_of(request, reuse=True)
    first_seed = min(axes(request)["seed"])
    return Prepared(CKDInputs(roles, log_models=not request.args.no_models, first_seed=first_seed), fingerprint)


@dataclass
class CKDRun:
    """One variant trained on one fold and evaluated on the fold's unseen identities."""

    method: str
    trained: TrainedCKD
    encoder: PeriocularEncoder
    evaluation: PeriocularEvaluation
    example_input: np.ndarray  # two test periocular images, for tracing / model signatures


def trial(setting: Setting, inputs: CKDInputs, config: CKDJobConfig, context: TrialContext) -> TrialResult:
    """Train one variant on one fold (Train's per-epoch reports go on to Tune), pick its epoch on
    the fold's validation images, evaluate on the fold's unseen identities, log."""
    import numpy as np

    from raylab.methods.ckd.config import variant
    from raylab.methods.ckd.evaluate import evaluate_embeddings
    from raylab.methods.ckd.model import PeriocularEncoder
    from raylab.methods.ckd.tracking import log_ckd_run
    from raylab.methods.ckd.training import train_ckd
    from raylab.tasks.faces.embedding import embed

    method, fold, seed = str(setting["method"]), int(setting["fold"]), int(setting["seed"])
    callbacks = None
    if context.executor == "tune":
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks = [TuneReportCallback()]
    roles, chosen = inputs.roles[fold], variant(method)
    trained = train_ckd(
        roles.fit,
        roles.val,
        roles.num_classes,
        config.ckd,
        chosen,
        seed=seed,
        storage_path=context.storage_path,
        callbacks=callbacks,
    )
    encoder = PeriocularEncoder(trained.network(config.ckd, chosen))
    embeddings = embed(encoder, roles.test.periocular, batch_size=256)
    protocol = config.protocol
    evaluation = evaluate_embeddings(embeddings, roles.test.identities, protocol, seed=protocol.split_seed)
    evaluation.metrics["best_epoch"] = float(trained.best_epoch)
    evaluation.metrics["best_val_accuracy"] = trained.best_val_accuracy
    result = CKDRun(method, trained, encoder, evaluation, np.ascontiguousarray(roles.test.periocular[:2]))
    params = {"ckd": config.ckd, "protocol": config.protocol, **setting.values}
    with context.nested_run(
        f"{method}-fold{fold}-s{seed}", params=params, tags={"method": method, "fold": fold, "seed": seed}
    ) as run:
        log_ckd_run(run, result, log_model=inputs.log_models and seed == inputs.first_seed)
    return TrialResult([Row(method, context.dataset, dict(setting.values), dict(result.evaluation.metrics))])


def paired_differences(rows: list[dict[str, Any]], baseline: str = BASELINE) -> pd.DataFrame:
    """Per method: mean ± std over (fold, seed) of ``metric(method) - metric(baseline)``."""
    import pandas as pd

    from raylab.report.tables import rows_to_frame

    frame = rows_to_frame(rows)
    metrics = [m for m in METRICS if m in frame.columns]
    base = frame[frame["method"] == baseline].set_index(["fold", "seed"])[metrics]
    table_rows = []
    for method, group in frame[frame["method"] != baseline].groupby("method", sort=False):
        delta = (group.set_index(["fold", "seed"])[metrics] - base).dropna(how="all")
        if not len(delta):
            continue
        row: dict[str, Any] = {"method": f"{method} - {baseline}"}
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_std"] = delta[m].mean(), delta[m].std(ddof=0)
        row["n_pairs"] = len(delta)
        table_rows.append(row)
    return pd.DataFrame(table_rows)


def report(rows: Sequence[Row], request: Request[CKDJobConfig]) -> Report:
    from raylab.report.tables import aggregate, format_table, rows_to_frame

    grid = axes(request)
    methods, folds, seeds = grid["method"], grid["fold"], grid["seed"]
    order = {m: i for i, m in enumerate(methods)}
    dicts = sorted((row.to_dict() for row in rows), key=lambda r: (order[r["method"]], r["fold"], r["seed"]))
    table = aggregate(dicts, ["method"], list(METRICS))
    table = table.sort_values("method", key=lambda s: s.map(order)).reset_index(drop=True)
    text = f"mean ± std over folds {list(folds)} x seeds {list(seeds)}\n" + format_table(table, list(METRICS))
    if BASELINE in methods and len(methods) > 1:
        text += f"\n\npaired difference to {BASELINE} (same fold, seed, gallery draws), mean ± std\n"
        text += format_table(paired_differences(dicts), list(METRICS))
    return Report(text, tables={"results_rows.csv": rows_to_frame(dicts).to_csv(index=False)}, table=table)


# --smoke: the official network and input sizes and every method, on fold 0 with one seed,
# one epoch of two optimizer steps (each Train run still builds, steps, validates, checkpoints,
# restores its best weights, embeds the unseen identities and exports its encoder).
SMOKE = {"ckd": {"train": {"epochs": 1, "steps": 2}}, "protocol": {"folds": [0]}, "seeds": [0]}


def cost(request: Request[CKDJobConfig]) -> CostModel:
    """A trial's training image-steps (face and periocular count as one pair), and its disk.

    Parameters are counted on the meta device for the fold's number of training identities
    (the classifiers' rows). On disk a finished Train run keeps only ``final_state.pt`` (the
    best weights, see :func:`~raylab.methods.ckd.training.drop_checkpoints`); a running one
    holds its checkpoint (weights, SGD momentum, best weights) and, while Ray Train rotates
    it, the previous one, so the peak adds two of those per concurrent trial.
    """
    from raylab.experiment.cost import FLOAT32, GB, parameter_count
    from raylab.methods.ckd.config import variant
    from raylab.methods.ckd.model import PeriocularEncoder, build_ckd_net
    from raylab.step_memory import state_bytes, step_peak_bytes

    config, train = request.config, request.config.ckd.train
    roles, _ = fold_roles_of(request, reuse=True)
    grid = axes(request)
    methods, folds, seeds = grid["method"], grid["fold"], grid["seed"]
    largest = max(roles.values(), key=lambda r: len(r.fit))
    steps = min(len(largest.fit) // train.batch_size, train.steps or len(largest.fit))
    parameters = {
        m: parameter_count(lambda m=m: build_ckd_net(config.ckd.network, largest.num_classes, variant(m)))
        for m in methods
    }
    final_bytes = sum(parameters.values()) * FLOAT32 * len(folds) * len(seeds)
    # The first seed's trial of every (method, fold) logs its periocular encoder (the deployable part).
    encoders = sum(
        state_bytes(lambda m=m: PeriocularEncoder(build_ckd_net(config.ckd.network, largest.num_classes, variant(m))))
        for m in methods
    )
    model_bytes = 0 if request.args.no_models else encoders * len(folds)
    checkpoint_copies = 3  # last weights, SGD momentum, best weights
    concurrent = min(config.max_concurrent, len(methods) * len(folds) * len(seeds))
    in_flight = 2 * checkpoint_copies * max(parameters.values()) * FLOAT32 * concurrent
    pairs = largest.fit.faces[0].nbytes + largest.fit.periocular[0].nbytes
    network = config.ckd.network

    def training_step(net):
        import torch

        face = torch.empty(train.batch_size, 3, *network.face_size) if net.face is not None else None
        outputs = net(face, torch.empty(train.batch_size, 3, *network.periocular_size))
        return sum(t.float().mean() for t in outputs if t is not None)

    accelerator = max(
        step_peak_bytes(
            lambda m=m: build_ckd_net(network, largest.num_classes, variant(m)),
            training_step,
            train=True,
            optimizer_moments=1,
        )
        for m in methods
    )
    held = len(largest.fit) + len(largest.val) + len(largest.test)
    return CostModel(
        work=train.epochs * steps * train.batch_size,
        work_unit="training pair-steps",
        # The fold's decoded pairs, in the driver's object store and in every Train worker.
        array_bytes=(1 + train.num_workers) * held * pairs,
        checkpoint_bytes=final_bytes + in_flight,
        cache_bytes=0.0,
        model_bytes=model_bytes,
        accelerator_bytes=accelerator,
        accelerator_step=f"the largest variant's training step of {train.batch_size} face/periocular pairs, "
        "SGD with momentum",
        notes=(
            f"{len(largest.fit)} fit pairs, {largest.num_classes} training identities; "
            f"{steps} steps of {train.batch_size} per epoch",
            "parameters: " + ", ".join(f"{m} {n / 1e6:.1f} M" for m, n in parameters.items()),
            f"disk: {final_bytes / GB:.1f} GB of finished runs' best weights + {in_flight / GB:.1f} GB of checkpoints "
            f"in flight ({concurrent} trials at once)",
        ),
    )


def summary_extra(request: Request[CKDJobConfig], rows: Sequence[Row]) -> dict[str, Any]:
    return {"folds": list(axes(request)["fold"]), "table": report(rows, request).text}


EXPERIMENT = Experiment(
    name=NAME,
    description="Periocular recognition by consistent knowledge distillation from faces (CKD): trains CKD and its "
    "ablations (per-modality BN, nothing shared, face->periocular KL only, periocular-only) with Ray Train "
    "on identity-disjoint folds, side by side under Ray Tune, and evaluates periocular embeddings on "
    "identities never seen in training.",
    config_type=CKDJobConfig,
    profiles={"cpu": cpu_config, "full": CKDJobConfig},
    default_dataset="orl",
    metrics_help=METRICS_HELP,
    axes=axes,
    prepare=prepare,
    trial=trial,
    report=report,
    executor="tune",
    config_folder="ckd",
    quick=quick,
    arguments=arguments,
    check=check,
    trial_resources=lambda config: {"CPU": 0.01},
    max_concurrent=lambda config: config.max_concurrent,
    trial_cpus=lambda config: config.ckd.train.num_workers * config.ckd.train.cpus_per_worker,
    summary_extra=summary_extra,
    smoke=SMOKE,
    cost=cost,
)
