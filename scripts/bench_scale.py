#!/usr/bin/env python
"""Throughput and peak memory of ``qualcode segment`` / ``classify`` / ``train`` at scale.

Builds synthetic survey answers from the bundled corpora (sentences of the seed set and the
Skåne notes, combined at random, so every answer is new to the embedding cache), runs the real
CLI in a subprocess and samples the resident memory (RSS) of it and of every process it starts
(Dask workers) every 0.2 s. One JSON line per run on stdout.

    python scripts/bench_scale.py data --sizes 10000,100000,1000000 --out /tmp/scale
    python scripts/bench_scale.py segment --sizes 10000,100000,1000000 --out /tmp/scale
    python scripts/bench_scale.py classify --model models/samverkan --sizes 10000 --out /tmp/scale
    python scripts/bench_scale.py classify --model models/samverkan --sizes 10000 \
        --dask local:2 --out /tmp/scale
    python scripts/bench_scale.py classify --model models/samverkan --sizes 100000,1000000 \
        --distinct 10000 --out /tmp/scale
    python scripts/bench_scale.py train --out /tmp/scale [--finetune]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT / "corpora"


def sentences() -> list[str]:
    """Sentences of the seed set and the notes, the material answers are built from."""
    import pandas as pd

    seed = pd.read_csv(CORPORA / "labels" / "seed_set.csv", dtype=str)["text"]
    notes = pd.read_csv(CORPORA / "labels" / "notes_dev.csv", dtype=str)["text"]
    out = []
    for text in [*seed, *notes]:
        out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", str(text)) if len(s.strip()) > 12]
    return sorted(set(out))


def answers(n: int, seed: int = 0) -> list[str]:
    """``n`` survey answers: one to three sentences each, a respondent's own mix."""
    pool = sentences()
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, size=n)
    picks = rng.integers(0, len(pool), size=sizes.sum())
    out, start = [], 0
    for size in sizes:
        out.append(" ".join(pool[i] for i in picks[start : start + size]))
        start += size
    return out


def write_data(n: int, folder: Path, distinct: int | None = None) -> dict[str, Path]:
    """A survey export (``Svar`` column, for ``segment --column``) and a segments table (for
    ``classify``) of ``n`` rows, as CSV; returns their paths. With ``distinct``, the rows are
    drawn from that many different answers (each row still its own respondent), so a run
    embeds ``distinct`` texts and finds the rest in its embedding cache."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{n}" if not distinct else f"{n}_of_{distinct}"
    survey = folder / f"survey_{tag}.csv"
    segments = folder / f"segments_{tag}.csv"
    if not survey.exists() or not segments.exists():
        if distinct:
            pool = np.array(answers(distinct), dtype=object)
            texts = pool[np.random.default_rng(1).integers(0, distinct, size=n)].tolist()
        else:
            texts = answers(n)
        ids = [f"r{i:07d}" for i in range(n)]
        kommun = np.array(["Lund", "Malmö", "Ystad", "Kristianstad", "Helsingborg"])[
            np.arange(n) % 5
        ]
        pd.DataFrame({"Respondent": ids, "Kommun": kommun, "Svar": texts}).to_csv(
            survey, index=False
        )
        pd.DataFrame(
            {"segment_id": [f"survey-{i}" for i in ids], "text": texts, "Kommun": kommun}
        ).to_csv(segments, index=False)
    return {"survey": survey, "segments": segments}


def cold_cache(folder: Path) -> dict[str, str]:
    """The environment for a run with cold embedding caches: a new sqlite file for this
    process, and the Dask workers' own files (under the temporary folder) removed."""
    import shutil
    import tempfile

    shutil.rmtree(Path(tempfile.gettempdir()) / f"qualcode-{os.getuid()}", ignore_errors=True)
    cache = folder / f"cold-cache-{time.time_ns()}.sqlite"
    return {"QUALCODE_EMBEDDING_CACHE": str(cache)}


def measure(command: list[str], extra_env: dict[str, str] | None = None) -> dict:
    """Run ``command``; wall time, exit code, peak RSS of the main process, of each child
    process (Dask workers) and of all of them together (sampled every 0.2 s)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    start = time.perf_counter()
    proc = psutil.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_main, peak_total = 0, 0
    peak_child: dict[int, int] = {}
    while proc.poll() is None:
        try:
            main_rss = proc.memory_info().rss
            total = main_rss
            for child in proc.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                peak_child[child.pid] = max(peak_child.get(child.pid, 0), rss)
                total += rss
            peak_main, peak_total = max(peak_main, main_rss), max(peak_total, total)
        except psutil.Error:
            pass
        time.sleep(0.2)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    mb = 2**20
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "exit": proc.returncode,
        "peak_rss_mb": round(peak_main / mb),
        "peak_rss_children_mb": sorted((round(v / mb) for v in peak_child.values()), reverse=True),
        "peak_rss_total_mb": round(peak_total / mb),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "stderr_tail": err.strip().splitlines()[-2:] if proc.returncode else [],
    }


def qualcode(*args: object) -> list[str]:
    return [sys.executable, "-m", "qualcode", *map(str, args)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["data", "segment", "classify", "train"])
    parser.add_argument("--sizes", default="10000")
    parser.add_argument("--out", type=Path, default=Path("/tmp/qualcode-scale"))
    parser.add_argument("--model", type=Path, help="model folder (classify)")
    parser.add_argument("--dask", default=None, help="--dask address for classify")
    parser.add_argument("--chunk-size", type=int, default=None, help="--chunk-size for classify")
    parser.add_argument("--finetune", action="store_true", help="train --finetune")
    parser.add_argument(
        "--distinct", type=int, default=None, help="rows drawn from this many different answers"
    )
    parser.add_argument("--labels", type=Path, default=CORPORA / "labels" / "seed_set.csv")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    for n in sizes if args.what != "train" else [0]:
        record: dict = {"what": args.what, "segments": n}
        if args.what == "data":
            write_data(n, args.out, args.distinct)
            continue
        if args.what == "segment":
            data = write_data(n, args.out, args.distinct)
            out = args.out / f"segmented_{n}.csv"
            command = qualcode("segment", data["survey"], "--column", "Svar", "-o", out)
        elif args.what == "classify":
            data = write_data(n, args.out, args.distinct)
            out = args.out / f"predictions_{n}.csv"
            command = qualcode("classify", args.model, data["segments"], "-o", out, "-q")
            if args.dask:
                command += ["--dask", args.dask]
            if args.chunk_size:
                command += ["--chunk-size", str(args.chunk_size)]
            record.update(
                model=str(args.model),
                dask=args.dask,
                chunk_size=args.chunk_size,
                distinct=args.distinct,
            )
        else:
            out = args.out / ("model-finetuned" if args.finetune else "model")
            command = qualcode(
                "train", args.labels, "--codebook", CORPORA / "codebook.yaml", "-o", out, "-q"
            )
            if args.finetune:
                command.append("--finetune")
            record.update(labels=str(args.labels), finetune=args.finetune)
        env = None
        if args.what == "classify":
            env = cold_cache(args.out)
            if args.dask:  # the workers make their own caches
                env = {}
        record.update(measure(command, env))
        if n and record["exit"] == 0:
            record["segments_per_second"] = round(n / record["seconds"], 1)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
