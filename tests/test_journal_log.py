# Structured journal logging (guardian/journal_log.py): the fields of each notice, the stable
# MESSAGE_IDs, the handler choice (journal, stderr, both), and in the lab the daemon's records
# read back from a real journald with `journalctl -o json GUARDIAN_EVENT=grant_opened`.
from __future__ import annotations

import io
import ipaddress
import json
import logging
import re
import subprocess
import time
from typing import Any

from guardian.actions import Notice
from guardian.control_client import request
from guardian.journal_log import (
    MESSAGE_IDS,
    JournalHandler,
    build_handlers,
    notice_extra,
    notice_fields,
    stderr_is_journal,
)
from guardian.lab import Lab
from guardian.lab.guardian_proc import start_guardian
from guardian.lab.journald import ensure_journald


def test_notice_fields() -> None:
    notice = Notice("ban", ipaddress.ip_address("203.0.113.7"), "", "5 failures in 10m")
    fields = notice_fields(notice)
    assert fields == {
        "GUARDIAN_EVENT": "ban",
        "SOURCE_ADDRESS": "203.0.113.7",
        "REASON": "5 failures in 10m",
        "MESSAGE_ID": MESSAGE_IDS["ban"],
        "PRIORITY": "5",
    }
    assert notice_fields(Notice("grant_opened", None, "ssh"))["DOOR"] == "ssh"


def test_message_ids_are_unique_128_bit_hex() -> None:
    assert len(set(MESSAGE_IDS.values())) == len(MESSAGE_IDS)
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in MESSAGE_IDS.values())
    for kind in ("grant_opened", "grant_closed", "ban", "unban", "knock_failed", "spa_refused"):
        assert kind in MESSAGE_IDS


def test_handler_sends_message_and_fields() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    logger = logging.getLogger("guardian-test-journal")
    logger.handlers[:] = [JournalHandler(lambda m, **f: sent.append((m, f)))]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    notice = Notice("grant_opened", ipaddress.ip_address("192.0.2.1"), "ssh")
    logger.warning("grant_opened source=192.0.2.1", extra=notice_extra(notice))
    logger.info("plain")
    (message, fields), (plain, plain_fields) = sent
    assert message == "grant_opened source=192.0.2.1"
    assert fields["GUARDIAN_EVENT"] == "grant_opened" and fields["DOOR"] == "ssh"
    assert fields["PRIORITY"] == "5"  # the kind's priority wins over the level's
    assert fields["SYSLOG_IDENTIFIER"] == "guardian"
    assert plain == "plain" and plain_fields["PRIORITY"] == "6"
    assert "GUARDIAN_EVENT" not in plain_fields


def test_handler_choice() -> None:
    def sender(message: str, **fields: str) -> None:
        pass

    stream = io.StringIO()
    kinds = [type(h).__name__ for h in build_handlers(sender, False, stream)]
    assert kinds == ["JournalHandler", "StreamHandler"]
    assert [type(h).__name__ for h in build_handlers(sender, True, stream)] == ["JournalHandler"]
    assert [type(h).__name__ for h in build_handlers(None, True, stream)] == ["StreamHandler"]


def test_stderr_is_journal_compares_device_and_inode(tmp_path: Any) -> None:
    with open(tmp_path / "f", "w") as handle:
        import os

        st = os.fstat(handle.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, handle)
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, handle)
        assert not stderr_is_journal({}, handle)


CONFIG = """\
[guard]
ports = [22]

[[door]]
name = "ssh"
sequence = ["7000/tcp", "8000/tcp", "9000/udp"]
"""


def journal_json(*matches: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["journalctl", "--no-pager", "-o", "json", *matches],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_lab_events_are_read_back_from_journald(lab: Lab) -> None:
    ensure_journald()
    guardian = start_guardian(lab, CONFIG)
    request(str(guardian.socket_path), {"cmd": "grant", "source": "10.7.7.7", "duration": "60s"})
    request(str(guardian.socket_path), {"cmd": "ban", "source": "10.6.6.6", "duration": "1h"})
    deadline = time.monotonic() + 10.0
    grants: list[dict[str, Any]] = []
    bans: list[dict[str, Any]] = []
    marker = f"_PID={guardian.pid}"  # journald is the machine's: only this daemon's records
    while time.monotonic() < deadline and not (grants and bans):
        grants = journal_json("GUARDIAN_EVENT=grant_opened", marker)
        bans = journal_json("GUARDIAN_EVENT=ban", marker)
        time.sleep(0.2)
    assert grants, guardian.log_text()
    assert grants[0]["SOURCE_ADDRESS"] == "10.7.7.7"
    assert grants[0]["MESSAGE_ID"] == MESSAGE_IDS["grant_opened"]
    assert grants[0]["SYSLOG_IDENTIFIER"] == "guardian"
    assert bans and bans[0]["SOURCE_ADDRESS"].startswith("10.6.6.6")
    assert bans[0]["PRIORITY"] == "5"
    # stderr (not the journal here) still has the plain line.
    assert "grant_opened source=10.7.7.7" in guardian.log_text()
    assert guardian.stop() == 0
