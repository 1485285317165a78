"""What ``qualcode discover`` writes into its folder:

- ``clusters.csv``: one row per segment considered (Swedish Excel: ``;``, UTF-8 with BOM);
- ``codebook_suggestions.yaml``: the new clusters as codebook themes, to edit and merge;
- ``discover.html``: self-contained (inline CSS and SVG, no scripts), in the report's style: a
  2-D map of the batch coloured by theme and by cluster, and one card per cluster.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import yaml

from qualcode.codebook import Codebook
from qualcode.discovery import NEW, Cluster, Discovery
from qualcode.errors import QualcodeError
from qualcode.files.coded import PROVENANCE
from qualcode.files.tables import atomic_write_text, staged_folder, write_table
from qualcode.reporting.export import theme_color
from qualcode.reporting.report import _h, page_head
from qualcode.reporting.suggestions import CLUSTERS, PAGE, SUGGESTIONS

__all__ = ["write_discovery"]

# Cluster colours (Tableau 10), distinct from the grey of segments in no cluster.
CLUSTER_PALETTE = (
    "#E15759", "#4E79A7", "#F28E2B", "#59A14F", "#B07AA1", "#76B7B2", "#EDC948", "#9C755F",
)  # fmt: skip
NONE_COLOR = "#C9CED6"
MAP_SIZE = 420
_EXTRA_CSS = """
.maps { display: flex; flex-wrap: wrap; gap: 16px; }
.maps figure { margin: 0; flex: 1 1 420px; }
.maps svg { width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
.maps figcaption { font-size: 13px; color: var(--muted); }
ul.legend { list-style: none; padding: 0; margin: 4px 0; font-size: 13px; }
ul.legend li { display: inline-block; margin-right: 12px; }
p.keywords { margin: 4px 0 8px; }
.verdict { font-weight: 600; }
"""


def _cluster_color(number: int) -> str:
    return CLUSTER_PALETTE[(number - 1) % len(CLUSTER_PALETTE)]


def _provenance(row: Any) -> str:
    parts = [str(row.get(c, "")) for c in ("document", "section") if str(row.get(c, ""))]
    start, end = str(row.get("line_start", "")), str(row.get("line_end", ""))
    if start:
        parts.append(f"rad {start}" + (f"–{end}" if end and end != start else ""))
    if str(row.get("segment_id", "")):
        parts.append(str(row["segment_id"]))
    return " · ".join(parts)


def _verdict(cluster: Cluster, codebook: Codebook) -> str:
    near = codebook.get(cluster.nearest_theme).label if cluster.nearest_theme else ""
    if cluster.verdict == NEW:
        return "Nytt tema?" + (
            f" (närmast: {near}, likhet {cluster.closeness:.2f})" if near else ""
        )
    return f"Undertema till eller del av {near} (likhet {cluster.closeness:.2f})"


def _svg(result: Discovery, colors: list[str], title: str) -> str:
    """A scatter plot of the batch's 2-D map, one circle per segment."""
    pad, size = 12, MAP_SIZE
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" role="img" '
        f'aria-label="{_h(title)}">'
    ]
    order = sorted(range(len(colors)), key=lambda i: colors[i] != NONE_COLOR)  # grey below
    for i in order:
        x, y = result.xy[i]
        cx, cy = pad + x * (size - 2 * pad), pad + (1 - y) * (size - 2 * pad)
        text = str(result.segments["text"].iloc[i])[:160]
        out.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colors[i]}" fill-opacity="0.85">'
            f"<title>{_h(text)}</title></circle>"
        )
    out.append("</svg>")
    return "".join(out)


def _legend(items: list[tuple[str, str]]) -> str:
    entries = "".join(
        f'<li><span class="swatch" style="background:{color}"></span>{_h(name)}</li>'
        for name, color in items
    )
    return f'<ul class="legend">{entries}</ul>'


def _maps(result: Discovery) -> list[str]:
    codebook = result.codebook
    themes = result.segments["theme"].tolist()
    by_theme = [theme_color(codebook, t) if t in codebook.ids else NONE_COLOR for t in themes]
    by_cluster = [_cluster_color(int(a)) if a else NONE_COLOR for a in result.assigned]
    used = [t for t in codebook.ids if t in set(themes)]
    theme_legend = [(codebook.get(t).label, theme_color(codebook, t)) for t in used]
    cluster_legend = [(f"{c.name} {c.label}", _cluster_color(c.number)) for c in result.clusters]
    return [
        '<div class="maps">',
        "<figure>",
        _svg(result, by_theme, "Karta över segmenten, färgade efter tema"),
        "<figcaption>Färgade efter modellens tema</figcaption>",
        _legend(theme_legend),
        "</figure>",
        "<figure>",
        _svg(result, by_cluster, "Karta över segmenten, färgade efter kluster"),
        "<figcaption>Färgade efter kluster (grå: inget kluster)</figcaption>",
        _legend([*cluster_legend, ("inget kluster", NONE_COLOR)]),
        "</figure>",
        "</div>",
    ]


def _card(result: Discovery, cluster: Cluster) -> list[str]:
    segments = result.segments
    out = [
        f'<article class="theme" id="{_h(cluster.name)}" data-verdict="{_h(cluster.verdict)}">',
        f'<h3><span class="swatch" style="background:{_cluster_color(cluster.number)}"></span>'
        f"{_h(cluster.name)} · {_h(cluster.label)}</h3>",
        f'<p class="verdict">{_h(_verdict(cluster, result.codebook))}</p>',
        f'<p class="keywords">Nyckelord: {_h(", ".join(cluster.keywords))}</p>',
        f'<p class="count">{len(cluster.members)} segment</p>',
        '<ol class="quotes">',
    ]
    for i in cluster.quotes:
        row = segments.iloc[i]
        out.append(
            f"<li><blockquote>{_h(row['text'])}</blockquote>"
            f'<p class="source">{_h(_provenance(row))}</p></li>'
        )
    out += ["</ol>", "</article>"]
    return out


def _page(result: Discovery, source_name: str) -> str:
    codebook = result.codebook
    n = len(result.segments)
    facts = [
        ("Datum", dt.date.today().isoformat()),
        ("Indata", source_name or "segment"),
        ("Segment", str(n)),
        ("Granskade", f"{int(result.considered.sum())} (de som kodboken täcker sämst)"),
        ("Kodbok", f"{codebook.name} ({len(codebook.themes)} teman)"),
        ("Slumpfrö", str(result.seed)),
    ]
    out = [
        *page_head(f"{codebook.name} – nya teman?", _EXTRA_CSS),
        "<main>",
        f"<h1>{_h(codebook.name)}</h1>",
        '<p class="subtitle">Nya teman? · <span class="en">Theme discovery</span></p>',
        '<dl class="facts">',
        *[f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>" for k, v in facts],
        "</dl>",
        f'<p id="summary">{_h(result.summary())}</p>',
        *[f'<p class="note">{_h(m)}</p>' for m in result.messages],
    ]
    if n:
        out += ['<section id="map">', "<h2>Karta <span class='en'>· Map</span></h2>"]
        out += _maps(result)
        out += [
            '<p class="note">Varje punkt är ett segment; närliggande punkter har liknande '
            "innehåll (meningsinbäddningar, huvudkomponenter).</p>",
            "</section>",
        ]
    if result.clusters:
        out += ['<section id="clusters">', "<h2>Kluster <span class='en'>· Clusters</span></h2>"]
        for cluster in result.clusters:
            out += _card(result, cluster)
        out.append("</section>")
    out += [
        f"<footer>qualcode discover · {_h(dt.date.today().isoformat())}</footer>",
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(out) + "\n"


def write_discovery(
    result: Discovery, folder: str | os.PathLike[str], *, source_name: str = ""
) -> dict[str, Path]:
    """Write ``clusters.csv``, ``codebook_suggestions.yaml`` and ``discover.html`` into
    ``folder`` (all or nothing)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise QualcodeError(f"-o {str(folder)!r} is a file: discover writes a folder")
    table = result.table()
    columns = [c for c in PROVENANCE if c in table.columns] + [
        c for c in table.columns if c not in PROVENANCE
    ]
    suggestions = yaml.safe_dump(
        result.suggestions(), allow_unicode=True, sort_keys=False, width=100
    )
    header = (
        "# Förslag till nya teman från qualcode discover: redigera id, label och description,\n"
        "# och lägg in dem med `qualcode codebook merge` (eller för hand).\n"
    )
    with staged_folder(folder) as out:
        write_table(table[columns], out / CLUSTERS, excel=True)
        atomic_write_text(out / SUGGESTIONS, header + suggestions)
        atomic_write_text(out / PAGE, _page(result, source_name))
    return {
        "clusters": folder / CLUSTERS,
        "suggestions": folder / SUGGESTIONS,
        "page": folder / PAGE,
    }
