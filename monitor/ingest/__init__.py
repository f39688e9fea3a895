"""Ingest: fetch feeds politely, parse them, and decide when each is next due (poll chains them)."""
