# The daemon: the only event-loop code in ssh-guardian. One process, one thread, one selector.
# Every watcher owns a file descriptor; the loop sleeps until one is readable or the engine's single
# next deadline arrives, feeds the events in, and applies the actions that come out in one nftables
# transaction per wake-up. Signals arrive through a wakeup fd, so they are events like any other.
#
# Start-up order matters for "invalid config never half-applies" and for "nothing opens that
# shouldn't": the config is loaded and validated before this module is reached; the table is
# installed in one transaction; grants already in the kernel are adopted (not re-added); only then
# are the watchers opened and "guardian: ready" printed.
from __future__ import annotations

import errno
import logging
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from guardian.actions import Action, Notice
from guardian.config import Config, knock_ports
from guardian.configfile import ConfigError, load_config
from guardian.effectors.nft import NftEffector, NftError
from guardian.effectors.nft_rules import commands_for
from guardian.engine import Engine
from guardian.events import Event, GrantFound
from guardian.notices import RateLimiter, format_notice
from guardian.watchers import WatcherError
from guardian.watchers.knock import KnockWatcher

log = logging.getLogger("guardian")

READY_LINE = "guardian: ready"


@dataclass
class DaemonStats:
    """Counters of the loop itself (the engine keeps its own)."""

    wakeups: int = 0
    batches_applied: int = 0
    nft_errors: int = 0
    reloads: int = 0
    reload_failures: int = 0
    watcher_errors: dict[str, int] = field(default_factory=dict)


def _knock_watcher_for(config: Config) -> KnockWatcher | None:
    tcp, udp = knock_ports(config)
    if not tcp and not udp:
        return None
    watcher = KnockWatcher(tuple(sorted(tcp)), tuple(sorted(udp)), config.guard.interfaces)
    watcher.open()
    return watcher


class Daemon:
    """Wires config, engine, watchers and effectors together and runs the loop until stopped."""

    def __init__(
        self,
        config: Config,
        *,
        nft: NftEffector | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.nft = nft if nft is not None else NftEffector()
        self.clock = clock
        self.engine = Engine(config)
        self.stats = DaemonStats()
        self.limiter = RateLimiter()
        self._selector = selectors.DefaultSelector()
        self._knock: KnockWatcher | None = None
        self._stopping = False
        self._signals: list[int] = []
        self._pending: list[Event] = []
        self._wake_r, self._wake_w = socket.socketpair()

    # ---- start-up -----------------------------------------------------------------------------
    def start(self) -> None:
        """Install the table, adopt existing grants, open the watchers. Raises on failure."""
        self.nft.install(self.config)
        now = self.clock()
        adopted = self.nft.list_grants()
        actions: list[Action] = []
        for source, expires_in in adopted:
            actions += self.engine.feed(GrantFound(source, expires_in), now)
        self._apply(actions, now)
        if adopted:
            log.info("adopted %d grant(s) already in the kernel", len(adopted))
        self._knock = _knock_watcher_for(self.config)
        if self._knock is not None:
            self._selector.register(self._knock, selectors.EVENT_READ, self._on_knock_readable)
        self._install_signal_handlers()

    def _install_signal_handlers(self) -> None:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wakeup_readable)

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Runs between bytecodes of the main thread: only record it; the loop acts on it.
        self._signals.append(signum)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        self.start()
        log.info(
            "guarding tcp ports %s; %d door(s); answer=%s",
            ",".join(map(str, self.config.guard.ports)),
            len(self.config.doors),
            self.config.guard.answer,
        )
        print(READY_LINE, file=sys.stderr, flush=True)
        try:
            while not self._stopping:
                self.step()
        finally:
            self.close()
        log.info("stopped; the table stays, grants expire by their kernel timeouts")
        return 0

    def step(self) -> None:
        """One wake-up: wait for an fd or the deadline, then feed and apply."""
        deadline = self.engine.get_timer()
        now = self.clock()
        timeout = None if deadline is None else max(0.0, deadline - now)
        ready = self._selector.select(timeout)
        self.stats.wakeups += 1
        now = self.clock()
        for key, mask in ready:
            # Every registered fd carries its own callback; callbacks only queue events.
            key.data(mask)
        pending, self._pending = self._pending, []
        actions = self._feed_all(pending, now)
        deadline = self.engine.get_timer()
        if deadline is not None and deadline <= now:
            actions += self.engine.handle_timer(now)
        self._apply(actions, now)
        self._handle_signals()

    @property
    def selector(self) -> selectors.BaseSelector:
        """The loop's selector: other fd owners (the control socket) register callbacks here."""
        return self._selector

    def queue(self, events: Sequence[Event]) -> None:
        """Hand events to the engine at this wake-up (callbacks call this; nothing blocks)."""
        self._pending.extend(events)

    def _on_knock_readable(self, _mask: int) -> None:
        if self._knock is None:
            return
        try:
            self.queue(self._knock.read_events())
        except WatcherError as exc:
            self._count_watcher_error("knock", exc)

    def _on_wakeup_readable(self, _mask: int) -> None:
        self._drain_wakeup()

    def _feed_all(self, events: Sequence[Event], now: float) -> list[Action]:
        actions: list[Action] = []
        for event in events:
            actions += self.engine.feed(event, now)
        return actions

    def _apply(self, actions: list[Action], now: float) -> None:
        """Execute one engine step's actions: the firewall in one transaction, then the notices."""
        commands = commands_for(actions)
        if commands:
            try:
                self.nft.apply(commands)
                self.stats.batches_applied += 1
            except NftError as exc:
                # The batch was refused whole; the kernel stays as it was. Grants the engine thinks
                # are open will lapse by timeout or be retried on the next refresh.
                self.stats.nft_errors += 1
                log.error("nftables refused a batch of %d command(s): %s", len(commands), exc)
        for action in actions:
            if isinstance(action, Notice):
                self._log_notice(action, now)

    def _log_notice(self, notice: Notice, now: float) -> None:
        admitted, suppressed = self.limiter.admit(notice.kind, now)
        if not admitted:
            return
        line = format_notice(notice)
        if suppressed:
            line += f" [{suppressed} more {notice.kind} suppressed]"
        log.info("%s", line)

    def _count_watcher_error(self, name: str, exc: Exception) -> None:
        count = self.stats.watcher_errors.get(name, 0) + 1
        self.stats.watcher_errors[name] = count
        if count <= 10 or count % 1000 == 0:
            log.warning("watcher %s: %s (error #%d)", name, exc, count)

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                self.reload()
            else:
                log.info("received %s, stopping", signal.Signals(signum).name)
                self._stopping = True

    # ---- reload -------------------------------------------------------------------------------
    def reload(self) -> bool:
        """SIGHUP: load the file again; apply it whole or not at all."""
        path = self.config.path
        try:
            new = load_config(path)
        except ConfigError as exc:
            self.stats.reload_failures += 1
            log.error("reload refused, keeping the running config: %s", exc)
            return False
        try:
            new_knock = _knock_watcher_for(new)
        except WatcherError as exc:
            self.stats.reload_failures += 1
            log.error("reload refused, keeping the running config: knock listener: %s", exc)
            return False
        try:
            self.nft.install(new)
        except NftError as exc:
            if new_knock is not None:
                new_knock.close()
            self.stats.reload_failures += 1
            log.error("reload refused, keeping the running config: nftables: %s", exc)
            return False
        # The kernel accepted the new table: only now does the rest of the daemon switch over.
        if self._knock is not None:
            self._selector.unregister(self._knock)
            self._knock.close()
        self._knock = new_knock
        if new_knock is not None:
            self._selector.register(new_knock, selectors.EVENT_READ, self._on_knock_readable)
        now = self.clock()
        self._apply(self.engine.reconfigure(new, now), now)
        self.config = new
        self.stats.reloads += 1
        log.info("reloaded %s", path)
        return True

    def close(self) -> None:
        if self._knock is not None:
            self._knock.close()
            self._knock = None
        signal.set_wakeup_fd(-1)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


def configure_logging(verbose: bool = False) -> None:
    """Plain lines on stderr; journald structured logging arrives with the systemd issue."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("guardian: %(levelname)s %(message)s"))
    root = logging.getLogger("guardian")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
