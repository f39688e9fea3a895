"""Two processes on one database, simulated with a thread: the first holds an open write transaction while
the second tries its own; what the second then sees (or fails with) is what the tests assert."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from monitor.storage import db


def while_holding(engine: Engine, first: Callable[[Session], Any], second: Callable[[Session], Any],
                  *, head_start_s: float = 0.5) -> Any:
    """Run `first` in a write transaction and, before it commits, start `second` in another write
    transaction on another thread; give it `head_start_s` to block (or not), commit `first`, and return
    `second`'s result. An exception in `second` is re-raised here (a failure to wait is the bug)."""
    out: dict[str, Any] = {}

    def other() -> None:
        try:
            with db.write_transaction(engine) as s:
                out["result"] = second(s)
        except Exception as e:  # handed to the test thread
            out["error"] = e

    with db.write_transaction(engine) as s:
        first(s)
        t = threading.Thread(target=other)
        t.start()
        t.join(head_start_s)
    t.join(30)
    assert not t.is_alive(), "the second transaction never finished"
    if "error" in out:
        raise out["error"]
    return out.get("result")
