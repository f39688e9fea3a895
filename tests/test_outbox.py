"""The outbox: crash safety (SIGKILL mid-batch, restart: nothing lost, resends keep their ids), concurrent
workers never send one row twice, backoff, give-up, and the stats /metrics reads."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from datetime import timedelta
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller
from deliveryfixtures import ROOT_DIR, T0, World, config_text, http_receiver, make_config
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from test_email import SmtpHandler, free_port

from monitor.delivery import Outgoing, digest, outbox
from monitor.errors import DeliveryError
from monitor.storage import db
from monitor.storage.db import utcnow
from monitor.storage.tables import Delivery, DeliveryAttempt

pytestmark = pytest.mark.databases("sqlite", "postgresql")

SECRET = "whsec_" + base64.b64encode(b"crash-test-secret-crash-test-sec").decode()

WORKER = textwrap.dedent("""
    import asyncio, sys
    from datetime import datetime
    from monitor.storage import db
    from monitor.config import load_config
    from monitor.delivery import outbox

    config = load_config(sys.argv[1])
    engine = db.make_engine(config.settings.database_url)
    now = datetime.fromisoformat(sys.argv[2])
    report = asyncio.run(outbox.deliver_due(engine, config, now, worker_id=sys.argv[3], limit=1000,
                                            concurrency=1, lease_s=60))
    print("report", report.by_outcome(), flush=True)
""")


class SlowSmtp(SmtpHandler):
    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.data_seen.append(envelope.content)
        await asyncio.sleep(0.3)
        self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def test_sigkill_mid_batch_then_restart_loses_nothing_and_resends_with_the_same_ids(tmp_path, engine) -> None:
    n_hooks, n_mail = 8, 4
    channels = "".join(f'[[channels]]\nname = "hook{i}"\nkind = "webhook"\nurl_env = "CRASH_URL"\nsecret_env = "CRASH_SECRET"\n\n'
                       for i in range(n_hooks))
    subscribers = "".join(f'[[subscribers]]\nemail = "r{i}@example.org"\ncadence = "immediate"\n\n' for i in range(n_mail))
    smtp_handler = SlowSmtp()
    port = free_port()
    controller = Controller(smtp_handler, hostname="127.0.0.1", port=port)
    controller.start()
    third = threading.Event()
    seen = Counter[str]()

    def on_request(rec):  # type: ignore[no-untyped-def]
        seen[rec.headers["webhook-id"]] += 1
        if sum(seen.values()) >= 3:
            third.set()

    try:
        with http_receiver(delay_s=0.3, on_request=on_request) as rx:
            smtp = f'[settings.smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\ntimeout_s = 5\n'
            config = make_config(tmp_path, channels + subscribers + smtp, engine=engine)
            cfg_file = tmp_path / "feeds.toml"
            cfg_file.write_text(config_text(tmp_path, channels + subscribers + smtp, engine=engine))  # = config
            World(engine).new_story("s1", "doha-talks", "Talks resume")
            built = digest.build_due_digests(engine, config, T0, secret_key="k")
            assert len(built) == n_hooks + n_mail
            env = {**os.environ, "CRASH_URL": rx.url, "CRASH_SECRET": SECRET, "PYTHONPATH": str(ROOT_DIR)}
            script = tmp_path / "worker.py"
            script.write_text(WORKER)

            first = subprocess.Popen([sys.executable, str(script), str(cfg_file), T0.isoformat(), "first"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert third.wait(60), "the worker never reached the third webhook"
            os.kill(first.pid, signal.SIGKILL)  # the third request is in flight: its outcome is never recorded
            first.wait(10)
            with Session(engine) as s:
                statuses = Counter(s.scalars(select(Delivery.status)))
            assert statuses["sending"] == 1 and statuses["sent"] >= 2 and statuses["pending"] >= 1

            # Restart after the dead worker's lease has expired.
            later = T0 + timedelta(seconds=61)
            second = subprocess.run([sys.executable, str(script), str(cfg_file), later.isoformat(), "second"], env=env,
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 0, second.stdout + second.stderr

            with Session(engine) as s:
                rows = list(s.scalars(select(Delivery)))
                lost = list(s.scalars(select(DeliveryAttempt).where(DeliveryAttempt.outcome == "lost")))
            assert {d.status for d in rows} == {"sent"}
            keys = {d.idempotency_key for d in rows}
            received_hooks = [r.headers["webhook-id"] for r in rx.requests]
            received_mail = [message_from_bytes(raw, policy=policy.default)["Message-ID"] for _, raw in smtp_handler.messages]
            # None lost: every delivery's id reached its receiver.
            assert set(received_hooks) | set(received_mail) == keys
            # The one in flight at the kill was sent again, with the same id (and the same body).
            dupes = [k for k, n in Counter(received_hooks + received_mail).items() if n > 1]
            assert len(dupes) == 1 and len(lost) == 1
            bodies = {r.body for r in rx.requests if r.headers["webhook-id"] == dupes[0]}
            assert len(bodies) == 1
    finally:
        controller.stop()


@contextlib.contextmanager
def webhook_rows(tmp_path, engine, monkeypatch, n: int, delay_s: float):  # type: ignore[no-untyped-def]
    """`n` webhook channels on one real receiver (answering after `delay_s`), each with one pending digest
    delivery: yields (config, receiver)."""
    channels = "".join(f'[[channels]]\nname = "c{i}"\nkind = "webhook"\nurl_env = "W_URL"\nsecret_env = "W_SECRET"\n\n'
                       for i in range(n))
    with http_receiver(delay_s=delay_s) as rx:
        monkeypatch.setenv("W_URL", rx.url)
        monkeypatch.setenv("W_SECRET", SECRET)
        config = make_config(tmp_path, channels, engine=engine)
        World(engine).new_story("s1", "icc", "ICC ruling")
        digest.build_due_digests(engine, config, T0, secret_key="k")
        yield config, rx


async def test_two_workers_never_send_the_same_row(tmp_path, engine, monkeypatch) -> None:
    with webhook_rows(tmp_path, engine, monkeypatch, 12, delay_s=0.05) as (config, rx):
        reports = await asyncio.gather(*(outbox.deliver_due(engine, config, T0, worker_id=f"w{i}", concurrency=3)
                                         for i in range(3)))
        ids = [r.headers["webhook-id"] for r in rx.requests]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert sum(r.sent for r in reports) == 12


@pytest.mark.databases("postgresql")  # SQLite has no row locks: its claims queue on BEGIN IMMEDIATE (test above)
def test_a_row_another_worker_is_claiming_is_skipped_not_waited_for(tmp_path, engine) -> None:
    """While another worker holds the most overdue row in its claim transaction (SELECT ... FOR UPDATE SKIP
    LOCKED, as claim_one does), a second worker claims the next row at once instead of queueing behind it."""
    config = make_config(tmp_path, "".join(f'[[subscribers]]\nemail = "r{i}@example.org"\ncadence = "immediate"\n'
                                           for i in range(3)), engine=engine)
    World(engine).new_story("s1", "icc", "ICC ruling")
    digest.build_due_digests(engine, config, T0, secret_key="k")
    got: list[int] = []

    def second_worker() -> None:
        claim = outbox.claim_one(engine, T0, "b", lease_s=60)
        if claim is not None:
            got.append(claim.message.delivery_id)

    with db.write_transaction(engine) as s:
        held = s.scalar(select(Delivery.id).where(Delivery.status == "pending").order_by(Delivery.next_attempt_at, Delivery.id)
                        .limit(1).with_for_update(skip_locked=True))
        t = threading.Thread(target=second_worker)
        t.start()
        t.join(5)
        assert not t.is_alive() and got and got[0] != held
    t.join(30)
    with Session(engine) as s:
        assert s.get_one(Delivery, held).status == "pending" and s.get_one(Delivery, got[0]).status == "sending"


async def test_a_long_pass_does_not_hand_out_leases_that_already_expired(tmp_path, engine, monkeypatch) -> None:
    """Worker A sends 5 rows one by one, 0.5 s each, with 2 s leases: its last claim is made 2 s into the pass.
    Worker B starts then. Had A stamped that lease from its pass's start, B would see it expired and send
    the row a second time while A is still sending it."""
    with webhook_rows(tmp_path, engine, monkeypatch, 5, delay_s=0.5) as (config, rx):

        async def late_worker() -> outbox.DeliveryReport:
            await asyncio.sleep(2.2)
            return await outbox.deliver_due(engine, config, T0 + timedelta(seconds=2.2), worker_id="b",
                                            concurrency=1, lease_s=2)

        a, b = await asyncio.gather(
            outbox.deliver_due(engine, config, T0, worker_id="a", concurrency=1, lease_s=2), late_worker())
        ids = Counter(r.headers["webhook-id"] for r in rx.requests)
    assert len(ids) == 5 and set(ids.values()) == {1}, ids
    assert a.sent + b.sent == 5


class Flaky:
    def __init__(self) -> None:
        self.calls = 0

    async def send(self, message: Outgoing) -> str:
        self.calls += 1
        raise DeliveryError("connection reset", code="reset")


async def test_transient_failures_retry_on_a_schedule_spanning_days_then_give_up_visibly(tmp_path, engine,
                                                                                         caplog) -> None:
    config = make_config(tmp_path, '[[subscribers]]\nemail = "a@example.org"\ncadence = "immediate"\n', engine=engine)
    World(engine).new_story("s1", "icc", "ICC ruling")
    digest.build_due_digests(engine, config, T0, secret_key="k")
    flaky = Flaky()
    now = T0
    waits = []
    for _ in range(40):
        await outbox.deliver_due(engine, config, now, worker_id="w", senders={"email": flaky}, rng=random.Random(1))
        with Session(engine) as s:
            d = s.scalars(select(Delivery)).one()
        if d.status == "failed":
            break
        waits.append((d.next_attempt_at - now.replace(tzinfo=None)).total_seconds())
        now = now + timedelta(seconds=waits[-1])
    # 5 s, 5 min, 30 min, 2 h, 5 h, then every 10 h (+-10%), until the row is 5 days old.
    for wait, planned in zip(waits, [5, 300, 1800, 7200, 18000] + [36000] * 30, strict=False):
        assert planned * 0.9 <= wait <= planned * 1.1
    assert d.status == "failed" and "gave up after" in (d.last_error or "") and "connection reset" in d.last_error
    assert outbox.GIVE_UP_AFTER <= now - T0 < outbox.GIVE_UP_AFTER + timedelta(hours=11)
    assert flaky.calls == len(waits) + 1 >= 14
    with Session(engine) as s:
        outcomes = list(s.scalars(select(DeliveryAttempt.outcome).order_by(DeliveryAttempt.id)))
    assert outcomes == ["retry"] * len(waits) + ["failed"]
    failed_lines = [r for r in caplog.records if r.levelname == "ERROR" and "failed for good" in r.getMessage()]
    assert len(failed_lines) == 1 and getattr(failed_lines[0], "delivery_id", None) == d.id
    assert "monitor deliveries retry" in failed_lines[0].getMessage()


async def test_a_six_hour_smtp_outage_loses_no_digest(tmp_path, engine) -> None:
    """A real SMTP server (aiosmtpd) is down for 6 simulated hours while a story arrives every hour for four
    immediate subscribers; the outbox runs every 5 minutes throughout. Once the server is back, every
    digest reaches it exactly once, and none is left failed."""
    port = free_port()
    subscribers = "".join(f'[[subscribers]]\nemail = "r{i}@example.org"\ncadence = "immediate"\n' for i in range(4))
    smtp = f'[settings.smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\ntimeout_s = 5\n'
    config = make_config(tmp_path, subscribers + smtp, engine=engine)
    world = World(engine)
    handler = SmtpHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    back_at = T0 + timedelta(hours=6)
    now, step = T0, timedelta(minutes=5)
    accepted_at: list = []
    try:
        async with outbox.open_senders(config) as senders:  # one set for the whole run, as the service keeps
            while now < T0 + timedelta(days=2):
                if now < back_at and (now - T0) % timedelta(hours=1) == timedelta(0):
                    world.new_story(f"s{now.hour}", "icc", f"Story at {now:%H:%M}", at=now)
                digest.build_due_digests(engine, config, now, secret_key="k")
                if now == back_at:
                    controller.start()
                before = len(handler.messages)
                await outbox.deliver_due(engine, config, now, worker_id="w", senders=senders, limit=100,
                                         rng=random.Random(3))
                if len(handler.messages) > before:
                    accepted_at.append(now)
                with Session(engine) as s:
                    if now >= back_at and not s.scalar(select(Delivery.id).where(Delivery.status != "sent").limit(1)):
                        break
                now += step
    finally:
        controller.stop()
    with Session(engine) as s:
        rows = list(s.scalars(select(Delivery)))
        refused = s.scalar(select(func.count()).select_from(DeliveryAttempt).where(DeliveryAttempt.outcome == "retry"))
    assert len(rows) == 6 * 4 and {d.status for d in rows} == {"sent"}
    received = Counter(message_from_bytes(raw, policy=policy.default)["Message-ID"] for _, raw in handler.messages)
    assert set(received) == {d.idempotency_key for d in rows} and set(received.values()) == {1}
    assert refused >= 24  # every digest did meet the outage
    # The backlog went out together, as soon as the first retry found the server back (within the 2 h slot).
    assert accepted_at[0] > back_at and accepted_at[-1] - accepted_at[0] <= step
    assert accepted_at[0] - back_at <= timedelta(hours=2, minutes=15)


async def test_a_receiver_error_body_with_nul_characters_is_recorded(tmp_path, engine) -> None:
    """The receiver's reply goes into the recorded error; a NUL in it (a binary error page) must not make
    the outcome unrecordable (PostgreSQL text cannot hold NUL), which would leave the row `sending`."""
    channel = '[[channels]]\nname = "c"\nkind = "webhook"\nurl_env = "W_URL"\nsecret_env = "W_SECRET"\n'
    with http_receiver(replies=[(500, {"content-type": "text/plain"}, b"boom\x00\x1f\x8b\x08\x00 down")]) as rx:
        os.environ["W_URL"], os.environ["W_SECRET"] = rx.url, SECRET
        try:
            config = make_config(tmp_path, channel, engine=engine)
            World(engine).new_story("s1", "icc", "ICC ruling")
            digest.build_due_digests(engine, config, T0, secret_key="k")
            report = await outbox.deliver_due(engine, config, T0, worker_id="w")
        finally:
            del os.environ["W_URL"], os.environ["W_SECRET"]
    assert report.retried == 1
    with Session(engine) as s:
        d = s.scalars(select(Delivery)).one()
        attempt = s.scalars(select(DeliveryAttempt)).one()
    assert d.status == "pending" and "boom" in (d.last_error or "") and "down" in (d.last_error or "")
    assert attempt.outcome == "retry" and attempt.code == "500" and "boom" in (attempt.error or "")


def test_backoff_has_jitter_within_bounds() -> None:
    rng = random.Random(7)
    for attempt, planned in ((1, 5), (3, 1800), (6, 36000), (20, 36000)):
        values = [outbox.backoff_s(attempt, rng) for _ in range(200)]
        assert all(planned * 0.9 <= v <= planned * 1.1 for v in values) and len(set(values)) > 150


async def test_stats_report_depth_age_and_status_counts(tmp_path, engine) -> None:
    config = make_config(tmp_path, "".join(f'[[subscribers]]\nemail = "r{i}@example.org"\ncadence = "immediate"\n' for i in range(3)), engine=engine)
    World(engine).new_story("s1", "icc", "ICC ruling")
    digest.build_due_digests(engine, config, T0, secret_key="k")
    with Session(engine) as s:
        st = outbox.stats(s, T0 + timedelta(minutes=10))
    assert st.depth == 3 and st.oldest_pending_age_s == 600 and st.by_status == {"pending": 3}
    await outbox.deliver_due(engine, config, T0, worker_id="w", limit=2)  # .eml files
    with Session(engine) as s:
        st = outbox.stats(s, T0 + timedelta(minutes=10))
    assert st.depth == 1 and st.by_status == {"pending": 1, "sent": 2}


async def test_unsubscribing_cancels_what_is_still_in_the_outbox(tmp_path, engine) -> None:
    config = make_config(tmp_path, '[[subscribers]]\nemail = "a@example.org"\ncadence = "immediate"\n', engine=engine)
    World(engine).new_story("s1", "icc", "ICC ruling")
    digest.build_due_digests(engine, config, T0, secret_key="k")
    from monitor.delivery import unsubscribe
    from monitor.storage.tables import Subscription
    with Session(engine) as s, s.begin():
        sub = s.scalars(select(Subscription)).one()
        assert unsubscribe.unsubscribe(s, sub.id, T0) is True
    report = await outbox.deliver_due(engine, config, T0, worker_id="w")
    assert report.cancelled == 1 and report.sent == 0
    assert not list(tmp_path.glob("outbox/*.eml"))


def test_deliver_once_cli_builds_and_sends(tmp_path, engine) -> None:
    from click.testing import CliRunner

    from monitor.cli import main
    cfg = tmp_path / "feeds.toml"
    cfg.write_text(config_text(tmp_path, '[[subscribers]]\nemail = "a@example.org"\ncadence = "immediate"\n',
                               engine=engine))
    World(engine).new_story("s1", "icc", "ICC ruling", at=utcnow())  # the CLI runs on the real clock
    runner = CliRunner()
    preview = runner.invoke(main, ["--config", str(cfg), "digest", "preview", "--subscriber", "a@example.org",
                                   "--out", str(tmp_path / "preview")])
    assert preview.exit_code == 0, preview.output
    assert (tmp_path / "preview" / "digest.eml").exists() and "ICC ruling" in (tmp_path / "preview" / "digest.txt").read_text()
    result = runner.invoke(main, ["--config", str(cfg), "deliver", "--once"])
    assert result.exit_code == 0, result.output
    assert "digests built: 1" in result.output and "sent: 1" in result.output
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1
    listing = runner.invoke(main, ["--config", str(cfg), "deliveries", "list"])
    assert "a@example.org" in listing.output and "sent" in listing.output
    again = runner.invoke(main, ["--config", str(cfg), "digest", "preview", "--subscriber", "a@example.org"])
    assert "nothing new" in again.output


async def test_a_row_whose_workers_keep_dying_is_given_up_visibly(tmp_path, engine) -> None:
    config = make_config(tmp_path, '[[subscribers]]\nemail = "a@example.org"\ncadence = "immediate"\n', engine=engine)
    World(engine).new_story("s1", "icc", "ICC ruling")
    digest.build_due_digests(engine, config, T0, secret_key="k")
    now = T0
    for _ in range(outbox.MAX_LOST_ATTEMPTS):  # claimed, then the worker "dies": the lease simply expires
        assert outbox.claim_one(engine, now, "doomed", lease_s=60) is not None
        now += timedelta(seconds=61)
    report = await outbox.deliver_due(engine, config, now, worker_id="w", senders={"email": Flaky()})
    assert report.failed == 1
    with Session(engine) as s:
        d = s.scalars(select(Delivery)).one()
        outcomes = Counter(s.scalars(select(DeliveryAttempt.outcome)))
    assert d.status == "failed" and "without an outcome" in (d.last_error or "")
    assert outcomes == {"lost": outbox.MAX_LOST_ATTEMPTS, "failed": 1}


async def test_a_failed_delivery_is_visible_then_retried_from_the_cli(tmp_path, engine, caplog) -> None:
    """A permanent SMTP refusal ends the row `failed`: an ERROR line and the monitor_deliveries_failed gauge say
    so; `monitor deliveries retry ID` (recorded: who, when) sends the same message again."""
    from click.testing import CliRunner

    from monitor.app.metrics import Metrics
    from monitor.cli import main
    from monitor.storage.tables import AuditEntry

    handler = SmtpHandler(data_replies=["550 5.2.1 mailbox disabled"])
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    extra = ('[[subscribers]]\nemail = "a@example.org"\ncadence = "immediate"\n'
             f'[settings.smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\ntimeout_s = 5\n')
    cfg = tmp_path / "feeds.toml"
    cfg.write_text(config_text(tmp_path, extra, engine=engine))
    config = make_config(tmp_path, extra, engine=engine)
    metrics = Metrics(engine, now=utcnow)
    try:
        World(engine).new_story("s1", "icc", "ICC ruling")
        digest.build_due_digests(engine, config, T0, secret_key="k")
        report = await outbox.deliver_due(engine, config, T0, worker_id="w")
        assert report.failed == 1
        with Session(engine) as s:
            d = s.scalars(select(Delivery)).one()
        assert d.status == "failed" and "550" in (d.last_error or "")
        line = next(r for r in caplog.records if r.levelname == "ERROR" and "failed for good" in r.getMessage())
        assert getattr(line, "delivery_id", None) == d.id and f"monitor deliveries retry {d.id}" in line.getMessage()
        assert 'monitor_deliveries_failed{channel="email"} 1.0' in metrics.render().decode()

        runner = CliRunner()
        listed = runner.invoke(main, ["--config", str(cfg), "deliveries", "list", "--failed"])
        assert str(d.id) in listed.output and "550" in listed.output
        bad = runner.invoke(main, ["--config", str(cfg), "deliveries", "retry"])
        assert bad.exit_code != 0 and "--failed" in bad.output
        retried = runner.invoke(main, ["--config", str(cfg), "deliveries", "retry", str(d.id), "--by", "alice"])
        assert retried.exit_code == 0 and "1 delivery queued again" in retried.output, retried.output
        again = runner.invoke(main, ["--config", str(cfg), "deliveries", "retry", str(d.id)])
        assert again.exit_code != 0 and "is pending, not failed" in again.output
        assert 'monitor_deliveries_failed{channel="email"} 0.0' in metrics.render().decode()
        report = await outbox.deliver_due(engine, config, utcnow() + timedelta(seconds=1), worker_id="w")
        assert report.sent == 1
    finally:
        controller.stop()
    sent_ids = {message_from_bytes(raw, policy=policy.default)["Message-ID"] for _, raw in handler.messages}
    assert sent_ids == {d.idempotency_key}  # the same message, the same Message-ID
    with Session(engine) as s:
        assert s.scalars(select(Delivery)).one().status == "sent"
        audit = s.scalars(select(AuditEntry)).one()
    assert (audit.actor, audit.action, audit.target) == ("alice", "delivery.retry", f"delivery {d.id}")


async def test_retry_failed_queues_every_failed_delivery_with_a_fresh_retry_span(tmp_path, engine) -> None:
    from click.testing import CliRunner

    from monitor.cli import main

    extra = "".join(f'[[subscribers]]\nemail = "r{i}@example.org"\ncadence = "immediate"\n' for i in range(3))
    cfg = tmp_path / "feeds.toml"
    cfg.write_text(config_text(tmp_path, extra, engine=engine))
    config = make_config(tmp_path, extra, engine=engine)
    World(engine).new_story("s1", "icc", "ICC ruling")
    digest.build_due_digests(engine, config, T0, secret_key="k")
    late = T0 + outbox.GIVE_UP_AFTER
    report = await outbox.deliver_due(engine, config, late, worker_id="w", senders={"email": Flaky()})
    assert report.failed == 3  # 5 days old: given up at the first transient failure
    result = CliRunner().invoke(main, ["--config", str(cfg), "deliveries", "retry", "--failed"])
    assert result.exit_code == 0 and "3 deliveries queued again" in result.output, result.output
    # The span restarts: a transient failure now retries instead of giving up at once.
    report = await outbox.deliver_due(engine, config, utcnow() + timedelta(seconds=1), worker_id="w",
                                      senders={"email": Flaky()})
    assert report.retried == 3 and report.failed == 0
    with Session(engine) as s:
        assert {d.status for d in s.scalars(select(Delivery))} == {"pending"}


def test_deliveries_list_says_when_it_shows_only_some(tmp_path, engine) -> None:
    from click.testing import CliRunner

    from monitor.cli import main

    extra = "".join(f'[[subscribers]]\nemail = "r{i}@example.org"\ncadence = "immediate"\n' for i in range(7))
    cfg = tmp_path / "feeds.toml"
    cfg.write_text(config_text(tmp_path, extra, engine=engine))
    World(engine).new_story("s1", "icc", "ICC ruling")
    digest.build_due_digests(engine, make_config(tmp_path, extra, engine=engine), T0, secret_key="k")
    runner = CliRunner()
    some = runner.invoke(main, ["--config", str(cfg), "deliveries", "list", "--limit", "5"])
    assert some.exit_code == 0 and "showing the newest 5 of 7 deliveries; use --limit N or --all" in some.output
    assert sum("@example.org" in line for line in some.output.splitlines()) == 5
    every = runner.invoke(main, ["--config", str(cfg), "deliveries", "list", "--all"])
    assert "showing" not in every.output and sum("@example.org" in line for line in every.output.splitlines()) == 7
