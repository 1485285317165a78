#!/usr/bin/env python
"""Few-shot accuracy benchmark through the library code path (``fit_classifier`` + ``classify``).

Takes any directory laid out like SIB-200 (``train.tsv`` and ``dev.tsv``/``test.tsv``, tab
separated, with ``category`` and ``text`` columns). For each method × k × seed it samples k
training segments per category (with the seed), trains exactly what ``qualcode train`` trains,
classifies the evaluation split and records macro-F1, accuracy and wall time. With all training
data it also measures the review flags: accuracy of the unflagged predictions and the share
flagged, at ``--target-accuracy`` and across targets (risk-coverage).

    python scripts/bench_fewshot.py --data ../shared/bench/sib200-swe --split dev \
        --k 4,8,16,32,all --seeds 5 --methods tfidf,frozen,finetune --json runs.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402

from qualcode.classification import classify  # noqa: E402
from qualcode.codebook import Codebook, parse_codebook  # noqa: E402
from qualcode.model.encoders import TFIDF  # noqa: E402
from qualcode.model.storage import ThemeModel, review_evidence
from qualcode.training import fit_classifier

METHODS = ("tfidf", "frozen", "finetune")
REVIEW_TARGETS = (0.8, 0.85, 0.9, 0.95, 0.98)


def slug(name: str) -> str:
    """A codebook id for a category name (``science/technology`` -> ``science_technology``)."""
    s = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return s if s and s[0].isalpha() else f"c_{s}"


def category_codebook(categories: list[str]) -> Codebook:
    """A codebook whose themes are the category names (id = slug, label = description = name)."""
    themes = [{"id": slug(c), "label": c, "description": c} for c in categories]
    return parse_codebook({"name": "categories", "themes": themes}, source="categories")


def read_split(directory: Path, split: str) -> pd.DataFrame:
    path = directory / f"{split}.tsv"
    if not path.exists():
        sys.exit(f"bench_fewshot: {path} does not exist")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    missing = {"category", "text"} - set(table.columns)
    if missing:
        sys.exit(f"bench_fewshot: {path} lacks column(s) {', '.join(sorted(missing))}")
    return table[table["text"].str.strip() != ""].reset_index(drop=True)


def sample(train: pd.DataFrame, k: int | None, seed: int) -> pd.DataFrame:
    """k rows per category (all rows when k is None), chosen with ``seed``."""
    if k is None:
        return train
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for category in sorted(train["category"].unique()):
        rows = np.flatnonzero(train["category"].to_numpy() == category)
        picked += rng.choice(rows, size=min(k, len(rows)), replace=False).tolist()
    return train.iloc[sorted(picked)].reset_index(drop=True)


def run_one(
    method: str,
    train: pd.DataFrame,
    evaluation: pd.DataFrame,
    codebook: Codebook | None,
    *,
    seed: int,
    target_accuracy: float,
    encoder: str | None = None,
) -> tuple[pd.DataFrame, ThemeModel, float]:
    """Train with the library, classify the evaluation split; (predictions, model, seconds).
    ``encoder`` is any sentence-transformers name or directory (default: the bundled e5-small).
    A fine-tuned encoder lives as long as the model that holds it."""
    ids = {c: slug(c) for c in train["category"].unique()} if codebook else None
    themes = [ids[c] if ids else c for c in train["category"]]
    start = time.perf_counter()
    clf, rule = fit_classifier(
        train["text"].tolist(),
        themes,
        codebook,
        encoder=TFIDF if method == "tfidf" else encoder,
        finetune=method == "finetune",
        target_accuracy=target_accuracy,
        seed=seed,
        progress=False,
    )
    model = ThemeModel(clf, codebook, rule, review_evidence=review_evidence(clf))  # type: ignore[arg-type]
    predictions = classify(model, evaluation[["text"]], progress=False)
    seconds = time.perf_counter() - start
    return predictions, model, seconds


def scores(truth: list[str], predicted: list[str]) -> tuple[float, float]:
    return (
        float(f1_score(truth, predicted, average="macro")),
        float(accuracy_score(truth, predicted)),
    )


def review_table(
    model: ThemeModel, evaluation: pd.DataFrame, truth: list[str], targets: tuple[float, ...]
) -> list[dict]:
    """Unflagged accuracy and coverage on the evaluation split for several target accuracies."""
    rows = []
    for target in targets:
        pred = classify(model, evaluation[["text"]], rule=model.rule_for(target), progress=False)
        kept = ~pred["needs_review"].to_numpy(bool)
        correct = pred["theme"].to_numpy() == np.asarray(truth)
        rows.append(
            {
                "target": target,
                "coverage": float(kept.mean()),
                "flagged": float(1 - kept.mean()),
                "unflagged_accuracy": float(correct[kept].mean()) if kept.any() else float("nan"),
                "accuracy_all": float(correct.mean()),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="directory with train.tsv etc.")
    parser.add_argument("--split", default="dev", help="evaluation split: dev or test")
    parser.add_argument("--k", default="4,8,16,32,all", help="examples per category")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per method and k")
    parser.add_argument("--methods", default="tfidf,frozen,finetune")
    parser.add_argument(
        "--codebook",
        choices=("names", "none"),
        default="names",
        help="'names' (default): a codebook built from the category names, as `qualcode train` "
        "always has one; 'none': the labels alone",
    )
    parser.add_argument(
        "--encoder",
        help="sentence-transformers model name or directory for frozen/finetune "
        "(default: the bundled e5-small)",
    )
    parser.add_argument("--target-accuracy", type=float, default=0.95)
    parser.add_argument(
        "--review-method",
        default="frozen",
        help="method for the review-flag table (all training data); 'none' to skip",
    )
    parser.add_argument("--json", type=Path, help="write one JSON record per run (JSON lines)")
    args = parser.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := set(methods) - set(METHODS):
        parser.error(f"unknown method(s) {', '.join(sorted(unknown))}; choose from {METHODS}")
    ks = [None if k.strip() == "all" else int(k) for k in args.k.split(",") if k.strip()]
    train = read_split(args.data, "train")
    evaluation = read_split(args.data, args.split)
    categories = sorted(train["category"].unique())
    codebook = category_codebook(categories) if args.codebook == "names" else None
    to_id = {c: slug(c) for c in categories} if codebook else {c: c for c in categories}
    truth = [to_id.get(c, c) for c in evaluation["category"]]

    out = open(args.json, "w", encoding="utf-8") if args.json else None  # noqa: SIM115
    records: list[dict] = []
    try:
        for method in methods:
            for k in ks:
                for seed in range(args.seeds):
                    subset = sample(train, k, seed)
                    pred, _, seconds = run_one(
                        method,
                        subset,
                        evaluation,
                        codebook,
                        seed=seed,
                        target_accuracy=args.target_accuracy,
                        encoder=args.encoder,
                    )
                    f1, acc = scores(truth, pred["theme"].tolist())
                    record = {
                        "method": method,
                        "k": "all" if k is None else k,
                        "seed": seed,
                        "macro_f1": round(f1, 4),
                        "accuracy": round(acc, 4),
                        "seconds": round(seconds, 1),
                    }
                    records.append(record)
                    print(json.dumps(record), file=sys.stderr, flush=True)
                    if out:
                        out.write(json.dumps(record) + "\n")
                        out.flush()
    finally:
        if out:
            out.close()

    print(
        f"\n## Few-shot accuracy on {args.data.name}/{args.split} "
        f"(codebook: {args.codebook}, {args.seeds} seeds)\n"
    )
    print("| method | k | macro-F1 | accuracy | seconds/run |")
    print("|---|---|---|---|---|")
    frame = pd.DataFrame(records)
    for (method, k), g in frame.groupby(["method", "k"], sort=False):
        print(
            f"| {method} | {k} | {g.macro_f1.mean():.3f} ± {g.macro_f1.std(ddof=1):.3f} "
            f"| {g.accuracy.mean():.3f} ± {g.accuracy.std(ddof=1):.3f} | {g.seconds.mean():.1f} |"
        )

    if args.review_method != "none":
        targets = tuple(sorted(set(REVIEW_TARGETS) | {args.target_accuracy}))
        tables = []
        for seed in range(args.seeds):
            _, model, _ = run_one(
                args.review_method,
                train,
                evaluation,
                codebook,
                seed=seed,
                target_accuracy=args.target_accuracy,
                encoder=args.encoder,
            )
            tables.append(pd.DataFrame(review_table(model, evaluation, truth, targets)))
            del model  # a fine-tuned encoder is freed with its model
        table = pd.concat(tables).groupby("target").mean()
        print(
            f"\n## Review flags ({args.review_method}, all training data, mean of "
            f"{args.seeds} seeds; default target {args.target_accuracy})\n"
        )
        print("| target accuracy | coverage (unflagged) | unflagged accuracy | accuracy of all |")
        print("|---|---|---|---|")
        for target, row in table.iterrows():
            mark = " (default)" if target == args.target_accuracy else ""
            print(
                f"| {target:.2f}{mark} | {row.coverage:.3f} | {row.unflagged_accuracy:.3f} "
                f"| {row.accuracy_all:.3f} |"
            )


if __name__ == "__main__":
    main()
