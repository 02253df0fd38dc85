"""BM25 product search over the text upstream indexes, built in bounded memory and served memory-mapped.

Upstream runs Pyserini/Lucene (Java) with Anserini's English analyzer: tokenise, drop English possessives,
lower-case, remove Lucene's 33 English stop words, Porter-stem; BM25 with k1 = 0.9, b = 0.4; top 50 hits,
ties broken by document order. We do the same with PyStemmer's Porter stemmer and Lucene's BM25 formula
(idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf part = tf / (tf + k1 (1 - b + b dl / avgdl)), float32, as
bm25s's "lucene" method computes it; tests check the two rank alike). The tokenizer approximates Lucene's
StandardTokenizer by runs of word characters.

The index is a term -> (documents, scores) matrix in CSR form: `indptr[t]:indptr[t+1]` slices `docs` and
`scores` for term t. It is built a chunk of documents at a time (the full 1.18M-product catalogue never holds
its token lists in memory), saved as .npy files and loaded memory-mapped, so a reload reads the vocabulary only.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import Stemmer

SEARCH_RETURN_N = 50
K1, B = 0.9, 0.4
# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET
STOP_WORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not",
    "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was",
    "will", "with"))
_POSSESSIVE = re.compile(r"'s\b")
_WORD = re.compile(r"\w+")
_CHUNK_DOCS = 50_000  # documents tokenised at a time while building
_BLOCK = 1024  # documents per block when selecting the top k of a large corpus
_FILES = ("indptr.npy", "docs.npy", "scores.npy", "vocab.json", "params.json")


class SearchEngine:
    """Ranks documents (product search texts) for a query; returns document indices, best first."""

    def __init__(self, documents: Iterable[str]):
        self._stemmer = Stemmer.Stemmer("porter")
        vocab: dict[str, int] = {}
        terms, docs, tfs, lengths = [], [], [], []
        batch: list[str] = []
        for text in documents:
            batch.append(text)
            if len(batch) == _CHUNK_DOCS:
                self._count(batch, sum(map(len, lengths)), vocab, terms, docs, tfs, lengths)
                batch = []
        if batch:
            self._count(batch, sum(map(len, lengths)), vocab, terms, docs, tfs, lengths)
        doc_len = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        term = np.concatenate(terms) if terms else np.zeros(0, np.int32)
        doc = np.concatenate(docs) if docs else np.zeros(0, np.int32)
        tf = np.concatenate(tfs) if tfs else np.zeros(0, np.float32)
        del terms, docs, tfs
        n_docs = len(doc_len)
        avg_len = float(doc_len.mean()) if n_docs else 1.0
        df = np.bincount(term, minlength=len(vocab))
        idf = np.log(1 + (n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
        # the length part in float64 then float32, as bm25s adds a Python float to a float32 tf array
        norm = (K1 * ((1 - B) + B * doc_len / avg_len)).astype(np.float32)
        score = idf[term] * (tf / (norm[doc] + tf))
        order = np.argsort(term, kind="stable")  # by term; documents stay in order within a term
        self._indptr = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
        self._docs, self._scores = doc[order], score[order]
        self._vocab, self._n_docs, self._avg_len = vocab, n_docs, avg_len

    def _count(self, texts: list[str], first_doc: int, vocab: dict[str, int], terms: list, docs: list,
               tfs: list, lengths: list) -> None:
        """(term, document, tf) of each distinct term of each text, term ids from `vocab` (grown here)."""
        ids, lens = [], []
        for text in texts:
            tokens = self.tokenize(text)
            ids.extend(vocab.setdefault(t, len(vocab)) for t in tokens)
            lens.append(len(tokens))
        lens = np.asarray(lens, dtype=np.int64)
        doc_of = np.repeat(np.arange(first_doc, first_doc + len(texts), dtype=np.int64), lens)
        pairs, tf = np.unique(doc_of << 32 | np.asarray(ids, dtype=np.int64), return_counts=True)
        docs.append((pairs >> 32).astype(np.int32))
        terms.append((pairs & 0xFFFFFFFF).astype(np.int32))
        tfs.append(tf.astype(np.float32))
        lengths.append(lens)

    def __len__(self) -> int:
        return self._n_docs

    def save(self, folder: Path) -> None:
        """The index as .npy arrays (memory-mappable), the vocabulary and the corpus statistics in `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "indptr.npy", self._indptr)
        np.save(folder / "docs.npy", self._docs)
        np.save(folder / "scores.npy", self._scores)
        (folder / "vocab.json").write_text(json.dumps(self._vocab))
        (folder / "params.json").write_text(json.dumps({"k1": K1, "b": B, "n_docs": self._n_docs,
                                                        "avg_len": self._avg_len}))

    @classmethod
    def load(cls, folder: Path) -> SearchEngine:
        """An index `save` wrote, its arrays memory-mapped: loading reads the vocabulary, not the matrix, and
        processes sharing the index share its pages."""
        folder = Path(folder)
        missing = [f for f in _FILES if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"search index {folder}: missing {', '.join(missing)}")
        params = json.loads((folder / "params.json").read_text())
        if (params["k1"], params["b"]) != (K1, B):
            raise ValueError(f"search index {folder}: built with k1={params['k1']}, b={params['b']}, "
                             f"expected k1={K1}, b={B}")
        engine = cls.__new__(cls)
        engine._stemmer = Stemmer.Stemmer("porter")
        engine._indptr = np.load(folder / "indptr.npy", mmap_mode="r")
        engine._docs = np.load(folder / "docs.npy", mmap_mode="r")
        engine._scores = np.load(folder / "scores.npy", mmap_mode="r")
        engine._vocab = json.loads((folder / "vocab.json").read_text())
        engine._n_docs, engine._avg_len = params["n_docs"], params["avg_len"]
        return engine

    def tokenize(self, text: str) -> list[str]:
        words = [w for w in _WORD.findall(_POSSESSIVE.sub("", text.lower())) if w not in STOP_WORDS]
        return self._stemmer.stemWords(words)

    def _term_ids(self, query: str) -> list[int]:
        # Porter stems a lone "s" (as in "men s shoes") to "": an empty stem matches nothing (bm25s, whose
        # ranking we keep, leaves it out of queries).
        return [self._vocab[t] for t in self.tokenize(query) if t and t in self._vocab]

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for the query (float32; 0 where no query term occurs)."""
        return self._scores_of(self._term_ids(query))

    def _scores_of(self, terms: list[int]) -> np.ndarray:
        out = np.zeros(self._n_docs, dtype=np.float32)
        for t in terms:  # in query-term order, float32, as bm25s sums (np.add.at: numpy 2's fastest here)
            lo, hi = self._indptr[t], self._indptr[t + 1]
            np.add.at(out, self._docs[lo:hi], self._scores[lo:hi])
        return out

    def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[int]:
        """Indices of the top-k documents that match at least one query term (Lucene returns no others), best
        first, ties in document order (Lucene's docid tie-break)."""
        return _top_k(self._scores_of(self._term_ids(query)), k)


def _top_k(scores: np.ndarray, k: int) -> list[int]:
    """The k best matches (score > 0), ties in document order. Over many documents the k-th best block maximum
    bounds the k best from below (they are k distinct scores): only the blocks reaching it are searched, and
    only their documents reaching it sorted (a full-catalogue query matches about half the products)."""
    if len(scores) >= k * _BLOCK:
        whole = len(scores) // _BLOCK * _BLOCK
        maxima = np.append(scores[:whole].reshape(-1, _BLOCK).max(axis=1), scores[whole:].max(initial=0))
        floor = max(np.partition(maxima, len(maxima) - k)[len(maxima) - k], np.finfo(np.float32).tiny)
        span = (np.flatnonzero(maxima >= floor)[:, None] * _BLOCK + np.arange(_BLOCK)).ravel()
        span = span[span < len(scores)]
        candidates = span[scores[span] >= floor]
    else:
        candidates = np.flatnonzero(scores > 0)
    return candidates[np.argsort(-scores[candidates], kind="stable")][:k].tolist()
