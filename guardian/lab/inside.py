# Running this thread inside another network namespace for a block: for tests that drive a
# libnftables context or a netlink socket bound to a private namespace from the test process
# itself (the kernel binds such sockets to the namespace current when they are made). And
# scratch namespaces that are always deleted, with a check that the root namespace's ruleset
# came through unchanged.
#
# setns(2) switches only the calling thread; the block runs in the namespace and so do the
# subprocesses it starts (they inherit the thread's namespace). The thread always returns home,
# on errors too.
from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the block (and the subprocesses it starts) in network namespace `name`."""
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def _run(argv: Sequence[str], *, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


@contextlib.contextmanager
def scratch_namespaces(prefix: str) -> Iterator[Callable[[str], str]]:
    """Yield make(tag) -> the name of a new namespace <prefix>-<pid>-<tag> with loopback up.
    Every one made is deleted on the way out, on failure too; then the root namespace's
    ruleset must be what it was (a test that leaked a table there fails)."""
    created: list[str] = []
    root_before = _run(["nft", "list", "ruleset"])

    def make(tag: str) -> str:
        name = f"{prefix}-{os.getpid()}-{tag}"
        _run(["ip", "netns", "add", name])
        created.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    try:
        yield make
    finally:
        for name in reversed(created):
            _run(["ip", "netns", "del", name], check=False)
    assert _run(["nft", "list", "ruleset"]) == root_before, "the root namespace's ruleset changed"
