# The /dev/log rule of guardian.lab.journald, on paths in a temporary directory (no root, the host's
# /dev/log untouched): link a missing or dead one to journald, never replace one that works, refuse
# anything that is not a socket or a symlink.
from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardian.lab.journald import ensure_dev_log
from guardian.lab.netns import LabError


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Path]:
    """A datagram socket that a live process (this one) serves, like journald's dev-log."""
    path = tmp_path / "dev-log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield path


def test_missing_dev_log_becomes_a_link_to_journald(tmp_path: Path, served: Path) -> None:
    dev_log = tmp_path / "log"
    assert ensure_dev_log(dev_log, served) is True
    assert dev_log.is_symlink() and dev_log.readlink() == served
    assert ensure_dev_log(dev_log, served) is False  # works now: left as it is


def test_dangling_link_is_replaced(tmp_path: Path, served: Path) -> None:
    dev_log = tmp_path / "log"
    dev_log.symlink_to(tmp_path / "gone")
    assert ensure_dev_log(dev_log, served) is True
    assert dev_log.readlink() == served
    assert not list(tmp_path.glob(".log.guardian-*")), "the temporary link was left behind"


def test_socket_nobody_serves_is_replaced(tmp_path: Path, served: Path) -> None:
    dev_log = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(dev_log))
    assert ensure_dev_log(dev_log, served) is True
    assert dev_log.readlink() == served


def test_working_dev_log_of_someone_else_is_left_alone(tmp_path: Path, served: Path) -> None:
    dev_log = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
        other.bind(str(dev_log))  # e.g. rsyslog's imuxsock
        assert ensure_dev_log(dev_log, served) is False
        assert not dev_log.is_symlink()


def test_regular_file_is_refused(tmp_path: Path, served: Path) -> None:
    dev_log = tmp_path / "log"
    dev_log.write_text("not a socket")
    with pytest.raises(LabError, match="neither a socket nor a symlink"):
        ensure_dev_log(dev_log, served)
    assert dev_log.read_text() == "not a socket"
