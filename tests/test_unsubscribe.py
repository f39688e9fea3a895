"""One-click unsubscribe through the real Starlette routes (in-process ASGI client): GET never
unsubscribes, POST does (no login, no redirect, idempotent), bad or expired tokens get a clear 400 page,
and the database state overrides feeds.toml."""

from __future__ import annotations

from datetime import datetime, timedelta
from email import message_from_bytes, policy
from urllib.parse import urlsplit

import pytest
from deliveryfixtures import T0, Clock, World, make_config
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.testclient import TestClient

from monitor.delivery import digest, unsubscribe
from monitor.storage.tables import Delivery, Subscription

pytestmark = pytest.mark.databases("sqlite", "postgresql")

SUBSCRIBERS = """
[[subscribers]]
email = "ana@example.org"
cadence = "immediate"

[[subscribers]]
email = "bo@example.org"
cadence = "immediate"
"""



@pytest.fixture
def setup(tmp_path, engine):  # type: ignore[no-untyped-def]
    config = make_config(tmp_path, SUBSCRIBERS, engine=engine)
    World(engine).new_story("s1", "icc", "ICC ruling")
    digest.build_due_digests(engine, config, T0, secret_key="secret-1")
    clock = Clock(T0 + timedelta(hours=1))
    app = Starlette(routes=unsubscribe.routes(engine, config, "secret-1", clock=clock))
    client = TestClient(app, base_url="https://monitor.example.org", follow_redirects=False)
    with Session(engine) as s:
        raw = s.scalars(select(Delivery.payload).where(Delivery.target == "ana@example.org")).one()
    link = message_from_bytes(raw, policy=policy.default)["List-Unsubscribe"].strip("<>")
    return config, client, clock, urlsplit(link).path


def state(engine) -> dict[str, datetime | None]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return {sub.target: sub.unsubscribed_at for sub in s.scalars(select(Subscription))}


def test_get_shows_a_confirmation_form_and_unsubscribes_nobody(engine, setup) -> None:
    _, client, _, path = setup
    r = client.get(path)
    assert r.status_code == 200
    assert '<form method="post"' in r.text and "ana@example.org" in r.text
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
    client.head(path)
    assert state(engine) == {"ana@example.org": None, "bo@example.org": None}


def test_one_click_post_unsubscribes_without_redirect_and_is_idempotent(engine, setup) -> None:
    _, client, clock, path = setup
    r = client.post(path, content=b"List-Unsubscribe=One-Click",
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and "location" not in r.headers
    assert "You are unsubscribed" in r.text
    first = state(engine)
    assert first["ana@example.org"] == clock.now.replace(tzinfo=None) and first["bo@example.org"] is None
    clock.now += timedelta(hours=1)
    again = client.post(path, files={"List-Unsubscribe": (None, "One-Click")})  # multipart, as RFC 8058 allows
    assert again.status_code == 200 and "already unsubscribed" in again.text
    assert state(engine) == first  # the first time stands


def test_the_database_overrides_feeds_toml(engine, setup) -> None:
    config, client, _, path = setup
    client.post(path, content=b"List-Unsubscribe=One-Click", headers={"content-type": "application/x-www-form-urlencoded"})
    World(engine, item_seq=10, stories={}).new_story("s2", "icc", "Another ruling", at=T0 + timedelta(hours=2))
    built = digest.build_due_digests(engine, config, T0 + timedelta(hours=2), secret_key="secret-1")
    with Session(engine) as s:
        targets = {d.target for d in s.scalars(select(Delivery).where(Delivery.digest_id.in_(built)))}
    assert targets == {"bo@example.org"}  # ana is still in feeds.toml, and stays unsubscribed


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bad_and_expired_tokens_get_a_clear_400_page(engine, setup, method: str) -> None:
    _, client, clock, path = setup
    token = path.rsplit("/", 1)[1]
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    r = client.request(method, f"/unsubscribe/{tampered}")
    assert r.status_code == 400 and "not valid" in r.text and "damaged" in r.text
    other_key = unsubscribe.make_token("another-key", 1, T0)
    assert client.request(method, f"/unsubscribe/{other_key}").status_code == 400
    clock.now = T0 + unsubscribe.TOKEN_MAX_AGE + timedelta(days=1)
    r = client.request(method, path)
    assert r.status_code == 400 and "expired" in r.text
    assert state(engine)["ana@example.org"] is None


def test_token_round_trip_and_expiry_use_the_given_clock() -> None:
    token = unsubscribe.make_token("k", 42, T0)
    assert unsubscribe.read_token("k", token, T0 + timedelta(days=89)) == 42
    with pytest.raises(unsubscribe.InvalidToken, match="expired"):
        unsubscribe.read_token("k", token, T0 + timedelta(days=91))
    url = unsubscribe.unsubscribe_url("https://m.example/", "k", 42, T0)
    assert url.startswith("https://m.example/unsubscribe/")
    assert unsubscribe.read_token("k", url.rsplit("/", 1)[1], T0) == 42


def test_the_link_in_a_digest_does_not_reveal_the_address(setup, engine) -> None:  # type: ignore[no-untyped-def]
    import base64
    import zlib

    _, client, _, path = setup
    token = path.rsplit("/", 1)[1]
    payload = token.split(".")[0]
    raw = base64.urlsafe_b64decode(payload.lstrip(".") + "=" * (-len(payload) % 4))
    if token.startswith("."):  # itsdangerous compresses long payloads
        raw = zlib.decompress(raw)
    assert b"ana" not in raw and b"example.org" not in raw and b"@" not in raw
    assert "ana" not in token
    # The page still names the address (from the database) and unsubscribes the right person.
    assert "ana@example.org" in client.get(path).text
    assert client.post(path).status_code == 200
    assert state(engine) == {"ana@example.org": state(engine)["ana@example.org"], "bo@example.org": None}
    assert state(engine)["ana@example.org"] is not None


def test_links_of_the_first_format_still_work_until_they_expire(setup, engine) -> None:  # type: ignore[no-untyped-def]
    _, client, _, _ = setup
    with Session(engine) as s:
        ana = s.scalar(select(Subscription.id).where(Subscription.target == "ana@example.org"))
    old = unsubscribe._serializer("secret-1", T0).dumps({"s": ana, "a": "ana@example.org"})
    assert client.post(f"/unsubscribe/{old}").status_code == 200
    assert state(engine)["ana@example.org"] is not None


def test_a_shared_database_needs_the_signing_key_in_the_environment(tmp_path) -> None:
    from monitor.config import Settings
    from monitor.errors import ConfigError

    shared = Settings(database_url="postgresql+psycopg://monitor@db.internal/monitor", outbox_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError) as e:
        unsubscribe.signing_key(shared, env={})
    assert "MONITOR_SECRET_KEY" in str(e.value) and "not SQLite" in str(e.value)
    assert "several hosts" in str(e.value) and "same" in str(e.value)
    assert not (tmp_path / ".secret_key").exists()  # no host-local key made
    assert unsubscribe.signing_key(shared, env={"MONITOR_SECRET_KEY": "k-shared"}) == "k-shared"


def test_without_a_key_in_the_environment_one_local_key_is_made_and_kept(tmp_path) -> None:
    config = make_config(tmp_path)
    first = unsubscribe.signing_key(config.settings, env={})
    key_file = tmp_path / ".secret_key"  # beside outbox_dir
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert unsubscribe.signing_key(config.settings, env={}) == first and len(first) >= 32
    assert unsubscribe.signing_key(config.settings, env={"MONITOR_SECRET_KEY": "from-env"}) == "from-env"


def test_an_unsubscribed_address_can_be_resubscribed_from_the_cli(setup, tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner
    from deliveryfixtures import config_text

    from monitor.cli import main
    from monitor.storage.tables import AuditEntry, Digest, SubscriberEvent

    config, client, clock, path = setup
    assert client.post(path).status_code == 200  # ana unsubscribes with the one-click link
    world = World(engine)
    world.new_story("while-away", "icc", "Sent while unsubscribed", at=T0 + timedelta(hours=2))
    cfg = tmp_path / "feeds.toml"
    cfg.write_text(config_text(tmp_path, SUBSCRIBERS, engine=engine))
    runner = CliRunner()
    r = runner.invoke(main, ["--config", str(cfg), "subscribers", "resubscribe", "Ana@Example.org", "--by", "ops-bob"])
    assert r.exit_code == 0 and "ana@example.org subscribed again" in r.output, r.output
    assert state(engine)["ana@example.org"] is None
    with Session(engine) as s:
        sub_id = s.scalar(select(Subscription.id).where(Subscription.target == "ana@example.org"))
        event = s.scalars(select(SubscriberEvent).where(SubscriberEvent.subscription_id == sub_id)).one()
        audit = s.scalars(select(AuditEntry)).one()
    assert event.action == "resubscribe" and event.at is not None
    assert (audit.actor, audit.action, audit.target) == ("ops-bob", "subscription.resubscribed", "email ana@example.org")
    again = runner.invoke(main, ["--config", str(cfg), "subscribers", "resubscribe", "ana@example.org"])
    assert again.exit_code == 0 and "is subscribed (nothing to do)" in again.output
    unknown = runner.invoke(main, ["--config", str(cfg), "subscribers", "resubscribe", "nobody@example.org"])
    assert unknown.exit_code == 2 and "no subscription for nobody@example.org" in unknown.output
    # Digests resume from now on: the next alert is sent, the one from while she was away is not.
    world.new_story("after", "icc", "Sent after resubscribing", at=T0 + timedelta(hours=3))
    digest.build_due_digests(engine, config, T0 + timedelta(hours=3), secret_key="secret-1")
    with Session(engine) as s:
        payloads = [d.payload for d in s.scalars(select(Delivery).join(Digest).where(
            Delivery.target == "ana@example.org").order_by(Delivery.id))]
    assert len(payloads) == 2
    assert b"Sent after resubscribing" in payloads[-1] and b"Sent while unsubscribed" not in payloads[-1]
