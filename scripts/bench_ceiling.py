#!/usr/bin/env python
"""How far the frozen encoder can go with *all* the labels: repeated stratified k-fold
cross-validation on a training split only (the evaluation splits are never read).

For each head it reports out-of-fold macro-F1, accuracy, and the largest share of segments
that could stay unflagged at ``--target-accuracy`` if the confidence threshold were chosen with
hindsight on these same predictions (an upper bound on the review-flag coverage; the library's
own rule is chosen without hindsight). Heads:

- ``library``: exactly what ``qualcode train`` fits (``ThemeClassifier``: C and codebook prior
  chosen by inner CV, temperature scaling);
- ``logistic``: plain logistic regression (C = 10) on the same embeddings;
- ``svm``: an RBF support-vector machine (C = 3, gamma = 2) with libsvm's probabilities (not in
  the library: it is here as the strongest alternative head we measured).

    python scripts/bench_ceiling.py --data ../shared/bench/sib200-swe --repeats 2
    python scripts/bench_ceiling.py --labels corpora/labels/seed_set.csv \
        --codebook corpora/codebook.yaml --target-accuracy 0.9
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from bench_fewshot import category_codebook, read_split, slug  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

from qualcode.codebook import Codebook, load_codebook  # noqa: E402
from qualcode.model.classifier import ThemeClassifier, get_encoder  # noqa: E402
from qualcode.model.encoders import embed  # noqa: E402
from qualcode.model.review_rule import confidence_threshold
from qualcode.training import read_labels  # noqa: E402

HEADS = ("library", "logistic", "svm")


def load(args: argparse.Namespace) -> tuple[list[str], list[str], Codebook]:
    """Texts, theme ids and codebook from a SIB-style directory or a labels file."""
    if args.labels:
        codebook = load_codebook(args.codebook)
        table = read_labels(args.labels, codebook)
        return table["text"].tolist(), [t.split(";")[0] for t in table["theme"]], codebook
    train = read_split(Path(args.data), "train")
    codebook = category_codebook(sorted(train["category"].unique()))
    return train["text"].tolist(), [slug(c) for c in train["category"]], codebook


def out_of_fold(
    head: str,
    encoder: str | None,
    texts: list[str],
    themes: np.ndarray,
    features: np.ndarray,
    codebook: Codebook,
    seed: int,
    folds: int,
) -> np.ndarray:
    """Out-of-fold probabilities (columns: sorted theme ids) of one head."""
    classes = np.unique(themes)
    proba = np.zeros((len(texts), len(classes)))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for train, test in split.split(features, themes):
        if head == "library":
            model = ThemeClassifier(encoder=encoder, codebook=codebook, random_state=seed)
            model.fit([texts[i] for i in train], themes[train].tolist())
            p = model.predict_proba([texts[i] for i in test])
            columns = [list(model.classes_).index(c) for c in classes]
            proba[test] = p[:, columns]
            continue
        if head == "logistic":
            model = LogisticRegression(C=10.0, max_iter=5000)
        else:
            # libsvm's own Platt scaling with pairwise coupling, deprecated in scikit-learn 1.9;
            # CalibratedClassifierCV(ensemble=False) ranks far worse here (coverage 0.015).
            warnings.filterwarnings("ignore", "The `probability` parameter", FutureWarning)
            model = SVC(C=3.0, gamma=2.0, probability=True, random_state=seed)
        model.fit(features[train], themes[train])
        proba[test] = model.predict_proba(features[test])
    return proba


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="directory with train.tsv (category, text)")
    parser.add_argument("--labels", help="a labels CSV/XLSX instead of --data")
    parser.add_argument("--codebook", help="the codebook of --labels")
    parser.add_argument("--encoder", help="sentence-transformers name or directory (e5-small)")
    parser.add_argument("--heads", default=",".join(HEADS))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--target-accuracy", type=float, default=0.95)
    parser.add_argument("--json", help="write one record per head and repeat to this file")
    args = parser.parse_args(argv)
    if bool(args.data) == bool(args.labels) or (args.labels and not args.codebook):
        sys.exit("bench_ceiling: give --data DIR, or --labels FILE with --codebook FILE")
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    unknown = set(heads) - set(HEADS)
    if unknown:
        sys.exit(f"bench_ceiling: unknown head(s) {', '.join(sorted(unknown))}")

    texts, themes, codebook = load(args)
    y = np.asarray(themes)
    features = embed(texts, get_encoder(args.encoder), progress=True)
    records = []
    for head in heads:
        for seed in range(args.repeats):
            start = time.perf_counter()
            proba = out_of_fold(head, args.encoder, texts, y, features, codebook, seed, args.folds)
            predicted = np.unique(y)[proba.argmax(axis=1)]
            confidence, correct = proba.max(axis=1), predicted == y
            threshold = confidence_threshold(confidence, correct, args.target_accuracy)
            records.append(
                {
                    "head": head,
                    "seed": seed,
                    "n": len(y),
                    "macro_f1": float(f1_score(y, predicted, average="macro")),
                    "accuracy": float(accuracy_score(y, predicted)),
                    "target": args.target_accuracy,
                    "best_coverage": float((confidence >= threshold).mean()),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(json.dumps(records[-1]), flush=True)
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"\n| head | macro-F1 | accuracy | best coverage at {args.target_accuracy} |")
    print("|---|---|---|---|")
    for head in heads:
        rows = [r for r in records if r["head"] == head]
        mean = {k: np.mean([r[k] for r in rows]) for k in ("macro_f1", "accuracy", "best_coverage")}
        print(
            f"| {head} | {mean['macro_f1']:.3f} | {mean['accuracy']:.3f} "
            f"| {mean['best_coverage']:.3f} |"
        )


if __name__ == "__main__":
    main()
