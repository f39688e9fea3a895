"""Regenerate the initial migration from monitor.storage.tables (milestone 1 has no deployed databases yet, so the
schema is one migration). Usage: python scripts/regen_migration.py"""

import logging
import tempfile
from pathlib import Path

from alembic import command
from monitor.storage.db import ALEMBIC_DIR, alembic_config

logging.basicConfig(level=logging.INFO, format="%(message)s")
log = logging.getLogger("regen_migration")

versions = ALEMBIC_DIR / "versions"
for f in versions.glob("0001_*.py"):
    f.unlink()
with tempfile.TemporaryDirectory() as tmp:
    cfg = alembic_config(f"sqlite:///{Path(tmp) / 'empty.db'}")
    command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001")
for f in versions.glob("0001_*.py"):
    log.info("wrote %s", f)
