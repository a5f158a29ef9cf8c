"""The lexical groundwork of hybrid search: analyzer, BM25 over SQLite FTS5, fusion, and α chosen on a task.

Real parts only: PyStemmer's snowball stemmers, SQLite's FTS5, the example data.
"""

from __future__ import annotations

import json
import sqlite3
import threading

import numpy as np
import pytest

from training.analyzer import ANALYZER_VERSION, Analyzer, AnalyzerError
from training.bm25 import Bm25Postings
from training.data import QARecord, load_qa_data
from training.fusion import ALPHA_GRID, check_alpha, rrf_fusion, weighted_fusion
from training.lexical import LexicalIndex
from training.metrics import RetrievalTask, evaluate, evaluate_rankings
from training.retrieval import choose_alpha, compare_retrievers, dense_rankings, lexical_rankings, ranking_keys


# --------------------------------------------------------------------------- analyzer
def test_turkish_lowercasing_keeps_dotted_and_dotless_i_apart():
    simple_tr = Analyzer.named("tr", stemmer="none")
    assert simple_tr.terms("IŞIK İZMİR ılık iğne") == ["ışık", "izmir", "ılık", "iğne"]
    # the generic lowercase maps I to i, and İ to a plain i too (not "i" + a combining dot, which splits a word)
    assert Analyzer.named("simple").terms("IŞIK İZMİR") == ["işik", "izmir"]
    # one word however it is cased, so a capitalised query finds a lowercase passage
    assert simple_tr.terms("ISPARTA") == simple_tr.terms("ısparta") and simple_tr.terms("İSTANBUL") == ["istanbul"]


def test_tokens_are_letters_and_digits_of_any_script():
    terms = Analyzer.named("simple").terms("Musul'da 1156 yılında—el-Tusî_2; naïve café Ωmega")
    assert terms == ["musul", "da", "1156", "yılında", "el", "tusî", "2", "naïve", "café", "ωmega"]
    assert Analyzer.named("simple").terms("  ?!.,;:\"'*()-  ") == []
    # NFC first: a decomposed ş (s + combining cedilla) is the same term as the composed one
    assert Analyzer.named("simple").terms("s\u0327ehir") == ["şehir"]


def test_stemmers_conflate_inflected_forms():
    snowball = Analyzer.named("tr", stemmer="snowball")
    assert snowball.terms("kitaplarımızdan kitapları kitap") == ["kitap", "kitap", "kitap"]
    assert snowball.terms("padişahları savaşında") == ["padişah", "savaş"]
    prefix = Analyzer.named("tr")  # the default: 5-character prefix stems
    assert prefix.stemmer == "prefix" and prefix.prefix_length == 5
    assert prefix.terms("Osmanlıların padişahları") == ["osman", "padiş"]
    assert Analyzer.named("tr", stemmer="prefix", prefix_length=3).terms("kitaplar") == ["kit"]
    assert Analyzer.named("en").terms("Running runners ran") == ["run", "runner", "ran"]


def test_stemming_is_safe_from_many_threads():
    analyzer = Analyzer.named("en")
    words = " ".join(f"connections{i} running" for i in range(200))
    expected = analyzer.terms(words)
    results, errors = [], []

    def work():
        try:
            results.extend(analyzer.terms(words) == expected for _ in range(20))
        except Exception as error:  # noqa: BLE001 - any failure in a thread is the finding
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 160 and all(results)


def test_description_round_trips_and_names_everything():
    for analyzer in (Analyzer.named("tr"), Analyzer.named("tr", stemmer="snowball"), Analyzer.named("en"),
                     Analyzer.named("simple"), Analyzer.named("tr", stemmer="prefix", prefix_length=4)):
        description = json.loads(json.dumps(analyzer.describe()))
        assert description["version"] == ANALYZER_VERSION and description["name"] == analyzer.name
        assert Analyzer.from_description(description) == analyzer
        analyzer.check_same(description)
    assert Analyzer.named("tr").describe() == {"name": "tr", "stemmer": "prefix", "prefix_length": 5,
                                               "version": ANALYZER_VERSION}


@pytest.mark.parametrize("description, message", [
    ({"name": "tr", "stemmer": "prefix", "prefix_length": 5, "version": ANALYZER_VERSION + 1}, "another release"),
    ({"name": "tr", "stemmer": "prefix", "prefix_length": 5}, "another release"),
    ({"name": "de", "stemmer": "none", "prefix_length": None, "version": ANALYZER_VERSION}, "unknown analyzer 'de'"),
    ({"name": "simple", "stemmer": "snowball", "prefix_length": None, "version": ANALYZER_VERSION},
     "has no snowball stemmer"),
    ({"name": "tr", "stemmer": "prefix", "prefix_length": None, "version": ANALYZER_VERSION}, "prefix_length"),
    ({"name": "tr", "stemmer": "prefix", "prefix_length": 0, "version": ANALYZER_VERSION}, "at least 1"),
    ({"name": "tr", "stemmer": "none", "prefix_length": None, "version": ANALYZER_VERSION, "stop": 1}, "unknown"),
    ("tr", "JSON object"),
])
def test_bad_descriptions_are_refused_with_the_reason(description, message):
    with pytest.raises(AnalyzerError, match=message):
        Analyzer.from_description(description)


def test_a_changed_analyzer_is_refused():
    with pytest.raises(AnalyzerError, match="rebuild the index"):
        Analyzer.named("tr").check_same(Analyzer.named("tr", stemmer="snowball").describe())
    with pytest.raises(AnalyzerError, match="unknown analyzer 'fr'"):
        Analyzer.named("fr")


# --------------------------------------------------------------------------- BM25 over FTS5
@pytest.fixture()
def tiny_index():
    index = LexicalIndex.open(":memory:", Analyzer.named("tr"))
    index.add_many(enumerate([
        "Osmanlı İmparatorluğu 1299 yılında kuruldu.",                      # 0
        "Kahve Osmanlı saraylarında çok sevilirdi; kahve ve kahvehaneler.",  # 1
        "Çay Rize'de yetişir.",                                              # 2
        "İstanbul'un fethi 1453 yılında oldu.",                              # 3
        "AND OR NEAR NOT kelimeleri bir metinde geçer.",                     # 4
    ]))
    yield index
    index.connection.close()


def test_bm25_ranks_the_passage_sharing_the_rare_words_first(tiny_index):
    assert tiny_index.search("İstanbul ne zaman fethedildi?", k=5).keys[0] == 3
    assert tiny_index.search("Osmanlı imparatorluğu ne zaman kuruldu?", k=5).keys[0] == 0
    result = tiny_index.search("kahve", k=5)
    assert result.keys == [1] and result.hits[0][1] > 0  # higher is better
    # OR across terms: a passage matching only one query word is still found, below those matching more
    keys = tiny_index.search("Osmanlı kahvesi", k=5).keys
    assert keys[0] == 1 and 0 in keys
    scores = [score for _, score in tiny_index.search("1453 yılında Osmanlı", k=5).hits]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert len(tiny_index.search("Osmanlı yılında", k=1).hits) == 1  # k bounds the hits


@pytest.mark.parametrize("query", [
    'kahve"', '"kahve', 'kahve*', '*', 'kahve AND', 'AND kahve', 'OR', 'NOT kahve', 'NEAR(kahve çay)',
    'NEAR', 'terms:kahve', 'kahve:', '-kahve', 'kahve -çay', '(kahve', 'kahve)', '^kahve', '{terms}: kahve',
    'kahve + çay', "' OR 1=1 --", 'kahve; DROP TABLE lexical',
])
def test_fts5_syntax_in_user_text_is_never_interpreted(tiny_index, query):
    result = tiny_index.search(query, k=5)  # never an FTS5 syntax error
    expected = {key for term in result.terms for key in tiny_index.search(term, k=5).keys}
    assert set(result.keys) == expected  # exactly the passages holding one of its words, as plain words
    if "kahve" in query.lower():
        assert 1 in result.keys
    assert len(tiny_index) == 5


def test_operator_words_are_searched_as_words(tiny_index):
    for word in ("AND", "OR", "NOT", "NEAR"):
        assert tiny_index.search(word, k=5).keys == [4]
    # the same text given to FTS5 unquoted would be syntax (proof that quoting is what protects it)
    with pytest.raises(sqlite3.OperationalError):
        tiny_index.connection.execute("SELECT rowid FROM lexical WHERE lexical MATCH ?", ("kahve AND",)).fetchall()


def test_a_query_empty_after_analysis_returns_nothing_and_says_so(tiny_index):
    for query in ("", "   ", "?!... ---", '"*"'):
        result = tiny_index.search(query, k=5)
        assert result.empty_query and result.hits == [] and result.terms == ()
    assert not tiny_index.search("kahve", k=5).empty_query
    assert not tiny_index.search("zzz", k=5).empty_query  # analysed to a term that matches nothing: not "empty"
    with pytest.raises(ValueError, match="k must be at least 1"):
        tiny_index.search("kahve", k=0)


def test_add_replaces_and_remove_drops(tiny_index):
    tiny_index.add(2, "Kahve Yemen'den gelir.")
    assert set(tiny_index.search("kahve", k=5).keys) == {1, 2} and tiny_index.search("çay", k=5).keys == []
    tiny_index.remove(1)
    tiny_index.remove(99)  # absent: nothing happens
    assert tiny_index.search("kahve", k=5).keys == [2] and len(tiny_index) == 4


def test_a_file_index_persists_and_refuses_another_analyzer(tmp_path):
    path = tmp_path / "lexical.sqlite3"
    index = LexicalIndex.open(path, Analyzer.named("tr"))
    index.add_many([(10, "Osmanlı padişahları"), (11, "Kahve")])
    index.connection.commit()  # the owner of the connection commits
    index.connection.close()

    reopened = LexicalIndex.open(path, Analyzer.named("tr"))
    assert reopened.search("padişah", k=5).keys == [10] and len(reopened) == 2
    reopened.connection.close()
    with pytest.raises(AnalyzerError, match="rebuild the index"):
        LexicalIndex.open(path, Analyzer.named("tr", stemmer="snowball"))
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        LexicalIndex(sqlite3.connect(":memory:"), Analyzer.named("tr"), table="x; DROP TABLE y")


def test_writes_join_the_callers_transaction(tmp_path):
    path = tmp_path / "store.sqlite3"
    connection = sqlite3.connect(path)
    index = LexicalIndex(connection, Analyzer.named("tr"), table="docs_lexical")
    connection.commit()
    index.add(1, "kahve")
    connection.rollback()  # the caller's transaction failed: the index entry goes with it
    assert len(index) == 0
    index.add(1, "kahve")
    connection.commit()
    connection.close()
    other = LexicalIndex.open(path, Analyzer.named("tr"), table="docs_lexical")
    assert other.search("kahve", k=1).keys == [1]
    other.connection.close()


# --------------------------------------------------------------------------- fusion
DENSE = [("a", 0.91), ("b", 0.72), ("c", 0.40), ("d", 0.10)]
LEXICAL = [("d", 14.0), ("e", 9.5), ("c", 3.0)]


def _same_ranking(fts_hits, postings_hits):
    """Same scores rank by rank (1e-9 relative), and the same keys above the last listed score (ties at the cut
    may list different keys, as any top-k does)."""
    assert len(fts_hits) == len(postings_hits)
    assert np.allclose([s for _, s in fts_hits], [s for _, s in postings_hits], rtol=1e-9, atol=0)
    if fts_hits:
        cut = fts_hits[-1][1] * (1 + 1e-9)
        assert {k for k, s in fts_hits if s > cut} == {k for k, s in postings_hits if s > cut}


def test_in_memory_postings_rank_exactly_as_fts5_bm25_through_writes():
    """The service ranks with Bm25Postings (FTS5's bm25() is too slow at 100k documents): same corpus, same
    writes (bulk load, single adds, replacements, removals, merges) → FTS5's scores and order, also when a query
    is repeated between writes (the postings keep a term's weights until the next write)."""
    analyzer = Analyzer.named("tr")
    words = ("ankara başkent türkiye istanbul boğaz köprü kahve çay osmanlı padişah saray savaş barış ırmak dağ "
             "İzmir ege deniz liman tarih müze kitap okul öğretmen öğrenci ve bir bu da ile").split()
    rng = np.random.default_rng(7)
    texts = [" ".join(rng.choice(words, size=rng.integers(3, 40))) for _ in range(1500)]
    fts, postings = LexicalIndex.open(analyzer=analyzer), Bm25Postings()
    fts.add_many(enumerate(texts))
    postings.add_many((key, analyzer.terms(text)) for key, text in enumerate(texts))
    for step in range(1200):  # single writes: the delta, then merges past its threshold
        key = int(rng.integers(0, 1700))
        if step % 5 == 0:
            fts.remove(key)
            postings.remove(key)
        else:
            text = " ".join(rng.choice(words, size=rng.integers(1, 30)))
            fts.add(key, text)
            postings.add_many([(key, analyzer.terms(text))])
        if step % 150 == 0:
            for _ in range(2):  # the second search reads the weights the first one cached
                _same_ranking(fts.search("kahve ve çay", 20).hits, postings.search(["kahve", "ve", "çay"], 20))
    assert len(postings) == len(fts)
    for query in ("Ankara'nın başkenti", "osmanlı padişahları ve sarayları", "ırmak IRMAK", "kahve", "yok böyle",
                  "ve bir bu"):
        terms = analyzer.terms(query)
        _same_ranking(fts.search(query, 50).hits, postings.search(terms, 50))
    assert postings.search(["hiçyok"], 10) == []


def test_alpha_one_is_the_dense_order_and_alpha_zero_the_lexical_order():
    assert [h.key for h in weighted_fusion(DENSE, LEXICAL, 1.0)] == ["a", "b", "c", "d", "e"]
    assert [h.key for h in weighted_fusion(DENSE, LEXICAL, 0.0)] == ["d", "e", "c", "a", "b"]


def test_weighted_fusion_combines_normalised_scores_and_keeps_the_components():
    hits = {h.key: h for h in weighted_fusion(DENSE, LEXICAL, 0.5)}
    # d: dense min → 0, lexical max → 1; e: lexical only (0.587), dense 0 there
    assert hits["d"].score == pytest.approx(0.5 * 0.0 + 0.5 * 1.0)
    assert hits["e"].score == pytest.approx(0.5 * (9.5 - 3.0) / 11.0)
    assert hits["c"].score == pytest.approx(0.5 * (0.40 - 0.10) / 0.81 + 0.0)
    assert (hits["d"].dense_score, hits["d"].lexical_score) == (0.10, 14.0)
    assert (hits["e"].dense_score, hits["a"].lexical_score) == (None, None)
    fused = weighted_fusion(DENSE, LEXICAL, 0.5)
    assert [h.score for h in fused] == sorted((h.score for h in fused), reverse=True)
    assert len(weighted_fusion(DENSE, LEXICAL, 0.5, limit=2)) == 2
    assert weighted_fusion([], LEXICAL, 0.7)[0].key == "d" and weighted_fusion([], [], 0.5) == []


@pytest.mark.parametrize("alpha", [-0.1, 1.01, float("nan")])
def test_alpha_outside_zero_one_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha must be in"):
        weighted_fusion(DENSE, LEXICAL, alpha)
    with pytest.raises(ValueError):
        check_alpha(alpha)


def test_rrf_sums_reciprocal_ranks():
    hits = {h.key: h for h in rrf_fusion(DENSE, LEXICAL)}
    assert hits["d"].score == pytest.approx(1 / 64 + 1 / 61)
    assert hits["c"].score == pytest.approx(1 / 63 + 1 / 63)
    assert hits["a"].score == pytest.approx(1 / 61) and hits["e"].score == pytest.approx(1 / 62)
    # b (dense rank 2) and e (lexical rank 2) tie at 1/62: the key listed first, dense's, goes first
    assert [h.key for h in rrf_fusion(DENSE, LEXICAL)] == ["d", "c", "a", "b", "e"]
    assert (hits["e"].dense_score, hits["e"].lexical_score) == (None, 9.5)
    assert rrf_fusion(DENSE, LEXICAL, k=1)[0].score == pytest.approx(1 / 5 + 1 / 2)  # k is the constant used


# --------------------------------------------------------------------------- α chosen on a task
def test_alpha_is_chosen_on_the_task_from_the_grid(example_data):
    task = RetrievalTask.from_records(load_qa_data([example_data]).records)
    rng = np.random.default_rng(0)
    noise = {text: rng.normal(size=8) for text in (*task.queries, *task.corpus)}
    random_model = lambda texts: np.array([noise[t] for t in texts])  # noqa: E731 - a model that knows nothing
    result = compare_retrievers(task, random_model, random_model, Analyzer.named("tr"))
    fusion = result["fusion"]
    assert list(fusion["mrr@10_by_alpha"]) == [f"{a:.1f}" for a in ALPHA_GRID]
    assert result["hybrid"]["mrr@10"] == fusion["mrr@10_by_alpha"][f"{fusion['alpha']:.1f}"]
    assert fusion["alpha"] == 0.0  # a model that knows nothing adds nothing BM25's order lacks: BM25 alone
    assert fusion["mrr@10_by_alpha"]["0.0"] == result["bm25"]["mrr@10"]  # α = 0 is BM25's order
    assert fusion["mrr@10_by_alpha"]["1.0"] == result["dense"]["mrr@10"]  # α = 1 the model's
    assert result["bm25"]["mrr@10"] > 0.8 > result["dense"]["mrr@10"]  # words shared with the passage count
    assert result["dense"] == evaluate(task, random_model, random_model)  # the one metric path
    assert fusion["analyzer"] == Analyzer.named("tr").describe() and fusion["candidates"] == 100
    fixed = compare_retrievers(task, random_model, random_model, Analyzer.named("tr"), alpha=0.3)
    assert fixed["fusion"]["alpha"] == 0.3 and "mrr@10_by_alpha" not in fixed["fusion"]
    assert fixed["hybrid"]["mrr@10"] == fusion["mrr@10_by_alpha"]["0.3"]


def _two_rankers(lexical_right: int, dense_right: int) -> tuple[RetrievalTask, list, list]:
    """Queries that BM25 ranks right (its answer first, the model's decoy second) and queries the model ranks right
    with BM25 nearly right: a fused ranking gets every query right at any α strictly between 0.1 and 0.9."""
    count = lexical_right + dense_right
    task = RetrievalTask(tuple(f"q{i}" for i in range(count)), tuple(f"p{i}" for i in range(3 * count)),
                         tuple(frozenset([i]) for i in range(count)))
    dense, lexical = [], []
    for i in range(count):
        decoy, other = count + i, 2 * count + i
        if i < lexical_right:
            lexical.append([(i, 10.0), (other, 5.0), (decoy, 0.0)])
            dense.append([(decoy, 0.9), (i, 0.85), (other, 0.1)])
        else:
            lexical.append([(decoy, 10.0), (i, 9.5), (other, 0.0)])
            dense.append([(i, 0.9), (other, 0.5), (decoy, 0.1)])
    return task, dense, lexical


def test_alpha_is_the_one_nearest_the_better_ranker_within_one_standard_error_of_the_best():
    # half the queries need each side: every fused α gets MRR 1.0, either side alone 0.75 -> far more than one
    # standard error: the fused α nearest the better single ranker (a tie: the model's, α = 1)
    alpha, by_alpha = choose_alpha(*_two_rankers(20, 20))
    assert (by_alpha["0.0"], by_alpha["1.0"], by_alpha["0.5"]) == (0.75, 0.75, 1.0) and alpha == 0.9
    # one query of 40 gained is exactly one standard error: BM25 alone, the better single ranker, stays
    alpha, by_alpha = choose_alpha(*_two_rankers(39, 1))
    assert by_alpha["0.5"] == 1.0 > by_alpha["0.0"] == 0.9875 > by_alpha["1.0"] and alpha == 0.0
    # eight queries of 40 gained: a real gain, the fused α nearest BM25
    alpha, by_alpha = choose_alpha(*_two_rankers(32, 8))
    assert by_alpha["0.1"] == 1.0 > by_alpha["0.0"] and alpha == 0.1


def test_a_query_without_terms_misses_in_bm25_but_the_hybrid_falls_back_to_the_model():
    task = RetrievalTask.from_records([QARecord("kahve?", "kahve pişer"), QARecord("?!", "çay")])
    identity = {"kahve?": [1.0, 0.0], "?!": [0.0, 1.0], "kahve pişer": [1.0, 0.0], "çay": [0.0, 1.0]}
    encode = lambda texts: np.array([identity[t] for t in texts])  # noqa: E731
    dense = dense_rankings(task, encode, encode)
    lexical = lexical_rankings(task, Analyzer.named("tr"))
    assert lexical[1] == []  # "?!" has no terms: BM25 ranks nothing for it, a miss
    assert evaluate_rankings(task, ranking_keys(lexical))["mrr@10"] == 0.5
    # fused, the model's order decides where BM25 has nothing, at every α (even 0); ties go to the larger α
    alpha, by_alpha = choose_alpha(task, dense, lexical)
    assert set(by_alpha.values()) == {1.0} and alpha == 1.0
