"""Storage: the tables, the database helpers and the store that returns only new rows."""
