"""`monitor demo` as a newcomer runs it (on one day of the bundled headlines, to stay short): the summary
names every topic and the span it replayed, the e-mails' links are signed at the real time (they must not
read as expired when opened), and the commands it prints to explore its database work as printed."""

from __future__ import annotations

import json
import lzma
import re
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.delivery import unsubscribe
from monitor.lab.demo import BUNDLED
from monitor.signal import embed

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _one_day(tmp_path: Path) -> Path:
    path = tmp_path / "one-day.jsonl"
    with lzma.open(BUNDLED, "rt") as f, path.open("w") as out:
        for line in f:
            if json.loads(line)["date_published"].startswith("2023-11-24"):
                out.write(line)
    return path


def test_demo_summary_links_and_explore_commands(tmp_path: Path, embedder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(embed, "load_embedder", lambda settings: embedder)  # the session's model, loaded once
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo-out"
    r = CliRunner().invoke(main, ["--config", str(ROOT / "feeds.toml"), "demo", "--out", str(out),
                                  "--data", str(_one_day(tmp_path))])
    assert r.exit_code == 0, r.output
    assert "published 2023-11-24 .. 2023-11-24, digests until 2023-11-25 09:00 UTC" in r.output
    for topic in ("doha-talks", "prisoner-exchange", "icc-warrants"):  # a topic with nothing to say says 0
        assert re.search(rf"^\s+{topic}\s+\d+ matched", r.output, re.M), r.output

    emails = sorted((out / "email").glob("*.eml"))
    assert emails, r.output
    msg = BytesParser(policy=policy.default).parsebytes(emails[0].read_bytes())
    token = re.search(r"/unsubscribe/([\w.\-]+)", msg["List-Unsubscribe"]).group(1)
    key = (out / ".secret_key").read_text().strip()
    # Signed now, not on the replay's 2023 clock: opened today, the link is valid, not "expired".
    assert unsubscribe.read_token(key, token, datetime.now(UTC)) > 0

    explore = [line.strip() for line in r.output.splitlines() if line.strip().startswith("monitor --config")]
    stories_cmd = next(c for c in explore if " stories list " in c).split()[1:]
    listed = CliRunner().invoke(main, stories_cmd)
    assert listed.exit_code == 0, listed.output
    assert "before the newest stored item (2023-11-24" in listed.output
    assert re.search(r"\d+ stor(y|ies) in the 3d", listed.output), listed.output
