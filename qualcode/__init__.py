"""qualcode: local, offline qualitative coding of Swedish free text.

The public API mirrors the command line: ``segment`` → ``train`` → ``classify`` → ``evaluate``,
with pandas DataFrames in and out. torch and sentence-transformers load on first use.
"""

__version__ = "0.1.0"

# The functions share their modules' names (one module per workflow step); importing them here
# makes ``qualcode.segment`` etc. the functions.
from qualcode.classifier import ThemeClassifier  # noqa: E402
from qualcode.classify import classify  # noqa: E402
from qualcode.codebook import load_codebook  # noqa: E402
from qualcode.encoders import embed, load_encoder  # noqa: E402
from qualcode.errors import QualcodeError  # noqa: E402
from qualcode.evaluate import evaluate  # noqa: E402
from qualcode.segment import segment  # noqa: E402
from qualcode.tables import read_table, write_table  # noqa: E402
from qualcode.train import ThemeModel, load_model, read_labels, train  # noqa: E402

__all__ = [
    "QualcodeError",
    "ThemeClassifier",
    "ThemeModel",
    "__version__",
    "classify",
    "embed",
    "evaluate",
    "load_codebook",
    "load_encoder",
    "load_model",
    "read_labels",
    "read_table",
    "segment",
    "train",
    "write_table",
]
