"""Text → index terms for lexical (BM25) search, the same steps for documents and queries.

An :class:`Analyzer` normalises (NFC; lowercase, Turkish-aware for ``tr``), splits into word tokens (runs of
Unicode letters and digits: punctuation, apostrophes and underscores separate) and stems each token. Three
named configurations, chosen per deployment:

| name     | lowercase                         | stemmer                                  |
|----------|-----------------------------------|------------------------------------------|
| `tr`     | Turkish: ``I``→``ı``, ``İ``→``i`` | first 5 characters (or snowball Turkish) |
| `en`     | generic                           | snowball English                         |
| `simple` | generic                           | none                                     |

``tr`` stems by cutting each token to its first N characters (``stemmer="prefix"``, N = 5), or with PyStemmer's
snowball Turkish stemmer (``stemmer="snowball"``): ``bench/bench_lexical.py`` measured both on the shared Turkish
data, and the prefix gave the better BM25 MRR@10 on every set (docs/benchmarks/lexical.md). Turkish is
agglutinative: a 5-character prefix keeps most roots and drops the suffix chains the snowball rules miss.

An index built with one analyzer answers queries analysed by another wrongly and silently, so whoever stores
an index records :meth:`Analyzer.describe` (name, stemmer, prefix length, version) beside it and rebuilds it
through :meth:`Analyzer.from_description`; :meth:`Analyzer.check_same` refuses a change with a clear error.
``ANALYZER_VERSION`` changes whenever the terms of some text change, so an old index is refused, not misread.

Example::

    >>> from training.analyzer import Analyzer
    >>> Analyzer.named("tr").terms("İSTANBUL'daki Işıklar")
    ['istan', 'daki', 'ışıkl']
    >>> Analyzer.named("tr", stemmer="snowball").terms("İSTANBUL'daki Işıklar")
    ['istanbul', 'daki', 'ışık']
    >>> Analyzer.named("simple").terms("Hello, World_2!")
    ['hello', 'world', '2']
    >>> Analyzer.from_description(Analyzer.named("en").describe()) == Analyzer.named("en")
    True
"""

from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass

import Stemmer

ANALYZER_VERSION = 1
ANALYZER_NAMES = ("tr", "en", "simple")
STEMMERS = ("snowball", "prefix", "none")
DEFAULT_ANALYZER = "tr"
DEFAULT_PREFIX_LENGTH = 5
# Letters and digits of any script; "_" is a word character to \w but a separator to FTS5's unicode61
# tokenizer, so it separates here too (every term is then exactly one FTS5 token).
_WORD = re.compile(r"[^\W_]+")
_SNOWBALL_LANGUAGE = {"tr": "turkish", "en": "english"}
# The name's stemmer unless told otherwise: tr's was chosen by bench/bench_lexical.py.
_DEFAULT_STEMMER = {"tr": "prefix", "en": "snowball", "simple": "none"}


class AnalyzerError(ValueError):
    """An unknown or inconsistent analyzer configuration, or a stored index built by another analyzer."""


@dataclass(frozen=True)
class Analyzer:
    """One analyzer configuration; build it with :meth:`named` or :meth:`from_description`."""

    name: str
    stemmer: str
    prefix_length: int | None = None  # with stemmer="prefix" only

    def __post_init__(self) -> None:
        if self.name not in ANALYZER_NAMES:
            raise AnalyzerError(f"unknown analyzer {self.name!r}; choose one of {', '.join(ANALYZER_NAMES)}")
        if self.stemmer not in STEMMERS:
            raise AnalyzerError(f"unknown stemmer {self.stemmer!r}; choose one of {', '.join(STEMMERS)}")
        if self.stemmer == "snowball" and self.name not in _SNOWBALL_LANGUAGE:
            raise AnalyzerError(f"analyzer {self.name!r} has no snowball stemmer")
        if (self.stemmer == "prefix") != (self.prefix_length is not None):
            raise AnalyzerError("prefix_length is set exactly when stemmer is 'prefix'")
        if self.prefix_length is not None and self.prefix_length < 1:
            raise AnalyzerError(f"prefix_length must be at least 1, got {self.prefix_length}")

    @classmethod
    def named(cls, name: str, stemmer: str | None = None, prefix_length: int | None = None) -> Analyzer:
        """The analyzer ``name`` with its default stemmer (or ``stemmer``; ``prefix`` defaults to 5 characters)."""
        if name not in ANALYZER_NAMES:
            raise AnalyzerError(f"unknown analyzer {name!r}; choose one of {', '.join(ANALYZER_NAMES)}")
        stemmer = stemmer or _DEFAULT_STEMMER[name]
        if stemmer == "prefix" and prefix_length is None:
            prefix_length = DEFAULT_PREFIX_LENGTH
        return cls(name, stemmer, prefix_length)

    @classmethod
    def from_description(cls, description: dict) -> Analyzer:
        """The analyzer :meth:`describe` wrote; refuses another version's (its terms may differ)."""
        if not isinstance(description, dict):
            raise AnalyzerError(f"an analyzer description is a JSON object, got {description!r}")
        version = description.get("version")
        if version != ANALYZER_VERSION:
            raise AnalyzerError(f"analyzer version {version!r} is not this release's {ANALYZER_VERSION}: "
                                "the index was built by another release; rebuild it")
        unknown = set(description) - {"name", "stemmer", "prefix_length", "version"}
        if unknown:
            raise AnalyzerError(f"unknown analyzer fields: {', '.join(sorted(unknown))}")
        return cls(description.get("name"), description.get("stemmer"), description.get("prefix_length"))

    def describe(self) -> dict:
        """What to store beside an index: JSON-serialisable, read back by :meth:`from_description`."""
        return {"name": self.name, "stemmer": self.stemmer, "prefix_length": self.prefix_length,
                "version": ANALYZER_VERSION}

    def check_same(self, stored: dict) -> None:
        """Raise :class:`AnalyzerError` unless ``stored`` (an index's recorded description) is this analyzer."""
        if stored != self.describe():
            raise AnalyzerError(f"the index was built with analyzer {stored}, not the configured {self.describe()}: "
                                "configure the same analyzer, or rebuild the index")

    def terms(self, text: str) -> list[str]:
        """The index terms of ``text``, in order, repeats kept (term frequency counts for BM25)."""
        tokens = _WORD.findall(self._lowercase(unicodedata.normalize("NFC", text)))
        if self.stemmer == "snowball":
            return _snowball(_SNOWBALL_LANGUAGE[self.name]).stemWords(tokens)
        if self.stemmer == "prefix":
            return [token[: self.prefix_length] for token in tokens]
        return tokens

    def _lowercase(self, text: str) -> str:
        if self.name == "tr":
            # str.lower() maps I to i and İ to i + a combining dot; Turkish has ı/I and i/İ as two letters.
            return text.replace("I", "ı").replace("İ", "i").lower()
        # Elsewhere İ is an i (its lower() would be "i" + U+0307, which splits the word).
        return text.replace("İ", "I").lower()


_stemmers = threading.local()  # a PyStemmer Stemmer must not be shared between threads


def _snowball(language: str) -> Stemmer.Stemmer:
    cache = _stemmers.__dict__
    if language not in cache:
        cache[language] = Stemmer.Stemmer(language)
    return cache[language]
