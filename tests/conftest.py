"""Shared fixtures. Tests run offline against the real bundled encoder; QUALCODE_HOME points at a
per-checkout directory so they never touch an analyst's cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CORPORA = ROOT / "corpora"
BENCH = SHARED / "bench" / "sib200-swe"
SURVEY = CORPORA / "survey" / "enkat.xlsx"
QUESTION = "Vad skulle förbättra samverkan mellan region och kommun?"  # the survey's answers

os.environ.setdefault("QUALCODE_HOME", str(ROOT / ".qualcode-test-home"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Workers share the cores: one thread each (torch, BLAS and the subprocesses they start)
    # rather than every worker's threads fighting over every core.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

MAX_WORKERS = 4  # each holds an encoder and trains models: about 2 GB apiece


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core, at most :data:`MAX_WORKERS`."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def sample_texts() -> list[str]:
    """Every text of the sample corpora the tests code: the seed set, the notes' dev labels, the
    segments of the seed documents (the Skåne notes among them) and of the survey's answers, as
    `qualcode segment --column` gives them, and the codebook's prototypes."""
    from qualcode.codebook import load_codebook
    from qualcode.files.tables import read_table
    from qualcode.model.classifier import prototype_texts
    from qualcode.segmentation import segment

    texts = [*read_table(CORPORA / "labels" / "seed_set.csv")["text"]]
    texts += read_table(CORPORA / "labels" / "notes_dev.csv")["text"].tolist()
    documents = [*sorted((CORPORA / "seeds").glob("*.txt")), SURVEY]
    texts += segment(documents, column=QUESTION)["text"].tolist()
    texts += prototype_texts(load_codebook(CORPORA / "codebook.yaml"))[0]
    return list(dict.fromkeys(map(str, texts)))


def pytest_sessionstart(session) -> None:
    """Before the workers start: convert the bundled encoder and embed :func:`sample_texts`
    into the test home's cache, once, so that workers and the CLI runs they start in
    subprocesses find them there, as on an analyst's second run, rather than each loading the
    encoder (tests about a cold cache make their own). Nothing loads when all are cached."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    from qualcode.model.classifier import get_encoder
    from qualcode.model.encoders import embed

    embed(sample_texts(), get_encoder(None), progress=False)


def pytest_collection_modifyitems(config, items) -> None:
    """Modules with slow tests first, so the last module a worker takes is a short one."""
    slow = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module not in slow)


def error_of(call, *args, **kwargs) -> str:
    """The QualcodeError message ``call`` raises, checked to be a single line."""
    from qualcode.errors import QualcodeError

    with pytest.raises(QualcodeError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


@pytest.fixture(scope="session")
def encoder():
    """The bundled e5-small, converted once per checkout: the very model the library's
    commands use in this process (loaded once)."""
    from qualcode.model.classifier import get_encoder
    from qualcode.model.encoders import sentence_transformer

    return sentence_transformer(get_encoder(None))


@pytest.fixture(scope="session")
def swedish_sentences() -> list[str]:
    """Real Swedish sentences: SIB-200 dev when available, else the sample corpora."""
    import pandas as pd

    if (BENCH / "dev.tsv").exists():
        return pd.read_csv(BENCH / "dev.tsv", sep="\t")["text"].tolist()
    lines = []
    for path in sorted((CORPORA / "seeds").glob("*.txt")):
        lines += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if len(ln) > 40][:100]


def exit_code(*args: object) -> int:
    """Run ``qualcode ARGS`` in this process (the encoder stays loaded between commands): its
    exit code."""
    from qualcode.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    return done.value.code or 0


def run_cli(capsys, *args: object) -> tuple[int, str]:
    """Run ``qualcode ARGS`` in this process: (exit code, everything it printed)."""
    code = exit_code(*args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def cli_succeeds(*args: object) -> None:
    """Run ``qualcode ARGS`` in this process and check it exits 0 (for fixtures, which have no
    ``capsys``; what it prints goes to pytest's capture)."""
    code = exit_code(*args)
    assert code == 0, f"qualcode {args[0]} exited with {code}"


def labeller_ready(segments: Path, codebook: Path, tmp: Path, labels: Path | None = None) -> None:
    """Do in this process what `qualcode label` (or the app's labelling page) does first,
    embedding the segments, the codebook's prototypes and the texts of ``labels``: a labeller
    or app started next finds them in the test home's cache, as on an analyst's second run,
    rather than spend seconds loading the encoder (for tests about the terminal or the browser,
    not the embedding)."""
    import shutil

    from qualcode.codebook import load_codebook
    from qualcode.labelling import LabellingSession, read_segments

    book = load_codebook(codebook)
    ready = tmp / "ready-labels.csv"
    if labels is not None:
        shutil.copy(labels, ready)
    with LabellingSession(read_segments(segments), book, ready, progress=False) as s:
        s.prepare()
    ready.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def small_labels(tmp_path_factory) -> Path:
    """Five seed-set labels per theme (a labels CSV): enough to train, quick to embed."""
    import pandas as pd

    from qualcode.files.tables import read_table, write_table

    seed = read_table(CORPORA / "labels" / "seed_set.csv")
    seed["primary"] = seed["theme"].str.split(";").str[0]
    small = pd.concat([g.head(5) for _, g in seed.groupby("primary")]).drop(columns="primary")
    path = tmp_path_factory.mktemp("labels") / "labels.csv"
    write_table(small.reset_index(drop=True), path)
    return path


@pytest.fixture(scope="session")
def model_dir(small_labels, tmp_path_factory, encoder) -> Path:
    """A model `qualcode train` made from :func:`small_labels` (shared: tests must not change
    it; copy it first)."""
    out = tmp_path_factory.mktemp("model") / "model"
    cli_succeeds("train", small_labels, "--codebook", CORPORA / "codebook.yaml", "-o", out, "-q")
    return out


@pytest.fixture(scope="session")
def seed_trained(encoder):
    """The seed-set model as `qualcode train` (and `make run`) trains it, in memory: one per
    test session (shared: tests must not change it)."""
    from qualcode.codebook import load_codebook
    from qualcode.training import read_labels, train

    codebook = load_codebook(CORPORA / "codebook.yaml")
    return train(read_labels(CORPORA / "labels" / "seed_set.csv", codebook), codebook,
                 progress=False)  # fmt: skip


@pytest.fixture(scope="session")
def seed_model(seed_trained, tmp_path_factory) -> Path:
    """:func:`seed_trained`, saved as a model folder (shared: copy it before changing it)."""
    return seed_trained.save(tmp_path_factory.mktemp("seed") / "samverkan")
