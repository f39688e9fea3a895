"""Regenerate the initial migration from monitor.tables (milestone 1 has no deployed databases yet, so the
schema is one migration). Usage: python scripts/regen_migration.py"""

import tempfile
from pathlib import Path

from alembic import command
from monitor.db import ALEMBIC_DIR, alembic_config

versions = ALEMBIC_DIR / "versions"
for f in versions.glob("0001_*.py"):
    f.unlink()
with tempfile.TemporaryDirectory() as tmp:
    cfg = alembic_config(f"sqlite:///{Path(tmp) / 'empty.db'}")
    command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001")
for f in versions.glob("0001_*.py"):
    print(f"wrote {f}")
