"""The JSON log line every role writes: its fields, and a timestamp that
stays right when the formatter reuses the seconds it spelled last."""

from __future__ import annotations

import json
import logging
import sys

from postfleet.core.logs import JsonFormatter


def _record(created: float, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("postfleet.test", logging.INFO, __file__, 1, "hello %s", ("x",),
                               None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    record.__dict__.update(extra)
    return record


def test_a_line_carries_time_level_role_logger_message_and_the_extras() -> None:
    line = json.loads(JsonFormatter("qmgr").format(
        _record(1_700_000_000.25, queue_id="4ABC", trace_id="t-1")))
    assert line == {"ts": "2023-11-14T22:13:20.250Z", "level": "info", "role": "qmgr",
                    "logger": "postfleet.test", "msg": "hello x", "queue_id": "4ABC",
                    "trace_id": "t-1"}


def test_the_timestamp_follows_each_record_across_seconds() -> None:
    formatter = JsonFormatter("smtpd")
    stamps = [json.loads(formatter.format(_record(t)))["ts"]
              for t in (1_700_000_000.75, 1_700_000_001.0, 1_700_000_000.5, 1_700_000_059.125)]
    assert stamps == ["2023-11-14T22:13:20.750Z", "2023-11-14T22:13:21.000Z",
                      "2023-11-14T22:13:20.500Z", "2023-11-14T22:14:19.125Z"]


def test_empty_extras_stay_off_the_line_and_an_exception_is_kept() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record(1_700_000_000.0, queue_id="")
        record.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter("cleanup").format(record))
    assert "queue_id" not in line
    assert line["exc"].endswith("ValueError: boom")
