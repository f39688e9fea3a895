"""Validate the shapes of the hand-labelled story sets in this folder.

Usage: python bench/data/stories/check.py [FOLDER]
Checks: required fields and types, unique ids (per file; per timeline for timelines.jsonl),
dates before 2023-11-16, label values and time order of timelines, that every near-miss family
has at least two stories, and that every evidence id of key_developments.jsonl is an item of
this folder, of ../shared/data/topics/dev_items.jsonl or of the stream (when those are present); and the development labels against their registry.
Exits 1 and lists problems if any.
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

CUTOFF = "2023-11-16"
TOPICS = {"doha-talks", "prisoner-exchange", "icc-warrants"}


def _rows(path: Path, problems: list[str]) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            problems.append(f"{path.name}:{n}: not JSON ({e})")
    return rows


def _need(row: dict, fields: dict[str, type], where: str, problems: list[str]) -> bool:
    ok = True
    for name, kind in fields.items():
        if not isinstance(row.get(name), kind) or (kind is str and not row[name].strip()):
            problems.append(f"{where}: field {name!r} missing or not a non-empty {kind.__name__}")
            ok = False
    return ok


def _date_ok(value: str, where: str, problems: list[str]) -> None:
    if not (len(value) >= 10 and value[4] == "-" and value[7] == "-"):
        problems.append(f"{where}: date {value!r} is not ISO")
    elif value[:10] >= CUTOFF:
        problems.append(f"{where}: date {value!r} is not before {CUTOFF}")


def check_near_miss(path: Path, problems: list[str]) -> dict[str, str]:
    rows = _rows(path, problems)
    ids: set[str] = set()
    family_stories: dict[str, set[str]] = defaultdict(set)
    story_family: dict[str, str] = {}
    fields = {"id": str, "date": str, "source": str, "title": str, "summary": str, "story": str, "family": str}
    for n, r in enumerate(rows, 1):
        where = f"{path.name}:{n}"
        if not _need(r, {k: v for k, v in fields.items() if k != "summary"}, where, problems):
            continue
        if not isinstance(r.get("summary"), str):
            problems.append(f"{where}: field 'summary' missing")
        if r["id"] in ids:
            problems.append(f"{where}: duplicate id {r['id']}")
        ids.add(r["id"])
        _date_ok(r["date"], where, problems)
        if story_family.setdefault(r["story"], r["family"]) != r["family"]:
            problems.append(f"{where}: story {r['story']} appears in two families")
        family_stories[r["family"]].add(r["story"])
    for fam, stories in family_stories.items():
        if len(stories) < 2:
            problems.append(f"{path.name}: family {fam} has only one story")
    return {r["id"]: r["date"] for r in rows if isinstance(r.get("id"), str)}


def check_timelines(path: Path, problems: list[str]) -> set[str]:
    rows = _rows(path, problems)
    seen: set[tuple[str, str]] = set()
    last: dict[str, str] = {}
    fields = {"timeline": str, "topic": str, "id": str, "date": str, "source": str, "title": str, "label": str}
    for n, r in enumerate(rows, 1):
        where = f"{path.name}:{n}"
        if not _need(r, fields, where, problems):
            continue
        if not isinstance(r.get("summary"), str):
            problems.append(f"{where}: field 'summary' missing")
        key = (r["timeline"], r["id"])
        if key in seen:
            problems.append(f"{where}: id {r['id']} twice in timeline {r['timeline']}")
        seen.add(key)
        _date_ok(r["date"], where, problems)
        if r["topic"] not in TOPICS | {"none"}:
            problems.append(f"{where}: topic {r['topic']!r} unknown")
        if r["label"] not in ("development", "repeat"):
            problems.append(f"{where}: label {r['label']!r} not development|repeat")
        elif r["label"] == "development" and not str(r.get("development", "")).strip():
            problems.append(f"{where}: development without a 'development' line")
        if r["date"] < last.get(r["timeline"], ""):
            problems.append(f"{where}: timeline {r['timeline']} not in time order")
        last[r["timeline"]] = r["date"]
    return {r["id"] for r in rows if isinstance(r.get("id"), str)}


def check_key_developments(path: Path, problems: list[str], known_ids: set[str]) -> None:
    rows = _rows(path, problems)
    kds: set[str] = set()
    fields = {"kd": str, "first_seen": str, "topics": list, "what": str, "evidence_ids": list}
    for n, r in enumerate(rows, 1):
        where = f"{path.name}:{n}"
        if not _need(r, fields, where, problems):
            continue
        if r["kd"] in kds:
            problems.append(f"{where}: duplicate kd {r['kd']}")
        kds.add(r["kd"])
        _date_ok(r["first_seen"], where, problems)
        if not r["topics"] or not set(r["topics"]) <= TOPICS:
            problems.append(f"{where}: topics {r['topics']} not a non-empty subset of {sorted(TOPICS)}")
        if not r["evidence_ids"]:
            problems.append(f"{where}: no evidence ids")
        if known_ids:
            for i in r["evidence_ids"]:
                if i not in known_ids:
                    problems.append(f"{where}: evidence id {i} is in neither the stream sample nor dev_items")


def check_development_labels(path: Path, registry: Path, problems: list[str], kds: dict[str, set[str]],
                             topics: frozenset[str] | set[str] = TOPICS) -> None:
    """Every (item, topic) candidate once, a role, a development id exactly for on-topic development rows, each
    id in the registry with the row's topic, and a kd only where that kd's topics include the row's topic."""
    regs = {r.get("dev"): r for r in _rows(registry, problems)}
    seen: set[tuple[str, str]] = set()
    used: set[str] = set()
    fields = {"cid": str, "topic": str, "id": str, "date": str, "title": str, "role": str}
    for n, r in enumerate(_rows(path, problems), 1):
        where = f"{path.name}:{n}"
        if not _need(r, fields, where, problems):
            continue
        _date_ok(r["date"], where, problems)
        if (r["id"], r["topic"]) in seen:
            problems.append(f"{where}: ({r['id']}, {r['topic']}) labelled twice")
        seen.add((r["id"], r["topic"]))
        if r["topic"] not in topics or r.get("on_topic") not in (0, 1):
            problems.append(f"{where}: topic {r['topic']!r} unknown or on_topic not 0/1")
        if r["role"] not in ("development", "commentary", "off") or (r["role"] == "off") != (r.get("on_topic") == 0):
            problems.append(f"{where}: role {r['role']!r} must be development|commentary for on-topic rows, off otherwise")
        dev = r.get("dev")
        if (r["role"] == "development") != bool(dev):
            problems.append(f"{where}: a development row needs a dev id, other rows none")
        if dev:
            used.add(dev)
            if dev not in regs or regs[dev].get("topic") != r["topic"]:
                problems.append(f"{where}: dev {dev} not in {registry.name} with topic {r['topic']}")
        kd = r.get("kd")
        if kd and r["topic"] not in kds.get(kd, set()):
            problems.append(f"{where}: kd {kd} unknown or not tagged {r['topic']}")
    for dev in set(regs) - used:
        problems.append(f"{registry.name}: development {dev} has no row")


def _stream_ids(path: Path) -> set[str]:
    """Ids of stream items published before the cutoff: sha1(link)[:12], as in dev_items.jsonl."""
    import hashlib
    import lzma

    ids = set()
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if (d.get("date_published") or "")[:10] < CUTOFF:
                ids.add(hashlib.sha1((d.get("link") or "").encode()).hexdigest()[:12])
    return ids


def main(argv: list[str]) -> int:
    folder = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    problems: list[str] = []
    known: set[str] = set()
    counts = {}
    if (folder / "near_miss.jsonl").exists():
        known |= set(check_near_miss(folder / "near_miss.jsonl", problems))
        counts["near_miss"] = len(_rows(folder / "near_miss.jsonl", []))
    if (folder / "timelines.jsonl").exists():
        known |= check_timelines(folder / "timelines.jsonl", problems)
        counts["timelines"] = len(_rows(folder / "timelines.jsonl", []))
    dev_items = folder.parents[3] / "shared" / "data" / "topics" / "dev_items.jsonl" if len(folder.parents) > 3 else None
    if dev_items is not None and dev_items.exists():
        known |= {json.loads(x)["id"] for x in dev_items.read_text(encoding="utf-8").splitlines() if x.strip()}
    stream = folder.parents[3] / "shared" / "data" / "stream" / "items_2023_worldnews.jsonl.xz" if len(folder.parents) > 3 else None
    if stream is not None and stream.exists() and (folder / "key_developments.jsonl").exists():
        known |= _stream_ids(stream)
    if (folder / "key_developments.jsonl").exists():
        check_key_developments(folder / "key_developments.jsonl", problems, known)
        counts["key_developments"] = len(_rows(folder / "key_developments.jsonl", []))
    labels, registry = folder / "development_labels.jsonl", folder / "development_registry.jsonl"
    if labels.exists() and registry.exists():
        kd_topics = {r["kd"]: set(r.get("topics") or ()) for r in _rows(folder / "key_developments.jsonl", [])
                     if "kd" in r} if (folder / "key_developments.jsonl").exists() else {}
        # a folder with its own topics.toml (bench/data/analogs) labels those topics, not the shipped three
        own = folder / "topics.toml"
        topics = {t["id"] for t in tomllib.loads(own.read_text(encoding="utf-8")).get("topics", [])} \
            if own.exists() else TOPICS
        check_development_labels(labels, registry, problems, kd_topics, topics)
        counts["development_labels"] = len(_rows(labels, []))
    for p in problems:
        sys.stderr.write(p + "\n")
    sys.stdout.write(json.dumps({"counts": counts, "problems": len(problems)}) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
