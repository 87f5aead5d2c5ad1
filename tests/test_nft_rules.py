# Unit tests of the pure nftables command builders (guardian/effectors/nft_rules.py): the JSON is
# compared with golden files in tests/data/nft/, and the golden documents are fed to `nft --check`
# in a throw-away network namespace (`unshare -rn`), which validates them against a real kernel
# without committing anything. Regenerate the goldens after a deliberate change with
# GUARDIAN_UPDATE_GOLDEN=1 and review the diff.
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from guardian.actions import Ban, Notice, OpenGrant, RecordOffence, RefreshGrant, RevokeGrant, Unban
from guardian.addresses import IPNetwork
from guardian.config import TABLE_NAME, Config, Guard
from guardian.config import Ban as BanPolicy
from guardian.effectors.nft_rules import (
    ban6_migration_commands,
    ban6_prefix_of,
    ban6_set,
    ban_commands,
    ban_element,
    commands_for,
    grant_commands,
    install_commands,
    kernel_timeout,
    offence_comment,
    offence_from_comment,
    remove_table_commands,
    revoke_commands,
    transaction,
    unban_commands,
)
from guardian.engine.bans import uses_interval_set

GOLDEN = Path(__file__).parent / "data" / "nft"
ip = ipaddress.ip_address
net = ipaddress.ip_network

CONFIGS: dict[str, Config] = {
    # Overlapping IPv4 networks must arrive collapsed (nft rejects overlaps in one batch).
    "install_v4v6_trusted": Config(
        guard=Guard(
            ports=(22,),
            trusted=(
                net("192.168.1.0/24"),
                net("10.0.0.0/8"),
                net("10.1.0.0/16"),
                net("2001:db8::/32"),
                net("192.0.2.7/32"),
            ),
        )
    ),
    "install_interfaces": Config(
        guard=Guard(ports=(2222, 22), interfaces=("wg0", "eth0"), answer="reset")
    ),
    "install_drop": Config(
        guard=Guard(ports=(22, 22, 2200), trusted=(net("2001:db8:1::/48"),), answer="drop")
    ),
    # Bans on the guarded ports only, IPv6 counted by /48.
    "install_ban_guarded": Config(
        guard=Guard(ports=(22, 2222)), ban=BanPolicy(scope="guarded", ipv6_prefix=48)
    ),
    # IPv6 banned one address at a time: no mask in the rule.
    "install_ban_v6_128": Config(ban=BanPolicy(ipv6_prefix=128)),
}

STEP = (
    OpenGrant(ip("192.0.2.10"), 30.0, "ssh"),
    Notice("grant_opened", ip("192.0.2.10"), "ssh"),
    RefreshGrant(ip("2001:db8::10"), 0.2),
    RevokeGrant(ip("::ffff:192.0.2.11"), "close sequence"),
)


# Bans of every kind: an IPv4 address (ban4), an IPv6 prefix of ipv6_prefix (ban6_64), a network
# (bannet4), an IPv6 address alone (bannet6), a permanent one, unbans; RecordOffence and Notice
# make no commands.
BAN_STEP = (
    Ban(net("203.0.113.5/32"), 600.0, "5 failures", 1),
    RecordOffence(net("203.0.113.5/32"), 1, 1000.0),
    Ban(net("2001:db8:1:2::/64"), 1200.5, "5 failures", 2),
    Ban(net("198.51.100.0/24"), 3600.0, "operator", 1),
    Ban(net("2001:db8:9::5/128"), None, "operator", 1),
    Notice("ban", ip("203.0.113.5")),
    Unban(net("192.0.2.7/32"), "operator"),
    Unban(net("2001:db8:7::/48"), "operator"),
    Unban(net("::ffff:192.0.2.0/120"), "operator"),
)


def golden(name: str, document: Any) -> Any:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("GUARDIAN_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_install_matches_golden(name: str) -> None:
    document = transaction(install_commands(CONFIGS[name]))
    assert document == golden(name, document)


def test_engine_step_matches_golden() -> None:
    document = transaction(commands_for(STEP))
    assert document == golden("engine_step", document)


def test_ban_step_matches_golden() -> None:
    document = transaction(commands_for(BAN_STEP, ipv6_prefix=64))
    assert document == golden("ban_step", document)


def test_remove_table_matches_golden() -> None:
    document = transaction(remove_table_commands())
    assert document == golden("remove_table", document)


def test_install_never_touches_grant_or_ban_sets() -> None:
    """A re-install must keep grants and bans: their sets are only ever (idempotently)
    declared."""
    kept = {"allow4", "allow6", "ban4", "bannet4", "bannet6", "ban6_64", "ban6_48", "ban6_128"}
    for config in CONFIGS.values():
        for command in install_commands(config):
            ((verb, body),) = command.items()
            ((kind, obj),) = body.items()
            if obj.get("name") in kept or obj.get("set") in kept:
                assert (verb, kind) == ("add", "set"), command


def _rule_texts(config: Config) -> list[str]:
    return [
        json.dumps(c["add"]["rule"]["expr"])
        for c in install_commands(config)
        if "rule" in c.get("add", {})
    ]


def _drop_if(left: dict[str, Any], right: str) -> str:
    return json.dumps([{"match": {"op": "==", "left": left, "right": right}}, {"drop": None}])


def test_ban_rules_come_right_after_loopback_and_before_established() -> None:
    rules = _rule_texts(Config())
    saddr4 = {"payload": {"protocol": "ip", "field": "saddr"}}
    saddr6 = {"payload": {"protocol": "ip6", "field": "saddr"}}
    assert '"iif"' in rules[0]
    assert rules[1:5] == [
        _drop_if(saddr4, "@ban4"),
        _drop_if(saddr4, "@bannet4"),
        _drop_if({"&": [saddr6, "ffff:ffff:ffff:ffff::"]}, "@ban6_64"),
        _drop_if(saddr6, "@bannet6"),
    ]
    assert '"established"' in rules[5]
    assert _rule_texts(CONFIGS["install_ban_v6_128"])[3] == _drop_if(saddr6, "@ban6_128")


def test_guarded_scope_limits_ban_rules_to_the_guarded_ports() -> None:
    rules = _rule_texts(CONFIGS["install_ban_guarded"])
    ban_rules = [r for r in rules if '"@ban' in r]
    assert len(ban_rules) == 4
    assert all('"dport"' in r and "[22, 2222]" in r for r in ban_rules)
    assert '"ffff:ffff:ffff::"' in ban_rules[2] and "@ban6_48" in ban_rules[2]
    assert all('"dport"' not in r for r in _rule_texts(Config()) if '"@ban' in r)


@pytest.mark.parametrize(
    ("network", "prefix", "expected"),
    [
        ("203.0.113.5/32", 64, ("ban4", "203.0.113.5")),
        ("::ffff:203.0.113.5/128", 64, ("ban4", "203.0.113.5")),
        ("203.0.113.0/24", 64, ("bannet4", {"prefix": {"addr": "203.0.113.0", "len": 24}})),
        ("2001:db8:1:2::/64", 64, ("ban6_64", "2001:db8:1:2::")),
        ("2001:db8:1::/48", 48, ("ban6_48", "2001:db8:1::")),
        ("2001:db8:1:2::/64", 48, ("bannet6", {"prefix": {"addr": "2001:db8:1:2::", "len": 64}})),
        ("2001:db8::5/128", 64, ("bannet6", "2001:db8::5")),
        ("2001:db8::5/128", 128, ("ban6_128", "2001:db8::5")),
    ],
)
def test_bans_are_routed_to_their_set(network: str, prefix: int, expected: tuple[str, Any]) -> None:
    assert ban_element(net(network), prefix) == expected
    interval = expected[0].startswith("bannet")
    assert uses_interval_set(net(network) if "ffff" not in network else net("203.0.113.5/32"),
                             prefix) == interval  # fmt: skip


def test_ban_is_add_delete_add_with_timeout_and_unban_add_delete() -> None:
    commands = ban_commands(net("2001:db8:1:2::/64"), 59.1, 64)
    assert [next(iter(c)) for c in commands] == ["add", "delete", "add"]
    assert {c[next(iter(c))]["element"]["name"] for c in commands} == {"ban6_64"}
    assert commands[2]["add"]["element"]["elem"] == [
        {"elem": {"val": "2001:db8:1:2::", "timeout": 60}}
    ]
    permanent = ban_commands(net("198.51.100.0/24"), None)
    assert permanent[2]["add"]["element"]["elem"] == [
        {"prefix": {"addr": "198.51.100.0", "len": 24}}
    ]
    unban = unban_commands(net("203.0.113.5/32"))
    assert [next(iter(c)) for c in unban] == ["add", "delete"]
    assert all(c[next(iter(c))]["element"]["elem"] == ["203.0.113.5"] for c in unban)


def test_a_ban_element_carries_its_offence_as_its_comment() -> None:
    commands = ban_commands(net("203.0.113.5/32"), 600, 64, offence=3)
    assert commands[2]["add"]["element"]["elem"] == [
        {"elem": {"val": "203.0.113.5", "timeout": 600, "comment": "offence 3"}}
    ]
    permanent = ban_commands(net("203.0.113.5/32"), None, 64, offence=12)
    assert permanent[2]["add"]["element"]["elem"] == [
        {"elem": {"val": "203.0.113.5", "comment": "offence 12"}}
    ]
    first = ban_commands(net("203.0.113.5/32"), 600, 64, offence=1)  # a first offence: none
    assert first[2]["add"]["element"]["elem"] == [{"elem": {"val": "203.0.113.5", "timeout": 600}}]
    assert offence_from_comment(offence_comment(3)) == 3
    assert offence_from_comment(offence_comment(999_999_999)) == 999_999_999


@pytest.mark.parametrize(
    "comment",
    [None, "", "offence", "offence ", "offence 0", "offence 01", "offence -1", "offence 1x",
     "offence 1234567890", "offence \u0661", "Offence 3", " offence 3", "offence 3 ",
     "banned by hand"],
)  # fmt: skip
def test_a_comment_not_ours_reads_as_no_offence(comment: str | None) -> None:
    assert offence_from_comment(comment) is None


def test_ban_commands_return_fresh_data() -> None:
    commands = ban_commands(net("198.51.100.0/24"), 30)
    commands[0]["add"]["element"]["elem"][0]["prefix"]["len"] = 1
    assert commands[1]["delete"]["element"]["elem"][0]["prefix"]["len"] == 24
    assert commands[2]["add"]["element"]["elem"][0]["elem"]["val"]["prefix"]["len"] == 24


def test_ban6_set_names() -> None:
    assert ban6_set(64) == "ban6_64"
    assert ban6_prefix_of("ban6_64") == 64 and ban6_prefix_of("ban6_128") == 128
    for other in ("ban4", "ban6_", "ban6_0", "ban6_129", "ban6_x", "bannet6", "allow6"):
        assert ban6_prefix_of(other) is None, other


def test_ban6_migration_moves_prefixes_to_bannet6_and_deletes_old_sets() -> None:
    stale: list[tuple[str, list[tuple[IPNetwork, float | None, int | None]]]] = [
        ("ban6_64", [(net("2001:db8:1:2::/64"), 100.4, 2), (net("2001:db8:7:7::/64"), None, None),
                     (net("2001:db8:9:1::/64"), 50.0, 1)]),
        ("ban6_56", [(net("2001:db8:1::/56"), 10.0, 3)]),  # covers 2001:db8:1:2::/64: one of them
    ]  # fmt: skip
    commands = ban6_migration_commands(stale, [net("2001:db8:9::/48")])
    assert commands == [
        {
            "add": {
                "element": {
                    "family": "inet",
                    "table": TABLE_NAME,
                    "name": "bannet6",
                    "elem": [
                        {"elem": {"val": {"prefix": {"addr": "2001:db8:1::", "len": 56}},
                                  "timeout": 10, "comment": "offence 3"}},
                        {"prefix": {"addr": "2001:db8:7:7::", "len": 64}},
                    ],
                }
            }
        },
        {"delete": {"set": {"family": "inet", "table": TABLE_NAME, "name": "ban6_64"}}},
        {"delete": {"set": {"family": "inet", "table": TABLE_NAME, "name": "ban6_56"}}},
    ]  # fmt: skip
    assert ban6_migration_commands([("ban6_48", [])], []) == [
        {"delete": {"set": {"family": "inet", "table": TABLE_NAME, "name": "ban6_48"}}}
    ]


def test_install_flushes_chain_and_trusted_before_refilling() -> None:
    commands = install_commands(CONFIGS["install_v4v6_trusted"])
    flushes = [i for i, c in enumerate(commands) if "flush" in c]
    fills = [i for i, c in enumerate(commands) if "rule" in c.get("add", {})]
    fills += [i for i, c in enumerate(commands) if "element" in c.get("add", {})]
    assert len(flushes) == 3
    assert max(flushes) < min(fills)


def test_no_interfaces_means_no_iifname_match() -> None:
    text = json.dumps(install_commands(Config()))
    assert "iifname" not in text
    assert '"iif"' in text  # the loopback rule is always there


def test_answer_selects_reset_or_drop() -> None:
    """The gate's last rule answers; ban rules always drop, whatever the answer."""
    reset = _rule_texts(Config(guard=Guard(answer="reset")))
    drop = _rule_texts(Config(guard=Guard(answer="drop")))
    assert '"tcp reset"' in reset[-1] and '"drop"' not in reset[-1]
    assert '"drop": null' in drop[-1] and "reject" not in json.dumps(drop)


def test_trusted_empty_adds_no_elements() -> None:
    commands = install_commands(Config(guard=Guard(trusted=())))
    assert not [c for c in commands if "element" in c.get("add", {})]


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, 1),
        (0.2, 1),
        (1.0, 1),
        (1.0001, 2),
        (1.5, 2),
        (30.0, 30),
        (-3.0, 1),
        (604800.0, 604800),
        (10 * 365 * 86400.0, 365 * 86400),  # nft refuses much longer: capped
    ],
)
def test_kernel_timeout_rounds_up_to_whole_seconds(seconds: float, expected: int) -> None:
    assert kernel_timeout(seconds) == expected
    assert isinstance(kernel_timeout(seconds), int)  # a float would be read as 0: permanent


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_kernel_timeout_refuses_non_finite(bad: float) -> None:
    with pytest.raises(ValueError):
        kernel_timeout(bad)


def test_grant_is_add_delete_add_with_timeout() -> None:
    commands = grant_commands(ip("2001:db8::5"), 59.1)
    assert [next(iter(c)) for c in commands] == ["add", "delete", "add"]
    assert {c[next(iter(c))]["element"]["name"] for c in commands} == {"allow6"}
    assert commands[2]["add"]["element"]["elem"] == [
        {"elem": {"val": "2001:db8::5", "timeout": 60}}
    ]


def test_v4_mapped_source_goes_to_allow4_as_ipv4() -> None:
    for commands in (
        grant_commands(ip("::ffff:192.0.2.1"), 5),
        revoke_commands(ip("::ffff:192.0.2.1")),
    ):
        for command in commands:
            element = command[next(iter(command))]["element"]
            assert element["name"] == "allow4"
            assert "192.0.2.1" in json.dumps(element["elem"]) and "ffff" not in json.dumps(element)


def test_revoke_is_add_then_delete() -> None:
    commands = revoke_commands(ip("192.0.2.3"))
    assert [next(iter(c)) for c in commands] == ["add", "delete"]
    assert all(c[next(iter(c))]["element"]["elem"] == ["192.0.2.3"] for c in commands)


def test_commands_for_ignores_notices_and_keeps_order() -> None:
    assert commands_for([Notice("knock_failed", None)]) == []
    assert commands_for([RecordOffence(net("192.0.2.1/32"), 1, 1.0)]) == []
    assert commands_for(BAN_STEP, ipv6_prefix=48)[3]["add"]["element"]["name"] == "bannet6"
    expected = (
        grant_commands(ip("192.0.2.10"), 30.0)
        + grant_commands(ip("2001:db8::10"), 0.2)
        + revoke_commands(ip("192.0.2.11"))
    )
    assert commands_for(STEP) == expected


def test_builders_return_fresh_data() -> None:
    """Callers may mutate what they get without changing the next result."""
    first = install_commands(Config())
    first[0]["add"]["table"]["name"] = "mutated"
    assert install_commands(Config())[0]["add"]["table"]["name"] == TABLE_NAME


def _nft_check(document: Any, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`nft --check` in a fresh, unnamed network namespace that vanishes with the process:
    the kernel validates the transaction and commits nothing."""
    if shutil.which("unshare") is None or shutil.which("nft") is None:
        pytest.skip("needs unshare and nft")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("cannot create a network namespace here")
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(document))
    return subprocess.run(
        ["unshare", "-rn", "nft", "-j", "--check", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_nft_accepts_install_then_an_engine_step(name: str, tmp_path: Path) -> None:
    prefix = CONFIGS[name].ban.ipv6_prefix
    commands = (
        install_commands(CONFIGS[name])
        + commands_for(STEP)
        + commands_for(BAN_STEP, ipv6_prefix=prefix)
        + remove_table_commands()
    )
    result = _nft_check(transaction(commands), tmp_path)
    assert result.returncode == 0, result.stderr


def test_nft_accepts_a_prefix_migration(tmp_path: Path) -> None:
    old = install_commands(Config()) + commands_for(BAN_STEP, ipv6_prefix=64)
    new = install_commands(CONFIGS["install_ban_guarded"]) + ban6_migration_commands(
        [("ban6_64", [(net("2001:db8:1:2::/64"), 1200.0, 2)])], [net("2001:db8:9::5/128")]
    )
    result = _nft_check(transaction(old + new), tmp_path)
    assert result.returncode == 0, result.stderr


def test_nft_check_can_fail(tmp_path: Path) -> None:
    """The check above is meaningful: a delete of a missing element is refused by the kernel."""
    bad = [*install_commands(Config()), revoke_commands(ip("192.0.2.1"))[1]]
    result = _nft_check(transaction(bad), tmp_path)
    assert result.returncode != 0
    assert "No such file or directory" in result.stderr
