# The pure engine's everyone doors (engine/everyone.py): a completed knock of an open_to =
# "everyone" door opens the guarded ports to every source for the door's window, a hard bound that
# nothing extends (a re-knock, sessions, a restart's adoption), closed at its end or by its close
# sequence; banned sources' knocks do not open it; per-source doors use their own window when set.
# Explicit time, no sleeping; whole action lists are compared.
from __future__ import annotations

import ipaddress

from guardian.actions import Action, CloseEveryone, Notice, OpenEveryone, OpenGrant
from guardian.addresses import IPAddress
from guardian.config import Access, Config, Door, Guard, KnockStep
from guardian.engine import Engine
from guardian.events import SYN, BanRequested, ConnectionOpened, KnockSeen, SessionOpened

A = ipaddress.ip_address("198.51.100.7")
B = ipaddress.ip_address("198.51.100.8")
TRUSTED = ipaddress.ip_address("192.0.2.5")
OPEN = (KnockStep(7000), KnockStep(8000), KnockStep(9000))
CLOSE = (KnockStep(9100), KnockStep(8100), KnockStep(7100))
SOURCE_OPEN = (KnockStep(6000), KnockStep(6100))


def engine(window: float = 180.0) -> Engine:
    doors = (
        Door("all", OPEN, close=CLOSE, open_to="everyone", window=window),
        Door("mine", SOURCE_OPEN, window=12.0),
    )
    guard = Guard(trusted=(ipaddress.ip_network("192.0.2.0/24"),))
    return Engine(Config(guard=guard, access=Access(window=30.0), doors=doors))


def knock(e: Engine, source: IPAddress, sequence: tuple[KnockStep, ...], at: float) -> list[Action]:
    actions: list[Action] = []
    for step in sequence:
        actions += e.feed(KnockSeen(source, step.port, step.proto, SYN), at)
    return actions


def test_knock_opens_for_everyone_for_the_door_window_then_closes() -> None:
    e = engine()
    assert knock(e, A, OPEN, 10.0) == [
        OpenEveryone("all", 180.0),
        Notice("knock_completed", A, "all"),
        Notice("everyone_opened", A, "all", "guarded ports open to EVERY source for 3m"),
    ]
    snap = e.snapshot(11.0)
    assert snap.everyone is not None
    assert (snap.everyone.door, snap.everyone.since, snap.everyone.until) == ("all", 10.0, 190.0)
    assert snap.grants == ()  # no per-source grant
    assert e.get_timer() == 190.0
    assert e.handle_timer(189.9) == []
    assert e.handle_timer(190.0) == [
        CloseEveryone("all", "window ended"),
        Notice("everyone_closed", None, "all", "window ended"),
    ]
    assert e.snapshot(190.0).everyone is None
    assert e.get_timer() is None
    assert e.snapshot(190.0).counters["everyone_opened"] == 1
    assert e.snapshot(190.0).counters["everyone_closed"] == 1


def test_reknock_and_sessions_never_extend_it() -> None:
    e = engine(60.0)
    knock(e, A, OPEN, 0.0)
    assert knock(e, B, OPEN, 30.0) == [
        Notice("knock_completed", B, "all", "already open by all, 30s left: not extended")
    ]
    # A session through it changes nothing about its end.
    e.feed(ConnectionOpened(B, 40000, 22, "conntrack"), 31.0)
    e.feed(SessionOpened(B, 40000, "bob", 99), 31.5)
    assert e.snapshot(32.0).everyone is not None
    assert e.get_timer() is not None and e.get_timer() <= 60.0
    closed = e.handle_timer(60.0)
    assert CloseEveryone("all", "window ended") in closed
    assert e.snapshot(60.0).counters["everyone_not_extended"] == 1
    # After it closed, a knock opens a fresh window.
    assert knock(e, A, OPEN, 70.0)[0] == OpenEveryone("all", 60.0)


def test_close_sequence_closes_it_early() -> None:
    e = engine()
    knock(e, A, OPEN, 0.0)
    assert knock(e, B, CLOSE, 5.0) == [
        CloseEveryone("all", "close sequence"),
        Notice("knock_completed", B, "all", "close sequence"),
        Notice("everyone_closed", B, "all", "close sequence"),
    ]
    assert e.get_timer() is None
    assert knock(e, B, CLOSE, 10.0) == [
        Notice("knock_completed", B, "all", "close sequence, nothing open")
    ]


def test_trusted_source_may_open_it() -> None:
    e = engine()
    assert knock(e, TRUSTED, OPEN, 0.0)[0] == OpenEveryone("all", 180.0)


def test_banned_source_cannot_open_it() -> None:
    e = engine()
    e.feed(BanRequested(ipaddress.ip_network(f"{A}/32"), 600.0), 0.0, wall=1000.0)
    assert knock(e, A, OPEN, 1.0) == []
    assert e.snapshot(1.0).everyone is None


def test_adoption_keeps_the_kernel_time_left_and_is_not_extended() -> None:
    e = engine()
    assert e.adopt_everyone(42.0, 100.0) == [
        Notice("everyone_opened", None, "all", "found open in the kernel, 42s left")
    ]
    assert e.get_timer() == 142.0
    assert knock(e, A, OPEN, 110.0) == [
        Notice("knock_completed", A, "all", "already open by all, 32s left: not extended")
    ]
    assert e.handle_timer(142.0)[0] == CloseEveryone("all", "window ended")
    assert e.adopt_everyone(0.0, 150.0) == []  # nothing left: nothing to adopt


def test_adoption_without_a_single_everyone_door_names_it_adopted() -> None:
    e = Engine(Config())
    [notice] = e.adopt_everyone(5.0, 0.0)
    assert isinstance(notice, Notice) and notice.door == "adopted-everyone"


def test_source_door_uses_its_own_window() -> None:
    e = engine()
    actions = knock(e, A, SOURCE_OPEN, 0.0)
    assert actions[0] == OpenGrant(A, 12.0, "mine")
    assert e.snapshot(0.0).everyone is None


# -- what `guardian status` shows (snapshot.py, ui/) -------------------------------------------


def test_status_shows_the_everyone_window_as_its_own_state_with_countdown() -> None:
    from rich.console import Console

    from guardian.snapshot import StatusSnapshot, build_status
    from guardian.ui.status import render_status
    from guardian.ui.text import grants_text

    e = engine(180.0)
    knock(e, A, OPEN, 10.0)
    snap = build_status(
        e.snapshot(40.0),
        wall_now=1040.0,
        started_at=0.0,
        version="t",
        pid=1,
        config_path="/g.toml",
        table_installed=True,
    )
    assert snap.everyone is not None
    assert (snap.everyone.door, snap.everyone.opened_at) == ("all", 1010.0)
    assert (snap.everyone.expires_at, snap.everyone.time_left) == (1190.0, 150.0)
    assert StatusSnapshot.from_json(snap.to_json()) == snap
    assert grants_text(snap).startswith("OPEN TO EVERYONE (door all): closes in 2m30s")
    console = Console(width=80, color_system=None, record=True)
    console.print(render_status(snap, 80))
    shown = console.export_text()
    assert "OPEN TO EVERYONE (door all): closes in 2m30s, never extended" in shown
    assert "No per-source grants." in shown
    # Closed: nothing about it, and the wire form has no "everyone" key at all.
    e.handle_timer(190.0)
    closed = build_status(
        e.snapshot(190.0),
        wall_now=1190.0,
        started_at=0.0,
        version="t",
        pid=1,
        config_path="/g.toml",
        table_installed=True,
    )
    assert closed.everyone is None and "everyone" not in closed.to_json()
    assert "EVERYONE" not in grants_text(closed)
