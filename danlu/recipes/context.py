"""The context `danlu demo` hands each stage: where to write, the parsed flags, what earlier stages left."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DemoContext:
    out: Path
    args: argparse.Namespace
    state: dict[str, Any] = field(default_factory=dict)  # objects handed from stage to stage
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> its metrics
    sections: list[str] = field(default_factory=list)  # report.md sections, in order

    def say(self, message: str) -> None:
        if not self.args.quiet:
            print(message, flush=True)
