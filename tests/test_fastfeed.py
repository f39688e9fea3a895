"""fastfeed: wherever it accepts a document, parse_feed reads it exactly as feedparser does.

Test A drives a seeded generator of RSS 2.0 / Atom 1.0 documents built to hit feedparser's quirks (element
order, duplicates, permalink guids, link attributes, author details, date kinds, encodings, content types,
namespaces) and checks, for every document fastfeed accepts, that parse_feed's fast path gives the same
ParsedFeed as feedparser (or the same ParseError), and that the raw fields parse.py reads are equal; a second
source edits real news shapes at random (`mutate`), and the minimal shapes of past mismatches are fixed cases
(FOUND). A failure names its source and seed: `body, headers = generate(SEED)` (or `mutate(SEED)`) rebuilds it.
Test B checks that the shapes real news feeds publish are accepted (so A cannot pass by declining everything)
and that shapes outside the subset are declined; test C that hostile input never makes fastfeed raise.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET
from xml.sax.saxutils import quoteattr

import feedparser
import pytest

from monitor.errors import ParseError
from monitor.ingest import fastfeed
from monitor.ingest.parse import parse_feed
from monitor.lab.replay import ReplayFeeds, ReplayItem
from monitor.records import ParsedFeed

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
FEED_URL = "https://feeds.example.com/news/rss.xml"
N_DOCS = 3000
N_MUTATIONS = 1000

# --------------------------------------------------------------------------------------------------------
# The generator. Every random choice goes through one random.Random(seed): a seed is a document.

NS = {
    "content": "http://purl.org/rss/1.0/modules/content/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "dcterms": "http://purl.org/dc/terms/",
    "media": "http://search.yahoo.com/mrss/",
    "atom": "http://www.w3.org/2005/Atom",
    "sy": "http://purl.org/rss/1.0/modules/syndication/",
    "slash": "http://purl.org/rss/1.0/modules/slash/",
    "feedburner": "http://rssnamespace.org/feedburner/ext/1.0",
    "itunes": "http://www.itunes.com/dtds/podcast-1.0.dtd",
    "wfw": "http://wellformedweb.org/CommentAPI/",
    "georss": "http://www.georss.org/georss",
    "xlink": "http://www.w3.org/1999/xlink",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "x": "http://example.com/ns/x",
    "y": "http://example.com/ns/y",
}

# Element text as it appears in the document (already XML-escaped where needed).
TEXTS = [
    "Gaza truce extended as talks resume",
    "  Talks resume in Doha \n ",
    "Hostages &amp; prisoners: what we know",
    "A &amp;amp; B double-escaped",
    "&lt;p&gt;Hello &lt;b&gt;world&lt;/b&gt; &amp;nbsp;again&lt;/p&gt;",
    "&lt;img src=&quot;/x.jpg&quot;&gt;&lt;a href=&quot;rel/1&quot;&gt;link&lt;/a&gt;",
    "<![CDATA[<p>Ceasefire & talks <em>continue</em></p>]]>",
    "<![CDATA[  ]]>",
    "<![CDATA[Part one]]> and <![CDATA[part two]]>",
    "Caf&#233; &#x2019;s &#8220;quotes&#8221;",
    "Café déjà vu – “curly” ‘quotes’",
    "CafÃ© mojibake Ã©tÃ© â€™s",
    "Ã",
    "controls \x85 \x93quoted\x94 \x96 dash \x80 \x9f",
    "char refs &#150; &#x93;x&#x94; &#128;",
    "日本語のニュース 🎉",
    "   ",
    "",
    "\n\t",
    "line one\nline two\r\nline three",
    "&quot;q&quot; &apos;a&apos; &gt; &lt;",
    "&#38;#233; &#38;amp; literal",
    "a<!-- comment -->b<?pi data?>c",
    "Ünïcödé © ® ™ € £ ¥",
    "trailing nbsp\u00a0",
    "\u2028line separator\u2029",
    "x" * 1200,
    "Ukraine war: latest updates",
    "&lt;![CDATA[nested]]&gt;",
    "&amp;lt;script&amp;gt;alert(1)&amp;lt;/script&amp;gt;",
    "\x85leading NEL and trailing nbsp\u00a0",
    "\u00a0\u3000ideographic space\u2003",
]
LINKS = [
    "https://www.example.com/news/world-1",
    " https://www.example.com/a?b=1&amp;c=2 ",
    "https://www.example.com/a?b=1&amp;amp;c=2",
    "https://www.example.com/a?x=1&amp;y;=2&amp;z;",
    "http:///www.example.com/three-slashes",
    "https:////example.org//four",
    "/relative/path/1",
    "relative.html",
    "",
    "   ",
    "https://example.com/caf&#233;",
    "<![CDATA[https://example.com/cdata?a=1&b=2]]>",
    "HTTP://EXAMPLE.COM/UPPER?Q=1",
    "https://www.bbc.co.uk/news/world-123?at_medium=RSS&amp;at_campaign=KARANGA",
    "https://www.aljazeera.com/news/2024/4/30/story?utm_source=rss",
    "https://example.com/%E2%80%99quoted",
    "https://example.com/Ã©",
    "javascript:alert(1)",
    "mailto:desk@example.com",
    "\n  https://www.theguardian.com/world/2024/apr/30/story  \n",
    "feed://example.com/x",
    "https://example.com/a b",
]
GUIDS = LINKS[:8] + [
    "tag:example.com,2024:1",
    "urn:uuid:6f1c2c2e-0000-4000-8000-000000000001",
    "12345",
    "  padded-guid  ",
    "https://www.example.com/news/world-1",
    "Ã©-guid",
    "",
]
DATES = [
    "Tue, 30 Apr 2024 09:00:00 +0100",
    "Tue, 30 Apr 2024 09:00:00 GMT",
    "30 Apr 2024 09:00 EST",
    "Tue, 30 Apr 2024 09:00:00 Z",
    "2024-04-30T08:00:00Z",
    "2024-04-30T08:00:00+02:00",
    "  2024-04-30T08:00:00.123Z  ",
    "2024-04-30",
    "2024-04-30 08:00:00",
    "garbage",
    "",
    "Mon, 31 Feb 2024 00:00:00 GMT",
    "Sat, 01 Jan 0001 00:00:00 GMT",
    "2024-13-45T99:99:99Z",
    "1714464000",
    "Tuesday, April 30, 2024",
    "Tue, 30 Apr 2024 09:00:00 +2400",
    "Wed, 01 May 2030 00:00:00 GMT",
    "<![CDATA[Tue, 30 Apr 2024 10:00:00 +0000]]>",
]
AUTHOR_TEXTS = [
    "desk@example.com (Jane Doe)",
    "Jane Doe",
    "jane@example.com",
    "Jane Doe &lt;jane@example.com&gt;",
    "(Jane Doe) jane@example.com",
    "",
    "  ",
    "BBC News",
    "Ã‰mile Zola",
    "nobody@localhost",
    "a@b.co.uk?subject=hi (Reader)",
]
NAMES = ["Jane Doe", "", "  Jane  ", "Ã‰mile", "José &amp; María", "<![CDATA[Bob]]>"]
EMAILS = ["jane@example.com", "", "not-an-email", " x@y.org "]
URIS = ["https://example.com/jane", "", "/people/jane", "http:///three.example/jane"]
CONTENT_TYPES = ["text", "html", "xhtml", "text/html", "text/plain", "TEXT", "HTML", "plain",
                 "application/xhtml+xml", "image/png", "application/octet-stream", "text/xml", "bogus"]
HEADERS: list[dict[str, str]] = [
    {"Content-Type": "application/rss+xml"},
    {"Content-Type": "application/rss+xml; charset=utf-8"},
    {"Content-Type": "application/rss+xml; charset=UTF-8"},
    {"Content-Type": "application/atom+xml"},
    {"Content-Type": "application/xml"},
    {"Content-Type": "application/xml; charset=\"utf-8\""},
    {"Content-Type": "application/xml; charset=iso-8859-1"},
    {"Content-Type": "application/xml; charset=windows-1252"},
    {"Content-Type": "text/xml"},
    {"Content-Type": "text/xml; charset=utf-8"},
    {"Content-Type": "text/xml; charset=ISO-8859-1"},
    {"Content-Type": "text/html"},
    {"Content-Type": "text/html; charset=utf-8"},
    {"Content-Type": "application/octet-stream"},
    {"Content-Type": ""},
    {"Server": "nginx"},
    {},
]


class _Doc:
    """Builds one document from one seeded Random."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        r = self.r
        self.p = {k: k for k in NS}  # namespace -> prefix used in this document
        if r.random() < 0.1:
            self.p["dc"] = r.choice(["DC", "purl", "d"])
        if r.random() < 0.1:
            self.p["media"] = r.choice(["m", "MRSS", "yahoo"])
        if r.random() < 0.05:
            self.p["atom"] = r.choice(["a", "atom10", "Atom"])
        self.uri = dict(NS)  # namespace -> the URI this document binds its prefix to
        if r.random() < 0.03:
            self.uri["rdf"] = NS["dc"]  # the prefix 'rdf' bound to Dublin Core
        self.swap = r.random() < 0.03  # bind the standard prefix 'dc' to the media namespace and 'm' to dc
        if self.swap:
            self.p["dc"], self.p["media"] = "media", "dc"

    # -- small pieces --------------------------------------------------------------------------------------

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def text(self) -> str:
        r = self.r
        if r.random() < 0.75:
            return r.choice(TEXTS[:16] + TEXTS[27:28] * 6)
        return "".join(r.choice(TEXTS) for _ in range(r.randint(1, 3)))

    def q(self, ns: str, local: str) -> str:
        return f"{self.p[ns]}:{local}"

    def el(self, name: str, body: str, attrs: str = "") -> str:
        return f"<{name}{attrs}>{body}</{name}>" if body or self.chance(0.7) else f"<{name}{attrs}/>"

    def ws(self) -> str:
        return self.r.choice(["", "", "\n", "\n  ", " "])

    def ctype(self, common: list[str]) -> str:
        r = self.r
        if r.random() < 0.6:
            return ""
        t = r.choice(common) if r.random() < 0.85 else r.choice(CONTENT_TYPES)
        return f" type={quoteattr(t)}"

    def date(self) -> str:
        return self.r.choice(DATES)

    def link_text(self) -> str:
        return self.r.choice(LINKS)

    def href(self) -> str:
        v = self.r.choice(LINKS)
        v = v.replace("<![CDATA[", "").replace("]]>", "").replace("&", "&amp;").replace("&amp;amp;", "&amp;")
        return quoteattr(v.replace("&amp;", "&"))[1:-1] if self.chance(0.5) else v

    def atom_link(self, prefix: str = "") -> str:
        r = self.r
        attrs = ""
        rel = r.choice([None, None, "alternate", "alternate", "self", "enclosure", "related", "ALTERNATE", "replies"])
        typ = r.choice([None, None, None, "text/html", "html", "application/xhtml+xml", "application/atom+xml",
                        "TEXT/HTML", "text/html; charset=utf-8", "audio/mpeg", "xhtml"])
        attr_name = r.choice(["href"] * 6 + ["url", "uri", "HREF"])
        parts = []
        if rel is not None:
            parts.append(f' rel="{rel}"')
        if typ is not None:
            parts.append(f' type="{typ}"')
        if r.random() < 0.93:
            parts.append(f' {attr_name}="{self.href()}"')
        if r.random() < 0.08:
            parts.append(f' {r.choice(["href", "url", "uri"])}=""')
        if r.random() < 0.05:
            parts.append(f' {self.p["xlink"]}:href="https://xlink.example/1"')
        if r.random() < 0.05:
            parts.append(f' {self.p["x"]}:href="https://x.example/attr"')
        if r.random() < 0.03:
            parts.append(' hreflang="en" title="t" length="10"')
        r.shuffle(parts)
        attrs = "".join(parts)
        body = r.choice(["", "", "", "https://text.example/in-link", " "])
        return self.el(f"{prefix}link", body, attrs)

    def author_children(self, prefix: str = "") -> str:
        r = self.r
        kids = []
        if r.random() < 0.85:
            kids.append(self.el(f"{prefix}name", r.choice(NAMES)))
        if r.random() < 0.5:
            kids.append(self.el(f"{prefix}email", r.choice(EMAILS)))
        if r.random() < 0.4:
            kids.append(self.el(f"{prefix}{r.choice(['uri', 'uri', 'url', 'homepage'])}", r.choice(URIS)))
        if r.random() < 0.1:
            kids.append(self.el(f"{prefix}name", r.choice(NAMES)))
        r.shuffle(kids)
        lead = r.choice(["", "", "", "stray text "])
        return lead + self.ws().join(kids) + self.ws()

    def unknown_extras(self) -> list[str]:
        r = self.r
        x, y, atom = self.p["x"], self.p["y"], self.p["atom"]
        common: list[Callable[[], str]] = [
            lambda: self.el(f"{x}:title", self.text()),
            lambda: self.el(f"{x}:link", self.link_text()),
            lambda: self.el(f"{x}:summary", self.text()),
            lambda: self.el(f"{x}:foo", self.text(), ' a="1"'),
            lambda: f'<{x}:tree><{x}:leaf>1</{x}:leaf><{x}:leaf k="v"/></{x}:tree>',
            lambda: self.el("extra", self.text(), f' xmlns="{NS["y"]}"'),
            lambda: f'<{y}:note xmlns:{y}="{NS["y"]}">n</{y}:note>',
            lambda: self.el("ttl", "60"),
            lambda: self.el("Foo", "mixed case"),
            lambda: self.el(f"{self.p['dc']}:foo", "known namespace, unknown name"),
            lambda: self.el(f"{atom}:foo", "atom namespace, unknown name"),
            lambda: self.el(f"{x}:foo", "", f' {x}:attr="1"'),
        ]
        rare: list[Callable[[], str]] = [
            lambda: f'<extra xmlns="{NS["y"]}"><title>inner title</title></extra>',
            lambda: self.el("title", self.text(), f' xmlns="{NS["y"]}"'),  # a title in an unknown default ns
            lambda: self.el("link", self.link_text(), f' xmlns="{NS["y"]}"'),
            lambda: self.el("description", self.text(), f' xmlns="{NS["y"]}"'),
            lambda: f'<{x}:a xmlns:{x}="{NS["y"]}"><{x}:b xmlns:{x}="{NS["x"]}">t</{x}:b></{x}:a>',
            lambda: f'<z:title xmlns:z="{NS["dc"]}">{self.text()}</z:title>',  # dc:title under another prefix
            lambda: f'<{atom}:title xmlns:{atom}="{NS["y"]}">{self.text()}</{atom}:title>',
            lambda: self.el("date", self.date()),
            lambda: self.el("docs", "/docs"),
            lambda: self.el("links", "collide"),
            lambda: self.el("published_parsed", "collide"),
            lambda: self.el("guidislink", "1"),
            lambda: self.el("href", "/href-text"),
            lambda: self.el("url", "/url-text"),
        ]
        out = [r.choice(common)() for _ in range(r.choice([0, 0, 0, 1, 1, 2]))]
        if r.random() < 0.08:
            out.append(r.choice(rare)())
        return out

    def harmless_extras(self) -> list[str]:
        r = self.r
        m, sy, sl, fb, wfw = (self.p[k] for k in ("media", "sy", "slash", "feedburner", "wfw"))
        pool = [
            lambda: self.el("category", self.text(), r.choice(["", ' domain="d"', ' term="t" scheme="s"'])),
            lambda: '<enclosure url="https://cdn.example/a.mp3" length="1" type="audio/mpeg"/>',
            lambda: self.el("comments", self.link_text()),
            lambda: f'<{m}:content url="https://cdn.example/i.jpg" medium="image" width="1"/>',
            lambda: (f'<{m}:content url="https://cdn.example/i.jpg" type="image/jpeg">{self.ws()}'
                     f'<{m}:credit scheme="urn:ebu">{self.text()}</{m}:credit>{self.ws()}'
                     f'<{m}:thumbnail url="https://cdn.example/t.jpg"/></{m}:content>'),
            lambda: self.el(f"{m}:thumbnail", r.choice(["", "https://cdn.example/t2.jpg"]),
                            r.choice([' url="https://cdn.example/t.jpg" width="240"', ""])),
            lambda: self.el(f"{m}:credit", self.text(), ' role="author"'),
            # read by feedparser into title/summary under its depth rule (Times of Israel, NYT variants)
            lambda: (f'<{m}:content url="https://cdn.example/i.jpg" medium="image">{self.ws()}'
                     + self.el(f"{m}:title", self.text(), self.ctype(["html", "plain"]))
                     + self.ws() + self.el(f"{m}:description", self.text()) + f"</{m}:content>"),
            lambda: (f"<{m}:group>" + self.el(f"{m}:description", self.text()) + self.el(f"{m}:title", self.text())
                     + f'<{m}:content url="https://cdn.example/v.mp4"/></{m}:group>'),
            lambda: (f"<{m}:group><{m}:content url=\"https://cdn.example/v.mp4\"/>"
                     f"<{m}:thumbnail url=\"https://cdn.example/v.jpg\"/></{m}:group>"),
            lambda: self.el(f"{sy}:updatePeriod", "hourly"),
            lambda: self.el(f"{sl}:comments", "12"),
            lambda: self.el(f"{fb}:origLink", self.link_text()),
            lambda: self.el(f"{wfw}:commentRss", "https://example.com/c.rss"),
            lambda: self.el(f"{self.p['georss']}:point", "45.1 -1.2"),
        ]
        return [r.choice(pool)() for _ in range(r.choice([0, 0, 1, 1, 2, 3]))]

    def declined_extras(self, in_entry: bool) -> list[str]:
        """Shapes fastfeed should decline (feedparser may read them into fields parse.py uses)."""
        r = self.r
        if r.random() > 0.12:
            return []
        m, it = self.p["media"], self.p["itunes"]
        pool: list[Callable[[], str]] = [
            lambda: f"<{m}:group><{m}:title>{self.text()}</{m}:title></{m}:group>",
            lambda: f'<{m}:content url="u"><{m}:description>{self.text()}</{m}:description></{m}:content>',
            lambda: self.el(f"{it}:subtitle", self.text()),
            lambda: '<source url="https://src.example/rss"><title>src</title></source>',
            lambda: "<summary type=\"xhtml\"><div xmlns=\"http://www.w3.org/1999/xhtml\">x <b>y</b></div></summary>",
            lambda: self.el("description", "aGVsbG8=", ' mode="base64" type="text/plain"'),
            lambda: self.el("subtitle", self.text()),
            lambda: self.el("abstract", self.text()),
            lambda: self.el("body", self.text()),
            lambda: self.el("dc:publisher".replace("dc", self.p["dc"]), "Pub"),
        ]
        if in_entry:
            pool += [
                lambda: "<image><url>https://i.example/x.png</url><title>img</title><link>/x</link></image>",
                lambda: self.el("title", self.text(), ' xml:base="https://base.example/"'),
                lambda: self.el("link", "x", ' xml:lang="en" base="https://b.example/"'),
            ]
        else:
            pool += [
                lambda: ("<textInput><title>Search</title><description>d</description><name>q</name>"
                         "<link>https://example.com/search</link></textInput>"),
                lambda: self.el("summary", self.text()),
            ]
        return [r.choice(pool)()]

    # -- RSS ----------------------------------------------------------------------------------------------

    def guid(self) -> str:
        r = self.r
        attr = r.choice(["", "", ' isPermaLink="true"', ' isPermaLink="false"', ' isPermaLink="True"',
                         ' isPermaLink="FALSE"', ' ispermalink="false"', ' isPermaLink=""',
                         f' {self.p["x"]}:isPermaLink="false"', ' isPermaLink="false" ISPERMALINK="true"'])
        return self.el("guid", r.choice(GUIDS), attr)

    def rss_item(self) -> str:
        r = self.r
        dc, content, atom, dcterms = (self.p[k] for k in ("dc", "content", "atom", "dcterms"))
        els: list[str] = []
        n_title = r.choices([0, 1, 2, 3], [4, 80, 14, 2])[0]
        for i in range(n_title):
            body = "" if (i == 0 and n_title > 1 and self.chance(0.4)) else self.text()
            els.append(self.el(r.choice(["title"] * 5 + [f"{dc}:title"]), body, self.ctype(["html", "text"])))
        for _ in range(r.choices([0, 1, 2], [15, 75, 10])[0]):
            els.append(self.el("link", self.link_text()) if r.random() < 0.8 else self.atom_link(f"{atom}:"))
        for _ in range(r.choices([0, 1, 2], [20, 75, 5])[0]):
            els.append(self.guid())
        for _ in range(r.choices([0, 1, 2, 3], [15, 65, 15, 5])[0]):
            els.append(self.el(r.choice(["description"] * 5 + [f"{dc}:description"]), self.text(),
                               self.ctype(["html", "text"])))
        if self.chance(0.25):
            els.append(self.el(f"{content}:encoded", self.text(), self.ctype(["html"])))
        if self.chance(0.05):
            els.append(self.el("summary", self.text()))
        for _ in range(r.choices([0, 1, 2, 3], [10, 60, 20, 10])[0]):
            name = r.choice(["pubDate"] * 6 + [f"{dc}:date"] * 3 + [f"{atom}:updated", f"{atom}:published",
                             f"{dcterms}:modified", f"{dcterms}:created", f"{dcterms}:issued", "lastBuildDate",
                             "issued", "modified", "created"])
            els.append(self.el(name, self.date()))
        for _ in range(r.choices([0, 1, 2], [50, 42, 8])[0]):
            kind = r.random()
            if kind < 0.4:
                els.append(self.el("author", r.choice(AUTHOR_TEXTS)))
            elif kind < 0.75:
                els.append(self.el(f"{dc}:creator", r.choice(AUTHOR_TEXTS)))
            elif kind < 0.9:
                els.append(f"<{atom}:author>{self.author_children(f'{atom}:')}</{atom}:author>")
            else:
                els.append(self.el("managingEditor", r.choice(AUTHOR_TEXTS)))
        if self.chance(0.05):
            els.append(f"<{atom}:contributor>{self.author_children(f'{atom}:')}</{atom}:contributor>")
        if self.chance(0.05):
            els.append(self.el("source", self.text(), ' url="https://src.example/rss"'))
        m, it = self.p["media"], self.p["itunes"]
        if self.chance(0.1):
            els.append(self.el(f"{m}:description", self.text(), self.ctype(["plain", "html"])))
        if self.chance(0.06):
            els.append(self.el(f"{m}:title", self.text(), self.ctype(["plain", "html"])))
        if self.chance(0.03):
            els.append(self.el(f"{it}:summary", self.text()))
        if self.chance(0.03):
            els.append(self.el(f"{it}:author", r.choice(AUTHOR_TEXTS)))
        if self.chance(0.05):
            els.append(self.el(f"{atom}:id", r.choice(GUIDS)))
        if self.chance(0.05):
            els.append(self.el(f"{atom}:title", self.text()))
        if self.chance(0.04):
            els.append(self.el(f"{atom}:summary", self.text()))
        if self.chance(0.04):
            els.append(self.el(f"{atom}:content", self.text(), self.ctype(["html"])))
        if self.chance(0.03):
            els.append(self.el(r.choice(["Title", "TITLE", "Link", "PubDate", "DESCRIPTION", "GUID"]), self.text()))
        els += self.harmless_extras() + self.unknown_extras() + self.declined_extras(True)
        if self.chance(0.7):
            r.shuffle(els)
        attrs = ""
        if self.chance(0.06):
            attrs = r.choice([' id="i1"', ' xml:lang="en"', f' {self.p["x"]}:k="v"', ' lastmod="2024-04-30"',
                              ' href="https://cdf.example/"', f' {self.p["rdf"]}:about="https://rdf.example/1"',
                              f' {self.p["dc"]}:about="urn:about:1"', f' {self.p["x"]}:href="https://cdf.example/"'])
        tag = "entry" if self.chance(0.02) else "item"
        return f"<{tag}{attrs}>" + "".join(self.ws() + e for e in els) + self.ws() + f"</{tag}>"

    def rss(self) -> str:
        r = self.r
        atom = self.p["atom"]
        head: list[str] = []
        if self.chance(0.95):
            head.append(self.el("title", self.text()))
        if self.chance(0.85):
            head.append(self.el("link", self.link_text()))
        if self.chance(0.8):
            head.append(self.el("description", self.text()))
        if self.chance(0.5):
            head.append(self.el("language", r.choice(["en-gb", "en", "ar", ""])))
        if self.chance(0.4):
            head.append(self.atom_link(f"{atom}:"))
        if self.chance(0.3):
            head.append(f'<{atom}:link rel="self" type="application/rss+xml" href="{FEED_URL}"/>')
        if self.chance(0.4):
            kids = [self.el("url", "https://news.example/logo.png"), self.el("title", self.text()),
                    self.el("link", self.link_text())]
            if self.chance(0.2):
                kids += [self.el("width", "144"), self.el("height", "x"), self.el("description", "d")]
            r.shuffle(kids)
            head.append("<image>" + self.ws().join(kids) + "</image>")
        for name in ("lastBuildDate", "pubDate", "copyright", "generator", "ttl", "webMaster", "managingEditor",
                     "docs", "category"):
            if self.chance(0.15):
                head.append(self.el(name, self.date() if "Date" in name else self.text()))
        if self.chance(0.1):
            head.append(self.el(f"{self.p['dc']}:creator", r.choice(AUTHOR_TEXTS)))
        if self.chance(0.05):
            head.append(self.el("guid", r.choice(GUIDS)))
        if self.chance(0.05):
            head.append('<cloud domain="rpc.example" port="80" path="/RPC2" registerProcedure="p" protocol="xml-rpc"/>')
        head += self.harmless_extras() + self.unknown_extras() + self.declined_extras(False)
        if self.chance(0.5):
            r.shuffle(head)
        items = [self.rss_item() for _ in range(r.choices([0, 1, 2, 3, 4], [3, 40, 30, 17, 10])[0])]
        if self.chance(0.1) and head:  # channel elements after the items
            cut = r.randrange(len(head))
            body = head[:cut] + items + head[cut:]
        else:
            body = head + items
        rss_attrs = r.choice([' version="2.0"', ' version="2.0"', ' version="0.92"', "", ' version="0.91"',
                              ' version="2.0" xml:lang="en"'])
        channel_attrs = r.choice([""] * 20 + [' xml:lang="en"', ' href="https://cdf.example/"'])
        channel = (f"<channel{channel_attrs}>" + "".join(self.ws() + e for e in body) + self.ws() + "</channel>")
        if self.chance(0.02):
            channel += f"<channel><title>second</title><link>https://second.example/</link>{self.rss_item()}</channel>"
        return f"<rss{rss_attrs}{self.xmlns()}>{self.ws()}{channel}{self.ws()}</rss>"

    # -- Atom ---------------------------------------------------------------------------------------------

    def atom_entry(self) -> str:
        r = self.r
        dc = self.p["dc"]
        els: list[str] = []
        n_title = r.choices([0, 1, 2], [4, 88, 8])[0]
        for i in range(n_title):
            body = "" if (i == 0 and n_title > 1 and self.chance(0.5)) else self.text()
            els.append(self.el("title", body, self.ctype(["html", "text"])))
        for _ in range(r.choices([0, 1, 2, 3], [10, 55, 25, 10])[0]):
            els.append(self.atom_link())
        if self.chance(0.85):
            els.append(self.el("id", r.choice(GUIDS)))
        if self.chance(0.05):
            els.append(self.el("id", r.choice(GUIDS)))
        for _ in range(r.choices([0, 1, 2, 3], [10, 45, 35, 10])[0]):
            els.append(self.el(r.choice(["updated", "published", "updated", "published", "issued",
                                         "modified", "created", f"{dc}:date"]), self.date()))
        for _ in range(r.choices([0, 1, 2, 3], [20, 60, 15, 5])[0]):
            els.append(self.el("summary", self.text(), self.ctype(["html", "text"])))
        if self.chance(0.45):
            src = ' src="https://example.com/full"' if self.chance(0.1) else ""
            els.append(self.el("content", self.text(), self.ctype(["html", "text", "html"]) + src))
        for _ in range(r.choices([0, 1, 2], [35, 55, 10])[0]):
            if self.chance(0.85):
                els.append(f"<author>{self.author_children()}</author>")
            else:
                els.append(self.el(f"{dc}:creator", r.choice(AUTHOR_TEXTS)))
        if self.chance(0.1):
            els.append(f"<contributor>{self.author_children()}</contributor>")
        if self.chance(0.1):
            els.append(self.el("rights", self.text(), self.ctype(["text", "html"])))
        els += self.harmless_extras() + self.unknown_extras() + self.declined_extras(True)
        if self.chance(0.7):
            r.shuffle(els)
        return "<entry>" + "".join(self.ws() + e for e in els) + self.ws() + "</entry>"

    def atom(self) -> str:
        r = self.r
        head: list[str] = []
        if self.chance(0.95):
            head.append(self.el("title", self.text(), self.ctype(["text", "html"])))
        for _ in range(r.choices([0, 1, 2], [15, 50, 35])[0]):
            head.append(self.atom_link())
        if self.chance(0.8):
            head.append(self.el("id", r.choice(GUIDS)))
        if self.chance(0.8):
            head.append(self.el("updated", self.date()))
        if self.chance(0.4):
            head.append(self.el("subtitle", self.text(), self.ctype(["text", "html"])))
        if self.chance(0.3):
            head.append(f"<author>{self.author_children()}</author>")
        for name in ("generator", "icon", "logo", "rights"):
            if self.chance(0.15):
                head.append(self.el(name, self.text()))
        head += self.harmless_extras() + self.unknown_extras() + self.declined_extras(False)
        if self.chance(0.5):
            r.shuffle(head)
        entries = [self.atom_entry() for _ in range(r.choices([0, 1, 2, 3], [3, 45, 35, 17])[0])]
        body = head + entries if self.chance(0.9) else entries + head
        lang = r.choice(["", "", ' xml:lang="en"'])
        return (f'<feed xmlns="{NS["atom"]}"{lang}{self.xmlns(atom=False)}>'
                + "".join(self.ws() + e for e in body) + self.ws() + "</feed>")

    # -- the document -------------------------------------------------------------------------------------

    def xmlns(self, atom: bool = True) -> str:
        decls = []
        for ns in NS:
            if ns == "y" or (ns == "atom" and not atom):
                continue
            decls.append(f" xmlns:{self.p[ns]}={quoteattr(self.uri[ns])}")
        if not atom and self.chance(0.1):
            decls.append(f" xmlns:{self.p['atom']}={quoteattr(NS['atom'])}")
        self.r.shuffle(decls)
        return "".join(decls)

    def build(self) -> tuple[bytes, dict[str, str]]:
        r = self.r
        text = self.rss() if r.random() < 0.6 else self.atom()
        if r.random() < 0.02:
            text = '<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" ' \
                   '"http://my.netscape.com/publish/formats/rss-0.91.dtd">\n' + text
        if r.random() < 0.03:
            text = "<!-- generated -->\n" + text
        if r.random() < 0.03:  # truncated
            text = text[: r.randrange(len(text))]
        enc = r.choices(["utf-8", "iso-8859-1", "windows-1252", "us-ascii", "none", "utf-16", "koi8-r"],
                        [70, 10, 8, 5, 7, 2, 1])[0]
        if enc == "none":
            decl, codec = r.choice(['<?xml version="1.0"?>', "", '<?xml version="1.0" standalone="yes"?>']), "utf-8"
        else:
            spelled = r.choice([enc, enc.upper()])
            decl = f'<?xml version="1.0" encoding="{spelled}"?>'
            codec = enc
        if r.random() < 0.3:
            decl = decl.replace('"', "'")
        doc = decl + self.ws() + text if decl else text
        if codec == "utf-8":
            body = doc.encode("utf-8")
        elif r.random() < 0.4:  # pure ASCII body: everything else as character references
            body = doc.encode("ascii", "xmlcharrefreplace")
        else:
            body = doc.encode(codec, "xmlcharrefreplace")
        if r.random() < 0.03:
            body = doc.encode("utf-8")  # the declaration lies
        if codec == "utf-8" and r.random() < 0.15:
            body = b"\xef\xbb\xbf" + body
        headers = dict(r.choice(HEADERS))
        return body, headers


def generate(seed: int) -> tuple[bytes, dict[str, str]]:
    """The document and response headers for `seed` (deterministic)."""
    return _Doc(seed).build()


# --------------------------------------------------------------------------------------------------------
# Comparison helpers

_PARSED = ("published_parsed", "updated_parsed", "created_parsed")


def _s(v: object) -> str:
    return v if isinstance(v, str) else ""  # parse.py reads a missing or non-string field as ''


def _entry_view(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """What parse.py reads off one entry, through the entry's own .get (FeedParserDict's aliases included).
    The dates by their own keys: FeedParserDict's fallback from updated_parsed to published_parsed repeats a
    value parse.py has already tried."""
    return (_s(entry.get("title")), _s(entry.get("summary") or entry.get("description")), _s(entry.get("link")),
            _s(entry.get("id")), _s(entry.get("author")), *(dict.get(entry, k) for k in _PARSED))


def _outcome(body: bytes, headers: Mapping[str, str], fast: bool) -> ParsedFeed | str:
    try:
        return parse_feed(body, headers, feed_url=FEED_URL, now=NOW, fast_path=fast)
    except ParseError as e:
        return f"ParseError: {e}"


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _mismatch(body: bytes, headers: dict[str, str]) -> str | None:
    """None when the contract holds for this document; otherwise what differs."""
    fast = fastfeed.read(body, _lower(headers))
    if fast is None:
        return None
    ref = feedparser.parse(io.BytesIO(body), response_headers=_lower(headers), resolve_relative_uris=False,
                           sanitize_html=False)
    problems = []
    feed_view = (_s(fast.feed.get("title")), _s(fast.feed.get("link")))
    ref_feed = ref.get("feed", {})
    ref_feed_view = (_s(ref_feed.get("title")), _s(ref_feed.get("link")))
    if feed_view != ref_feed_view:
        problems.append(f"feed title/link: fastfeed {feed_view!r} feedparser {ref_feed_view!r}")
    if len(fast.entries) != len(ref.entries):
        problems.append(f"{len(fast.entries)} entries, feedparser {len(ref.entries)}")
    else:
        for i, (a, b) in enumerate(zip(fast.entries, ref.entries, strict=True)):
            va, vb = _entry_view(a), _entry_view(b)
            if va != vb:
                names = ("title", "summary", "link", "id", "author", *_PARSED)
                diff = {n: (x, y) for n, x, y in zip(names, va, vb, strict=True) if x != y}
                problems.append(f"entry {i}: (fastfeed, feedparser) {diff!r}")
    ref_warning = str(ref.get("bozo_exception")) if ref.get("bozo") else None
    if fast.warning != ref_warning:
        problems.append(f"warning: fastfeed {fast.warning!r} feedparser {ref_warning!r}")
    a, b = _outcome(body, headers, True), _outcome(body, headers, False)
    if a != b:
        problems.append(f"parse_feed differs:\n  fast:       {a!r}\n  feedparser: {b!r}")
    return "\n".join(problems) or None


def _report(seed: int, body: bytes, headers: dict[str, str], problem: str) -> str:
    return f"seed={seed}\nheaders={headers!r}\nbody={body!r}\n{problem}"


# --------------------------------------------------------------------------------------------------------
# A: differential


def test_generator_is_deterministic() -> None:
    assert generate(12345) == generate(12345)
    assert generate(1) != generate(2)


def test_accepted_documents_parse_exactly_as_feedparser_does() -> None:
    failures = []
    for seed in range(N_DOCS):
        body, headers = generate(seed)
        problem = _mismatch(body, headers)
        if problem is not None:
            failures.append(f"generate({seed}):\n" + _report(seed, body, headers, problem))
    assert not failures, f"{len(failures)} of {N_DOCS} documents differ; first:\n" + "\n\n".join(failures[:3])


_MUTATION_TAGS = [
    "title", "link", "description", "summary", "content", "guid", "id", "pubDate", "published", "updated",
    "created", "modified", "issued", "lastBuildDate", "author", "name", "email", "uri", "url", "source", "image",
    "category", "enclosure", "comments", "item", "entry", "contributor", "subtitle", "generator", "managingEditor",
    "webMaster", "rights", "language", "docs", "width", "foo",
    *(f"{{{NS[ns]}}}{local}" for ns, local in [
        ("content", "encoded"), ("dc", "date"), ("dc", "creator"), ("dc", "title"), ("media", "title"),
        ("media", "description"), ("media", "content"), ("media", "group"), ("media", "thumbnail"),
        ("media", "credit"), ("atom", "link"), ("atom", "title"), ("atom", "author"), ("atom", "name"),
        ("atom", "id"), ("itunes", "summary"), ("itunes", "author"), ("georss", "point"), ("x", "foo"),
        ("x", "title")]),
]
_MUTATION_ATTRS = [
    ("rel", ["alternate", "self", "enclosure", "ALTERNATE"]),
    ("type", ["html", "text", "xhtml", "text/html", "application/atom+xml", "text/plain"]),
    ("href", ["https://h.example/1", "/rel", ""]), ("url", ["https://u.example/"]), ("uri", ["https://u.example/"]),
    ("isPermaLink", ["true", "false", "True"]), (f"{{{NS['xlink']}}}href", ["https://xl.example/"]),
    (f"{{{NS['x']}}}href", ["https://x.example/"]), ("src", ["https://src.example/"]), ("mode", ["escaped"]),
]
_MUTATION_TEXTS = ["Headline", "  spaced  ", "a@b.com (Name)", "Tue, 30 Apr 2024 09:00:00 GMT", "",
                   "2024-04-30T08:00:00Z", "https://t.example/x?a=1&b=2", "Caf\u00c3\u00a9", "\x93q\x94", "<p>x</p>"]


def mutate(seed: int) -> tuple[bytes, dict[str, str]]:
    """One of the must-accept documents below with 1-10 random element-level edits (duplicate, move, delete,
    rename to a tag feedparser knows, nest, add an attribute or text), re-serialised by ElementTree."""
    r = random.Random(seed)
    root = ET.fromstring([BBC, ALJAZEERA, GUARDIAN, ATOM, NYT, WORDPRESS][seed % 6])
    for _ in range(r.randint(1, 10)):
        parents = {child: parent for parent in root.iter() for child in parent}
        if not parents:
            break
        el = r.choice(list(parents))
        parent = parents[el]
        op = r.random()
        if op < 0.2:
            parent.insert(list(parent).index(el) + 1, copy.deepcopy(el))
        elif op < 0.35:
            parent.remove(el)
            parent.insert(r.randint(0, len(parent)), el)
        elif op < 0.45:
            parent.remove(el)
        elif op < 0.65:
            el.tag = r.choice(_MUTATION_TAGS)
        elif op < 0.75:
            name, values = r.choice(_MUTATION_ATTRS)
            el.set(name, r.choice(values))
        elif op < 0.85:
            el.text = r.choice(_MUTATION_TEXTS)
        else:
            new = ET.Element(r.choice(_MUTATION_TAGS))
            new.text = r.choice(_MUTATION_TEXTS)
            (el if r.random() < 0.4 else parent).append(new)
    body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body, {"Content-Type": r.choice(["application/rss+xml", "text/xml", "application/atom+xml"])}


def test_mutated_news_documents_parse_exactly_as_feedparser_does() -> None:
    """Structural combinations the generator's pools do not spell out: real shapes, edited at random."""
    failures, accepted = [], 0
    for seed in range(N_MUTATIONS):
        body, headers = mutate(seed)
        accepted += fastfeed.read(body, _lower(headers)) is not None
        problem = _mismatch(body, headers)
        if problem is not None:
            failures.append(f"mutate({seed}):\n" + _report(seed, body, headers, problem))
    assert not failures, f"{len(failures)} of {N_MUTATIONS} differ; first:\n" + "\n\n".join(failures[:3])
    assert accepted / N_MUTATIONS > 0.3


def test_bench_documents_from_real_headlines_match_feedparser() -> None:
    """bench/poll.py's documents (monitor.lab.replay's RSS 2.0 from captured headlines): accepted, and equal."""
    spec = importlib.util.spec_from_file_location("bench_poll", ROOT / "bench" / "poll.py")
    assert spec is not None and spec.loader is not None
    poll = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(poll)
    if not Path(poll.DEFAULT_DATA).exists():
        pytest.skip(f"{poll.DEFAULT_DATA} not present")
    docs = poll.build_documents(poll.DEFAULT_DATA, 30, 20)
    assert len(docs) >= 10
    headers = {"Content-Type": "application/rss+xml"}
    for path, body in docs.items():
        assert fastfeed.read(body, _lower(headers)) is not None, path
        problem = _mismatch(body, headers)
        assert problem is None, f"{path}: {problem}"


# Minimal shapes of the mismatches the generator found, kept as fixed cases: (document, accepted?).
_RSS = ('<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:atom="http://www.w3.org/2005/Atom" '
        'xmlns:x="http://example.com/x" xmlns:xlink="http://www.w3.org/1999/xlink"><channel><title>T</title>')
FOUND = {
    # feedparser parses the earlier author text into the detail at the first <name>/<email>: 'B (a@b.org)'
    "author-detail-sync": (_RSS + "<item><title>t</title><dc:creator>a@b.org (A)</dc:creator>"
                           "<atom:author><atom:name>B</atom:name></atom:author></item></channel></rss>", True),
    "author-detail-email-only": (_RSS + "<item><title>t</title><dc:creator>Bob</dc:creator>"
                                 "<atom:author><atom:email>e@f.org</atom:email></atom:author></item></channel></rss>",
                                 True),
    # attributes by local name, then by qualified name: xlink:href is no href
    "namespaced-href": (_RSS + '<item><title>t</title><link xlink:href="https://x.example/">https://e.example/1'
                        "</link></item></channel></rss>", True),
    "unknown-ns-href": (_RSS + '<item><title>t</title><link href="https://e.example/1" x:href="https://x.example/"/>'
                        "</item></channel></rss>", True),
    # the prefix 'rdf' bound to Dublin Core: feedparser takes the item id from dc:about
    "about-attribute": ('<rss version="2.0" xmlns:rdf="http://purl.org/dc/elements/1.1/" '
                        'xmlns:dc="http://purl.org/dc/elements/1.1/"><channel><title>T</title>'
                        '<item dc:about="urn:x:1"><title>t</title></item></channel></rss>', False),
}


@pytest.mark.parametrize("name", sorted(FOUND))
@pytest.mark.parametrize("content_type", ["application/rss+xml", "text/xml", "text/html; charset=iso-8859-1"])
def test_found_mismatches_stay_fixed(name: str, content_type: str) -> None:
    doc, accepted = FOUND[name]
    body, headers = doc.encode(), {"Content-Type": content_type}
    assert (fastfeed.read(body, _lower(headers)) is not None) == accepted
    assert _mismatch(body, headers) is None


# --------------------------------------------------------------------------------------------------------
# B: the common shapes are accepted (and equal); shapes outside the subset are declined

BBC = """<?xml version="1.0" encoding="UTF-8"?>
<rss xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:content="http://purl.org/rss/1.0/modules/content/"
 xmlns:atom="http://www.w3.org/2005/Atom" version="2.0" xmlns:media="http://search.yahoo.com/mrss/">
<channel><title><![CDATA[BBC News]]></title><description><![CDATA[BBC News - World]]></description>
<link>https://www.bbc.co.uk/news/world</link>
<image><url>https://news.bbcimg.co.uk/nol/shared/img/bbc_news_120x60.gif</url><title>BBC News</title>
<link>https://www.bbc.co.uk/news/world</link></image><generator>RSS for Node</generator>
<lastBuildDate>Tue, 30 Apr 2024 10:12:31 GMT</lastBuildDate>
<atom:link href="https://feeds.bbci.co.uk/news/world/rss.xml" rel="self" type="application/rss+xml"/>
<copyright><![CDATA[Copyright: (C) British Broadcasting Corporation.]]></copyright>
<language><![CDATA[en-gb]]></language><ttl>15</ttl>
<item><title><![CDATA[Gaza truce talks resume in Cairo]]></title>
<description><![CDATA[Negotiators return as pressure grows for a deal on hostages.]]></description>
<link>https://www.bbc.com/news/articles/c4gx1?at_medium=RSS&amp;at_campaign=rss</link>
<guid isPermaLink="false">https://www.bbc.com/news/articles/c4gx1#0</guid>
<pubDate>Tue, 30 Apr 2024 09:00:00 GMT</pubDate>
<media:thumbnail width="240" height="135" url="https://ichef.bbci.co.uk/ace/standard/240/x.jpg"/></item>
<item><title><![CDATA[Café owners count the cost – “we lost everything”]]></title>
<description><![CDATA[Small businesses near the border describe the last months.]]></description>
<link>https://www.bbc.com/news/articles/c4gx2?at_medium=RSS&amp;at_campaign=rss</link>
<guid isPermaLink="false">https://www.bbc.com/news/articles/c4gx2#1</guid>
<pubDate>Tue, 30 Apr 2024 08:10:00 GMT</pubDate>
<media:thumbnail width="240" height="135" url="https://ichef.bbci.co.uk/ace/standard/240/y.jpg"/></item>
</channel></rss>""".encode()

ALJAZEERA = """<?xml version="1.0" encoding="UTF-8"?><rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom"
 xmlns:media="http://search.yahoo.com/mrss/"><channel><title>Al Jazeera – Breaking News</title>
<link>https://www.aljazeera.com</link><description>Al Jazeera English</description>
<atom:link href="https://www.aljazeera.com/xml/rss/all.xml" rel="self" type="application/rss+xml"/>
<lastBuildDate>Tue, 30 Apr 2024 10:00:02 +0000</lastBuildDate>
<item><link>https://www.aljazeera.com/news/2024/4/30/israel-hamas-talks</link>
<title><![CDATA[Hamas delegation in Cairo for ceasefire talks]]></title>
<description><![CDATA[A Hamas delegation is expected to respond to Israel&#8217;s latest proposal.]]></description>
<pubDate>Tue, 30 Apr 2024 09:41:15 +0000</pubDate><category>News</category>
<guid isPermaLink="false">https://www.aljazeera.com/?t=1714469475</guid></item>
<item><link>https://www.aljazeera.com/news/2024/4/30/un-aid</link><title>UN: aid deliveries still far too low</title>
<description>Agencies say &lt;b&gt;crossings&lt;/b&gt; remain restricted.</description>
<pubDate>Tue, 30 Apr 2024 08:20:00 +0000</pubDate><category>News</category><category>Gaza</category>
<guid isPermaLink="false">https://www.aljazeera.com/?t=1714465200</guid></item></channel></rss>""".encode()

GUARDIAN = b"""<?xml version="1.0" encoding="UTF-8"?>
<rss xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:media="http://search.yahoo.com/mrss/" version="2.0">
<channel><title>World news | The Guardian</title><link>https://www.theguardian.com/world</link>
<description>Latest World news news, comment and analysis from the Guardian</description><language>en-gb</language>
<copyright>Guardian News and Media Limited or its affiliated companies. All rights reserved. 2024</copyright>
<pubDate>Tue, 30 Apr 2024 10:05:12 GMT</pubDate><dc:date>2024-04-30T10:05:12Z</dc:date><dc:language>en-gb</dc:language>
<dc:rights>Guardian News and Media Limited or its affiliated companies. All rights reserved. 2024</dc:rights>
<image><title>The Guardian</title><url>https://assets.guim.co.uk/images/guardian-logo-rss.png</url>
<link>https://www.theguardian.com</link></image>
<item><title>Israel-Gaza war: talks on truce continue in Cairo</title>
<link>https://www.theguardian.com/world/2024/apr/30/israel-gaza-war-talks</link>
<description>&lt;p&gt;Mediators say a deal is &lt;strong&gt;close&lt;/strong&gt;&lt;/p&gt;&lt;ul&gt;&lt;li&gt;Live updates&lt;/li&gt;&lt;/ul&gt;</description>
<category domain="https://www.theguardian.com/world/israel-hamas-war">Israel-Hamas war</category>
<category domain="https://www.theguardian.com/world/world">World news</category>
<pubDate>Tue, 30 Apr 2024 09:58:41 GMT</pubDate><guid>https://www.theguardian.com/world/2024/apr/30/israel-gaza-war-talks</guid>
<media:content width="140" url="https://i.guim.co.uk/img/media/a/140.jpg"><media:credit scheme="urn:ebu">Photograph: Reuters</media:credit></media:content>
<media:content width="460" url="https://i.guim.co.uk/img/media/a/460.jpg"><media:credit scheme="urn:ebu">Photograph: Reuters</media:credit></media:content>
<dc:creator>Jason Burke in Jerusalem</dc:creator><dc:date>2024-04-30T09:58:41Z</dc:date></item>
</channel></rss>"""

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en"><title>Example News</title><subtitle>World</subtitle>
<link rel="alternate" type="text/html" href="https://news.example.org/"/>
<link rel="self" type="application/atom+xml" href="https://news.example.org/atom.xml"/>
<id>tag:news.example.org,2024:feed</id><updated>2024-04-30T10:00:00Z</updated>
<author><name>Example Newsroom</name></author>
<entry><title>Talks resume</title><link rel="alternate" type="text/html" href="https://news.example.org/1"/>
<id>tag:news.example.org,2024:1</id><published>2024-04-30T08:00:00+02:00</published>
<updated>2024-04-30T09:30:00Z</updated><summary>Negotiators meet again.</summary>
<content type="html">&lt;p&gt;Negotiators meet &lt;em&gt;again&lt;/em&gt; in Doha.&lt;/p&gt;</content>
<author><name>Jane Doe</name><email>jane@news.example.org</email><uri>https://news.example.org/jane</uri></author>
<category term="world"/></entry>
<entry><title type="html">Aid &amp;amp; access</title><link href="https://news.example.org/2"/><id>tag:news.example.org,2024:2</id>
<updated>2024-04-30T07:00:00Z</updated><content type="html">&lt;p&gt;Crossings reopen.&lt;/p&gt;</content>
<author><name>Ali Hassan</name></author></entry></feed>"""

NYT = b"""<?xml version="1.0" encoding="UTF-8"?>
<rss xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:atom="http://www.w3.org/2005/Atom"
 xmlns:media="http://search.yahoo.com/mrss/" xmlns:nyt="http://www.nytimes.com/namespaces/rss/2.0" version="2.0">
<channel><title>NYT &gt; World News</title><link>https://www.nytimes.com/section/world</link>
<atom:link href="https://rss.nytimes.com/services/xml/rss/nyt/World.xml" rel="self" type="application/rss+xml"/>
<description/><language>en-us</language><copyright>Copyright 2024 The New York Times Company</copyright>
<lastBuildDate>Tue, 30 Apr 2024 10:30:02 +0000</lastBuildDate><pubDate>Tue, 30 Apr 2024 10:23:41 +0000</pubDate>
<image><title>NYT &gt; World News</title><url>https://static01.nyt.com/images/misc/NYT_logo_rss_250x40.png</url>
<link>https://www.nytimes.com/section/world</link></image>
<item><title>Blinken Arrives in Saudi Arabia as Cease-Fire Talks Continue</title>
<link>https://www.nytimes.com/2024/04/30/world/middleeast/blinken-saudi-arabia.html</link>
<guid isPermaLink="true">https://www.nytimes.com/2024/04/30/world/middleeast/blinken-saudi-arabia.html</guid>
<atom:link href="https://www.nytimes.com/2024/04/30/world/middleeast/blinken-saudi-arabia.html" rel="standout"/>
<description>The secretary of state is pressing for a deal that would pause the fighting.</description>
<dc:creator>Michael Crowley</dc:creator><pubDate>Tue, 30 Apr 2024 09:56:12 +0000</pubDate>
<category domain="http://www.nytimes.com/namespaces/keywords/des">International Relations</category>
<media:content height="1800" medium="image" url="https://static01.nyt.com/images/2024/04/30/x.jpg" width="1800"/>
<media:credit>Evelyn Hockstein/Reuters</media:credit>
<media:description>Secretary of State Antony J. Blinken in Riyadh on Monday.</media:description></item>
</channel></rss>"""

WORDPRESS = b"""<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"
 xmlns:content="http://purl.org/rss/1.0/modules/content/" xmlns:wfw="http://wellformedweb.org/CommentAPI/"
 xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:atom="http://www.w3.org/2005/Atom"
 xmlns:sy="http://purl.org/rss/1.0/modules/syndication/" xmlns:slash="http://purl.org/rss/1.0/modules/slash/">
<channel><title>Example Times</title><atom:link href="https://times.example/feed/" rel="self" type="application/rss+xml" />
<link>https://times.example</link><description>News from the region</description>
<lastBuildDate>Tue, 30 Apr 2024 10:00:00 +0000</lastBuildDate><language>en-US</language>
<sy:updatePeriod>hourly</sy:updatePeriod><sy:updateFrequency>1</sy:updateFrequency>
<generator>https://wordpress.org/?v=6.5.2</generator>
<image><url>https://times.example/icon.png</url><title>Example Times</title><link>https://times.example</link>
<width>32</width><height>32</height></image>
<item><title>Port reopens after three weeks</title><link>https://times.example/2024/04/30/port/</link>
<comments>https://times.example/2024/04/30/port/#respond</comments>
<dc:creator><![CDATA[Staff Reporter]]></dc:creator><pubDate>Tue, 30 Apr 2024 09:00:00 +0000</pubDate>
<category><![CDATA[Economy]]></category><category><![CDATA[Shipping]]></category>
<guid isPermaLink="false">https://times.example/?p=12345</guid>
<description><![CDATA[<p>The port reopened on Tuesday&#8230;</p>]]></description>
<content:encoded><![CDATA[<p>The port reopened on Tuesday after a three-week closure.</p>]]></content:encoded>
<wfw:commentRss>https://times.example/2024/04/30/port/feed/</wfw:commentRss><slash:comments>0</slash:comments>
</item></channel></rss>"""

RSS10 = b"""<?xml version="1.0"?><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
 xmlns="http://purl.org/rss/1.0/"><channel rdf:about="http://rdf.example.net/"><title>RDF</title>
<link>http://rdf.example.net/</link><description>d</description></channel>
<item rdf:about="http://rdf.example.net/1"><title>One</title><link>http://rdf.example.net/1</link></item></rdf:RDF>"""

DOCTYPE = b"""<?xml version="1.0"?><!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN"
 "http://my.netscape.com/publish/formats/rss-0.91.dtd"><rss version="0.91"><channel><title>Old</title>
<item><title>Ninety-one</title><link>http://old.example.org/a</link></item></channel></rss>"""

XHTML = b"""<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"><title>X</title>
<entry><title>x</title><id>urn:x:1</id><content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">
<p>Inline <b>markup</b></p></div></content></entry></feed>"""

TIMES_OF_ISRAEL = b"""<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"
 xmlns:content="http://purl.org/rss/1.0/modules/content/" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:atom="http://www.w3.org/2005/Atom" xmlns:media="http://search.yahoo.com/mrss/"><channel>
<title>The Times of Israel</title><atom:link href="https://www.timesofisrael.com/feed/" rel="self" type="application/rss+xml"/>
<link>https://www.timesofisrael.com</link><description>News from Israel</description>
<lastBuildDate>Tue, 30 Apr 2024 10:00:00 +0000</lastBuildDate><language>en-US</language>
<item><title>IDF strikes Hezbollah sites after rocket fire</title><link>https://www.timesofisrael.com/idf-strikes/</link>
<dc:creator><![CDATA[Emanuel Fabian]]></dc:creator><pubDate>Tue, 30 Apr 2024 09:00:00 +0000</pubDate>
<category><![CDATA[Israel at War]]></category><guid isPermaLink="false">https://www.timesofisrael.com/?p=123</guid>
<description><![CDATA[<p>The army says it hit launchers.</p>]]></description>
<media:content url="https://static.timesofisrael.com/x.jpg" medium="image"><media:title type="html">Smoke rises
after a strike</media:title></media:content><media:thumbnail url="https://static.timesofisrael.com/t.jpg"/></item>
</channel></rss>"""

COMMON = {"bbc": BBC, "aljazeera": ALJAZEERA, "guardian": GUARDIAN, "atom": ATOM, "nyt": NYT, "wordpress": WORDPRESS,
          "times-of-israel": TIMES_OF_ISRAEL}


@pytest.mark.parametrize("name", sorted(COMMON))
@pytest.mark.parametrize("content_type", ["application/rss+xml", "text/xml; charset=utf-8", "application/xml"])
def test_common_news_shapes_are_read_by_fastfeed_and_match(name: str, content_type: str) -> None:
    body, headers = COMMON[name], {"Content-Type": content_type}
    fast = fastfeed.read(body, _lower(headers))
    assert fast is not None and len(fast.entries) >= 1
    assert _mismatch(body, headers) is None
    parsed = parse_feed(body, headers, feed_url=FEED_URL, now=NOW)
    assert parsed.items and all(it.title and it.published_at < NOW for it in parsed.items)


def test_replay_documents_are_read_by_fastfeed() -> None:
    """monitor.lab.replay's document shape (what bench/poll.py serves), independent of the shared data."""
    items = [ReplayItem(feed="https://outlet.example/rss", title=f"Headline {i} \u2013 caf\u00e9 & co",
                        description=f"<p>Teaser {i} &amp; more</p>", link=f"https://outlet.example/{i}?a=1&b=2"
                        if i % 3 else "", published=datetime(2024, 4, 30, i, tzinfo=UTC),
                        author="desk@outlet.example (Desk)" if i % 2 else None) for i in range(12)]
    feeds = ReplayFeeds(items, window=20)
    (slug,) = feeds.feeds
    doc = feeds.document(slug, NOW)
    assert doc is not None
    body = doc[0]
    headers = {"Content-Type": "application/rss+xml"}
    fast = fastfeed.read(body, _lower(headers))
    assert fast is not None and len(fast.entries) == 12
    assert _mismatch(body, headers) is None


@pytest.mark.parametrize("body", [RSS10, DOCTYPE, XHTML], ids=["rss1.0", "doctype", "xhtml-content"])
def test_shapes_outside_the_subset_are_declined(body: bytes) -> None:
    assert fastfeed.read(body, {"content-type": "application/rss+xml"}) is None
    assert parse_feed(body, HEADERS[0], feed_url=FEED_URL, now=NOW).items  # feedparser still reads them


def test_generator_documents_are_mostly_accepted() -> None:
    """The differential test means something only if fastfeed accepts a good share of the generated
    documents (the rest are the quirks it declines by design)."""
    accepted = sum(fastfeed.read(body, _lower(headers)) is not None
                   for body, headers in map(generate, range(N_DOCS)))
    assert accepted / N_DOCS > 0.35


# --------------------------------------------------------------------------------------------------------
# C: hostile input never makes fastfeed raise

SMALL = BBC.decode("utf-8")

HOSTILE: dict[str, bytes] = {
    "truncated": BBC[: len(BBC) // 2],
    "truncated-in-tag": BBC[:200],
    "billion-laughs": (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                       + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                                  for i in range(1, 10))
                       + b']><rss version="2.0"><channel><title>&lol9;</title></channel></rss>'),
    "external-entity": (b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                        b'<rss version="2.0"><channel><title>&xxe;</title></channel></rss>'),
    "external-entity-late": (b'<?xml version="1.0"?>' + b"<!-- pad -->" * 1000
                             + b'<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                             + b'<rss version="2.0"><channel><title>&xxe;</title></channel></rss>'),
    "undeclared-entity": b'<rss version="2.0"><channel><title>&nbsp;x</title></channel></rss>',
    "huge-attribute": (b'<rss version="2.0"><channel><item><title>t</title><enclosure url="'
                       + b"a" * 5_000_000 + b'"/></item></channel></rss>'),
    "deep-unknown": (b'<rss version="2.0" xmlns:x="http://example.com/x"><channel><item><title>t</title>'
                     + b"<x:a>" * 10_000 + b"</x:a>" * 10_000 + b"</item></channel></rss>"),
    "deep-plain": b"<rss>" + b"<a>" * 10_000 + b"</a>" * 10_000 + b"</rss>",
    "deep-unclosed": b'<rss version="2.0"><channel><item>' + b"<category>" * 10_000,
    "invalid-utf8": b'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>\xff\xfe\xc3(</title>'
                    b"</channel></rss>",
    "invalid-utf8-declared-latin1": b'<?xml version="1.0" encoding="iso-8859-1"?><rss><channel><title>\xff</title>'
                                    b"</channel></rss>",
    "nul-bytes": b'<rss version="2.0"><channel><title>a\x00b</title></channel></rss>',
    "utf-16-bom": '<?xml version="1.0" encoding="utf-16"?><rss version="2.0"><channel><title>t</title>'
                  "</channel></rss>".encode("utf-16"),
    "utf-32": '<rss version="2.0"><channel><title>t</title></channel></rss>'.encode("utf-32"),
    "not-xml": b"<html><body>Not a feed</body></html>",
    "binary": bytes(range(256)) * 10,
    "empty": b"",
    "only-declaration": b'<?xml version="1.0"?>',
    "bogus-encoding": b'<?xml version="1.0" encoding="x-no-such-codec"?><rss><channel/></rss>',
    "namespace-per-element": (b'<rss version="2.0"><channel><title>T</title><item><title>A</title>'
                              + b"".join(b'<p%d:e xmlns:p%d="urn:%d"/>' % (i, i, i) for i in range(3_000))
                              + b"</item></channel></rss>"),
    "many-namespaces": (b"<rss " + b" ".join(b'xmlns:p%d="http://example.com/%d"' % (i, i) for i in range(2000))
                        + b"><channel><p1999:title>x</p1999:title></channel></rss>"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("headers", [{"content-type": "application/rss+xml"}, {}, {"content-type": "text/html"}],
                         ids=["rss", "none", "html"])
def test_hostile_input_is_declined_or_read_exactly_as_feedparser_reads_it(name: str, headers: dict[str, str]) -> None:
    body = HOSTILE[name]
    result = fastfeed.read(body, headers)  # never raises: any surprise is a decline
    if b"<!DOCTYPE" in body:  # entities of any kind are never expanded by fastfeed: feedparser's path decides
        assert result is None
    assert _mismatch(body, headers) is None
    fast = _outcome(body, headers, True)
    assert "root:" not in repr(fast)  # /etc/passwd never leaks into a title
    assert fast == _outcome(body, headers, False)
