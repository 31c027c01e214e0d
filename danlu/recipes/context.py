"""The context `danlu demo` hands each stage: where to write, the parsed flags, what earlier stages left."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

Options = TypeVar("Options")


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

    def options(self, cls: type[Options], **flags: str) -> Options:
        """A recipe's options for this run: each field named in `flags` from that attribute of the parsed flags
        when it is there (else the field's default), and the run's device, seed and progress bars."""
        given = {name: getattr(self.args, flag) for name, flag in flags.items() if hasattr(self.args, flag)}
        return cls(**given, device=self.args.device, seed=self.args.seed, show_progress=not self.args.quiet)
