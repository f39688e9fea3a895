"""Latency and memory of the running service (issue 6).

1. Latency: `monitor run` (a real subprocess, real clock) polls a live local feed server every
   --interval seconds; the benchmark publishes on-topic items one by one and records when each was
   published, when the service first fetched it, and when the `immediate` webhook carrying it arrived.
   Reported: seconds beyond the poll (receipt - first fetch that saw it) and end to end (receipt -
   publication), p50/p95. Target: p95 beyond the poll < 2 s.
2. Memory: the same service over a database holding --items stored items (real stream headlines; their
   vectors are random unit vectors of the model's size, since encoding 100k items would take 15 minutes
   and does not change what is held in memory), peak RSS (VmHWM) after it has run a while; the baseline
   measured in the same run is a bare process that only loads the embedding model.

Prints one JSON object. Usage: python bench/latency.py [--items 100000] [--publish 20] [--interval 2]
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STREAM = ROOT.parent / "shared" / "data" / "stream" / "items_2023_worldnews.jsonl.xz"
sys.path.insert(0, str(ROOT))

from monitor.lab.receiver import CaptureReceiver, LiveFeedServer, free_port  # noqa: E402

HEADLINES = [
    ("Hamas frees {n} Israeli hostages in {k}th exchange under truce", "Red Cross convoy crossed into Egypt via Rafah."),
    ("Israel releases {m} Palestinian prisoners from Ofer jail as truce holds", "Buses arrived in Beitunia near Ramallah."),
    ("Qatar says {n} hostages to be freed on day {k} of truce", "Mediators announced the list of names late on {day}."),
    ("{n} Thai nationals among hostages released by Hamas in deal number {k}", "Thailand's government confirmed the release."),
]
NAMES = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.array(values), q))


def _topics_toml() -> str:
    text = (ROOT / "feeds.toml").read_text()
    return text[text.index("[[topics]]"):]


def _config(tmp: Path, db: Path, feeds: list[str], interval: float, receiver_url: str) -> Path:
    path = tmp / "feeds.toml"
    # aggregator: the replay server serves every outlet from 127.0.0.1, so each item's link names its outlet
    feed_blocks = "".join(f'[[feeds]]\nurl = "{u}"\ninterval = {max(1, int(interval))}\naggregator = true\n\n' for u in feeds)
    path.write_text(f"""
[settings]
database_url = "sqlite:///{db}"
allow_private_networks = true
outbox_dir = "{tmp / 'outbox'}"
min_interval_s = 1

[[channels]]
name = "bench"
kind = "slack"
url_env = "BENCH_SLACK_URL"
cadence = "immediate"

{feed_blocks}
{_topics_toml()}
""")
    os.environ["BENCH_SLACK_URL"] = receiver_url
    return path


def _start(config: Path, tmp: Path, tick: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MONITOR_SECRET_KEY": "bench"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "--config", str(config), "--log-level", "WARNING", "run",
         "--port", str(port), "--tick", str(tick)],
        cwd=tmp, env=env, stdout=(tmp / "service.log").open("wb"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"service exited: {(tmp / 'service.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("service did not become ready in 180 s")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def measure_latency(publish: int, interval: float, tick: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as d, LiveFeedServer() as feeds, CaptureReceiver() as receiver:
        tmp = Path(d)
        names = [f"feed{i}" for i in range(5)]
        config = _config(tmp, tmp / "monitor.db", [f"{feeds.url}/{n}.xml" for n in names], interval,
                         f"{receiver.url}/slack")
        proc, _port = _start(config, tmp, tick)
        time.sleep(interval * 2)  # first polls of the empty feeds
        published: list[tuple[str, int, str, float]] = []
        rng = np.random.default_rng(7)
        for k in range(publish):
            template, summary = HEADLINES[k % len(HEADLINES)]
            title = template.format(n=int(rng.integers(3, 40)), m=int(rng.integers(20, 90)), k=k + 1)
            feed = names[k % len(names)]
            now = datetime.now(UTC)
            idx = feeds.publish(feed, title, summary.format(day=NAMES[k % 7]), now)
            published.append((feed, idx, title, time.time()))
            time.sleep(interval * 1.3 + float(rng.random()))
        time.sleep(interval + 5)
        code = _stop(proc)
        got = receiver.snapshot()
    beyond: list[float] = []
    total: list[float] = []
    for feed, idx, title, t_pub in published:
        hits = [r.at for r in got if title.encode() in r.body]
        served = feeds.first_served.get((feed, idx))
        if hits and served:
            beyond.append(min(hits) - served)
            total.append(min(hits) - t_pub)
    return {
        "poll_interval_s": interval,
        "published": publish,
        "alerts_received": len(beyond),
        "beyond_poll_s": {"p50": _pct(beyond, 50), "p95": _pct(beyond, 95), "max": max(beyond, default=None)},
        "end_to_end_s": {"p50": _pct(total, 50), "p95": _pct(total, 95)},
        "target_p95_beyond_poll_s": 2.0,
        "exit_code": code,
    }


def _seed(db: Path, n: int, dim: int, model_id: str) -> int:
    from sqlalchemy import insert

    from monitor.storage import db as mdb
    from monitor.storage.tables import Feed, Item, ItemVector

    engine = mdb.make_engine(f"sqlite:///{db}")
    mdb.upgrade(engine)
    rng = np.random.default_rng(0)
    now = datetime.now(UTC).replace(tzinfo=None)
    feeds: dict[str, int] = {}
    batch_items: list[dict[str, object]] = []
    count = 0
    with engine.begin() as conn, lzma.open(STREAM, "rt") as fh:
        for line in fh:
            if count >= n:
                break
            d = json.loads(line)
            if d["feed"] not in feeds:
                fid = conn.execute(insert(Feed).values(url=d["feed"] + "#bench", config_url=d["feed"] + "#bench",
                                                       enabled=False, created_at=now)).inserted_primary_key[0]
                feeds[d["feed"]] = fid
            count += 1
            batch_items.append({"id": count, "feed_id": feeds[d["feed"]], "outlet": d["feed"][:200],
                                "key": f"bench-{count}", "link": d.get("link"), "title": d.get("title") or "",
                                "summary": (d.get("description") or "")[:500], "published_at": now - timedelta(minutes=count),
                                "fetched_at": now, "content_hash": f"{count:064x}", "processed_at": now})
            if len(batch_items) == 5000:
                _flush(conn, batch_items, rng, dim, model_id, Item, ItemVector)
        _flush(conn, batch_items, rng, dim, model_id, Item, ItemVector)
    engine.dispose()
    return count


def _flush(conn, rows, rng, dim, model_id, Item, ItemVector) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import insert

    if not rows:
        return
    conn.execute(insert(Item), rows)
    vecs = rng.standard_normal((len(rows), dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    conn.execute(insert(ItemVector), [{"item_id": r["id"], "model_id": model_id, "dim": dim, "vector": v.tobytes()}
                                      for r, v in zip(rows, vecs, strict=True)])
    rows.clear()


def _model_only_rss_mb() -> tuple[float, str, int]:
    code = ("import json,os,resource;os.environ['HF_HUB_OFFLINE']='1';"
            "from monitor.config import Settings;from monitor.signal.embed import load_embedder;"
            "e=load_embedder(Settings());e.encode(['warm up']);"
            "print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024,e.model_id,e.dim]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    rss, model_id, dim = json.loads(out.stdout.strip().splitlines()[-1])
    return rss, model_id, dim


def measure_memory(n_items: int, run_s: float) -> dict[str, object]:
    baseline_mb, model_id, dim = _model_only_rss_mb()
    with tempfile.TemporaryDirectory() as d, LiveFeedServer() as feeds, CaptureReceiver() as receiver:
        tmp = Path(d)
        seeded = _seed(tmp / "monitor.db", n_items, dim, model_id)
        config = _config(tmp, tmp / "monitor.db", [f"{feeds.url}/f{i}.xml" for i in range(20)], 5, f"{receiver.url}/s")
        for i in range(20):
            feeds.publish(f"f{i}", f"Hostage release talks continue, round {i}", "Mediators met in Doha.", datetime.now(UTC))
        proc, port = _start(config, tmp, 1.0)
        time.sleep(run_s)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            r.read()
        peak = _peak_rss_mb(proc.pid)
        _stop(proc)
    return {"stored_items": seeded, "service_peak_rss_mb": round(peak, 1),
            "baseline_model_only_rss_mb": round(baseline_mb, 1),
            "ratio_to_baseline": round(peak / baseline_mb, 2), "target_mb": 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--publish", type=int, default=20)
    ap.add_argument("--interval", type=float, default=2.0, help="poll interval of the feeds, seconds")
    ap.add_argument("--tick", type=float, default=0.25, help="service scheduler tick, seconds")
    ap.add_argument("--run", type=float, default=20.0, help="seconds the memory run lasts")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    result: dict[str, object] = {"benchmark": "latency", "cpus": os.cpu_count()}
    result["latency"] = measure_latency(args.publish, args.interval, args.tick)
    if not args.skip_memory:
        result["memory"] = measure_memory(args.items, args.run)
    print(json.dumps(result, indent=None, default=str))


if __name__ == "__main__":
    main()
