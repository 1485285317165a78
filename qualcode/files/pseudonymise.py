"""Replace personal data in text with stable placeholders before a report or export leaves
the analyst's machine.

Found and replaced, in this order (an earlier kind wins where matches overlap):

``PERSONNUMMER``
    Swedish personal identity and co-ordination numbers, and every number shaped like one,
    whether or not its check digit is right (a mistyped personnummer is still one):
    ``YYMMDD-NNNN``, ``YYMMDD+NNNN``, ``YYYYMMDD-NNNN``, ``YYYYMMDDNNNN``. Only a bare
    ten-digit number (``YYMMDDNNNN``, shaped like a phone number too) must also be a possible
    date (co-ordination numbers add 60 to the day) and pass the Luhn check.
``E-POST``
    e-mail addresses.
``TELEFON``
    Swedish phone numbers: ``08-123 456 78``, ``070-123 45 67``, ``+46 70 123 45 67``,
    ``0046 …``: a leading 0 (or +46) and 8–10 digits in all.
``NAMN``
    the person names the analyst lists (one per line in a names file; ``#`` starts a comment),
    case-insensitive, whatever the whitespace between the parts, also in the genitive
    (``Dag Noréns`` → ``[NAMN 1]s``). List a surname on its own line to catch it alone too.

Placeholders are numbered per kind in order of first appearance (``[NAMN 1]``, ``[NAMN 2]``
…); one :class:`Pseudonymiser` gives the same value the same placeholder everywhere it is used,
so a report and an export made from it agree.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qualcode.errors import QualcodeError
from qualcode.files.tables import read_text

__all__ = ["KINDS", "Match", "Pseudonymiser", "luhn_valid", "read_names"]

KINDS = ("personnummer", "email", "phone", "name")
PLACEHOLDERS = {
    "personnummer": "PERSONNUMMER",
    "email": "E-POST",
    "phone": "TELEFON",
    "name": "NAMN",
}
_NOUNS_SV = {
    "personnummer": ("personnummer", "personnummer"),
    "email": ("e-postadress", "e-postadresser"),
    "phone": ("telefonnummer", "telefonnummer"),
    "name": ("namn", "namn"),
}
_NOUNS = {
    "personnummer": ("personal identity number", "personal identity numbers"),
    "email": ("e-mail address", "e-mail addresses"),
    "phone": ("phone number", "phone numbers"),
    "name": ("name", "names"),
}

_PERSONNUMMER = re.compile(
    r"(?<![\w+-])(?P<century>\d{2})?(?P<date>\d{6})(?P<sep>[-+]?)(?P<tail>\d{4})(?![\w-])"
)
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])", re.UNICODE)
_PHONE = re.compile(
    r"(?<![\w+])"
    r"(?:(?:\+|00)46[ -]?(?:\(0\)[ -]?)?|0)"
    r"[1-9](?:[ -]?\d){5,8}"
    r"(?![\w]|[ -]\d)"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn check of a Swedish personal identity number's 10 digits."""
    total = 0
    for i, ch in enumerate(digits):
        value = int(ch) * (2 if i % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _personnummer(match: re.Match[str]) -> str | None:
    """The 10-digit key of a number shaped like a personnummer/samordningsnummer, else None."""
    century, date, tail = match.group("century"), match.group("date"), match.group("tail")
    digits = date + tail
    if century is not None or match.group("sep"):
        return digits  # the shape is enough: a wrong check digit is a typo, not a licence
    if len(match.group(0)) != 10:
        return None
    month, day = int(date[2:4]), int(date[4:6])
    if not 1 <= month <= 12 or not (1 <= day <= 31 or 61 <= day <= 91):
        return None
    return digits if luhn_valid(digits) else None


def _phone_key(text: str) -> str:
    digits = re.sub(r"\D", "", text.replace("(0)", ""))
    for prefix in ("0046", "46"):
        if text.lstrip().startswith(("+", "00")) and digits.startswith(prefix):
            return "0" + digits[len(prefix) :]
    return digits


def read_names(path: str | os.PathLike[str]) -> list[str]:
    """Person names from a names file: one per line, blank lines and ``#`` comments skipped."""
    text = read_text(path, what="names file")
    names = []
    for line in text.splitlines():
        name = " ".join(line.split("#", 1)[0].split())
        if name:
            names.append(name)
    if not names:
        raise QualcodeError(
            f"names file {Path(path).name!r} lists no names; write one name per line."
        )
    return names


@dataclass(frozen=True)
class Match:
    """One piece of personal data at ``text[start:end]`` and what replaces it."""

    start: int
    end: int
    kind: str
    placeholder: str


class Pseudonymiser:
    """Finds personal data and replaces it with numbered placeholders (see the module text).

    ``names`` are the person names to replace. :attr:`counts` holds, per kind, how many
    occurrences were replaced and :meth:`summary` says it in one line.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names = list(dict.fromkeys(" ".join(n.split()) for n in names if n.strip()))
        patterns = sorted(self.names, key=len, reverse=True)
        self._name_key = {n.casefold(): n for n in self.names}
        self._names_re = (
            re.compile(
                r"(?<!\w)(?:"
                + "|".join(r"\s+".join(map(re.escape, n.split())) for n in patterns)
                + r")(?=s?(?!\w))",
                re.IGNORECASE,
            )
            if patterns
            else None
        )
        self._placeholders: dict[tuple[str, str], str] = {}
        self._numbers: Counter[str] = Counter()

    @classmethod
    def from_names_file(cls, path: str | os.PathLike[str] | None) -> Pseudonymiser:
        """A pseudonymiser for the names in ``path`` (none if ``path`` is None)."""
        return cls(read_names(path) if path is not None else ())

    @property
    def counts(self) -> Counter[str]:
        """How many different personal data of each kind were replaced: a value found in a
        segment and again in its source document (a .qdpx holds both) counts once."""
        return Counter(self._numbers)

    def _placeholder(self, kind: str, key: str) -> str:
        if (kind, key) not in self._placeholders:
            self._numbers[kind] += 1
            self._placeholders[(kind, key)] = f"[{PLACEHOLDERS[kind]} {self._numbers[kind]}]"
        return self._placeholders[(kind, key)]

    def find(self, text: str) -> list[Match]:
        """The non-overlapping matches in ``text``, in order (placeholders are assigned)."""
        found: list[tuple[int, int, str, str]] = []
        taken: list[tuple[int, int]] = []

        def free(start: int, end: int) -> bool:
            return all(end <= a or start >= b for a, b in taken)

        def add(start: int, end: int, kind: str, key: str) -> None:
            if free(start, end):
                found.append((start, end, kind, key))
                taken.append((start, end))

        for m in _PERSONNUMMER.finditer(text):
            key = _personnummer(m)
            if key is not None:
                add(m.start(), m.end(), "personnummer", key)
        for m in _EMAIL.finditer(text):
            add(m.start(), m.end(), "email", m.group(0).casefold())
        for m in _PHONE.finditer(text):
            add(m.start(), m.end(), "phone", _phone_key(m.group(0)))
        if self._names_re is not None:
            for m in self._names_re.finditer(text):
                key = " ".join(m.group(0).split()).casefold()
                add(m.start(), m.end(), "name", self._name_key.get(key, key))
        found.sort()
        return [Match(s, e, kind, self._placeholder(kind, key)) for s, e, kind, key in found]

    def replace(self, text: str) -> str:
        """``text`` with every match replaced by its placeholder (counted in :attr:`counts`)."""
        return self.replace_with_offsets(text)[0]

    def replace_with_offsets(self, text: str) -> tuple[str, OffsetMap]:
        """The replaced text and an :class:`OffsetMap` from old to new character positions."""
        matches = self.find(text)
        parts, position = [], 0
        for m in matches:
            parts += [text[position : m.start], m.placeholder]
            position = m.end
        parts.append(text[position:])
        return "".join(parts), OffsetMap(matches)

    def summary(self, counts: Counter[str] | None = None) -> str:
        """E.g. ``pseudonymised: 0 personal identity numbers, 2 e-mail addresses, 1 phone
        number, 3 names replaced`` (``counts``: these instead of :attr:`counts`)."""
        counts = self.counts if counts is None else counts
        parts = []
        for kind in KINDS:
            n = counts[kind]
            singular, plural = _NOUNS[kind]
            parts.append(f"{n} {singular if n == 1 else plural}")
        return "pseudonymised: " + ", ".join(parts) + " replaced"

    def summary_sv(self) -> str:
        """The same in Swedish, for the report page: ``Ersatt med platshållare: 1 personnummer,
        0 e-postadresser, …``."""
        parts = []
        for kind in KINDS:
            n = self.counts[kind]
            singular, plural = _NOUNS_SV[kind]
            parts.append(f"{n} {singular if n == 1 else plural}")
        return "Ersatt med platshållare: " + ", ".join(parts)


class OffsetMap:
    """Maps character positions in a text to positions in its pseudonymised form.

    A start position inside a replaced span moves to the start of its placeholder and an end
    position to the placeholder's end, so a selection keeps covering what it covered.
    """

    def __init__(self, matches: Sequence[Match]) -> None:
        self._spans = []
        shift = 0
        for m in matches:
            new_start = m.start + shift
            shift += len(m.placeholder) - (m.end - m.start)
            self._spans.append((m.start, m.end, new_start, m.end + shift))

    def start(self, position: int) -> int:
        shift = 0
        for old_start, old_end, new_start, new_end in self._spans:
            if position < old_end:
                return new_start if position > old_start else position + shift
            shift = new_end - old_end
        return position + shift

    def end(self, position: int) -> int:
        shift = 0
        for old_start, old_end, _, new_end in self._spans:
            if position <= old_start:
                break
            if position < old_end:
                return new_end
            shift = new_end - old_end
        return position + shift
