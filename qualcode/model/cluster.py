"""Scoring the chunks of a batch on a Dask cluster (``qualcode classify --dask``).

Each chunk of segments is one Dask task: the worker loads the model once (a cached loader keyed
by the sha256 of the model's manifest), embeds the chunk's texts and returns its
:class:`~qualcode.model.classifier.Scores`; the batch-level step (learning from the batch, the
review threshold) and the writing stay on the machine that runs ``qualcode``. The model folder
reaches the workers as a path they can read (a shared or copied folder): each worker checks it
against the manifest it was given, so a different or damaged copy is refused with one line.
Each worker keeps its own embedding cache on its own disk (no sqlite shared over a network).
A worker that dies mid-task has its task rerun elsewhere by Dask (up to its
``allowed-failures``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qualcode.errors import QualcodeError, crash_once
from qualcode.model.encoders import MANIFEST, sha256_file

if TYPE_CHECKING:
    from qualcode.model.classifier import Scores, ThemeClassifier

__all__ = ["dask_scorer", "score_partition"]

IN_FLIGHT_PER_WORKER = 2  # chunks queued per worker: enough to keep it busy, bounded memory
_LOADED: dict[tuple[str, str], ThemeClassifier] = {}  # on a worker: by folder and manifest


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"pid-{os.getpid()}"


def worker_classifier(model_dir: str, manifest: str) -> ThemeClassifier:
    """The model's classifier on this worker, loaded on first use and checked against the
    ``manifest`` sha256 the client saw."""
    if (model_dir, manifest) in _LOADED:
        return _LOADED[model_dir, manifest]
    from qualcode.model.storage import load_model

    name = _worker_name()
    if "QUALCODE_EMBEDDING_CACHE" not in os.environ:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        local = Path(tempfile.gettempdir()) / f"qualcode-{os.getuid()}"
        os.environ["QUALCODE_EMBEDDING_CACHE"] = str(local / f"embeddings-{safe}.sqlite")
    where = f"Dask worker {name}"
    try:
        actual = sha256_file(Path(model_dir) / MANIFEST)
    except OSError as err:
        raise QualcodeError(
            f"{where} cannot read the model folder {model_dir} ({err.strerror or err}): put it "
            "on a path every worker can read (a shared folder, or a copy at the same path)"
        ) from None
    if actual != manifest:
        raise QualcodeError(
            f"{where} reads another model at {model_dir} than this machine does (its manifest "
            "differs): copy the same model folder to every worker"
        )
    try:
        model = load_model(model_dir)
    except QualcodeError as err:
        raise QualcodeError(f"{where} cannot load the model {model_dir}: {err}") from None
    clf = copy.copy(model.classifier)
    clf.progress = False
    _LOADED[model_dir, manifest] = clf
    return clf


def score_partition(model_dir: str, manifest: str, texts: list[str]) -> Scores:
    """One Dask task: the scores of one chunk's texts."""
    crash_once("dask-partition")
    return worker_classifier(model_dir, manifest).scores(texts)


def _client(address: str) -> tuple[Any, Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise QualcodeError(
            "--dask needs Dask: pip install 'dask[distributed]' (on every worker too)"
        ) from None
    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise QualcodeError(f"--dask {address}: give local:N with N worker processes, N ≥ 1")
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # a free port: never a clash with 8787
            silence_logs=logging.ERROR,
        )
        return Client(cluster), cluster
    try:
        return Client(address, timeout="30s"), None
    except (OSError, TimeoutError, ValueError) as err:
        raise QualcodeError(f"cannot reach the Dask scheduler at {address} ({err})") from None


@contextlib.contextmanager
def dask_scorer(address: str, model_dir: str | os.PathLike[str]) -> Iterator[Any]:
    """A scorer (see :func:`qualcode.classification.code_chunks`) that runs each chunk as a
    task on the Dask cluster at ``address`` (``tcp://host:8786``, or ``local:N`` for a
    LocalCluster of N processes on this machine)."""
    model_dir = str(Path(model_dir).resolve())
    manifest = sha256_file(Path(model_dir) / MANIFEST)
    client, cluster = _client(address)

    def scorer(
        clf: ThemeClassifier, items: Iterator[tuple[int, list[str]]]
    ) -> Iterator[tuple[int, Scores]]:
        from distributed import as_completed

        limit = IN_FLIGHT_PER_WORKER * max(1, len(client.scheduler_info()["workers"]))
        running = as_completed()
        index_of: dict[str, int] = {}

        def done() -> tuple[int, Scores]:
            future = next(running)
            index = index_of.pop(future.key)
            return index, future.result()

        for index, texts in items:
            key = f"qualcode-chunk-{index}-{id(items)}"
            future = client.submit(score_partition, model_dir, manifest, texts, key=key)
            index_of[future.key] = index
            running.add(future)
            while running.count() >= limit:
                yield done()
        while running.count():
            yield done()

    try:
        yield scorer
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
