"""Swedish keywords for groups of segments: a light stemmer (the Snowball algorithm for
Swedish), a stop-word list, compound splitting against the material's own vocabulary, and
class-based tf-idf (BERTopic's c-TF-IDF) over the stems.

A stem is shown as the word form it most often has in the group (``samverkan``, not
``samverk``). A long compound such as ``hemsjukvårdsteam`` counts as itself and, when both
parts occur as words of their own in the material (``hemsjukvård``, ``team``), as its parts too.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

__all__ = ["STOP_WORDS", "Vocabulary", "class_keywords", "stem", "words"]

# Function words and the commonest verbs and adverbs of Swedish, which say nothing of a theme.
STOP_WORDS = frozenset(
    """
    alla allt alltid andra annan annat att av bara bli blev blir blivit bland bort båda båda
    både da dag dagar de dem den denna dens deras dess dessa det detta dig din dina ditt du då
    där därför efter eftersom ej eller emot en ett fast fler flera flest fram från få får fått
    för före förra först genom gjorde gjort gå går gör göra ha hade haft han hans har hela
    helt henne hennes hit hon honom hos hur här i icke idag igen in inga ingen inget inom inte
    is ja jag just kan kanske kom komma kommer kunde kunna kunnat kvar man med mellan men mer
    mera mest mig min mina mitt mot mycket många måste ned ner nu när någon något några nej
    ni nog nu ny nya nytt nästan och också ofta om oss pga på sa sade sagt samma samt sedan sig
    sin sina sist sitt själv ska skall skulle som så sådan sådana sådant säger sätt till tills
    tog tre två under upp ut utan vad var vara varför varit varje vars vart vem vi vid vilka
    vilken vilket vill vår våra vårt än ändå är även åt över alltså annars antal bl.a dock
    egen egentligen enligt ens finns fanns fick ge ger gett gjordes håller hålla inför kring
    kommit lite mindre ned nog olika redan rätt sina snart senare ska stor stora står ta tar
    tas tid tillsammans trots ungefär ut vilket visar väl år ännu åt exempel t.ex. osv etc
    bra behövs behöver fler se ser sett tidigare första innan kallas kallade
    the and of to in a is for on with
    """.split()
)

_VOWELS = set("aeiouyäåö")
_S_ENDING = set("bcdfghjklmnoprtvy")
_STEP1 = sorted(
    (
        "a arna erna heterna orna ad e ade ande arne are aste en anden aren heten ern ar er "
        "heter or as arnas ernas ornas es ades andes ens arens hetens erns at andet het ast"
    ).split(),
    key=len,
    reverse=True,
)
_STEP2 = ("dd", "gd", "nn", "dt", "gt", "kt", "tt")
_WORD = re.compile(r"[a-zåäöéü]+(?:-[a-zåäöéü]+)*", re.IGNORECASE)
# A compound's parts: each at least this long, and the whole word at least this long.
MIN_PART, MIN_COMPOUND = 4, 9
LINKS = ("s", "")  # the linking -s- of "vårdsteam"; none in "hemsjukvårdteam"


def _r1(word: str) -> int:
    """Start of the Snowball region R1 (after the first non-vowel after a vowel, at least 3)."""
    for i in range(1, len(word)):
        if word[i] not in _VOWELS and word[i - 1] in _VOWELS:
            return max(3, i + 1)
    return len(word)


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """The Snowball stem of a Swedish word (lower-cased): ``samverkan`` → ``samverk``,
    ``utbildningar`` → ``utbildning``."""
    word = word.lower()
    r1 = _r1(word)
    region = word[r1:]
    for suffix in _STEP1:
        if region.endswith(suffix):
            word = word[: -len(suffix)]
            break
    else:
        if region.endswith("s") and len(word) > 1 and word[-2] in _S_ENDING:
            word = word[:-1]
    region = word[r1:]
    if any(region.endswith(s) for s in _STEP2):
        word = word[:-1]
    region = word[r1:]
    if region.endswith("fullt"):
        word = word[:-1]
    elif region.endswith("löst"):
        word = word[:-1]
    else:
        for suffix in ("lig", "els", "ig"):
            if region.endswith(suffix):
                word = word[: -len(suffix)]
                break
    return word


@lru_cache(maxsize=200_000)
def _base(word: str) -> str:
    """The stem, with the definite ``-et`` the Snowball stemmer keeps also removed
    (``teamet`` → ``team``): for matching the parts of compounds."""
    word = stem(word)
    return word[:-2] if word.endswith("et") and len(word) > 5 else word


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (hyphenated words kept whole), stop words left out."""
    found = (w.lower() for w in _WORD.findall(str(text)))
    return [w for w in found if len(w) > 1 and w not in STOP_WORDS]


class Vocabulary:
    """The words of a body of text, for splitting its compounds: a long word is split where
    both parts (the first maybe with a linking ``s``) are words of the material themselves, in
    some form (``teamet`` counts as ``team``)."""

    def __init__(self, texts: Iterable[str]):
        self.counts: Counter[str] = Counter(w for text in texts for w in words(text))
        self.known = {_base(w) for w in self.counts if len(w) >= MIN_PART}
        self._parts: dict[str, tuple[str, ...]] = {}

    def parts(self, word: str) -> tuple[str, ...]:
        """The two known words ``word`` is made of (longest tail first), or ``()``:
        ``hemsjukvårdsteam`` → ``("hemsjukvård", "team")`` when both occur alone."""
        if word in self._parts:
            return self._parts[word]
        found: tuple[str, ...] = ()
        if len(word) >= MIN_COMPOUND and "-" not in word:
            for cut in range(MIN_PART, len(word) - MIN_PART + 1):
                head, tail = word[:cut], word[cut:]
                if not self._is_part(tail):
                    continue
                for link in LINKS:
                    bare = head[: len(head) - len(link)]
                    if head.endswith(link) and self._is_part(bare):
                        found = (bare, tail)
                        break
                if found:
                    break
        self._parts[word] = found
        return found

    def _is_part(self, word: str) -> bool:
        """A word of the material, with a stem of at least MIN_PART letters (so that
        ``resenärer`` is not ``rese`` + ``närer``)."""
        base = _base(word)
        return len(base) >= MIN_PART and base in self.known

    def terms(self, text: str) -> list[tuple[str, str]]:
        """(stem, word) pairs of ``text``: every word, and the parts of its compounds."""
        out = []
        for word in words(text):
            out.append((stem(word), word))
            out += [(stem(part), part) for part in self.parts(word)]
        return out


def class_keywords(
    texts: Sequence[str],
    groups: Sequence[object],
    vocabulary: Vocabulary | None = None,
    *,
    top: int = 8,
) -> dict[object, list[str]]:
    """The ``top`` keywords of each group by class-based tf-idf: a stem's frequency in the
    group, weighted by ``log(1 + A / f)`` with ``f`` its frequency over all groups and ``A``
    the average number of terms per group (BERTopic's c-TF-IDF). Stems found in a single
    segment are left out unless a group has no others; ties go to the longer stem. Each keyword
    is the stem's commonest word form in the group."""
    vocabulary = vocabulary or Vocabulary(texts)
    labels = list(dict.fromkeys(groups))
    per_group: dict[object, Counter[str]] = {g: Counter() for g in labels}
    forms: dict[object, Counter[tuple[str, str]]] = {g: Counter() for g in labels}
    spread: Counter[str] = Counter()  # in how many segments a stem occurs
    for text, group in zip(texts, groups):
        terms = vocabulary.terms(text)
        per_group[group].update(s for s, _ in terms)
        forms[group].update(terms)
        spread.update({s for s, _ in terms})
    stems = sorted(spread)
    if not stems:
        return {g: [] for g in labels}
    index = {s: i for i, s in enumerate(stems)}
    tf = np.zeros((len(labels), len(stems)))
    for row, group in enumerate(labels):
        for s, n in per_group[group].items():
            tf[row, index[s]] = n
    frequency = tf.sum(axis=0)
    average = tf.sum() / len(labels)
    weight = tf / np.maximum(tf.sum(axis=1, keepdims=True), 1) * np.log1p(average / frequency)
    rare = np.array([spread[s] < 2 for s in stems])
    lengths = np.array([len(s) for s in stems])
    out: dict[object, list[str]] = {}
    for row, group in enumerate(labels):
        scores = np.where(rare, 0, weight[row]) if (weight[row][~rare] > 0).any() else weight[row]
        # Among equal scores the longer stem first: content words are the longer ones.
        order = np.lexsort((-lengths, -scores))
        best = [j for j in order[:top] if scores[j] > 0]
        out[group] = [_form(forms[group], stems[j]) for j in best]
    return out


def _form(forms: Counter[tuple[str, str]], stem_: str) -> str:
    """The commonest word form of ``stem_`` (the shortest among equals)."""
    candidates = [(n, -len(w), w) for (s, w), n in forms.items() if s == stem_]
    return max(candidates)[2]
