"""Self sign-up and suppression: double opt-in (unconfirmed addresses get nothing), the rate limit, the same
answer for a known address, and bounces (an SMTP 5xx to RCPT at send on a real aiosmtpd server, or a DSN /
complaint report fed to `monitor subscribers bounce`) stop every digest to the address and are listed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from email import message_from_bytes, policy
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner
from deliveryfixtures import T0, Clock, World, config_text, make_config
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.testclient import TestClient
from test_email import SmtpHandler, free_port

from monitor.app.subscriber import SubscriberContext, routes, signup
from monitor.cli import main
from monitor.delivery import digest, outbox, unsubscribe
from monitor.storage.tables import Delivery, DeliveryAttempt, Subscription, Suppression

pytestmark = pytest.mark.databases("sqlite", "postgresql")

KEY = "signup-key"



@pytest.fixture
def site(tmp_path, engine):  # type: ignore[no-untyped-def]
    config = make_config(tmp_path, '[[subscribers]]\nemail = "known@example.org"\ncadence = "immediate"\n',
                         settings="self_signup = true\nsignup_limit_per_hour = 3", engine=engine)
    sent: list[tuple[str, bytes]] = []

    async def send_mail(address: str, message: bytes) -> None:
        sent.append((address, message))

    clock = Clock()
    ctx = SubscriberContext(engine=engine, config=lambda: config, secret_key=KEY, clock=clock, send_mail=send_mail)
    client = TestClient(Starlette(routes=routes(ctx)), base_url="https://monitor.example.org", follow_redirects=False)
    return config, client, clock, sent


def sign_up(client: TestClient, email: str, topics: tuple[str, ...] = ("icc",), client_ip: str | None = None):  # type: ignore[no-untyped-def]
    page = client.get("/signup")
    token = re.search(r'name="form_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    return client.post("/signup", data={"form_token": token, "email": email, "topics": list(topics)})


def digest_targets(engine) -> list[str]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return list(s.scalars(select(Delivery.target).order_by(Delivery.id)))


def test_double_opt_in_unconfirmed_get_nothing(engine, site) -> None:
    config, client, clock, sent = site
    assert client.get("/signup").status_code == 200
    r = sign_up(client, "New.Reader@Example.org")
    assert r.status_code == 200 and "Check your inbox" in r.text
    [(address, raw)] = sent
    assert address == "new.reader@example.org"
    mail = message_from_bytes(raw, policy=policy.default)
    assert mail["Subject"] == "Confirm your monitor subscription"
    confirm = re.search(r"(https://monitor\.example\.org/signup/confirm/\S+)", mail.get_content()).group(1)  # type: ignore[union-attr]
    # Unconfirmed: alerts come and digests go out, but not to this address.
    World(engine).new_story("s1", "icc", "ICC prosecutor seeks arrest warrants", at=T0)
    digest.build_due_digests(engine, config, T0, secret_key=KEY)
    digest.build_due_digests(engine, config, T0 + timedelta(days=1, hours=3), secret_key=KEY)
    assert "new.reader@example.org" not in digest_targets(engine)
    # GET shows a button and confirms nothing; the POST confirms.
    path = urlsplit(confirm).path
    page = client.get(path)
    assert "Yes, send me digests" in page.text
    assert client.post(path, data={}).status_code == 400  # no form token: refused
    clock.now = T0 + timedelta(days=1, hours=4)
    token = re.search(r'name="form_token" value="([^"]+)"', client.get(path).text).group(1)  # type: ignore[union-attr]
    done = client.post(path, data={"form_token": token})
    assert done.status_code == 200 and "You are subscribed" in done.text
    assert "/preferences/" in done.text
    # Confirmed: the next daily digest (08:00 UTC) carries what is alerted from now on, for the chosen topics.
    World(engine).new_story("s2", "icc", "ICC judges confirm charges", at=clock.now)
    World(engine).new_story("s3", "doha-talks", "Doha talks resume", at=clock.now)
    digest.build_due_digests(engine, config, clock.now, secret_key=KEY)  # schedules the new subscription
    digest.build_due_digests(engine, config, T0 + timedelta(days=2, hours=2, minutes=1), secret_key=KEY)
    with Session(engine) as s:
        raw = s.scalars(select(Delivery.payload).where(Delivery.target == "new.reader@example.org")).one()
    text = message_from_bytes(raw, policy=policy.default).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "ICC judges confirm charges" in text and "ICC prosecutor" not in text and "Doha talks resume" not in text
    # An expired confirmation link says so.
    clock.now = T0 + timedelta(days=3)
    assert "expired" in client.get(path).text


def test_known_addresses_get_the_same_answer_and_no_mail_and_requests_are_rate_limited(engine, site) -> None:
    _config, client, clock, sent = site
    r = sign_up(client, "known@example.org")
    assert r.status_code == 200 and "Check your inbox" in r.text and sent == []
    assert "Enter an e-mail address" in sign_up(client, "not an address").text
    for i in range(2):  # the limit is 3 per client per hour (one used above)
        assert sign_up(client, f"reader{i}@example.org").status_code == 200
    limited = sign_up(client, "reader9@example.org")
    assert limited.status_code == 429 and "Too many" in limited.text
    assert [a for a, _ in sent] == ["reader0@example.org", "reader1@example.org"]
    clock.now += timedelta(hours=1, minutes=1)
    assert sign_up(client, "reader9@example.org").status_code == 200


def _confirm(client: TestClient, raw: bytes):  # type: ignore[no-untyped-def]
    mail = message_from_bytes(raw, policy=policy.default)
    path = urlsplit(re.search(r"(https://\S+/signup/confirm/\S+)", mail.get_content()).group(1)).path  # type: ignore[union-attr]
    token = re.search(r'name="form_token" value="([^"]+)"', client.get(path).text).group(1)  # type: ignore[union-attr]
    return client.post(path, data={"form_token": token})


def test_an_address_that_unsubscribed_can_sign_up_again_with_a_fresh_confirmation(engine, site) -> None:
    config, client, clock, sent = site
    sign_up(client, "back@example.org")
    assert "You are subscribed" in _confirm(client, sent[-1][1]).text
    with Session(engine) as s, s.begin():
        sub_id = s.scalars(select(Subscription.id).where(Subscription.target == "back@example.org")).one()
        assert unsubscribe.unsubscribe(s, sub_id, clock.now)
    World(engine).new_story("s1", "icc", "ICC story while unsubscribed", at=clock.now)
    clock.now += timedelta(days=1)
    r = sign_up(client, "back@example.org", ("icc",))
    assert r.status_code == 200 and "Check your inbox" in r.text
    assert [a for a, _ in sent] == ["back@example.org", "back@example.org"]  # a second confirmation e-mail
    # Not confirmed yet: still nothing sent.
    digest.build_due_digests(engine, config, clock.now, secret_key=KEY)
    digest.build_due_digests(engine, config, clock.now + timedelta(days=1), secret_key=KEY)
    assert "back@example.org" not in digest_targets(engine)
    clock.now += timedelta(hours=1)
    assert "You are subscribed" in _confirm(client, sent[-1][1]).text
    World(engine).new_story("s2", "icc", "ICC story after signing up again", at=clock.now)
    digest.build_due_digests(engine, config, clock.now, secret_key=KEY)
    digest.build_due_digests(engine, config, clock.now + timedelta(days=1, hours=1), secret_key=KEY)
    with Session(engine) as s:
        raw = s.scalars(select(Delivery.payload).where(Delivery.target == "back@example.org")).one()
    text = message_from_bytes(raw, policy=policy.default).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "after signing up again" in text and "while unsubscribed" not in text


def test_a_sign_up_form_signs_up_once(engine, site) -> None:
    _config, client, clock, sent = site
    token = re.search(r'name="form_token" value="([^"]+)"', client.get("/signup").text).group(1)  # type: ignore[union-attr]
    assert "Check your inbox" in client.post("/signup", data={"form_token": token, "email": "one@example.org"}).text
    again = client.post("/signup", data={"form_token": token, "email": "two@example.org"})
    assert again.status_code == 400 and "sent already" in again.text
    assert [a for a, _ in sent] == ["one@example.org"]
    # A fresh page works; a token older than two hours does not.
    old = re.search(r'name="form_token" value="([^"]+)"', client.get("/signup").text).group(1)  # type: ignore[union-attr]
    clock.now += timedelta(hours=2, minutes=1)
    assert "open too long" in client.post("/signup", data={"form_token": old, "email": "three@example.org"}).text
    assert sign_up(client, "three@example.org").status_code == 200
    assert [a for a, _ in sent] == ["one@example.org", "three@example.org"]


def test_sign_up_is_off_unless_the_admin_enables_it(tmp_path, engine) -> None:
    config = make_config(tmp_path, engine=engine)
    ctx = SubscriberContext(engine=engine, config=lambda: config, secret_key=KEY, clock=Clock())
    client = TestClient(Starlette(routes=routes(ctx)))
    assert client.get("/signup").status_code == 404
    assert client.post("/signup", data={"email": "a@example.org"}).status_code == 404


# --- bounces --------------------------------------------------------------------------------------------


@contextmanager
def one_refused_address(tmp_path, engine, reply: str) -> Iterator[tuple[SmtpHandler, object]]:  # type: ignore[no-untyped-def]
    """A real SMTP server that answers `reply` to gone@example.org, and a configuration sending to it and to
    ok@example.org immediately: (the server's handler, the configuration)."""
    handler = SmtpHandler(refuse={"gone@example.org": reply})
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        subs = "".join(f'[[subscribers]]\nemail = "{a}"\ncadence = "immediate"\n' for a in ("gone@example.org",
                                                                                           "ok@example.org"))
        yield handler, make_config(tmp_path, subs, settings=f'[settings.smtp]\nhost = "127.0.0.1"\n'
                                   f'port = {port}\nsecurity = "none"', engine=engine)
    finally:
        controller.stop()


async def test_an_smtp_5xx_at_send_suppresses_the_address(tmp_path, engine) -> None:
    with one_refused_address(tmp_path, engine, "550 5.1.1 <gone@example.org>: no such user") as (handler, config):
        world = World(engine)
        world.new_story("s1", "icc", "ICC ruling", at=T0)
        assert len(digest.build_due_digests(engine, config, T0, secret_key=KEY)) == 2
        await outbox.deliver_due(engine, config, T0, worker_id="w")
        assert len(handler.messages) == 1
        world.new_story("s2", "icc", "ICC second ruling", at=T0 + timedelta(minutes=1))
        built = digest.build_due_digests(engine, config, T0 + timedelta(minutes=2), secret_key=KEY)
        assert digest_targets(engine)[2:] == ["ok@example.org"] and len(built) == 1
        with Session(engine) as s:
            [row] = s.scalars(select(Suppression)).all()
            assert (row.address, row.reason) == ("gone@example.org", "bounce") and "550" in row.detail
        # A 5xx for the message (its content), not for the recipient, fails that delivery but suppresses nobody.
        handler.data_replies.extend(["554 5.7.1 message content rejected"] * 2)  # both messages waiting for ok@
        world.new_story("s3", "icc", "ICC third ruling", at=T0 + timedelta(minutes=3))
        assert len(digest.build_due_digests(engine, config, T0 + timedelta(minutes=4), secret_key=KEY)) == 1
        await outbox.deliver_due(engine, config, T0 + timedelta(minutes=4), worker_id="w")
        assert digest.suppress_refused_recipients(engine, T0 + timedelta(minutes=5)) == []
        with Session(engine) as s:
            assert s.scalars(select(Delivery.status).order_by(Delivery.id.desc())).first() == "failed"
            assert [r.address for r in s.scalars(select(Suppression))] == ["gone@example.org"]


async def test_a_refused_address_is_suppressed_when_the_refusal_is_recorded_and_digest_ticks_read_no_outbox(
        tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import event

    with one_refused_address(tmp_path, engine, "550 5.1.1 <gone@example.org>: User unknown") as (_handler, config):
        World(engine).new_story("s1", "icc", "ICC ruling", at=T0)
        assert len(digest.build_due_digests(engine, config, T0, secret_key=KEY)) == 2
        await outbox.deliver_due(engine, config, T0, worker_id="w")
        with Session(engine) as s:  # suppressed with the failed send itself, before any digest tick
            [row] = s.scalars(select(Suppression)).all()
            assert (row.address, row.reason) == ("gone@example.org", "bounce") and "550" in row.detail
        statements: list[str] = []

        def seen(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
            statements.append(statement)

        event.listen(engine, "before_cursor_execute", seen)
        try:
            for minute in range(1, 4):  # ticks with nothing new
                assert digest.build_due_digests(engine, config, T0 + timedelta(minutes=minute), secret_key=KEY) == []
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        assert statements and not [q for q in statements if "delivery_attempts" in q]


async def test_a_relay_that_refuses_every_recipient_suppresses_nobody(tmp_path, engine) -> None:
    """A misconfigured relay answers 5.7.1 to every RCPT: that is the operator's problem, not the addresses'.
    Suppressing on it would silence the whole list for good."""
    relay_denied = "554 5.7.1 <{}>: Relay access denied"
    addresses = ("ana@example.org", "bo@example.org")
    handler = SmtpHandler(refuse={a: relay_denied.format(a) for a in addresses})
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        subs = "".join(f'[[subscribers]]\nemail = "{a}"\ncadence = "immediate"\n' for a in addresses)
        config = make_config(tmp_path, subs, settings=f'[settings.smtp]\nhost = "127.0.0.1"\nport = {port}\n'
                                                        'security = "none"', engine=engine)
        World(engine).new_story("s1", "icc", "ICC ruling", at=T0)
        assert len(digest.build_due_digests(engine, config, T0, secret_key=KEY)) == 2
        await outbox.deliver_due(engine, config, T0, worker_id="w")
        assert digest.suppress_refused_recipients(engine, T0 + timedelta(minutes=1)) == []
        with Session(engine) as s:
            assert s.scalars(select(Suppression)).all() == []
            errors = [a.error for a in s.scalars(select(DeliveryAttempt))]
        assert errors and all("policy" in e and "5.7.1" in e for e in errors)
    finally:
        controller.stop()


def test_address_refusals_are_told_apart_from_relay_and_policy_refusals() -> None:
    from monitor.delivery.email import address_refused

    assert address_refused(550, b"5.1.1 <gone@example.org>: Recipient address rejected: User unknown")
    assert address_refused(550, "5.2.1 mailbox disabled")
    assert address_refused(550, "No such user here")  # no enhanced code: the words say it
    assert not address_refused(554, "5.7.1 Relay access denied")
    assert not address_refused(550, "5.7.1 Recipient address rejected: Access denied")  # policy, despite the words
    assert not address_refused(530, "5.7.0 Authentication required")
    assert not address_refused(450, "4.1.1 try again later")  # not permanent


DSN = """From: MAILER-DAEMON@mx.example.net
To: bounces@monitor.example.org
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Your message could not be delivered.
--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; old.reader@example.org
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown

Final-Recipient: rfc822; busy@example.org
Action: delayed
Status: 4.2.2
--B--
"""

COMPLAINT = """From: fbl@isp.example
To: bounces@monitor.example.org
Subject: Abuse report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="C"

--C
Content-Type: text/plain

A complaint.
--C
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: isp-fbl/1.0
Version: 1
Original-Rcpt-To: <annoyed@example.org>
--C--
"""


def test_dsn_and_complaints_suppress_through_the_cli_and_are_listed(tmp_path, engine) -> None:
    assert [(f.address, f.reason) for f in signup.parse_dsn(DSN.encode())] == [("old.reader@example.org", "bounce")]
    assert signup.parse_dsn(b"Subject: hello\n\nnot a report") == []
    subs = "".join(f'[[subscribers]]\nemail = "{a}"\ncadence = "immediate"\n' for a in ("old.reader@example.org",
                                                                                       "annoyed@example.org"))
    path = tmp_path / "feeds.toml"
    path.write_text(config_text(tmp_path, subs, engine=engine))
    (tmp_path / "dsn.eml").write_text(DSN)
    runner = CliRunner()
    r = runner.invoke(main, ["--config", str(path), "subscribers", "bounce", str(tmp_path / "dsn.eml")])
    assert r.exit_code == 0, r.output
    assert "suppressed: old.reader@example.org (bounce: 5.1.1 smtp; 550 5.1.1 user unknown)" in r.output
    r = runner.invoke(main, ["--config", str(path), "subscribers", "bounce"], input=COMPLAINT)
    assert "suppressed: annoyed@example.org (complaint: abuse)" in r.output
    config = make_config(tmp_path, subs, engine=engine)
    World(engine).new_story("s1", "icc", "ICC ruling", at=T0)
    assert digest.build_due_digests(engine, config, T0, secret_key=KEY) == []
    listed = runner.invoke(main, ["--config", str(path), "subscribers", "list"])
    assert "suppressed: old.reader@example.org (bounce" in listed.output
    assert re.search(r"annoyed@example.org\s+config\s+suppressed \(complaint\)", listed.output), listed.output
    r = runner.invoke(main, ["--config", str(path), "subscribers", "unsuppress", "annoyed@example.org"])
    assert "no longer suppressed" in r.output
    assert len(digest.build_due_digests(engine, config, T0 + timedelta(minutes=1), secret_key=KEY)) == 1
