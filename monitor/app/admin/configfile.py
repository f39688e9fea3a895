"""feeds.toml edited by the admin pages: validated with the same pydantic models as at start-up, written with
its comments and layout kept (tomlkit), recorded in `config_revisions` with an audit entry, and picked up by
every running service: the local one through its file watcher, services on other hosts through
`pull_revision` (they write the newer revision to their own feeds.toml, and their watcher reloads it).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from tomlkit.items import AoT, Array, Table

from monitor.config import Config, TopicConfig, format_validation_error, parse_config
from monitor.errors import ConfigError
from monitor.storage.db import aware_utc, naive_utc, serialize, utcnow, write_transaction
from monitor.storage.tables import AuditEntry, ConfigRevision


class StaleEdit(ConfigError):
    """feeds.toml changed since the form was opened: saving would overwrite someone else's edit."""


class FieldErrors(ConfigError):
    """Validation failed: messages by field name (`examples`, `threshold`...; `""` for the whole entry)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k or 'entry'}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Saved:
    revision_id: int
    sha256: str
    diff: str


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def field_errors(e: ValidationError) -> dict[str, str]:
    """pydantic errors by top-level field name, worded as `monitor config check` words them."""
    out: dict[str, str] = {}
    for err in e.errors():
        loc = err.get("loc", ())
        name = str(loc[0]) if loc else ""
        if name not in out:
            one = ValidationError.from_exception_data(e.title, [err])  # type: ignore[list-item]
            out[name] = format_validation_error(one).split(": ", 1)[-1]
    return out


def validate_topic(data: dict[str, Any]) -> TopicConfig:
    """The same model feeds.toml is validated with; FieldErrors names each bad field."""
    try:
        return TopicConfig.model_validate(data)
    except ValidationError as e:
        raise FieldErrors(field_errors(e)) from None


def dump_model(model: BaseModel) -> dict[str, Any]:
    """The values of a config entry as written in feeds.toml: defaults and None left out."""
    data = model.model_dump(mode="json", exclude_none=True)
    fields = type(model).model_fields
    return {k: v for k, v in data.items()
            if not (k in fields and not fields[k].is_required() and v == _default(fields[k]))}


def _default(f: Any) -> Any:
    return f.default_factory() if f.default_factory is not None else f.default


# --- editing the TOML document ----------------------------------------------------------------------------


def _toml_value(value: Any, like: Any = None) -> Any:
    """A tomlkit item for `value`. Lists of several strings (and lists of lists) are written one element per
    line, indented by two spaces as feeds.toml writes them, unless the value they replace was on one line."""
    if not isinstance(value, list):
        return value
    arr = tomlkit.array()
    one_line = isinstance(like, Array) and "\n" not in like.as_string()
    nested = bool(value) and all(isinstance(v, list) for v in value)
    if one_line or (len(value) < 2 and not nested):
        arr.extend([_inline(v) for v in value])
        return arr
    for v in value:
        arr.add_line(_inline(v), indent="  ")
    arr.add_line(indent="")
    return arr


def _inline(value: Any) -> Any:
    if isinstance(value, list):
        inner = tomlkit.array()
        inner.extend([_inline(v) for v in value])
        return inner
    return value


def _update_table(table: Table | Any, new: dict[str, Any], key_order: list[str]) -> None:
    """Set the keys whose value changed, add new keys, drop keys no longer set; untouched keys keep their
    comments and formatting."""
    for k in list(table.keys()):
        if k not in new:
            del table[k]
    for k in key_order:
        if k not in new:
            continue
        if k in table and _plain(table[k]) == new[k]:
            continue
        if k in table and _edit_in_place(table[k], new[k]):
            continue
        table[k] = _toml_value(new[k], table.get(k))


def _edit_in_place(arr: Any, new: Any) -> bool:
    """Turn the array `arr` into `new` by deleting and appending elements, when that is all the edit did: the
    comments beside the elements that stay are kept. False when it cannot (elements reordered or nested)."""
    if not isinstance(arr, Array) or not isinstance(new, list) or any(isinstance(v, list) for v in new):
        return False
    old = [_plain(v) for v in arr]
    if any(isinstance(v, list) for v in old) or len(set(old)) != len(old):
        return False
    kept = [v for v in old if v in new]
    if kept != new[:len(kept)]:
        return False
    for i in reversed(range(len(old))):
        if old[i] not in new:
            del arr[i]
    if len(arr) == 0 and len(new) > 1:
        return False  # nothing left to take the layout from: written afresh
    for v in new[len(kept):]:
        arr.append(v)
    return True


def _plain(item: Any) -> Any:
    return item.unwrap() if hasattr(item, "unwrap") else item


def _aot(doc: tomlkit.TOMLDocument, section: str) -> AoT | None:
    got = doc.get(section)
    return got if isinstance(got, AoT) else None


def upsert_entry(text: str, section: str, key: str, value: str, model: BaseModel | None) -> str:
    """feeds.toml `text` with the `[[section]]` entry whose `key` is `value` replaced by `model` (added at
    the end of the section when absent, removed when `model` is None)."""
    doc = tomlkit.parse(text)
    aot = _aot(doc, section)
    index = None
    if aot is not None:
        for i, t in enumerate(aot):
            if t.get(key) == value:
                index = i
                break
    if model is None:
        if aot is None or index is None:
            raise ConfigError(f"no [[{section}]] entry with {key} = {value!r}")
        del aot[index]
        return tomlkit.dumps(doc)
    new = dump_model(model)
    order = [key, *[k for k in type(model).model_fields if k != key]]
    if aot is not None and index is not None:
        _update_table(aot[index], new, order)
        return tomlkit.dumps(doc)
    table = tomlkit.table()
    for k in order:
        if k in new:
            table[k] = _toml_value(new[k])
    table.add(tomlkit.nl())  # a blank line before whatever section follows
    if aot is None:
        aot = tomlkit.aot()
        aot.append(table)
        doc.append(section, aot)
    else:
        aot.append(table)
    return tomlkit.dumps(doc)


def set_entry_key(text: str, section: str, key: str, value: str, field: str, new_value: Any) -> str:
    """Set one key of one `[[section]]` entry (e.g. a feed's `enabled = false`)."""
    doc = tomlkit.parse(text)
    aot = _aot(doc, section)
    for t in aot or []:
        if t.get(key) == value:
            t[field] = new_value
            return tomlkit.dumps(doc)
    raise ConfigError(f"no [[{section}]] entry with {key} = {value!r}")


def text_diff(old: str, new: str, name: str = "feeds.toml") -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{name}", f"b/{name}", n=1))


def entry_diff(old: BaseModel | None, new: BaseModel | None) -> str:
    """A short readable diff of one entry: `field: old -> new`, list items added (+) and removed (-)."""
    a = dump_model(old) if old is not None else {}
    b = dump_model(new) if new is not None else {}
    # A key left out because it has its default is shown with that default (`enabled: true -> false`).
    full_a = old.model_dump(mode="json") if old is not None else {}
    full_b = new.model_dump(mode="json") if new is not None else {}
    lines = []
    for k in dict.fromkeys([*a, *b]):
        x, y = a.get(k, full_a.get(k)), b.get(k, full_b.get(k))
        if x == y:
            continue
        if isinstance(x, list) or isinstance(y, list):
            xs, ys = [json.dumps(v) for v in x or []], [json.dumps(v) for v in y or []]
            lines += [f"{k}: - {v}" for v in xs if v not in ys] + [f"{k}: + {v}" for v in ys if v not in xs]
        else:
            lines.append(f"{k}: {json.dumps(x)} -> {json.dumps(y)}")
    return "\n".join(lines)


# --- saving -----------------------------------------------------------------------------------------------


CONFIG_LOCK = "feeds.toml"  # db.serialize lock held while a save checks and writes the file


def save_config_text(engine: Engine, path: Path, new_text: str, *, actor: str, action: str, target: str,
                     diff: str, expected_sha: str | None, now: datetime | None = None) -> Saved:
    """Validate `new_text` as a whole configuration (what the service would load), then write it atomically
    to `path`, and record the revision and an audit entry in one transaction.

    `expected_sha` is the hash of the feeds.toml text the edit was made on (the form's when it was opened, or
    the text the caller just read and edited). It is compared inside the write transaction, under a lock
    every save takes, with the file and with the newest `ConfigRevision`: StaleEdit (409) names the save that
    came first instead of silently dropping it. None skips the check (a caller that replaces the whole file)."""
    parse_config(new_text, str(path), base_dir=path.resolve().parent)  # raises ConfigError naming the key
    now = now or utcnow()
    digest = sha256(new_text)
    with write_transaction(engine) as s:
        serialize(s, CONFIG_LOCK)
        old_text = read_text(path)
        if expected_sha:
            conflict = _conflict(s, path, sha256(old_text), expected_sha)
            if conflict:
                raise StaleEdit(conflict)
        rev = ConfigRevision(created_at=naive_utc(now), actor=actor, sha256=digest, text=new_text)
        s.add(rev)
        s.add(AuditEntry(at=naive_utc(now), actor=actor, action=action, target=target,
                         diff=diff or text_diff(old_text, new_text)))
        s.flush()
        _write_atomically(path, new_text)
        rev_id = rev.id
    return Saved(revision_id=rev_id, sha256=digest, diff=diff)


def _conflict(s: Session, path: Path, current_sha: str, expected_sha: str) -> str | None:
    """Why saving an edit of the text hashed `expected_sha` would overwrite someone else's change, or None.
    Two ways: this host's file changed since (another save here, or a revision pulled from another host);
    or another host saved a revision this host has not pulled yet (newer than the file's last write; an older
    revision that differs is a hand edit made here after it, which wins as in `pull_revision`)."""
    newest = s.scalars(select(ConfigRevision).order_by(ConfigRevision.id.desc()).limit(1)).first()

    def who(rev: ConfigRevision) -> str:
        at = aware_utc(rev.created_at)
        return f"revision {rev.id}, saved by {rev.actor} at {at:%Y-%m-%d %H:%M:%S} UTC" if at else f"revision {rev.id}"

    if current_sha != expected_sha:
        by = f" ({who(newest)})" if newest is not None and newest.sha256 == current_sha else ""
        return (f"{path.name} was changed by someone else since this page was opened{by}; reload it and make "
                "the change again")
    if newest is None or newest.sha256 == current_sha:
        return None
    saved_at = aware_utc(newest.created_at)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = 0.0
    if saved_at is not None and saved_at.timestamp() > mtime:
        return (f"{path.name} was changed by someone else on another host ({who(newest)}) and this host has not "
                "loaded it yet; wait a few seconds, reload the page and make the change again")
    return None


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=str(path.resolve().parent), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record_audit(engine: Engine, *, actor: str, action: str, target: str, diff: str = "",
                 now: datetime | None = None) -> None:
    """An audit entry for a change that is not a feeds.toml edit (a retry, a resubscribe...)."""
    with write_transaction(engine) as s:
        s.add(AuditEntry(at=naive_utc(now or utcnow()), actor=actor, action=action, target=target[:2048],
                         diff=diff))


@dataclass(frozen=True, slots=True)
class AuditView:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    diff: str


def audit_log(engine: Engine, limit: int = 200, offset: int = 0) -> list[AuditView]:
    with Session(engine) as s:
        rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)).all()
        return [AuditView(r.id, aware_utc(r.at), r.actor, r.action, r.target, r.diff) for r in rows]  # type: ignore[arg-type]


# --- other hosts: apply a newer revision from the database ------------------------------------------------


def pull_revision(engine: Engine, path: Path, seen: int | None) -> int | None:
    """For a running service (every config tick): if the database holds a feeds.toml revision newer than
    `seen`, write it to `path` (the file watcher then reloads it as any edit); returns the new `seen`.

    `seen` None (a service just started): the newest revision is applied only when it was saved after the
    local file was last modified, so a hand edit made on this host later than the last admin save wins."""
    with Session(engine) as s:
        rev = s.scalars(select(ConfigRevision).order_by(ConfigRevision.id.desc()).limit(1)).first()
    if rev is None or (seen is not None and rev.id <= seen):
        return seen if rev is None else max(seen or 0, rev.id)
    try:
        current = read_text(path)
    except OSError:
        current = ""
    if sha256(current) == rev.sha256:
        return rev.id
    if seen is None:
        saved_at = aware_utc(rev.created_at)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = 0.0
        if saved_at is not None and saved_at.timestamp() < mtime:
            return rev.id
    try:
        parse_config(rev.text, f"config revision {rev.id}", base_dir=path.resolve().parent)
    except ConfigError:
        return rev.id  # cannot happen for revisions written by save_config_text; never apply a bad one
    _write_atomically(path, rev.text)
    return rev.id


def current_config(path: Path, loader: Callable[[str], Config] | None = None) -> tuple[Config, str]:
    """The configuration as the file says now, and the file's hash (for the stale-edit guard)."""
    text = read_text(path)
    config = loader(text) if loader else parse_config(text, str(path), base_dir=path.resolve().parent)
    return config, sha256(text)
