"""The files of a ``qualcode discover`` folder by name, and what the report shows of them: a
section "Nya teman?" with the suggested themes (read from ``codebook_suggestions.yaml``)."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from qualcode.errors import QualcodeError
from qualcode.files.tables import read_text

__all__ = ["CLUSTERS", "PAGE", "SUGGESTIONS", "Suggestion", "read_suggestions", "suggestions_html"]

CLUSTERS, SUGGESTIONS, PAGE = "clusters.csv", "codebook_suggestions.yaml", "discover.html"


def _h(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass
class Suggestion:
    """A suggested theme as ``codebook_suggestions.yaml`` holds it."""

    id: str
    label: str
    description: str
    examples: list[str]


def read_suggestions(folder: str | os.PathLike[str]) -> list[Suggestion]:
    """The suggested themes of a ``qualcode discover`` folder (none when it found none)."""
    path = Path(folder) / SUGGESTIONS
    if not path.is_file():
        raise QualcodeError(f"{folder} holds no {SUGGESTIONS}: run `qualcode discover` first")
    try:
        data = yaml.safe_load(read_text(path, what="suggestions")) or {}
    except yaml.YAMLError as err:
        raise QualcodeError(f"{path} is not valid YAML: {err}") from None
    themes = data.get("themes") or [] if isinstance(data, dict) else []
    return [
        Suggestion(
            str(t.get("id", "")),
            str(t.get("label", "")),
            str(t.get("description", "")),
            [str(e) for e in t.get("examples") or []],
        )
        for t in themes
        if isinstance(t, dict)
    ]


def suggestions_html(suggestions: list[Suggestion], folder: str | os.PathLike[str]) -> list[str]:
    """The report's "Nya teman?" section (empty when discovery found nothing new)."""
    if not suggestions:
        return []
    page = Path(folder) / PAGE
    out = [
        '<section id="discovery">',
        "<h2>Nya teman? <span class='en'>· New themes?</span></h2>",
        f"<p>qualcode discover fann {len(suggestions)} grupp(er) av segment som kodboken inte "
        f"täcker; se <code>{_h(page)}</code> och <code>{_h(Path(folder) / SUGGESTIONS)}</code>."
        "</p>",
    ]
    for s in suggestions:
        out += [
            f'<article class="theme" data-suggestion="{_h(s.id)}">',
            f"<h3>{_h(s.label)} <small>{_h(s.id)}</small></h3>",
            f'<p class="description">{_h(s.description)}</p>',
            '<ol class="quotes">',
            *[f"<li><blockquote>{_h(e)}</blockquote></li>" for e in s.examples],
            "</ol>",
            "</article>",
        ]
    out.append("</section>")
    return out
