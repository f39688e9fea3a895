"""parse: feed bytes + response headers -> normalized items. Pure (no I/O); `now` is the fetch time.

Two readers, one result. `monitor.ingest.fastfeed` reads the common RSS 2.0 / Atom 1.0 shapes with expat directly
and returns exactly what feedparser returns for the fields used here, about ten times faster; for anything
else it declines and feedparser reads the document (`fast_path=False`, or the setting
`fast_feed_reader = false`, always uses feedparser). Everything below the reader (cleaning, identity,
dates, outlet) is shared.

feedparser reads the body from `io.BytesIO(body)` with the response headers (it must never get a str, which
it would treat as a URL or a path to open). Hostile XML: feedparser 6.0.14 parses with the stdlib expat
SAX reader with external general entities switched off, and before that its `replace_doctype` drops every
ENTITY declaration except plain literal ones from the prolog; expat >= 2.4 (2.5.0 here) also limits entity
amplification. We do not rely on those details: `_reject_entity_declarations` runs defusedxml's expat
parser (forbid entities, forbid external references) over the document prolog whenever a DOCTYPE is present,
and refuses the feed with a ParseError before feedparser sees it. Feeds have no business declaring entities.

Item identity is (outlet, key):
* key, an explicit fallback chain (first that exists wins):
    1. "guid:" + the entry's guid / Atom id (as given; hashed if very long), unless the guid is a URL of the
       item's own page: a guid whose canonical form (see `canonical_url`: fragment and tracking parameters
       dropped) equals the canonical link *is* the link and falls through to 2. The BBC republishes an
       article as `<guid>https://www.bbc.co.uk/news/x#0</guid>`, then `...#1`, with the same link and
       title: one article, one key.
    2. "link:" + the canonical link (see `canonical_url`),
    3. "hash:" + sha256 of the normalized title + summary.
* outlet: the registrable-ish domain of the *feed's* URL: the last two host labels, or three when the last
  two are a known second-level suffix such as co.uk or com.au (so every feed on feeds.bbci.co.uk is the
  outlet bbci.co.uk, and the same article arriving via two of its feeds is stored once). It never comes
  from what the feed says about itself or its items: a feed could otherwise publish items as
  "reuters.com", get in first with a real article's URL so that the genuine item is dropped as a
  duplicate, and inflate a story's outlet count. A feed marked `aggregator = true` in feeds.toml (Google
  News and the like) carries other outlets' items: there each item's outlet is the domain of its own link
  (else of the feed's link, else of the feed URL).
"""

from __future__ import annotations

import hashlib
import html
import io
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import defusedxml.expatreader
import feedparser
from defusedxml import DefusedXmlException

from monitor.errors import ParseError
from monitor.ingest import fastfeed
from monitor.records import ParsedFeed, ParsedItem

MAX_TITLE_CHARS = 500
MAX_SUMMARY_CHARS = 1000
MAX_KEY_CHARS = 400

# Query parameters that only track the reader; dropping them makes two links to one article equal.
TRACKING_PARAMS = frozenset({
    "at_medium", "at_campaign", "at_custom1", "at_custom2", "at_custom3", "at_custom4", "at_ptr_name",
    "at_link_id", "at_link_origin", "at_format", "at_bbc_team", "at_link_type", "at_brand",
    "fbclid", "gclid", "dclid", "msclkid", "yclid", "igshid", "mc_cid", "mc_eid", "cmpid", "cmp", "ito",
    "ns_mchannel", "ns_source", "ns_campaign", "ns_linkname", "ns_fee", "ocid", "ref", "ref_src", "smid",
    "smtyp", "xtor", "_ga",
})
TRACKING_PREFIXES = ("utm_", "at_", "ns_", "pk_", "mtm_", "hsa_")

# Second-level public suffixes common among news outlets (not the whole Public Suffix List, on purpose:
# this only has to keep one outlet's feeds together and two outlets apart).
SECOND_LEVEL_SUFFIXES = frozenset({
    "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "ltd.uk", "plc.uk", "net.uk",
    "com.au", "net.au", "org.au", "gov.au", "edu.au", "co.nz", "org.nz", "govt.nz",
    "co.jp", "ne.jp", "or.jp", "co.kr", "or.kr", "co.in", "net.in", "org.in", "gov.in",
    "co.za", "org.za", "gov.za", "com.br", "org.br", "gov.br", "com.ar", "com.mx", "com.tr", "org.tr",
    "com.cn", "org.cn", "gov.cn", "com.hk", "com.tw", "com.sg", "com.my", "com.pk", "com.ph", "com.ng",
    "com.eg", "com.sa", "com.qa", "com.lb", "com.jo", "co.il", "org.il", "gov.il", "ac.il", "co.id",
    "co.th", "com.ua", "com.ru", "com.pl", "co.ke", "com.gh", "com.vn", "com.bd", "com.np", "com.kw",
})

_TAG = re.compile(r"<[^>]*>")
_SCRIPT = re.compile(r"<(script|style|noscript|iframe)\b.*?</\1\s*>", re.I | re.S)
_BLOCK = re.compile(r"<\s*/?\s*(p|br|div|li|ul|ol|h[1-6]|tr|td|blockquote|section|article)\b[^>]*>", re.I)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_WS = re.compile(r"\s+")
_NON_WORD = re.compile(r"[\W_]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_DOCTYPE_MARKERS = (b"<!DOCTYPE", b"<!doctype", "<!DOCTYPE".encode("utf-16-le"), "<!DOCTYPE".encode("utf-16-be"))


def parse_feed(body: bytes, headers: Mapping[str, str] | Iterable[tuple[str, str]], *, feed_url: str,
               now: datetime, fast_path: bool = True, aggregator: bool = False) -> ParsedFeed:
    """Parse one feed body. Raises ParseError when the body cannot be read as RSS/Atom at all; a malformed
    but readable feed yields its items plus a warning. `fast_path=False` always uses feedparser (the
    reference fastfeed is tested against). Items belong to the outlet of `feed_url`, or, for an
    `aggregator` feed, each to the outlet of its own link (see the module docstring)."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError("parse_feed needs the body as bytes")
    body = bytes(body)
    if not body.strip():
        raise ParseError(f"{feed_url}: empty response body; the URL may not be a feed")
    _reject_entity_declarations(body, feed_url)
    # No content-location: feedparser would resolve guids against it, making a relative guid depend on which
    # of an outlet's feeds carried the item. Relative links are resolved below instead.
    response_headers = {k.lower(): v for k, v in (headers.items() if isinstance(headers, Mapping) else headers)
                        if k.lower() != "content-location"}
    warnings: list[str] = []
    fast = fastfeed.read(body, response_headers) if fast_path else None
    if fast is not None:  # the common shapes, read as feedparser reads them (see fastfeed)
        feed, entries = fast.feed, fast.entries
        if fast.warning:
            warnings.append(f"malformed feed, read leniently: {fast.warning}")
    else:
        feed, entries = _feedparser(body, response_headers, feed_url, warnings)
    feed_link = _str(feed.get("link")) or None
    own_outlet = outlet_of(feed_url) or "unknown"
    fallback_outlet = (outlet_of(feed_link or feed_url) or own_outlet) if aggregator else None
    items: list[ParsedItem] = []
    seen: set[str] = set()
    skipped = 0
    for entry in entries:
        item = _item(entry, feed_link or feed_url, fallback_outlet or own_outlet, now, by_link=aggregator)
        if item is None:
            skipped += 1
            continue
        ident = f"{item.outlet}\x00{item.key}"
        if ident in seen:
            warnings.append(f"duplicate entry {item.key[:120]!r} ignored")
            continue
        seen.add(ident)
        items.append(item)
    if skipped:
        warnings.append(f"{skipped} entr{'y' if skipped == 1 else 'ies'} without title or summary ignored")
    title = clean_text(_str(feed.get("title")), MAX_TITLE_CHARS) or None
    return ParsedFeed(title=title, link=feed_link, items=tuple(items), warnings=tuple(warnings))


def _feedparser(body: bytes, response_headers: dict[str, str], feed_url: str,
                warnings: list[str]) -> tuple[Mapping[str, Any], list[Any]]:
    try:
        d = feedparser.parse(io.BytesIO(body), response_headers=response_headers,
                             resolve_relative_uris=False, sanitize_html=False)
    except Exception as e:  # feedparser is meant not to raise; translate if it does
        raise ParseError(f"{feed_url}: the feed parser failed: {type(e).__name__}: {e}") from e
    if not d.get("version") and not d.entries:
        why = d.get("bozo_exception")
        raise ParseError(f"{feed_url}: not an RSS or Atom feed" + (f" ({why})" if why else "")
                         + "; check that the URL points at the feed itself, not a web page")
    if d.get("bozo"):
        warnings.append(f"malformed feed, read leniently: {d.get('bozo_exception')}")
    return d.get("feed", {}), d.entries


def _item(entry: Any, base_url: str, outlet: str, now: datetime, *, by_link: bool) -> ParsedItem | None:
    """One entry -> ParsedItem (None without title and summary). The item belongs to `outlet`, or with
    `by_link` (an aggregator feed) to its own link's outlet, `outlet` being the fallback."""
    title = clean_text(_str(entry.get("title")), MAX_TITLE_CHARS)
    summary = clean_text(_str(entry.get("summary") or entry.get("description")), MAX_SUMMARY_CHARS)
    if not title and not summary:
        return None
    if not title:
        title = clean_text(summary, 200)
    if summary == title:
        summary = ""
    # Identifiers lose control characters too (a leniently read `&#0;`): PostgreSQL text cannot hold NUL.
    raw_link = _CONTROL.sub("", _str(entry.get("link"))) or None
    if raw_link and not raw_link.startswith(("http://", "https://")):
        raw_link = urljoin(base_url, raw_link)
    link = canonical_url(raw_link) if raw_link else None
    guid = _CONTROL.sub("", _str(entry.get("id"))).strip() or None
    content_hash = text_hash(title, summary)
    # Identity: the fallback chain guid -> canonical link -> hash of title+summary (see module docstring).
    if guid and not (link and _same_page(guid, link)):
        key = "guid:" + (guid if len(guid) <= MAX_KEY_CHARS else hashlib.sha256(guid.encode()).hexdigest())
    elif link:
        key = "link:" + (link if len(link) <= MAX_KEY_CHARS else hashlib.sha256(link.encode()).hexdigest())
    else:
        key = "hash:" + content_hash
    if by_link:
        outlet = (outlet_of(link) if link else None) or outlet
    author = clean_text(_str(entry.get("author")), 200) or None
    return ParsedItem(
        key=key, outlet=outlet, guid=guid[:2048] if guid else None, link=link[:2048] if link else None,
        title=title, summary=summary, author=author, published_at=_published(entry, now),
        content_hash=content_hash,
    )


def _same_page(guid: str, canonical_link: str) -> bool:
    """True when the guid is a URL of the item's own page (the link plus a fragment such as the BBC's `#0`,
    `#1`, or with tracking parameters): such a guid identifies nothing the link does not."""
    return guid.startswith(("http://", "https://")) and canonical_url(guid) == canonical_link


def _published(entry: Any, now: datetime) -> datetime:
    """Published (else updated) time as aware UTC, never later than the fetch time; missing -> fetch time."""
    for name in ("published_parsed", "updated_parsed", "created_parsed"):
        t = entry.get(name)
        if isinstance(t, time.struct_time):
            try:
                dt = datetime(*t[:6], tzinfo=UTC)
            except (ValueError, OverflowError):
                continue
            return min(dt, now)
    return now


def _reject_entity_declarations(body: bytes, feed_url: str) -> None:
    """Refuse documents whose DTD declares entities (billion laughs) or external references (XXE)."""
    if not any(m in body for m in _DOCTYPE_MARKERS):  # a substring scan: microseconds even for MBs
        return
    # Any entity, internal or external (SYSTEM "file:..."), needs an ENTITY declaration, which is refused. An
    # external DTD subset (the old Netscape RSS 0.91 DOCTYPE) is allowed: expat does not load it.
    parser = defusedxml.expatreader.create_parser(forbid_dtd=False, forbid_entities=True, forbid_external=False)
    try:
        parser.feed(body)  # the DTD comes first, so the handlers fire before any later malformation
        parser.close()
    except DefusedXmlException as e:
        raise ParseError(f"{feed_url}: refused: the document declares XML entities or external references "
                         f"({type(e).__name__}), which feeds do not need and attackers use") from None
    except Exception:
        return  # malformed XML: feedparser's lenient reader decides whether it is readable


def clean_text(text: str, limit: int) -> str:
    """HTML fragment -> readable plain text: scripts/styles dropped, tags removed, entities decoded,
    whitespace collapsed, cut at a word boundary to `limit` characters (with an ellipsis)."""
    if not text:
        return ""
    text = _CONTROL.sub(" ", text)  # terminal escapes and characters XML cannot carry
    if "<" in text:
        text = _COMMENT.sub(" ", text)
        text = _SCRIPT.sub(" ", text)
        text = _BLOCK.sub(" ", text)
        text = _TAG.sub("", text)
    if "&" in text:
        text = html.unescape(html.unescape(text)) if "&amp;" in text else html.unescape(text)
        text = _TAG.sub("", text) if "<" in text and ">" in text else text
    text = _WS.sub(" ", text).strip()
    if len(text) > limit:
        cut = text[: limit - 1]
        space = cut.rfind(" ")
        text = (cut[:space] if space > limit * 0.6 else cut).rstrip(" ,;:.-") + "…"
    return text


def normalize_for_hash(text: str) -> str:
    """Case, punctuation and spacing do not matter."""
    return _NON_WORD.sub(" ", text.casefold()).strip()


def text_hash(title: str, summary: str) -> str:
    """sha256 of normalized title + summary: equal for the same wire story syndicated by two outlets."""
    return hashlib.sha256(f"{normalize_for_hash(title)}\n{normalize_for_hash(summary)}".encode()).hexdigest()


def canonical_url(url: str) -> str:
    """The link without tracking parameters and fragment, scheme and host lower-cased, default port dropped."""
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return url
    scheme = parts.scheme.lower()
    host = parts.hostname.lower().rstrip(".")
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        netloc = f"[{host}]" + (f":{port}" if port and (scheme, port) not in (("http", 80), ("https", 443)) else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        kept = [(k, v) for k, v in pairs if not _is_tracking(k)]
        if len(kept) != len(pairs):
            query = urlencode(kept, doseq=True)
    return urlunsplit((scheme, netloc, parts.path or "/", query, ""))


def _is_tracking(name: str) -> bool:
    n = name.lower()
    return n in TRACKING_PARAMS or n.startswith(TRACKING_PREFIXES)


def outlet_of(url: str | None) -> str | None:
    """Registrable-ish domain: last two host labels, three under a known second-level suffix (co.uk...)."""
    if not url:
        return None
    try:
        host = (urlsplit(url.strip()).hostname or "").lower().rstrip(".")
    except ValueError:
        return None
    if not host:
        return None
    if re.fullmatch(r"[\d.]+", host) or ":" in host:
        return host  # an IP address is its own outlet
    labels = host.split(".")
    if len(labels) <= 2:
        return host
    n = 3 if ".".join(labels[-2:]) in SECOND_LEVEL_SUFFIXES else 2
    return ".".join(labels[-n:])


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""
