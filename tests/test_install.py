# `guardian install` / `guardian uninstall` under a temporary --prefix (never the real /etc):
# units with ExecStart naming the running guardian, a config skeleton that parses and is never
# overwritten, /var/lib/guardian 0700, next steps printed; uninstall takes it all back.
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from guardian.cli import main
from guardian.config import Config
from guardian.configfile import parse_config
from guardian.install import (
    CONFIG_DEST,
    CONFIG_SKELETON,
    STATE_DEST,
    UNIT_NAMES,
    install,
    uninstall,
)


def test_install_puts_everything_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["install", "--prefix", str(tmp_path), "--guardian-bin", "/opt/g/bin/guardian"]) == 0
    )
    out = capsys.readouterr().out
    for name in UNIT_NAMES:
        assert (tmp_path / "etc/systemd/system" / name).is_file()
    service = (tmp_path / "etc/systemd/system/guardian.service").read_text()
    assert "ExecStart=/opt/g/bin/guardian run --config /etc/guardian/guardian.toml" in service
    config = tmp_path / CONFIG_DEST
    assert config.read_text() == CONFIG_SKELETON
    state = tmp_path / STATE_DEST
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert "systemctl daemon-reload" in out and "systemctl enable --now guardian.service" in out


def test_the_skeleton_is_the_default_config() -> None:
    assert parse_config(CONFIG_SKELETON, "") == Config()


def test_install_never_overwrites_a_config(tmp_path: Path) -> None:
    config = tmp_path / CONFIG_DEST
    config.parent.mkdir(parents=True)
    config.write_text("[guard]\nports = [2222]\n")
    report = install(tmp_path, "/x/guardian")
    assert config in report.kept and config not in report.written
    assert config.read_text() == "[guard]\nports = [2222]\n"


def test_uninstall_removes_what_install_put(tmp_path: Path) -> None:
    install(tmp_path, "/x/guardian")
    removed_table: list[bool] = []
    removed = uninstall(tmp_path, lambda: removed_table.append(True))
    assert removed_table == [True]
    for name in UNIT_NAMES:
        assert not (tmp_path / "etc/systemd/system" / name).exists()
    assert not (tmp_path / CONFIG_DEST).exists() and not (tmp_path / STATE_DEST).exists()
    assert tmp_path / CONFIG_DEST in removed


def test_uninstall_keeps_an_edited_config_and_a_used_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(tmp_path, "/x/guardian")
    (tmp_path / CONFIG_DEST).write_text(CONFIG_SKELETON + "\n# mine\n")
    (tmp_path / STATE_DEST / "state.db").write_text("")
    assert main(["uninstall", "--prefix", str(tmp_path), "--keep-table"]) == 0
    assert (tmp_path / CONFIG_DEST).exists() and (tmp_path / STATE_DEST / "state.db").exists()
    assert "kept" in capsys.readouterr().out
