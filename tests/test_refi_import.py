"""REFI-QDA round trip: a project built by hand the way NVivo, ATLAS.ti and QualCoder write them
(two users, nested codes, a source with a BOM and \\r\\n line ends, one with its text inline,
overlapping selections, an uncoded document, a PDF source and a note) is imported, trained on,
its uncoded text classified, and the codings written back into the project; the result
validates against the official schema and keeps every original coding as it was."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from qualcode.files.tables import read_table

from .conftest import run_cli

NS = "urn:QDA-XML:project:1.0"
# The official REFI-QDA project schema (MIT licence, notice inside), kept with the tests so
# the check runs wherever the suite does.
XSD = Path(__file__).parent / "data" / "refi-qda" / "Project-mrt2019.xsd"
ANNA, BO = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
CODES = {  # guid: (name, parent)
    "c0000000-0000-4000-8000-000000000001": ("Samverkan", None),
    "c0000000-0000-4000-8000-000000000002": ("Koordinering", "Samverkan"),
    "c0000000-0000-4000-8000-000000000003": ("Utbildning", "Samverkan"),
    "c0000000-0000-4000-8000-000000000004": ("Styrning", None),
    "c0000000-0000-4000-8000-000000000005": ("Digitalt", None),
}
GUID = {name: guid for guid, (name, _) in CODES.items()}
GROUP_1 = [  # (line, code, coder) — coded by hand
    ("Vi behöver en samordnare i varje kommun.", "Koordinering", ANNA),
    ("Kommunens kontaktperson ska hålla ihop arbetet.", "Koordinering", BO),
    ("Gemensamma utbildningar för sjuksköterskor.", "Utbildning", ANNA),
    ("Auskultation och erfarenhetsutbyte mellan verksamheter.", "Utbildning", ANNA),
    ("Ledningen måste prioritera samverkan.", "Styrning", BO),
    ("Tydligare mandat i överenskommelserna.", "Styrning", ANNA),
    ("Videomöten varje vecka mellan vårdcentral och kommun.", "Digitalt", BO),
    ("Gemensam journal med läsbehörighet.", "Digitalt", ANNA),
    ("En koordinator som anhöriga kan ringa.", None, None),
]
GROUP_2 = [
    ("Utbildning i palliativ vård för alla yrkesgrupper.", "Utbildning", BO),
    ("Politiken ska styra mot gemensamma mål.", "Styrning", ANNA),
    ("Digital plattform för säkra meddelanden.", "Digitalt", ANNA),
    ("Samordnande sjuksköterska i varje område.", "Koordinering", BO),
    ("Fler träffar där vi delar goda exempel.", None, None),
]
GROUP_3 = [
    "Anställ en samverkanskoordinator på halvtid.",
    "Gemensam introduktion för nyanställda i kommun och region.",
    "Ledningsgruppen behöver beslutsmandat.",
    "Tekniken krånglar, vi behöver fungerande videoutrustning.",
]


NOTED = {"Gemensamma utbildningar för sjuksköterskor.": "Anna: eller erfarenhetsutbyte?"}


def _selections(text: str, lines, *, overlap: bool = False) -> str:
    out = []
    for n, (line, code, coder) in enumerate(lines):
        if code is None:
            continue
        start = text.index(line)
        end = start + len(line)
        out.append(
            f'<PlainTextSelection guid="5e1ec700-0000-4000-8000-{n:012d}" name="{line}" '
            f'startPosition="{start}" endPosition="{end}" creatingUser="{coder}">'
            + (f"<Description>{NOTED[line]}</Description>" if line in NOTED else "")
            + f'<Coding guid="c0d10000-0000-4000-8000-{n:012d}" creatingUser="{coder}" '
            f'creationDateTime="2026-11-0{n % 9 + 1}T10:00:00Z">'
            f'<CodeRef targetGUID="{GUID[code]}"/></Coding></PlainTextSelection>'
        )
    if overlap:  # Bo also codes a longer stretch overlapping Anna's first selection
        line = lines[0][0] + "\r\n" + lines[1][0]
        start = text.index(line)
        out.append(
            f'<PlainTextSelection guid="5e1ec700-0000-4000-8000-999999999999" name="" '
            f'startPosition="{start}" endPosition="{start + len(line)}" creatingUser="{BO}">'
            f'<Coding guid="c0d10000-0000-4000-8000-999999999999" creatingUser="{BO}">'
            f'<CodeRef targetGUID="{GUID["Samverkan"]}"/></Coding></PlainTextSelection>'
        )
    return "".join(out)


def _code_xml(parent: str | None) -> str:
    out = []
    for guid, (name, above) in CODES.items():
        if above == parent:
            out.append(
                f'<Code guid="{guid}" name="{name}" isCodable="true" color="#336699">'
                f"<Description>Kod för {name.lower()}</Description>{_code_xml(name)}</Code>"
            )
    return "".join(out)


def build_project(path: Path) -> dict[str, str]:
    """Write the hand-made project; returns each coded selection's text by guid."""
    text_1 = "Grupp 1\r\n" + "\r\n".join(line for line, _, _ in GROUP_1) + "\r\n"
    text_2 = "Grupp 2\n" + "\n".join(line for line, _, _ in GROUP_2) + "\n"
    text_3 = "Grupp 3\n\n" + "\n\n".join(f"- {line}" for line in GROUP_3) + "\n"
    source_1 = "a0000000-0000-4000-8000-000000000001"
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<Project xmlns="{NS}" name="Samverkan Skåne" origin="NVivo 14">
<Users><User guid="{ANNA}" name="Anna"/><User guid="{BO}" name="Bo"/></Users>
<CodeBook><Codes>{_code_xml(None)}</Codes></CodeBook>
<Sources>
<TextSource guid="{source_1}" name="Anteckningar grupp 1.docx" plainTextPath="internal://{source_1}.txt">{_selections(text_1, GROUP_1, overlap=True)}</TextSource>
<TextSource guid="a0000000-0000-4000-8000-000000000002" name="Anteckningar grupp 2"><PlainTextContent>{text_2}</PlainTextContent>{_selections(text_2, GROUP_2)}</TextSource>
<TextSource guid="a0000000-0000-4000-8000-000000000003" name="Grupp 3" plainTextPath="internal://a0000000-0000-4000-8000-000000000003.txt"/>
<PDFSource guid="a0000000-0000-4000-8000-000000000004" name="Rapport.pdf" path="internal://r.pdf"/>
</Sources>
<Notes><Note guid="b0000000-0000-4000-8000-000000000001" name="Minnesanteckning"/></Notes>
</Project>
"""  # noqa: E501
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("project.qde", xml)
        archive.writestr(f"sources/{source_1}.txt", "\ufeff" + text_1)  # with a BOM
        archive.writestr("sources/a0000000-0000-4000-8000-000000000003.txt", text_3)
        archive.writestr("sources/r.pdf", b"%PDF-1.4 not really")
    return {}


def validate(path: Path) -> str:
    lxml = pytest.importorskip("lxml.etree")
    xml = zipfile.ZipFile(path).read("project.qde")
    schema = lxml.XMLSchema(lxml.parse(str(XSD)))
    assert schema.validate(lxml.fromstring(xml)), schema.error_log
    return xml.decode("utf-8")


def test_import_reads_codes_sources_and_codings(tmp_path, capsys):
    build_project(tmp_path / "nvivo.qdpx")
    code, said = run_cli(capsys, "import", "qdpx", tmp_path / "nvivo.qdpx", "-o", tmp_path / "proj")
    assert code == 0, said
    assert "PDF" in said and "notes not read" in said
    book = (tmp_path / "proj" / "codebook.yaml").read_text(encoding="utf-8")
    assert "Samverkan › Koordinering" in book and "samverkan_koordinering" in book
    labels = read_table(tmp_path / "proj" / "labels.csv")
    assert set(labels["coder"]) == {"Anna", "Bo"}
    one = labels[labels["document"] == "Anteckningar grupp 1.txt"]
    # every selection's text is exactly the coded line, though the source has a BOM and \r\n
    coded = {line: code for line, code, _ in GROUP_1 if code}
    for text, theme in zip(one["text"], one["theme"]):
        if text in coded:
            assert theme.split(";")[0].endswith(coded[text].lower().replace("ö", "o"))
    assert len(one) == 9  # 8 lines and Bo's overlapping stretch
    assert dict(zip(one["text"], one["note"]))[next(iter(NOTED))] == next(iter(NOTED.values()))
    # the coder's note goes back into a project as the selection's description
    sources = sorted((tmp_path / "proj" / "documents").iterdir())
    options = [x for path in sources for x in ("--sources", path)]
    back = tmp_path / "back.qdpx"
    code, said = run_cli(capsys, "export", "qdpx", tmp_path / "proj" / "labels.csv", *options,
                         "-o", back)  # fmt: skip
    assert code == 0, said
    assert f"<Description>{next(iter(NOTED.values()))}</Description>" in validate(back)
    documents = sorted(p.name for p in (tmp_path / "proj" / "documents").iterdir())
    assert documents == ["Anteckningar grupp 1.txt", "Anteckningar grupp 2.txt", "Grupp 3.txt"]
    segments = read_table(tmp_path / "proj" / "segments.csv")
    assert set(GROUP_3) <= set(segments["text"])
    assert "En koordinator som anhöriga kan ringa." in set(segments["text"])
    assert not set(coded) & set(segments["text"])  # coded text is not asked again


@pytest.mark.slow
def test_import_train_classify_and_write_back(tmp_path, capsys):
    original = tmp_path / "nvivo.qdpx"
    build_project(original)
    proj = tmp_path / "proj"
    assert run_cli(capsys, "import", "qdpx", original, "-o", proj)[0] == 0
    code, said = run_cli(capsys, "train", proj / "labels.csv", "-o", proj / "model", "-q")
    assert code == 0, said
    code, said = run_cli(
        capsys, "classify", proj / "model", proj / "segments.csv", "-o", proj / "p.csv", "-q"
    )
    assert code == 0, said
    out = tmp_path / "tillbaka.qdpx"
    code, said = run_cli(capsys, "export", "qdpx", proj / "p.csv", "--into", original, "-o", out)
    assert code == 0 and "into a copy of nvivo.qdpx" in said, said
    xml = validate(out)
    before = zipfile.ZipFile(original).read("project.qde").decode("utf-8")
    # every original element is still there as it was
    for element in re.findall(r"<(?:Coding|PlainTextSelection|Code|User|Note)\b[^>]*>", before):
        guid = re.search(r'guid="([^"]+)"', element).group(1)
        assert guid in xml, element
    assert xml.count("<Coding ") > before.count("<Coding ")
    assert 'name="qualcode"' in xml and "PDFSource" in xml and "Minnesanteckning" in xml
    assert "<Description>qualcode: säkerhet (confidence) 0." in xml  # each new coding says so
    # the sources are untouched and every new selection sits at its segment's words
    with zipfile.ZipFile(original) as a, zipfile.ZipFile(out) as b:
        for name in a.namelist():
            if not name.endswith(".qde"):
                assert a.read(name) == b.read(name), name
    predictions = read_table(proj / "p.csv")
    again = tmp_path / "again"
    assert run_cli(capsys, "import", "qdpx", out, "-o", again)[0] == 0
    labels = read_table(again / "labels.csv")
    by_qualcode = labels[labels["coder"] == "qualcode"]
    assert set(by_qualcode["text"]) == set(predictions["text"])
    first = read_table(proj / "labels.csv")
    kept = labels[labels["coder"] != "qualcode"]
    assert sorted(map(tuple, kept[["text", "theme", "coder", "start", "end"]].values)) == sorted(
        map(tuple, first[["text", "theme", "coder", "start", "end"]].values)
    )


def _tiny_project(path: Path, sources: str, codes: str) -> None:
    xml = (
        f'<?xml version="1.0" encoding="utf-8"?><Project xmlns="{NS}" name="P">'
        f'<Users><User guid="{ANNA}" name="Anna"/></Users>'
        f"<CodeBook><Codes>{codes}</Codes></CodeBook><Sources>{sources}</Sources></Project>"
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("project.qde", xml)


def _selection(text: str, line: str, code: str, n: int, nth: int = 0) -> str:
    start = -1
    for _ in range(nth + 1):
        start = text.index(line, start + 1)
    return (
        f'<PlainTextSelection guid="5e1ec700-0000-4000-8000-{n:012d}" '
        f'startPosition="{start}" endPosition="{start + len(line)}" creatingUser="{ANNA}">'
        f'<Coding guid="c0d10000-0000-4000-8000-{n:012d}" creatingUser="{ANNA}">'
        f'<CodeRef targetGUID="{code}"/></Coding></PlainTextSelection>'
    )


def test_hostile_and_odd_projects(tmp_path, capsys):
    """Sources without or with the same guid, codes of the same name in two places, a repeated
    text coded in one place only: imported whole, one clear line where it cannot be."""
    a, b = "c0000000-0000-4000-8000-00000000000a", "c0000000-0000-4000-8000-00000000000b"
    codes = (
        f'<Code guid="{a}" name="Alfa" isCodable="true"><Code guid="{b}x" name="Beta" '
        f'isCodable="true"/></Code><Code guid="{b}" name="alfa" isCodable="true"/>'
    )
    text = "Bättre kommunikation.\nEn samordnare.\nBättre kommunikation.\nBättre kommunikation.\n"
    sources = (
        f'<TextSource name="a.txt"><PlainTextContent>{text}</PlainTextContent>'
        f"{_selection(text, 'Bättre kommunikation.', a, 1, nth=1)}</TextSource>"
        f'<TextSource guid="g" name="b.txt"><PlainTextContent>Hej hopp.</PlainTextContent>'
        f"</TextSource>"
        f'<TextSource guid="g" name="c.txt"><PlainTextContent>Hej igen.</PlainTextContent>'
        f"</TextSource>"
    )
    _tiny_project(tmp_path / "p.qdpx", sources, codes)
    code, said = run_cli(capsys, "import", "qdpx", tmp_path / "p.qdpx", "-o", tmp_path / "out")
    assert code == 0, said
    labels = read_table(tmp_path / "out" / "labels.csv")
    assert labels["start"].tolist() == [str(text.index("Bättre kommunikation.", 1))]
    segments = read_table(tmp_path / "out" / "segments.csv")
    texts = segments["text"].tolist()
    assert texts.count("Bättre kommunikation.") == 2 and "Hej igen." in texts
    assert segments["segment_id"].is_unique
    book = (tmp_path / "out" / "codebook.yaml").read_text(encoding="utf-8")
    assert "label: Alfa\n" in book and "label: alfa (2)" in book

    broken = tmp_path / "broken.qdpx"
    broken.write_bytes(b"PK\x03\x04 not a zip")
    code, said = run_cli(capsys, "import", "qdpx", broken, "-o", tmp_path / "never")
    assert code == 2 and said.count("qualcode: error:") == 1 and "Traceback" not in said
    assert not (tmp_path / "never").exists()


def test_writing_labels_into_a_project_is_refused(tmp_path, capsys):
    build_project(tmp_path / "nvivo.qdpx")
    code, said = run_cli(capsys, "import", "qdpx", tmp_path / "nvivo.qdpx", "-o", tmp_path / "p")
    assert code == 0, said
    code, said = run_cli(capsys, "export", "qdpx", tmp_path / "p" / "labels.csv", "--into",
                     tmp_path / "nvivo.qdpx", "-o", tmp_path / "x.qdpx")  # fmt: skip
    assert code == 2 and "predictions file" in said, said


def test_a_project_with_large_media_is_read(tmp_path, capsys):
    """A video that compresses well is copied, not unpacked: the project still imports, and its
    text is bounded where it is read."""
    build_project(tmp_path / "p.qdpx")
    with zipfile.ZipFile(tmp_path / "p.qdpx", "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("sources/film.mp4", b"\0" * (12 * 2**20))  # 12 MB, a zip-bomb ratio
    code, said = run_cli(capsys, "import", "qdpx", tmp_path / "p.qdpx", "-o", tmp_path / "out")
    assert code == 0, said
