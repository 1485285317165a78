"""qualcode: local, offline qualitative coding of Swedish free text.

The public API mirrors the command line: ``segment`` → ``label`` (``write_template`` /
``import_template``) → ``train`` → ``classify`` → ``build_review`` / ``apply_review`` →
``report`` / ``write_workbook`` / ``write_qdpx``, and ``discover`` for themes the codebook
lacks, with pandas DataFrames in and out. Each name
is imported on first use, so ``import qualcode`` (and ``qualcode --help``) loads neither
scikit-learn nor torch.

The package reads like the workflow: one module per step (``segmentation``, ``labelling``,
``training``, ``classification``, ``review``, ``evaluation``), ``model/`` for the machinery
they share, ``files/`` for every analyst file, ``reporting/`` for what analysts read, and
``cli/`` for the command.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("qualcode")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0"

# public name -> module that defines it
_EXPORTS = {
    "QualcodeError": "qualcode.errors",
    "load_codebook": "qualcode.codebook",
    "read_table": "qualcode.files.tables",
    "write_table": "qualcode.files.tables",
    "ThemeClassifier": "qualcode.model.classifier",
    "embed": "qualcode.model.encoders",
    "load_encoder": "qualcode.model.encoders",
    "ReviewRule": "qualcode.model.review_rule",
    "ThemeModel": "qualcode.model.storage",
    "load_model": "qualcode.model.storage",
    "segment": "qualcode.segmentation",
    "write_template": "qualcode.labelling",
    "import_template": "qualcode.labelling",
    "read_labels": "qualcode.training",
    "train": "qualcode.training",
    "TrainingSettings": "qualcode.training",
    "classify": "qualcode.classification",
    "evaluate": "qualcode.evaluation",
    "build_review": "qualcode.review",
    "write_review": "qualcode.review",
    "apply_review": "qualcode.review",
    "discover": "qualcode.discovery",
    "report": "qualcode.reporting.report",
    "write_workbook": "qualcode.reporting.export",
    "write_qdpx": "qualcode.reporting.export",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qualcode' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
