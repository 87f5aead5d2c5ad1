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

from guardian.actions import Notice, OpenGrant, RefreshGrant, RevokeGrant
from guardian.config import TABLE_NAME, Config, Guard
from guardian.effectors.nft_rules import (
    commands_for,
    grant_commands,
    install_commands,
    kernel_timeout,
    remove_table_commands,
    revoke_commands,
    transaction,
)

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
}

STEP = (
    OpenGrant(ip("192.0.2.10"), 30.0, "ssh"),
    Notice("grant_opened", ip("192.0.2.10"), "ssh"),
    RefreshGrant(ip("2001:db8::10"), 0.2),
    RevokeGrant(ip("::ffff:192.0.2.11"), "close sequence"),
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


def test_remove_table_matches_golden() -> None:
    document = transaction(remove_table_commands())
    assert document == golden("remove_table", document)


def test_install_never_touches_grant_sets() -> None:
    """A re-install must keep grants: allow4/allow6 are only ever (idempotently) declared."""
    for config in CONFIGS.values():
        for command in install_commands(config):
            ((verb, body),) = command.items()
            ((kind, obj),) = body.items()
            if obj.get("name") in ("allow4", "allow6") or obj.get("set") in ("allow4", "allow6"):
                assert (verb, kind) == ("add", "set"), command


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
    reset = json.dumps(install_commands(Config(guard=Guard(answer="reset"))))
    drop = json.dumps(install_commands(Config(guard=Guard(answer="drop"))))
    assert '"tcp reset"' in reset and '"drop"' not in reset
    assert '"drop": null' in drop and "reject" not in drop


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
    commands = install_commands(CONFIGS[name]) + commands_for(STEP) + remove_table_commands()
    result = _nft_check(transaction(commands), tmp_path)
    assert result.returncode == 0, result.stderr


def test_nft_check_can_fail(tmp_path: Path) -> None:
    """The check above is meaningful: a delete of a missing element is refused by the kernel."""
    bad = [*install_commands(Config()), revoke_commands(ip("192.0.2.1"))[1]]
    result = _nft_check(transaction(bad), tmp_path)
    assert result.returncode != 0
    assert "No such file or directory" in result.stderr
