"""SetFit-style contrastive fine-tuning of a sentence encoder on a few labelled segments.

Segments of the same theme are pulled together and segments of different themes pushed apart
(cosine-similarity loss on balanced positive/negative pairs); the theme head is then fit afresh on
the new embeddings by :class:`~qualcode.model.classifier.ThemeClassifier`. The word-embedding matrix
(most of a multilingual model's parameters) stays frozen.

Pairs are scored in-batch: each step embeds a class-balanced batch of segments once and scores
every pair inside it (positives and negatives weighted equally), so one forward/backward pass per
segment serves many pairs instead of two passes per pair as in SetFit's explicit pair lists.
Training runs in a plain torch loop (no ``datasets``/``accelerate``/Hub), so it works offline.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qualcode.errors import QualcodeError
from qualcode.model.encoders import sentence_transformer

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from qualcode.codebook import Codebook

__all__ = ["finetune_encoder", "contrastive_batches"]

# Defaults measured on SIB-200 Swedish dev (BENCHMARKS.md, "Fine-tuning defaults").
DEFAULT_STEPS_PER_EXAMPLE = 1.0
DEFAULT_BATCH_SIZE = 16
DEFAULT_LEARNING_RATE = 2e-5
DEFAULT_MAX_SEQ_LENGTH = 128
DEFAULT_MIN_STEPS = 20
DEFAULT_MAX_STEPS = 200
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
CHECKPOINT_EVERY = 2  # recompute the activations of every 2nd layer (see _checkpointing)


def contrastive_batches(
    themes: Sequence[str], *, steps: int, batch_size: int, seed: int = 0
) -> list[np.ndarray]:
    """Indices of ``steps`` class-balanced batches (deterministic under ``seed``).

    Each batch holds about ``batch_size`` segments drawn round-robin from a random subset of
    themes, at least two per theme when a theme has two, so that every batch contains both
    same-theme (positive) and different-theme (negative) pairs. Within a theme, segments are
    visited in a shuffled cycle so all of them are used evenly.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(themes)
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise QualcodeError("fine-tuning needs labelled segments of at least two themes")
    pools = {c: np.flatnonzero(labels == c) for c in classes}
    cursors = {c: 0 for c in classes}
    orders = {c: rng.permutation(pools[c]) for c in classes}

    def take(c: str, n: int) -> list[int]:
        out = []
        for _ in range(min(n, len(pools[c]))):
            if cursors[c] == len(orders[c]):
                orders[c], cursors[c] = rng.permutation(pools[c]), 0
            out.append(int(orders[c][cursors[c]]))
            cursors[c] += 1
        return out

    per_class = 2
    n_classes = max(2, min(len(classes), batch_size // per_class))
    batches = []
    for _ in range(steps):
        chosen = rng.choice(len(classes), size=n_classes, replace=False)
        share = max(per_class, batch_size // n_classes)
        idx: list[int] = []
        for j in chosen:
            idx += take(classes[j], share)
        batches.append(np.asarray(idx[: max(batch_size, 2 * n_classes)]))
    return batches


def _pair_loss(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SetFit's cosine-similarity loss over every pair in the batch: squared distance of the
    cosine to 1 for same-theme pairs and to 0 for the others, the two kinds weighted equally.
    (CoSENT measured no better on SIB-200 dev; BENCHMARKS.md.)"""
    emb = torch.nn.functional.normalize(emb, dim=1)
    cos = emb @ emb.T
    same = labels[:, None] == labels[None, :]
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    pos = same & upper
    neg = ~same & upper
    lp = ((1 - cos[pos]) ** 2).mean() if pos.any() else cos.new_zeros(())
    ln = (cos[neg] ** 2).mean() if neg.any() else cos.new_zeros(())
    return (lp + ln) / 2


def _backbone(model: SentenceTransformer) -> torch.nn.Module | None:
    first = model[0]
    return getattr(first, "auto_model", None) or getattr(first, "model", None)


def _checkpointing(backbone: torch.nn.Module, on: bool) -> None:
    """Activation checkpointing on or off, under either name transformers has given it."""
    if on:
        enable = getattr(backbone, "activation_checkpointing_enable", None)
        if enable is not None:  # every other layer: most of the memory for less of the time
            enable({"use_reentrant": False}, every_n_layers=CHECKPOINT_EVERY)
        else:
            backbone.gradient_checkpointing_enable({"use_reentrant": False})
    else:
        disable = getattr(backbone, "activation_checkpointing_disable", None)
        (disable or backbone.gradient_checkpointing_disable)()


def _word_embeddings(model: SentenceTransformer) -> torch.nn.Module | None:
    getter = getattr(_backbone(model), "get_input_embeddings", None)
    return getter() if getter else None


def finetune_encoder(
    encoder: SentenceTransformer,
    texts: Sequence[str],
    themes: Sequence[str],
    codebook: Codebook | None = None,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    max_seq_length: int | None = None,
    freeze_word_embeddings: bool = True,
    use_codebook: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> SentenceTransformer:
    """Return a fine-tuned deep copy of ``encoder`` (the original is never modified).

    Parameters
    ----------
    texts, themes : the labelled segments and their (dominant) theme ids.
    codebook : when given (and ``use_codebook``), each theme's ``"label: description"`` and
        examples join the training set as extra anchors of their theme.
    steps : optimisation steps (one class-balanced batch each); default
        ``DEFAULT_STEPS_PER_EXAMPLE`` per labelled segment, clipped to
        [``DEFAULT_MIN_STEPS``, ``DEFAULT_MAX_STEPS``].
    batch_size : segments per step; every pair inside the batch is scored.
    max_seq_length : token limit while training (inference keeps the encoder's own limit).
    seed : fixes batch sampling, dropout and initialisation: same inputs + seed, same weights.
    """
    texts = [str(t) for t in texts]
    themes = [str(t) for t in themes]
    if len(texts) != len(themes):
        raise QualcodeError(f"{len(texts)} texts but {len(themes)} themes to fine-tune on")
    if codebook is not None and use_codebook:
        from qualcode.model.classifier import prototype_texts

        extra_texts, extra_themes = prototype_texts(codebook)
        texts, themes = texts + extra_texts, themes + extra_themes
    if len(set(themes)) < 2:
        raise QualcodeError("fine-tuning needs labelled segments of at least two themes")
    n_steps = steps if steps is not None else _default_steps(len(texts))
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    learning_rate = learning_rate or DEFAULT_LEARNING_RATE
    max_seq_length = max_seq_length or DEFAULT_MAX_SEQ_LENGTH

    large_blocks_to_the_system()
    # The frozen word embeddings (most of a multilingual model) are shared with ``encoder``,
    # not copied: every fine-tuned copy (one per cross-fitting fold) costs only what it trains.
    # So is the tokenizer, which training never changes: copying a 250,000-word tokenizer
    # (through its JSON form) took about a second per fine-tuning.
    encoder = sentence_transformer(encoder)
    shared: dict[int, object] = {}
    frozen = _word_embeddings(encoder) if freeze_word_embeddings else None
    if frozen is not None:
        shared[id(frozen.weight)] = frozen.weight
    tokenizer = getattr(encoder[0], "tokenizer", None)
    if tokenizer is not None:
        shared[id(tokenizer)] = tokenizer
    model = copy.deepcopy(encoder, shared)
    card = getattr(model, "model_card_data", None)
    if card is not None:  # saving must never look the base model up on the Hub
        card.local_files_only = True
        if getattr(card, "model", None) is model:
            # The card's link back to its model is a reference cycle, which only the garbage
            # collector frees: a dropped fine-tuned copy would stay in memory until it ran.
            card.model = weakref.proxy(model)
    prompt = model.prompts.get(model.default_prompt_name) if model.default_prompt_name else None
    class_index = {c: i for i, c in enumerate(sorted(set(themes)))}
    y = torch.tensor([class_index[t] for t in themes])

    backbone = _backbone(model)
    checkpointing = bool(getattr(backbone, "supports_gradient_checkpointing", False))
    if checkpointing:
        # Recompute every 2nd layer's activations in the backward pass instead of keeping them:
        # about 300 MB less at the peak of a 16-segment step, for 1.16x the time (BENCHMARKS.md).
        _checkpointing(backbone, True)
    word = _word_embeddings(model) if freeze_word_embeddings else None
    if word is not None:
        word.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    batches = contrastive_batches(themes, steps=n_steps, batch_size=batch_size, seed=seed)
    saved_length = model.max_seq_length
    model.max_seq_length = min(saved_length or max_seq_length, max_seq_length)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            optimizer = torch.optim.AdamW(
                [
                    {"params": decay, "weight_decay": 0.01},
                    {"params": no_decay, "weight_decay": 0.0},
                ],
                lr=learning_rate,
            )
            warmup = max(1, math.ceil(0.1 * n_steps))
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda s: (
                    (s + 1) / warmup
                    if s < warmup
                    else max(0.0, (n_steps - s) / (n_steps - warmup + 1))
                ),
            )
            model.train()
            bar = tqdm(batches, desc="fine-tuning", unit="step", disable=not progress)
            for idx in bar:
                features = model.preprocess([texts[i] for i in idx], prompt=prompt)
                emb = model(features)["sentence_embedding"]
                value = _pair_loss(emb, y[idx])
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                bar.set_postfix(loss=f"{value.item():.3f}", refresh=False)
    finally:
        model.max_seq_length = saved_length
        if checkpointing:
            _checkpointing(backbone, False)
        model.eval()
        if word is not None:
            word.weight.requires_grad_(True)
        optimizer = schedule = None  # Adam's state: twice the trained weights
        release_memory()
    return model


def large_blocks_to_the_system() -> None:
    """Have glibc serve every allocation from 128 kB up by ``mmap``, so it goes back to the
    system when freed. By default glibc raises that threshold with each large block freed and
    keeps later ones in its heap: the tensors of one training step stayed resident, and a
    fine-tuning on the seed set grew from 1.3 to 2.3 GB in two steps (BENCHMARKS.md)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def release_memory() -> None:
    """Free what fine-tuning left: unreachable cycles now, and the C heap's free pages back to
    the system (glibc keeps them otherwise, and resident memory only grows)."""
    import gc

    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc() -> Any:
    """The C library when it is glibc (its ``mallopt`` and ``malloc_trim``), else None."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist only in glibc
    except (OSError, AttributeError):
        return None
    return libc


def _default_steps(n: int) -> int:
    return int(min(DEFAULT_MAX_STEPS, max(DEFAULT_MIN_STEPS, round(DEFAULT_STEPS_PER_EXAMPLE * n))))
