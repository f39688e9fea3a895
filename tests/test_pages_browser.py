"""The admin Deliveries, Subscribers and Workers pages and the public sign-up in a real headless Chromium
(tests/browser.py), on a real database with a real failed delivery (an SMTP 550 from aiosmtpd): what an admin
and a new reader see and do there. Screenshots go to the test artifacts."""

from __future__ import annotations

import asyncio
import re
import tomllib
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from adminfixtures import CONFIG, PASSWORD
from aiosmtpd.controller import Controller
from browser import artifact, chromium, serve
from deliveryfixtures import World
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from starlette.applications import Starlette

from monitor.app.admin import auth, make_context
from monitor.app.admin import routes as admin_routes
from monitor.app.subscriber import SubscriberContext
from monitor.app.subscriber import routes as subscriber_routes
from monitor.config import load_config
from monitor.delivery import digest, outbox
from monitor.lab.receiver import free_port
from monitor.storage import db, workers
from monitor.storage.tables import Delivery

pytestmark = pytest.mark.slow
KEY = "pages-browser-key-" + "x" * 20


class Refusing:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address == "gone@example.org":
            return "550 5.1.1 <gone@example.org>: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        return "250 Message accepted"


def test_deliveries_subscribers_workers_and_sign_up_in_a_browser(engine: Engine, tmp_path: Path) -> None:
    smtp_port, port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    text = CONFIG.replace("[settings]\n", f'[settings]\nself_signup = true\nbase_url = "{base}"\n'
                                          'allow_private_networks = true\n')
    text += ('\n[[subscribers]]\nemail = "gone@example.org"\ncadence = "immediate"\n\n'
             f'[settings.smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nsecurity = "none"\n')
    path = tmp_path / "feeds.toml"
    path.write_text(text)
    config = load_config(path)
    auth.create_user(engine, "alice", PASSWORD)
    now = datetime.now(UTC)
    # A real failed delivery: the mail server refuses the address.
    controller = Controller(Refusing(), hostname="127.0.0.1", port=smtp_port)
    controller.start()
    try:
        World(engine).new_story("s1", "hostage-talks", "Negotiators meet in Doha on a truce", at=now)
        assert digest.build_due_digests(engine, config, now, secret_key=KEY)
        assert asyncio.run(outbox.deliver_due(engine, config, now, worker_id="w")).failed == 1
    finally:
        controller.stop()
    with db.write_transaction(engine) as s:
        workers.register(s, "host-a:4242:c0ffee", roles=["worker", "web"], host="host-a", pid=4242, now=now,
                         dead_after_s=600)
    mails: list[tuple[str, bytes]] = []

    async def send_mail(address: str, message: bytes) -> None:
        mails.append((address, message))

    ctx = make_context(engine, path, lambda: config, KEY, lambda: None, lambda: datetime.now(UTC))
    sub = SubscriberContext(engine=engine, config=lambda: config, secret_key=KEY, clock=lambda: datetime.now(UTC),
                            send_mail=send_mail)
    app = Starlette(routes=[*admin_routes(ctx), *subscriber_routes(sub)])
    with serve(app, port), chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        missing: list[str] = []
        page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
        page.goto(f"{base}/admin/deliveries")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/admin/deliveries")

        # Deliveries: the failed digest with the server's reply; Retry queues it again.
        row = page.locator("tr", has_text="gone@example.org").first
        assert "failed" in row.inner_text() and "550" in row.inner_text()
        page.screenshot(path=str(artifact("admin-deliveries.png")), full_page=True)
        row.locator("button", has_text="Retry").click()
        page.wait_for_load_state()
        status = page.locator("tr", has_text="gone@example.org").first.locator("td").nth(4).locator("span").first
        assert status.inner_text() == "pending" and "will be sent again" in page.locator(".notice").inner_text()
        with Session(engine) as s:
            assert s.scalars(select(Delivery.status).where(Delivery.target == "gone@example.org")).one() == "pending"

        # Workers: the registered process, live, with its roles.
        page.click("nav >> text=Workers")
        worker = page.locator("tr", has_text="host-a:4242:c0ffee")
        assert "live" in worker.inner_text() and "worker, web" in worker.inner_text()
        page.screenshot(path=str(artifact("admin-workers.png")), full_page=True)

        # Subscribers: the list with states; a new subscriber added from the form lands in feeds.toml.
        page.click("nav >> text=Subscribers")
        assert "analyst@example.org" in page.locator("table.grid").inner_text()
        page.fill("#f-email", "new.reader@example.org")
        page.fill("#f-topics", "weather")
        page.click("button:has-text('Save')")
        page.wait_for_load_state()
        assert "Saved new.reader@example.org" in page.locator(".notice").inner_text()
        added = [x for x in tomllib.loads(path.read_text())["subscribers"] if x["email"] == "new.reader@example.org"]
        assert added and added[0]["topics"] == ["weather"]
        page.screenshot(path=str(artifact("admin-subscribers.png")), full_page=True)

        # Sign-up: the form, the confirmation e-mail, the button behind its link.
        page.goto(f"{base}/signup")
        page.fill("input[name=email]", "reader@example.org")
        page.uncheck("input[value=weather]")
        page.screenshot(path=str(artifact("signup.png")), full_page=True)
        page.click("button:has-text('Send me a confirmation e-mail')")
        page.wait_for_load_state()
        assert "Check your inbox" in page.content()
        [(address, raw)] = mails
        body = message_from_bytes(raw, policy=policy.default).get_content()  # type: ignore[attr-defined]
        confirm = re.search(r"(http://\S+/signup/confirm/\S+)", body)
        assert address == "reader@example.org" and confirm
        page.goto(confirm.group(1))
        page.click("button:has-text('Yes, send me digests')")
        page.wait_for_load_state()
        assert "You are subscribed" in page.content()
        # Every asset the pages load is served (the browser's own favicon probe aside).
        assert [u for u in missing if not u.endswith("/favicon.ico")] == []
        assert [e for e in errors if "404" not in e] == []
