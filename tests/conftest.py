# Shared pytest fixtures. The lab fixtures build real network namespaces with a real sshd on
# "server" (guardian.lab), need root, and always tear down; on a failing test the lab's logs and
# configs are copied to artifacts/ before the lab is removed. Any test that uses a lab fixture is
# marked `lab`, so `pytest -m "not lab"` runs the pure tests without root.
from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardian.lab import Lab, SshdHandle, cleanup_stale, start_sshd

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("GUARDIAN_ARTIFACTS", str(REPO / "artifacts")))
LAB_FIXTURES = {"lab", "lab_module", "sshd", "root"}
# Private keys stay out of the artifacts; everything else in a lab's work dir is logs and configs.
_SECRETS = shutil.ignore_patterns("*_key", "client_ed25519", "owner", "*.key", "*.hmac", "*.pass")


def _not_artifacts(directory: str, names: list[str]) -> set[str]:
    """Keys stay out of artifacts; so do sockets and fifos (a control socket cannot be copied)."""
    skipped = set(_SECRETS(directory, names))
    for name in names:
        with contextlib.suppress(OSError):
            if not stat.S_ISREG(os.lstat(os.path.join(directory, name)).st_mode) and not (
                os.path.isdir(os.path.join(directory, name))
            ):
                skipped.add(name)
    return skipped


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lab: acceptance test in network namespaces (needs root, real sshd/nft/knock/nmap)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


def require_root() -> None:
    """Lab tests fail (never skip) without root: a skipped acceptance test proves nothing."""
    if os.geteuid() != 0:
        pytest.fail(
            "lab tests need root (network namespaces, nftables, raw sockets): "
            "run `sudo bash scripts/test.sh`, or `pytest -m 'not lab'` for the pure tests only",
            pytrace=False,
        )


def save_artifacts(lab: Lab, label: str) -> Path | None:
    """Copy the lab's logs and configs to artifacts/<label>/<lab name>/ (best effort)."""
    if not lab.workdir.is_dir():
        return None
    dest = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") / lab.name
    shutil.copytree(lab.workdir, dest, ignore=_not_artifacts, dirs_exist_ok=True)
    return dest


def _lab_with_sshd(request: pytest.FixtureRequest, label: str) -> Iterator[Lab]:
    require_root()
    cleanup_stale()
    failed_before = request.session.testsfailed
    lab = Lab()
    ok = False
    try:
        lab.start()
        start_sshd(lab)
        yield lab
        ok = request.session.testsfailed == failed_before
    finally:
        if not ok:
            saved = save_artifacts(lab, label)
            if saved is not None:
                print(f"lab artifacts kept in {saved}")
        lab.close()


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A fresh lab per test: server (sshd on :22, lab.sshd), client, client2, attacker."""
    yield from _lab_with_sshd(request, request.node.nodeid)


@pytest.fixture(scope="module")
def lab_module(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """One lab shared by a module's tests (cheaper; tests must undo what they change)."""
    yield from _lab_with_sshd(request, request.node.nodeid)


@pytest.fixture
def root() -> None:
    """For lab tests that build their own Lab: fail without root."""
    require_root()


@pytest.fixture
def sshd(lab: Lab) -> SshdHandle:
    """The lab's sshd on "server" (client key, config, log)."""
    assert lab.sshd is not None
    return lab.sshd
