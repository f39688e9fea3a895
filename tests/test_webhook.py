"""Slack and generic webhooks against a real local HTTP receiver: Standard Webhooks signatures, retries,
Retry-After, channels that are gone, redirects, the private-address guard, Slack splitting, escaping and
the one-message-per-second limit."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from deliveryfixtures import T0, World, http_receiver, make_config
from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.delivery import digest, outbox, render, webhook
from monitor.storage.tables import Delivery, DeliveryAttempt, Subscription

pytestmark = pytest.mark.databases("sqlite", "postgresql")

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

CHANNELS = """
[[channels]]
name = "ingest"
kind = "webhook"
url_env = "TEST_HOOK_URL"
secret_env = "TEST_HOOK_SECRET"

[[channels]]
name = "newsroom"
kind = "slack"
url_env = "TEST_SLACK_URL"
topics = ["doha-talks"]
"""


@pytest.fixture
def world(engine):  # type: ignore[no-untyped-def]
    return World(engine)


def setup(tmp_path, monkeypatch, url: str, *, slack_url: str | None = None, settings: str = "", engine=None):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TEST_HOOK_URL", url)
    monkeypatch.setenv("TEST_HOOK_SECRET", SECRET)
    monkeypatch.setenv("TEST_SLACK_URL", slack_url or url)
    return make_config(tmp_path, CHANNELS, settings=settings, engine=engine)


def attempts(engine, target: str) -> list[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        rows = s.execute(select(DeliveryAttempt.outcome, DeliveryAttempt.code).join(Delivery)
                         .where(Delivery.target == target).order_by(DeliveryAttempt.id)).all()
        return [(o, c) for o, c in rows]


async def test_signature_verifies_and_fails_with_wrong_secret_or_stale_timestamp(tmp_path, monkeypatch, engine, world) -> None:
    with http_receiver() as rx:
        config = setup(tmp_path, monkeypatch, rx.url, engine=engine)
        world.new_story("i1", "icc", "ICC issues warrant")
        digest.build_due_digests(engine, config, T0, secret_key="k")
        report = await outbox.deliver_due(engine, config, T0, worker_id="w")
        assert report.sent == 1
        (req,) = rx.requests
    ts = int(req.headers["webhook-timestamp"])
    assert webhook.verify(SECRET, req.headers, req.body)
    assert req.headers["webhook-signature"].startswith("v1,")
    assert not webhook.verify("whsec_" + base64.b64encode(b"another secret entirely!").decode(), req.headers, req.body)
    assert not webhook.verify(SECRET, req.headers, req.body + b" ")
    assert not webhook.verify(SECRET, req.headers, req.body, now=ts + 10 * 60)  # a replay ten minutes later
    assert webhook.verify(SECRET, req.headers, req.body, now=ts + 60)
    # Hand-computed per the spec: base64(HMAC-SHA256(base64decode(secret), "id.ts.body")).
    import hashlib
    import hmac
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{req.headers['webhook-id']}.{ts}.".encode() + req.body, hashlib.sha256).digest()
    assert req.headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    body = json.loads(req.body)
    assert body["type"] == "digest.created" and body["data"]["topics"][0]["stories"][0]["title"] == "ICC issues warrant"
    with Session(engine) as s:
        d = s.scalars(select(Delivery).where(Delivery.target == "ingest")).one()
        assert req.headers["webhook-id"] == d.idempotency_key


async def test_500_500_200_is_one_delivery_after_retries_with_one_webhook_id(tmp_path, monkeypatch, engine, world) -> None:
    with http_receiver([(500, {}, b"oops"), (500, {}, b"oops")]) as rx:
        config = setup(tmp_path, monkeypatch, rx.url, engine=engine)
        world.new_story("i1", "icc", "ICC issues warrant")
        digest.build_due_digests(engine, config, T0, secret_key="k")
        now = T0
        for _ in range(6):
            await outbox.deliver_due(engine, config, now, worker_id="w")
            now += timedelta(hours=2)
        assert len(rx.requests) == 3
        assert len({r.headers["webhook-id"] for r in rx.requests}) == 1
    assert attempts(engine, "ingest") == [("retry", "500"), ("retry", "500"), ("sent", "200")]


async def test_429_retry_after_is_respected(tmp_path, monkeypatch, engine, world) -> None:
    with http_receiver([(429, {"Retry-After": "120"}, b"slow down")]) as rx:
        config = setup(tmp_path, monkeypatch, rx.url, engine=engine)
        world.new_story("i1", "icc", "ICC issues warrant")
        digest.build_due_digests(engine, config, T0, secret_key="k")
        assert (await outbox.deliver_due(engine, config, T0, worker_id="w")).retried == 1
        with Session(engine) as s:
            d = s.scalars(select(Delivery).where(Delivery.target == "ingest")).one()
            # 120 s after the answer came (the pass stamps real time elapsed since its start)
            wait = d.next_attempt_at - T0.replace(tzinfo=None)
            assert timedelta(seconds=120) <= wait < timedelta(seconds=125)
        assert (await outbox.deliver_due(engine, config, T0 + timedelta(seconds=119), worker_id="w")).claimed == 0
        assert (await outbox.deliver_due(engine, config, T0 + timedelta(seconds=125), worker_id="w")).sent == 1
        assert len(rx.requests) == 2


@pytest.mark.parametrize(("gone", "reply"), [
    ("ingest", (410, {}, b"gone")),
    ("newsroom", (404, {}, b"channel_not_found")),
    ("newsroom", (410, {}, b"channel_is_archived")),
    ("newsroom", (404, {}, b"no_service")),
])
async def test_a_channel_that_is_gone_is_disabled_with_the_reason(tmp_path, monkeypatch, engine, world, gone, reply) -> None:
    other = "newsroom" if gone == "ingest" else "ingest"
    with http_receiver([reply]) as bad, http_receiver() as good:
        urls = {gone: bad.url, other: good.url}
        config = setup(tmp_path, monkeypatch, urls["ingest"], slack_url=urls["newsroom"], engine=engine)
        world.new_story("s1", "doha-talks", "Talks resume")
        digest.build_due_digests(engine, config, T0, secret_key="k")
        report = await outbox.deliver_due(engine, config, T0, worker_id="w")
        assert (report.sent, report.failed) == (1, 1) and len(bad.requests) == 1 and len(good.requests) == 1
    with Session(engine) as s:
        subs = {sub.target: sub for sub in s.scalars(select(Subscription))}
        assert subs[other].disabled_at is None
        assert subs[gone].disabled_at is not None
        assert str(reply[0]) in (subs[gone].disabled_reason or "") and reply[2].decode() in (subs[gone].disabled_reason or "")
    # A disabled channel gets no further digests; the other one does.
    world.new_story("s2", "doha-talks", "More talks")
    built = digest.build_due_digests(engine, config, T0 + timedelta(minutes=5), secret_key="k")
    with Session(engine) as s:
        targets = {d.target for d in s.scalars(select(Delivery).where(Delivery.digest_id.in_(built)))}
    assert targets == {other}


async def test_redirects_are_failures_and_not_followed(tmp_path, monkeypatch, engine, world) -> None:
    with http_receiver([(302, {"Location": "/elsewhere"}, b"")]) as rx:
        config = setup(tmp_path, monkeypatch, rx.url, engine=engine)
        world.new_story("i1", "icc", "ICC issues warrant")
        digest.build_due_digests(engine, config, T0, secret_key="k")
        assert (await outbox.deliver_due(engine, config, T0, worker_id="w")).retried == 1
        assert [r.path for r in rx.requests] == ["/hook"]
    assert attempts(engine, "ingest") == [("retry", "302")]


async def test_private_addresses_are_refused_unless_allowed(tmp_path, monkeypatch, engine, world) -> None:
    with http_receiver() as rx:
        config = setup(tmp_path, monkeypatch, rx.url, settings="", engine=engine).model_copy(deep=True)
        config = config.model_copy(update={"settings": config.settings.model_copy(update={"allow_private_networks": False})})
        world.new_story("i1", "icc", "ICC issues warrant")
        digest.build_due_digests(engine, config, T0, secret_key="k")
        report = await outbox.deliver_due(engine, config, T0, worker_id="w")
        assert report.failed == 1 and rx.requests == []
    with Session(engine) as s:
        d = s.scalars(select(Delivery).where(Delivery.target == "ingest")).one()
        assert d.status == "failed" and "allow_private_networks" in (d.last_error or "")


async def test_a_name_that_rebinds_to_a_private_address_after_the_check_is_refused(tmp_path, monkeypatch, engine,
                                                                                   world) -> None:
    """DNS rebinding: the up-front check sees a public address, the connection would go to 127.0.0.1. The
    connection's own resolver refuses it, so nothing reaches the private receiver."""
    from monitor import netguard

    with http_receiver() as rx:
        config = setup(tmp_path, monkeypatch, rx.url.replace("127.0.0.1", "localhost"), engine=engine)
        config = config.model_copy(update={"settings": config.settings.model_copy(update={"allow_private_networks": False})})
        checked: list[str] = []
        monkeypatch.setattr(netguard, "resolve", lambda host, port: checked.append(host) or ["93.184.216.34"])
        world.new_story("i1", "icc", "ICC issues warrant")
        digest.build_due_digests(engine, config, T0, secret_key="k")
        report = await outbox.deliver_due(engine, config, T0, worker_id="w")
        assert checked and report.failed == 1 and rx.requests == []
    with Session(engine) as s:
        d = s.scalars(select(Delivery).where(Delivery.target == "ingest")).one()
        assert d.status == "failed" and "non-public address" in (d.last_error or "")


async def test_refused_connections_and_garbage_replies_are_retried_with_what_happened(tmp_path, monkeypatch, engine,
                                                                                     world) -> None:
    import socket
    import threading

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        refused_url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
    garbage = socket.socket()
    garbage.bind(("127.0.0.1", 0))
    garbage.listen()

    def serve_garbage() -> None:
        with garbage:
            conn, _ = garbage.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"this is not HTTP\r\n\r\n")

    t = threading.Thread(target=serve_garbage, daemon=True)
    t.start()
    config = setup(tmp_path, monkeypatch, refused_url, slack_url=f"http://127.0.0.1:{garbage.getsockname()[1]}/s")
    world.new_story("i1", "doha-talks", "Talks resume in Doha")
    digest.build_due_digests(engine, config, T0, secret_key="k")
    report = await outbox.deliver_due(engine, config, T0, worker_id="w")
    t.join(10)
    assert report.retried == 2 and report.failed == 0
    with Session(engine) as s:
        errors = {d.target: d.last_error or "" for d in s.scalars(select(Delivery))}
    assert errors["ingest"].startswith("webhook channel 'ingest': ") and "timed out" not in errors["ingest"]
    assert errors["newsroom"].startswith("slack channel 'newsroom': ") and "timed out" not in errors["newsroom"]


async def test_an_80_story_digest_reaches_slack_as_valid_escaped_messages_one_per_second(tmp_path, monkeypatch, engine, world) -> None:
    with http_receiver() as hook, http_receiver() as slack:
        config = setup(tmp_path, monkeypatch, hook.url, slack_url=slack.url, engine=engine)
        world.new_story("evil", "doha-talks", "Talks <!channel> & <@U123> <https://evil.example|click>")
        for i in range(79):
            world.new_story(f"s{i}", "doha-talks", f"Story {i}: " + "long headline " * 15)
        digest.build_due_digests(engine, config, T0, secret_key="k")
        report = await outbox.deliver_due(engine, config, T0, worker_id="w")
        messages = [r.json() for r in slack.requests]
        times = [r.at for r in slack.requests]
    assert report.failed == report.retried == 0
    assert len(messages) >= 2
    sections = 0
    for m in messages:
        assert render.validate_slack_message(m) == []  # type: ignore[arg-type]
        sections += sum(b["type"] == "section" for b in m["blocks"])  # type: ignore[index]
    assert sections == 80
    raw = json.dumps(messages)
    assert "<!channel>" not in raw and "<@U123>" not in raw and "<https://evil.example|click>" not in raw
    assert "&lt;!channel&gt; &amp; &lt;@U123&gt;" in raw
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.95, gaps


def _schema_errors(value: object, schema: dict, path: str = "$") -> list[str]:  # type: ignore[type-arg]
    """A small validator for the JSON Schema subset docs/webhook-schema.md uses; it also rejects properties
    the document does not describe, so the docs cannot drift from the payload."""
    errors: list[str] = []
    types = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool, "null": type(None)}
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(isinstance(value, types[t]) and not (t == "integer" and isinstance(value, bool)) for t in allowed):
            errors.append(f"{path}: {type(value).__name__} is not {allowed}")
    if isinstance(value, dict) and "properties" in schema:
        errors += [f"{path}: missing {k}" for k in schema.get("required", []) if k not in value]
        errors += [f"{path}: undocumented {k}" for k in value if k not in schema["properties"]]
        for k, v in value.items():
            if k in schema["properties"]:
                errors += _schema_errors(v, schema["properties"][k], f"{path}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += _schema_errors(v, schema["items"], f"{path}[{i}]")
    return errors


async def test_the_payload_matches_the_documented_schema(tmp_path, monkeypatch, engine, world) -> None:
    from deliveryfixtures import ROOT_DIR

    doc = (ROOT_DIR / "docs" / "webhook-schema.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```json\n")[1:]]
    example, schema = json.loads(blocks[0]), json.loads(blocks[1])
    assert _schema_errors(example, schema) == []
    with http_receiver() as rx:
        config = setup(tmp_path, monkeypatch, rx.url, engine=engine)
        world.new_story("i1", "icc", "ICC issues warrant")
        world.alert("i1", "update", what_is_new="second warrant", title="ICC adds a second warrant")
        world.story("i2", "icc", "No link story")
        world.alert("i2", "update", what_is_new=None)
        digest.build_due_digests(engine, config, T0, secret_key="k")
        await outbox.deliver_due(engine, config, T0, worker_id="w")
        (req,) = [r for r in rx.requests if "webhook-id" in r.headers]
    body = req.json()
    assert _schema_errors(body, schema) == []
    assert body["data"]["alert_count"] == 3 and body["data"]["story_count"] == 2  # type: ignore[index]
    assert _schema_errors({"type": "digest.created", "timestamp": "x", "data": {"schema_version": 2}}, schema) != []


async def test_a_disabled_channel_can_be_enabled_again_and_gets_what_was_held_back(tmp_path, monkeypatch, engine, world) -> None:
    from click.testing import CliRunner
    from deliveryfixtures import config_text

    from monitor.cli import main

    cfg = tmp_path / "feeds.toml"
    cfg.write_text(config_text(tmp_path, CHANNELS, engine=engine))
    with http_receiver([(404, {}, b"channel_not_found")]) as rx, http_receiver() as hook:
        config = setup(tmp_path, monkeypatch, hook.url, slack_url=rx.url, engine=engine)
        for i in range(60):  # several Slack parts: the later ones are held back when the first finds the channel gone
            world.new_story(f"s{i}", "doha-talks", f"Story {i} " + "words " * 30)
        digest.build_due_digests(engine, config, T0, secret_key="k")
        with Session(engine) as s:
            parts = len(s.scalars(select(Delivery.id).where(Delivery.target == "newsroom")).all())
        assert parts >= 2
        report = await outbox.deliver_due(engine, config, T0, worker_id="w", concurrency=1)
        assert (report.failed, report.sent) == (1, 1)  # the Slack part refused; the webhook delivered
        runner = CliRunner()
        status = runner.invoke(main, ["--config", str(cfg), "digest", "status"])
        assert "disabled: slack channel 'newsroom'" in status.output and "channel_not_found" in status.output
        enabled = runner.invoke(main, ["--config", str(cfg), "digest", "enable", "newsroom"])
        assert enabled.exit_code == 0 and f"{parts} held-back deliveries queued again" in enabled.output, enabled.output
        from monitor.storage.db import utcnow  # the CLI requeues on the real clock
        report = await outbox.deliver_due(engine, config, utcnow() + timedelta(seconds=1), worker_id="w")
        assert report.sent == parts
        assert len(rx.requests) == 1 + parts  # the refused first part, then every part
    with Session(engine) as s:
        assert {d.status for d in s.scalars(select(Delivery))} == {"sent"}
        assert s.scalars(select(Subscription).where(Subscription.target == "newsroom")).one().disabled_at is None


@pytest.mark.parametrize("allow_private", [False, True])
async def test_a_name_that_does_not_resolve_is_retried_and_said_to_be_dns(tmp_path, monkeypatch, engine, world,
                                                                          allow_private: bool) -> None:
    # Checked up front (allow_private_networks = false) or by the connection itself: either way a DNS
    # failure is named as one (not "timed out", not "ConnectTimeout") and retried, not given up.
    config = setup(tmp_path, monkeypatch, "http://no-such-host.invalid/hook", engine=engine)
    config = config.model_copy(update={"settings": config.settings.model_copy(
        update={"allow_private_networks": allow_private})})
    world.new_story("i1", "icc", "ICC issues warrant")
    digest.build_due_digests(engine, config, T0, secret_key="k")
    report = await outbox.deliver_due(engine, config, T0, worker_id="w")
    assert report.retried == 1 and report.failed == 0
    with Session(engine) as s:
        error = s.scalars(select(Delivery.last_error).where(Delivery.target == "ingest")).one() or ""
    assert "cannot resolve the host name 'no-such-host.invalid' (DNS" in error, error
    assert "timed out" not in error and "ConnectTimeout" not in error
