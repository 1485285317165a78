#!/usr/bin/env python
"""New material, few reviews: the Skåne round-table notes scored against the notes dev set.

Everything runs through the library exactly as ``make run`` and the CLI do (``train`` on the
seed set, ``classify`` the notes of seed 001), and is scored on ``corpora/labels/notes_dev.csv``
(the developers' labels of the notes; a predicted theme is right when it is one of the coder's
themes, macro-F1 is over the coder's dominant theme).

Part 1, seed set alone: accuracy, macro-F1, and the share left unflagged with its accuracy at
several targets, with and without learning from the batch (``--no-adapt``); and the risk–coverage
table (accuracy of the most confident share of notes).

Part 2, the learning curve: N notes labelled from the batch (0, 5, 10, 15, 20, 30), chosen in the
labeller's order (``label --template … --model … --first N``) or at random (``--seeds`` seeds),
answered from the dev set, added to the seed set (``train seed_set.csv batch.csv``); scored on
the notes not labelled.

    python scripts/bench_notes.py                 # both parts, about 8 minutes on 2 cores
    python scripts/bench_notes.py --part 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import f1_score, roc_auc_score  # noqa: E402

from qualcode.classification import classify  # noqa: E402
from qualcode.codebook import load_codebook  # noqa: E402
from qualcode.demo import corpora_dir, skane_notes  # noqa: E402
from qualcode.labelling import most_helpful_first  # noqa: E402
from qualcode.training import prepare_labels, read_labels, train  # noqa: E402

SIZES = (0, 5, 10, 15, 20, 30)
TARGETS = (0.8, 0.9, 0.95)
COVERAGES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def score(predictions: pd.DataFrame, gold: pd.Series) -> dict[str, float]:
    """Accuracy, macro-F1 and the unflagged share and accuracy of ``predictions`` on ``gold``
    (theme cells by segment_id)."""
    rows = predictions[predictions["segment_id"].isin(gold.index)]
    truth = gold.loc[rows["segment_id"]].tolist()
    right = np.array([t in g.split(";") for t, g in zip(rows["theme"], truth)])
    kept = ~rows["needs_review"].astype(bool).to_numpy()
    return {
        "notes": len(rows),
        "accuracy": float(right.mean()),
        "macro_f1": float(
            f1_score([g.split(";")[0] for g in truth], rows["theme"], average="macro")
        ),
        "unflagged": float(kept.mean()),
        "unflagged_accuracy": float(right[kept].mean()) if kept.any() else float("nan"),
        "_right": right,
        "_confidence": rows["confidence"].to_numpy(float),
    }


def risk_coverage(right: np.ndarray, confidence: np.ndarray) -> list[dict[str, float]]:
    order = np.argsort(-confidence, kind="stable")
    out = []
    for level in COVERAGES:
        k = max(1, int(round(level * len(order))))
        out.append(
            {
                "coverage": level,
                "min_confidence": float(confidence[order][k - 1]),
                "accuracy": float(right[order][:k].mean()),
            }
        )
    return out


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def part_one(seed: pd.DataFrame, codebook, notes: pd.DataFrame, gold: pd.Series) -> dict:
    started = time.perf_counter()
    model = train(seed, codebook, progress=False)
    rows = []
    for adapt in (True, False):
        for target in TARGETS:
            predictions = classify(
                model, notes, rule=model.rule_for(target), adapt=adapt, progress=False
            )
            result = score(predictions, gold)
            rows.append({"adapt": adapt, "target": target, **public(result)})
            if adapt and target == 0.9:
                curve = risk_coverage(result["_right"], result["_confidence"])
    result = score(predictions, gold)
    rows_scored = predictions[predictions["segment_id"].isin(gold.index)]
    wrong = ~result["_right"]
    evidence = {
        # How well each signal ranks the errors first (AUROC; 0.5 is no better than chance):
        # a flag rule is kept only where it predicts errors.
        name: float(roc_auc_score(wrong, -rows_scored[column].to_numpy(float)))
        for name, column in (("confidence", "confidence"), ("similarity", "similarity"))
    }
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "card_cv": model.card["cv"],
        "lexical_weight": model.card["classifier"]["lexical_weight"],
        "rows": rows,
        "risk_coverage": curve,
        "error_auroc": evidence,
    }


def part_two(
    seed: pd.DataFrame, codebook, notes: pd.DataFrame, gold: pd.Series, seeds: int
) -> list[dict]:
    base = train(seed, codebook, progress=False)
    helpful, _ = most_helpful_first(base, notes["text"].tolist())
    ids = notes["segment_id"].tolist()
    orders = {"labeller": [helpful]}
    orders["random"] = [list(np.random.default_rng(s).permutation(len(ids))) for s in range(seeds)]
    rows = []
    for name, runs in orders.items():
        for run, order in enumerate(runs):
            for n in SIZES:
                chosen = [ids[i] for i in order[:n]]
                batch = notes[notes["segment_id"].isin(chosen)].copy()
                batch["theme"] = gold.loc[batch["segment_id"]].to_numpy()
                labels = prepare_labels(pd.concat([seed, batch], ignore_index=True), codebook)
                model = base if n == 0 else train(labels, codebook, progress=False)
                predictions = classify(model, notes, progress=False)
                rest = gold.drop(index=chosen)
                result = public(score(predictions, rest))
                rows.append({"order": name, "run": run, "labels_from_batch": n, **result})
                print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def summarise_curve(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    grouped = table.groupby(["order", "labels_from_batch"])
    out = grouped[["macro_f1", "accuracy", "unflagged", "unflagged_accuracy"]].agg(["mean", "std"])
    return out.round(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", type=int, choices=(1, 2), default=None)
    parser.add_argument("--seeds", type=int, default=5, help="random orders in part 2")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    corpora = corpora_dir()
    codebook = load_codebook(corpora / "codebook.yaml")
    seed = read_labels(corpora / "labels" / "seed_set.csv", codebook)
    notes = skane_notes(corpora)
    dev = pd.read_csv(corpora / "labels" / "notes_dev.csv", dtype=str, keep_default_na=False)
    gold = dev.set_index("segment_id")["theme"]
    results: dict = {}
    if args.part in (None, 1):
        results["seed_only"] = part_one(seed, codebook, notes, gold)
        print(pd.DataFrame(results["seed_only"]["rows"]).round(3).to_string(index=False))
        print(pd.DataFrame(results["seed_only"]["risk_coverage"]).round(3).to_string(index=False))
        print("error AUROC", results["seed_only"]["error_auroc"])
    if args.part in (None, 2):
        results["curve"] = part_two(seed, codebook, notes, gold, args.seeds)
        print(summarise_curve(results["curve"]).to_string())
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
