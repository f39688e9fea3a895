"""E-mail delivery against a real SMTP server (aiosmtpd on 127.0.0.1): message structure and headers,
4xx retry, 5xx permanent failure for one recipient only, header injection, and the .eml fallback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner
from deliveryfixtures import T0, World, make_config
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from monitor.cli import main
from monitor.delivery import digest, outbox
from monitor.lab.receiver import free_port
from monitor.storage.db import naive_utc
from monitor.storage.tables import Delivery, DeliveryAttempt

pytestmark = pytest.mark.databases("sqlite", "postgresql")


@dataclass
class SmtpHandler:
    messages: list[tuple[list[str], bytes]] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)  # planned replies to DATA, then "250 OK"
    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> reply to RCPT
    data_seen: list[bytes] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.data_seen.append(envelope.content)
        if self.data_replies:
            return self.data_replies.pop(0)
        self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpHandler, int]]:
    handler = SmtpHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def subscribers(*emails: str) -> str:
    return "\n".join(f'[[subscribers]]\nemail = "{e}"\nname = "Reader {i}"\ncadence = "immediate"\n'
                     for i, e in enumerate(emails))


def smtp_settings(port: int) -> str:
    return f'[settings.smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\ntimeout_s = 5\n'


def parse(raw: bytes) -> EmailMessage:
    return message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


async def test_delivered_message_is_multipart_alternative_with_one_click_unsubscribe(tmp_path, engine, smtp) -> None:
    handler, port = smtp
    config = make_config(tmp_path, subscribers("ana@example.org") + smtp_settings(port), engine=engine)
    World(engine).new_story("s1", "doha-talks", "Ceasefire talks resume in Doha — « trêve »")
    digest.build_due_digests(engine, config, T0, secret_key="k")
    report = await outbox.deliver_due(engine, config, T0, worker_id="w1")
    assert report.sent == 1
    ((rcpts, raw),) = handler.messages
    assert rcpts == ["ana@example.org"]
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["List-Unsubscribe"].startswith("<https://monitor.example.org/unsubscribe/")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # As sent on the wire: one plain <URL>, not an RFC 2047 encoded word (clients would not see the link).
    raw_header = next(line for line in raw.split(b"\r\n") if line.lower().startswith(b"list-unsubscribe:"))
    assert raw_header.startswith(b"List-Unsubscribe: <https://monitor.example.org/unsubscribe/") and b"=?" not in raw_header
    assert msg["To"] == "Reader 0 <ana@example.org>"
    assert "« trêve »" in msg["Subject"]  # non-ASCII survives as an encoded word
    assert b"=?utf-8?" in raw.split(b"\r\n\r\n", 1)[0].lower()
    with Session(engine) as s:
        d = s.scalars(select(Delivery)).one()
        assert msg["Message-ID"] == d.idempotency_key and d.status == "sent"
    assert msg["Date"] is not None and msg["From"] == "Monitor <alerts@monitor.example.org>"


async def test_451_then_250_is_delivered_exactly_once_with_the_same_message_id(tmp_path, engine, smtp) -> None:
    handler, port = smtp
    handler.data_replies = ["451 4.3.0 Try again later"]
    config = make_config(tmp_path, subscribers("ana@example.org") + smtp_settings(port), engine=engine)
    World(engine).new_story("s1", "doha-talks", "Talks resume")
    digest.build_due_digests(engine, config, T0, secret_key="k")

    first = await outbox.deliver_due(engine, config, T0, worker_id="w1")
    assert (first.sent, first.retried) == (0, 1)
    # The retry waits for its backoff: not due at the same instant.
    assert (await outbox.deliver_due(engine, config, T0 + timedelta(seconds=1), worker_id="w1")).claimed == 0
    second = await outbox.deliver_due(engine, config, T0 + timedelta(hours=1), worker_id="w1")
    assert second.sent == 1
    assert len(handler.messages) == 1 and len(handler.data_seen) == 2
    ids = {parse(raw)["Message-ID"] for raw in handler.data_seen}
    assert len(ids) == 1
    with Session(engine) as s:
        attempts = list(s.scalars(select(DeliveryAttempt).order_by(DeliveryAttempt.id)))
        assert [(a.outcome, a.code) for a in attempts] == [("retry", "451"), ("sent", "250")]


async def test_550_fails_that_recipient_only(tmp_path, engine, smtp) -> None:
    handler, port = smtp
    handler.refuse["gone@example.org"] = "550 5.1.1 No such user"
    config = make_config(tmp_path, subscribers("gone@example.org", "ana@example.org", "bo@example.org") + smtp_settings(port),
                         engine=engine)
    World(engine).new_story("s1", "doha-talks", "Talks resume")
    digest.build_due_digests(engine, config, T0, secret_key="k")
    report = await outbox.deliver_due(engine, config, T0, worker_id="w1")
    assert (report.sent, report.failed, report.retried) == (2, 1, 0)
    assert sorted(r for rcpts, _ in handler.messages for r in rcpts) == ["ana@example.org", "bo@example.org"]
    with Session(engine) as s:
        gone = s.scalars(select(Delivery).where(Delivery.target == "gone@example.org")).one()
        assert gone.status == "failed" and "550" in (gone.last_error or "")
    # Visible to the operator.
    result = CliRunner().invoke(main, ["--config", str(write_config(tmp_path, config)), "deliveries", "list", "--failed"])
    assert result.exit_code == 0, result.output
    assert "gone@example.org" in result.output and "550" in result.output and "ana@example.org" not in result.output
    # A later pass does not touch it again.
    assert (await outbox.deliver_due(engine, config, T0 + timedelta(days=1), worker_id="w1")).claimed == 0


def write_config(tmp_path, config) -> object:  # type: ignore[no-untyped-def]
    """The test config as a feeds.toml for the CLI (only what `deliveries list` needs)."""
    path = tmp_path / "feeds.toml"
    path.write_text(f'[settings]\ndatabase_url = "{config.settings.database_url}"\n')
    return path


@pytest.mark.parametrize("title", [
    "Talks resume\r\nBcc: victim@example.org",
    "Talks resume =?UTF-8?Q?=0A?=Bcc: victim@example.org",
    "Talks resume\nX-Injected: 1\r\n\r\nbody takeover",
])
async def test_a_hostile_title_injects_no_header(tmp_path, engine, smtp, title: str) -> None:
    handler, port = smtp
    config = make_config(tmp_path, subscribers("ana@example.org") + smtp_settings(port), engine=engine)
    World(engine).new_story("s1", "doha-talks", title)
    digest.build_due_digests(engine, config, T0, secret_key="k")
    assert (await outbox.deliver_due(engine, config, T0, worker_id="w1")).sent == 1
    ((rcpts, raw),) = handler.messages
    assert rcpts == ["ana@example.org"]
    msg = parse(raw)
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert set(msg.keys()) == {"Message-ID", "Date", "From", "To", "Subject", "List-Unsubscribe",
                               "List-Unsubscribe-Post", "Auto-Submitted", "MIME-Version", "Content-Type"}
    assert "\n" not in str(msg["Subject"]) and "\r" not in str(msg["Subject"])
    assert str(msg["Subject"]).startswith("Doha talks: Talks resume")


async def test_without_smtp_messages_land_as_eml_and_html_files(tmp_path, engine) -> None:
    config = make_config(tmp_path, subscribers("ana@example.org"), engine=engine)
    World(engine).new_story("s1", "doha-talks", "Talks resume")
    digest.build_due_digests(engine, config, T0, secret_key="k")
    assert (await outbox.deliver_due(engine, config, T0, worker_id="w1")).sent == 1
    outdir = tmp_path / "outbox"
    (eml,) = outdir.glob("*.eml")
    (html,) = outdir.glob("*.html")
    msg = parse(eml.read_bytes())
    assert msg.get_content_type() == "multipart/alternative" and msg["To"] == "Reader 0 <ana@example.org>"
    assert "Talks resume" in html.read_text()


def self_signed(tmp_path) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return str(cert), str(key)


@pytest.mark.skipif(__import__("shutil").which("openssl") is None, reason="needs the openssl CLI for a test certificate")
async def test_starttls_and_login_with_the_password_from_the_environment(tmp_path, engine) -> None:
    import ssl

    from aiosmtpd.smtp import AuthResult, LoginPassword

    from monitor.config import secret
    from monitor.delivery.email import SmtpSender

    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    logins: list[tuple[str, str]] = []

    def authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login.decode(), auth_data.password.decode()))
        ok = auth_data.password == b"s3cret"
        return AuthResult(success=ok, handled=False)  # not handled: the server replies 235 / 535 itself

    handler = SmtpHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, tls_context=server_ctx, require_starttls=True,
                            authenticator=authenticator, auth_require_tls=True)
    controller.start()
    try:
        config = make_config(tmp_path, subscribers("ana@example.org") + smtp_settings(port).replace(
            'security = "none"', 'security = "starttls"\nusername = "monitor"\npassword_env = "TEST_SMTP_PASSWORD"'), engine=engine)
        World(engine).new_story("s1", "doha-talks", "Talks resume")
        digest.build_due_digests(engine, config, T0, secret_key="k")
        client_ctx = ssl.create_default_context(cafile=cert)
        smtp_cfg = config.settings.smtp
        assert smtp_cfg is not None
        wrong = SmtpSender(smtp_cfg, config.settings.mail_from, "nope", ssl_context=client_ctx)
        report = await outbox.deliver_due(engine, config, T0, worker_id="w", senders={"email": wrong})
        assert report.retried == 1 and handler.messages == []  # a bad login is the operator's to fix: retried
        assert "login failed (535)" in (await _last_error(engine))
        right = SmtpSender(smtp_cfg, config.settings.mail_from, secret("TEST_SMTP_PASSWORD", {"TEST_SMTP_PASSWORD": "s3cret"}),
                           ssl_context=client_ctx)
        report = await outbox.deliver_due(engine, config, T0 + timedelta(hours=1), worker_id="w", senders={"email": right})
        assert report.sent == 1 and len(handler.messages) == 1
        assert logins[-1] == ("monitor", "s3cret") and {p for _, p in logins[:-1]} == {"nope"}
    finally:
        controller.stop()


async def _last_error(engine) -> str:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return s.scalars(select(Delivery.last_error)).one() or ""



async def test_a_success_pulls_forward_retries_that_waited_for_the_server_not_a_greylisted_recipient(
        tmp_path, engine, smtp) -> None:  # type: ignore[no-untyped-def]
    handler, port = smtp
    handler.refuse["grey@example.org"] = "451 4.7.1 Greylisted, try again later"
    readers = subscribers("grey@example.org", "down@example.org", "ana@example.org")
    config = make_config(tmp_path, readers + smtp_settings(port), engine=engine)
    unreachable = make_config(tmp_path, readers + smtp_settings(free_port()), engine=engine)  # nothing listens
    World(engine).new_story("s1", "doha-talks", "Talks resume")
    digest.build_due_digests(engine, config, T0, secret_key="k")

    def wait_until(target: str, at) -> None:  # type: ignore[no-untyped-def]
        with Session(engine) as s, s.begin():
            s.execute(update(Delivery).where(Delivery.target == target).values(next_attempt_at=naive_utc(at)))

    def next_attempt(target: str):  # type: ignore[no-untyped-def]
        with Session(engine) as s:
            return s.scalars(select(Delivery.next_attempt_at).where(Delivery.target == target)).one()

    later = T0 + timedelta(days=1)
    wait_until("down@example.org", later)
    wait_until("ana@example.org", later)
    # grey@: the server is up and greylists the address, twice (the second backoff is about 5 minutes).
    for at in (T0, T0 + timedelta(seconds=30)):
        assert (await outbox.deliver_due(engine, config, at, worker_id="w")).retried == 1
    grey_next = next_attempt("grey@example.org")
    assert grey_next > naive_utc(T0 + timedelta(minutes=4))
    # down@: the SMTP server could not be reached at all; its retry waits (here until tomorrow).
    wait_until("down@example.org", T0 + timedelta(minutes=1))
    assert (await outbox.deliver_due(engine, unreachable, T0 + timedelta(minutes=1), worker_id="w")).retried == 1
    wait_until("down@example.org", later)
    # ana@'s digest goes through at T0 + 2 min: the server is back.
    now = T0 + timedelta(minutes=2)
    wait_until("ana@example.org", now)
    report = await outbox.deliver_due(engine, config, now, worker_id="w", limit=1)
    assert report.sent == 1 and [r for rcpts, _ in handler.messages for r in rcpts] == ["ana@example.org"]
    assert next_attempt("down@example.org") - naive_utc(now) < timedelta(seconds=5)  # waited for the server: goes now
    assert next_attempt("grey@example.org") == grey_next  # refused by the server itself: keeps its backoff
