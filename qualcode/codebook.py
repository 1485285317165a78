"""The codebook: the themes segments are coded with, loaded from YAML.

Format::

    name: Samverkan region–primärvård–kommun
    language: sv
    themes:
      - id: coordination_roles          # ^[a-z][a-z0-9_]*$, becomes column p_<id>
        label: Koordineringsroller
        label_en: Coordination roles     # optional
        color: "#4E79A7"                 # optional, for charts and exports
        description: >-
          Vad som hör till temat ...
        examples:                       # optional
          - "Ett exempel ..."
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qualcode.errors import QualcodeError
from qualcode.files.tables import read_text

__all__ = [
    "Codebook",
    "Theme",
    "label_phrases",
    "load_codebook",
    "merge_themes",
    "parse_codebook",
    "theme_texts",
]

ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
_THEME_KEYS = ("id", "label", "label_en", "description", "examples", "color")
COLOR_PATTERN = re.compile(r"^#[0-9A-Fa-f]{6}$")
_MAX_LISTED = 10


@dataclass(frozen=True)
class Theme:
    """One theme (code) of the codebook."""

    id: str
    label: str
    label_en: str
    description: str
    examples: tuple[str, ...] = ()
    color: str = ""  # "#RRGGBB" for charts and REFI-QDA codes; not part of the codebook's hash


def _key(value: str) -> str:
    return " ".join(value.split()).casefold()


def _rows_text(rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:_MAX_LISTED])
    more = f" and {len(rows) - _MAX_LISTED} more" if len(rows) > _MAX_LISTED else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


@dataclass(frozen=True)
class Codebook:
    """A validated set of themes; build it with :func:`load_codebook` or :func:`parse_codebook`.

    ``sha256`` identifies the content (ids, labels, descriptions, examples), not the file bytes,
    so reformatting the YAML does not change it.
    """

    name: str
    themes: tuple[Theme, ...]
    path: Path | None
    sha256: str
    _lookup: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lookup: dict[str, str] = {}
        for theme in self.themes:
            for alias in (theme.id, theme.label, theme.label_en):
                if alias:
                    lookup.setdefault(_key(alias), theme.id)
        object.__setattr__(self, "_lookup", lookup)

    @property
    def ids(self) -> list[str]:
        """Theme ids in file order."""
        return [theme.id for theme in self.themes]

    def _where(self) -> str:
        return f" in codebook {self.path.name!r}" if self.path else ""

    def get(self, theme_id: str) -> Theme:
        """The theme with id ``theme_id``; raises :class:`QualcodeError` if there is none."""
        for theme in self.themes:
            if theme.id == theme_id:
                return theme
        raise QualcodeError(
            f"no theme with id {theme_id!r}{self._where()}; valid ids: {', '.join(self.ids)}."
        )

    def resolve(self, value: str) -> str:
        """Theme id for an id or Swedish/English label (case-insensitive, trimmed)."""
        found = self._lookup.get(_key(str(value)))
        if found is None:
            raise QualcodeError(
                f"unknown theme {str(value).strip()!r}{self._where()}; "
                f"use one of the ids {', '.join(self.ids)} or their labels."
            )
        return found

    def parse_themes(self, cell: str) -> list[str]:
        """Resolve a ``;``-separated cell of themes into ids (de-duplicated, order kept)."""
        ids: list[str] = []
        for part in str(cell).split(";"):
            if part.strip():
                theme_id = self.resolve(part)
                if theme_id not in ids:
                    ids.append(theme_id)
        return ids

    def check_themes(
        self, values: Iterable[str], *, what: str, rows: Sequence[int] | None = None
    ) -> list[list[str]]:
        """Parse every cell in ``values``; return the id lists or raise ONE error for all.

        ``rows`` are the spreadsheet row numbers of ``values``, used in the message. ``what``
        names the source, e.g. ``"labels.csv column 'themes'"``.
        """
        values = list(values)
        if rows is not None and len(rows) != len(values):
            raise ValueError("rows and values must have the same length")
        parsed: list[list[str]] = []
        unknown: dict[str, tuple[str, list[int]]] = {}  # key -> (first spelling, rows)
        for i, cell in enumerate(values):
            ids: list[str] = []
            for part in str(cell).split(";"):
                if not part.strip():
                    continue
                theme_id = self._lookup.get(_key(part))
                if theme_id is None:
                    where = unknown.setdefault(_key(part), (part.strip(), []))[1]
                    where.append(rows[i] if rows is not None else i + 1)
                elif theme_id not in ids:
                    ids.append(theme_id)
            parsed.append(ids)
        if unknown:
            items = list(unknown.values())
            listed = "; ".join(
                f"{name!r}" + (f" ({_rows_text(where)})" if rows is not None else "")
                for name, where in items[:_MAX_LISTED]
            )
            more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
            raise QualcodeError(
                f"{what}: unknown theme(s) {listed}{more}{self._where()}; valid ids: "
                f"{', '.join(self.ids)} (labels are accepted too). Fix the spelling or add the "
                "theme to the codebook."
            )
        return parsed


def theme_texts(theme: Theme) -> list[str]:
    """Texts describing ``theme`` for zero-shot prototypes: ``"label: description"`` + examples."""
    return [f"{theme.label}: {theme.description}", *theme.examples]


def label_phrases(theme: Theme) -> list[str]:
    """The label on its own and each of its parts (``"Gemensamma utbildningar och
    erfarenhetsutbyte"`` → also ``"Gemensamma utbildningar"``, ``"erfarenhetsutbyte"``): short
    notes often name a theme in just these words."""
    parts = [p.strip() for p in re.split(r",|\boch\b|\bsamt\b|/", theme.label) if p.strip()]
    return list(dict.fromkeys([theme.label, *(parts if len(parts) > 1 else [])]))


def _content_hash(themes: Sequence[Theme]) -> str:
    canonical = [
        {
            "id": t.id,
            "label": t.label,
            "label_en": t.label_en,
            "description": t.description,
            "examples": list(t.examples),
        }
        for t in themes
    ]
    blob = json.dumps(canonical, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _text(value: Any) -> str | None:
    """Whitespace-normalised string, or None if ``value`` is not a scalar text."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return None
    return " ".join(str(value).split())


def _parse_theme(raw: Any, number: int, source: str) -> Theme:
    where = f"codebook {source!r}: theme {number}"
    if not isinstance(raw, Mapping):
        raise QualcodeError(
            f"{where} is not a mapping; each theme must be a '- id: …' block "
            "with id, label and description."
        )
    theme_id = raw.get("id")
    if isinstance(theme_id, str):
        where += f" ({theme_id!r})"
    unknown = [str(k) for k in raw if k not in _THEME_KEYS]
    if unknown:
        raise QualcodeError(
            f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed keys: {', '.join(_THEME_KEYS)} (check the spelling)."
        )
    for key in ("id", "label", "description"):
        value = _text(raw.get(key))
        if not value:
            raise QualcodeError(f"{where} has no {key!r}; add a non-empty '{key}:' line.")
    if not isinstance(theme_id, str) or not ID_PATTERN.match(theme_id):
        raise QualcodeError(
            f"{where}: id {str(theme_id)!r} is invalid; ids must be lowercase letters, digits "
            "and '_' starting with a letter (e.g. coordination_roles)."
        )
    label_en = raw.get("label_en")
    if label_en is not None and not _text(label_en):
        raise QualcodeError(f"{where}: 'label_en' must be text; remove it or fill it in.")
    examples = raw.get("examples") or []
    if isinstance(examples, str) or not isinstance(examples, list):
        raise QualcodeError(f"{where}: 'examples' must be a list ('- \"…\"' lines).")
    cleaned = []
    for example in examples:
        text = _text(example)
        if not text:
            raise QualcodeError(f"{where}: every example must be non-empty text.")
        cleaned.append(text)
    color = _text(raw.get("color")) or ""
    if color and not COLOR_PATTERN.match(color):
        raise QualcodeError(f'{where}: color {color!r} must look like "#4E79A7" (in quotes).')
    return Theme(
        id=theme_id,
        label=_text(raw["label"]) or "",
        label_en=_text(label_en) or "",
        description=_text(raw["description"]) or "",
        examples=tuple(cleaned),
        color=color.upper(),
    )


def parse_codebook(data: Any, *, source: str = "codebook", path: Path | None = None) -> Codebook:
    """Validate an already-parsed YAML mapping and build a :class:`Codebook`.

    ``source`` names the codebook in error messages. All validation lives here.
    """
    if not isinstance(data, Mapping):
        raise QualcodeError(
            f"codebook {source!r} must be a YAML mapping with 'name:' and "
            "'themes:'; see the documented format."
        )
    raw_themes = data.get("themes")
    if not raw_themes:
        raise QualcodeError(
            f"codebook {source!r} has no themes; add a 'themes:' list with at least 2 themes."
        )
    if not isinstance(raw_themes, list):
        raise QualcodeError(f"codebook {source!r}: 'themes' must be a list of '- id: …' entries.")
    themes = [_parse_theme(raw, i, source) for i, raw in enumerate(raw_themes, start=1)]
    if len(themes) < 2:
        raise QualcodeError(
            f"codebook {source!r} defines only 1 theme; a codebook needs at least 2 themes."
        )
    seen: set[str] = set()
    for theme in themes:
        if theme.id in seen:
            raise QualcodeError(
                f"codebook {source!r}: theme id {theme.id!r} is used twice; "
                "give each theme a unique id."
            )
        seen.add(theme.id)
    owner: dict[str, str] = {}  # resolve() must be unambiguous across ids and labels
    for theme in themes:
        for alias in (theme.id, theme.label, theme.label_en):
            key = _key(alias)
            if key and owner.setdefault(key, theme.id) != theme.id:
                raise QualcodeError(
                    f"codebook {source!r}: {alias!r} names both theme {owner[key]!r} and "
                    f"theme {theme.id!r}; ids and labels must be unique."
                )
    name = _text(data.get("name")) or (path.stem if path else source)
    return Codebook(name=name, themes=tuple(themes), path=path, sha256=_content_hash(themes))


MAX_CODEBOOK_CHARS = 2_000_000


class _CodebookLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases: a codebook has no use for ``*refs``, and they are
    how an alias bomb expands a small file into billions of nodes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed", event.start_mark
            )
        return super().compose_node(parent, index)


def load_codebook(path: str | os.PathLike[str]) -> Codebook:
    """Load and validate a YAML codebook; any problem raises :class:`QualcodeError`."""
    path = Path(path)
    text = read_text(path, what="codebook")
    if len(text) > MAX_CODEBOOK_CHARS:
        raise QualcodeError(
            f"codebook {path.name!r} is {len(text):,} characters; a codebook is at most "
            f"{MAX_CODEBOOK_CHARS:,}: is this the right file?"
        )
    try:
        data = yaml.load(text, Loader=_CodebookLoader)  # noqa: S506 - a SafeLoader without aliases
    except RecursionError:
        raise QualcodeError(
            f"codebook {path.name!r} is nested too deeply to be a codebook; check the file"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise QualcodeError(
            f"codebook {path.name!r} is not valid YAML{line} ({problem}); "
            "check the indentation and quoting there."
        ) from None
    return parse_codebook(data, source=path.name, path=path)


# Where a command looks for the codebook when --codebook is not given, in this order.
CODEBOOK_LOOKUP = ("codebook.yaml", "corpora/codebook.yaml")
CODEBOOK_HELP = (
    "The codebook YAML (default: $QUALCODE_CODEBOOK, then the one in the model folder or beside "
    "the input files, then ./codebook.yaml, ./corpora/codebook.yaml or the one of ./models/*)."
)


def find_codebook(
    path: str | os.PathLike[str] | None = None, near: Sequence[str | os.PathLike[str]] = ()
) -> Codebook:
    """The codebook at ``path``; without one, the first of: ``$QUALCODE_CODEBOOK``; the
    ``codebook.yaml`` inside a model folder in ``near`` or beside a file in ``near`` (labels,
    predictions, segments); ``codebook.yaml`` or ``corpora/codebook.yaml`` here; the codebook
    of the models in ``models/`` when they all share one. ``Codebook.path`` says which."""
    if path is not None:
        return load_codebook(path)
    env = os.environ.get("QUALCODE_CODEBOOK")
    if env:
        return load_codebook(env)
    candidates = [
        Path(p) / "codebook.yaml" if Path(p).is_dir() else Path(p).parent / "codebook.yaml"
        for p in near
    ]
    candidates += [Path(c) for c in CODEBOOK_LOOKUP]
    for candidate in candidates:
        if candidate.is_file():
            return load_codebook(candidate)
    in_models = sorted(Path("models").glob("*/codebook.yaml"))
    if in_models and len({p.read_bytes() for p in in_models}) == 1:
        return load_codebook(in_models[0])
    raise QualcodeError(
        "no codebook found: pass --codebook FILE.yaml (none beside the input files, no "
        f"{' or '.join(CODEBOOK_LOOKUP)} here, no single codebook in models/, and "
        "QUALCODE_CODEBOOK is not set)"
    )


def merge_themes(
    codebook_path: str | os.PathLike[str], suggestions_path: str | os.PathLike[str]
) -> tuple[list[str], Path | None]:
    """Add the themes of ``suggestions_path`` (a ``qualcode discover`` suggestions file, or any
    file in the codebook format) to the codebook at ``codebook_path``, after a timestamped
    backup. The new themes are appended as YAML text, so the codebook's comments and layout
    stay; an id or label that is already taken is refused and nothing is written. Returns the
    ids added and the backup (None when there was nothing to add)."""
    from qualcode.files.tables import atomic_write_text, backup_file

    book = load_codebook(codebook_path)
    text = read_text(suggestions_path, what="suggestions")
    try:
        data = yaml.load(text, Loader=_CodebookLoader) or {}  # noqa: S506 - safe, no aliases
    except yaml.YAMLError:
        raise QualcodeError(f"{Path(suggestions_path).name!r} is not valid YAML") from None
    raw = data.get("themes") if isinstance(data, Mapping) else None
    if not raw:
        return [], None
    if not isinstance(raw, list):
        raise QualcodeError(f"{Path(suggestions_path).name!r}: 'themes' must be a list")
    added = [_parse_theme(t, i, Path(suggestions_path).name) for i, t in enumerate(raw, 1)]
    taken = [t.id for t in added if t.id in book.ids]
    if taken:
        where = book.path.name if book.path else "the codebook"
        raise QualcodeError(
            f"theme id(s) {', '.join(taken)} are already in {where}: "
            "rename them in the suggestions (or merge by hand); nothing was written"
        )
    original = read_text(codebook_path, what="codebook")
    items = yaml.safe_dump(
        [{k: v for k, v in t.items() if k in _THEME_KEYS} for t in raw],
        allow_unicode=True,
        sort_keys=False,
        width=100,
    )
    indent = re.search(r"^( *)- +id:", original, flags=re.M)
    prefix = indent.group(1) if indent else ""
    appended = (
        original.rstrip("\n")
        + "\n"
        + "".join(
            prefix + line if line.strip() else line for line in items.splitlines(keepends=True)
        )
    )
    try:
        merged = parse_codebook(yaml.load(appended, Loader=_CodebookLoader), source="merged")  # noqa: S506
        if len(merged.themes) != len(book.themes) + len(added):
            raise QualcodeError("the themes list is not the codebook's last entry")
    except (yaml.YAMLError, QualcodeError):
        full = yaml.load(original, Loader=_CodebookLoader)  # noqa: S506
        full["themes"] = list(full["themes"]) + list(raw)
        appended = yaml.safe_dump(full, allow_unicode=True, sort_keys=False, width=100)
        parse_codebook(yaml.load(appended, Loader=_CodebookLoader), source="merged")  # noqa: S506
    backup = backup_file(codebook_path)
    atomic_write_text(codebook_path, appended)
    return [t.id for t in added], backup
