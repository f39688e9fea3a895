"""fastfeed: feedparser's reading of the common RSS 2.0 and Atom 1.0 shapes, in a fraction of its time.

feedparser drives expat through xml.sax and runs several Python calls per element and per text piece; on a
first poll that is ~3-4 ms of CPU per 20-item feed, the bound on the first pass (bench/poll.py). This module
drives the same expat directly and reproduces what feedparser 6.0.x (pinned) returns for the fields
`parse.py` reads - feed title and link; per entry title, summary, link, id, author and the published /
updated / created dates - with feedparser's own helpers for the parts that are easy to get subtly wrong
(`convert_to_utf8`, `_parse_date`, `_urljoin`, the cp1252 table).

It is deliberately a *subset* reader. `read` returns None, and `parse.py` falls back to feedparser, for
anything outside the shapes it reproduces exactly:
* a body feedparser's convert_to_utf8 cannot decode, a DOCTYPE or ENTITY declaration, or any XML error
  (feedparser's lenient reader takes over). Decoding itself is feedparser's own convert_to_utf8, so every
  encoding, BOM, charset rule (RFC 3023) and bozo message is exactly its;
* a root other than <rss><channel> or Atom 1.0 <feed>; RSS 1.0 / RDF, Atom 0.3;
* xml:base (or base) anywhere, CDF attributes (href, lastmod) on channels and items, any '<prefix>:about'
  attribute on an item (feedparser's rdf:about follows whatever the document bound 'rdf' to);
* an element inside a text field (inline XHTML), a non-text content type, base64 "mode";
* any element feedparser would map onto one of the fields above from a position this reader does not
  model (media:title / media:description nested deeper than directly inside an item's media:content or
  media:group; media:title in the channel; itunes:subtitle; <source> with children; <image> inside an item;
  <textInput>; a second channel title, ...);
* a namespace declared inside the document that renames an element between its start and end tags;
* anything that makes this reader raise unexpectedly (feedparser then decides, and fails if it must).
Elements feedparser ignores for those fields (categories, enclosures, media:content / thumbnail / credit,
unknown namespaced extensions such as sy:, slash:, wfw:, feedburner:) are skipped.

Ordering quirks are reproduced, not tidied: a <description> (or media:description, itunes:summary, as
direct children of an item) that follows a summary is treated as content unless content came first; the
first non-empty title wins (an RSS <source> resets that; a media:title sets the title when none has won yet
but never wins itself; one inside media:content or media:group, as feedparser's depth rule has it, fills a
title or summary only when no item child has set it); a permalink guid or an Atom id becomes the link only when no link was set yet, while
a later <link> overwrites; the last date of each kind wins even when it does not parse; an author with <name>/<email> is "name (email)", and an
author element's first name/email/uri child first parses the entry's current author text ("a@b.c (Name)")
into the detail, so `<dc:creator>a@b.c (A)</dc:creator><author><name>B</name></author>` is "B (a@b.c)".
Element and attribute names are feedparser's: attributes by local name then by qualified name (so
`xlink:href` is no href), elements of an unknown namespace by the first prefix declared for it anywhere
so far (xml.sax gives feedparser no qualified names), or by their bare local name.

tests/test_fastfeed.py checks, on generated documents that shuffle these elements, on real news shapes edited
at random and on bench/poll.py's documents, that wherever this reader accepts a document parse_feed's result
equals feedparser's, and that it accepts the common shapes. Upgrading feedparser means re-running those
tests.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat

from feedparser.api import StrictFeedParser
from feedparser.datetimes import _parse_date
from feedparser.encodings import convert_to_utf8
from feedparser.html import _cp1252
from feedparser.urls import _urljoin

# feedparser's table namespace URI -> standard prefix ('' for RSS/Atom core), keys lower-cased as it does.
_KNOWN_NS: dict[str, str] = {k.lower(): v for k, v in StrictFeedParser.namespaces.items()}
_ATOM_NS = "http://www.w3.org/2005/atom"

# Element kinds, by feedparser's key for the element ("dc_creator", "pubdate", "link", ...).
_TITLE, _LINK, _GUID, _DESC, _SUMMARY, _CONTENT_HTML, _CONTENT = "title", "link", "guid", "desc", "summary", "chtml", "content"
_PUB, _UPD, _CRE, _AUTHOR, _SOURCE, _CONTRIB, _IGNORE = "pub", "upd", "cre", "author", "source", "contrib", "ignore"
_MEDIA_TITLE = "mtitle"
_NESTED_TITLE, _NESTED_DESC = "nested-title", "nested-desc"  # media:title/description in media:content/group
_MEDIA_CONTAINERS = frozenset({"media_content", "media_group"})
_NESTED_KINDS = {"media_title": _NESTED_TITLE, "media_description": _NESTED_DESC}
_NAME, _EMAIL, _URI = "name", "email", "uri"

_ENTRY_KINDS: dict[str, str] = {
    "title": _TITLE, "dc_title": _TITLE, "media_title": _MEDIA_TITLE, "link": _LINK, "guid": _GUID, "id": _GUID,
    "description": _DESC, "dc_description": _DESC, "media_description": _DESC, "summary": _SUMMARY,
    "itunes_summary": _SUMMARY,
    "content_encoded": _CONTENT_HTML, "fullitem": _CONTENT_HTML, "content": _CONTENT,
    "pubdate": _PUB, "published": _PUB, "issued": _PUB, "dcterms_issued": _PUB,
    "updated": _UPD, "modified": _UPD, "dc_date": _UPD, "dcterms_modified": _UPD, "lastbuilddate": _UPD,
    "created": _CRE, "dcterms_created": _CRE,
    "author": _AUTHOR, "dc_creator": _AUTHOR, "dc_author": _AUTHOR, "managingeditor": _AUTHOR,
    "itunes_author": _AUTHOR,
    "source": _SOURCE, "contributor": _CONTRIB,
}
# Elements with a feedparser handler that never touches the fields we read (checked against its source).
_HARMLESS = frozenset({
    "category", "dc_subject", "enclosure", "media_content", "media_thumbnail", "media_credit", "media_group",
    "georss_point",
    "media_category", "rights", "copyright", "dc_rights",
})
_CHANNEL_HARMLESS = _HARMLESS | frozenset({
    "description", "subtitle", "tagline", "language", "dc_language", "managingeditor", "webmaster",
    "dc_publisher", "dc_creator", "author", "contributor", "pubdate", "published", "lastbuilddate", "updated",
    "modified", "dc_date", "generator", "cloud", "icon", "logo",
})
_IMAGE_CHILDREN = frozenset({"title", "link", "url", "width", "height", "description"})
_AUTHOR_CHILDREN = {"name": _NAME, "email": _EMAIL, "uri": _URI, "url": _URI, "homepage": _URI}
# Keys feedparser itself fills in: an unknown element of that name would collide with them.
_RESERVED = frozenset({
    "title", "summary", "description", "link", "links", "id", "author", "authors", "author_detail", "content",
    "contributors", "tags", "image", "textinput", "source", "guidislink", "published", "updated", "created",
    "entries", "feed", "items", "item", "entry", "channel",
})
_TEXT_TYPES = frozenset({"text", "html", "plain", "text/plain", "text/html"})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_FIRST_ELEMENT = re.compile(rb"<\w")  # where feedparser's replace_doctype ends the prolog
_LINK_ENTITY = re.compile("&([A-Za-z0-9_]+);")
_C1_CONTROLS = re.compile("[\x80-\x9f]")  # what feedparser's cp1252 table maps
# feedparser's e-mail pattern in _sync_author_detail, verbatim
_EMAIL_PATTERN = re.compile(r"""(([a-zA-Z0-9\_\-\.\+]+)@((\[[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.)|(([a-zA-Z0-9\-]+\.)+))([a-zA-Z]{2,4}|[0-9]{1,3})(\]?))(\?subject=\S+)?""")


class _Decline(Exception):
    """The document is outside the subset; feedparser reads it instead."""


@dataclass(slots=True)
class FastFeed:
    """What parse.py reads off feedparser's result: `feed` and `entries` are dicts with feedparser's keys.
    Deliberately feedparser-shaped rather than a typed record: parse.py reads both readers' output with the
    same code, and it never leaves the parse stage."""
    feed: dict[str, Any]
    entries: list[dict[str, Any]]
    warning: str | None = None  # feedparser's bozo message for this document, if it would set one


def read(body: bytes, headers: Mapping[str, str]) -> FastFeed | None:
    """Read `body` as feedparser would, or return None when it is outside the subset (see module docstring).
    `headers`: the response headers with lower-cased names, as given to feedparser."""
    # feedparser's own decoding: every encoding, BOM, Content-Type rule and bozo message, exactly. Its
    # output (UTF-8 with a rewritten declaration) is what its expat reads, so it is what ours reads.
    result: dict[str, Any] = {}
    try:
        data = convert_to_utf8(dict(headers), body, result)
    except Exception:  # whatever feedparser makes of it is not ours to reproduce
        return None
    if not result.get("encoding"):
        return None  # no encoding decoded it: feedparser's lenient reader takes over
    exc = result.get("bozo_exception")
    start = _FIRST_ELEMENT.search(data)
    prolog = data[: start.start()] if start else data
    if b"<!" in prolog and (b"<!DOCTYPE" in prolog or b"<!ENTITY" in prolog):
        return None  # feedparser rewrites the prolog (replace_doctype)
    reader = _Reader()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.namespace_prefixes = True
    parser.buffer_text = True
    parser.buffer_size = 65536
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.text
    parser.StartNamespaceDeclHandler = reader.namespace
    parser.StartDoctypeDeclHandler = reader.doctype
    try:
        parser.Parse(data, True)
    except (_Decline, expat.ExpatError):
        return None
    except Exception:  # anything unforeseen: feedparser, the reference, decides (and raises if it must)
        return None
    if not reader.root_ok:
        return None
    return FastFeed(feed=reader.feed, entries=reader.entries, warning=str(exc) if exc is not None else None)


def _finish(pieces: list[str], relative: bool = False) -> str:
    """feedparser's `pop` post-processing of an element's text (strict parser, no sanitizing/resolving of
    embedded HTML, an empty base URI)."""
    out = "".join(pieces).strip()
    if relative and ":///" in out:  # the only case where _urljoin with an empty base changes anything
        out = _urljoin("", out)
    if out.isascii():
        return out
    with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
        out = out.encode("iso-8859-1").decode("utf-8")  # feedparser undoes double-encoded UTF-8
    return out.translate(_cp1252) if _C1_CONTROLS.search(out) else out


def _map_type(value: str) -> str:
    value = value.lower()
    return {"text": "text/plain", "plain": "text/plain", "html": "text/html",
            "xhtml": "application/xhtml+xml"}.get(value, value)


@dataclass(slots=True)
class _Frame:
    kind: str
    level: str  # where its children are: "entry", "feed", "image", "author", "nested", "text"
    pieces: list[str] | None = None
    attrs: dict[str, str] = field(default_factory=dict)
    content_mode: bool = False


class _Reader:
    """expat handlers reproducing feedparser's state machine for the subset (see module docstring)."""

    def __init__(self) -> None:
        self.feed: dict[str, Any] = {}
        self.entries: list[dict[str, Any]] = []
        self.root_ok = False
        self.stack: list[_Frame] = []
        self.keys: dict[str, str] = {}
        self.in_use: dict[str, str] = {}  # feedparser's namespaces_in_use: its prefix (or the document's) -> URI
        self.order: dict[str, int] = {}  # in_use's key order (a rebound prefix keeps its place)
        self.by_uri: dict[str, dict[str, int]] = {}  # URI -> {non-empty prefix bound to it: its place}
        self.doc_prefix_map: dict[str, str] = {}  # document prefix -> feedparser's prefix, known namespaces
        self.redeclared = False  # a namespace declared inside the document: keys may change between tags
        self.names: list[str] = []  # the keys of the open elements
        self.entry: dict[str, Any] | None = None
        self.title_locked = False
        self.has_content = False
        # feedparser's property_depth_map for an entry's title/summary: "child" (an item child set it),
        # "nested" (media:title/description one level deeper), None (unset, or set by _save: no depth)
        self.depth_of: dict[str, str] = {}
        self.detail: dict[str, str] = {}
        self.feed_titles = 0

    # -- names -------------------------------------------------------------------------------------------

    def namespace(self, prefix: str | None, uri: str) -> None:
        """feedparser's track_namespace: its prefix map for known namespaces, its namespaces_in_use."""
        if not uri:
            return
        self.keys.clear()
        if self.stack:
            self.redeclared = True
        lower = uri.lower()
        if "backend.userland.com/rss" in lower:
            uri = lower = "http://backend.userland.com/rss"
        known = _KNOWN_NS.get(lower)
        if known is not None:
            if prefix:
                self.doc_prefix_map[prefix] = known
            self._bind(known, uri)
        else:
            self._bind(prefix or "", uri)

    def _bind(self, key: str, uri: str) -> None:
        """in_use[key] = uri, keeping the per-URI index that `_key` reads in O(1) (a document declaring
        thousands of namespaces must not make naming quadratic)."""
        old = self.in_use.get(key)
        if old is not None and old != uri:
            self.by_uri.get(old, {}).pop(key, None)
        self.in_use[key] = uri
        place = self.order.setdefault(key, len(self.order))
        if key:
            self.by_uri.setdefault(uri, {})[key] = place

    def key(self, name: str) -> str:
        """feedparser's key for an element: 'title', 'dc_creator', 'media_content'..."""
        k = self.keys.get(name)
        if k is None:
            k = self.keys[name] = self._key(name)
        return k

    def _key(self, name: str) -> str:
        parts = name.split(" ")
        if len(parts) == 1:
            return name.lower()
        uri, local = parts[0], parts[1].lower()
        lower = uri.lower()
        if "backend.userland.com/rss" in lower:
            uri = lower = "http://backend.userland.com/rss"
        prefix = _KNOWN_NS.get(lower)
        if prefix is None:
            # An unknown namespace: xml.sax hands feedparser no qname, so it takes the first prefix declared
            # for the URI anywhere so far (none when it was only ever the default namespace).
            bound = self.by_uri.get(uri)
            prefix = min(bound, key=bound.__getitem__) if bound else ""
        if not prefix:
            return local
        prefix = prefix.lower()
        mapped = self.doc_prefix_map.get(prefix, prefix)  # unknown_starttag maps it once more
        return f"{mapped}_{local}" if mapped else local

    @staticmethod
    def attrs(raw: dict[str, str]) -> dict[str, str]:
        """feedparser's attribute dict: every attribute by its local name (as 'prefix:local' with feedparser's
        prefix for a known namespace), then by its qualified name; names lower-cased, rel/type values
        lower-cased."""
        out: dict[str, str] = {}
        for name, value in raw.items():
            if " " in name:
                parts = name.split(" ")
                known = _KNOWN_NS.get(parts[0].lower(), "")
                out[(f"{known}:{parts[1]}" if known else parts[1]).lower()] = value
            else:
                out[name.lower()] = value
        for name, value in raw.items():
            if " " in name:
                parts = name.split(" ")
                out[(f"{parts[2]}:{parts[1]}" if len(parts) == 3 else parts[1]).lower()] = value
            else:
                out[name.lower()] = value
        for k in ("rel", "type"):
            if k in out:
                out[k] = out[k].lower()
        if "xml:base" in out or "base" in out:
            raise _Decline("xml:base")
        return out

    # -- expat handlers ----------------------------------------------------------------------------------

    def doctype(self, *args: object) -> None:
        raise _Decline("DOCTYPE")

    def text(self, data: str) -> None:
        if self.stack:
            pieces = self.stack[-1].pieces
            if pieces is not None:
                pieces.append(data)

    def start(self, name: str, raw_attrs: dict[str, str]) -> None:
        key = self.keys.get(name) or self.key(name)
        self.names.append(key)
        attrs = self.attrs(raw_attrs) if raw_attrs else {}
        if not self.stack:
            self._start_root(name, key, attrs)
            return
        parent = self.stack[-1]
        level = parent.level
        if level == "text":
            raise _Decline("an element inside a text field")
        if level == "entry":
            self._start_in_entry(key, attrs)
        elif level == "feed":
            self._start_in_feed(key, attrs)
        elif level == "author":
            kind = _AUTHOR_CHILDREN.get(key)
            if kind is None:
                raise _Decline(f"<{key}> in an author")
            self.stack.append(_Frame(kind, "text", [], attrs))
        elif level == "image":
            if key not in _IMAGE_CHILDREN:
                raise _Decline(f"<{key}> in an image")
            self.stack.append(_Frame(_IGNORE, "text", None, attrs))
        elif level == "media" and key in _NESTED_KINDS:
            self._start_nested(_NESTED_KINDS[key], attrs)
        elif level == "channel-root":
            if key != "channel" or attrs.keys() & {"href", "lastmod"}:
                raise _Decline(f"<{key}> under <rss>")
            self.stack.append(_Frame(_IGNORE, "feed"))
        else:  # nested inside an ignored element (media: directly in an item's media:content/group)
            if not _harmless(key):
                raise _Decline(f"<{key}> nested where feedparser may read it")
            self.stack.append(_Frame(_IGNORE, "nested"))

    def _start_root(self, name: str, key: str, attrs: dict[str, str]) -> None:
        if key == "rss":
            self.stack.append(_Frame(_IGNORE, "channel-root"))
        elif key == "feed" and name.split(" ")[0].lower() == _ATOM_NS:
            if attrs.keys() & {"href", "lastmod"}:
                raise _Decline("CDF attributes")
            self.stack.append(_Frame(_IGNORE, "feed"))
        else:
            raise _Decline(f"root <{key}>")
        self.root_ok = True

    def _start_in_feed(self, key: str, attrs: dict[str, str]) -> None:
        if key in ("item", "entry"):
            if attrs and (attrs.keys() & {"href", "lastmod"} or any(k.endswith(":about") for k in attrs)):
                # feedparser takes the id from '<p>:about', p being whatever the document bound 'rdf' to
                raise _Decline("CDF/RDF attributes on an item")
            self.entry = {}
            self.entries.append(self.entry)
            self.title_locked = False
            self.has_content = False
            self.depth_of = {}
            self.stack.append(_Frame(_IGNORE, "entry"))
        elif key in ("title", "dc_title"):
            self.feed_titles += 1
            if self.feed_titles > 1:
                raise _Decline("two feed titles")
            _check_text_type(attrs, "text/plain")
            self.stack.append(_Frame(_TITLE, "text", [], attrs))
        elif key == "link":
            if self._link_start(attrs, self.feed):
                self.stack.append(_Frame(_IGNORE, "nested"))
            else:
                self.stack.append(_Frame(_LINK, "text", [], attrs))
        elif key in ("id", "guid"):
            self.stack.append(_Frame(_GUID, "text", [], attrs))
        elif key == "image":
            self.stack.append(_Frame(_IGNORE, "image"))
        elif key in ("author", "contributor", "managingeditor", "dc_creator"):
            self.stack.append(_Frame(_IGNORE, "author", []))
        elif key in ("description", "subtitle", "tagline", "rights", "copyright", "dc_rights"):
            _check_text_type(attrs, "text/plain")
            self.stack.append(_Frame(_IGNORE, "text", None))
        elif key in _CHANNEL_HARMLESS or _harmless(key):
            self.stack.append(_Frame(_IGNORE, "nested"))
        else:
            raise _Decline(f"<{key}> in the channel")

    def _start_in_entry(self, key: str, attrs: dict[str, str]) -> None:
        kind = _ENTRY_KINDS.get(key)
        entry = self.entry
        assert entry is not None
        if kind is None:
            if not _harmless(key):
                raise _Decline(f"<{key}> in an item")
            self.stack.append(_Frame(_IGNORE, "media" if key in _MEDIA_CONTAINERS else "nested"))
            return
        frame = _Frame(kind, "text", [], attrs)
        if kind == _LINK:
            if self._link_start(attrs, entry):
                frame = _Frame(_IGNORE, "nested")
        elif kind in (_TITLE, _MEDIA_TITLE):
            _check_text_type(attrs, "text/plain")
        elif kind in (_DESC, _SUMMARY):
            _check_text_type(attrs, "text/html" if kind == _DESC else "text/plain")
            if "summary" in entry and not self.has_content:
                frame.content_mode = True  # feedparser reads a second summary as content
                self.has_content = True
        elif kind in (_CONTENT_HTML, _CONTENT):
            _check_text_type(attrs, "text/html" if kind == _CONTENT_HTML else "text/plain")
            self.has_content = True
        elif kind == _AUTHOR:
            self.detail = {}
            frame.level = "author"
        elif kind == _SOURCE:
            self.title_locked = False
        elif kind == _CONTRIB:
            frame = _Frame(_IGNORE, "author")
        self.stack.append(frame)

    def _start_nested(self, kind: str, attrs: dict[str, str]) -> None:
        """media:title / media:description one level below an item child: feedparser's title and description
        handlers, under its depth rule (a deeper value never replaces a shallower one)."""
        assert self.entry is not None
        _check_text_type(attrs, "text/plain" if kind == _NESTED_TITLE else "text/html")
        frame = _Frame(kind, "text", [], attrs)
        if kind == _NESTED_DESC and "summary" in self.entry and not self.has_content:
            frame.content_mode = True
            self.has_content = True
        self.stack.append(frame)

    def _link_start(self, attrs: dict[str, str], context: dict[str, Any]) -> bool:
        """feedparser's _start_link: True when the link is an attribute (href/url/uri), False when its text
        is the link."""
        href = attrs.get("url", attrs.get("uri", attrs.get("href")))
        if href:
            attrs.pop("url", None)
            attrs.pop("uri", None)
            attrs["href"] = href
        if "href" not in attrs:
            return False
        rel = attrs.setdefault("rel", "alternate")
        link_type = attrs.setdefault("type", "application/atom+xml" if rel == "self" else "text/html")
        if rel == "alternate" and _map_type(link_type) in _HTML_TYPES:
            context["link"] = _urljoin("", attrs["href"])
        return True

    def end(self, name: str) -> None:
        start_key = self.names.pop()
        if self.redeclared and self.key(name) != start_key:
            raise _Decline("a namespace declaration renamed an open element")
        frame = self.stack.pop()
        kind = frame.kind
        if kind == _IGNORE:
            if frame.level == "entry":
                self.entry = None
            return
        parent = self.stack[-1].level if self.stack else ""
        if parent == "feed":
            self._end_in_feed(frame)
        elif parent == "entry":
            self._end_in_entry(frame)
        elif parent == "media":
            self._end_nested(frame)
        elif parent == "author" and self.entry is not None and self.stack[-1].kind == _AUTHOR:
            assert frame.pieces is not None
            # feedparser's _save_author: sync the entry's author from the detail *before* this value lands
            self._sync_author()
            if kind == _URI:
                self.detail["href"] = _finish(frame.pieces, relative=True)
            else:  # name/email: feedparser keeps the raw stripped text (expecting_text=0)
                self.detail[kind] = "".join(frame.pieces).strip()

    def _sync_author(self) -> None:
        """feedparser's _sync_author_detail for an entry; self.detail is its authors[-1]. With an empty
        detail it parses the entry's current author text ("a@b.c (Name)") into it, so a name or email read
        in a later <author> combines with what an earlier author element said."""
        entry = self.entry
        assert entry is not None
        detail = self.detail
        if detail:
            name, email = detail.get("name"), detail.get("email")
            if name and email:
                entry["author"] = f"{name} ({email})"
            elif name or email:
                entry["author"] = name or email
            return
        author = entry.get("author")
        if not author:
            return
        match = _EMAIL_PATTERN.search(author)
        if match:
            email = match.group(0)
            author = author.replace(email, "").replace("()", "").replace("<>", "").replace("&lt;&gt;", "")
            author = author.strip()
            if author and author[0] == "(":
                author = author[1:]
            if author and author[-1] == ")":
                author = author[:-1]
            author = author.strip()
            detail["email"] = email
        if author:
            detail["name"] = author

    def _end_nested(self, frame: _Frame) -> None:
        entry = self.entry
        assert entry is not None and frame.pieces is not None
        value = _finish(frame.pieces)
        if frame.kind == _NESTED_TITLE:
            field_name = "title"
            if self.title_locked:  # feedparser returns before storing (and restores title_depth after)
                return
        else:
            field_name = "summary"
            if frame.content_mode:  # read as content: copied to summary only if it had none
                entry.setdefault("summary", value)
                return
        if self.depth_of.get(field_name) != "child":  # deeper replaces only unset or equally deep
            entry[field_name] = value
            self.depth_of[field_name] = "nested"

    def _end_in_feed(self, frame: _Frame) -> None:
        assert frame.pieces is not None
        if frame.kind == _TITLE:
            self.feed["title"] = _finish(frame.pieces)
        elif frame.kind == _LINK:
            self.feed["link"] = _fix_link_entities(_finish(frame.pieces, relative=True))
        elif frame.kind == _GUID:
            permalink = frame.attrs.get("ispermalink", "true") == "true"
            value = _finish(frame.pieces, relative=permalink)
            self.feed["id"] = value
            if permalink:
                self.feed.setdefault("link", value)

    def _end_in_entry(self, frame: _Frame) -> None:
        entry = self.entry
        assert entry is not None and frame.pieces is not None
        kind = frame.kind
        if kind == _TITLE:
            value = _finish(frame.pieces)
            if not self.title_locked:
                entry["title"] = value
                self.depth_of["title"] = "child"
                self.title_locked = bool(value)
        elif kind == _MEDIA_TITLE:  # a title, but feedparser restores title_depth after it: it never locks
            if not self.title_locked:
                entry["title"] = _finish(frame.pieces)
                self.depth_of["title"] = "child"
        elif kind in (_DESC, _SUMMARY):
            value = _finish(frame.pieces)
            if frame.content_mode:
                entry.setdefault("summary", value)
            else:
                entry["summary"] = value
                self.depth_of["summary"] = "child"
        elif kind in (_CONTENT_HTML, _CONTENT):
            entry.setdefault("summary", _finish(frame.pieces))
        elif kind == _LINK:
            value = _finish(frame.pieces, relative=True)
            entry["link"] = _fix_link_entities(value.replace("&amp;", "&"))
        elif kind == _GUID:
            permalink = frame.attrs.get("ispermalink", "true") == "true"
            value = _finish(frame.pieces, relative=permalink)
            entry["id"] = value
            if permalink:
                entry.setdefault("link", value)
        elif kind == _PUB:
            entry["published_parsed"] = _parse_date(_finish(frame.pieces))
        elif kind == _UPD:
            entry["updated_parsed"] = _parse_date(_finish(frame.pieces))
        elif kind == _CRE:
            entry["created_parsed"] = _parse_date(_finish(frame.pieces))
        elif kind == _AUTHOR:
            entry["author"] = _finish(frame.pieces)
            self._sync_author()


def _fix_link_entities(link: str) -> str:
    """feedparser turns '&name;' in a link's text into '&name' (a query string read as entities)."""
    return _LINK_ENTITY.sub(r"&\g<1>", link) if "&" in link else link


def _check_text_type(attrs: dict[str, str], default: str) -> None:
    if "mode" in attrs:
        raise _Decline("content mode attribute")
    if attrs.get("type", default) not in _TEXT_TYPES:
        raise _Decline(f"content type {attrs.get('type')!r}")


def _has_handler(key: str) -> bool:
    return hasattr(StrictFeedParser, "_start_" + key) or hasattr(StrictFeedParser, "_end_" + key)


def _meaningful(key: str) -> bool:
    """Would feedparser do anything with an element of this key beyond storing it under its own name?"""
    return _has_handler(key) or key in _RESERVED or key.endswith(("_parsed", "_detail"))


def _harmless(key: str) -> bool:
    """An element feedparser reads, if at all, into fields we do not use."""
    return key in _HARMLESS or not _meaningful(key)
