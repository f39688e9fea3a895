"""Helpers shared by the digest/delivery tests: a config, stories and alerts written straight into the
tables (as the novelty stage would), and real local receivers (HTTP on 127.0.0.1, aiosmtpd)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from monitor.config import Config, parse_config
from monitor.storage.db import naive_utc
from monitor.storage.tables import Alert, Story

T0 = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
ROOT_DIR = Path(__file__).resolve().parent.parent


class Clock:
    """A clock the test sets (`clock.now = ...`) and the code under test calls (`clock()`)."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

TOPICS = """
[[topics]]
id = "doha-talks"
name = "Doha talks"
description = "Ceasefire and hostage negotiations mediated by Qatar."
examples = ["Qatar hosts new round of ceasefire talks"]

[[topics]]
id = "icc"
name = "ICC"
description = "International Criminal Court cases."
examples = ["ICC prosecutor seeks arrest warrants"]
"""


def make_config(tmp_path: Path, extra: str = "", settings: str = "", engine: Engine | None = None) -> Config:
    return parse_config(config_text(tmp_path, extra, settings, engine), "test.toml", env={})


def config_text(tmp_path: Path, extra: str = "", settings: str = "", engine: Engine | None = None) -> str:
    """A config whose database is `engine`'s (the `engine` fixture's SQLite file when none is given)."""
    url = engine.url.render_as_string(hide_password=False) if engine is not None else f"sqlite:///{tmp_path / 'monitor.db'}"
    return f"""
[settings]
database_url = "{url}"
outbox_dir = "{tmp_path / 'outbox'}"
base_url = "https://monitor.example.org"
mail_from = "Monitor <alerts@monitor.example.org>"
allow_private_networks = true
{settings}
{TOPICS}
{extra}
"""


@dataclass
class World:
    """Stories and alerts written as the novelty stage would write them."""

    engine: Engine
    item_seq: int = 0
    stories: dict[str, int] = field(default_factory=dict)

    def story(self, key: str, topic: str, title: str, *, first_seen: datetime = T0, sources: int = 1) -> int:
        with Session(self.engine) as s, s.begin():
            st = Story(topic_id=topic, title=title, link=f"https://news.example/{key}", first_seen=naive_utc(first_seen),
                       last_seen=naive_utc(first_seen), item_count=sources,
                       sources=[f"outlet{i}.example" for i in range(sources)], state={}, closed=False)
            s.add(st)
            s.flush()
            self.stories[key] = st.id
            return st.id

    def alert(self, story_key: str, decision: str = "new_story", *, title: str | None = None,
              what_is_new: str | None = None, at: datetime = T0, outlet: str = "outlet0.example",
              topic: str | None = None) -> int:
        with Session(self.engine) as s, s.begin():
            st = s.get_one(Story, self.stories[story_key])
            self.item_seq += 1
            a = Alert(item_id=None, topic_id=topic or st.topic_id, story_id=st.id, decision=decision, reason="test",
                      what_is_new=what_is_new, similarity=None, title=title or st.title,
                      link=f"https://news.example/{story_key}/{self.item_seq}", outlet=outlet,
                      published_at=naive_utc(at), created_at=naive_utc(at))
            s.add(a)
            s.flush()
            return a.id

    def new_story(self, key: str, topic: str, title: str, *, at: datetime = T0, sources: int = 1) -> int:
        self.story(key, topic, title, first_seen=at, sources=sources)
        return self.alert(key, "new_story", at=at)


# --- a real HTTP receiver --------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    requests: list[Received]
    # Each request pops the next planned reply (status, headers, body); when empty, 200 "ok".
    replies: list[tuple[int, dict[str, str], bytes]]
    delay_s: float = 0.0


@contextmanager
def http_receiver(replies: list[tuple[int, dict[str, str], bytes]] | None = None, delay_s: float = 0.0,
                  on_request: Callable[[Received], None] | None = None) -> Iterator[Receiver]:
    state = Receiver(url="", requests=[], replies=list(replies or []), delay_s=delay_s)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            rec = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
            with lock:
                state.requests.append(rec)
                status, headers, reply = state.replies.pop(0) if state.replies else (200, {}, b"ok")
            if on_request:
                on_request(rec)
            if state.delay_s:
                time.sleep(state.delay_s)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def advance(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)
