"""OPML, the feed-reader convention for lists of feeds: read (import) and write (export), and turning imported
feeds into `[[feeds]]` blocks appended to feeds.toml.

feeds.toml is the source of truth for which feeds are polled, so an import appends `[[feeds]]` blocks to the
end of the file (its existing text and comments are untouched; the result is validated before it replaces
the file) and the database follows the file (`store.sync_feeds`). OPML is untrusted input: it is parsed with
defusedxml (no entity expansion, no external references).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path
from xml.etree.ElementTree import Element, SubElement, tostring

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from monitor.config import parse_config
from monitor.errors import ConfigError

_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class OpmlFeed:
    url: str
    title: str | None = None
    html_url: str | None = None


def read_opml(data: bytes, source: str = "OPML") -> list[OpmlFeed]:
    """Every outline with an http(s) xmlUrl, at any depth (categories are flattened), duplicates dropped."""
    try:
        root = DET.fromstring(data)
    except (DefusedXmlException, DET.ParseError) as e:
        raise ConfigError(f"{source}: not a readable OPML file: {e}") from None
    if root.tag.lower() != "opml":
        raise ConfigError(f"{source}: not an OPML file (root element is <{root.tag}>, expected <opml>)")
    out: list[OpmlFeed] = []
    seen: set[str] = set()
    for node in root.iter("outline"):
        attrs = {k.lower(): v for k, v in node.attrib.items()}
        url = (attrs.get("xmlurl") or "").strip()
        if not url.lower().startswith(("http://", "https://")) or url in seen:
            continue
        seen.add(url)
        title = (attrs.get("title") or attrs.get("text") or "").strip() or None
        out.append(OpmlFeed(url=url, title=title, html_url=attrs.get("htmlurl") or None))
    return out


def write_opml(feeds: Iterable[OpmlFeed], *, title: str = "monitor feeds", now: datetime | None = None) -> bytes:
    root = Element("opml", version="2.0")
    head = SubElement(root, "head")
    SubElement(head, "title").text = title
    if now is not None:
        SubElement(head, "dateCreated").text = format_datetime(now, usegmt=True)
    body = SubElement(root, "body")
    for f in feeds:
        title = _xml_safe(f.title or f.url)
        attrs = {"type": "rss", "text": title, "title": title, "xmlUrl": _xml_safe(f.url)}
        if f.html_url:
            attrs["htmlUrl"] = f.html_url
        SubElement(body, "outline", attrs)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def _xml_safe(text: str) -> str:
    """Drop characters XML 1.0 cannot carry (control characters other than tab and newlines)."""
    return _NOT_XML.sub("", text)


def toml_blocks(feeds: Sequence[OpmlFeed]) -> str:
    """`[[feeds]]` blocks for feeds.toml (JSON string escapes are valid TOML basic strings)."""
    parts = []
    for f in feeds:
        lines = ["[[feeds]]"]
        if f.title:
            lines.append(f"name = {json.dumps(f.title, ensure_ascii=False)}")
        lines.append(f"url = {json.dumps(f.url, ensure_ascii=False)}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + ("\n" if parts else "")


def new_feeds(imported: Sequence[OpmlFeed], existing_urls: Iterable[str]) -> list[OpmlFeed]:
    known = set(existing_urls)
    return [f for f in imported if f.url not in known]


def append_to_config(path: Path, feeds: Sequence[OpmlFeed], source_note: str) -> str:
    """Append `[[feeds]]` blocks for `feeds` to the config file, keeping its text and comments; the new file is
    validated first and replaces the old one atomically. Returns the appended text."""
    old = path.read_text(encoding="utf-8")
    added = f"\n# Imported from {source_note}\n" + toml_blocks(feeds)
    new = old + ("" if old.endswith("\n") else "\n") + added
    parse_config(new, str(path), env={})  # raises ConfigError naming the problem; the file is left alone
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
        shutil.copymode(path, tmp)  # mkstemp makes 0600: keep the file readable by the service as before
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return added
