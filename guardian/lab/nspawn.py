# A real systemd as PID 1 for testing the units: a debootstrapped Debian 12 booted with
# systemd-nspawn (recipe and host quirks in shared spec platform.md, "A real systemd as PID 1").
# The root filesystem is built once and cached as a tarball under /var/cache/guardian-lab/ (rebuilt
# when missing); each boot unpacks a private copy, so a test never sees an earlier test's state.
# The host has no D-Bus/machined, so the container is booted with --register=no --keep-unit and
# entered with nsenter on its systemd's PID; it always has --private-network (its own netns: the
# guardian's table and port 22 live there, never in the host's namespace). The checkout and the
# host venv's site-packages are bind-mounted read-only, so the guardian that runs inside is the
# one under test, with the same third-party versions as the host venv.
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path("/var/cache/guardian-lab")
# Bump the version when PACKAGES or the build steps change: an old tarball is then not reused.
ROOTFS_TARBALL = CACHE_DIR / "nspawn-bookworm-v1.tar"
SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "openssh-client",
    "iproute2",
    "python3",
    "nftables",
    "python3-nftables",
    "python3-systemd",
    # The daemon's other dependencies come from the host venv (bind-mounted, same versions), but
    # Debian's cryptography is what the venv uses too (system site-packages).
    "python3-cryptography",
    # debootstrap does not resolve virtual packages: cryptography's cffi-backend-api-* are
    # provided by this one.
    "python3-cffi-backend",
)
REPO = Path(__file__).resolve().parents[2]
# Where the container sees the checkout and the host venv's third-party packages.
REPO_IN_CONTAINER = "/opt/ssh-guardian"
SITE_IN_CONTAINER = "/opt/guardian-site-packages"
GUARDIAN_BIN = "/usr/local/bin/guardian"
BUILD_TIMEOUT = 900.0
BOOT_TIMEOUT = 30.0
POWEROFF_TIMEOUT = 20.0


class NspawnError(Exception):
    """The container could not be built, booted or entered; str(exc) says what stopped it."""


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt already uses (one-line or deb822 sources), for debootstrap."""
    override = os.environ.get("GUARDIAN_DEBIAN_MIRROR")
    if override:
        return override
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        found = mirror_in_sources(text)
        if found is not None:
            return found
    raise NspawnError(f"no Debian {SUITE} mirror found in {apt_dir}/sources.list(.d)")


def mirror_in_sources(text: str) -> str | None:
    """The first URI serving Debian's main suite (not -security, not a third party) in an apt
    sources file, one-line or deb822."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3 and words[0] == "deb":
            if words[1].startswith("["):  # deb [options] uri suite ...
                words = [word for word in words if not word.startswith("[") and "=" not in word]
            if len(words) < 3:
                continue
            uri, suite = words[1], words[2]
            if suite == SUITE and uri.rstrip("/").endswith("/debian"):
                return uri
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, list[str]] = {}
        for line in stanza.splitlines():
            key, colon, value = line.partition(":")
            if colon and not key.lstrip().startswith("#"):
                fields[key.strip().lower()] = value.split()
        if "deb" in fields.get("types", []) and SUITE in fields.get("suites", []):
            for uri in fields.get("uris", []):
                if uri.rstrip("/").endswith("/debian"):
                    return uri
    return None


def require_tools() -> None:
    missing = [
        tool
        for tool in ("debootstrap", "systemd-nspawn", "nsenter", "tar")
        if not shutil.which(tool)
    ]
    if missing:
        raise NspawnError(
            f"missing {', '.join(missing)}: apt-get install systemd-container debootstrap "
            "(scripts/setup.sh installs them)"
        )


def ensure_rootfs(tarball: Path = ROOTFS_TARBALL) -> tuple[Path, float]:
    """The cached root filesystem tarball, built first if missing. Returns it and the seconds
    spent building (0 when the cache was used)."""
    require_tools()
    if tarball.is_file():
        return tarball, 0.0
    tarball.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="guardian-rootfs-", dir="/var/tmp") as work:
        root = Path(work) / "root"
        argv = [
            "debootstrap",
            "--variant=minbase",
            "--include=" + ",".join(PACKAGES),
            SUITE,
            str(root),
            debian_mirror(),
        ]
        done = _run(argv, BUILD_TIMEOUT)
        if done.returncode != 0:
            raise NspawnError(f"debootstrap failed (exit {done.returncode}): {_tail(done.stdout)}")
        _prepare_rootfs(root)
        partial = tarball.with_name(f"{tarball.name}.{os.getpid()}.partial")  # concurrent builds
        done = _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], 300.0)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise NspawnError(f"tar failed: {_tail(done.stdout)}")
        partial.replace(tarball)  # never a half-written cache
    return tarball, time.monotonic() - started


def _prepare_rootfs(root: Path) -> None:
    # The container's own ssh.service would hold port 22 at boot: the socket units under test
    # must be what listens there.
    for link in (root / "etc/systemd/system").glob("*.wants/ssh.service"):
        link.unlink()
    (root / "etc/systemd/system/sshd.service").unlink(missing_ok=True)
    # The guardian under test: the read-only checkout first, then the host venv's packages
    # (psutil, pyroute2, rich, inotify-simple at the versions the host tests use).
    dist = root / "usr/local/lib/python3.11/dist-packages"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "ssh-guardian.pth").write_text(f"{REPO_IN_CONTAINER}\n{SITE_IN_CONTAINER}\n")
    wrapper = root / GUARDIAN_BIN.lstrip("/")
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text('#!/bin/sh\nexec /usr/bin/python3 -m guardian "$@"\n')
    wrapper.chmod(0o755)
    (root / "etc/hostname").write_text("guardian-nspawn\n")


def host_site_packages() -> Path:
    """The host venv's site-packages (where psutil, pyroute2, rich, inotify_simple live)."""
    import inotify_simple  # the one dependency Debian 12 does not package

    return Path(inotify_simple.__file__).resolve().parent


@dataclass(frozen=True)
class Container:
    name: str
    root: Path
    log: Path
    process: subprocess.Popen[bytes]  # systemd-nspawn, leader of its own process group
    leader: int  # the container's systemd, as the host sees it

    def run(
        self, argv: Sequence[str], timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside every namespace of the container; stdout and stderr captured."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise NspawnError(
                f"{' '.join(argv)} exited {done.returncode} in {self.name}: "
                f"{done.stdout.strip()} {done.stderr.strip()}"
            )
        return done

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file into the container's root (from the host: it is a plain directory)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def journal(self, *args: str) -> str:
        return self.run(["journalctl", "--no-pager", *args], check=False).stdout


def _leader_of(nspawn_pid: int) -> int | None:
    """The descendant of systemd-nspawn that is PID 1 in its own PID namespace."""
    pending = [nspawn_pid]
    seen = 0
    while pending and seen < 64:
        pid = pending.pop()
        seen += 1
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and pid != nspawn_pid and line.split()[-1] == "1":
                return pid
        pending.extend(int(child) for child in children)
    return None


def boot(tarball: Path, name: str, workdir: Path) -> tuple[Container, float]:
    """Unpack a private copy of the root filesystem and boot it; wait until systemd says the
    system is running (or degraded). Returns the container and the seconds the boot took."""
    root = workdir / "root"
    root.mkdir(parents=True)
    done = _run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball)], 300.0)
    if done.returncode != 0:
        raise NspawnError(f"cannot unpack {tarball}: {_tail(done.stdout)}")
    log = workdir / "nspawn.log"
    argv = [
        "systemd-nspawn",
        "-q",
        "-D",
        str(root),
        "--boot",
        "--private-network",
        "--register=no",  # no machined/D-Bus on the host
        "--keep-unit",
        "-M",
        name,
        "--console=read-only",
        f"--bind-ro={REPO}:{REPO_IN_CONTAINER}",
        f"--bind-ro={host_site_packages()}:{SITE_IN_CONTAINER}",
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    leader = None
    deadline = started + BOOT_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        leader = _leader_of(process.pid)
        if leader is not None:
            break
        time.sleep(0.05)
    if leader is None:
        _stop_process(process)
        raise NspawnError(f"systemd-nspawn did not start a container: {_tail(_read(log))}")
    container = Container(name, root, log, process, leader)
    state = ""
    while time.monotonic() < deadline and process.poll() is None:
        state = container.run(["systemctl", "is-system-running"], check=False).stdout.strip()
        if state in ("running", "degraded"):
            return container, time.monotonic() - started
        time.sleep(0.1)
    _stop_process(process)
    raise NspawnError(
        f"the container's systemd did not reach running (last state {state!r}): {_tail(_read(log))}"
    )


def poweroff(container: Container) -> None:
    """systemctl poweroff inside; SIGKILL to nspawn's process group if it hangs."""
    with suppress(subprocess.TimeoutExpired):
        container.run(["systemctl", "poweroff"], timeout=10.0, check=False)
    try:
        container.process.wait(timeout=POWEROFF_TIMEOUT)
    except subprocess.TimeoutExpired:
        _stop_process(container.process)


@contextmanager
def booted(name: str, tarball: Path | None = None) -> Iterator[tuple[Container, float]]:
    """Boot a fresh container; always power it off and remove its root afterwards."""
    if tarball is None:
        tarball, _ = ensure_rootfs()
    workdir = Path(tempfile.mkdtemp(prefix=f"guardian-{name}-", dir="/var/tmp"))
    try:
        container, seconds = boot(tarball, name, workdir)
        try:
            yield container, seconds
        finally:
            poweroff(container)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv),
            capture_output=False,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise NspawnError(f"{argv[0]} did not finish in {timeout:.0f}s") from exc


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


if __name__ == "__main__":  # build the cache by hand: python -m guardian.lab.nspawn
    path, spent = ensure_rootfs()
    print(f"{path} ({spent:.0f}s)", file=sys.stderr)
