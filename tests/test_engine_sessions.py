# The session lifecycle of the pure engine (grants.py's table, sessions.py's bookkeeping), with
# explicit time: every test feeds events at chosen instants and asserts the whole list of actions
# the engine returned, and the snapshot where the state matters.
from __future__ import annotations

import gc
import ipaddress
import sys
from dataclasses import replace

import pytest

from guardian.actions import Action, Notice, OpenGrant, RefreshGrant, RevokeGrant
from guardian.addresses import IPAddress
from guardian.config import Access, Config, Door, Guard, KnockStep
from guardian.engine import COUNTER_NAMES, AuthState, Engine, GrantState
from guardian.events import (
    SYN,
    ConnectionClosed,
    ConnectionId,
    ConnectionOpened,
    ConnectionsListed,
    GrantFound,
    GrantRequested,
    KnockSeen,
    RevokeRequested,
    SessionClosed,
    SessionOpened,
    SignalsChanged,
)

A = ipaddress.ip_address("198.51.100.7")
B = ipaddress.ip_address("198.51.100.8")
V6 = ipaddress.ip_address("2001:db8::7")
TRUSTED = ipaddress.ip_address("192.0.2.5")
WINDOW = 30.0
LINGER = 10.0
LEASE = 60.0
GRACE = 20.0
SSH = 22
BOTH = frozenset({"conntrack", "sockets"})


def _tcp(*ports: int) -> tuple[KnockStep, ...]:
    return tuple(KnockStep(p) for p in ports)


def config(*, close: bool = False, **access: float | bool | None) -> Config:
    """One door "ssh" (7000 8000 9000; with close: 9000 8000 7000 closes), 192.0.2.0/24 trusted.
    Without a close sequence no knock attempt is left behind a completed knock, so get_timer()
    is the sessions' and grants' alone."""
    door = Door(
        name="ssh",
        sequence=_tcp(7000, 8000, 9000),
        close=_tcp(9000, 8000, 7000) if close else (),
    )
    settings = Access(window=WINDOW, linger=LINGER, lease=LEASE, login_grace_time=GRACE)
    return Config(
        guard=Guard(trusted=(ipaddress.ip_network("192.0.2.0/24"),)),
        access=replace(settings, **access),  # type: ignore[arg-type]
        doors=(door,),
    )


def engine(*, close: bool = False, **access: float | bool | None) -> Engine:
    e = Engine(config(close=close, **access))
    assert e.feed(SignalsChanged(BOTH, auth=True), 0.0) == []
    return e


def knock(e: Engine, at: float, source: IPAddress = A, close: bool = False) -> list[Action]:
    """The whole sequence at one instant (the grant opens at `at`)."""
    actions: list[Action] = []
    for port in (9000, 8000, 7000) if close else (7000, 8000, 9000):
        actions += e.feed(KnockSeen(source, port, "tcp", SYN), at)
    return actions


def tcp_open(
    sport: int, source: IPAddress = A, origin: str = "conntrack", dport: int = SSH
) -> ConnectionOpened:
    return ConnectionOpened(source, sport, dport, origin)


def tcp_close(
    sport: int, source: IPAddress = A, origin: str = "conntrack", dport: int = SSH
) -> ConnectionClosed:
    return ConnectionClosed(source, sport, dport, origin)


def accepted(sport: int, source: IPAddress = A, user: str = "alice") -> SessionOpened:
    return SessionOpened(source, sport, user, 4000 + sport % 1000)


def listing(
    *conns: ConnectionId, origin: str = "sockets", initial: bool = False
) -> ConnectionsListed:
    return ConnectionsListed(frozenset(conns), origin, initial)


def grant_opened(source: IPAddress = A) -> list[Action]:
    return [
        OpenGrant(source, WINDOW, "ssh"),
        Notice("knock_completed", source, "ssh"),
        Notice("grant_opened", source, "ssh"),
    ]


def session_up(
    sport: int, source: IPAddress = A, door: str = "ssh", user: str = "alice"
) -> list[Action]:
    """A first session: the grant goes IN_SESSION with the lease as kernel timeout."""
    return [
        RefreshGrant(source, LEASE),
        Notice("session_opened", source, door, f"{user} port {sport}"),
        Notice("grant_in_session", source, door),
    ]


def session_down(
    sport: int, source: IPAddress = A, door: str = "ssh", user: str = "alice", left: float = LINGER
) -> list[Action]:
    """The last session ended: LINGER, the kernel's timeout set to what is left."""
    seconds = f"{left:g}s"
    return [
        RefreshGrant(source, left),
        Notice("session_closed", source, door, f"{user} port {sport}"),
        Notice("grant_lingering", source, door, f"last session ended, closes in {seconds}"),
    ]


def linger_ends(source: IPAddress = A, door: str = "ssh") -> list[Action]:
    return [
        RevokeGrant(source, "sessions ended"),
        Notice("grant_closed", source, door, "sessions ended"),
    ]


def window_ends(source: IPAddress = A, door: str = "ssh") -> list[Action]:
    return [
        RevokeGrant(source, "window ended"),
        Notice("grant_closed", source, door, "window ended"),
    ]


def state(e: Engine, now: float, source: IPAddress = A) -> GrantState:
    for grant in e.snapshot(now).grants:
        if grant.source == source:
            return grant.state
    return GrantState.CLOSED


def in_session(e: Engine, at: float, sport: int = 50000, source: IPAddress = A) -> None:
    """Knock at `at`, connect at +1, authenticate at +2: IN_SESSION from at + 2."""
    assert knock(e, at, source) == grant_opened(source)
    assert e.feed(tcp_open(sport, source), at + 1) == []
    assert e.feed(accepted(sport, source), at + 2) == session_up(sport, source)


# -- the table, row by row -------------------------------------------------------------------


def test_window_to_session_to_linger_to_closed() -> None:
    e = engine()
    assert knock(e, 0.0) == grant_opened()
    assert e.feed(tcp_open(50000), 1.0) == []  # pending: within the window, nothing to do
    (grant,) = e.snapshot(1.0).grants
    assert (grant.state, grant.sessions, grant.pending) == (GrantState.WINDOW, 0, 1)
    assert e.feed(accepted(50000), 2.0) == session_up(50000)
    (grant,) = e.snapshot(2.0).grants
    assert (grant.state, grant.sessions, grant.pending) == (GrantState.IN_SESSION, 1, 0)
    assert (grant.kernel_expires_at, grant.next_change, grant.expires_at) == (62.0, 32.0, 62.0)
    assert e.get_timer() == 32.0
    assert e.handle_timer(32.0) == [RefreshGrant(A, LEASE)]  # IN_SESSION DEADLINE: the lease
    assert e.get_timer() == 62.0
    # A close after a due refresh: the refresh is honoured first (time goes by the clock).
    assert e.feed(tcp_close(50000), 70.0) == [RefreshGrant(A, LEASE), *session_down(50000)]
    (grant,) = e.snapshot(70.0).grants
    assert (grant.state, grant.expires_at, grant.kernel_expires_at) == (GrantState.LINGER, 80, 80)
    assert e.handle_timer(79.9) == []
    assert e.handle_timer(80.0) == linger_ends()
    assert e.snapshot(80.0).grants == ()
    assert e.snapshot(80.0).sessions == ()
    assert e.get_timer() is None
    counters = e.snapshot(80.0).counters
    assert counters["grants_in_session"] == 1
    assert counters["grants_lingering"] == 1
    assert counters["grants_closed_by_linger"] == 1
    assert counters["grants_closed"] == 1
    assert counters["lease_refreshes"] == 2
    assert (counters["sessions_opened"], counters["sessions_closed"]) == (1, 1)
    assert (counters["connections_opened"], counters["connections_closed"]) == (1, 1)
    # The journal's "Disconnected" comes after conntrack's FIN: normal, counted, nothing to do.
    assert e.feed(SessionClosed(A, 50000, "alice", 4000), 80.5) == []
    assert e.snapshot(80.5).counters["closes_unknown"] == 1


def test_window_deadline_with_no_connection_closes_as_before() -> None:
    e = engine()
    knock(e, 0.0)
    assert e.handle_timer(WINDOW) == window_ends()


def test_session_closed_by_the_journal_first_then_conntrack() -> None:
    e = engine()
    in_session(e, 0.0)
    assert e.feed(SessionClosed(A, 50000, "alice", 4000), 20.0) == session_down(50000)
    assert e.feed(tcp_close(50000), 20.1) == []
    assert e.snapshot(20.1).counters["closes_unknown"] == 1
    assert e.handle_timer(30.0) == linger_ends()


def test_linger_session_up_a_reconnect_keeps_access() -> None:
    e = engine()
    in_session(e, 0.0)
    assert e.feed(tcp_close(50000), 10.0) == session_down(50000)  # LINGER until 20
    # The reconnect is pending: its grace (until 35) outlasts the linger, so the kernel too.
    assert e.feed(tcp_open(50001), 15.0) == [RefreshGrant(A, GRACE)]
    (grant,) = e.snapshot(15.0).grants
    assert (grant.state, grant.expires_at, grant.pending) == (GrantState.LINGER, 35.0, 1)
    assert e.handle_timer(20.0) == []  # the linger's end no longer closes it
    assert e.feed(accepted(50001), 21.0) == session_up(50001)
    assert state(e, 21.0) is GrantState.IN_SESSION
    assert e.get_timer() == 51.0


def test_reconnect_within_linger_authenticating_before_it_ends() -> None:
    e = engine(login_grace_time=5.0)
    in_session(e, 0.0)
    e.feed(tcp_close(50000), 10.0)
    assert e.feed(tcp_open(50001), 12.0) == []  # grace until 17, inside the linger (20)
    assert e.feed(accepted(50001), 13.0) == session_up(50001)


def test_linger_deadline_with_a_pending_reconnect_that_never_authenticates() -> None:
    e = engine()
    in_session(e, 0.0)
    e.feed(tcp_close(50000), 10.0)
    assert e.feed(tcp_open(50001), 15.0) == [RefreshGrant(A, GRACE)]
    assert e.handle_timer(35.0) == [
        Notice("unauthenticated_expired", A, "ssh", "port 50001"),
        *linger_ends(),
    ]


def test_window_pending_connection_holds_the_grant_until_its_grace_ends() -> None:
    """The lab's case: after a knock, a TCP connection that never authenticates does not hold
    access past the login grace (here the grace outlasts the window)."""
    e = engine(login_grace_time=45.0)
    assert knock(e, 0.0) == grant_opened()
    assert e.feed(tcp_open(50000), 10.0) == [RefreshGrant(A, 45.0)]  # kernel: 30 -> 55
    (grant,) = e.snapshot(10.0).grants
    assert (grant.state, grant.expires_at, grant.kernel_expires_at) == (GrantState.WINDOW, 55, 55)
    assert e.handle_timer(WINDOW) == []  # the window's end no longer closes it
    assert e.get_timer() == 55.0
    assert e.handle_timer(54.9) == []
    assert e.handle_timer(55.0) == [
        Notice("unauthenticated_expired", A, "ssh", "port 50000"),
        *window_ends(),  # straight to CLOSED: no session ever lived, so no linger
    ]
    counters = e.snapshot(55.0).counters
    assert counters["unauthenticated_expired"] == 1
    assert counters["grants_in_session"] == 0
    # The connection stays tracked (shown as expired) until sshd's close is seen.
    (view,) = e.snapshot(55.0).sessions
    assert (view.auth, view.counting, view.authenticated) == (AuthState.EXPIRED, False, False)
    assert e.feed(tcp_close(50000), 55.2) == []
    assert e.snapshot(55.2).sessions == ()


def test_pending_connection_inside_the_window_expires_quietly_for_the_grant() -> None:
    e = engine()  # grace 20 < window 30
    knock(e, 0.0)
    assert e.feed(tcp_open(50000), 1.0) == []
    assert e.handle_timer(21.0) == [Notice("unauthenticated_expired", A, "ssh", "port 50000")]
    assert state(e, 21.0) is GrantState.WINDOW
    assert e.handle_timer(30.0) == window_ends()


def test_pending_connection_closing_early_lets_the_grant_close_at_once() -> None:
    e = engine(login_grace_time=45.0)
    knock(e, 0.0)
    assert e.feed(tcp_open(50000), 10.0) == [RefreshGrant(A, 45.0)]
    # It goes away after the window's end: nothing holds the grant any more.
    assert e.feed(tcp_close(50000), 40.0) == window_ends()
    assert e.get_timer() is None


def test_late_accepted_line_beats_the_grace_clock() -> None:
    e = engine()
    knock(e, 0.0)
    e.feed(tcp_open(50000), 1.0)
    e.handle_timer(21.0)  # expired: sshd should have dropped it
    assert e.feed(accepted(50000), 22.0) == session_up(50000)


def test_knock_during_session_keeps_the_state_and_never_shortens_the_lease() -> None:
    e = engine()
    in_session(e, 0.0)
    assert knock(e, 20.0) == [
        RefreshGrant(A, LEASE),
        Notice("knock_completed", A, "ssh"),
        Notice("grant_refreshed", A, "ssh"),
    ]
    (grant,) = e.snapshot(20.0).grants
    assert (grant.state, grant.kernel_expires_at, grant.next_change) == (
        GrantState.IN_SESSION,
        80.0,
        50.0,
    )
    # The knock's window (until 50) outlasts the linger: the grant waits for it.
    assert e.feed(tcp_close(50000), 30.0) == session_down(50000, left=20.0)
    assert e.handle_timer(50.0) == linger_ends()


def test_operator_grant_during_session_is_kept_through_refreshes() -> None:
    e = engine()
    in_session(e, 0.0)
    assert e.feed(GrantRequested(A, 600.0, "cli"), 10.0) == [
        RefreshGrant(A, 600.0),
        Notice("grant_refreshed", A, "ssh", "cli"),
    ]
    assert e.handle_timer(40.0) == [RefreshGrant(A, 570.0)]  # max(lease, what was promised)
    assert e.feed(tcp_close(50000), 60.0) == session_down(50000, left=550.0)


def test_knock_during_linger_keeps_linger_and_extends_it() -> None:
    e = engine()
    in_session(e, 0.0)
    e.feed(tcp_close(50000), 10.0)  # LINGER until 20
    assert knock(e, 15.0) == [
        RefreshGrant(A, WINDOW),
        Notice("knock_completed", A, "ssh"),
        Notice("grant_refreshed", A, "ssh"),
    ]
    (grant,) = e.snapshot(15.0).grants
    assert (grant.state, grant.expires_at) == (GrantState.LINGER, 45.0)
    assert e.handle_timer(45.0) == linger_ends()


def test_knock_in_linger_never_shortens_the_kernel_timeout() -> None:
    e = engine(linger=100.0)
    in_session(e, 0.0)
    assert e.feed(tcp_close(50000), 10.0) == session_down(50000, left=100.0)
    assert knock(e, 11.0)[0] == RefreshGrant(A, 99.0)


def test_close_sequence_revokes_in_session_and_connections_stay_tracked() -> None:
    e = engine(close=True)
    in_session(e, 0.0)
    assert knock(e, 20.0, close=True) == [
        RevokeGrant(A, "close sequence"),
        Notice("knock_completed", A, "ssh", "close sequence"),
        Notice("grant_closed", A, "ssh", "close sequence"),
    ]
    snap = e.snapshot(20.0)
    assert snap.grants == ()
    (view,) = snap.sessions
    assert (view.source, view.sport, view.authenticated) == (A, 50000, True)
    assert e.handle_timer(100.0) == []  # no refresh of a grant that is gone
    # Knocking again while the session lives: the grant goes straight back to IN_SESSION.
    assert knock(e, 200.0) == [
        OpenGrant(A, WINDOW, "ssh"),
        RefreshGrant(A, LEASE),
        Notice("knock_completed", A, "ssh"),
        Notice("grant_opened", A, "ssh"),
        Notice("grant_in_session", A, "ssh"),
    ]


def test_operator_revoke_in_linger() -> None:
    e = engine()
    in_session(e, 0.0)
    e.feed(tcp_close(50000), 10.0)
    assert e.feed(RevokeRequested(A), 12.0) == [
        RevokeGrant(A, "operator"),
        Notice("grant_closed", A, "ssh", "operator"),
    ]
    assert e.get_timer() is None


def test_kernel_grant_reported_again_during_a_session_gets_its_timeout_back() -> None:
    e = engine()
    in_session(e, 0.0)
    assert e.feed(GrantFound(A, None), 10.0) == [RefreshGrant(A, LEASE)]
    assert state(e, 10.0) is GrantState.IN_SESSION
    assert e.snapshot(10.0).counters["unexpected_events"] == 1


def test_linger_zero_closes_when_the_last_session_ends() -> None:
    e = engine(linger=0.0)
    in_session(e, 0.0)
    assert e.feed(tcp_close(50000), 10.0) == [
        Notice("session_closed", A, "ssh", "alice port 50000"),
        Notice("grant_lingering", A, "ssh", "last session ended"),
        *linger_ends(),
    ]
    assert e.get_timer() is None


# -- several sessions ---------------------------------------------------------------------------


def test_two_sessions_closing_one_keeps_access_closing_both_lingers() -> None:
    e = engine()
    in_session(e, 0.0)
    assert e.feed(tcp_open(50001), 5.0) == []  # scp beside the shell: pending, IN_SESSION holds
    assert e.feed(accepted(50001), 6.0) == [Notice("session_opened", A, "ssh", "alice port 50001")]
    (grant,) = e.snapshot(6.0).grants
    assert (grant.state, grant.sessions) == (GrantState.IN_SESSION, 2)
    assert e.feed(tcp_close(50001), 20.0) == [
        Notice("session_closed", A, "ssh", "alice port 50001")
    ]
    assert state(e, 20.0) is GrantState.IN_SESSION
    assert e.handle_timer(32.0) == [RefreshGrant(A, LEASE)]
    assert e.feed(tcp_close(50000), 40.0) == session_down(50000)
    assert e.handle_timer(50.0) == linger_ends()


def test_sessions_of_two_sources_are_independent() -> None:
    e = engine()
    in_session(e, 0.0, 50000, A)
    in_session(e, 10.0, 40000, B)
    assert e.feed(tcp_close(40000, B), 15.0) == session_down(40000, B)
    assert state(e, 15.0, A) is GrantState.IN_SESSION
    assert e.handle_timer(25.0) == linger_ends(B)
    assert state(e, 25.0, A) is GrantState.IN_SESSION


def test_one_listing_closing_one_session_and_showing_another_does_not_linger() -> None:
    e = engine()
    in_session(e, 0.0)
    # A sockets listing that has the new connection but no longer the old one: settled once.
    e.feed(listing((A, 50000, SSH)), 3.0)
    e.feed(tcp_open(50001), 4.0)
    e.feed(accepted(50001), 5.0)
    actions = e.feed(listing((A, 50001, SSH)), 6.0)
    assert actions == [
        Notice("session_closed", A, "ssh", "alice port 50000: gone from the sockets listing")
    ]
    assert state(e, 6.0) is GrantState.IN_SESSION


# -- authentication policy ---------------------------------------------------------------------


def test_require_auth_false_counts_a_bare_connection_as_a_session() -> None:
    e = engine(require_auth=False)
    knock(e, 0.0)
    assert e.feed(tcp_open(50000), 1.0) == [
        RefreshGrant(A, LEASE),
        Notice("session_opened", A, "ssh", "port 50000 (authentication assumed)"),
        Notice("grant_in_session", A, "ssh"),
    ]
    # The journal may still name the user; it is a session already.
    assert e.feed(accepted(50000), 2.0) == []
    (view,) = e.snapshot(2.0).sessions
    assert (view.user, view.auth) == ("alice", AuthState.ACCEPTED)
    assert e.feed(tcp_close(50000), 3.0) == session_down(50000)


def test_auth_signal_unavailable_counts_connections_from_their_start() -> None:
    e = engine()
    assert e.feed(SignalsChanged(BOTH, auth=False), 0.0) == []
    knock(e, 0.0)
    assert e.feed(tcp_open(50000), 1.0) == [
        RefreshGrant(A, LEASE),
        Notice("session_opened", A, "ssh", "port 50000 (authentication assumed)"),
        Notice("grant_in_session", A, "ssh"),
    ]
    assert e.snapshot(1.0).auth_signal is False


def test_auth_signal_going_down_promotes_pending_and_coming_back_keeps_them() -> None:
    e = engine()
    knock(e, 0.0)
    e.feed(tcp_open(50000), 1.0)
    assert e.feed(SignalsChanged(BOTH, auth=False), 2.0) == [
        RefreshGrant(A, LEASE),
        Notice("session_opened", A, "ssh", "port 50000 (authentication assumed)"),
        Notice("grant_in_session", A, "ssh"),
    ]
    assert e.feed(SignalsChanged(BOTH, auth=True), 3.0) == []
    assert state(e, 3.0) is GrantState.IN_SESSION  # what could not be observed stays assumed
    # New connections need evidence again.
    assert e.feed(tcp_open(50001), 4.0) == []
    (_, pending) = e.snapshot(4.0).sessions
    assert pending.auth is AuthState.PENDING


def test_reconfigure_to_require_auth_false_promotes_pending() -> None:
    e = engine()
    knock(e, 0.0)
    e.feed(tcp_open(50000), 1.0)
    assert e.reconfigure(config(require_auth=False), 2.0) == [
        RefreshGrant(A, LEASE),
        Notice("session_opened", A, "ssh", "port 50000 (authentication assumed)"),
        Notice("grant_in_session", A, "ssh"),
    ]


def test_reconfigure_changes_linger_for_later_transitions() -> None:
    e = engine()
    in_session(e, 0.0)
    assert e.reconfigure(config(linger=3.0), 5.0) == []
    assert e.feed(tcp_close(50000), 6.0) == session_down(50000, left=3.0)


# -- trusted and ungranted sources ---------------------------------------------------------------


def test_trusted_session_is_shown_but_gets_no_grant() -> None:
    e = engine()
    assert e.feed(tcp_open(50000, TRUSTED), 1.0) == []
    assert e.feed(accepted(50000, TRUSTED, "root"), 2.0) == [
        Notice("session_opened", TRUSTED, "", "root port 50000, trusted")
    ]
    snap = e.snapshot(3.0)
    assert snap.grants == ()
    (view,) = snap.sessions
    assert (view.source, view.user, view.authenticated, view.origin) == (
        TRUSTED,
        "root",
        True,
        "conntrack",
    )
    assert snap.counters["connections_ungranted"] == 0
    assert e.feed(tcp_close(50000, TRUSTED), 4.0) == [
        Notice("session_closed", TRUSTED, "", "root port 50000, trusted")
    ]
    assert e.get_timer() is None


def test_trusted_source_is_not_adopted_at_start() -> None:
    e = engine()
    e.feed(accepted(50000, TRUSTED), 0.0)
    assert e.feed(listing((TRUSTED, 50000, SSH), initial=True), 0.0) == []
    assert e.snapshot(0.0).grants == ()


def test_connection_without_grant_at_run_time_is_tracked_and_counted_only() -> None:
    e = engine()
    assert e.feed(tcp_open(50000, B), 1.0) == []
    assert e.feed(accepted(50000, B, "mallory"), 2.0) == [
        Notice("session_opened", B, "", "mallory port 50000, no grant")
    ]
    snap = e.snapshot(2.0)
    assert snap.grants == ()
    assert snap.counters["connections_ungranted"] == 1
    assert len(snap.sessions) == 1
    # A later listing (not initial) never creates a grant either.
    assert e.feed(listing((B, 50000, SSH)), 3.0) == []
    assert e.snapshot(3.0).grants == ()


# -- start-up: adoption ------------------------------------------------------------------------


def test_adoption_with_auth_evidence_before_the_listing() -> None:
    """Restart mid-session: the journal's history names the live login first, then the dump."""
    e = engine()
    assert e.feed(accepted(50000), 0.0) == [
        Notice("session_opened", A, "", "alice port 50000, no grant")
    ]
    assert e.feed(listing((A, 50000, SSH), origin="conntrack", initial=True), 0.0) == [
        RefreshGrant(A, LEASE),
        Notice("grant_adopted", A, "adopted", "live session at start-up"),
    ]
    (grant,) = e.snapshot(0.0).grants
    assert (grant.state, grant.door, grant.sessions) == (GrantState.IN_SESSION, "adopted", 1)
    (view,) = e.snapshot(0.0).sessions
    assert (view.dport, view.origin, view.seen_by) == (SSH, "journal", ("conntrack",))
    counters = e.snapshot(0.0).counters
    assert (counters["grants_adopted_live"], counters["connections_ungranted"]) == (1, 1)
    assert e.handle_timer(30.0) == [RefreshGrant(A, LEASE)]
    assert e.feed(tcp_close(50000), 40.0) == session_down(50000, door="adopted")
    assert e.handle_timer(50.0) == linger_ends(door="adopted")


def test_adoption_with_auth_evidence_after_the_listing() -> None:
    e = engine()
    assert e.feed(listing((A, 50000, SSH), initial=True), 0.0) == [
        RefreshGrant(A, GRACE),
        Notice(
            "grant_adopted", A, "adopted", "live connection at start-up, awaiting authentication"
        ),
    ]
    assert state(e, 0.0) is GrantState.WINDOW
    assert e.feed(accepted(50000), 0.5) == session_up(50000, door="adopted")
    assert e.snapshot(0.5).counters["connections_ungranted"] == 0


def test_adoption_without_auth_evidence_lasts_only_the_login_grace() -> None:
    e = engine()
    e.feed(listing((A, 50000, SSH), initial=True), 100.0)
    assert e.handle_timer(120.0) == [
        Notice("unauthenticated_expired", A, "adopted", "port 50000"),
        *window_ends(door="adopted"),
    ]


def test_adoption_of_a_kernel_grant_then_its_live_session() -> None:
    e = engine()
    assert e.feed(GrantFound(A, 40.0), 0.0) == []
    assert e.feed(listing((A, 50000, SSH), initial=True), 0.0) == []  # pending, 20 < 40 left
    assert e.feed(accepted(50000), 1.0) == session_up(50000, door="adopted")


def test_kernel_grant_found_after_the_listing_sees_the_session() -> None:
    e = engine()
    e.feed(accepted(50000), 0.0)
    e.feed(ConnectionsListed(frozenset({(A, 50000, SSH)}), "conntrack"), 0.0)  # not initial
    assert e.feed(GrantFound(A, 5.0), 0.0) == [
        RefreshGrant(A, LEASE),
        Notice("grant_in_session", A, "adopted"),
    ]


def test_initial_listing_adopts_several_sources_in_address_order() -> None:
    e = engine(require_auth=False)
    actions = e.feed(listing((V6, 1, SSH), (B, 2, SSH), (A, 3, SSH), initial=True), 0.0)
    assert actions == [
        RefreshGrant(A, LEASE),
        RefreshGrant(B, LEASE),
        RefreshGrant(V6, LEASE),
        Notice("session_opened", A, "adopted", "port 3 (authentication assumed)"),
        Notice("session_opened", B, "adopted", "port 2 (authentication assumed)"),
        Notice("session_opened", V6, "adopted", "port 1 (authentication assumed)"),
        Notice("grant_adopted", A, "adopted", "live session at start-up"),
        Notice("grant_adopted", B, "adopted", "live session at start-up"),
        Notice("grant_adopted", V6, "adopted", "live session at start-up"),
    ]


# -- listings -------------------------------------------------------------------------------------


def test_listing_opens_unknown_and_closes_what_its_origin_reported() -> None:
    e = engine()
    in_session(e, 0.0)  # 50000 reported by conntrack
    e.feed(tcp_open(50001, origin="sockets"), 3.0)
    # A conntrack dump without 50000 closes it (conntrack reported it); 50001 is sockets' word,
    # and the dump's 50002 is new.
    actions = e.feed(listing((A, 50002, SSH), origin="conntrack"), 4.0)
    assert actions == [
        RefreshGrant(A, 20.0),  # pending 50002 (grace until 24) outlasts the linger (14)
        Notice("session_closed", A, "ssh", "alice port 50000: gone from the conntrack listing"),
        Notice("grant_lingering", A, "ssh", "last session ended, closes in 20s"),
    ]
    ports = [(s.sport, s.seen_by) for s in e.snapshot(4.0).sessions]
    assert ports == [(50001, ("sockets",)), (50002, ("conntrack",))]


def test_listing_of_the_same_connections_changes_nothing() -> None:
    e = engine()
    in_session(e, 0.0)
    for at in (3.0, 4.0):
        assert e.feed(listing((A, 50000, SSH), origin="conntrack"), at) == []
    counters = e.snapshot(4.0).counters
    assert (counters["listings"], counters["connections_duplicate"]) == (2, 0)
    assert e.snapshot(4.0).sessions[0].seen_by == ("conntrack",)


def test_listing_closes_journal_only_connections_it_does_not_show() -> None:
    """An "Accepted" for a connection no watcher shows: gone, or on a port that is not guarded."""
    e = engine()
    knock(e, 0.0)
    assert e.feed(accepted(50000), 1.0) == session_up(50000)
    (view,) = e.snapshot(1.0).sessions
    assert (view.dport, view.origin, view.seen_by) == (0, "journal", ())
    assert e.feed(listing(), 2.0) == [
        RefreshGrant(A, LINGER),
        Notice("session_closed", A, "ssh", "alice port 50000: not in the sockets listing"),
        Notice("grant_lingering", A, "ssh", "last session ended, closes in 10s"),
    ]


def test_watcher_gone_makes_its_connections_unconfirmed_for_any_listing() -> None:
    e = engine()
    in_session(e, 0.0)  # conntrack vouches for 50000
    e.feed(tcp_open(50001), 3.0)  # conntrack vouches for 50001 (pending)
    assert e.feed(SignalsChanged(frozenset({"sockets"}), auth=True), 4.0) == []
    assert [s.seen_by for s in e.snapshot(4.0).sessions] == [(), ()]
    # The socket table shows 50000 only: confirmed; 50001 is gone.
    assert e.feed(listing((A, 50000, SSH)), 5.0) == []
    assert [(s.sport, s.seen_by) for s in e.snapshot(5.0).sessions] == [(50000, ("sockets",))]
    assert e.snapshot(5.0).connection_origins == ("sockets",)


def test_close_from_any_watcher_ends_the_connection() -> None:
    e = engine()
    in_session(e, 0.0)
    e.feed(listing((A, 50000, SSH)), 3.0)  # sockets vouches too
    assert e.feed(tcp_close(50000, origin="sockets"), 4.0) == session_down(50000)


# -- races and surprises --------------------------------------------------------------------------


def test_journal_before_conntrack_is_one_connection() -> None:
    e = engine()
    knock(e, 0.0)
    assert e.feed(accepted(50000), 1.0) == session_up(50000)
    assert e.feed(tcp_open(50000), 1.1) == []
    (view,) = e.snapshot(1.1).sessions
    assert (view.dport, view.seen_by, view.since) == (SSH, ("conntrack",), 1.0)
    assert e.feed(tcp_close(50000), 5.0) == session_down(50000)
    assert e.snapshot(5.0).sessions == ()


def test_conntrack_close_for_a_journal_only_connection() -> None:
    e = engine()
    knock(e, 0.0)
    e.feed(accepted(50000), 1.0)
    assert e.feed(tcp_close(50000), 5.0) == session_down(50000)


def test_duplicates_and_unknown_closes_are_counted_never_raised() -> None:
    e = engine()
    in_session(e, 0.0)
    assert e.feed(tcp_open(50000), 3.0) == []  # conntrack again
    assert e.feed(accepted(50000), 3.0) == []  # "Accepted" again
    assert e.feed(tcp_close(40000), 3.0) == []  # never seen
    assert e.feed(SessionClosed(A, 40000, "bob", 1), 3.0) == []
    assert e.feed(tcp_close(50000), 4.0) == session_down(50000)
    assert e.feed(tcp_close(50000), 4.0) == []  # a second close
    counters = e.snapshot(4.0).counters
    assert counters["connections_duplicate"] == 1
    assert counters["sessions_duplicate"] == 1
    assert counters["closes_unknown"] == 3
    assert counters["unexpected_events"] == 0


def test_v4_mapped_sources_are_the_same_connection() -> None:
    e = engine()
    in_session(e, 0.0)
    mapped = ipaddress.ip_address("::ffff:198.51.100.7")
    assert e.feed(ConnectionClosed(mapped, 50000, SSH), 5.0) == session_down(50000)


def test_session_closed_ends_every_connection_of_that_port_pair() -> None:
    e = engine()
    knock(e, 0.0)
    e.feed(tcp_open(50000, dport=22), 1.0)
    e.feed(tcp_open(50000, dport=2222), 1.0)
    e.feed(accepted(50000), 2.0)
    (grant,) = e.snapshot(2.0).grants
    assert grant.sessions == 2
    actions = e.feed(SessionClosed(A, 50000, "alice", 1), 3.0)
    assert actions[0] == RefreshGrant(A, LINGER)
    assert e.snapshot(3.0).sessions == ()


# -- time and memory -------------------------------------------------------------------------------


def test_idle_session_wakes_at_most_twice_per_lease_and_the_kernel_never_lapses() -> None:
    e = engine()
    in_session(e, 0.0)
    kernel_until = 2.0 + LEASE
    wakeups = 0
    now = 2.0
    while True:
        timer = e.get_timer()
        assert timer is not None
        if timer > 600.0:
            break
        assert timer >= now
        now = timer
        wakeups += 1
        actions = e.handle_timer(now)
        assert now < kernel_until  # refreshed before the kernel would drop it
        assert actions == [RefreshGrant(A, LEASE)]
        kernel_until = now + LEASE
    assert wakeups <= 2 * 600.0 / LEASE
    assert wakeups >= 600.0 / LEASE  # it does refresh
    assert e.snapshot(now).counters["lease_refreshes"] == wakeups


def test_connections_are_capped_evicting_sources_without_a_grant_first() -> None:
    e = Engine(config(), max_connections=3)
    in_session(e, 0.0)  # A's session: 1
    e.feed(tcp_open(1, B), 3.0)
    e.feed(tcp_open(2, B), 3.0)
    assert e.feed(tcp_open(3, B), 3.0) == []  # B's oldest goes, not A's session
    snap = e.snapshot(3.0)
    assert sorted((str(s.source), s.sport) for s in snap.sessions) == [
        (str(A), 50000),
        (str(B), 2),
        (str(B), 3),
    ]
    assert snap.counters["connections_evicted"] == 1
    assert state(e, 3.0) is GrantState.IN_SESSION


def test_evicting_the_last_session_lets_the_grant_linger() -> None:
    e = Engine(config(), max_connections=1)
    in_session(e, 0.0)
    assert e.feed(tcp_open(50001), 3.0) == [
        RefreshGrant(A, GRACE),  # the newcomer is pending: it holds the linger to its grace
        Notice(
            "session_closed", A, "ssh", "alice port 50000: evicted: too many connections tracked"
        ),
        Notice("grant_lingering", A, "ssh", "last session ended, closes in 20s"),
    ]


def test_flood_of_connections_keeps_memory_bounded() -> None:
    cap = 1000
    e = Engine(config(), max_connections=cap)
    base = int(ipaddress.ip_address("10.0.0.0"))
    for i in range(5 * cap):
        e.feed(ConnectionOpened(ipaddress.IPv4Address(base + i), 40000, SSH), 1.0 + i * 1e-3)
    snap = e.snapshot(10.0)
    assert len(snap.sessions) == cap
    assert snap.counters["connections_evicted"] == 4 * cap
    assert snap.timer_entries <= 2 * cap + 64 + 1
    assert e.handle_timer(1000.0) == []  # their graces end quietly (no grants)
    assert e.snapshot(1000.0).counters["unauthenticated_expired"] == cap


def test_snapshot_session_view_fields() -> None:
    e = engine()
    knock(e, 0.0)
    e.feed(tcp_open(50000), 1.0)
    (view,) = e.snapshot(5.0).sessions
    assert (view.source, view.sport, view.dport, view.user, view.since) == (A, 50000, SSH, None, 1)
    assert (view.auth, view.authenticated, view.counting, view.grace_end) == (
        AuthState.PENDING,
        False,
        True,
        21.0,
    )
    assert (view.origin, view.seen_by, view.pid) == ("conntrack", ("conntrack",), None)
    assert set(e.snapshot(5.0).counters) == set(COUNTER_NAMES)
    e.feed(accepted(50000), 6.0)
    (view,) = e.snapshot(6.0).sessions
    assert (view.user, view.pid, view.auth, view.grace_end) == ("alice", 4000, "accepted", None)


@pytest.mark.parametrize("linger", [0.0, 1.0, 10.0])
def test_every_grant_ends_after_its_last_session_and_linger(linger: float) -> None:
    e = engine(linger=linger)
    in_session(e, 0.0, 50000, A)
    in_session(e, 10.0, 40000, B)
    e.feed(tcp_close(50000, A), 100.0)
    e.feed(SessionClosed(B, 40000, "alice", 1), 100.0)
    e.handle_timer(100.0 + linger)
    assert e.snapshot(100.0 + linger).grants == ()
    assert e.get_timer() is None


def test_operator_durations_that_are_not_finite_are_refused() -> None:
    e = engine()
    for duration in (float("nan"), float("inf"), -1.0):
        assert e.feed(GrantRequested(A, duration), 1.0) == []
    assert e.snapshot(1.0).counters["unexpected_events"] == 3
    assert e.snapshot(1.0).grants == ()


# ---- races between conntrack (sub-millisecond) and the journal (tens of milliseconds) --------
# A short login (`ssh host true`) can be over before its "Accepted" line is read. Whatever order
# the four facts arrive in, the grant must linger from the last of them and then close: never
# stay in session on a journal-only record nothing will close, never wait out the whole window.

_OPEN = ConnectionOpened(A, 50000, SSH)
_ACCEPTED = SessionOpened(A, 50000, "alice", 4242)
_CLOSED = ConnectionClosed(A, 50000, SSH)
_DISCONNECTED = SessionClosed(A, 50000, "alice", 4242)


@pytest.mark.parametrize(
    "order",
    [
        pytest.param((_OPEN, _ACCEPTED, _CLOSED, _DISCONNECTED), id="in-order"),
        pytest.param((_OPEN, _CLOSED, _ACCEPTED, _DISCONNECTED), id="closed-before-accepted"),
        pytest.param((_OPEN, _CLOSED, _ACCEPTED), id="closed-before-accepted-no-disconnect"),
        pytest.param((_ACCEPTED, _OPEN, _DISCONNECTED, _CLOSED), id="journal-first"),
    ],
)
def test_a_short_login_lingers_from_its_end_whatever_the_order(order: tuple[object, ...]) -> None:
    engine = Engine(config())
    engine.feed(SignalsChanged(BOTH, auth=True), 0.0)
    for port in (7000, 8000, 9000):
        engine.feed(KnockSeen(A, port, "tcp", SYN), 0.0)
    at = 1.0
    for event in order:
        engine.feed(event, at)  # type: ignore[arg-type]
        at += 0.05
    last = at - 0.05
    (grant,) = engine.snapshot(last).grants
    assert grant.state is GrantState.LINGER
    assert engine.get_timer() == pytest.approx(last + LINGER, abs=0.06)
    assert engine.handle_timer(last + LINGER + 0.06) == [
        RevokeGrant(A, "sessions ended"),
        Notice("grant_closed", A, "ssh", "sessions ended"),
    ]


def test_accepted_long_after_an_unauthenticated_close_is_not_joined_to_it() -> None:
    """The memory of unauthenticated closes is short: an Accepted for the same peer much later
    is a new journal-only session (the listing that follows confirms or closes it)."""
    engine = Engine(config())
    engine.feed(SignalsChanged(BOTH, auth=True), 0.0)
    for port in (7000, 8000, 9000):
        engine.feed(KnockSeen(A, port, "tcp", SYN), 0.0)
    engine.feed(_OPEN, 1.0)
    engine.feed(_CLOSED, 1.1)
    engine.feed(_ACCEPTED, 25.0)
    (grant,) = engine.snapshot(25.0).grants
    assert grant.state is GrantState.IN_SESSION
    assert engine.snapshot(25.0).counters["sessions_accepted_after_close"] == 0


def test_unauthenticated_closes_are_forgotten_after_the_window() -> None:
    """Every connection closed before authenticating is remembered for RECENT_CLOSE_WINDOW (a
    late Accepted joins it), then forgotten: a port probed all day leaves nothing behind. (They
    were kept up to 4,096: the old code keeps ~12,000 blocks here.)"""
    engine = Engine(config())
    engine.feed(SignalsChanged(BOTH, auth=True), 0.0)

    def probe(sport: int, at: float) -> None:  # a connection that never authenticates
        engine.feed(ConnectionOpened(A, sport, SSH), at)
        engine.feed(ConnectionClosed(A, sport, SSH), at + 0.5)

    for sport in range(1024, 1100):
        probe(sport, float(sport))
    gc.collect()
    before = sys.getallocatedblocks()
    for sport in range(1100, 6100):
        probe(sport, float(sport))
    gc.collect()
    assert sys.getallocatedblocks() - before < 1000
