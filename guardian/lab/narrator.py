# The demo's voice (guardian.lab.demo): chapters, the commands a reader could type, what they
# printed, and claims that are checked as they are shown. A claim that does not hold is printed
# with a red cross and remembered, so the demo ends with exit 1 instead of narrating something
# that did not happen. Tool output is printed as plain text: rich must not read an address in
# brackets, or a daemon line, as markup.
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.text import Text


@dataclass
class Narrator:
    console: Console
    pause: float
    failures: list[str] = field(default_factory=list)

    def chapter(self, title: str) -> None:
        time.sleep(self.pause)
        self.console.rule(f"[bold]{title}")

    def say(self, text: str) -> None:
        self.console.print(text)

    def output(self, text: str, style: str = "dim") -> None:
        """Lines a tool printed, indented, never read as markup."""
        for line in text.rstrip("\n").splitlines():
            self.console.print(Text("  " + line, style=style))

    def command(self, host: str, argv: Sequence[str]) -> None:
        self.console.print(Text.assemble((f"{host}$ ", "dim"), (" ".join(argv), "cyan")))

    def check(self, claim: str, ok: bool) -> bool:
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        self.console.print(f"  {mark} ", end="")
        self.console.print(Text(claim))
        if not ok:
            self.failures.append(claim)
        return ok


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05
) -> float | None:
    """Seconds until predicate() held, or None when it did not within `timeout` (bounded)."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start >= timeout:
            return None
        time.sleep(interval)
