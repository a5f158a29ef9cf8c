"""The FAISS collection: index types, filters, deletes, saved indexes."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from service.documents import Document
from service.index import Collection, IndexConfig
from service.storage.bundle import load_collection, save_collection


def _unit(rng, n, dim=32):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf-sq8", "ivf-pq", "hnsw", "hnsw-sq8"])
def test_index_types_find_neighbours_filter_and_delete(kind):
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 600)
    docs = [Document(f"d{i}", f"text {i}", {"parity": i % 2, "tags": ["all", f"t{i % 3}"]}) for i in range(600)]
    config = IndexConfig(kind=kind, nprobe=64, ef_search=128, pq_m=8)
    c = Collection.from_arrays(32, config, "v1", docs, vectors)
    assert c.index.kind == kind and len(c) == 600
    hits = c.search(vectors[:20], k=5)
    found = sum(h[0].doc.id == f"d{i}" for i, h in enumerate(hits))
    assert found >= (15 if kind == "ivf-pq" else 19)
    odd = c.search(vectors[:1], k=5, where={"parity": 1})[0]
    assert len(odd) == 5 and all(h.doc.metadata["parity"] == 1 for h in odd)
    assert all(h.doc.id.endswith(("1", "3", "5", "7", "9")) for h in odd)
    assert {h.doc.id for h in c.search(vectors[:1], k=3, where={"tags": ["t1", "t2"], "parity": 0})[0]} \
        <= {f"d{i}" for i in range(600) if i % 3 and i % 2 == 0}
    c.delete(["d0"])
    assert all(h.doc.id != "d0" for h in c.search(vectors[:1], k=10)[0])
    c.upsert([Document("d1", "replaced", {})], vectors[:1])  # d1 now sits where d0 was
    assert c.search(vectors[:1], k=1)[0][0].doc.text == "replaced"
    c.rebuild()
    assert c.rows == len(c) == 599 and c.search(vectors[:1], k=1)[0][0].doc.id == "d1"


@pytest.mark.parametrize("kind", ["ivf-sq8", "hnsw", "hnsw-sq8"])
def test_a_saved_index_searches_with_this_runs_settings(kind, tmp_path):
    """An index bundle is built once; QAEMBED_NPROBE / QAEMBED_EF_SEARCH of the serving pod must apply to it."""
    vectors = _unit(np.random.default_rng(1), 600)
    docs = [Document(f"d{i}", f"text {i}", {}) for i in range(600)]
    built = Collection.from_arrays(32, IndexConfig(kind=kind, nprobe=4, ef_search=16), "v1", docs, vectors)
    facts = save_collection(built, tmp_path)
    loaded = load_collection(tmp_path, facts, IndexConfig(kind=kind, nprobe=48, ef_search=512), "v1")
    index = loaded.index.index
    if kind.startswith("ivf"):
        assert faiss.extract_index_ivf(index).nprobe == 48
    else:
        assert faiss.downcast_index(index.index).hnsw.efSearch == 512
    assert loaded.search(vectors[:1], k=1)[0][0].doc.id == "d0"


def test_auto_index_choice():
    cfg = IndexConfig(kind="auto", flat_max=1000)
    assert cfg.resolve(10) == "flat" and cfg.resolve(1000) == "flat" and cfg.resolve(5000) == "ivf-sq8"
    assert IndexConfig(kind="ivf").resolve(10) == "flat"  # too few vectors to train


def test_ivf_list_count_follows_two_root_n_with_enough_training_points_per_list():
    assert IndexConfig().lists(1_000_000) == 2000 and IndexConfig().lists(100_000) == 632
    assert IndexConfig().lists(1000) == 25  # 2·√1000 = 63 lists would get < 39 points each
    assert IndexConfig(nlist=300).lists(1_000_000) == 300  # --nlist wins


