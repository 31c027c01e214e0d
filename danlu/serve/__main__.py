"""`python -m danlu.serve --model PATH ...`: the same as `danlu serve` (see danlu/cli/serve.py)."""

from __future__ import annotations

import argparse
import sys

from danlu.cli.serve import register
from danlu.errors import DanluError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="danlu")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except DanluError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
