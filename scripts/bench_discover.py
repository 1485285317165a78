#!/usr/bin/env python
"""Theme discovery benchmark through the library code path: hide two topics, find them again.

On a directory laid out like SIB-200 (``train.tsv``, ``dev.tsv``; ``category`` and ``text``
columns), for each seed and each pair of hidden topics:

1. the evaluation set is ``dev.tsv`` plus a stratified share of ``train.tsv`` held out with the
   seed (``--held-out``, 105 rows: about the size of the test split), unless ``--split test``;
2. a model is trained (``fit_classifier``, exactly what ``qualcode train`` fits) on the rest of
   ``train.tsv`` without the two hidden topics, with a codebook of the known topics only;
3. the evaluation set is classified (``classify``) and ``discover`` runs on the predictions
   with the model's labelled segments;
4. scores: for each hidden topic, the F1 of its best-matching cluster, counted over the *whole*
   evaluation set (a hidden-topic segment discovery did not select is missed), averaged over
   the two; the purity and adjusted Rand index of the clusters over the segments discovery
   considered; whether the hidden topic's name (or a word for it) is among the top keywords of
   its best cluster.

Trained models and predictions are cached under ``--cache`` so that runs of discovery are cheap.

    python scripts/bench_discover.py --data ../shared/bench/sib200-swe --seeds 5 --pairs all
"""

from __future__ import annotations

import argparse
import itertools
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
import yaml  # noqa: E402
from bench_fewshot import category_codebook, read_split, slug  # noqa: E402

from qualcode.classification import classify  # noqa: E402
from qualcode.codebook import Codebook, load_codebook  # noqa: E402
from qualcode.discovery import Discovery, discover  # noqa: E402
from qualcode.files.tables import read_table, write_table  # noqa: E402
from qualcode.model.keywords import stem  # noqa: E402
from qualcode.model.storage import load_model  # noqa: E402
from qualcode.training import train as train_model  # noqa: E402

HELD_OUT = 105


def evaluation_split(
    data: Path, split: str, seed: int, held_out: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, evaluation rows) for one seed."""
    train = read_split(data, "train")
    if split == "test":
        return train, read_split(data, "test")
    rng = np.random.default_rng(seed)
    share = held_out / len(train)
    picked: list[int] = []
    for category in sorted(train["category"].unique()):
        rows = np.flatnonzero(train["category"].to_numpy() == category)
        picked += rng.choice(rows, size=round(share * len(rows)), replace=False).tolist()
    rest = train.drop(index=picked).reset_index(drop=True)
    evaluation = pd.concat([read_split(data, "dev"), train.iloc[sorted(picked)]])
    return rest, evaluation.reset_index(drop=True)


def saved_codebook(categories: list[str], path: Path) -> Codebook:
    """A codebook of ``categories`` written to ``path`` (a saved model needs its file)."""
    themes = category_codebook(categories).themes
    data = {
        "name": "known topics",
        "themes": [{"id": t.id, "label": t.label, "description": t.description} for t in themes],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_codebook(path)


def prepared(
    data: Path, split: str, seed: int, hidden: tuple[str, str], cache: Path, held_out: int
) -> tuple[pd.DataFrame, Path, pd.DataFrame]:
    """(predictions, model directory, evaluation rows) for one seed and pair, cached."""
    train, evaluation = evaluation_split(data, split, seed, held_out)
    evaluation = evaluation.assign(segment_id=[f"eval-{i:04d}" for i in range(len(evaluation))])
    where = cache / f"{split}-seed{seed}-{slug(hidden[0])}-{slug(hidden[1])}"
    predictions_path, model_dir = where / "predictions.csv", where / "model"
    if not predictions_path.exists():
        known = train[~train["category"].isin(hidden)]
        codebook = saved_codebook(sorted(known["category"].unique()), where / "codebook.yaml")
        labels = pd.DataFrame(
            {"text": known["text"], "theme": [slug(c) for c in known["category"]]}
        )
        model = train_model(labels, codebook, seed=seed, progress=False)
        model.save(model_dir)
        predictions = classify(model, evaluation[["segment_id", "text"]], progress=False)
        write_table(predictions, predictions_path)
    return read_table(predictions_path, required=("text",)), model_dir, evaluation


# Swedish words that name each SIB-200 topic (a keyword "names" the topic when its stem is one
# of these words' stems).
TOPIC_WORDS = {
    "entertainment": "underhållning film musik tv show konsert artist band album skådespelare",
    "geography": "geografi flod berg hav sjö ö land kust klimat vulkan öken kontinent",
    "health": "hälsa sjukdom vård patient läkare virus sjukhus medicin behandling smitta",
    "politics": "politik regering val president parti minister riksdag kongress politisk",
    "science/technology": "vetenskap forskare forskning teknik teknologi atom cell dator energi",
    "sports": "sport idrott match lag spelare mål vinna turnering mästerskap säsong",
    "travel": "resa resenär turist hotell flyg flygplats besök besökare semester",
}


def score_run(result: Discovery, truth: np.ndarray, hidden: tuple[str, str]) -> dict:
    """Best-match F1 per hidden topic over the whole evaluation set, purity and ARI over the
    segments considered or clustered, keyword hits, and whether the best cluster was called new."""
    from sklearn.metrics import adjusted_rand_score

    assigned = result.assigned
    by_number = {c.number: c for c in result.clusters}
    out: dict = {"hidden": list(hidden), "clusters": len(result.clusters), "new": len(result.new)}
    f1s, hits, called_new = [], [], []
    for topic in hidden:
        is_topic = truth == topic
        best, best_cluster = 0.0, None
        for number in by_number:
            members = assigned == number
            both = int((members & is_topic).sum())
            f1 = 2 * both / (members.sum() + is_topic.sum()) if both else 0.0
            if f1 > best:
                best, best_cluster = f1, by_number[number]
        f1s.append(best)
        wanted = {stem(w) for w in TOPIC_WORDS[topic].split()}
        top = best_cluster.keywords[:5] if best_cluster else []
        hits.append(any(stem(w) in wanted for w in top))
        called_new.append(best_cluster is not None and best_cluster.verdict == "new")
        out[f"keywords[{topic}]"] = ", ".join(top)
    looked = result.considered | (assigned > 0)
    out["f1"] = float(np.mean(f1s))
    out["f1_per_topic"] = [round(f, 4) for f in f1s]
    out["keyword_hits"] = float(np.mean(hits))
    out["called_new"] = float(np.mean(called_new))
    out["ari"] = float(adjusted_rand_score(truth[looked], assigned[looked]))
    counts = pd.crosstab(assigned[looked], truth[looked])
    out["purity"] = float(counts.max(axis=1).sum() / looked.sum())
    return out


def timing(data: Path, n: int, seed: int = 0) -> None:
    """Seconds ``discover`` takes on ``n`` synthetic segments after embedding: each is a pair of
    sentences from the SIB-200 splits and the samverkan seed set (its embedding the normalised
    sum of theirs, so nothing new needs the encoder), coded by a model trained on the seed
    set, with its confidence as ``classify`` computes it."""
    from qualcode.codebook import load_codebook
    from qualcode.model.classifier import get_encoder
    from qualcode.model.encoders import embed
    from qualcode.training import read_labels

    root = Path(__file__).resolve().parents[1]
    codebook = load_codebook(root / "corpora" / "codebook.yaml")
    labels = read_labels(root / "corpora" / "labels" / "seed_set.csv", codebook)
    sentences = [*read_split(data, "train")["text"], *read_split(data, "dev")["text"]]
    sentences += labels["text"].tolist()
    vectors = embed(sentences, get_encoder(None), progress=False)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sentences), size=(n, 2))
    texts = [f"{sentences[a]} {sentences[b]}" for a, b in picks]
    pairs = vectors[picks[:, 0]] + vectors[picks[:, 1]]
    pairs /= np.linalg.norm(pairs, axis=1, keepdims=True)
    model = train_model(labels, codebook, seed=seed, progress=False)
    clf = model.classifier
    proba = clf.proba_from_features(clf.transform(texts, embeddings=pairs))
    predictions = pd.DataFrame({"text": texts, "theme": clf.classes_[proba.argmax(axis=1)]})
    predictions["confidence"] = proba.max(axis=1).round(4)
    start = time.perf_counter()
    result = discover(predictions, codebook, model=model, seed=seed, embeddings=pairs)
    seconds = time.perf_counter() - start
    print(f"{n} segments: discover took {seconds:.1f} s after embedding ({result.summary()})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="directory with train.tsv etc.")
    parser.add_argument("--split", default="dev", help="dev (dev + held-out train) or test")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument(
        "--pairs", default="all", help="'all' (21 pairs) or 'sample' (every third pair: 7)"
    )
    parser.add_argument("--held-out", type=int, default=HELD_OUT)
    parser.add_argument("--cache", type=Path, default=Path(".bench-discover"))
    parser.add_argument("--json", type=Path, default=None, help="append one JSON line per run")
    parser.add_argument("--timing", type=int, default=0, help="time N synthetic segments instead")
    args = parser.parse_args(argv)
    if args.timing:
        return timing(args.data, args.timing)
    categories = sorted(read_split(args.data, "train")["category"].unique())
    pairs = list(itertools.combinations(categories, 2))
    if args.pairs == "sample":
        pairs = pairs[::3]
    runs = []
    for seed in range(args.seeds):
        for hidden in pairs:
            predictions, model_dir, evaluation = prepared(
                args.data, args.split, seed, hidden, args.cache, args.held_out
            )
            model = load_model(model_dir)
            start = time.perf_counter()
            result = discover(predictions, model.codebook, model=model, seed=seed)
            seconds = time.perf_counter() - start
            run = {"seed": seed, **score_run(result, evaluation["category"].to_numpy(), hidden)}
            run["seconds"] = round(seconds, 2)
            runs.append(run)
            print(
                f"seed {seed} hidden {hidden[0]:>18} + {hidden[1]:<18} F1 {run['f1']:.3f} "
                f"purity {run['purity']:.2f} ARI {run['ari']:.2f} "
                f"keywords {run['keyword_hits']:.1f} clusters {run['clusters']} new {run['new']}",
                flush=True,
            )
            if args.json:
                with args.json.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(run, ensure_ascii=False) + "\n")
    table = pd.DataFrame(runs)
    per_seed = table.groupby("seed")["f1"].mean()
    print(
        f"\n{len(table)} runs: best-match F1 {table['f1'].mean():.3f} (per seed "
        f"{', '.join(f'{v:.3f}' for v in per_seed)}; lowest run {table['f1'].min():.3f}), "
        f"purity {table['purity'].mean():.3f}, ARI {table['ari'].mean():.3f}, keyword hits "
        f"{table['keyword_hits'].mean():.2f}, best cluster called new "
        f"{table['called_new'].mean():.2f}, {table['seconds'].mean():.2f} s per run"
    )
    by_pair = table.assign(pair=table["hidden"].map(" + ".join)).groupby("pair")["f1"].mean()
    print(by_pair.round(3).to_string())


if __name__ == "__main__":
    sys.exit(main())
