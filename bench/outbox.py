"""Outbox throughput: build N webhook digests, then drain them into a local HTTP receiver that takes
`delay` seconds per request, with 1 worker task (the baseline, measured in the same run) and with 4.
Also times digest building. Prints JSON.

    .venv/bin/python bench/outbox.py [--digests 200] [--delay 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from deliveryfixtures import T0, World, http_receiver, make_config

from monitor.delivery import digest, outbox
from monitor.storage import db


def run(n: int, delay: float, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, http_receiver(delay_s=delay) as rx:
        path = Path(tmp)
        engine = db.make_engine(f"sqlite:///{path / 'monitor.db'}")
        db.upgrade(engine)
        channels = "".join(f'[[channels]]\nname = "c{i}"\nkind = "webhook"\nurl_env = "BENCH_URL"\nsecret_env = "BENCH_SECRET"\n\n'
                           for i in range(n))
        os.environ["BENCH_URL"], os.environ["BENCH_SECRET"] = rx.url, "bench-secret"
        config = make_config(path, channels)
        w = World(engine)
        for i in range(20):
            w.new_story(f"s{i}", "icc", f"Story {i}")
        t0 = time.perf_counter()
        built = digest.build_due_digests(engine, config, T0, secret_key="k")
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = asyncio.run(outbox.deliver_due(engine, config, T0, worker_id="bench", limit=n, concurrency=concurrency))
        send_s = time.perf_counter() - t0
        assert len(built) == n and report.sent == n and len(rx.requests) == n
        engine.dispose()
        return {"build_s": build_s, "send_s": send_s, "deliveries_per_s": n / send_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--digests", type=int, default=200)
    ap.add_argument("--delay", type=float, default=0.02, help="receiver latency per request, seconds")
    args = ap.parse_args()
    base = run(args.digests, args.delay, 1)
    four = run(args.digests, args.delay, 4)
    print(json.dumps({
        "digests": args.digests,
        "receiver_delay_s": args.delay,
        "build_digests_per_s": round(args.digests / base["build_s"], 1),
        "baseline_concurrency_1": {k: round(v, 3) for k, v in base.items()},
        "concurrency_4": {k: round(v, 3) for k, v in four.items()},
        "speedup_4_vs_1": round(base["send_s"] / four["send_s"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
