"""``jobs/ckd_train.py``: CKD and its ablations on identity-disjoint folds, tracked in MLflow.

For every fold of the protocol, the face corpus is split into training identities (fit and
validation images) and unseen test identities; every (method, fold, seed) is trained with
Ray Train and evaluated on the periocular embeddings of the unseen identities, the trials
running side by side under Ray Tune. The job prints two tables: each method's mean ± std
over its (fold, seed) runs, and each method's paired difference to periocular-only training
(same fold, same seed, same gallery draws), which is what says whether distillation helps
beyond the run-to-run spread.

Summary rows: ``method`` in {ckd, periocular_only, per_modality_bn, no_sharing, f2p_only},
``fold``, ``seed``, metrics ``rank1``, ``rank5``, ``eer``, ``tar_at_far1e-3``,
``tar_at_far1e-2``, ``tar_at_far1e-1``, ``best_epoch``, ``best_val_accuracy``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from raylab.config import load_config
from raylab.data import load_corpus
from raylab.jobs import init_ray, job_parser, parse_seeds, summary_row, write_summary
from raylab.methods.ckd.config import CKDJobConfig, with_epochs
from raylab.methods.ckd.pairs import FoldRoles, fold_roles
from raylab.methods.ckd.sweep import JOB, run_grid
from raylab.report.tables import aggregate, format_table, rows_to_frame
from raylab.tracking import tracked_run, tracking_uri

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "ckd"
METRICS = ("rank1", "eer", "tar_at_far1e-2", "tar_at_far1e-3", "rank5")
BASELINE = "periocular_only"
METRICS_HELP = (
    "rank1 / rank5 (closed-set CMC on unseen identities, mean over gallery draws), eer and "
    "tar_at_far1e-3 / 1e-2 / 1e-1 (all pairs, no self-pairs), best_epoch, best_val_accuracy; one row per "
    "method x fold x seed"
)


def parser() -> argparse.ArgumentParser:
    parser = job_parser(
        JOB,
        "Periocular recognition by consistent knowledge distillation from faces (CKD): trains CKD and its "
        "ablations (per-modality BN, nothing shared, face->periocular KL only, periocular-only) with Ray Train "
        "on identity-disjoint folds, side by side under Ray Tune, and evaluates periocular embeddings on "
        "identities never seen in training.",
        default_dataset="orl",
        metrics_help=METRICS_HELP,
    )
    parser.add_argument("--methods", default=None, help="comma-separated subset of the config's methods")
    parser.add_argument("--folds", default=None, help="comma-separated fold indices (default: the config's)")
    parser.add_argument(
        "--no-models",
        action="store_true",
        help="do not log encoders as MLflow models (by default each method and fold's first-seed encoder is logged)",
    )
    return parser


def default_config_file(dataset: str) -> Path | None:
    candidate = CONFIG_DIR / f"{dataset}.yaml"
    return candidate if candidate.exists() else None


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def resolve(args: argparse.Namespace) -> tuple[CKDJobConfig, tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    config = load_config(CKDJobConfig, args.config or default_config_file(args.dataset))
    methods = config.methods
    folds = config.protocol.folds
    if args.quick:
        config = dataclasses.replace(config, ckd=with_epochs(config.ckd, config.quick.epochs))
        methods, folds = config.quick.methods, config.quick.folds
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        CKDJobConfig(methods=methods)  # validates the names
    if args.folds:
        folds = _int_list(args.folds)
    bad = [f for f in folds if not 0 <= f < config.protocol.n_folds]
    if bad:
        raise SystemExit(f"folds {bad} are outside [0, {config.protocol.n_folds})")
    seeds = parse_seeds(args.seeds) or config.seeds
    return config, methods, folds, seeds


def build_roles(dataset: str, data_root: str | None, config: CKDJobConfig, folds: tuple[int, ...]) -> dict[int, FoldRoles]:
    protocol = config.protocol
    roles = {}
    for fold in folds:
        table = load_corpus(dataset, data_root, n_folds=protocol.n_folds, fold=fold, split_seed=protocol.split_seed)
        roles[fold] = fold_roles(
            table, config.ckd.pairs, config.ckd.network, val_per_identity=protocol.val_per_identity, split_seed=protocol.split_seed
        )
    return roles


def paired_differences(rows: list[dict[str, Any]], baseline: str = BASELINE) -> pd.DataFrame:
    """Per method: mean ± std over (fold, seed) of ``metric(method) - metric(baseline)``."""
    frame = rows_to_frame(rows)
    metrics = [m for m in METRICS if m in frame.columns]
    base = frame[frame["method"] == baseline].set_index(["fold", "seed"])[metrics]
    diffs = []
    for method, group in frame[frame["method"] != baseline].groupby("method", sort=False):
        delta = group.set_index(["fold", "seed"])[metrics] - base
        delta = delta.dropna(how="all")
        if len(delta):
            diffs.append({"method": f"{method} - {baseline}", **{m: delta[m].tolist() for m in metrics}})
    table_rows = []
    for entry in diffs:
        row = {"method": entry["method"]}
        for m in metrics:
            values = pd.Series(entry[m])
            row[f"{m}_mean"], row[f"{m}_std"] = values.mean(), values.std(ddof=0)
        row["n_pairs"] = len(entry[metrics[0]])
        table_rows.append(row)
    return pd.DataFrame(table_rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    config, methods, folds, seeds = resolve(args)
    roles = build_roles(args.dataset, args.data_root, config, folds)
    init_ray()
    from raylab.data.store import cache_root

    name = f"ckd-{args.dataset}{'-quick' if args.quick else ''}"
    with tracked_run(JOB, name, params=config, tags={"dataset": args.dataset, "method": "grid"}) as parent:
        context = {
            "tracking_uri": tracking_uri(),
            "parent_run_id": parent.run_id,
            "dataset": args.dataset,
            "name": name,
            "storage_path": str(cache_root() / "ray_results"),
            "log_models": not args.no_models,
            "first_seed": min(seeds),
        }
        grid = run_grid(
            roles, config.ckd, config.protocol, methods=methods, seeds=seeds, max_concurrent=config.max_concurrent, context=context
        )
        rows = [summary_row(r["method"], args.dataset, None, r["seed"], r["metrics"], fold=r["fold"]) for r in grid]
        table = aggregate(rows, ["method"], list(METRICS))
        order = {m: i for i, m in enumerate(methods)}
        table = table.sort_values("method", key=lambda s: s.map(order)).reset_index(drop=True)
        text = f"mean ± std over folds {list(folds)} x seeds {list(seeds)}\n" + format_table(table, list(METRICS))
        if BASELINE in methods and len(methods) > 1:
            diffs = paired_differences(rows)
            text += f"\n\npaired difference to {BASELINE} (same fold, seed, gallery draws), mean ± std\n"
            text += format_table(diffs, list(METRICS))
        parent.log_text(text, "results_table.txt")
        parent.log_text(rows_to_frame(rows).to_csv(index=False), "results_rows.csv")
    print(text)
    if args.summary_json:
        write_summary(args.summary_json, JOB, rows, folds=list(folds), table=text)
    return {"rows": rows, "table": table, "text": text}
