"""Disagreement review: export the rows an analyst should look at, and write their decisions back.

Review CSV contract (:func:`build_review`, one row per segment, most consequential first)::

    segment_id, document, section, text
    theme_<coder>      one column per coder: that coder's theme(s), ";"-separated
    coder_notes        the coders' notes on the segment ("anna: …; bo: …"), if any
    model_theme        the model's theme (for likely label errors: the cross-validated one)
    model_confidence   its probability
    disagreement       likely_label_error | model_vs_coder | coder_vs_coder | low_confidence
    resolved_theme     empty: the analyst's decision (theme id or label; several with ";")
    note               empty: the analyst's comment (goes to the audit log)
    labels_sha256      "sha256:<hex>" of each labels file the review was made from (";"-separated)

Rows are ordered by kind (in the order above: label errors, then model disagreements, then coder
conflicts, then segments the model flagged); within a kind, label errors by how much more
probable the suggested theme is than the given one, flagged segments least confident first, the
others most confident model first.

``apply_review`` writes the resolved themes into a labels file: it refuses (writing nothing) if
a resolved theme is not in the codebook or the labels file changed since the export; otherwise
it backs the file up, updates or appends rows (never drops one) and appends each change to
``<labels stem>.audit.csv`` (:data:`AUDIT_COLUMNS`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from qualcode.agreement import agreement_table
from qualcode.errors import QualcodeError
from qualcode.files.coded import column_text, model_column, parse_confidence, parse_flags
from qualcode.files.labels import (
    audit_path,
    labels_lock,
    last_answers,
    segment_keys,
    write_with_audit,
)
from qualcode.files.tables import (
    backup_file,
    file_sha256,
    read_table,
    read_text,
    spreadsheet_rows,
    table_bytes,
    write_table,
)

if TYPE_CHECKING:
    from qualcode.codebook import Codebook

__all__ = [
    "DISAGREEMENTS",
    "ApplyResult",
    "ReviewResult",
    "apply_review",
    "build_review",
    "likely_label_errors",
    "write_review",
]

DISAGREEMENTS = ("likely_label_error", "model_vs_coder", "coder_vs_coder", "low_confidence")
SEGMENT_COLUMNS = ("segment_id", "document", "section", "text")
TAIL_COLUMNS = (
    "model_theme",
    "model_confidence",
    "disagreement",
    "resolved_theme",
    "note",
    "labels_sha256",
)
_HASH_PREFIX = "sha256:"


# --------------------------------------------------------------------------- reading labels


@dataclass
class _Coded:
    """Labels of all coders: one row per (key, coder) with themes as id lists."""

    rows: pd.DataFrame  # key, coder, themes (list[str]), text, document, section, note
    coders: list[str]
    hashes: list[str]


def _read_coded(paths: Sequence[str | Path], codebook: Codebook) -> _Coded:
    frames, coders, hashes = [], [], []
    for path in map(Path, paths):
        table = read_table(path, required=("text", "theme"), what="labels file")
        parsed = codebook.check_themes(
            table["theme"], what=f"labels file {path.name!r}", rows=spreadsheet_rows(table)
        )
        names = (
            table["coder"].str.strip() if "coder" in table.columns else pd.Series([""] * len(table))
        )
        names = names.where(names != "", path.stem)
        renamed = {}
        for name in dict.fromkeys(names):
            unique = name if name not in coders else f"{name}_{path.stem}"
            k = 2
            while unique in coders:
                unique, k = f"{name}_{path.stem}_{k}", k + 1
            renamed[name] = unique
            coders.append(unique)
        frame = pd.DataFrame(
            {
                "key": segment_keys(table),
                "coder": [renamed[n] for n in names],
                "themes": parsed,
                "text": table["text"],
                "document": table.get("document", pd.Series([""] * len(table))),
                "section": table.get("section", pd.Series([""] * len(table))),
                "note": table.get("note", pd.Series([""] * len(table))).fillna(""),
            }
        )
        frame = frame[[bool(t) for t in frame["themes"]]]  # skipped / unlabelled rows
        frames.append(last_answers(frame, "key", "coder"))
        hashes.append(_HASH_PREFIX + file_sha256(path))
    rows = pd.concat(frames, ignore_index=True)
    if rows.empty:
        raise QualcodeError("the labels file(s) have no labelled rows (every 'theme' is empty).")
    return _Coded(rows, coders, hashes)


def _read_predictions(path: str | Path, codebook: Codebook) -> pd.DataFrame:
    path = Path(path)
    table = read_table(path, required=("text", "theme"), what="predictions file")
    theme = model_column(table, "theme")
    parsed = codebook.check_themes(
        table[theme], what=f"predictions file {path.name!r}", rows=spreadsheet_rows(table)
    )
    out = pd.DataFrame(
        {
            "key": segment_keys(table),
            "theme": [ids[0] if ids else "" for ids in parsed],
            "confidence": parse_confidence(
                column_text(table, model_column(table, "confidence")), spreadsheet_rows(table)
            ),
            "flagged": parse_flags(
                column_text(table, model_column(table, "needs_review")), spreadsheet_rows(table)
            ),
            "text": table["text"],
            "document": table.get("document", pd.Series([""] * len(table))),
            "section": table.get("section", pd.Series([""] * len(table))),
        }
    )
    return last_answers(out[out["theme"] != ""], "key")


# --------------------------------------------------------------------------- label errors


def likely_label_errors(
    texts: Sequence[str],
    themes: Sequence[Sequence[str]],
    codebook: Codebook,
    *,
    folds: int = 5,
    encoder: str | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, list[str]]:
    """Confident-learning check of a labelled set with out-of-fold probabilities.

    Each theme's threshold is its mean self-confidence (the average out-of-fold probability of
    the theme on the segments labelled with it). A label is a likely error when its probability
    is below its theme's threshold and another theme (not among the segment's other labels) is
    at or above that theme's threshold; the most probable such theme is suggested.
    Themes with fewer than two labels cannot be cross-validated and are left out.

    Returns one row per input (``index, flagged, suggested, confidence, given_proba``) and
    messages for the analyst.
    """
    from qualcode.evaluation import cross_val_proba

    dominant = [ts[0] for ts in themes]
    counts = pd.Series(dominant).value_counts()
    usable = [i for i, t in enumerate(dominant) if counts[t] >= 2]
    messages = []
    rare = sorted(t for t, n in counts.items() if n < 2)
    if rare:
        messages.append(
            f"label-error check: theme(s) {', '.join(rare)} have a single label "
            "and were not checked"
        )
    n = len(texts)
    flagged, suggested = np.zeros(n, dtype=bool), [""] * n
    confidence, given_proba = np.full(n, np.nan), np.full(n, np.nan)

    def result() -> pd.DataFrame:
        return pd.DataFrame(
            {
                "index": range(n),
                "flagged": flagged,
                "suggested": suggested,
                "confidence": confidence,
                "given_proba": given_proba,
            }
        )

    if len({dominant[i] for i in usable}) < 2:
        messages.append("label-error check skipped: fewer than two themes have two labels")
        return result(), messages
    proba, classes = cross_val_proba(
        [texts[i] for i in usable],
        [dominant[i] for i in usable],
        codebook,
        folds=folds,
        encoder=encoder,
        seed=seed,
    )
    column = {c: j for j, c in enumerate(classes)}
    y = np.array([column[dominant[i]] for i in usable])
    threshold = np.full(len(classes), np.inf)
    for j in np.unique(y):
        threshold[j] = proba[y == j, j].mean()
    for r, i in enumerate(usable):
        p = proba[r]
        given = y[r]
        others = {column[t] for t in themes[i] if t in column}
        above = [j for j in range(len(classes)) if j not in others and p[j] >= threshold[j]]
        given_proba[i] = p[given]
        if p[given] < threshold[given] and above:
            best = max(above, key=lambda j: p[j])
            flagged[i], suggested[i], confidence[i] = True, classes[best], p[best]
    messages.append(
        f"label-error check: {len(usable)} labelled segments cross-validated "
        f"({folds} folds), {int(flagged.sum())} likely label errors"
    )
    return result(), messages


# --------------------------------------------------------------------------- export


@dataclass
class ReviewResult:
    """The review table, plus agreement statistics when several coders took part."""

    table: pd.DataFrame
    coders: list[str]
    agreement: pd.DataFrame | None = None
    messages: list[str] = field(default_factory=list)


def build_review(
    labels: Sequence[str | Path],
    codebook: Codebook,
    *,
    predictions: str | Path | None = None,
    label_errors: bool = True,
    folds: int = 5,
    encoder: str | None = None,
    seed: int = 0,
) -> ReviewResult:
    """Build the review table (see the module docstring for its columns and order).

    Rows: model vs coder and flagged unlabelled segments (with ``predictions``); likely label
    errors (with ``predictions`` or a single coder, unless ``label_errors=False``); coder vs
    coder (two or more coders, who then also get agreement statistics).
    """
    if not labels:
        raise QualcodeError("give at least one labels file (--labels).")
    coded = _read_coded(labels, codebook)
    rows, coders = coded.rows, coded.coders
    preds = _read_predictions(predictions, codebook) if predictions is not None else None
    messages: list[str] = []

    if preds is not None:  # labels without ids in common: match the predictions by exact text
        by_text = dict(zip(rows["text"], rows["key"]))
        known = set(rows["key"])
        preds["key"] = [
            k if k in known else by_text.get(t, k) for k, t in zip(preds["key"], preds["text"])
        ]
        preds = preds.drop_duplicates("key", keep="last")

    info: dict[str, dict[str, object]] = {}
    for source in ([preds] if preds is not None else []) + [rows]:
        for r in source.itertuples(index=False):
            info.setdefault(r.key, {"text": r.text, "document": r.document, "section": r.section})
    coder_themes: dict[str, dict[str, list[str]]] = {}
    coder_notes: dict[str, list[str]] = {}
    for r in rows.itertuples(index=False):
        coder_themes.setdefault(r.key, {})[r.coder] = list(r.themes)
        if str(r.note).strip():
            coder_notes.setdefault(r.key, []).append(f"{r.coder}: {str(r.note).strip()}")
    model: dict[str, tuple[str, float]] = {}
    if preds is not None:
        model = {r.key: (r.theme, r.confidence) for r in preds.itertuples(index=False)}

    found: dict[str, tuple[str, str, float]] = {}  # key -> (kind, model theme, confidence)
    strength: dict[str, float] = {}  # label errors: suggested minus given probability

    def add(key: str, kind: str, theme: str, confidence: float) -> None:
        current = found.get(key)
        if current is None or DISAGREEMENTS.index(kind) < DISAGREEMENTS.index(current[0]):
            found[key] = (kind, theme, confidence)

    if preds is not None:
        for r in preds.itertuples(index=False):
            given = coder_themes.get(r.key)
            if given:
                if any(r.theme not in themes for themes in given.values()):
                    add(r.key, "model_vs_coder", r.theme, r.confidence)
            elif r.flagged:
                add(r.key, "low_confidence", r.theme, r.confidence)

    if label_errors and (preds is not None or len(coders) == 1):
        unique = rows.assign(dominant=[ts[0] for ts in rows["themes"]])
        unique = unique.drop_duplicates(["text", "dominant"])
        checked, notes = likely_label_errors(
            unique["text"].tolist(),
            unique["themes"].tolist(),
            codebook,
            folds=folds,
            encoder=encoder,
            seed=seed,
        )
        messages += notes
        flagged = {
            (t, d): (s, c, g)
            for t, d, s, c, g, f in zip(
                unique["text"],
                unique["dominant"],
                checked["suggested"],
                checked["confidence"],
                checked["given_proba"],
                checked["flagged"],
            )
            if f
        }
        for r in rows.itertuples(index=False):
            hit = flagged.get((r.text, r.themes[0]))
            if hit:
                add(r.key, "likely_label_error", hit[0], float(hit[1]))
                strength[r.key] = float(hit[1]) - float(hit[2])

    agreement = None
    if len(coders) >= 2:
        for key, given in coder_themes.items():
            if len(given) >= 2 and len({tuple(sorted(ts)) for ts in given.values()}) > 1:
                theme, confidence = model.get(key, ("", float("nan")))
                add(key, "coder_vs_coder", theme, confidence)
        coded_table = pd.DataFrame(
            [{c: ";".join(given.get(c, [])) for c in coders} for given in coder_themes.values()],
            columns=coders,
        )
        shared = sum(len(given) >= 2 for given in coder_themes.values())
        if shared:
            agreement = agreement_table(coded_table, codebook.ids)
        else:
            messages.append(
                f"no agreement statistics: the coders ({', '.join(coders)}) labelled no segment "
                "in common"
            )

    records = []
    for key, (kind, theme, confidence) in found.items():
        given = coder_themes.get(key, {})
        meta = info[key]
        records.append(
            {
                "segment_id": key if not key.startswith("text:") else "",
                "document": meta["document"],
                "section": meta["section"],
                "text": meta["text"],
                **{f"theme_{c}": ";".join(given.get(c, [])) for c in coders},
                "coder_notes": "; ".join(coder_notes.get(key, [])),
                "model_theme": theme,
                "model_confidence": round(confidence, 4) if not np.isnan(confidence) else np.nan,
                "disagreement": kind,
                "resolved_theme": "",
                "note": "",
                "labels_sha256": ";".join(coded.hashes),
                "_rank": DISAGREEMENTS.index(kind),
                "_order": _order(kind, confidence, strength.get(key)),
            }
        )
    columns = [*SEGMENT_COLUMNS, *(f"theme_{c}" for c in coders), "coder_notes", *TAIL_COLUMNS]
    table = pd.DataFrame(records, columns=[*columns, "_rank", "_order"])
    table = table.sort_values(["_rank", "_order"], kind="stable")[columns].reset_index(drop=True)
    return ReviewResult(table, coders, agreement, messages)


def _order(kind: str, confidence: float, strength: float | None) -> float:
    """Sort key within a kind (smaller first): label errors by how much more probable the
    suggested theme is than the given one, flagged segments least confident first, the rest
    most confident model first."""
    if kind == "likely_label_error" and strength is not None:
        return -strength
    if np.isnan(confidence):
        return 0.0
    return confidence if kind == "low_confidence" else -confidence


def write_review(table: pd.DataFrame, path: str | Path, *, excel: bool = True) -> None:
    """Write the review table atomically: for Swedish Excel by default (UTF-8 BOM, ';', decimal
    comma; ``excel=False``: comma-separated UTF-8), or as a workbook if ``path`` ends in .xlsx."""
    write_table(table, path, excel=excel)


# --------------------------------------------------------------------------- apply


@dataclass
class ApplyResult:
    """What :func:`apply_review` wrote."""

    changed: int
    added: int
    unchanged: int
    backup: Path | None
    audit: Path | None


def _resolved(path: Path, codebook: Codebook) -> tuple[pd.DataFrame, set[str]]:
    review = read_table(path, required=("segment_id", "text", "resolved_theme"), what="review file")
    if "labels_sha256" not in review.columns:
        raise QualcodeError(
            f"review file {path.name!r} has no 'labels_sha256' column, so it "
            "cannot be checked against the labels; export it again with "
            "`qualcode review` and keep that column."
        )
    hashes = {
        h.strip() for cell in review["labels_sha256"] for h in str(cell).split(";") if h.strip()
    }
    rows = spreadsheet_rows(review)
    chosen = [i for i, v in enumerate(review["resolved_theme"]) if str(v).strip()]
    parsed = codebook.check_themes(
        [review["resolved_theme"].iloc[i] for i in chosen],
        what=f"review file {path.name!r} column 'resolved_theme'",
        rows=[rows[i] for i in chosen],
    )
    keys = segment_keys(review)
    out = pd.DataFrame(
        {
            "key": [keys[i] for i in chosen],
            "row": [rows[i] for i in chosen],
            "themes": [";".join(p) for p in parsed],
            "note": [
                str(review["note"].iloc[i]) if "note" in review.columns else "" for i in chosen
            ],
            **{
                c: [str(review[c].iloc[i]) if c in review.columns else "" for i in chosen]
                for c in SEGMENT_COLUMNS
            },
        }
    )
    clash = out.groupby("key")["themes"].nunique()
    if (clash > 1).any():
        key = clash[clash > 1].index[0]
        where = ", ".join(str(r) for r in out.loc[out["key"] == key, "row"])
        raise QualcodeError(
            f"review file {path.name!r}: segment {key!r} is resolved "
            f"differently in rows {where}; keep one decision."
        )
    return out.drop_duplicates("key", keep="last"), hashes


def apply_review(
    review: str | Path, labels: str | Path, codebook: Codebook, *, coder: str | None = None
) -> ApplyResult:
    """Write the ``resolved_theme`` decisions of a review file into ``labels``.

    Every labelled row of a resolved segment gets the resolved theme(s) (its ``labelled_at`` is
    updated when the column exists); a resolved segment without a labelled row is appended as a
    new row by ``coder``. Refuses with :class:`QualcodeError`, writing nothing, if a resolved
    theme is unknown or ``labels`` is not byte-identical to a file the review was made from.
    """
    review, labels = Path(review), Path(labels)
    _refuse_swapped(review, labels)
    decisions, hashes = _resolved(review, codebook)
    if decisions.empty:
        return ApplyResult(0, 0, 0, None, None)
    with labels_lock(labels):
        return _apply(review, labels, codebook, decisions, hashes, coder)


def _refuse_swapped(review: Path, labels: Path) -> None:
    """``review apply LABELS --labels REVIEW`` is an easy slip: say so, not "missing column"."""

    def is_review(path: Path) -> bool:
        try:
            return path.is_file() and "resolved_theme" in read_table(path).columns
        except QualcodeError:  # a review without rows: its header still says what it is
            try:
                return "resolved_theme" in read_text(path).partition("\n")[0]
            except QualcodeError:
                return False

    if not is_review(review) and is_review(labels):
        raise QualcodeError(
            f"{review.name!r} and {labels.name!r} look swapped: the review file (the one with "
            f"'resolved_theme') comes first, then --labels: `qualcode review apply {labels.name} "
            f"--labels {review.name}`. Nothing was written."
        )


def _apply(
    review: Path,
    labels: Path,
    codebook: Codebook,
    decisions: pd.DataFrame,
    hashes: set[str],
    coder: str | None,
) -> ApplyResult:
    from qualcode.labelling import default_coder, now

    if not hashes:
        raise QualcodeError(
            f"review file {review.name!r}: the 'labels_sha256' column is empty; "
            "export the review again with `qualcode review`."
        )
    if _HASH_PREFIX + file_sha256(labels) not in hashes:
        raise QualcodeError(
            f"{labels.name!r} has changed since {review.name!r} was exported "
            "(or the review was made from other labels); nothing was written. "
            "Export the review again and resolve the rows there."
        )
    table = read_table(labels, required=("text", "theme"), what="labels file")
    resolver = coder or default_coder()
    stamp = now()
    keys = segment_keys(table)
    labelled = [bool(str(t).strip()) for t in table["theme"]]
    positions: dict[str, list[int]] = {}
    for i, (key, has) in enumerate(zip(keys, labelled)):
        if has:
            positions.setdefault(key, []).append(i)

    audit: list[dict[str, str]] = []
    new_rows: list[dict[str, str]] = []
    changed = unchanged = 0
    updated = table.copy()
    for d in decisions.itertuples(index=False):
        entry = {
            "resolved_at": stamp,
            "resolved_by": resolver,
            "segment_id": d.segment_id,
            "new_theme": d.themes,
            "note": d.note,
            "review_file": review.name,
        }
        rows = positions.get(d.key, [])
        for i in rows:
            old = str(table.at[i, "theme"])
            if ";".join(codebook.parse_themes(old)) == d.themes:
                unchanged += 1
                continue
            updated.at[i, "theme"] = d.themes
            if "labelled_at" in updated.columns:
                updated.at[i, "labelled_at"] = stamp
            changed += 1
            audit.append(
                {
                    **entry,
                    "coder": str(table.at[i, "coder"]) if "coder" in table.columns else "",
                    "old_theme": old,
                }
            )
        if not rows:
            if not d.text.strip():
                raise QualcodeError(
                    f"review file {review.name!r} row {d.row}: segment "
                    f"{d.segment_id!r} is not in {labels.name!r} and has no "
                    "text to add it with; nothing was written."
                )
            values = {
                "segment_id": d.segment_id,
                "document": d.document,
                "section": d.section,
                "text": d.text,
                "theme": d.themes,
                "coder": resolver,
                "labelled_at": stamp,
                "note": d.note,
            }
            new_rows.append({c: values.get(c, "") for c in table.columns})
            audit.append({**entry, "coder": resolver, "old_theme": ""})
    if not audit:
        return ApplyResult(0, 0, unchanged, None, None)
    if new_rows:
        updated = pd.concat(
            [updated, pd.DataFrame(new_rows, columns=table.columns, dtype=str)], ignore_index=True
        )
    if len(updated) != len(table) + len(new_rows):  # the promise: never drop a row
        raise AssertionError("apply_review would change the number of rows")
    _refuse_lossy_text(updated, table, review)
    backup = backup_file(labels)
    data = table_bytes(updated, xlsx=labels.suffix.lower() == ".xlsx")
    write_with_audit(labels, data, audit)
    return ApplyResult(changed, len(new_rows), unchanged, backup, audit_path(labels))


# A letter, "?" and a letter, or a space and a small letter: where å/ä/ö stood ("P? tr?ffarna").
# Twice in a text, or U+FFFD once, is an encoding loss; once may be a URL or a typo.
_LOSSY_MARK = re.compile(r"[^\W\d_]\?(?=[^\W\d_]|\s+[a-zåäö])")


def _refuse_lossy_text(updated: pd.DataFrame, before: pd.DataFrame, review: Path) -> None:
    """A review file saved in an encoding without å/ä/ö turns them into ``?`` (or U+FFFD):
    refuse to write such text into the labels."""
    old = set(before["text"].astype(str))
    for text in updated["text"].astype(str):
        if text not in old and ("\ufffd" in text or len(_LOSSY_MARK.findall(text)) >= 2):
            raise QualcodeError(
                f"review file {review.name!r} has text with lost characters ({text[:40]!r}): it "
                "was saved in an encoding without å/ä/ö. Save it as UTF-8 (CSV UTF-8 in Excel) "
                "and apply again; nothing was written."
            )
