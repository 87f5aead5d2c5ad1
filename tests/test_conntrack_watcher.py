# Tests of guardian/watchers/conntrack.py that need no lab: argument checks, use before open(), the
# nf_conntrack_events handling (read, set to 1 when it is not, WatcherError saying events are
# unavailable when it cannot be read or written), and the BPF event filter on an emulator. The
# sysctl is a stand-in file here, never the host's. As root, open() subscribes a netlink socket in
# this namespace for a moment (it sends nothing); without root the subscription itself fails, also
# as a WatcherError.
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from guardian import bpf
from guardian.watchers import WatcherError
from guardian.watchers.conntrack import ConntrackWatcher, event_filter_program

ROOT = os.geteuid() == 0
READ_ONLY_SYSCTL = Path("/proc/sys/kernel/ngroups_max")  # mode 0444: not writable, even by root


@pytest.mark.parametrize("ports", [(), (0,), (65536,)])
def test_bad_ports(ports: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        ConntrackWatcher(ports)


def test_use_before_open_is_a_watcher_error() -> None:
    watcher = ConntrackWatcher((22,))
    with pytest.raises(WatcherError, match="not open"):
        watcher.fileno()
    with pytest.raises(WatcherError, match="not open"):
        watcher.read_events()
    watcher.close()  # idempotent, harmless
    assert watcher.stats()["datagrams"] == 0


def test_missing_sysctl_means_events_unavailable(tmp_path: Path) -> None:
    watcher = ConntrackWatcher((22,), events_sysctl=tmp_path / "nf_conntrack_events")
    expected = "conntrack events are unavailable" if ROOT else "CAP_NET_ADMIN"
    with pytest.raises(WatcherError, match=expected):
        watcher.open()
    with pytest.raises(WatcherError, match="not open"):
        watcher.fileno()


@pytest.mark.skipif(not ROOT, reason="subscribing needs CAP_NET_ADMIN")
def test_unwritable_sysctl_means_events_unavailable() -> None:
    assert READ_ONLY_SYSCTL.read_text().strip() != "1"
    watcher = ConntrackWatcher((22,), events_sysctl=READ_ONLY_SYSCTL)
    with pytest.raises(WatcherError, match="unavailable: cannot set"):
        watcher.open()


@pytest.mark.skipif(not ROOT, reason="subscribing needs CAP_NET_ADMIN")
@pytest.mark.parametrize("before", ["2", "0", "1"])
def test_open_sets_events_to_one(tmp_path: Path, before: str) -> None:
    sysctl = tmp_path / "nf_conntrack_events"
    sysctl.write_text(before + "\n")
    with ConntrackWatcher((22,), events_sysctl=sysctl, rcvbuf_bytes=1 << 20) as watcher:
        assert watcher.events_sysctl_was == int(before)
        assert sysctl.read_text().strip() == "1"
        assert watcher.fileno() >= 0
        assert watcher.stats()["rcvbuf_bytes"] >= 1 << 20  # SO_RCVBUFFORCE as root
        with pytest.raises(WatcherError, match="already open"):
            watcher.open()
    with pytest.raises(WatcherError, match="not open"):
        watcher.fileno()


@pytest.mark.skipif(not ROOT, reason="subscribing needs CAP_NET_ADMIN")
def test_garbage_in_the_sysctl(tmp_path: Path) -> None:
    sysctl = tmp_path / "nf_conntrack_events"
    sysctl.write_text("yes\n")
    with pytest.raises(WatcherError, match="unavailable: reading"):
        ConntrackWatcher((22,), events_sysctl=sysctl).open()


# ---- the kernel event filter, run by a small emulator of the kernel's classic BPF -------------
# Only what event_filter_program uses, with the kernel's semantics (net/core/filter.c
# bpf_skb_get_nlattr / bpf_skb_get_nlattr_nest, lib/nlattr.c nla_find): the lab test then shows
# the same program in the kernel.

_NLATTR_K = (bpf.SKF_AD_OFF + 12) & 0xFFFFFFFF  # SKF_AD_NLATTR
_NEST_K = (bpf.SKF_AD_OFF + 16) & 0xFFFFFFFF  # SKF_AD_NLATTR_NEST (linux/filter.h)


def _nla_find(data: bytes, start: int, end: int, wanted: int) -> int:
    pos = start
    while end - pos >= 4:
        length, nla_type = struct.unpack_from("=HH", data, pos)
        if length < 4 or length > end - pos:
            return 0
        if nla_type & 0x3FFF == wanted:
            return pos
        pos += (length + 3) & ~3
    return 0


def run_event_filter(program: tuple[bpf.Insn, ...], data: bytes) -> int:
    a = x = 0
    memory = [0] * 16
    pc = 0
    for _ in range(len(program)):  # forward jumps only: bounded by the program length
        insn = program[pc]
        pc += 1
        code = insn.code
        if code == bpf.LD | bpf.IMM:
            a = insn.k
        elif code == bpf.LDX | bpf.IMM:
            x = insn.k
        elif code == bpf.LD | bpf.W | bpf.ABS and insn.k in (_NLATTR_K, _NEST_K):
            if len(data) < 4 or a > len(data) - 4:
                a = 0
            elif insn.k == _NLATTR_K:
                a = _nla_find(data, a, len(data), x)
            else:
                length = struct.unpack_from("=H", data, a)[0]
                a = 0 if length > len(data) - a else _nla_find(data, a + 4, a + length, x)
        elif code == bpf.ST:
            memory[insn.k] = a
        elif code == bpf.LD | bpf.MEM:
            a = memory[insn.k]
        elif code == bpf.MISC | bpf.TAX:
            x = a
        elif code in (bpf.LD | bpf.B | bpf.IND, bpf.LD | bpf.H | bpf.IND):
            size = 1 if code == bpf.LD | bpf.B | bpf.IND else 2
            offset = x + insn.k
            if offset + size > len(data):
                return 0  # the kernel drops on an out-of-bounds load
            a = int.from_bytes(data[offset : offset + size], "big")
        elif code & 0x07 == bpf.JMP:
            op = code & 0xF0
            taken = {bpf.JEQ: a == insn.k, bpf.JGE: a >= insn.k, bpf.JGT: a > insn.k}[op]
            pc += insn.jt if taken else insn.jf
        elif code == bpf.RET | bpf.K:
            return insn.k
        else:
            raise AssertionError(f"instruction the emulator does not know: {insn}")
    raise AssertionError("ran off the program")


def test_event_filter_keeps_guarded_tcp_and_drops_the_rest() -> None:
    from tests.test_conntrack_parser import RECORDED_DUMP, RECORDED_EVENTS, ct_message

    guarded = event_filter_program((22,))
    other = event_filter_program((2000, 2222, 2223, 8000))
    for data in RECORDED_EVENTS:  # IPv4 and IPv6, NEW/UPDATE/DESTROY, all to :22
        assert run_event_filter(guarded, data) > 0
        assert run_event_filter(other, data) == 0
    for port, kept in ((21, False), (22, False), (2222, True), (2223, True), (2224, False)):
        assert (run_event_filter(other, ct_message(dport=port)) > 0) is kept, port
    assert run_event_filter(guarded, ct_message(proto=17, state=None)) == 0  # UDP to :22
    v6 = ct_message(src="2001:db8::2", dst="2001:db8::1", dport=22)
    assert run_event_filter(guarded, v6) > 0
    # What it cannot judge it keeps: no original tuple, broken lengths, a short datagram.
    no_tuple = struct.pack("=IHHII", 28, 1 << 8, 0, 0, 0) + b"\x02\0\0\0" + b"\x08\x00\x03\x00" * 2
    broken = bytearray(ct_message(dport=2222))
    broken[20:22] = struct.pack("=H", 0xFFF0)  # the tuple claims more bytes than there are
    for data in (no_tuple, bytes(broken), b"\0" * 8, RECORDED_DUMP[-1]):
        assert run_event_filter(guarded, data) > 0


def test_event_filter_ranges_and_limits() -> None:
    program = event_filter_program(range(1000, 1100, 2))  # 50 separate ports
    assert len(program) < 4096
    with pytest.raises(ValueError):
        event_filter_program((0,))
