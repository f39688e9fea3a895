"""Polling throughput: N feeds (default 2,000) of 20 real items each, served from a fast local server.

Passes, each over every feed, with a fresh SQLite database per repeat:
  first      200 + parse + store (every item new)
  304        conditional GET answered 304 Not Modified
  unchanged  200 with the same body and no validators sent: recognised by sha256, not re-parsed
Reports feeds/s (median of --repeats; with --compare-feedparser also the passes with every feed read by
feedparser instead of monitor.ingest.fastfeed, the reader before it), peak memory (max RSS of this process), which server served (nginx from
Debian's package when /usr/sbin/nginx exists, else an aiohttp server in a separate process), and with
`--peer rss2email` the same first and 304 passes by rss2email (`r2e run --no-send`, installed in a separate
temporary venv) and our ratios to it.

    .venv/bin/python bench/poll.py [--feeds 2000] [--repeats 3] [--peer rss2email]

Prints one JSON object (last line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import lzma
import multiprocessing
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Executor
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import update

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "stream" / "items_2023_worldnews.jsonl.xz"
NGINX = "/usr/sbin/nginx"


def build_documents(data: Path, n_feeds: int, per_feed: int) -> dict[str, bytes]:
    """n_feeds RSS documents of per_feed real consecutive items each (path -> body)."""
    from monitor.lab.replay import ReplayFeeds, _item

    items = []
    need = n_feeds * per_feed
    with lzma.open(data, "rt", encoding="utf-8") if data.suffix == ".xz" else open(data, encoding="utf-8") as fh:
        for line in fh:
            it = _item(line)
            if it is None:
                continue
            items.append(it)
            if len(items) >= need:
                break
    if len(items) < need:
        raise SystemExit(f"{data}: only {len(items)} items, need {need}")
    from dataclasses import replace

    relabelled = [replace(it, feed=f"https://bench.example/feed{i // per_feed}") for i, it in enumerate(items)]
    feeds = ReplayFeeds(relabelled, window=per_feed)
    end = max(it.published for it in relabelled)
    docs = {}
    for i, (slug, f) in enumerate(feeds.feeds.items()):
        body, _, _ = feeds.document(slug, end)
        docs[f"/f{int(f.url.rsplit('feed', 1)[1]):05d}.xml"] = body
        del i
    return docs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxServer:
    kind = "nginx"

    def __init__(self, root: Path, port: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        conf = self.dir / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {self.dir}/body; proxy_temp_path {self.dir}/proxy; fastcgi_temp_path {self.dir}/fcgi;
  uwsgi_temp_path {self.dir}/uwsgi; scgi_temp_path {self.dir}/scgi;
  keepalive_requests 100000;
  types {{ application/rss+xml xml; }}
  server {{ listen 127.0.0.1:{port}; root {root}; etag on; }}
}}
""")
        self.proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(self.dir)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        _wait_port(port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _python_server(docs: dict[str, bytes], port: int) -> None:
    import hashlib

    from aiohttp import web

    meta = {p: (b, '"' + hashlib.sha256(b).hexdigest()[:16] + '"') for p, b in docs.items()}
    lm = "Mon, 01 Jan 2024 00:00:00 GMT"

    async def handle(request: web.Request) -> web.Response:
        entry = meta.get(request.path)
        if entry is None:
            return web.Response(status=404)
        body, etag = entry
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag, "Last-Modified": lm})
        return web.Response(body=body, headers={"ETag": etag, "Last-Modified": lm, "Content-Type": "application/rss+xml"})

    app = web.Application()
    app.router.add_get("/{name}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024)


class PythonServer:
    kind = "aiohttp (python, separate process)"

    def __init__(self, docs: dict[str, bytes], port: int) -> None:
        self.proc = multiprocessing.get_context("spawn").Process(target=_python_server, args=(docs, port), daemon=True)
        self.proc.start()
        _wait_port(port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


def _wait_port(port: int, timeout: float = 20) -> None:
    t = time.time()
    while time.time() - t < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench server did not start on port {port}")


async def run_ours(urls: list[str], concurrency: int, executor: Executor | None, workdir: Path,
                   fast_reader: bool = True) -> dict[str, float]:
    from monitor.config import FeedConfig, Settings
    from monitor.ingest.poll import poll_once
    from monitor.storage import db, store
    from monitor.storage.tables import Feed

    dbfile = workdir / f"bench-{time.time_ns()}.db"
    settings = Settings(database_url=f"sqlite:///{dbfile}", allow_private_networks=True, retention_days=100_000,
                        max_concurrency=concurrency, per_host_concurrency=concurrency, fetch_timeout_s=60,
                        fast_feed_reader=fast_reader)
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    now = datetime.now(UTC)
    with db.write_transaction(engine) as s:
        store.sync_feeds(s, [FeedConfig(url=u) for u in urls], now)
    out: dict[str, float] = {}
    n = len(urls)
    r1 = await poll_once(engine, settings, all_feeds=True, limit=n, parse_executor=executor)
    out["first"] = n / r1.elapsed_s
    out["first_new_items"] = r1.totals["new_items"]
    out["first_ok"] = r1.count("ok")
    r2 = await poll_once(engine, settings, all_feeds=True, limit=n, parse_executor=executor)
    out["not_modified"] = n / r2.elapsed_s
    out["not_modified_count"] = r2.count("not_modified")
    with db.write_transaction(engine) as s:  # forget the validators: the server must send the body again
        s.execute(update(Feed).values(etag=None, last_modified=None))
    r3 = await poll_once(engine, settings, all_feeds=True, limit=n, parse_executor=executor)
    out["unchanged"] = n / r3.elapsed_s
    out["unchanged_count"] = r3.count("unchanged")
    engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dbfile}{suffix}").unlink(missing_ok=True)
    return out


async def transport_baseline(urls: list[str], concurrency: int) -> dict[str, float]:
    """The ceiling: the same httpx-aiohttp transport fetching every URL (200, then 304 with the ETag), with
    no database, parsing or scheduling."""
    import aiohttp
    import httpx
    from httpx_aiohttp import AiohttpTransport

    transport = AiohttpTransport(client=aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                                              auto_decompress=False))
    sem = asyncio.Semaphore(concurrency)
    etags: dict[str, str] = {}
    ext = {"timeout": {"connect": 60, "read": 60, "write": 60, "pool": 60}}

    async def one(u: str) -> None:
        async with sem:
            headers = {"If-None-Match": etags[u]} if u in etags else {}
            r = await transport.handle_async_request(httpx.Request("GET", u, headers=headers, extensions=ext))
            try:
                async for _ in r.aiter_bytes():
                    pass
            finally:
                await r.aclose()
            etags[u] = r.headers.get("etag", "")

    out = {}
    for name in ("get_200", "get_304"):
        t = time.perf_counter()
        await asyncio.gather(*(one(u) for u in urls))
        out[name] = len(urls) / (time.perf_counter() - t)
    await transport.aclose()
    return out


def rss2email_venv() -> Path | None:
    """A temporary venv with rss2email 3.14 (never the project's .venv)."""
    venv = Path(tempfile.gettempdir()) / "r2e-venv"
    r2e = venv / "bin" / "r2e"
    if r2e.exists():
        return r2e
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "rss2email==3.14"], check=True,
                       capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError):
        return None
    return r2e if r2e.exists() else None


def run_rss2email(r2e: Path, urls: list[str], workdir: Path) -> dict[str, float]:
    d = Path(tempfile.mkdtemp(prefix="bench-r2e-", dir=workdir))
    cfg, data = d / "r2e.cfg", d / "r2e.json"
    lines = ["[DEFAULT]", "to = bench@example.com", "from = bench@example.com", ""]
    for i, u in enumerate(urls):
        lines += [f"[feed.f{i}]", f"url = {u}", ""]
    cfg.write_text("\n".join(lines))
    out: dict[str, float] = {}
    for name in ("first", "not_modified"):
        t = time.perf_counter()
        p = subprocess.run([str(r2e), "-c", str(cfg), "-d", str(data), "run", "--no-send"], capture_output=True,
                           text=True, timeout=1800)
        out[name] = len(urls) / (time.perf_counter() - t)
        if p.returncode != 0:
            out[f"{name}_error"] = p.stderr[-500:]  # type: ignore[assignment]
    shutil.rmtree(d, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feeds", type=int, default=2000)
    ap.add_argument("--items", type=int, default=20, help="items per feed")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--server", choices=["auto", "nginx", "python"], default="auto")
    ap.add_argument("--parse-procs", type=int, default=0,
                    help="parse in monitor.ingest.poll.parse_pool(N) (0: inline on the event loop, poll_once's default)")
    ap.add_argument("--peer", choices=["rss2email"], default=None)
    ap.add_argument("--compare-feedparser", action="store_true",
                    help="also run the passes with fast_feed_reader = false (every feed through feedparser)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    logging.basicConfig(level=logging.ERROR)  # per-feed warnings would swamp the output

    docs = build_documents(args.data, args.feeds, args.items)
    workdir = Path(tempfile.mkdtemp(prefix="bench-poll-"))
    port = free_port()
    use_nginx = args.server == "nginx" or (args.server == "auto" and os.path.exists(NGINX))
    if use_nginx:
        root = workdir / "www"
        root.mkdir()
        os.chmod(workdir, 0o755)  # nginx workers run as an unprivileged user
        os.chmod(root, 0o755)
        for path, body in docs.items():
            (root / path.lstrip("/")).write_bytes(body)
        server: NginxServer | PythonServer = NginxServer(root, port)
    else:
        server = PythonServer(docs, port)
    urls = [f"http://127.0.0.1:{port}{p}" for p in sorted(docs)]
    from monitor.ingest.poll import parse_pool

    executor = parse_pool(args.parse_procs) if args.parse_procs else None
    try:
        runs, baselines, fp_runs = [], [], []
        for _ in range(args.repeats):  # interleaved, so all see the same machine load
            baselines.append(asyncio.run(transport_baseline(urls, args.concurrency)))
            runs.append(asyncio.run(run_ours(urls, args.concurrency, executor, workdir)))
            if args.compare_feedparser:
                fp_runs.append(asyncio.run(run_ours(urls, args.concurrency, executor, workdir, fast_reader=False)))
        peer = None
        if args.peer == "rss2email":
            r2e = rss2email_venv()
            peer = {"available": False} if r2e is None else {"available": True, **run_rss2email(r2e, urls, workdir)}
    finally:
        server.stop()
        if executor is not None:
            executor.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    def med(key: str, rows: list[dict[str, float]] | None = None) -> float:
        return round(statistics.median(r[key] for r in (rows or runs)), 1)

    result: dict[str, object] = {
        "feeds": args.feeds, "items_per_feed": args.items, "concurrency": args.concurrency,
        "server": server.kind, "transport": "httpx + httpx-aiohttp", "repeats": args.repeats,
        "parse": f"process pool x{args.parse_procs}" if args.parse_procs else "inline (event loop)",
        "cpus": os.cpu_count(),
        "first_pass_feeds_per_s": med("first"),
        "not_modified_pass_feeds_per_s": med("not_modified"),
        "unchanged_pass_feeds_per_s": med("unchanged"),
        "transport_only_200_feeds_per_s": med("get_200", baselines),
        "transport_only_304_feeds_per_s": med("get_304", baselines),
        "not_modified_pass_vs_transport_only": round(med("not_modified") / med("get_304", baselines), 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "runs": [{k: round(v, 1) for k, v in r.items()} for r in runs],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_scope": "this process" + (" (parse-pool workers not included)" if args.parse_procs else ""),
        "targets": {"not_modified_pass_feeds_per_s": 2500, "unchanged_pass_feeds_per_s": 2000,
                    "first_pass_vs_rss2email": 5.0},
    }
    if fp_runs:
        result["feedparser_only"] = {"first_pass_feeds_per_s": med("first", fp_runs),
                                     "runs": [round(r["first"], 1) for r in fp_runs]}
        result["first_pass_vs_feedparser_only"] = round(med("first") / med("first", fp_runs), 2)
    if peer is not None:
        result["rss2email"] = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in peer.items()}
        if peer.get("available"):
            result["ratio_first_vs_rss2email"] = round(med("first") / peer["first"], 2)
            result["ratio_not_modified_vs_rss2email"] = round(med("not_modified") / peer["not_modified"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
