"""How the service reports its scheduled jobs' failures: once in full, then counted (issue: a broken database
logged a traceback every second), and whether the database counts as failing for /readyz."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import OperationalError

from monitor.app.service import JobFailures


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _locked() -> OperationalError:
    return OperationalError("UPDATE feeds ...", {}, Exception("database is locked"))


def test_a_repeated_failure_is_logged_once_then_summarised_then_its_recovery(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    failures = JobFailures(logging.getLogger("t"), now=clock, repeat_report_s=300)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(60):  # one a second for a minute
            failures.failed("poll", _locked())
            clock.t += 1
        assert [r.getMessage() for r in caplog.records] == ["scheduled job failed; it will run again at its next tick"]
        first = caplog.records[0]
        assert first.exc_info is not None and "SQLite write lock" in first.hint  # type: ignore[attr-defined]
        clock.t += 300
        failures.failed("poll", _locked())
        summary = caplog.records[-1]
        assert summary.getMessage() == "scheduled job still failing the same way"
        assert summary.failures == 61 and summary.exc_info is None  # type: ignore[attr-defined]
        failures.succeeded("poll")
        assert caplog.records[-1].getMessage() == "scheduled job recovered"
        assert caplog.records[-1].failures == 61  # type: ignore[attr-defined]


def test_a_different_failure_is_logged_in_full_again(caplog: pytest.LogCaptureFixture) -> None:
    failures = JobFailures(logging.getLogger("t"), now=_Clock())
    with caplog.at_level(logging.ERROR, logger="t"):
        failures.failed("poll", _locked())
        failures.failed("poll", OperationalError("INSERT ...", {}, Exception("disk I/O error")))
    assert len(caplog.records) == 2
    assert "disk space" in caplog.records[1].hint  # type: ignore[attr-defined]


def test_the_database_is_failing_until_every_job_that_failed_on_it_succeeds() -> None:
    failures = JobFailures(logging.getLogger("t"), now=_Clock())
    assert not failures.database_failing
    failures.failed("poll", _locked())
    failures.failed("deliver", _locked())
    failures.failed("config", ValueError("not a database error"))
    assert failures.database_failing
    failures.succeeded("poll")
    assert failures.database_failing
    failures.succeeded("deliver")
    assert not failures.database_failing
