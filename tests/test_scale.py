"""Large batches: ``classify`` reads and writes chunk by chunk (CSV, XLSX, Parquet) with the same
output as a whole batch, a killed run leaves no output and ``--resume`` continues it, and
``--dask`` scores the chunks on a Dask cluster with the same output, even when a worker dies."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from qualcode.errors import QualcodeError
from qualcode.files.tables import read_table, spreadsheet_rows, write_table

from .conftest import CORPORA, cli_succeeds
from .test_cli import run

CODEBOOK = str(CORPORA / "codebook.yaml")
SEED_SET = CORPORA / "labels" / "seed_set.csv"


@pytest.fixture(scope="module")
def segments(tmp_path_factory) -> Path:
    """The seed set's texts as a segments table with ids and a survey column (and a
    non-answer), 60 rows."""
    seed = read_table(SEED_SET).head(59)
    table = pd.DataFrame(
        {
            "segment_id": [f"s-{i:03d}" for i in range(len(seed))],
            "text": seed["text"],
            "Kommun": [["Lund", "Malmö", "Ystad"][i % 3] for i in range(len(seed))],
            "non_answer": "false",
        }
    )
    table.loc[len(table)] = ["s-999", "Vet ej", "Lund", "true"]
    path = tmp_path_factory.mktemp("segments") / "segments.csv"
    write_table(table, path)
    return path


@pytest.fixture(scope="module")
def whole(model_dir, segments, tmp_path_factory) -> Path:
    """The batch classified as one chunk: what every other way of running must equal."""
    out = tmp_path_factory.mktemp("whole") / "predictions.csv"
    cli_succeeds("classify", model_dir, segments, "-o", out, "-q")
    return out


@pytest.fixture(scope="module")
def single_cold(model_dir, segments, tmp_path_factory) -> Path:
    """The single-process run in chunks of 15 with a cold embedding cache, as Dask workers
    with their own new caches embed them: the same texts in the same batches give the same
    floats, to the last bit."""
    folder = tmp_path_factory.mktemp("single")
    out = folder / "predictions.csv"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUALCODE_EMBEDDING_CACHE", str(folder / "cold.sqlite"))
        cli_succeeds("classify", model_dir, segments, "-o", out, "--chunk-size", 15, "-q")
    return out


def qualcode(*args: object, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("QUALCODE_CRASH")}
    return subprocess.run(
        [sys.executable, "-m", "qualcode", *map(str, args)],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_chunks_give_the_output_of_the_whole_batch(capsys, model_dir, segments, whole, tmp_path):
    out = tmp_path / "chunked.csv"
    code, _, err = run(capsys, "classify", model_dir, segments, "-o", out, "--chunk-size", 7, "-q")
    assert code == 0, err
    assert out.read_bytes() == whole.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no run folder left
    table = read_table(out)
    assert table["review_reason"].iloc[-1].startswith("no answer")
    assert table["Kommun"].tolist()[:3] == ["Lund", "Malmö", "Ystad"]


@pytest.mark.parametrize("suffix", [".parquet", ".xlsx"])
def test_parquet_and_xlsx_inputs_are_read_in_chunks(
    capsys, model_dir, segments, whole, tmp_path, suffix
):
    table = read_table(segments)
    source = tmp_path / f"segments{suffix}"
    if suffix == ".parquet":
        table.to_parquet(source)
    else:
        write_table(table, source)
    out = tmp_path / "predictions.csv"
    code, _, err = run(capsys, "classify", model_dir, source, "-o", out, "--chunk-size", 25, "-q")
    assert code == 0, err
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.slow  # three runs in subprocesses
def test_a_killed_run_leaves_no_output_and_resumes(model_dir, segments, whole, tmp_path):
    out = tmp_path / "predictions.csv"
    args = ("classify", model_dir, segments, "-o", out, "--chunk-size", 20, "-q")
    first = qualcode(*args, QUALCODE_CRASH_AT="chunk-scored")
    assert first.returncode == -signal.SIGKILL
    assert not out.exists()
    run_folder = tmp_path / ".predictions.csv.run"
    assert len(list(run_folder.glob("chunk-*.npz"))) == 1
    # Resumed and killed again: the chunk done is kept and one more is added.
    second = qualcode(*args, "--resume", QUALCODE_CRASH_AT="chunk-scored")
    assert second.returncode == -signal.SIGKILL
    assert len(list(run_folder.glob("chunk-*.npz"))) == 2
    third = qualcode(*args, "--resume")
    assert third.returncode == 0, third.stderr
    assert out.read_bytes() == whole.read_bytes()
    assert not run_folder.exists()


@pytest.fixture(scope="module")
def cluster():
    """One Dask cluster of 2 worker processes for the module's tests, reached as an existing
    cluster is (``--dask tcp://…``); ``local:N`` is started by the test further down."""
    import logging

    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.ERROR
        ) as local,
        Client(local) as client,
    ):
        yield client


def _arm_crash(marker: str) -> None:
    """On a worker: die (SIGKILL) with the next chunk in hand, once (see ``crash_once``)."""
    os.environ["QUALCODE_CRASH_AT"] = "dask-partition"
    os.environ["QUALCODE_CRASH_MARKER"] = marker


@pytest.mark.slow  # a LocalCluster of 2 processes
def test_dask_cluster_gives_every_cell_of_the_single_process_run(
    capsys, model_dir, segments, single_cold, cluster, tmp_path
):
    out = tmp_path / "dask.csv"
    code, _, err = run(
        capsys, "classify", model_dir, segments, "-o", out, "--dask", cluster.scheduler.address,
        "--chunk-size", 15, "-q",
    )  # fmt: skip
    assert code == 0, err
    single, distributed = read_table(single_cold), read_table(out)
    assert list(distributed.columns) == list(single.columns)
    pd.testing.assert_frame_equal(distributed, single)  # every cell, as text: floats exact
    assert out.read_bytes() == single_cold.read_bytes()


@pytest.mark.slow  # a worker killed and restarted
def test_a_worker_killed_mid_run_is_retried_and_the_output_is_complete(
    capsys, model_dir, segments, single_cold, cluster, tmp_path
):
    out = tmp_path / "dask.csv"
    marker = tmp_path / "killed-once"
    cluster.run(_arm_crash, str(marker))
    code, _, err = run(
        capsys, "classify", model_dir, segments, "-o", out, "--dask", cluster.scheduler.address,
        "--chunk-size", 15, "-q",
    )  # fmt: skip
    assert code == 0, err
    assert marker.exists()  # a worker did die with a chunk in hand
    assert out.read_bytes() == single_cold.read_bytes()


@pytest.mark.slow  # a LocalCluster
def test_a_model_a_worker_cannot_read_is_one_clear_error(model_dir, segments, tmp_path):
    from qualcode.classification import classify_files
    from qualcode.model.storage import load_model

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    model = load_model(copy)
    with open(copy / "head.npz", "r+b") as handle:  # damaged after this machine loaded it
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(QualcodeError) as err:
        classify_files(copy, model, [segments], tmp_path / "out.csv", dask="local:1")
    message = str(err.value)
    assert "Dask worker" in message and "cannot load the model" in message
    assert "\n" not in message
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("encoding", ["utf-8-sig", "cp1252", "utf-16"])
def test_a_large_text_table_is_parsed_as_a_stream_like_a_small_one(tmp_path, monkeypatch, encoding):
    from qualcode.files import chunks

    rows = ["Respondent;Svar;Kommun", '1;"Mer samverkan; tack";Lund', "", "2;=SUMMA;Ystad"]
    rows += [f'{i};"Rad {i}\nmed radbrytning, å ä ö";Malmö' for i in range(3, 40)]
    path = tmp_path / "enkat.csv"
    path.write_bytes(("\r\n".join(rows) + "\r\n\r\n").encode(encoding))
    whole = read_table(path, required=["Svar"])
    monkeypatch.setattr(chunks, "STREAM_BYTES", 0)
    parts = list(chunks.iter_table(path, required=["Svar"], rows=7))
    assert [len(p) for p in parts] == [7, 7, 7, 7, 7, 5]
    streamed = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(streamed, whole, check_like=False)
    assert [chunks_row for p in parts for chunks_row in spreadsheet_rows(p)] == spreadsheet_rows(
        whole
    )


def test_segment_in_chunks_equals_segment_whole(tmp_path):
    from qualcode.segmentation import segment, segment_chunks

    survey = tmp_path / "enkat.xlsx"
    answers = ["Vet ej", "", "Mer samverkan.", "Mer samverkan.", "Gemensamma utbildningar!"] * 5
    write_table(pd.DataFrame({"Kommun": ["Lund"] * 25, "Svar": answers}), survey)
    whole = segment([survey], column="Svar")
    chunks = segment_chunks([survey], column="Svar", rows=4)
    parts = list(chunks())
    assert len(parts) > 3
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), whole)
    assert chunks.counts == {"empty_answers": 5, "non_answers": 5}
    assert whole["segment_id"].is_unique  # repeated answers get -2, -3 across chunks too


@pytest.mark.slow  # fine-tunes
def test_a_finetuned_copy_costs_only_what_it_trains_and_is_freed_when_dropped(encoder):
    import weakref

    from qualcode.model.finetune import _word_embeddings, finetune_encoder

    seed = read_table(SEED_SET).head(24)
    themes = seed["theme"].str.split(";").str[0].tolist()
    fast = {"steps": 2, "batch_size": 8, "max_seq_length": 32, "progress": False}
    model = finetune_encoder(encoder, seed["text"].tolist(), themes, **fast)
    # the frozen word embeddings (most of the model) are the base encoder's own tensor
    assert _word_embeddings(model).weight is _word_embeddings(encoder).weight
    gone = weakref.ref(model)
    del model
    assert gone() is None  # no reference cycle keeps a dropped copy until the next gc
