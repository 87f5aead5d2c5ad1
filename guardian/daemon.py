# The daemon: the only event-loop code in ssh-guardian. One process, one thread, one selector.
# Every watcher owns a file descriptor whose selector entry carries a callback that only queues
# events; the loop sleeps until an fd is readable or the earliest deadline (the engine's, the
# socket-table poll, the journal's short activity poll) arrives, feeds the queued events to the
# engine, and applies the actions in one nftables transaction per wake-up. Signals arrive through
# a wakeup fd, so they are events like any other.
#
# Start-up order matters for "invalid config never half-applies" and "nothing opens that
# shouldn't, nothing closes under a live session": the config is validated before this module is
# reached; the table is installed in one transaction; grants already in the kernel are adopted;
# live connections are listed (conntrack, else the socket table) and the journal's recent
# "Accepted" lines vouch for them; only then do the live watchers start and "guardian: ready"
# go out. Every watcher is optional: the engine works with whatever subset is up.
#
# Under systemd (guardian.notify): READY=1 goes out with "guardian: ready", STATUS= carries live
# counts (refreshed at most every NOTIFY_STATUS_INTERVAL, only when something happened), and
# WATCHDOG=1 is a deadline of this loop, so a stalled loop stops feeding the watchdog. With
# [sshd] on_demand the SshdSwitch follows "is any grant open". The socket-table tick also checks
# that the table is still there: an `nft flush ruleset` (the nftables service restarting) takes
# it away, and the daemon re-installs it with every grant and ban for the time they have left.
#
# Everyone doors: an open window found in the kernel at start-up is adopted with the time it has
# left (engine.adopt_everyone), so a restart never extends it; its opening and closing are logged
# at WARNING. [[hook]] commands run through a HookRunner (effectors/hooks.py) like the sshd
# switch's commands: each child's pidfd is a selector entry, its timeout a loop deadline.
from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from guardian import __version__
from guardian.actions import Action, CloseEveryone, Notice, OpenEveryone, OpenGrant, RevokeGrant
from guardian.actions import Ban as BanAction
from guardian.actions import Unban as UnbanAction
from guardian.addresses import parse_address
from guardian.config import (
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_STATE_PATH,
    JOURNAL_MUTE,
    METRICS_INTERVAL,
    NOTIFY_STATUS_INTERVAL,
    POSITION_SAVE_INTERVAL,
    SESSION_HISTORY,
    SOCKETS_FALLBACK_INTERVAL,
    SOCKETS_RECONCILE_INTERVAL,
    Config,
    knock_ports,
)
from guardian.configfile import ConfigError, load_config
from guardian.control import ControlError, ControlServer
from guardian.effectors.hooks import HookRunner, hook_events
from guardian.effectors.nft import NftEffector, NftError
from guardian.effectors.nft_rules import commands_for
from guardian.effectors.sshd import SshdSwitch
from guardian.effectors.state import StateStore
from guardian.engine import Engine, EngineSnapshot
from guardian.events import (
    BanFound,
    BanRequested,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionsListed,
    Event,
    GrantFound,
    GrantRequested,
    OffencesLoaded,
    RevokeRequested,
    SessionOpened,
    SignalsChanged,
    SpaReplaysLoaded,
    UnbanRequested,
)
from guardian.gc_pause import collector_paused
from guardian.journal_log import (
    build_handlers,
    event_extra,
    journal_sender,
    notice_extra,
    stderr_is_journal,
)
from guardian.metrics import render_prometheus, write_textfile
from guardian.notices import RateLimiter, format_notice
from guardian.notify import Notifier
from guardian.snapshot import (
    BanInfo,
    RecentEvents,
    SnapshotError,
    SpaStatus,
    WatcherStatus,
    build_status,
    event_from_notice,
    from_json,
)
from guardian.sshd_probe import read_login_grace_time
from guardian.watchers import WatcherError
from guardian.watchers.authlog import AuthLogWatcher
from guardian.watchers.btmp import BtmpWatcher
from guardian.watchers.conntrack import ConntrackWatcher
from guardian.watchers.journal import JournalWatcher
from guardian.watchers.knock import KnockWatcher
from guardian.watchers.sockets import SocketTableWatcher
from guardian.watchers.sshd_log import SshdLogAdapter

log = logging.getLogger("guardian")

READY_LINE = "guardian: ready"


@dataclass(frozen=True)
class DaemonOptions:
    """How this run is wired (command-line choices, not policy: policy is the config)."""

    control_socket: str | None = DEFAULT_CONTROL_SOCKET  # None: no control socket
    read_group: str | None = None
    use_conntrack: bool = True
    use_journal: bool = True
    state_path: str = DEFAULT_STATE_PATH
    metrics_path: str | None = None  # Prometheus textfile (node_exporter), rewritten atomically
    btmp_path: str = "/var/log/btmp"
    authlog_path: str = "/var/log/auth.log"


@dataclass
class DaemonStats:
    """Counters of the loop itself (the engine keeps its own)."""

    wakeups: int = 0
    batches_applied: int = 0
    nft_errors: int = 0
    reloads: int = 0
    reload_failures: int = 0
    socket_polls: int = 0
    watchdog_pings: int = 0
    table_restores: int = 0
    watcher_errors: dict[str, int] = field(default_factory=dict)


def _knock_watcher_for(config: Config) -> KnockWatcher | None:
    """The capture socket for knocks and SPA datagrams, or None when there is nothing to see."""
    tcp, udp = knock_ports(config)
    spa = (config.spa.port,) if config.spa.enabled else ()
    if not tcp and not udp and not spa:
        return None
    watcher = KnockWatcher(
        tuple(sorted(tcp)), tuple(sorted(udp)), config.guard.interfaces, spa_ports=spa
    )
    watcher.open()
    return watcher


def _spa_status(config: Config, engine: EngineSnapshot) -> SpaStatus | None:
    if not config.spa.enabled:
        return None
    return SpaStatus(
        f"udp/{config.spa.port}",
        tuple(stanza.name for stanza in config.spa.stanzas),
        engine.spa_refusals,
        engine.spa_replays,
    )


def resolve_login_grace(config: Config) -> Config:
    """[access] login_grace_time = "auto" becomes sshd's own LoginGraceTime when sshd says."""
    if config.access.login_grace_time is not None:
        return config
    grace = read_login_grace_time()
    if grace is None:
        return config
    return dataclasses.replace(
        config, access=dataclasses.replace(config.access, login_grace_time=grace)
    )


class Daemon:
    """Wires config, engine, watchers and effectors together and runs the loop until stopped."""

    def __init__(
        self,
        config: Config,
        *,
        options: DaemonOptions | None = None,
        nft: NftEffector | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
    ) -> None:
        self.options = options or DaemonOptions()
        # Read (and taken out of the environment) first, before any child process is started.
        self.notifier = notifier if notifier is not None else Notifier.from_environ()
        self.config = resolve_login_grace(config)
        self.nft = nft if nft is not None else NftEffector()
        self.clock = clock
        self.wall_clock = wall_clock
        self.engine = Engine(self.config)
        self.stats = DaemonStats()
        self.limiter = RateLimiter()
        self.recent = RecentEvents()
        self.started_at = clock()
        self.started_wall = wall_clock()
        self._selector = selectors.DefaultSelector()
        self._knock: KnockWatcher | None = None
        self._conntrack: ConntrackWatcher | None = None
        self._journal: JournalWatcher | None = None
        self._journal_muted_until: float | None = None
        self._sshd_log = SshdLogAdapter(
            self.config.ban.mode, failures="journal" in self.config.ban.sources
        )
        self._sockets = SocketTableWatcher(self.config.guard.ports, SOCKETS_RECONCILE_INTERVAL)
        self._next_socket_poll = 0.0
        self._control: ControlServer | None = None
        self._store: StateStore | None = None
        self._btmp: BtmpWatcher | None = None
        self._authlog: AuthLogWatcher | None = None
        self._next_position_save = 0.0
        self._next_metrics = 0.0
        self._saved_positions: dict[str, str | None] = {}
        self._down: dict[str, str] = {}  # watcher name -> why it is not delivering (a fault)
        self._off: dict[str, str] = {}  # watcher name -> why it was not asked for (no fault)
        self._stopping = False
        self._signals: list[int] = []
        self._pending: list[Event] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._next_ping: float | None = None  # the watchdog's next WATCHDOG=1
        self._next_status = 0.0  # STATUS= waits for this and for _status_dirty
        self._status_dirty = False
        self._grant_count = 0
        self._sshd: SshdSwitch | None = None
        self._sshd_fd: int | None = None  # the pidfd registered in the selector
        self._hooks = HookRunner(self.config.hooks, self.clock)
        self._hook_fds: dict[int, int] = {}  # pidfd -> pid of the hook children in the selector

    # ---- start-up -----------------------------------------------------------------------------
    def start(self) -> None:
        """Install the table, adopt what the kernel already has, open the watchers."""
        self.nft.install(self.config)
        self._store = StateStore(self.options.state_path)
        now, wall = self.clock(), self.wall_clock()
        self.started_wall = wall
        actions = self.engine.feed(OffencesLoaded(self._store.load_offences()), now, wall=wall)
        replays = self._store.load_spa_replays(wall)
        actions += self.engine.feed(SpaReplaysLoaded(replays), now, wall=wall)
        # Adopting bans is one step whatever their number (100k in well under a second); the
        # collector only slows the many small objects down, so it waits.
        with collector_paused():
            found = [BanFound(*listed) for listed in self.nft.list_bans()]
            actions += self.engine.adopt_bans(found, now, wall=wall)
        if found:
            log.info("adopted %d ban(s) already in the kernel", len(found))
        adopted = self.nft.list_grants()
        for source, expires_in in adopted:
            actions += self._feed(GrantFound(source, expires_in), now)
        if adopted:
            log.info("adopted %d grant(s) already in the kernel", len(adopted))
        left = self.nft.everyone_left()
        if left is not None and left > 0:
            actions += self.engine.adopt_everyone(left, now)
        elif left is not None:
            actions.append(CloseEveryone("adopted", "permanent element found: closed"))
        # conntrack needs the table first: its `ct state` rule is what loads connection tracking.
        self._open_conntrack()
        self._open_journal()
        self._open_failure_logs()
        actions += self._feed(self._signals_event(), now)
        listing = self._initial_listing()
        actions += self._feed(listing, now)
        actions += self._feed_all(self._sessions_from_history(listing), now)
        self._apply(actions, now)
        self._set_sshd_switch(self.config)
        self._count_grants(now)
        self._next_socket_poll = now + self._socket_interval()
        self._next_position_save = now + POSITION_SAVE_INTERVAL
        self._knock = _knock_watcher_for(self.config)
        if self._knock is not None:
            self._selector.register(self._knock, selectors.EVENT_READ, self._on_knock_readable)
        self._open_control()
        self._install_signal_handlers()

    def _open_failure_logs(self) -> None:
        """btmp and auth.log, as [ban] sources asks; each is optional (it may not exist)."""
        assert self._store is not None
        sources = self.config.ban.sources
        if "btmp" in sources:
            try:
                btmp = BtmpWatcher(self.options.btmp_path, self._store.get_position("btmp"))
            except (WatcherError, ValueError) as exc:
                self._down["btmp"] = str(exc)
                log.warning("btmp unavailable: %s", exc)
            else:
                self._btmp = btmp
                self._selector.register(btmp, selectors.EVENT_READ, self._on_btmp_readable)
                # What was written while we were down raises no inotify event: read it now
                # (bounded; more_pending carries a large backlog over the next wake-ups).
                self._on_btmp_readable(0)
        else:
            self._off["btmp"] = "not in [ban] sources"
        if "authlog" in sources:
            try:
                authlog = AuthLogWatcher(
                    self.options.authlog_path,
                    self.config.ban.mode,
                    self._store.get_position("authlog"),
                    # The journal carries the same session lines, sooner; auth.log speaks for
                    # sessions only when the journal cannot.
                    sessions=self._journal is None,
                )
            except (WatcherError, ValueError) as exc:
                self._down["authlog"] = str(exc)
                log.warning("auth.log unavailable: %s", exc)
            else:
                self._authlog = authlog
                self._selector.register(authlog, selectors.EVENT_READ, self._on_authlog_readable)
                self._on_authlog_readable(0)  # the backlog written while we were down
        else:
            self._off["authlog"] = "not in [ban] sources"

    def _open_conntrack(self) -> None:
        if not self.options.use_conntrack:
            self._off["conntrack"] = "disabled by option"
            return
        watcher = ConntrackWatcher(self.config.guard.ports)
        try:
            watcher.open()
        except WatcherError as exc:
            self._down["conntrack"] = str(exc)
            log.warning(
                "conntrack events unavailable (%s); falling back to the socket table every %gs",
                exc,
                SOCKETS_FALLBACK_INTERVAL,
            )
            return
        self._conntrack = watcher
        self._selector.register(watcher, selectors.EVENT_READ, self._on_conntrack_readable)

    def _open_journal(self) -> None:
        if not self.options.use_journal:
            self._off["journal"] = "disabled by option"
            return
        assert self._store is not None
        watcher = JournalWatcher(cursor=self._store.get_position("journal"))
        try:
            watcher.open()
        except WatcherError as exc:
            self._down["journal"] = str(exc)
            log.warning("journal unavailable (%s); sessions count from their TCP connection", exc)
            return
        self._journal = watcher
        self._selector.register(watcher, selectors.EVENT_READ, self._on_journal_readable)

    def _signals_event(self) -> SignalsChanged:
        origins = {"sockets"} | ({"conntrack"} if self._conntrack is not None else set())
        return SignalsChanged(frozenset(origins), auth=self._journal is not None)

    def _initial_listing(self) -> ConnectionsListed:
        listing: ConnectionsListed | None = None
        if self._conntrack is not None:
            try:
                listing = self._conntrack.dump()
            except WatcherError as exc:
                log.warning("conntrack dump failed (%s); listing the socket table instead", exc)
        if listing is None:
            listing = self._poll_sockets()
        if listing is None:
            return ConnectionsListed(frozenset(), origin="sockets", initial=True)
        return dataclasses.replace(listing, initial=True)

    def _sessions_from_history(self, listing: ConnectionsListed) -> list[Event]:
        """Past "Accepted" lines for connections that are still live: a restart keeps them."""
        if self._journal is None or not listing.connections:
            return []
        live = {(source, sport) for source, sport, _dport in listing.connections}
        since = self.wall_clock() - SESSION_HISTORY
        try:
            records = self._journal.history(since, max_records=5000)
        except WatcherError as exc:
            log.warning("journal history unavailable: %s", exc)
            return []
        found = [
            event
            for event in SshdLogAdapter().events(records)
            if isinstance(event, SessionOpened) and (event.source, event.sport) in live
        ]
        if found:
            log.info("the journal vouches for %d live session(s)", len(found))
        return list(found)

    def _open_control(self) -> None:
        path = self.options.control_socket
        if path is None:
            return
        server = ControlServer(path, DaemonControl(self), read_group=self.options.read_group)
        server.open()
        server.register(self._selector)
        self._control = server

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
            "guarding tcp ports %s; %d door(s); answer=%s; watchers down: %s; off: %s",
            ",".join(map(str, self.config.guard.ports)),
            len(self.config.doors),
            self.config.guard.answer,
            ", ".join(sorted(self._down)) or "none",
            ", ".join(sorted(self._off)) or "none",
        )
        print(READY_LINE, file=sys.stderr, flush=True)
        self.notifier.ready(self.status_text(self.clock()))
        if self.notifier.watchdog is not None:
            self._next_ping = self.clock() + self.notifier.watchdog
        try:
            while not self._stopping:
                self.step()
        finally:
            self.notifier.stopping()
            self.close()
        log.info("stopped; the table stays, grants expire by their kernel timeouts")
        return 0

    def _next_deadline(self, now: float) -> float | None:
        deadlines = [self.engine.get_timer(), self._next_socket_poll]
        if self.options.metrics_path is not None:
            deadlines.append(self._next_metrics)
        if any(w is not None and w.more_pending for w in (self._btmp, self._authlog)):
            deadlines.append(now)
        if self._saved_positions_stale():
            deadlines.append(self._next_position_save)
        if self._journal is not None:
            deadlines.append(self._journal.next_poll(now))
            deadlines.append(self._journal_muted_until)
        deadlines.append(self._next_ping)
        if self._status_dirty and self.notifier.enabled:
            deadlines.append(self._next_status)
        if self._sshd is not None:
            deadlines.append(self._sshd.next_deadline())
        deadlines.append(self._hooks.next_deadline())
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

    def step(self) -> None:
        """One wake-up: wait for an fd or the deadline, then feed and apply."""
        now = self.clock()
        deadline = self._next_deadline(now)
        timeout = None if deadline is None else max(0.0, deadline - now)
        ready = self._selector.select(timeout)
        self.stats.wakeups += 1
        now = self.clock()
        for key, mask in ready:
            key.data(mask)  # callbacks only queue events
        # What the fds brought (a knock, an SPA packet, a connection) is decided and in the
        # kernel before this wake-up's housekeeping reads: a knock or SPA packet after a quiet
        # spell makes the journal's fast timer due at once, and that read (~0.3 ms) used to come
        # first, between the packet and its grant.
        self._settle(now)
        self._poll_due(now, journal_read=any(k.fileobj is self._journal for k, _ in ready))
        if self._pending:
            self._settle(now)
        self._handle_signals()
        self._tend_systemd(now)

    def _settle(self, now: float) -> None:
        """Feed the queued events and the engine's due timer; apply the actions in one step."""
        pending, self._pending = self._pending, []
        actions = self._feed_all(pending, now)
        engine_deadline = self.engine.get_timer()
        if engine_deadline is not None and engine_deadline <= now:
            actions += self.engine.handle_timer(now, wall=self.wall_clock())
        if self._sshd is not None and any(isinstance(a, OpenGrant) for a in actions):
            # sshd starts before the firewall opens: its start overlaps the nft transaction.
            self._sshd.want(True)
        self._apply(actions, now)
        if any(isinstance(a, OpenGrant | RevokeGrant) for a in actions):
            self._count_grants(now)
        if pending or actions:
            self._status_dirty = True
            if self._control is not None:
                self._control.invalidate()

    # ---- systemd: watchdog, status, sshd on demand, the table's survival ----------------------
    def _tend_systemd(self, now: float) -> None:
        deadline = self._hooks.next_deadline()
        if deadline is not None and deadline <= now:
            self._hooks.on_deadline()
        self._sync_hook_fds()
        if self._sshd is not None:
            deadline = self._sshd.next_deadline()
            if deadline is not None and deadline <= now:
                self._sshd.on_deadline()
            self._sync_sshd_fd()
        if self._next_ping is not None and now >= self._next_ping:
            assert self.notifier.watchdog is not None
            self.notifier.ping()
            self.stats.watchdog_pings += 1
            self._next_ping = now + self.notifier.watchdog
        if self._status_dirty and self.notifier.enabled and now >= self._next_status:
            self._status_dirty = False
            self._next_status = now + NOTIFY_STATUS_INTERVAL
            self.notifier.status(self.status_text(now))

    def status_text(self, now: float) -> str:
        """systemd's STATUS= line: what `systemctl status guardian` shows under the unit."""
        snap = self.engine.snapshot(now)
        sessions = sum(1 for s in snap.sessions if s.authenticated)
        text = f"{len(snap.grants)} grant(s), {sessions} session(s), {len(snap.bans)} ban(s)"
        if snap.everyone is not None:
            left = max(0.0, snap.everyone.until - now)
            text = f"OPEN TO EVERYONE ({snap.everyone.door}, {left:.0f}s left); " + text
        if self._down:
            text += "; down: " + ", ".join(sorted(self._down))
        return text

    def _count_grants(self, now: float) -> None:
        """Grants came or went: the count decides whether sshd is wanted (on demand). Only then:
        the snapshot lists every ban too, which is not free with 100k of them."""
        if self._sshd is None:
            return
        self._grant_count = len(self.engine.snapshot(now).grants)
        self._sshd.want(self._grant_count > 0)
        self._sync_sshd_fd()

    def _set_sshd_switch(self, config: Config) -> None:
        if config.sshd.on_demand and self._sshd is None:
            self._sshd = SshdSwitch(config.sshd, self.clock)
        elif config.sshd.on_demand and self._sshd is not None:
            self._sshd.config = config.sshd
        elif self._sshd is not None:
            # on_demand switched off: sshd is left as it is (the operator runs it now).
            self._sshd.close()
            self._sshd = None
            self._sync_sshd_fd()

    def _sync_sshd_fd(self) -> None:
        """Keep the selector watching the pidfd of the running start/stop command, if any."""
        fd = None if self._sshd is None else self._sshd.pidfd
        if fd == self._sshd_fd:
            return
        if self._sshd_fd is not None:
            # The switch has closed the pidfd already (epoll forgot it then); this clears the map.
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._sshd_fd)
        if fd is not None:
            self._selector.register(fd, selectors.EVENT_READ, self._on_sshd_command_exit)
        self._sshd_fd = fd

    def _sync_hook_fds(self) -> None:
        """Keep the selector watching exactly the pidfds of the running hook children. Keyed by
        (fd, pid): a closed pidfd's number is reused at once by the next child's pidfd."""
        current = self._hooks.pidfds()
        for fd, pid in self._hook_fds.items():
            if current.get(fd) != pid:
                # The runner has closed it already (epoll forgot it then); this clears the map.
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(fd)
        for fd, pid in current.items():
            if self._hook_fds.get(fd) != pid:
                self._selector.register(fd, selectors.EVENT_READ, self._hook_exit_callback(fd))
        self._hook_fds = current

    def _hook_exit_callback(self, fd: int) -> Callable[[int], None]:
        def on_exit(_mask: int) -> None:
            self._hooks.on_exit(fd)

        return on_exit

    def _on_sshd_command_exit(self, _mask: int) -> None:
        if self._sshd is not None:
            self._sshd.on_child_exit()
            self._sync_sshd_fd()

    def _check_table(self, now: float) -> bool:
        """Re-install the table if it is gone (`nft flush ruleset`); True when it was restored."""
        try:
            if self.nft.table_exists():
                return False
        except NftError as exc:
            log.warning("cannot check the table: %s", exc)
            return False
        snap = self.engine.snapshot(now)
        restore: list[Action] = [
            OpenGrant(g.source, max(1.0, g.kernel_expires_at - now), g.door) for g in snap.grants
        ]
        restore += [
            BanAction(v.network, None if v.until is None else max(1.0, v.until - now), v.reason,
                      v.offence)
            for v in snap.bans
            if v.until is None or v.until > now
        ]  # fmt: skip
        if snap.everyone is not None and snap.everyone.until > now:
            restore.append(OpenEveryone(snap.everyone.door, snap.everyone.until - now))
        try:
            self.nft.install(self.config)
            self.nft.apply(self._commands(restore))
        except NftError as exc:
            self.stats.nft_errors += 1
            log.error("the table is gone and re-installing it failed: %s", exc)
            return False
        self.stats.table_restores += 1
        reason = f"{len(snap.grants)} grant(s) and {len(restore) - len(snap.grants)} ban(s)"
        log.warning(
            "table_restored: table inet guardian had disappeared (nft flush ruleset?); "
            "re-installed with %s",
            reason,
            extra=event_extra("table_restored", reason),
        )
        return True

    def _poll_due(self, now: float, journal_read: bool) -> None:
        # A follower that stopped at its per-read cap gets no new inotify event for what is
        # already written: read on until it has caught up (each read is bounded).
        if self._btmp is not None and self._btmp.more_pending:
            self._on_btmp_readable(0)
        if self._authlog is not None and self._authlog.more_pending:
            self._on_authlog_readable(0)
        self._save_positions(now)
        self._write_metrics(now)
        if now >= self._next_socket_poll:
            self._check_table(now)
            listing = self._poll_sockets()
            if listing is not None:
                self.queue([listing])
            self._next_socket_poll = now + self._socket_interval()
        if self._journal_muted_until is not None and now >= self._journal_muted_until:
            self._unmute_journal()
            self._read_journal(now)
        elif self._journal is not None and not journal_read:
            due = self._journal.next_poll(now)
            if due is not None and due <= now:
                self._read_journal(now)

    def _write_metrics(self, now: float) -> None:
        """The Prometheus textfile, every METRICS_INTERVAL when asked for (--metrics-file)."""
        path = self.options.metrics_path
        if path is None or now < self._next_metrics:
            return
        self._next_metrics = now + METRICS_INTERVAL
        try:
            snapshot = from_json(DaemonControl(self).snapshot())
            write_textfile(path, render_prometheus(snapshot))
        except (OSError, SnapshotError) as exc:
            self._count_watcher_error("metrics", exc)

    def _saved_positions_stale(self) -> bool:
        """Is there a position to save? (Only then does saving deserve a wake-up.)"""
        current = {
            "btmp": None if self._btmp is None else self._btmp.position(),
            "authlog": None if self._authlog is None else self._authlog.position(),
            "journal": None if self._journal is None else self._journal.last_cursor,
        }
        return any(v is not None and self._saved_positions.get(k) != v for k, v in current.items())

    def _socket_interval(self) -> float:
        # The socket table is a slow reconciliation while conntrack delivers, and the whole
        # signal (polled faster) when it does not or when it cannot see some connections' ends.
        if self._conntrack is None or self._conntrack.unobservable:
            return SOCKETS_FALLBACK_INTERVAL
        return SOCKETS_RECONCILE_INTERVAL

    def _poll_sockets(self) -> ConnectionsListed | None:
        """A listing, or None when /proc could not be read (a failed read must never look like
        "no connections": that would close live sessions' access)."""
        self.stats.socket_polls += 1
        try:
            return self._sockets.poll()
        except WatcherError as exc:
            self._count_watcher_error("sockets", exc)
            return None

    @property
    def selector(self) -> selectors.BaseSelector:
        """The loop's selector: other fd owners (the control socket) register callbacks here."""
        return self._selector

    def queue(self, events: Sequence[Event]) -> None:
        """Hand events to the engine at this wake-up (callbacks call this; nothing blocks)."""
        self._pending.extend(events)

    def run_now(self, events: Sequence[Event]) -> list[Action]:
        """Feed events and apply their actions at once, returning them: for operator commands
        whose answer is the outcome (a ban the engine refused must not be reported as done).
        Called from a loop callback, so it runs between two wake-ups like any other step."""
        now = self.clock()
        actions = self._feed_all(events, now)
        self._apply(actions, now)
        self._status_dirty = True
        if self._control is not None:
            self._control.invalidate()
        return actions

    def _on_knock_readable(self, _mask: int) -> None:
        if self._knock is None:
            return
        try:
            events = self._knock.read_events()
        except WatcherError as exc:
            self._count_watcher_error("knock", exc)
            return
        self.queue(events)
        if events:
            self._journal_activity()

    def _on_conntrack_readable(self, _mask: int) -> None:
        if self._conntrack is None:
            return
        try:
            events = self._conntrack.read_events()
        except WatcherError as exc:
            self._count_watcher_error("conntrack", exc)
            return
        self.queue(events)
        if any(isinstance(e, ConnectionOpened | ConnectionClosed) for e in events):
            # A connection came or went: sshd's Accepted/Disconnected line follows shortly.
            self._journal_activity()

    def _journal_activity(self) -> None:
        """Something sshd will log about is happening: read the journal fast for a while."""
        if self._journal is None:
            return
        self._unmute_journal()
        self._journal.note_activity(self.clock())

    def _on_journal_readable(self, _mask: int) -> None:
        now = self.clock()
        if not self._read_journal(now) and self._journal is not None:
            # The journal's fd wakes on every write by anyone; a wake-up with no sshd line in it
            # mutes the fd for a moment, so a chatty journal cannot keep an idle daemon busy.
            # Connection activity unmutes it at once, and the timer reads it when the mute ends.
            self._selector.unregister(self._journal)
            self._journal_muted_until = now + JOURNAL_MUTE

    def _unmute_journal(self) -> None:
        if self._journal is not None and self._journal_muted_until is not None:
            self._selector.register(self._journal, selectors.EVENT_READ, self._on_journal_readable)
        self._journal_muted_until = None

    def _read_journal(self, now: float) -> bool:
        """Read what the journal has; True when it held sshd lines."""
        if self._journal is None:
            return False
        try:
            records = self._journal.read_records(now=now)
        except WatcherError as exc:
            self._count_watcher_error("journal", exc)
            return False
        # Session lines from before this start are history (start-up asked history() for the
        # live ones); failures are the engine's to judge by their time.
        self.queue(self._sshd_log.events(records, sessions_since=self.started_wall - 5.0))
        return bool(records)

    def _on_btmp_readable(self, _mask: int) -> None:
        if self._btmp is None:
            return
        try:
            self.queue(self._btmp.read_events())
        except WatcherError as exc:
            self._count_watcher_error("btmp", exc)

    def _on_authlog_readable(self, _mask: int) -> None:
        if self._authlog is None:
            return
        try:
            self.queue(self._authlog.read_events())
        except WatcherError as exc:
            self._count_watcher_error("authlog", exc)

    def _save_positions(self, now: float, *, force: bool = False) -> None:
        """Persist where each log was read up to, when it moved (batched, one transaction)."""
        if self._store is None or (not force and now < self._next_position_save):
            return
        self._next_position_save = now + POSITION_SAVE_INTERVAL
        positions: dict[str, str | None] = {}
        if self._btmp is not None:
            positions["btmp"] = self._btmp.position()
        if self._authlog is not None:
            positions["authlog"] = self._authlog.position()
        if self._journal is not None and self._journal.last_cursor is not None:
            positions["journal"] = self._journal.last_cursor
        changed = {k: v for k, v in positions.items() if self._saved_positions.get(k) != v}
        if changed:
            self._store.set_positions(changed)
            self._saved_positions.update(changed)

    def _on_wakeup_readable(self, _mask: int) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise

    def _feed(self, event: Event, now: float) -> list[Action]:
        # The wall clock goes with every step: the ban rules compare sshd's log times to it.
        return self.engine.feed(event, now, wall=self.wall_clock())

    def _feed_all(self, events: Sequence[Event], now: float) -> list[Action]:
        actions: list[Action] = []
        wall = self.wall_clock()
        for event in events:
            actions += self.engine.feed(event, now, wall=wall)
        return actions

    def _apply(self, actions: list[Action], now: float) -> None:
        """Execute one engine step's actions: the firewall in one transaction, then the notices."""
        commands = self._commands(actions)
        if commands:
            try:
                self.nft.apply(commands)
                self.stats.batches_applied += 1
            except NftError as exc:
                # The batch was refused whole; the kernel stays as it was. Grants lapse by their
                # timeouts; the next refresh of a live session retries. If the table itself is
                # gone, re-installing it from the engine's state carries this step's changes too.
                self.stats.nft_errors += 1
                if not self._check_table(now):
                    log.error("nftables refused a batch of %d command(s): %s", len(commands), exc)
        if self._store is not None:
            self._store.apply(actions)  # offence histories; after the kernel had its say
        for action in actions:
            if isinstance(action, Notice):
                self._announce(action, now)
        if self.config.hooks:
            self._hooks.submit(hook_events(actions, self.wall_clock()))
            self._sync_hook_fds()

    def _commands(self, actions: Sequence[Action]) -> list[Any]:
        return commands_for(
            actions, ipv6_prefix=self.config.ban.ipv6_prefix, ports=self.config.guard.ports
        )

    def _announce(self, notice: Notice, now: float) -> None:
        event = event_from_notice(notice, self.wall_clock())
        self.recent.add(event)
        if self._control is not None:
            self._control.publish(event.to_json())
        admitted, suppressed = self.limiter.admit(notice.kind, now)
        if not admitted:
            return
        line = format_notice(notice)
        if suppressed:
            line += f" [{suppressed} more {notice.kind} suppressed]"
        # Opening the guarded ports to every source is worth a louder line than a grant.
        level = logging.WARNING if notice.kind.startswith("everyone_") else logging.INFO
        log.log(level, "%s", line, extra=notice_extra(notice))

    def _count_watcher_error(self, name: str, exc: Exception) -> None:
        count = self.stats.watcher_errors.get(name, 0) + 1
        self.stats.watcher_errors[name] = count
        if count <= 10 or count % 1000 == 0:
            log.warning("watcher %s: %s (error #%d)", name, exc, count)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                self.reload()
            else:
                log.info("received %s, stopping", signal.Signals(signum).name)
                self._stopping = True

    # ---- what the control socket reports ------------------------------------------------------
    def watcher_statuses(self) -> list[WatcherStatus]:
        return [
            self._watcher_status("knock", self._knock is not None),
            self._watcher_status("conntrack", self._conntrack is not None),
            self._watcher_status("journal", self._journal is not None),
            WatcherStatus("sockets", True),
            self._watcher_status("btmp", self._btmp is not None),
            self._watcher_status("authlog", self._authlog is not None),
        ]

    def _watcher_status(self, name: str, up: bool) -> WatcherStatus:
        """Up; or off, when the config or an option did not ask for it (the dashboard must not
        show that as a fault, nor metrics alert on it); or down, with the error that stopped it."""
        if up:
            return WatcherStatus(name, True)
        if name == "knock":  # no watcher only when there is nothing to capture
            return WatcherStatus(name, False, "no doors, no SPA", off=True)
        if name in self._off:
            return WatcherStatus(name, False, self._off[name], off=True)
        return WatcherStatus(name, False, self._down.get(name, ""))

    def loop_counters(self) -> dict[str, int]:
        counters = {
            "wakeups": self.stats.wakeups,
            "nft_batches": self.stats.batches_applied,
            "nft_errors": self.stats.nft_errors,
            "reloads": self.stats.reloads,
            "reload_failures": self.stats.reload_failures,
            "socket_polls": self.stats.socket_polls,
            "watchdog_pings": self.stats.watchdog_pings,
            "table_restores": self.stats.table_restores,
        }
        if self._sshd is not None:
            sshd = self._sshd.stats()
            counters.update(
                {
                    "sshd_starts": sshd.starts,
                    "sshd_stops": sshd.stops,
                    "sshd_failures": sshd.failures,
                }
            )
        if self._knock is not None:
            counters.update({f"knock_{k}": v for k, v in self._knock.stats().items()})
        if self._conntrack is not None:
            # Overruns (ENOBUFS), resynchronising dumps, events drained: lost events show here.
            counters.update({f"conntrack_{k}": v for k, v in self._conntrack.stats().items()})
        if self.config.hooks:
            hooks = self._hooks.stats()
            counters.update(
                {
                    "hooks_started": hooks.started,
                    "hooks_failed": hooks.failed,
                    "hooks_timed_out": hooks.timed_out,
                    "hooks_dropped": hooks.dropped,
                }
            )
        if self._control is not None:
            # Requests against snapshots built: what the snapshot cache saves a crowd of pollers.
            stats = self._control.stats
            counters.update(
                {
                    "control_requests": stats.requests,
                    "control_snapshots_built": stats.snapshots_built,
                    "control_refused": stats.refused,
                    "control_busy": stats.busy,
                    "control_slow_disconnects": stats.slow_disconnects,
                }
            )
        return counters

    # ---- reload -------------------------------------------------------------------------------
    def reload(self) -> bool:
        """SIGHUP: load the file again; apply it whole or not at all."""
        path = self.config.path
        self.notifier.reloading()
        try:
            return self._reload(path)
        finally:
            self.notifier.ready(self.status_text(self.clock()))

    def _reload(self, path: str) -> bool:
        try:
            new = resolve_login_grace(load_config(path))
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
        if new.guard.ports != self.config.guard.ports:
            self._reopen_session_watchers(new)
        now = self.clock()
        self._apply(self.engine.reconfigure(new, now, wall=self.wall_clock()), now)
        self.config = new
        self._hooks.hooks = new.hooks
        self._set_sshd_switch(new)
        self._count_grants(now)
        self.stats.reloads += 1
        log.info("reloaded %s", path)
        return True

    def _reopen_session_watchers(self, new: Config) -> None:
        self._sockets = SocketTableWatcher(new.guard.ports, SOCKETS_RECONCILE_INTERVAL)
        if self._conntrack is not None:
            self._selector.unregister(self._conntrack)
            self._conntrack.close()
            self._conntrack = None
            self._down.pop("conntrack", None)
            watcher = ConntrackWatcher(new.guard.ports)
            listing: ConnectionsListed | None = None
            try:
                watcher.open()
                # The new watcher knows no connection yet: without a dump it would drop the
                # closes of every session open now, and logouts would wait for the socket table.
                listing = watcher.dump()
            except WatcherError as exc:
                watcher.close()
                self._down["conntrack"] = str(exc)
            else:
                self._conntrack = watcher
                self._selector.register(watcher, selectors.EVENT_READ, self._on_conntrack_readable)
            self.queue([self._signals_event()])
            if listing is not None:
                self.queue([listing])
            self._next_socket_poll = self.clock()
            return
        self.queue([self._signals_event()])
        self._next_socket_poll = self.clock()

    def close(self) -> None:
        self._save_positions(self.clock(), force=True)
        if self._sshd is not None:
            # sshd is left as it is: live sessions keep their sshd, and the table still gates
            # the port; a restarted daemon settles it (its first want() acts either way).
            self._sshd.close()
            self._sshd = None
        self._sync_sshd_fd()
        self._hooks.close()
        self._sync_hook_fds()
        self.notifier.close()
        for watcher in (self._knock, self._conntrack, self._journal, self._btmp, self._authlog):
            if watcher is not None:
                watcher.close()
        self._knock = self._conntrack = None
        self._journal = None
        self._btmp = None
        self._authlog = None
        if self._store is not None:
            self._store.close()
            self._store = None
        self.nft.close()
        if self._control is not None:
            self._control.close()
            self._control = None
        signal.set_wakeup_fd(-1)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


class DaemonControl:
    """The control socket's handler (guardian.control.ControlHandler): reads the daemon's state
    and queues operator requests as events, so they take the same path as everything else."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def snapshot(self) -> dict[str, Any]:
        d = self.daemon
        now = d.clock()
        engine = d.engine.snapshot(now)
        offset = d.wall_clock() - engine.now
        bans = [
            BanInfo(
                str(v.network),
                v.reason,
                v.since + offset,
                None if v.until is None else v.until + offset,
                v.offence,
            )
            for v in engine.bans
        ]
        return build_status(
            engine,
            bans=bans,
            wall_now=d.wall_clock(),
            started_at=d.started_at,
            version=__version__,
            pid=os.getpid(),
            config_path=d.config.path,
            table_installed=d.nft.table_exists(),
            watchers=d.watcher_statuses(),
            spa=_spa_status(d.config, engine),
            events=d.recent.items(),
            extra_counters=d.loop_counters(),
            # Live blocks of Python's small-object allocator: with RSS, it tells a growing set
            # of objects (this grows) from a fragmented heap (this stays flat while RSS grows).
            extra_gauges={"python_blocks": float(sys.getallocatedblocks())},
        ).to_json()

    def grant(self, source: str, duration: float) -> dict[str, Any]:
        actions = self.daemon.run_now([GrantRequested(parse_address(source), duration)])
        refusals = [
            a.detail for a in actions if isinstance(a, Notice) and a.kind == "grant_refused"
        ]
        if refusals:
            raise ControlError(f"grant refused: {'; '.join(refusals)}")
        return {"queued": True}

    def revoke(self, source: str) -> dict[str, Any]:
        self.daemon.queue([RevokeRequested(parse_address(source))])
        return {"queued": True}

    def ban(self, source: str, duration: float | None) -> dict[str, Any]:
        actions = self.daemon.run_now([BanRequested(_network(source), duration)])
        bans = [a for a in actions if isinstance(a, BanAction)]
        if not bans:
            refusals = [a.detail for a in actions if isinstance(a, Notice)]
            raise ControlError(f"ban refused: {'; '.join(refusals) or 'no reason given'}")
        return {"banned": [str(b.network) for b in bans], "timeout": bans[0].timeout}

    def unban(self, source: str) -> dict[str, Any]:
        actions = self.daemon.run_now([UnbanRequested(_network(source))])
        lifted = [str(a.network) for a in actions if isinstance(a, UnbanAction)]
        return {"unbanned": lifted}

    def reload(self) -> dict[str, Any]:
        return {"reloaded": self.daemon.reload()}


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ControlError(f"not an address or network: {text!r}") from exc


def configure_logging(verbose: bool = False, *, journal: bool = True) -> None:
    """Structured records to the journal when it is there (journal_log.py); plain lines on stderr
    unless stderr is the journal already."""
    sender = journal_sender() if journal else None
    root = logging.getLogger("guardian")
    root.handlers[:] = build_handlers(sender, stderr_is_journal())
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
