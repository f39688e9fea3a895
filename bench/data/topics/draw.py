"""Draw the extra topic-labelling sample from the 2023 stream (items before 2023-11-16 only).

    python bench/data/topics/draw.py ../shared/data > bench/data/topics/extra_items.jsonl

Strata (titles deduplicated case-insensitively; nothing already in shared/data/topics/dev_items.jsonl):
  A  war + a negotiation/release/court word, 2023-10-07..11-15      every item      (the hard middle)
  B  war, no such word, 2023-10-07..11-15                           700 at random   (implicit phrasings: a
                                                                                     "deal", "families reunite")
  C  not the war, but the topics' vocabulary, 2023-01-01..11-15     1,000 at random (hard negatives: US-Iran swap,
                                                                                     Putin's ICC warrant, cricket's
                                                                                     ICC, other truces, Qatar)
  D  Israel/Palestine before 2023-10-07                             350 at random   (same actors, no war)
  E  everything else before 2023-11-16                              350 at random
Seeded (random.Random(20231116)), so the draw is reproducible. Each line is in dev_items.jsonl's shape plus
`stratum`; summaries are cleaned of HTML as the service cleans them and cut at 600 characters; the id is the first 12 hex digits of sha1(feed + link + title).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import random
import re
import sys
from pathlib import Path

from monitor.ingest.parse import clean_text

WAR = re.compile(r"\b(gaza|hamas|israel\w*|palestin\w*|idf|netanyahu|west bank|hezbollah|rafah|qassam|jenin|al-aqsa)\b",
                 re.I)
VOCAB = re.compile(r"\b(cease-?fire|truce|pause|deal|talks|negotiat\w*|mediat\w*|qatar\w*|doha|egypt\w*|cairo|hostages?"
                   r"|captives?|captivity|prisoners?|releases?d?|releasing|freed|free|swap|exchange|icc|criminal court"
                   r"|warrants?|karim khan|red cross|abducted|kidnapped|detainees?)\b", re.I)
HARD = re.compile(r"\b(prisoner swap|prisoner exchange|swap|hostages?|icc|criminal court|arrest warrant|truce"
                  r"|cease-?fire|qatar\w*|doha|mediat\w*|prisoners? releas\w*|freed|detainees?)\b", re.I)
QUOTA = {"A": None, "B": 700, "C": 1000, "D": 350, "E": 350}
CUTOFF = "2023-11-16"


def stratum(day: str, text: str) -> str:
    war = bool(WAR.search(text))
    if war and day >= "2023-10-07":
        return "A" if VOCAB.search(text) else "B"
    if war:
        return "D"
    return "C" if HARD.search(text) else "E"


def main(data: Path) -> None:
    with open(data / "topics" / "dev_items.jsonl") as f:
        dev = {json.loads(line)["title"].strip().lower() for line in f}
    pools: dict[str, list[dict]] = {k: [] for k in QUOTA}
    seen: set[str] = set()
    with lzma.open(data / "stream" / "items_2023_worldnews.jsonl.xz", "rt") as f:
        for line in f:
            d = json.loads(line)
            day = d["date_published"][:10]
            title = (d.get("title") or "").strip()
            if day >= CUTOFF or not title or title.lower() in seen or title.lower() in dev:
                continue
            seen.add(title.lower())
            summary = clean_text(d.get("description") or "", 600)  # as the service reads it, capped
            s = stratum(day, f"{title} {summary}")
            ident = hashlib.sha1(f"{d['feed']}{d['link']}{title}".encode()).hexdigest()[:12]
            pools[s].append({"id": ident, "date": d["date_published"][:19], "feed": d["feed"], "title": title,
                             "summary": summary, "link": d["link"], "stratum": s})
    rng = random.Random(20231116)
    drawn = []
    for s, quota in QUOTA.items():
        pool = pools[s]
        drawn += pool if quota is None or quota >= len(pool) else rng.sample(pool, quota)
    drawn.sort(key=lambda d: (d["date"], d["id"]))
    for d in drawn:
        sys.stdout.write(json.dumps(d, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"))
