# The architecture, enforced: imports flow one way (DESIGN.md), and the pure engine imports no I/O.
#
#   events, actions, addresses  <-  config  <-  engine, parsers  <-  watchers, effectors
#       <-  daemon, control, ui  <-  knock client, lab  <-  cli  <-  __main__
#
# A module may import its own layer and any layer below, never one above. The test walks the
# ast.Import / ast.ImportFrom nodes of every file under guardian/ that exists now; a new module
# must be given a layer in LAYERS below (the test says so), so the table cannot silently rot.
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "guardian"

# (rank, module names; a name also covers its submodules). Higher ranks may import lower ones.
# The package root (only the version lives there) is the lowest of all.
LAYERS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        0,
        (
            "guardian",
            "guardian.addresses",
            "guardian.decimal_text",
            "guardian.gc_pause",
            "guardian.events",
            "guardian.actions",
        ),
    ),
    (
        1,
        (
            "guardian.config",
            "guardian.configfile",
            "guardian.knockd_import",
            "guardian.fwknop_import",
        ),
    ),
    # Pure consumers of config and actions: the engine, the parsers (bpf is the packet filter's
    # pure half), the `guardian check` lints and the notice formatter.
    (
        2,
        (
            "guardian.engine",
            "guardian.engine.everyone",
            "guardian.parsers",
            "guardian.bpf",
            "guardian.checks",
            "guardian.notices",
            "guardian.spa_packet",  # builds SPA packets: pure, like the decoder it mirrors
        ),
    ),
    # The wire snapshot is pure, but it is built from the engine's snapshot.
    # notify and journal_log speak to systemd (sd_notify, structured journal records).
    (
        3,
        (
            "guardian.watchers",
            "guardian.effectors",
            "guardian.effectors.hooks",
            "guardian.snapshot",
            "guardian.sshd_probe",
            "guardian.notify",
            "guardian.journal_log",
            "guardian.parallel_scan",  # the parsers on several cores (forked workers)
        ),
    ),
    (
        4,
        (
            "guardian.daemon",
            "guardian.control",
            "guardian.control_client",
            "guardian.ui",
            "guardian.metrics",
            "guardian.install",
        ),
    ),
    # Upper layers that may use anything below the command line.
    (5, ("guardian.knock_client", "guardian.spa_client", "guardian.lab", "guardian.replay")),
    (6, ("guardian.cli",)),
    (7, ("guardian.__main__",)),
)

# What the sans-IO engine must never import (DESIGN.md principle 1, and a clock is I/O too).
ENGINE_FORBIDDEN = frozenset(
    {
        "socket",
        "os",
        "time",
        "select",
        "selectors",
        "subprocess",
        "psutil",
        "pyroute2",
        "systemd",
        "inotify_simple",
        "nftables",
        "rich",
        "logging",
        # Beyond the brief's list, the same spirit: files, processes, threads, signals, clocks.
        "asyncio",
        "threading",
        "multiprocessing",
        "signal",
        "io",
        "sys",
        "pathlib",
        "shutil",
        "tempfile",
        "fcntl",
        "ctypes",
        "datetime",
        "importlib",
    }
)


def rank_of(module: str) -> int | None:
    """The layer of a module; the package root "guardian" covers only itself."""
    for rank, names in LAYERS:
        for name in names:
            if module == name or (name != "guardian" and module.startswith(name + ".")):
                return rank
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package_module(module: str) -> bool:
    """Whether a dotted name is a module or package of ours that exists on disk."""
    if module.split(".")[0] != "guardian":
        return False
    path = PACKAGE_DIR.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name
    line: int


def imports_of(source: str, module: str, is_package: bool) -> list[Import]:
    """Every module a source imports, relative imports resolved against `module`."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(p for p in [*base_parts, node.module or ""] if p)
            else:
                base = node.module or ""
            # `from pkg import name` imports pkg, and the submodule pkg.name when there is one.
            found.append(Import(base, node.lineno))
            found += [
                Import(f"{base}.{alias.name}", node.lineno)
                for alias in node.names
                if is_package_module(f"{base}.{alias.name}")
            ]
        elif isinstance(node, ast.Call):
            # __import__("x") / importlib.import_module("x"): a way around the import statement.
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in {"__import__", "import_module"}:
                arg = node.args[0] if node.args else None
                text = arg.value if isinstance(arg, ast.Constant) else "<dynamic>"
                found.append(Import(str(text), node.lineno))
    return found


def io_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    out = []
    for imp in imports_of(source, module, is_package):
        top = imp.module.split(".")[0]
        if top in ENGINE_FORBIDDEN or imp.module == "<dynamic>":
            out.append(f"{module}:{imp.line}: imports {imp.module}")
    return out


def layer_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    own = rank_of(module)
    if own is None:
        return [f"{module}: has no layer; add it to LAYERS in tests/test_import_direction.py"]
    out = []
    for imp in imports_of(source, module, is_package):
        if imp.module.split(".")[0] != "guardian":
            continue
        target = rank_of(imp.module)
        if target is not None and target > own:
            out.append(f"{module}:{imp.line}: layer {own} imports {imp.module} (layer {target})")
    return out


def package_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def _read(path: Path) -> tuple[str, str, bool]:
    return path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py"


def test_the_engine_exists() -> None:
    """Guard against a vacuous walk: the engine is where this test matters most."""
    assert (PACKAGE_DIR / "engine" / "__init__.py").is_file()
    assert len(list((PACKAGE_DIR / "engine").rglob("*.py"))) >= 2


@pytest.mark.parametrize(
    "path",
    sorted((PACKAGE_DIR / "engine").rglob("*.py")),
    ids=lambda p: str(p.relative_to(PACKAGE_DIR)),
)
def test_engine_imports_no_io(path: Path) -> None:
    assert io_violations(*_read(path)) == []


def test_every_module_has_a_layer_and_imports_flow_one_way() -> None:
    problems = [v for path in package_files() for v in layer_violations(*_read(path))]
    assert problems == []


# -- the checker itself must be able to fail ---------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "import socket",
        "import os.path",
        "from os import path",
        "from time import monotonic",
        "import logging as log",
        "from rich.console import Console",
        "__import__('select')",
        "import importlib",
        "from importlib import import_module\nimport_module(name)",
    ],
)
def test_io_checker_flags(source: str) -> None:
    assert io_violations(source, "guardian.engine.core") != []


def test_io_checker_passes_pure_imports() -> None:
    source = "import heapq\nfrom collections import Counter\nfrom guardian.config import Config"
    assert io_violations(source, "guardian.engine.core") == []


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        ("from guardian.daemon import run", "guardian.engine.core", False, True),
        ("from ..watchers import knock", "guardian.engine.core", False, True),
        ("from . import core", "guardian.engine", True, False),
        ("from .knock import KnockTracker", "guardian.engine.core", False, False),
        ("import guardian.cli", "guardian.lab.netns", False, True),
        ("from guardian.engine import Engine", "guardian.config", False, True),
        ("from guardian.config import Config", "guardian.engine.core", False, False),
        ("from guardian import events", "guardian.engine.core", False, False),
        ("from guardian import cli", "guardian.daemon", False, True),
        ("from guardian.engine import Engine", "guardian.daemon", False, False),
        ("from guardian.daemon import run", "guardian.cli", False, False),
    ],
)
def test_layer_checker(source: str, module: str, is_package: bool, expected: bool) -> None:
    assert bool(layer_violations(source, module, is_package)) is expected


def test_layer_checker_flags_unknown_modules() -> None:
    assert layer_violations("", "guardian.somewhere_new") != []
