"""parse: formats, cleaning, identity, dates and hostile XML."""

from __future__ import annotations

import resource
from datetime import UTC, datetime
from pathlib import Path

import pytest
from feedserver import rss

from monitor.errors import ParseError
from monitor.ingest.parse import canonical_url, clean_text, outlet_of, parse_feed

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HDRS = {"Content-Type": "application/rss+xml; charset=utf-8"}


def parse(body: bytes, url: str = "https://feeds.example.com/rss.xml"):  # type: ignore[no-untyped-def]
    return parse_feed(body, HDRS, feed_url=url, now=NOW)


RSS091 = b"""<?xml version="1.0"?><rss version="0.91"><channel><title>Old</title><link>http://old.example.org/</link>
<description>d</description><item><title>Ninety-one</title><link>http://old.example.org/a</link>
<description>teaser</description></item></channel></rss>"""

RSS10 = b"""<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/"
 xmlns:dc="http://purl.org/dc/elements/1.1/">
<channel rdf:about="http://rdf.example.net/"><title>RDF</title><link>http://rdf.example.net/</link><description>d</description></channel>
<item rdf:about="http://rdf.example.net/1"><title>One point oh</title><link>http://rdf.example.net/1</link>
<dc:date>2024-04-30T08:00:00+02:00</dc:date></item></rdf:RDF>"""

ATOM = b"""<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"><title>Atom</title>
<link href="https://atom.example.com/"/><id>urn:x</id><updated>2024-04-30T00:00:00Z</updated>
<entry><title type="html">Truce &lt;em&gt;extended&lt;/em&gt;</title><id>tag:atom.example.com,2024:1</id>
<link href="https://atom.example.com/1?utm_source=feed"/><updated>2024-04-30T10:00:00Z</updated>
<summary type="html">&lt;p&gt;Talks in &lt;b&gt;Doha&lt;/b&gt;&amp;nbsp;resume.&lt;/p&gt;&lt;script&gt;evil()&lt;/script&gt;</summary>
<author><name>Reporter</name></author></entry></feed>"""


def test_rss_091_10_20_and_atom() -> None:
    (a,) = parse(RSS091).items
    assert a.title == "Ninety-one" and a.summary == "teaser" and a.link == "http://old.example.org/a"
    (b,) = parse(RSS10).items
    assert b.title == "One point oh" and b.published_at == datetime(2024, 4, 30, 6, 0, tzinfo=UTC)
    (c,) = parse(rss([{"title": "Twenty", "guid": "g-1", "pubDate": "Tue, 30 Apr 2024 09:00:00 +0100"}])).items
    assert c.key == "guid:g-1" and c.published_at == datetime(2024, 4, 30, 8, 0, tzinfo=UTC)
    feed = parse(ATOM)
    (d,) = feed.items
    assert feed.title == "Atom"
    assert d.title == "Truce extended"
    assert d.summary == "Talks in Doha\xa0resume." or d.summary == "Talks in Doha resume."
    assert "evil" not in d.summary and "<" not in d.summary
    assert d.link == "https://atom.example.com/1" and d.author == "Reporter" and d.outlet == "example.com"


def test_html_entities_and_whitespace_cleaned() -> None:
    body = rss([{"title": "A  &amp;amp; B\n\t C", "description": "<p>One&nbsp;&lt;two&gt;</p>\n\n<p>three &#8217;s</p>",
                 "guid": "x"}])
    (it,) = parse(body).items
    assert it.title == "A & B C"
    assert "One" in it.summary and "three \u2019s" in it.summary and "<p>" not in it.summary
    assert "  " not in it.summary


def test_long_summary_is_capped() -> None:
    (it,) = parse(rss([{"title": "t", "guid": "1", "description": "word " * 2000}])).items
    assert len(it.summary) <= 1000 and it.summary.endswith("…")


def test_dates_in_utc_clamped_and_defaulted() -> None:
    body = rss([
        {"title": "future", "guid": "1", "pubDate": "Mon, 01 Jan 2035 00:00:00 GMT"},
        {"title": "none", "guid": "2"},
        {"title": "garbage", "guid": "3", "pubDate": "yesterday-ish"},
    ])
    items = {i.title: i for i in parse(body).items}
    assert items["future"].published_at == NOW
    assert items["none"].published_at == NOW
    assert items["garbage"].published_at == NOW
    assert all(i.published_at.tzinfo is not None for i in items.values())


def test_identity_fallback_chain() -> None:
    body = rss([
        {"title": "with guid", "guid": "abc", "link": "https://www.bbc.co.uk/news/1"},
        {"title": "link only", "link": "https://www.bbc.co.uk/news/2?at_medium=RSS&at_campaign=KARANGA#top"},
        {"title": "neither", "description": "just text"},
    ], link="https://www.bbc.co.uk/news")
    a, b, c = parse(body, "https://feeds.bbci.co.uk/news/rss.xml").items
    assert a.key == "guid:abc"
    assert b.key == "link:https://www.bbc.co.uk/news/2" and b.link == "https://www.bbc.co.uk/news/2"
    assert c.key.startswith("hash:") and c.key[5:] == c.content_hash
    # the outlet is the feed's own (its URL's registrable domain), whatever the items and the channel claim
    assert {a.outlet, b.outlet, c.outlet} == {"bbci.co.uk"}


def test_outlet_comes_from_the_feed_unless_it_is_an_aggregator() -> None:
    body = rss([
        {"title": "Reuters story", "guid": "https://www.reuters.com/world/a-1", "link": "https://www.reuters.com/world/a-1"},
        {"title": "AP story", "link": "https://apnews.com/article/b-2"},
        {"title": "no link", "description": "text"},
    ], link="https://www.reuters.com/")
    spoof = parse_feed(body, HDRS, feed_url="https://cheap-news.example.net/rss", now=NOW)
    assert {i.outlet for i in spoof.items} == {"example.net"}
    agg = parse_feed(body, HDRS, feed_url="https://news.google.com/rss/search?q=gaza", now=NOW, aggregator=True)
    assert [i.outlet for i in agg.items] == ["reuters.com", "apnews.com", "reuters.com"]  # last: the channel link


FIXTURES = Path(__file__).parent / "fixtures"


def test_a_guid_that_is_the_items_own_link_is_the_link() -> None:
    body = rss([
        {"title": "fragment", "guid": "https://www.bbc.co.uk/news/world-1#0",
         "link": "https://www.bbc.co.uk/news/world-1?at_medium=RSS&at_campaign=KARANGA"},
        {"title": "same as link", "guid": "https://www.example.com/a", "link": "https://www.example.com/a"},
        {"title": "tracking only", "guid": "https://www.example.com/b?utm_source=rss", "link": "https://www.example.com/b"},
        {"title": "another page", "guid": "https://www.example.com/c#0", "link": "https://www.example.com/d"},
        {"title": "opaque", "guid": "tag:example.com,2024:1", "link": "https://www.example.com/e"},
    ])
    keys = [i.key for i in parse(body).items]
    assert keys == ["link:https://www.bbc.co.uk/news/world-1", "link:https://www.example.com/a",
                    "link:https://www.example.com/b", "guid:https://www.example.com/c#0", "guid:tag:example.com,2024:1"]


@pytest.mark.parametrize("fast_path", [True, False])
def test_bbc_republished_items_keep_their_identity(fast_path: bool) -> None:
    # Real BBC News items in the feed's real shape; the second snapshot republished four as `#1`/`#2`.
    snaps = [parse_feed((FIXTURES / f"bbc_news_snapshot_{n}.xml").read_bytes(), HDRS,
                        feed_url="https://feeds.bbci.co.uk/news/rss.xml", now=NOW, fast_path=fast_path)
             for n in (1, 2)]
    guids = [{i.guid for i in s.items} for s in snaps]
    assert any(g.endswith("#1") for g in guids[1]) and len(guids[0] | guids[1]) == 17
    by_link = [{i.link: i.key for i in s.items} for s in snaps]
    common = by_link[0].keys() & by_link[1].keys()
    assert len(common) == 11 and all(by_link[0][k] == by_link[1][k] for k in common)
    assert len(by_link[0].keys() | by_link[1].keys()) == 13


def test_duplicate_guids_in_one_document_kept_once() -> None:
    body = rss([{"title": "first", "guid": "same"}, {"title": "second", "guid": "same"}, {"title": "other", "guid": "o"}])
    feed = parse(body)
    assert [i.title for i in feed.items] == ["first", "other"]
    assert any("duplicate" in w for w in feed.warnings)


def test_canonical_url_and_outlet() -> None:
    assert canonical_url("HTTPS://WWW.Example.COM:443/a/b?id=7&utm_source=x&fbclid=1&gclid=2&cmpid=3#frag") == \
        "https://www.example.com/a/b?id=7"
    assert canonical_url("http://example.com") == "http://example.com/"
    assert outlet_of("https://feeds.bbci.co.uk/news/rss.xml") == "bbci.co.uk"
    assert outlet_of("https://www.bbc.co.uk/news") == "bbc.co.uk"
    assert outlet_of("https://www.abc.net.au/news") == "abc.net.au"
    assert outlet_of("https://rss.nytimes.com/x") == "nytimes.com"
    assert outlet_of("http://127.0.0.1:8080/f") == "127.0.0.1"


def test_same_story_text_hash_ignores_case_and_punctuation() -> None:
    a = parse(rss([{"title": "Hostages freed!", "description": "Thirteen  released.", "guid": "1"}])).items[0]
    b = parse(rss([{"title": "hostages freed", "description": "thirteen released", "guid": "2"}])).items[0]
    assert a.content_hash == b.content_hash


def test_malformed_but_readable_feed_yields_items_and_warning() -> None:
    body = b"""<rss version="2.0"><channel><title>Broken & co</title>
    <item><title>Still readable</title><guid>1</guid></item>
    <item><title>Unclosed <b>tag</title><guid>2</guid></item>"""
    feed = parse(body)
    assert [i.title for i in feed.items][:1] == ["Still readable"]
    assert feed.warnings and "malformed" in feed.warnings[0]


@pytest.mark.parametrize("body", [b"<html><body><h1>Not a feed</h1></body></html>", b"\x00\x01\x02binary", b"   "])
def test_unreadable_body_raises_parse_error(body: bytes) -> None:
    with pytest.raises(ParseError) as e:
        parse(body)
    assert "feeds.example.com" in str(e.value)


def test_body_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        parse_feed("/etc/passwd", {}, feed_url="x", now=NOW)  # type: ignore[arg-type]


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE rss [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<rss version="2.0"><channel><title>laughs</title><item><title>&lol9;</title><guid>1</guid></item></channel></rss>"""


def _xxe(target: Path) -> bytes:
    return f"""<?xml version="1.0"?>
<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file://{target}">]>
<rss version="2.0"><channel><title>x &xxe;</title>
<item><title>leak &xxe;</title><description>&xxe;</description><guid>1</guid></item></channel></rss>""".encode()


def test_billion_laughs_refused_without_blowing_memory() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ParseError) as e:
        parse(BILLION_LAUGHS)
    assert "entities" in str(e.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: < 50 MB growth


@pytest.mark.parametrize("target", [Path("/etc/passwd"), None])
def test_external_entity_never_reads_files(tmp_path: Path, target: Path | None) -> None:
    if target is None:
        target = tmp_path / "secret.txt"
        target.write_text("TOP-SECRET-CANARY")
    content = target.read_text()
    marker = "TOP-SECRET-CANARY" if "CANARY" in content else "root:"
    with pytest.raises(ParseError) as e:
        parse(_xxe(target))
    assert marker not in str(e.value)


def test_feedparser_alone_would_not_read_files_either(tmp_path: Path) -> None:
    """Belt and braces: even if our pre-check were bypassed, feedparser itself must not expand the entity."""
    import io

    import feedparser

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CANARY")
    d = feedparser.parse(io.BytesIO(_xxe(secret)))
    dumped = repr(d)
    assert "TOP-SECRET-CANARY" not in dumped
    d2 = feedparser.parse(io.BytesIO(_xxe(Path("/etc/passwd"))))
    assert "root:" not in repr(d2)


def test_clean_text_limits() -> None:
    assert clean_text("<p>a</p><p>b</p>", 100) == "a b"
    assert clean_text("", 10) == ""


def test_entity_declaration_hidden_behind_a_long_prolog_is_refused() -> None:
    padding = b"<!--" + b"x" * 200_000 + b"-->"
    body = BILLION_LAUGHS.replace(b'<?xml version="1.0"?>\n', b'<?xml version="1.0"?>\n' + padding)
    with pytest.raises(ParseError):
        parse(body)


def test_netscape_rss091_doctype_is_still_read() -> None:
    body = (b'<?xml version="1.0" encoding="ISO-8859-1"?>\n<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD '
            b'RSS 0.91//EN" "http://my.netscape.com/publish/formats/rss-0.91.dtd">\n<rss version="0.91"><channel>'
            b"<title>Old</title><link>http://old.example.org/</link><description>d</description><item>"
            b"<title>Caf\xe9 &amp; more</title><link>http://old.example.org/1</link></item></channel></rss>")
    (it,) = parse(body).items
    assert it.title == "Café & more"


def test_control_characters_removed_from_text() -> None:
    (it,) = parse(rss([{"title": "Red \x1b[31malert", "guid": "1"}])).items
    assert "\x1b" not in it.title and it.title == "Red [31malert"
