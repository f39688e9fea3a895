"""OPML import/export and the feed CLI commands, through click's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from feedserver import FeedServer, rss

from monitor.cli import main
from monitor.config import load_config
from monitor.errors import ConfigError
from monitor.ingest.opml import OpmlFeed, read_opml, toml_blocks, write_opml

OPML = b"""<?xml version="1.0"?>
<opml version="1.0"><head><title>subs</title></head><body>
 <outline text="News">
  <outline type="rss" text="Al Jazeera" xmlUrl="https://www.aljazeera.com/xml/rss/all.xml" htmlUrl="https://www.aljazeera.com"/>
  <outline type="rss" title="BBC &quot;Middle East&quot;" xmlUrl="https://feeds.bbci.co.uk/news/world/middle_east/rss.xml"/>
 </outline>
 <outline type="rss" text="dup" xmlUrl="https://www.aljazeera.com/xml/rss/all.xml"/>
 <outline type="rss" text="not http" xmlUrl="file:///etc/passwd"/>
</body></opml>"""

CONFIG = """# my feeds, with a comment that must survive
[settings]
database_url = "sqlite:///{db}"
allow_private_networks = true  # tests talk to 127.0.0.1

[[feeds]]
url = "{url}"
name = "Local"
"""


def write_config(tmp_path: Path, url: str = "https://example.org/feed.xml") -> Path:
    p = tmp_path / "feeds.toml"
    p.write_text(CONFIG.format(db=tmp_path / "m.db", url=url))
    return p


def run(config: Path, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)
    return r.exit_code, r.output


def test_read_nested_dedupes_and_skips_non_http() -> None:
    feeds = read_opml(OPML)
    assert [f.url for f in feeds] == ["https://www.aljazeera.com/xml/rss/all.xml",
                                      "https://feeds.bbci.co.uk/news/world/middle_east/rss.xml"]
    assert feeds[1].title == 'BBC "Middle East"' and feeds[0].html_url == "https://www.aljazeera.com"


def test_round_trip() -> None:
    feeds = [OpmlFeed("https://a.example/f?x=1&y=2", 'A & "B" <c>'), OpmlFeed("https://b.example/rss", None)]
    back = read_opml(write_opml(feeds))
    assert [(f.url, f.title) for f in back] == [("https://a.example/f?x=1&y=2", 'A & "B" <c>'),
                                                 ("https://b.example/rss", "https://b.example/rss")]


def test_hostile_or_wrong_opml_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="not a readable OPML"):
        read_opml(b'<?xml version="1.0"?><!DOCTYPE o [<!ENTITY x SYSTEM "file:///etc/passwd">]><opml>&x;</opml>')
    with pytest.raises(ConfigError, match="expected <opml>"):
        read_opml(b"<rss/>")


def test_toml_blocks_escape_quotes() -> None:
    text = toml_blocks([OpmlFeed("https://a.example/f", 'say "hi" \\ now')])
    import tomllib

    assert tomllib.loads(text)["feeds"][0]["name"] == 'say "hi" \\ now'


def test_cli_import_appends_to_config_keeping_comments_then_export(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    opml = tmp_path / "subs.opml"
    opml.write_bytes(OPML)
    assert run(config, "db", "upgrade")[0] == 0
    code, out = run(config, "feeds", "import", str(opml), "--dry-run")
    assert code == 0 and "[[feeds]]" in out and config.read_text().count("[[feeds]]") == 1
    code, out = run(config, "feeds", "import", str(opml))
    assert code == 0 and "2 new" in out and "database: 3 feeds added" in out  # the DB follows the file
    text = config.read_text()
    assert text.startswith("# my feeds, with a comment that must survive")
    assert "# tests talk to 127.0.0.1" in text
    assert len(load_config(config).feeds) == 3
    code, out = run(config, "feeds", "import", str(opml))  # idempotent
    assert "0 new" in out and len(load_config(config).feeds) == 3
    code, out = run(config, "feeds", "export")
    assert code == 0
    urls = [f.url for f in read_opml(out.encode())]
    assert urls == [f.url for f in load_config(config).feeds]
    code, out = run(config, "feeds", "list")
    assert code == 0 and "never" in out and "Local" in out


def test_cli_poll_json_last_line_and_schema_check(tmp_path: Path, feed_server: FeedServer) -> None:
    feed_server.route("/f.xml", body=rss([{"title": "One", "guid": "1"}, {"title": "Two", "guid": "2"}]))
    feed_server.route("/broken.xml", status=500)
    config = write_config(tmp_path, feed_server.url("/f.xml"))
    code, out = run(config, "poll", "--once")
    assert code == 2 and "monitor db upgrade" in out
    run(config, "db", "upgrade")
    config.write_text(config.read_text() + f'\n[[feeds]]\nurl = "{feed_server.url("/broken.xml")}"\n')
    code, out = run(config, "poll", "--once", "--json")
    assert code == 0
    last = json.loads(out.strip().splitlines()[-1])
    assert last == {"polled": 2, "new_items": 2, "not_modified": 0, "errors": 1}
    code, out = run(config, "poll", "--once", "--json", "--feed", feed_server.url("/f.xml"))
    assert json.loads(out.strip().splitlines()[-1]) == {"polled": 1, "new_items": 0, "not_modified": 0, "errors": 0}
    code, out = run(config, "poll", "--once")
    assert code == 0 and "Local" in out and "total: 2 polled" in out
    code, out = run(config, "poll", "--once", "--feed", "https://unknown.example/rss")
    assert code == 2 and "add it as a [[feeds]] entry" in out
    code, out = run(config, "feeds", "list", "--json")
    rows = [json.loads(line) for line in out.strip().splitlines()]
    broken = next(r for r in rows if r["url"].endswith("/broken.xml"))
    assert broken["error_count"] >= 2 and broken["last_status"] == "error:http" and broken["next_check_at"]


def test_export_drops_characters_xml_cannot_carry() -> None:
    data = write_opml([OpmlFeed("https://a.example/f", "Alpha \x1b[31mred\x00")])
    (back,) = read_opml(data)
    assert back.title == "Alpha [31mred"
