# Peer credentials on the control socket, with a REAL unprivileged user: the client runs as
# `gs11user` (a system user this test creates if missing, and leaves) through `setpriv`, in its own
# process; the server's loop runs here. Shown: a stranger is refused by the socket file's mode, and
# again by SO_PEERCRED when the mode would let it in; a member of the read group (supplementary or
# primary) may read but not write. Needs root (to create the user and to switch to it).
from __future__ import annotations

import grp
import json
import os
import pwd
import selectors
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guardian.control import ControlServer
from tests.test_control_support import FakeHandler, pump

USER = "gs11user"
GROUP = "gs11-readers"
REPO = Path(__file__).resolve().parents[1]

# Runs as the unprivileged user: one request per argv item, one JSON result line per request.
CLIENT = """
import json, sys
from guardian.control_client import ControlClientError, request
for raw in sys.argv[2:]:
    try:
        reply = request(sys.argv[1], json.loads(raw), timeout=5.0)
        print(json.dumps({"ok": True, "keys": sorted(reply)}))
    except ControlClientError as exc:
        print(json.dumps({"ok": False, "type": type(exc).__name__, "error": str(exc)}))
"""


def _ensure_user_and_group() -> tuple[int, int, int]:
    """(uid, own gid, read group gid); idempotent, so reruns and other tests can share them."""
    if os.geteuid() != 0:
        pytest.fail("peer-credential tests need root (they create and switch to a real user)")
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=False)
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=False,
        )
    user = pwd.getpwnam(USER)  # raises if neither existed nor could be created: the test fails
    return user.pw_uid, user.pw_gid, grp.getgrnam(GROUP).gr_gid


@pytest.fixture(scope="module")
def ids() -> tuple[int, int, int]:
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to run the client as another user")
    return _ensure_user_and_group()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are 0700, and the user must reach the socket to be
    # refused by the socket itself rather than by a directory on the way.
    path = Path(tempfile.mkdtemp(prefix="gs11-ctl-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_as(
    selector: selectors.BaseSelector,
    setpriv_ids: list[str],
    sock: Path,
    *requests: dict[str, Any],
) -> list[dict[str, Any]]:
    """Run the client as the user while this thread drives the server loop; its result lines."""
    argv = [
        "setpriv",
        *setpriv_ids,
        "--",
        sys.executable,
        "-c",
        CLIENT,
        str(sock),
        *(json.dumps(r) for r in requests),
    ]
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        pump(selector, lambda: proc.poll() is not None, timeout=30.0)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


def serve(
    sock: Path, read_group: str | None = None
) -> tuple[ControlServer, selectors.BaseSelector]:
    server = ControlServer(str(sock), FakeHandler(), read_group=read_group)
    selector = selectors.DefaultSelector()
    server.open()
    server.register(selector)
    return server, selector


def stranger(uid: int, gid: int) -> list[str]:
    return ["--reuid", str(uid), "--regid", str(gid), "--clear-groups"]


def test_the_client_really_runs_as_the_user(ids: tuple[int, int, int]) -> None:
    uid, gid, _ = ids
    out = subprocess.run(
        ["setpriv", *stranger(uid, gid), "--", "id", "-u"], capture_output=True, check=True
    )
    assert int(out.stdout) == uid != 0


def test_a_stranger_is_refused_by_the_socket_mode(
    ids: tuple[int, int, int], sock_dir: Path
) -> None:
    uid, gid, _ = ids
    sock = sock_dir / "control.sock"
    server, selector = serve(sock)
    try:
        [result] = run_as(selector, stranger(uid, gid), sock, {"cmd": "snapshot"})
        assert result == {
            "ok": False,
            "type": "PermissionDenied",
            "error": f"permission denied on {sock}: run as root, or as a member of the "
            "guardian's read group",
        }
        assert server.stats.accepted == 0
    finally:
        server.close()
        selector.close()


def test_a_stranger_is_refused_by_peer_credentials_when_the_mode_lets_it_in(
    ids: tuple[int, int, int], sock_dir: Path
) -> None:
    uid, gid, _ = ids
    sock = sock_dir / "control.sock"
    server, selector = serve(sock, read_group=GROUP)
    try:
        sock.chmod(0o666)  # an operator's mistake, or a bind mount: the second lock must hold
        [result] = run_as(selector, stranger(uid, gid), sock, {"cmd": "snapshot"})
        assert result == {
            "ok": False,
            "type": "PermissionDenied",
            "error": f"permission denied: uid {uid} is not root and not in group '{GROUP}'",
        }
        assert server.stats.refused == 1 and server.stats.accepted == 0
        assert server.client_count == 0
        # The server goes on for the rightful.
        [result] = run_as(
            selector, ["--reuid", "0", "--regid", "0", "--clear-groups"], sock, {"cmd": "grants"}
        )
        assert result == {"ok": True, "keys": ["grants", "ok"]}
    finally:
        server.close()
        selector.close()


@pytest.mark.parametrize("how", ["supplementary", "primary"])
def test_a_read_group_member_may_read_but_not_write(
    ids: tuple[int, int, int], sock_dir: Path, how: str
) -> None:
    uid, gid, readers = ids
    sock = sock_dir / "control.sock"
    server, selector = serve(sock, read_group=GROUP)
    try:
        st = os.stat(sock)
        assert (st.st_mode & 0o777, st.st_gid) == (0o660, readers)
        if how == "supplementary":
            setpriv_ids = ["--reuid", str(uid), "--regid", str(gid), "--groups", str(readers)]
        else:
            setpriv_ids = stranger(uid, readers)
        results = run_as(
            selector,
            setpriv_ids,
            sock,
            {"cmd": "snapshot"},
            {"cmd": "bans"},
            {"cmd": "grant", "source": "192.0.2.1", "duration": 30},
            {"cmd": "reload"},
        )
        assert results[0] == {"ok": True, "keys": ["ok", "snapshot"]}
        assert results[1] == {"ok": True, "keys": ["bans", "ok"]}
        for result in results[2:]:
            assert result["type"] == "PermissionDenied"
            assert "needs root (read-only access)" in result["error"]
        assert server.stats.refused == 0 and server.stats.accepted == 4
    finally:
        server.close()
        selector.close()


def test_without_the_group_the_group_socket_refuses_at_connect(
    ids: tuple[int, int, int], sock_dir: Path
) -> None:
    uid, gid, _ = ids
    sock = sock_dir / "control.sock"
    server, selector = serve(sock, read_group=GROUP)
    try:
        [result] = run_as(selector, stranger(uid, gid), sock, {"cmd": "snapshot"})
        assert result["type"] == "PermissionDenied" and "permission denied on" in result["error"]
    finally:
        server.close()
        selector.close()


def test_root_has_full_access(sock_dir: Path, ids: tuple[int, int, int]) -> None:
    sock = sock_dir / "control.sock"
    server, selector = serve(sock, read_group=GROUP)
    try:
        results = run_as(
            selector,
            ["--reuid", "0", "--regid", "0", "--clear-groups"],
            sock,
            {"cmd": "grant", "source": "192.0.2.1", "duration": 30},
        )
        assert results == [{"ok": True, "keys": ["duration", "ok", "source"]}]
    finally:
        server.close()
        selector.close()
