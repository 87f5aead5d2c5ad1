# Tests of guardian/knockd_import.py: knockd.conf fixtures (tests/data/knockd/, each accepted or
# refused by the real knockd 0.8 the same way) convert to TOML that parse_config loads, and every
# command, option and unconverted section shows up in the notes.
from __future__ import annotations

from pathlib import Path

import pytest

from guardian.config import DEFAULT_WINDOW, Config, KnockStep, parse_tcp_flags
from guardian.configfile import ConfigError, parse_config
from guardian.knockd_import import ImportResult, import_knockd

DATA = Path(__file__).parent / "data" / "knockd"
VALID = sorted(p for p in DATA.glob("*.conf") if p.name != "unknown_key.conf")


def convert(name: str) -> tuple[ImportResult, Config]:
    path = DATA / name
    result = import_knockd(path.read_text(), str(path))
    return result, parse_config(result.toml, "converted.toml")


def notes_text(result: ImportResult) -> str:
    return "\n".join(result.notes)


def tcp(*ports: int) -> tuple[KnockStep, ...]:
    return tuple(KnockStep(p, "tcp") for p in ports)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_every_fixture_converts_to_loadable_toml(path: Path) -> None:
    text = path.read_text()
    result = import_knockd(text, str(path))
    parse_config(result.toml, "converted.toml")  # raises on any problem
    # no command is dropped silently: each one appears verbatim in a note
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if "command" in key.lower() and value.strip():
            assert value.strip() in notes_text(result), value


def test_classic_pair_becomes_one_door_with_close() -> None:
    result, config = convert("classic_pair.conf")
    (door,) = config.doors
    assert door.name == "openSSH"
    assert door.sequence == tcp(7000, 8000, 9000)
    assert door.close == tcp(9000, 8000, 7000)
    assert door.timeout == 10.0
    assert door.tcp_flags == parse_tcp_flags("syn")
    assert config.guard.ports == (22,)
    assert config.access.window == DEFAULT_WINDOW
    notes = notes_text(result)
    assert "[closeSSH] (line 11): became the close sequence of door 'openSSH'" in notes
    assert "LogFile = /var/log/knockd.log not carried over" in notes
    assert "knockd kept the port open until the close sequence" in notes


def test_debian_default_guards_both_ports() -> None:
    result, config = convert("debian_default.conf")
    assert config.guard.ports == (22, 443)
    assert [d.name for d in config.doors] == ["openSSH", "openHTTPS"]
    assert config.doors[1].sequence == tcp(12345, 54321, 24680, 13579)
    assert "every door opens all guarded ports (22, 443) together" in notes_text(result)


def test_start_stop_cmd_timeout_becomes_the_window() -> None:
    result, config = convert("timed.conf")
    (door,) = config.doors
    assert door.name == "opencloseSSH"
    assert door.close == ()
    assert door.timeout == 15.0
    assert config.access.window == 20.0
    assert config.guard.interfaces == ("eth0",)
    notes = notes_text(result)
    for key in ("start_command", "start_command_6", "stop_command", "stop_command_6"):
        assert f"[opencloseSSH] (line 6): {key} not carried over" in notes
    assert "cmd_timeout became [access] window = 20s" in notes
    assert "UseSyslog not carried over" in notes


def test_udp_sequence_and_command_without_port() -> None:
    result, config = convert("udp_sequence.conf")
    (door,) = config.doors
    assert door.sequence == (KnockStep(2222, "udp"), KnockStep(3333, "tcp"), KnockStep(4444, "udp"))
    assert door.tcp_flags == parse_tcp_flags("syn,ack")
    assert config.access.window == 5.0
    assert config.guard.ports == (22,)
    assert "names no destination port" in notes_text(result)


def test_interface_option_is_carried_over() -> None:
    result, config = convert("interface.conf")
    assert config.guard.interfaces == ("enp0s3",)
    (door,) = config.doors
    assert door.close == (KnockStep(9000, "tcp"), KnockStep(8000, "udp"), KnockStep(7000, "tcp"))
    notes = notes_text(result)
    assert "PidFile = /run/knockd.pid not carried over" in notes
    assert "no Interface" not in notes


def test_missing_interface_is_noted() -> None:
    result, config = convert("classic_pair.conf")
    assert config.guard.interfaces == ()
    assert "no Interface: knockd listened on eth0 only" in notes_text(result)


def test_seed003_converts_to_a_source_door_and_an_everyone_door() -> None:
    result, config = convert("seed003.conf")
    source, everyone = config.doors
    assert (source.name, source.open_to, source.window) == ("openSSH", "source", None)
    assert source.sequence == tcp(7000, 8000, 9000)
    assert config.access.window == 30.0  # the per-address door's cmd_timeout, not 60
    assert (everyone.name, everyone.open_to) == ("openSSH4everyone", "everyone")
    assert everyone.sequence == tcp(5040, 6050, 7060)
    assert everyone.window == 60.0  # its own cmd_timeout: a hard bound of its own
    assert config.guard.ports == (22,)
    notes = notes_text(result)
    assert "not converted" not in notes
    assert "door 'openSSH4everyone': opens the guarded ports to EVERY address for 60s" in notes
    assert "/sbin/iptables -I INPUT 1 -p tcp --dport 22 -j ACCEPT" in notes


def test_everyone_sections_pair_with_their_own_close_and_default_window() -> None:
    text = """\
[openAll]
    sequence = 1111,2222,3333
    tcpflags = syn
    command = /sbin/iptables -I INPUT -p tcp --dport 22 -j ACCEPT
[closeAll]
    sequence = 3333,2222,1111
    tcpflags = syn
    command = /sbin/iptables -D INPUT -p tcp --dport 22 -j ACCEPT
[openMine]
    sequence = 4444,5555,6666
    tcpflags = syn
    command = /sbin/iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
"""
    result = import_knockd(text, "k.conf")
    config = parse_config(result.toml, "converted.toml")
    everyone, mine = config.doors
    assert everyone.open_to == "everyone" and everyone.close == tcp(3333, 2222, 1111)
    assert everyone.window == DEFAULT_WINDOW  # knockd kept it open until closeAll: bounded here
    assert mine.open_to == "source" and mine.close == ()
    assert "became the close sequence of door 'openAll'" in notes_text(result)
    assert "knockd kept it open until a close sequence" in notes_text(result)


def test_unknown_key_is_an_error_with_line() -> None:
    path = DATA / "unknown_key.conf"
    with pytest.raises(ConfigError) as caught:
        import_knockd(path.read_text(), str(path))
    assert (caught.value.path, caught.value.line, caught.value.key) == (str(path), 7, "seq_timout")
    assert str(caught.value).startswith(f"{path}:7: seq_timout: unknown key")


# -- smaller cases, inline -----------------------------------------------------------------------


def test_keys_are_case_insensitive_and_aliases_fold() -> None:
    text = (
        "[OpenIt]\nSEQUENCE = 7000, 8000 ,9000:UDP\nTimeout = 7\n"
        "Command = ufw allow from %IP% to any port 2200\n"
    )
    result = import_knockd(text, "k.conf")
    config = parse_config(result.toml, "c")
    (door,) = config.doors
    assert door.sequence == (KnockStep(7000), KnockStep(8000), KnockStep(9000, "udp"))
    assert door.timeout == 7.0
    assert config.guard.ports == (2200,)
    assert "no TCPFlags: knockd counted TCP packets with any flags" in notes_text(result)


def test_several_cmd_timeouts_take_the_longest_and_say_so() -> None:
    text = "".join(
        f"[d{i}]\nsequence = {p},{p + 1},{p + 2}\ntcpflags = syn\ncmd_timeout = {t}\n"
        f"start_command = iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n"
        f"stop_command = iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n"
        for i, (p, t) in enumerate(((7000, 10), (8000, 45), (9000, 30)))
    )
    result = import_knockd(text, "k.conf")
    assert parse_config(result.toml, "c").access.window == 45.0
    assert "cmd_timeout differs (d0 10s, d1 45s, d2 30s)" in notes_text(result)
    assert "using the longest, 45s" in notes_text(result)


def test_default_cmd_timeout_is_knockds() -> None:
    text = (
        "[t]\nsequence = 7000,8000,9000\ntcpflags = syn\n"
        "start_command = iptables -A INPUT -s %IP% --dport 22 -j ACCEPT\n"
        "stop_command = iptables -D INPUT -s %IP% --dport 22 -j ACCEPT\n"
    )
    assert parse_config(import_knockd(text, "k").toml, "c").access.window == 10.0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("target = 192.0.2.1\n", "Target = 192.0.2.1 not carried over"),
        ("one_time_sequences = /etc/knockd/seqs\n", "not converted: it uses One_Time_Sequences"),
    ],
)
def test_unsupported_door_features_are_noted(extra: str, expected: str) -> None:
    text = (
        "[d]\nsequence = 7000,8000,9000\ntcpflags = syn\n"
        "command = iptables -A INPUT -s %IP% --dport 22 -j ACCEPT\n" + extra
    )
    result = import_knockd(text, "k.conf")
    assert expected in notes_text(result)
    parse_config(result.toml, "c")


def test_unrecognised_command_is_not_converted() -> None:
    text = "[wake]\nsequence = 7000,8000\ncommand = /usr/bin/etherwake 00:11:22:33:44:55\n"
    result = import_knockd(text, "k.conf")
    assert parse_config(result.toml, "c").doors == ()
    notes = notes_text(result)
    assert "[wake] (line 1): not converted: its command is not recognised" in notes
    assert "no door was converted" in notes


def test_close_without_open_is_noted() -> None:
    text = "[closeSSH]\nsequence = 9000,8000,7000\n"
    text += "command = iptables -D INPUT -s %IP% --dport 22 -j ACCEPT\n"
    result = import_knockd(text, "k.conf")
    assert "closes a port that no converted door opens" in notes_text(result)


def test_conflicts_are_dropped_with_a_note_not_an_invalid_toml() -> None:
    open_cmd = "command = iptables -A INPUT -s %IP% --dport 22 -j ACCEPT\n"
    text = (
        "[a]\nsequence = 7000,8000\n"
        + open_cmd
        + "[b]\nsequence = 7000,8000\n"
        + open_cmd
        # [c] knocks on the guarded port; [close] repeats [a]'s open sequence
        + "[c]\nsequence = 22,23\n"
        + open_cmd
        + "[close]\nsequence = 7000,8000\n"
        + "command = iptables -D INPUT -s %IP% --dport 22 -j ACCEPT\n"
    )
    result = import_knockd(text, "k.conf")
    config = parse_config(result.toml, "c")
    assert [d.name for d in config.doors] == ["a"]
    assert config.doors[0].close == ()
    notes = notes_text(result)
    assert "[b] (line 4): not converted: another door has the same sequence" in notes
    assert "[c] (line 7): not converted: its sequence knocks on a guarded port" in notes
    assert "close sequence from [close] (line 10) dropped: it equals an open sequence" in notes


def test_section_names_become_valid_unique_door_names() -> None:
    cmd = "command = iptables -A INPUT -s %IP% --dport 22 -j ACCEPT\n"
    text = f"[open ssh]\nsequence = 1000\n{cmd}[open/ssh]\nsequence = 2000\n{cmd}"
    config = parse_config(import_knockd(text, "k").toml, "c")
    assert [d.name for d in config.doors] == ["open-ssh", "open-ssh-2"]


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"),
    [
        ("sequence = 1\n", 1, "", "all directives must belong to a section"),
        ("[]\n", 1, "", "bad section name"),
        ("[options]\nVerbose = 1\n", 2, "Verbose", "unknown [options] key"),
        ("[d]\nsequence = 7000\nnonsense\n", 3, "nonsense", "syntax error"),
        ("[d]\nsequence = 7000,70000\n", 2, "Sequence", "not a port 1..65535: '70000'"),
        ("[d]\nsequence = 7000:sctp\n", 2, "Sequence", "unknown protocol 'sctp'"),
        ("[d]\nsequence = " + ",".join(["7000"] * 33) + "\n", 2, "Sequence", "at most 32"),
        ("[d]\nsequence = 7000\ntcpflags = syn,sin\n", 3, "TCPFlags", "unknown TCP flag"),
        ("[d]\nsequence = 7000\nseq_timeout = soon\n", 3, "Seq_Timeout", "whole seconds"),
        ("[d]\nsequence = 7000\ncmd_timeout = 0\n", 3, "Cmd_Timeout", "whole seconds"),
        ("# x\n[d]\ntcpflags = syn\n", 2, "d", "no Sequence"),
    ],
)
def test_what_knockd_refuses_is_an_error(text: str, line: int, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        import_knockd(text, "k.conf")
    assert (caught.value.line, caught.value.key) == (line, key), str(caught.value)
    assert reason in caught.value.reason


def test_usesyslog_bare_flag_and_comments() -> None:
    text = "# comment\n\n[options]\n  UseSyslog\n# [fake]\n[d]\nsequence = 7000,8000,9000\n"
    result = import_knockd(text, "k.conf")
    assert "[options] (line 4): UseSyslog not carried over" in notes_text(result)
    assert "[d] (line 6): not converted: it has no Start_Command" in notes_text(result)
