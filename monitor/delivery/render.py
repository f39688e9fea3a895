"""Rendering a digest (monitor.records.DigestContent) into what each channel sends, with the jinja2
templates in `templates/`: an RFC 5322 e-mail (multipart/alternative, HTML + plain text), Slack Block Kit
messages split within Slack's limits, and the generic webhook's JSON (docs/webhook-schema.md).

Pure: no I/O beyond reading templates; `now`, ids and URLs come in as arguments. Untrusted feed text is
escaped for every target: HTML autoescaping, Slack's `& < >` escaping (so a title can never ping
`<!channel>`), and header sanitising (control characters, CR/LF and encoded-word markers removed).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import jinja2

from monitor.records import DigestContent, DigestStory, DigestTopic

# RFC 5322 allows 998 characters a line; with the default 78 the email package RFC 2047-encodes a long
# unbroken List-Unsubscribe URL, which mail clients then do not recognise as a one-click link.
_MAIL_POLICY = SMTP.clone(max_line_length=998)

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"

# Slack's documented limits (https://api.slack.com/reference/block-kit/blocks).
SLACK_MAX_BLOCKS = 50
SLACK_MAX_SECTION_CHARS = 3000
SLACK_MAX_HEADER_CHARS = 150
SLACK_MAX_UPDATES_PER_STORY = 5
# A soft cap on section text per message keeps each POST well under Slack's payload size limits.
SLACK_MAX_MESSAGE_CHARS = 30_000

WEBHOOK_SCHEMA_VERSION = 1

_CADENCE_TEXT = {"immediate": "as news breaks", "hourly": "hourly", "daily": "daily"}


# --- text hygiene ----------------------------------------------------------------------------------------


def header_text(value: str, max_len: int = 200) -> str:
    """Feed text made safe for an e-mail header: control/format characters (CR, LF, TAB, NUL, bidi
    controls...) become spaces, RFC 2047 encoded-word markers `=?` / `?=` are removed (so a title cannot
    smuggle an encoded newline past the encoder), whitespace is collapsed and the result truncated."""
    cleaned = "".join(" " if unicodedata.category(c).startswith("C") else c for c in value)
    while "=?" in cleaned or "?=" in cleaned:
        cleaned = cleaned.replace("=?", "").replace("?=", "")
    cleaned = " ".join(cleaned.split())
    return truncate_text(cleaned, max_len)


def truncate_text(value: str, max_len: int) -> str:
    value = value or ""
    if len(value) <= max_len:
        return value
    return value[: max_len - 1].rstrip() + "…"


def slack_escape(value: str) -> str:
    """Slack mrkdwn control characters: with `&`, `<`, `>` escaped no `<!channel>`, `<@U123>` or link
    syntax in feed text can take effect."""
    return (value or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def safe_url(value: str | None) -> str | None:
    """Only absolute http(s) URLs become links (never `javascript:` or `data:`)."""
    if not value:
        return None
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        return None
    return value


def _slack_url(value: str) -> str:
    # Inside <url|text> a `|` or `>` would end the URL early: percent-encode them, escape `&` and `<`.
    return quote(value, safe=":/?#[]@!$&'()*+,;=%~-._").replace("&", "&amp;").replace("<", "%3C")


def reason_line(reason: str | None, max_len: int = 180) -> str:
    """The matcher's reason for a reader, in a line: which example it was closest to and the keywords that
    counted, without the scores and thresholds (those are for `monitor topics test`)."""
    if not reason:
        return ""
    parts = [p.strip() for p in reason.split(";")]
    keep = [p for p in parts if p.startswith(("nearest example", "keywords", "closer to"))]
    text = "; ".join(keep) if keep else reason
    text = re.sub(r"\s*\(-?\d\.\d+\)", "", text)  # per-example similarities
    text = text.replace("nearest example", "closest to", 1)
    return truncate_text(text, max_len)


def localtime(value: datetime, tz: str) -> str:
    local = value.astimezone(ZoneInfo(tz))
    return local.strftime("%a %d %b %Y, %H:%M ") + (local.tzname() or tz)


# --- outputs ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmailParts:
    subject: str
    text: str
    html: str


@dataclass(frozen=True, slots=True)
class DigestLinks:
    """The signed links of one digest (made by the digest stage for its recipient): the preferences page, a
    page per story (by story id) and the three feedback links per alert (by alert id, then kind)."""

    prefs_url: str | None = None
    story_urls: Mapping[int, str] = field(default_factory=dict)
    feedback_urls: Mapping[int, Mapping[str, str]] = field(default_factory=dict)

    def feedback(self, alert_id: int) -> Mapping[str, str]:
        return self.feedback_urls.get(alert_id, {})


FEEDBACK_LABELS = (("not_relevant", "Not relevant"), ("known", "Already knew this"),
                   ("more_like_this", "More like this"))


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    message: bytes  # the complete RFC 5322 message (CRLF line ends), sent as is on every retry
    message_id: str
    subject: str
    html: str  # a copy for humans (the .html file next to an .eml)


class Renderer:
    """jinja2 environments over `templates/` (HTML autoescaped; text and Slack templates escape explicitly)."""

    def __init__(self, templates_dir: Path | None = None) -> None:
        loader = jinja2.FileSystemLoader(str(templates_dir or TEMPLATES_DIR))
        self.env = jinja2.Environment(
            loader=loader,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters.update(
            localtime=localtime,
            reason_line=reason_line,
            safe_url=safe_url,
            slack_escape=slack_escape,
            slack_url=_slack_url,
            truncate_text=truncate_text,
        )

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)

    # --- e-mail ------------------------------------------------------------------------------------------

    def email_parts(self, content: DigestContent, *, cadence: str, unsubscribe_url: str | None,
                    links: DigestLinks | None = None) -> EmailParts:
        subject = email_subject(content)
        ctx = {
            "content": content,
            "subject": subject,
            "headline": digest_headline(content),
            "cadence_text": _CADENCE_TEXT.get(cadence, cadence),
            "unsubscribe_url": unsubscribe_url,
            "links": links or DigestLinks(),
            "feedback_labels": FEEDBACK_LABELS,
        }
        text = _tidy_text(self.render("email/digest.txt", **ctx))
        html = self.render("email/digest.html", **ctx)
        return EmailParts(subject=subject, text=text, html=html)

    def email(
        self,
        content: DigestContent,
        *,
        mail_from: str,
        message_id: str,
        now: datetime,
        cadence: str,
        unsubscribe_url: str,
        links: DigestLinks | None = None,
    ) -> RenderedEmail:
        parts = self.email_parts(content, cadence=cadence, unsubscribe_url=unsubscribe_url, links=links)
        msg = EmailMessage(policy=_MAIL_POLICY)
        msg["Message-ID"] = message_id
        msg["Date"] = format_datetime(now)
        msg["From"] = mail_from
        msg["To"] = Address(display_name=header_text(content.recipient_name or "", 80), addr_spec=content.recipient)
        msg["Subject"] = parts.subject
        msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(parts.text, cte="quoted-printable")
        msg.add_alternative(parts.html, subtype="html", cte="quoted-printable")
        return RenderedEmail(message=msg.as_bytes(policy=_MAIL_POLICY), message_id=message_id, subject=parts.subject,
                             html=parts.html)

    # --- Slack -------------------------------------------------------------------------------------------

    def slack_story(self, story: DigestStory, tz: str, story_url: str | None = None) -> str:
        updates = story.updates
        shown = updates[-SLACK_MAX_UPDATES_PER_STORY:]
        text = self.render("slack/story.mrkdwn", story=story, tz=tz, updates=shown, story_url=story_url,
                           more_updates=len(updates) - len(shown)).strip()
        if len(text) > SLACK_MAX_SECTION_CHARS:
            # Cut on a line boundary so no escape sequence or link is split, then mark the cut.
            cut = text[: SLACK_MAX_SECTION_CHARS - 2].rsplit("\n", 1)[0]
            text = cut + "\n…"
        return text

    def slack_messages(self, content: DigestContent, *, digest_id: int | None = None,
                       links: DigestLinks | None = None) -> list[dict[str, Any]]:
        """Block Kit messages for an incoming webhook: <= 50 blocks each, every section <= 3,000 characters;
        a digest that does not fit is split across several messages (each a delivery 'part'). With `links`,
        each story has feedback buttons on its latest alert: link buttons, which open the confirmation page
        in the browser whether or not the Slack app has an interactivity URL (the link is the fallback)."""
        title = digest_headline(content)
        links = links or DigestLinks()
        units: list[tuple[DigestTopic, list[dict[str, Any]]]] = []
        for topic in content.topics:
            for story in topic.stories:
                text = self.slack_story(story, content.timezone, links.story_urls.get(story.story_id))
                blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
                buttons = _slack_feedback_buttons(links.feedback(story.alerts[-1].alert_id), story.alerts[-1].alert_id)
                if buttons:
                    blocks.append({"type": "actions", "elements": buttons})
                units.append((topic, blocks))

        bodies: list[list[dict[str, Any]]] = []
        body: list[dict[str, Any]] = []
        chars = 0
        current_topic: str | None = None
        budget = SLACK_MAX_BLOCKS - 2  # the title header and the closing context block
        for topic, story_blocks in units:
            needs_header = topic.topic_id != current_topic or not body
            cost = len(story_blocks) + (1 if needs_header else 0) + (1 if needs_header and body else 0)
            size = len(story_blocks[0]["text"]["text"])
            if body and (len(body) + cost > budget or chars + size > SLACK_MAX_MESSAGE_CHARS):
                bodies.append(body)
                body, chars, needs_header = [], 0, True
            if needs_header:
                if body:
                    body.append({"type": "divider"})
                continued = topic.topic_id == current_topic
                body.append(_slack_header(topic.name + (" (continued)" if continued else "")))
                current_topic = topic.topic_id
            body.extend(story_blocks)
            chars += size
        if body:
            bodies.append(body)

        messages = []
        for i, blocks in enumerate(bodies, start=1):
            footer = f"{content.alert_count} alert{'s' if content.alert_count != 1 else ''}"
            if len(bodies) > 1:
                footer = f"Part {i} of {len(bodies)} · " + footer
            if digest_id is not None:
                footer += f" · digest #{digest_id}"
            messages.append({
                "text": slack_escape(truncate_text(title, 300)),
                "blocks": [_slack_header(title), *blocks,
                           {"type": "context", "elements": [{"type": "mrkdwn", "text": slack_escape(footer)}]}],
                "unfurl_links": False,
                "unfurl_media": False,
            })
        return messages

    # --- generic webhook ---------------------------------------------------------------------------------

    def webhook_payload(self, content: DigestContent, *, digest_id: int, now: datetime, cadence: str,
                        links: DigestLinks | None = None) -> dict[str, Any]:
        """The generic webhook body (schema in docs/webhook-schema.md), Standard Webhooks style envelope."""
        parts = self.email_parts(content, cadence=cadence, unsubscribe_url=None)
        links = links or DigestLinks()
        return {
            "type": "digest.created",
            "timestamp": _iso(now),
            "data": {
                "schema_version": WEBHOOK_SCHEMA_VERSION,
                "digest_id": digest_id,
                "channel": content.recipient,
                "generated_at": _iso(content.generated_at),
                "first_alert_id": content.first_alert_id,
                "last_alert_id": content.last_alert_id,
                "alert_count": content.alert_count,
                "story_count": content.story_count,
                "summary": parts.subject,
                "text": parts.text,
                "topics": [
                    {
                        "id": t.topic_id,
                        "name": t.name,
                        "stories": [
                            {
                                "story_id": s.story_id,
                                "title": s.title,
                                "link": safe_url(s.link),
                                "story_url": links.story_urls.get(s.story_id),
                                "topics": list(s.topics or (t.name,)),
                                "is_new": s.is_new,
                                "outlets_count": s.sources_count,
                                "first_seen": _iso(s.first_seen),
                                "alerts": [
                                    {
                                        "alert_id": a.alert_id,
                                        "decision": a.decision,
                                        "title": a.title,
                                        "link": safe_url(a.link),
                                        "outlet": a.outlet,
                                        "published_at": _iso(a.published_at),
                                        "what_is_new": a.what_is_new,
                                    }
                                    for a in s.alerts
                                ],
                            }
                            for s in t.stories
                        ],
                    }
                    for t in content.topics
                ],
            },
        }


def _slack_feedback_buttons(urls: Mapping[str, str], alert_id: int) -> list[dict[str, Any]]:
    return [{"type": "button", "text": {"type": "plain_text", "text": label, "emoji": False},
             "url": urls[kind], "action_id": f"feedback_{kind}_{alert_id}"}
            for kind, label in FEEDBACK_LABELS if kind in urls]


def digest_headline(content: DigestContent) -> str:
    n = content.story_count
    new = sum(s.is_new for t in content.topics for s in t.stories)
    updated = n - new
    bits = []
    if new:
        bits.append(f"{new} new stor{'y' if new == 1 else 'ies'}")
    if updated:
        bits.append(f"{updated} updated")
    return "Monitor digest: " + (", ".join(bits) or "no news")


def biggest_development(content: DigestContent) -> tuple[DigestTopic, DigestStory, str] | None:
    """The digest's biggest development: the story carried by the most outlets (then the one with the most
    developments, then the latest), and what it is: the newest update's headline, or the title of a new story."""
    best: tuple[tuple[int, int, int], DigestTopic, DigestStory] | None = None
    for topic in content.topics:
        for story in topic.stories:
            rank = (story.sources_count, len(story.alerts), story.alerts[-1].alert_id if story.alerts else 0)
            if best is None or rank > best[0]:
                best = (rank, topic, story)
    if best is None:
        return None
    _, topic, story = best
    updates = story.updates
    what = updates[-1].title if updates and not story.is_new else story.title
    return topic, story, what


def email_subject(content: DigestContent) -> str:
    """`<topic>: <the biggest development> (+N more)`; feed text sanitised for the header."""
    found = biggest_development(content)
    if found is None:
        return "Monitor digest"
    topic, _story, what = found
    more = content.story_count - 1
    head = header_text(f"{topic.name}: {what}", 140)
    return head + (f" (+{more} more)" if more else "")


def message_id_domain(mail_from: str) -> str:
    """The right-hand side of our Message-IDs: mail_from's domain, cut so that a Message-ID always fits the
    deliveries.idempotency_key column (255)."""
    addr = parseaddr(mail_from)[1]
    domain = addr.rpartition("@")[2] if "@" in addr else ""
    return re.sub(r"[^A-Za-z0-9.-]", "", domain)[:180] or "monitor.invalid"


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=False).encode("utf-8")


def _slack_header(text: str) -> dict[str, Any]:
    # plain_text needs no escaping (no mrkdwn, no mentions) but has its own length limit.
    return {"type": "header", "text": {"type": "plain_text", "text": truncate_text(text, SLACK_MAX_HEADER_CHARS),
                                       "emoji": False}}


def _tidy_text(text: str) -> str:
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def validate_slack_message(message: dict[str, Any]) -> list[str]:
    """The limit violations of one Slack message (empty when valid); used by tests and `digest preview`."""
    problems: list[str] = []
    blocks: Sequence[dict[str, Any]] = message.get("blocks", [])
    if len(blocks) > SLACK_MAX_BLOCKS:
        problems.append(f"{len(blocks)} blocks > {SLACK_MAX_BLOCKS}")
    for i, b in enumerate(blocks):
        text = (b.get("text") or {}).get("text", "")
        if b["type"] == "section" and len(text) > SLACK_MAX_SECTION_CHARS:
            problems.append(f"block {i}: section text {len(text)} > {SLACK_MAX_SECTION_CHARS}")
        if b["type"] == "header" and len(text) > SLACK_MAX_HEADER_CHARS:
            problems.append(f"block {i}: header text {len(text)} > {SLACK_MAX_HEADER_CHARS}")
    return problems
