# Tests of guardian/checks.py: lockout warnings from SSH_CLIENT, and risky-but-valid settings.
from __future__ import annotations

import ipaddress

import pytest

from guardian.checks import config_warnings, lockout_warnings, parse_ssh_client
from guardian.config import Config
from guardian.configfile import parse_config

DOOR = '[[door]]\nname = "ssh"\nsequence = ["7000", "8000", "9000"]\ntimeout = "5s"\n'
TRUSTED = '[guard]\ntrusted = ["192.0.2.0/24", "2001:db8::/32"]\n'


def config(text: str) -> Config:
    return parse_config(text, "g.toml")


def joined(warnings: list[str]) -> str:
    return "\n".join(warnings)


# -- parse_ssh_client ----------------------------------------------------------------------------


def test_parse_ssh_client() -> None:
    assert parse_ssh_client("192.0.2.7 51234 22") == (ipaddress.ip_address("192.0.2.7"), 22)
    assert parse_ssh_client("2001:db8::5 40000 2222") == (ipaddress.ip_address("2001:db8::5"), 2222)
    assert parse_ssh_client("::ffff:192.0.2.7 1 22") == (ipaddress.ip_address("192.0.2.7"), 22)
    assert parse_ssh_client("fe80::1%eth0 1 22") == (ipaddress.ip_address("fe80::1"), 22)
    for bad in ("", "192.0.2.7", "192.0.2.7 1", "host 1 22", "192.0.2.7 1 ssh", "192.0.2.7 1 0"):
        assert parse_ssh_client(bad) is None, bad


# -- lockout_warnings ----------------------------------------------------------------------------


def test_nobody_can_connect_without_trusted_or_doors() -> None:
    for ssh_client in (None, "", "192.0.2.7 5 22"):
        warnings = lockout_warnings(config(""), ssh_client)
        assert "nobody can open a new connection" in joined(warnings)


def test_untrusted_operator_without_doors_is_warned_of_lockout() -> None:
    warnings = lockout_warnings(
        config('[guard]\ntrusted = ["198.51.100.0/24"]\n'), "192.0.2.7 5 22"
    )
    assert len(warnings) == 1
    assert "192.0.2.7 is not in guard.trusted and there is no [[door]]" in warnings[0]
    assert "cannot connect to port 22 again" in warnings[0]


def test_untrusted_operator_with_a_door_is_told_to_knock() -> None:
    (warning,) = lockout_warnings(config(DOOR), "192.0.2.7 5 22")
    assert "must knock first (door: ssh)" in warning
    assert "cannot connect" not in warning


def test_trusted_operator_gets_no_warning() -> None:
    assert lockout_warnings(config(TRUSTED), "192.0.2.7 5 22") == []
    assert lockout_warnings(config(TRUSTED), "2001:db8::9 5 22") == []
    assert lockout_warnings(config(TRUSTED), "::ffff:192.0.2.9 5 22") == []


def test_trusted_network_of_other_family_does_not_count() -> None:
    warnings = lockout_warnings(config('[guard]\ntrusted = ["192.0.2.0/24"]\n'), "2001:db8::1 5 22")
    assert "2001:db8::1 is not in guard.trusted" in joined(warnings)


def test_session_on_unguarded_port_is_reported() -> None:
    (warning,) = lockout_warnings(config(TRUSTED), "198.51.100.1 5 2222")
    assert "port 2222, which is not guarded" in warning
    assert "add 2222 to guard.ports" in warning


def test_guarded_nonstandard_port_is_checked_like_22() -> None:
    text = "[guard]\nports = [2222]\n"
    nobody, operator = lockout_warnings(config(text), "192.0.2.7 5 2222")
    assert "nobody can open a new connection to the guarded port(s) 2222" in nobody
    assert "cannot connect to port 2222 again" in operator


def test_loopback_operator_is_never_locked_out() -> None:
    assert lockout_warnings(config(TRUSTED), "127.0.0.1 5 22") == []
    assert lockout_warnings(config(TRUSTED), "::1 5 22") == []


def test_unreadable_ssh_client_is_said() -> None:
    (warning,) = lockout_warnings(config(TRUSTED), "garbage")
    assert "SSH_CLIENT='garbage'" in warning


# -- config_warnings -----------------------------------------------------------------------------


def test_a_good_config_has_no_warnings() -> None:
    assert config_warnings(config(TRUSTED + DOOR)) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[guard]\nanswer = "drop"\n', 'answer = "drop"'),
        ('[guard]\ntrusted = ["0.0.0.0/0"]\n', "every IPv4 address"),
        ('[guard]\ntrusted = ["::/0"]\n', "every IPv6 address"),
        ('[access]\nwindow = "1h"\n', "access.window is 3600s"),
        ('[[door]]\nname = "a"\nsequence = ["7000"]\ntimeout = "5s"\n', "has 1 step:"),
        ('[[door]]\nname = "a"\nsequence = ["7000", "8000"]\ntimeout = "5s"\n', "has 2 steps"),
        (DOOR.replace('"5s"', '"2m"'), "timeout of 120s"),
        (DOOR + "decoy_band = 0\n", "no decoy ports"),
        (DOOR + 'decoy_band = 0\ndecoys = ["100-110"]\n', "decoy_band = 0: only its explicit"),
        (DOOR + 'tcp_flags = "syn,ack"\n', "plain SYN packets"),
        (DOOR + 'tcp_flags = "!syn"\n', "plain SYN packets"),
        (DOOR.replace('"8000", "9000"', '"8000", "8000"'), "knocks 8000/tcp twice in a row"),
    ],
)
def test_risky_settings_are_warned(text: str, expected: str) -> None:
    warnings = config_warnings(config(text))
    assert expected in joined(warnings)


def test_tcp_flags_do_not_matter_for_udp_only_doors() -> None:
    text = '[[door]]\nname = "u"\nsequence = ["7000/udp", "8000/udp", "9000/udp"]\n'
    text += 'timeout = "5s"\ntcp_flags = "ack"\n'
    assert config_warnings(config(text)) == []
