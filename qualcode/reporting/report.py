"""Step 6: report what was coded — counts, charts, typical quotes and the segments to review.

Input is a predictions table from ``qualcode classify`` or a labels table (see
:mod:`qualcode.files.coded`). :func:`report` writes either one self-contained HTML file (output
ending in ``.html``: inline CSS and charts, no external requests, so it opens on an offline
machine) or a directory with:

``report.html``
    per theme its label, description, count and share, the most typical quotes (highest
    confidence, no near-duplicates) with their source; bar charts of the themes overall and per
    group (``by``: document, section or a metadata column); the segments flagged for review.
``report.md``
    the same in Markdown.
``theme_counts.csv``
    one row per codebook theme (codebook order) and a ``total`` row: ``theme, label, label_en,
    segments, share``, for predictions ``flagged, unflagged``, then one column per group of
    ``by`` (and ``<group> (unflagged)`` for predictions). A segment with several themes counts
    once for each, so ``share`` is the share of all codings and the shares sum to 1.
``themes.png``, ``themes_by_<by>.png``
    the charts (the second only with more than one group).
``coded_segments.xlsx``, ``codes.qdpx``
    the exports of :mod:`qualcode.reporting.export`.

With a :class:`~qualcode.files.pseudonymise.Pseudonymiser`, personal data is replaced everywhere.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
import os
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qualcode.codebook import Codebook
from qualcode.errors import QualcodeError
from qualcode.files.coded import PROVENANCE
from qualcode.files.pseudonymise import Pseudonymiser
from qualcode.files.tables import atomic_write_bytes, atomic_write_text, staged_folder, write_table
from qualcode.reporting.coded import (
    TOTAL,
    CodedTable,
    count_themes,
    group_columns,
    group_list,
    read_coded,
    resolve_by,
    split_total,
    theme_counts,
    theme_scores,
)
from qualcode.reporting.export import theme_color, write_qdpx, write_workbook

__all__ = ["ReportResult", "exemplar_quotes", "report", "theme_counts"]

MAX_CHART_GROUPS = 8
MAX_TABLE_GROUPS = 12
GROUPS_PER_TABLE = 4  # more groups than this are split over several tables that fit the page
# Groups are not themes: the by-group chart colours its groups from a palette of its own (blue
# to green, light to dark), so a group is never mistaken for the theme of the same colour.
GROUP_PALETTE = (
    "#08306B", "#2171B5", "#6BAED6", "#C6DBEF", "#00441B", "#238B45", "#74C476", "#C7E9C0",
)  # fmt: skip
NEAR_DUPLICATE = 0.6

_BY_NAMES = {"document": ("dokument", "document"), "section": ("avsnitt", "section")}
_MD_INLINE = re.compile(r"([\\`*\[\]<>|~]|(?<!\w)_|_(?!\w))")
_MD_LINE_START = re.compile(r"^(\s*)([#>+-]|=(?==*\s*$)|\d+(?=[.)]))")
_WORD = re.compile(r"\w+")


# --------------------------------------------------------------------------- exemplars


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.casefold()))


def _near_duplicate(a: frozenset[str], b: frozenset[str]) -> bool:
    """Same words for the most part (Jaccard ≥ 0.6), or one quote's words inside the other's."""
    if not a or not b:
        return a == b
    shared = len(a & b)
    return shared / len(a | b) >= NEAR_DUPLICATE or shared == min(len(a), len(b))


def _exemplars(
    coded: CodedTable, codebook: Codebook, n: int, include_flagged: bool
) -> pd.DataFrame:
    if n < 0:
        raise QualcodeError(f"--exemplars must be 0 or more, not {n}.")
    frame = coded.frame
    rows = []
    for theme in codebook.themes:
        mine = frame[frame["_themes"].map(lambda ids, t=theme.id: t in ids)]
        if coded.predictions and not include_flagged:
            mine = mine[~mine["_flagged"]]
        if mine.empty:
            continue
        if coded.predictions:
            mine = mine.assign(_score=theme_scores(coded, theme.id)[mine.index])
            mine = mine.sort_values(
                ["_score", "_index"], ascending=[False, True], na_position="last", kind="stable"
            )
        else:
            mine = mine.sort_values("_index", kind="stable").assign(_score=math.nan)
        chosen: list[frozenset[str]] = []
        for _, row in mine.iterrows():
            if len(chosen) == n:
                break
            words = _words(row["text"])
            if any(_near_duplicate(words, other) for other in chosen):
                continue
            chosen.append(words)
            rank = len(chosen)
            rows.append(
                {
                    "theme": theme.id,
                    "rank": rank,
                    "text": row["text"],
                    "confidence": row["_score"],
                    "needs_review": bool(row["_flagged"]),
                    **{c: str(row.get(c, "")) for c in PROVENANCE},
                    "coder": "; ".join(dict.fromkeys(w for _, w in row["_codings"] if w))
                    if not coded.predictions
                    else "",
                }
            )
    columns = ["theme", "rank", "text", "confidence", "needs_review", *PROVENANCE, "coder"]
    return pd.DataFrame(rows, columns=columns)


def exemplar_quotes(
    table: pd.DataFrame, codebook: Codebook, *, n: int = 3, include_flagged: bool = False
) -> pd.DataFrame:
    """The top ``n`` quotes per theme, codebook order, with provenance.

    Predictions: highest probability for the theme (``p_<theme>``, else ``confidence``) first,
    flagged segments left out unless ``include_flagged``. Labels: the first ``n`` in file order.
    A quote that mostly repeats the words of one already chosen is skipped.
    Columns: ``theme, rank, text, confidence, needs_review, segment_id, document, section,
    line_start, line_end, coder``.
    """
    return _exemplars(read_coded(table, codebook), codebook, n, include_flagged)


# --------------------------------------------------------------------------- charts


def _wrap(text: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _by_name(by: str) -> tuple[str, str]:
    return _BY_NAMES.get(by, (by, by))


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=150, layout="constrained")
    figure.patch.set_facecolor("white")
    return figure


def _style_axes(axes: Any) -> None:
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)
    axes.tick_params(axis="y", length=0, labelsize=10)
    axes.tick_params(axis="x", labelsize=9, colors="#555555")
    axes.xaxis.grid(True, color="#E5E5E5", linewidth=0.8)
    axes.set_axisbelow(True)
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, facecolor="white", metadata={"Software": None})
    return buffer.getvalue()


def _themes_chart(
    counts: pd.DataFrame, coded: CodedTable, source_name: str, codebook: Codebook
) -> bytes:
    themes, total = split_total(counts)
    themes = themes.sort_values("segments", ascending=True, kind="stable")
    figure = _figure(9, 1.6 + 0.55 * len(themes))
    axes = figure.add_subplot()
    y = range(len(themes))
    labels = [_wrap(label) for label in themes["label"]]
    dark, light = "#2F5F8F", "#A9C6E3"
    if coded.predictions:
        axes.barh(y, themes["unflagged"], color=dark, height=0.62, label="Säkra (ej flaggade)")
        axes.barh(
            y,
            themes["flagged"],
            left=themes["unflagged"],
            color=light,
            height=0.62,
            label="Flaggade för granskning",
        )
        axes.legend(loc="lower right", frameon=False, fontsize=9)
    else:
        axes.barh(y, themes["segments"], color=dark, height=0.62)
    peak = max(int(themes["segments"].max()), 1)
    for i, (_, row) in enumerate(themes.iterrows()):
        note = f"{row['segments']}  ({_percent(row['share'])})"
        if coded.predictions and row["flagged"]:
            note += f" · {row['flagged']} {'flaggad' if row['flagged'] == 1 else 'flaggade'}"
        axes.text(row["segments"] + peak * 0.01, i, note, va="center", fontsize=9, color="#333333")
    axes.set_yticks(list(y), labels)
    axes.set_xlim(0, peak * (1.4 if coded.predictions else 1.2))
    axes.set_xlabel("Antal segment", fontsize=9, color="#555555")
    _style_axes(axes)
    subtitle = f"{total['segments']} segment"
    codings = int(themes["segments"].sum())
    if codings > int(total["segments"]):
        subtitle += f" med {codings} kodningar (andel av kodningarna)"
    if coded.predictions:
        subtitle += f", varav {total['flagged']} flaggade för granskning"
    if source_name:
        subtitle += f" · {source_name}"
    figure.suptitle(f"Teman – {codebook.name}", fontsize=13, fontweight="bold", x=0.02, ha="left")
    axes.set_title(subtitle, fontsize=9, color="#555555", loc="left")
    return _png(figure)


def _groups_chart(
    counts: pd.DataFrame,
    coded: CodedTable,
    groups: list[str],
    names: dict[str, str],
    by: str,
    source_name: str,
) -> bytes:
    themes, totals = split_total(counts)
    themes = themes.sort_values("segments", ascending=True, kind="stable")
    ranked = sorted(groups, key=lambda g: -int(totals[names[g]]))
    shown = [g for g in groups if g in ranked[:MAX_CHART_GROUPS]]
    rest = [g for g in groups if g not in shown]
    series = [(g, themes[names[g]].to_numpy()) for g in shown]
    if rest:
        series.append((f"Övriga ({len(rest)})", sum(themes[names[g]].to_numpy() for g in rest)))
    figure = _figure(9, 2.2 + 0.55 * len(themes) + 0.2 * math.ceil(len(series) / 3))
    axes = figure.add_subplot()
    y = list(range(len(themes)))
    left = [0] * len(themes)
    colors = list(GROUP_PALETTE[:MAX_CHART_GROUPS]) + ["#BBBBBB"]
    for (name, values), color in zip(series, colors):
        axes.barh(
            y,
            values,
            left=left,
            color=color,
            height=0.62,
            label=_wrap(name, 34),
            edgecolor="white",
            linewidth=0.6,
        )
        left = [a + int(b) for a, b in zip(left, values)]
    peak = max(max(left), 1)
    for i, value in enumerate(left):
        axes.text(value + peak * 0.01, i, str(value), va="center", fontsize=9, color="#333333")
    axes.set_yticks(y, [_wrap(label) for label in themes["label"]])
    axes.set_xlim(0, peak * 1.12)
    xlabel = "Antal segment" + (" (även flaggade)" if coded.predictions else "")
    axes.set_xlabel(xlabel, fontsize=9, color="#555555")
    _style_axes(axes)
    swedish, _ = _by_name(by)
    figure.suptitle(f"Teman per {swedish}", fontsize=13, fontweight="bold", x=0.02, ha="left")
    subtitle = f"{totals['segments']} segment i {len(groups)} grupper"
    axes.set_title(
        subtitle + (f" · {source_name}" if source_name else ""),
        fontsize=9,
        color="#555555",
        loc="left",
    )
    figure.legend(
        loc="outside lower center",
        ncols=min(2, len(series)),
        frameon=False,
        fontsize=8,
        title=swedish.capitalize(),
        title_fontsize=8,
    )
    return _png(figure)


# --------------------------------------------------------------------------- contents


@dataclass
class _Contents:
    """What the Markdown and HTML reports show."""

    coded: CodedTable
    counts: pd.DataFrame
    exemplars: pd.DataFrame
    by: str | None
    groups: list[str]
    names: dict[str, str]
    source_name: str
    include_flagged: bool
    discovery: list[str] = field(default_factory=list)  # the "Nya teman?" section's HTML


# --------------------------------------------------------------------------- markdown


def _md(text: object) -> str:
    """Escape markdown in running text (one line)."""
    escaped = _MD_INLINE.sub(r"\\\1", " ".join(str(text).split()))
    # A leading "# " "- " "+ " or "1. " would make a heading or a list: escape it.
    return _MD_LINE_START.sub(
        lambda m: m.group(1) + (m.group(2) + "\\" if m.group(2).isdigit() else "\\" + m.group(2)),
        escaped,
    )


def _md_quote(text: str) -> list[str]:
    lines = [line for line in str(text).splitlines() if line.strip()] or [""]
    return [f"> {_md(line)}" for line in lines]


def _code_span(text: str) -> str:
    return "`" + str(text).replace("`", "'") + "`"


def _percent(share: float) -> str:
    return f"{share * 100:.1f} %".replace(".", ",")


_REASONS = (
    (
        re.compile(r"low confidence \(([\d.]+) < ([\d.]+)\)"),
        "låg säkerhet ({0} under tröskeln {1})",
    ),
    (
        re.compile(r"small margin \(([\d.]+) < ([\d.]+)\)"),
        "nära näst bästa tema (skillnad {0}, minst {1})",
    ),
    (
        re.compile(r"unlike the training data \(similarity ([\d.]+) < ([\d.]+)\)"),
        "olik de kodade segmenten (likhet {0}, minst {1})",
    ),
)


def _why(reason: object) -> str:
    """A review reason from the predictions file in Swedish, numbers as percentages."""

    def percent(value: str) -> str:
        return f"{float(value) * 100:.0f} %"

    parts = []
    for part in str(reason or "").split(";"):
        part = part.strip()
        for pattern, swedish in _REASONS:
            match = pattern.fullmatch(part)
            if match:
                part = swedish.format(*(percent(v) for v in match.groups()))
                break
        if part:
            parts.append(part)
    return "; ".join(parts) or "flaggad av modellen"


def _source_parts(
    row: pd.Series,
    confidence: float = math.nan,
    *,
    text: Callable[[str], str] = str,
    code: Callable[[str], str] = str,
) -> list[str]:
    """Where a segment comes from: document, section, lines, id and confidence (``text`` and
    ``code`` format the free text and the id for Markdown)."""
    parts = [text(v) for v in (str(row.get(c, "")).strip() for c in ("document", "section")) if v]
    start, end = str(row.get("line_start", "")).strip(), str(row.get("line_end", "")).strip()
    if start:
        parts.append(f"rad {start}" if end in ("", start) else f"rad {start}–{end}")
    if str(row.get("segment_id", "")).strip():
        parts.append(code(str(row["segment_id"])))
    if not math.isnan(confidence):
        parts.append(f"säkerhet {confidence * 100:.0f} %")
    return parts


def _provenance(row: pd.Series) -> str:
    parts = _source_parts(row, float(row["confidence"]), text=_md, code=_code_span)
    if row.get("needs_review"):
        parts.append("flaggad")
    if row.get("coder"):
        parts.append(f"kodare {_md(row['coder'])}")
    return " · ".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _markdown(c: _Contents, charts: dict[str, str], n: int) -> str:
    coded, codebook, counts, exemplars = c.coded, c.coded.codebook, c.counts, c.exemplars
    by, groups, names, source_name = c.by, c.groups, c.names, c.source_name
    include_flagged = c.include_flagged
    themes, total = split_total(counts)
    kind = (
        "modellens klassificering · *model predictions*"
        if coded.predictions
        else "manuell kodning · *hand-coded labels*"
    )
    out = [f"# {_md(codebook.name)}", "", "Temarapport · *Theme report*", ""]
    facts = [
        ("Datum · *Date*", dt.date.today().isoformat()),
        ("Indata · *Input*", (_code_span(source_name) + " — " if source_name else "") + kind),
        ("Segment · *Segments*", str(total["segments"])),
    ]
    if coded.predictions:
        facts.append(
            (
                "Flaggade för granskning · *Flagged for review*",
                f"{total['flagged']} ({_percent(total['flagged'] / total['segments'])})",
            )
        )
    if coded.coders:
        facts.append(("Kodare · *Coders*", _md(", ".join(coded.coders))))
    if coded.non_answers:
        facts.append(
            (
                "Icke-svar · *Non-answers*",
                f"{coded.non_answers} (”vet ej”, ”nej”, ”-”: räknade, inte kodade · *counted, "
                "not coded*)",
            )
        )
    if by:
        swedish, english = _by_name(by)
        facts.append(
            ("Grupperat efter · *Grouped by*", f"{_md(swedish)} · *{_md(english)}* ({len(groups)})")
        )
    facts.append(("Kodbok · *Codebook*", f"{_md(codebook.name)} ({len(codebook.themes)} teman)"))
    out += [f"- **{name}:** {value}" for name, value in facts] + [""]

    out += ["## Teman · *Themes*", ""]
    if "themes" in charts:
        out += [f"![Teman]({charts['themes']})", ""]
    header = ["Tema", "*Theme*", "Segment", "Andel"]
    align = "llrr"
    if coded.predictions:
        header += ["Flaggade", "Säkra"]
        align += "rr"
    rows = []
    for _, row in counts.iterrows():
        bold = row["theme"] == TOTAL
        cells = [
            _md(row["label"]),
            f"*{_md(row['label_en'])}*" if row["label_en"] else "",
            row["segments"],
            _percent(row["share"]),
        ]
        if coded.predictions:
            cells += [row["flagged"], row["unflagged"]]
        rows.append([f"**{c}**" if bold and str(c) else c for c in cells])
    out += _table(header, rows, align) + [""]
    if len(themes) and int(themes["segments"].sum()) > int(total["segments"]):
        out += [
            "Ett segment med flera teman räknas en gång per tema; andelen är andelen av alla "
            "kodningar. · *A segment with several themes counts once per theme; the share "
            "is the share of all codings.*",
            "",
        ]
    if coded.predictions:
        out += [
            "*Säkra* är segment som inte flaggats för granskning: modellens säkerhet nådde "
            "tröskeln för målträffsäkerheten. · *Unflagged segments reached the confidence "
            "threshold chosen for the target accuracy.*",
            "",
        ]

    if by and len(groups) > 1:
        swedish, english = _by_name(by)
        out += [f"## Per {_md(swedish)} · *By {_md(english)}*", ""]
        if "groups" in charts:
            out += [f"![Teman per {_md(swedish)}]({charts['groups']})", ""]
        shown = groups[:MAX_TABLE_GROUPS]
        header = ["Tema"] + [_md(g) for g in shown]
        rows = []
        for _, row in counts.iterrows():
            cells: list[object] = [_md(row["label"])]
            for group in shown:
                cell = str(row[names[group]])
                if coded.predictions:
                    cell += f" ({row[names[group] + ' (unflagged)']})"
                cells.append(cell)
            rows.append(cells)
        out += _table(header, rows, "l" + "r" * len(shown)) + [""]
        if coded.predictions:
            out += ["Antal segment (varav säkra) · *segments (of which unflagged)*", ""]
        if len(groups) > len(shown):
            out += [f"{len(groups) - len(shown)} grupper till finns i `theme_counts.csv`.", ""]

    out += ["## Teman och citat · *Themes and quotes*", ""]
    if coded.predictions:
        out += [
            (
                "Citaten är de segment modellen är säkrast på"
                + ("" if include_flagged else ", bland dem som inte flaggats")
                + ". · *The quotes are the segments the model is most confident about"
                + ("" if include_flagged else ", among the unflagged ones")
                + ".*"
            ),
            "",
        ]
    else:
        out += [
            "Citaten är de första segmenten i filen. · *The quotes are the first segments "
            "in the file.*",
            "",
        ]
    for theme in codebook.themes:
        row = themes[themes["theme"] == theme.id].iloc[0]
        english = f" · *{_md(theme.label_en)}*" if theme.label_en else ""
        out += [f"### {_md(theme.label)}{english}", "", _md(theme.description), ""]
        summary = f"**{row['segments']} segment** ({_percent(row['share'])})"
        if coded.predictions:
            flagged = "flaggad" if row["flagged"] == 1 else "flaggade"
            summary += f", varav {row['flagged']} {flagged} för granskning"
        out += [summary + ".", ""]
        quotes = exemplars[exemplars["theme"] == theme.id]
        for _, quote in quotes.iterrows():
            out += _md_quote(quote["text"]) + [">", f"> — {_provenance(quote)}", ""]
        if n and quotes.empty and row["segments"]:
            out += [
                "*Inga säkra citat; alla segment med temat är flaggade för granskning "
                "(`--include-flagged` visar dem).*",
                "",
            ]
    out += [
        "## Filer · *Files*",
        "",
        "- `report.html` — rapporten som en fil som öppnas utan nätverk · *the report as one "
        "offline HTML file*",
        "- `theme_counts.csv` — antal per tema och grupp · *counts per theme and group*",
        "- `coded_segments.xlsx` — sammanfattning, alla segment med 0/1-kolumn per tema och ett "
        "blad per tema · *summary, code matrix and a sheet per theme*",
        "- `codes.qdpx` — REFI-QDA-projekt för NVivo, ATLAS.ti, MAXQDA, QualCoder · "
        "*REFI-QDA project*",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- HTML

_CSS = """
:root { --ink: #1f2933; --muted: #5f6b7a; --line: #e3e7ec; --accent: #2f5f8f; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
  color: var(--ink); background: #f6f7f9; }
main { max-width: 980px; margin: 0 auto; padding: 32px 28px 64px; background: #fff; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 40px 0 12px; padding-bottom: 6px;
  border-bottom: 2px solid var(--line); }
h3 { font-size: 18px; margin: 0 0 4px; }
h3 small, .en { color: var(--muted); font-weight: normal; font-style: italic; }
.subtitle { color: var(--muted); margin: 0 0 20px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
img.chart { width: 100%; height: auto; border: 1px solid var(--line); margin: 8px 0 16px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 16px; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left;
  vertical-align: top; }
th { background: #f0f3f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.by-group { table-layout: fixed; }
table.by-group th, table.by-group td { overflow-wrap: anywhere; white-space: normal; }
table.by-group th:first-child, table.by-group td:first-child { width: 34%; }
td, th { overflow-wrap: anywhere; }
@media print {
  body { background: #fff; }
  main { max-width: none; padding: 0; }
  img.chart { break-inside: avoid; }
  tr, article.theme { break-inside: avoid; }
}
tr.total td { font-weight: 600; border-top: 2px solid var(--ink); }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 8px; }
article.theme { border: 1px solid var(--line); border-radius: 6px;
  padding: 16px 18px; margin: 0 0 18px; }
article.theme p.description { margin: 4px 0 8px; color: var(--muted); }
p.count { margin: 0 0 10px; }
ol.quotes { margin: 0; padding-left: 22px; }
ol.quotes li { margin: 0 0 12px; }
blockquote { margin: 0; padding: 2px 0 2px 12px; border-left: 3px solid var(--accent); }
p.source { margin: 3px 0 0; font-size: 13px; color: var(--muted); }
.flag { color: #a3340f; font-weight: 600; }
.note { font-size: 13px; color: var(--muted); }
footer { margin-top: 48px; font-size: 12px; color: var(--muted); }
@media print { body { background: #fff; } main { padding: 0; }
  article.theme { break-inside: avoid; } }
"""


def _h(value: object) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def page_head(title: str, css: str = "") -> list[str]:
    """The opening lines of a qualcode HTML page (through ``<body>``): Swedish, self-contained,
    the report's style sheet plus ``css``."""
    return [
        "<!DOCTYPE html>",
        '<html lang="sv">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="qualcode">',
        f"<title>{_h(title)}</title>",
        f"<style>{_CSS}{css}</style>",
        "</head>",
        "<body>",
    ]


def _html(c: _Contents, charts: dict[str, bytes], pseudonymised: str) -> str:
    coded, codebook, counts, exemplars = c.coded, c.coded.codebook, c.counts, c.exemplars
    by, groups, names, source_name = c.by, c.groups, c.names, c.source_name
    include_flagged = c.include_flagged
    themes, total = split_total(counts)
    out = [
        *page_head(f"{codebook.name} – temarapport"),
        "<main>",
        f"<h1>{_h(codebook.name)}</h1>",
        '<p class="subtitle">Temarapport · <span class="en">Theme report</span></p>',
        '<dl class="facts">',
    ]
    kind = "modellens klassificering" if coded.predictions else "manuell kodning"
    facts = [
        ("Datum", dt.date.today().isoformat()),
        ("Indata", (f"{source_name} — " if source_name else "") + kind),
        ("Segment", f'<span id="total-segments">{total["segments"]}</span>'),
    ]
    if coded.predictions:
        share = _percent(total["flagged"] / total["segments"])
        facts.append(
            (
                "Flaggade för granskning",
                f'<span id="total-flagged">{total["flagged"]}</span> ({share})',
            )
        )
    if coded.non_answers:
        facts.append(
            (
                "Icke-svar",
                f'<span id="non-answers">{coded.non_answers}</span> (svar som ”vet ej”, ”nej”, '
                "”-”: räknade, inte kodade)",
            )
        )
    if coded.coders:
        facts.append(("Kodare", _h(", ".join(coded.coders))))
    facts.append(("Kodbok", f"{_h(codebook.name)} ({len(codebook.themes)} teman)"))
    if pseudonymised:
        facts.append(("Pseudonymiserad", _h(pseudonymised)))
    for name, value in facts:
        out.append(f"<dt>{_h(name)}</dt><dd>{value if name != 'Indata' else _h(value)}</dd>")
    out.append("</dl>")

    out += ['<section id="overview">', "<h2>Teman <span class='en'>· Themes</span></h2>"]
    if "themes" in charts:
        out.append(
            f'<img class="chart" alt="Stapeldiagram: segment per tema" '
            f'src="{_data_uri(charts["themes"])}">'
        )
    header = ["Tema", "Segment", "Andel"] + (["Flaggade", "Säkra"] if coded.predictions else [])
    out += ['<table class="counts">', "<thead><tr>"]
    out += [f"<th>{_h(header[0])}</th>"] + [f'<th class="num">{_h(h)}</th>' for h in header[1:]]
    out += ["</tr></thead>", "<tbody>"]
    for _, row in counts.iterrows():
        is_total = row["theme"] == TOTAL
        attrs = (
            f' data-theme="{_h(row["theme"])}" data-segments="{row["segments"]}"'
            f' data-share="{row["share"]}"'
        )
        if coded.predictions:
            attrs += f' data-flagged="{row["flagged"]}"'
        swatch = (
            ""
            if is_total
            else f'<span class="swatch" style="background:{theme_color(codebook, row["theme"])}">'
            "</span>"
        )
        cells = [f"<td>{swatch}{_h(row['label'])}</td>"]
        cells += [
            f'<td class="num">{row["segments"]}</td>',
            f'<td class="num">{_percent(row["share"])}</td>',
        ]
        if coded.predictions:
            cells += [
                f'<td class="num">{row["flagged"]}</td>',
                f'<td class="num">{row["unflagged"]}</td>',
            ]
        css = ' class="total"' if is_total else ""
        out.append(f"<tr{css}{attrs}>{''.join(cells)}</tr>")
    out += ["</tbody>", "</table>"]
    if len(themes) and int(themes["segments"].sum()) > int(total["segments"]):
        out.append(
            '<p class="note">Ett segment med flera teman räknas en gång per tema; andelen är '
            "andelen av alla segment, så andelarna kan tillsammans bli mer än 100 %.</p>"
        )
    out.append("</section>")

    if by and len(groups) > 1:
        swedish, english = _by_name(by)
        out += [
            '<section id="groups">',
            f"<h2>Per {_h(swedish)} <span class='en'>· By {_h(english)}</span></h2>",
        ]
        if "groups" in charts:
            out.append(
                f'<img class="chart" alt="Stapeldiagram: teman per {_h(swedish)}" '
                f'src="{_data_uri(charts["groups"])}">'
            )
        shown = groups[:MAX_TABLE_GROUPS]
        for first in range(0, len(shown), GROUPS_PER_TABLE):  # tables that fit the page
            part = shown[first : first + GROUPS_PER_TABLE]
            out += ['<table class="by-group">', "<thead><tr><th>Tema</th>"]
            out += [f'<th class="num">{_h(g)}</th>' for g in part]
            out += ["</tr></thead>", "<tbody>"]
            for _, row in counts.iterrows():
                css = ' class="total"' if row["theme"] == TOTAL else ""
                cells = [f"<td>{_h(row['label'])}</td>"]
                for group in part:
                    cell = str(row[names[group]])
                    if coded.predictions:
                        cell += f" ({row[names[group] + ' (unflagged)']})"
                    cells.append(f'<td class="num" data-group="{_h(group)}">{cell}</td>')
                out.append(f'<tr{css} data-theme="{_h(row["theme"])}">{"".join(cells)}</tr>')
            out += ["</tbody>", "</table>"]
        if coded.predictions:
            out.append('<p class="note">Antal segment (varav säkra, ej flaggade).</p>')
        if len(groups) > len(shown):
            out.append(f'<p class="note">{len(groups) - len(shown)} grupper till visas inte.</p>')
        out.append("</section>")

    out += [
        '<section id="themes">',
        "<h2>Teman och citat <span class='en'>· Themes and quotes</span></h2>",
    ]
    if coded.predictions:
        among = "" if include_flagged else ", bland dem som inte flaggats"
        out.append(
            f'<p class="note">Citaten är de segment modellen är säkrast på{among}, utan '
            "nästan likadana citat.</p>"
        )
    for theme in codebook.themes:
        row = themes[themes["theme"] == theme.id].iloc[0]
        flagged = int(row["flagged"]) if coded.predictions else 0
        out.append(
            f'<article class="theme" id="theme-{_h(theme.id)}" data-theme="{_h(theme.id)}" '
            f'data-segments="{row["segments"]}" data-flagged="{flagged}">'
        )
        english = f" <small>· {_h(theme.label_en)}</small>" if theme.label_en else ""
        out.append(
            f'<h3><span class="swatch" style="background:{theme_color(codebook, theme.id)}">'
            f"</span>{_h(theme.label)}{english}</h3>"
        )
        out.append(f'<p class="description">{_h(theme.description)}</p>')
        summary = f"<strong>{row['segments']} segment</strong> ({_percent(row['share'])})"
        if coded.predictions:
            summary += f", varav {flagged} flaggade för granskning"
        out.append(f'<p class="count">{summary}.</p>')
        quotes = exemplars[exemplars["theme"] == theme.id]
        if len(quotes):
            out.append('<ol class="quotes">')
            for _, quote in quotes.iterrows():
                source = " · ".join(_source_parts(quote, float(quote["confidence"])))
                if quote["needs_review"]:
                    source += " · flaggad"
                out.append(
                    f"<li><blockquote>{_h(quote['text'])}</blockquote>"
                    f'<p class="source">{_h(source)}</p></li>'
                )
            out.append("</ol>")
        elif row["segments"] and coded.predictions and not include_flagged:
            out.append(
                '<p class="note">Inga säkra citat: alla segment med temat är flaggade för '
                "granskning.</p>"
            )
        out.append("</article>")
    out.append("</section>")

    if coded.predictions:
        flagged_rows = coded.frame[coded.frame["_flagged"]]
        out += [
            '<section id="review">',
            f"<h2>Flaggade för granskning <span class='en'>· Flagged for review</span> "
            f"({len(flagged_rows)})</h2>",
        ]
        if len(flagged_rows):
            out.append(
                '<p class="note">Modellen var inte säker nog för målträffsäkerheten; en kodare '
                "bör avgöra dessa (<code>qualcode review</code>).</p>"
            )
            out += [
                '<table class="flagged">',
                "<thead><tr><th>Segment</th><th>Tema</th><th>Alternativ</th>"
                '<th class="num">Säkerhet</th><th>Varför</th><th>Källa</th></tr></thead>',
                "<tbody>",
            ]
            for _, row in flagged_rows.iterrows():
                labels = "; ".join(codebook.get(t).label for t in row["_themes"])
                second = str(row["_second"]).strip()
                second_label = codebook.get(second).label if second in codebook.ids else second
                out.append(
                    f'<tr data-segment="{_h(row.get("segment_id", ""))}">'
                    f"<td>{_h(row['text'])}</td><td>{_h(labels)}</td>"
                    f"<td>{_h(second_label)}</td>"
                    f'<td class="num">{row["_confidence"] * 100:.0f} %</td>'
                    f"<td>{_h(_why(row['_reason']))}</td>"
                    f"<td>{_h(' · '.join(_source_parts(row)))}</td></tr>"
                )
            out += ["</tbody>", "</table>"]
        out.append("</section>")

    out += c.discovery
    out += [
        f"<footer>qualcode · {_h(dt.date.today().isoformat())}"
        + (f" · {_h(source_name)}" if source_name else "")
        + "</footer>",
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- report


@dataclass
class ReportResult:
    """What :func:`report` wrote: ``paths`` by role, the counts table and any notes."""

    output: Path
    paths: dict[str, Path]
    counts: pd.DataFrame
    kind: str
    segments: int
    flagged: int | None
    messages: list[str] = field(default_factory=list)


def _safe_name(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", value).strip("_") or "group"


def report(
    table: pd.DataFrame,
    codebook: Codebook,
    output: str | os.PathLike[str],
    *,
    by: str | None = "document",
    exemplars: int = 3,
    include_flagged: bool = False,
    source_name: str = "",
    pseudonymiser: Pseudonymiser | None = None,
    sources: Sequence[str | os.PathLike[str]] = (),
    near: Sequence[str | os.PathLike[str]] = (),
    discovery: str | os.PathLike[str] | None = None,
) -> ReportResult:
    """Write the report (see the module docstring): one HTML file if ``output`` ends in
    ``.html``, else a directory (created) with the HTML, Markdown, counts, charts and exports.

    ``table`` is a predictions or labels table (every cell a string, as
    :func:`qualcode.files.tables.read_table` returns it); ``by`` is ``document``, ``section`` or any
    metadata column (``None``: ``document`` when present); ``source_name`` names the input file
    in the report; ``sources`` (or documents found by name in the ``near`` folders) are the
    segmented documents for the REFI-QDA export; ``discovery`` is a ``qualcode discover``
    folder whose suggested themes get a "Nya teman?" section. Bad input
    raises :class:`QualcodeError` before anything is written.
    """
    what = repr(source_name) if source_name else "input"
    coded = read_coded(table, codebook, what=what, pseudonymiser=pseudonymiser)
    summary = pseudonymiser.summary() if pseudonymiser is not None else ""
    summary_sv = pseudonymiser.summary_sv() if pseudonymiser is not None else ""
    by = resolve_by(coded, by)
    counts = count_themes(coded, codebook, by)
    quotes = _exemplars(coded, codebook, exemplars, include_flagged)
    groups = group_list(coded, by)
    names = group_columns(coded, by, groups)
    output = Path(output)
    single = output.suffix.lower() in (".html", ".htm")
    if single and output.is_dir():
        raise QualcodeError(f"output {str(output)!r} is a directory; give a file name.")
    if not single and output.exists() and not output.is_dir():
        raise QualcodeError(
            f"output {str(output)!r} is a file; give a directory for the report, or a name "
            "ending in .html for the HTML report alone."
        )
    charts = {"themes": _themes_chart(counts, coded, source_name, codebook)}
    if by and len(groups) > 1:
        charts["groups"] = _groups_chart(counts, coded, groups, names, by, source_name)
    messages: list[str] = [summary] if summary else []
    contents = _Contents(coded, counts, quotes, by, groups, names, source_name, include_flagged)
    if discovery is not None:
        from qualcode.reporting.suggestions import read_suggestions, suggestions_html

        suggested = read_suggestions(discovery)
        contents.discovery = suggestions_html(suggested, discovery)
        messages.append(
            f"discovery in {discovery}: {len(suggested)} suggested theme(s)"
            + (" in the section “Nya teman?”" if suggested else ", nothing new to show")
        )
    if single:
        atomic_write_text(output, _html(contents, charts, summary_sv))
        paths = {"report": output}
    else:
        # All or nothing: the files are staged and moved into the folder once all are written.
        with staged_folder(output) as out:
            paths = {"counts": out / "theme_counts.csv", "themes_chart": out / "themes.png"}
            write_table(counts, paths["counts"])
            atomic_write_bytes(paths["themes_chart"], charts["themes"])
            if "groups" in charts:
                paths["groups_chart"] = out / f"themes_by_{_safe_name(by or '')}.png"
                atomic_write_bytes(paths["groups_chart"], charts["groups"])
            # The exports take the table read (and pseudonymised) above; the .qdpx shares the
            # pseudonymiser for its source documents, so a value has one placeholder everywhere.
            paths["matrix"] = write_workbook(coded, codebook, out / "coded_segments.xlsx").path
            qdpx = write_qdpx(
                coded,
                codebook,
                out / "codes.qdpx",
                sources=sources,
                near=near,
                pseudonymiser=pseudonymiser,
                description=f"Exported by qualcode from {source_name}." if source_name else "",
            )
            paths["qdpx"] = qdpx.path
            messages += qdpx.messages
            if qdpx.pseudonymised:
                messages.append(f"codes.qdpx, in its source documents: {qdpx.pseudonymised}")
            chart_files = {k: p.name for k, p in paths.items() if k.endswith("chart")}
            images = {"themes": chart_files["themes_chart"]}
            if "groups_chart" in chart_files:
                images["groups"] = chart_files["groups_chart"]
            text = _markdown(contents, images, exemplars)
            paths["markdown"] = out / "report.md"
            atomic_write_text(paths["markdown"], text)
            paths["report"] = out / "report.html"
            atomic_write_text(paths["report"], _html(contents, charts, summary_sv))
        paths = {key: output / staged.name for key, staged in paths.items()}
    _, total = split_total(counts)
    return ReportResult(
        output=output,
        paths=paths,
        counts=counts,
        kind=coded.kind,
        segments=int(total["segments"]),
        flagged=int(total["flagged"]) if coded.predictions else None,
        messages=messages,
    )
