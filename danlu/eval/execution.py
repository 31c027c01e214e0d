"""Execution tasks: sample n answers per problem, run each through a checker, report pass@k.

Note 002 names execution tasks (§执行类任务): the answer is judged by running it, not by comparing text.
With n samples of which c pass, the chance that at least one of k samples drawn without replacement passes is
the unbiased estimator of Chen et al. 2021 (Codex):

    pass@k = 1 − C(n − c, k) / C(n, k)

computed as 1 − Π_{i = n−c+1}^{n} (1 − k / i), which never forms the huge binomials (C(200, 100) has 59
digits). The mean over problems is the benchmark figure.

The checker is any `check(problem, sample) -> bool`. Two ready ones: `command_checker` runs a command with the
sample on standard input (exit status 0 = pass, under a time limit), and callers above this layer plug in the
world's arithmetic check (the app layer's safe calculator).
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from typing import Any

from danlu.errors import DanluError

__all__ = ["pass_at_k", "mean_pass_at_k", "ExecutionResult", "evaluate_execution", "command_checker"]

# A command checker's limits: a sample is untrusted model output, so its run is bounded in time and output.
COMMAND_TIMEOUT_S = 10.0
MAX_SAMPLE_BYTES = 1 << 20


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DanluError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem with `n` samples of which `c` passed (module docstring)."""
    n, c, k = _count("n", n), _count("c", c), _count("k", k)
    if n < 1:
        raise DanluError(f"n: needs at least one sample, got {n}")
    if not 0 <= c <= n:
        raise DanluError(f"c: the number of passing samples must be within 0..n={n}, got {c}")
    if not 1 <= k <= n:
        raise DanluError(f"k: must be within 1..n={n} (pass@k needs k ≤ n samples per problem), got {k}")
    if n - c < k:  # every draw of k samples contains a passing one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _check_paired(
    first: tuple[str, Sized], second: tuple[str, Sized], if_empty: str, if_unequal: str
) -> None:
    """A DanluError unless the named sequences are non-empty and of one length (one entry per problem)."""
    (a_name, a), (b_name, b) = first, second
    if len(a) == 0:
        raise DanluError(f"{a_name}: is empty; {if_empty}")
    if len(a) != len(b):
        raise DanluError(f"{a_name} and {b_name}: lengths differ ({len(a)} vs {len(b)}); {if_unequal}")


def mean_pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> float:
    """pass@k averaged over problems (each problem may have its own n)."""
    _check_paired(("num_samples", num_samples), ("num_correct", num_correct),
                  "pass one count per problem", "give one pair of counts per problem")  # fmt: skip
    return sum(pass_at_k(n, c, k) for n, c in zip(num_samples, num_correct, strict=True)) / len(num_samples)


@dataclass(frozen=True)
class ExecutionResult:
    """pass@k for each requested k, and the per-problem passing counts it came from."""

    pass_at: dict[int, float]
    num_samples: tuple[int, ...]
    num_correct: tuple[int, ...]


def evaluate_execution(
    problems: Sequence[Any],
    samples: Sequence[Sequence[str]],
    check: Callable[[Any, str], bool],
    ks: Sequence[int] = (1,),
) -> ExecutionResult:
    """Run `check(problem, sample)` on every sample of every problem and report pass@k for each k in `ks`."""
    _check_paired(("problems", problems), ("samples", samples),
                  "pass at least one problem", "give one list of samples per problem")  # fmt: skip
    num_samples, num_correct = [], []
    for problem, outs in zip(problems, samples, strict=True):
        if isinstance(outs, str):
            raise DanluError("samples: each problem needs a list of samples, got one string")
        num_samples.append(len(outs))
        num_correct.append(sum(bool(check(problem, out)) for out in outs))
    pass_at = {int(k): mean_pass_at_k(num_samples, num_correct, k) for k in ks}
    return ExecutionResult(pass_at, tuple(num_samples), tuple(num_correct))


def command_checker(
    command: Sequence[str], timeout_s: float = COMMAND_TIMEOUT_S
) -> Callable[[Any, str], bool]:
    """A checker that runs `command` (no shell) with the sample on stdin; exit status 0 passes.

    The problem is passed in the environment variable DANLU_PROBLEM (its `str`), so one script can check every
    problem. A sample over MAX_SAMPLE_BYTES, a run over `timeout_s` or a command that cannot start fails the
    sample instead of stopping the evaluation.
    """
    if isinstance(command, str) or not command:
        raise DanluError(f"command: give the program and its arguments as a list, got {command!r}")

    def check(problem: Any, sample: str) -> bool:
        data = sample.encode("utf-8", "surrogatepass")
        if len(data) > MAX_SAMPLE_BYTES:
            return False
        env = {**os.environ, "DANLU_PROBLEM": str(problem)}
        try:
            done = subprocess.run(list(command), input=data, capture_output=True, timeout=timeout_s, env=env)
        except (subprocess.TimeoutExpired, OSError):
            return False
        return done.returncode == 0

    return check
