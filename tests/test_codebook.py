"""Codebook loading, validation, theme resolution and the content hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from qualcode.codebook import Codebook, Theme, load_codebook, parse_codebook, theme_texts

from .conftest import error_of

CODEBOOK = """\
name: Samverkan region–primärvård–kommun
language: sv
themes:
  - id: coordination_roles
    label: Koordineringsroller
    label_en: Coordination roles
    description: >-
      Roller och funktioner som samordnar arbetet
      mellan region, primärvård och kommun.
    examples:
      - "Neutral koordinator som komplement till tjänstemannaberedningen"
      - "Lokala koordinatörer i varje samarbetsområde"
  - id: digital_tools
    label: Digitala verktyg
    label_en: Digital tools
    description: Digitala möten, gemensamma IT-system och informationsöverföring.
  - id: follow_up
    label: Uppföljning
    label_en: Follow-up
    description: Uppföljning av effekter och resultat.
"""

# The same content in flow style with other line breaks: the content hash must not change.
REFORMATTED = """\
name: "Ett annat namn"
themes:
- {id: coordination_roles, label: Koordineringsroller, label_en: Coordination roles,
   description: "Roller och funktioner som samordnar arbetet mellan region, primärvård och
     kommun.",
   examples: ["Neutral koordinator som komplement till tjänstemannaberedningen",
              "Lokala koordinatörer i varje samarbetsområde"]}
- {id: digital_tools, label: Digitala verktyg, label_en: Digital tools,
   description: "Digitala möten, gemensamma IT-system och informationsöverföring."}
- {id: follow_up, label: Uppföljning, label_en: Follow-up,
   description: Uppföljning av effekter och resultat.}
"""


def write(tmp_path: Path, text: str, name: str = "codebook.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def codebook(tmp_path) -> Codebook:
    return load_codebook(write(tmp_path, CODEBOOK))


def test_load(codebook, tmp_path):
    assert codebook.name == "Samverkan region–primärvård–kommun"
    assert codebook.ids == ["coordination_roles", "digital_tools", "follow_up"]
    assert codebook.path == tmp_path / "codebook.yaml"
    theme = codebook.get("coordination_roles")
    assert theme == Theme(
        id="coordination_roles",
        label="Koordineringsroller",
        label_en="Coordination roles",
        description="Roller och funktioner som samordnar arbetet mellan region, primärvård och "
        "kommun.",
        examples=(
            "Neutral koordinator som komplement till tjänstemannaberedningen",
            "Lokala koordinatörer i varje samarbetsområde",
        ),
    )
    assert codebook.get("follow_up").examples == ()
    assert "valid ids: coordination_roles" in error_of(codebook.get, "nope")


def test_theme_texts(codebook):
    assert theme_texts(codebook.get("coordination_roles")) == [
        "Koordineringsroller: Roller och funktioner som samordnar arbetet mellan region, "
        "primärvård och kommun.",
        "Neutral koordinator som komplement till tjänstemannaberedningen",
        "Lokala koordinatörer i varje samarbetsområde",
    ]
    assert theme_texts(codebook.get("follow_up")) == [
        "Uppföljning: Uppföljning av effekter och resultat."
    ]


@pytest.mark.parametrize(
    "value",
    ["digital_tools", " DIGITAL_TOOLS ", "Digitala verktyg", "digitala   VERKTYG", "Digital tools"],
)
def test_resolve_id_or_label(codebook, value):
    assert codebook.resolve(value) == "digital_tools"


def test_resolve_unknown(codebook):
    message = error_of(codebook.resolve, "Ekonomi")
    assert "'Ekonomi'" in message and "coordination_roles, digital_tools, follow_up" in message


def test_parse_themes(codebook):
    cell = " Uppföljning; digital_tools;;follow_up ; Digital tools "
    assert codebook.parse_themes(cell) == ["follow_up", "digital_tools"]
    assert codebook.parse_themes("") == []


def test_check_themes_reports_all_unknown_at_once(codebook):
    values = ["follow_up", "Ekonomi; digital_tools", "ekonomi", "", "Styrning"]
    message = error_of(
        codebook.check_themes, values, what="labels.csv column 'theme'", rows=[2, 3, 4, 5, 6]
    )
    assert message.startswith("labels.csv column 'theme': unknown theme(s)")
    assert "'Ekonomi' (rows 3, 4)" in message and "'Styrning' (row 6)" in message
    assert "valid ids: coordination_roles, digital_tools, follow_up" in message


def test_check_themes_returns_parsed(codebook):
    assert codebook.check_themes(["follow_up", "Digitala verktyg;Uppföljning", ""], what="x") == [
        ["follow_up"],
        ["digital_tools", "follow_up"],
        [],
    ]


def test_sha256_is_content_not_bytes(tmp_path, codebook):
    other = load_codebook(write(tmp_path, REFORMATTED, "other.yaml"))
    assert other.name == "Ett annat namn"
    assert other.sha256 == codebook.sha256
    changed = load_codebook(write(tmp_path, CODEBOOK.replace("resultat.", "resultat!"), "c.yaml"))
    assert changed.sha256 != codebook.sha256
    assert len(codebook.sha256) == 64


def test_parse_codebook_from_mapping():
    data = {
        "themes": [
            {"id": "a", "label": "A", "description": "Tema A."},
            {"id": "b", "label": "B", "description": "Tema B.", "examples": ["x"]},
        ]
    }
    codebook = parse_codebook(data, source="inline")
    assert codebook.ids == ["a", "b"] and codebook.path is None and codebook.name == "inline"
    assert codebook.get("a").label_en == ""


THEME_B = "  - {id: b, label: B, description: Tema B.}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("themes:\n  - id: a\n    label: [oj\n", "not valid YAML at line"),
        ("name: x\n", "has no themes"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("themes: hej\n", "'themes' must be a list"),
        ("themes:\n  - {id: a, label: A, description: Tema A.}\n", "only 1 theme"),
        ("themes:\n  - {label: A, description: Tema A.}\n" + THEME_B, "theme 1 has no 'id'"),
        ("themes:\n  - {id: a, description: Tema A.}\n" + THEME_B, "has no 'label'"),
        ("themes:\n  - {id: a, label: A}\n" + THEME_B, "has no 'description'"),
        ("themes:\n  - {id: a, label: A, description: '  '}\n" + THEME_B, "no 'description'"),
        ("themes:\n  - {id: Bad-Id, label: A, description: T.}\n" + THEME_B, "is invalid"),
        ("themes:\n  - {id: 1abc, label: A, description: T.}\n" + THEME_B, "is invalid"),
        ("themes:\n  - {id: b, label: A, description: T.}\n" + THEME_B, "'b' is used twice"),
        ("themes:\n  - {id: a, label: B, description: T.}\n" + THEME_B, "names both theme"),
        ("themes:\n  - {id: a, label: A, desc: T.}\n" + THEME_B, "unknown key(s) 'desc'"),
        (
            "themes:\n  - {id: a, label: A, description: T., examples: x}\n" + THEME_B,
            "'examples' must be a list",
        ),
        ("themes:\n  - just text\n" + THEME_B, "theme 1 is not a mapping"),
    ],
)
def test_invalid_codebooks(tmp_path, text, expected):
    message = error_of(load_codebook, write(tmp_path, text))
    assert expected in message
    assert "codebook.yaml" in message


def test_missing_and_empty_codebook(tmp_path):
    assert "not found" in error_of(load_codebook, tmp_path / "nope.yaml")
    assert "is empty" in error_of(load_codebook, write(tmp_path, ""))


def test_find_codebook_looks_in_the_usual_places(tmp_path, monkeypatch):
    from qualcode.codebook import find_codebook

    monkeypatch.delenv("QUALCODE_CODEBOOK", raising=False)
    monkeypatch.chdir(tmp_path)
    assert "pass --codebook" in error_of(find_codebook)
    (tmp_path / "corpora").mkdir()
    source = Path(__file__).resolve().parent.parent / "corpora" / "codebook.yaml"
    (tmp_path / "corpora" / "codebook.yaml").write_bytes(source.read_bytes())
    assert "steering" in find_codebook().ids
    monkeypatch.setenv("QUALCODE_CODEBOOK", str(tmp_path / "missing.yaml"))
    assert "missing.yaml" in error_of(find_codebook)
