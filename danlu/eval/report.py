"""Writing evaluation results: `eval.json` and `samples.jsonl`, atomically (`danlu.fileio`).

The plots (confusion-matrix heatmap, PR curves, histograms, bars) live in the one plotting module,
`danlu.plots`; their names are re-exported here for the evaluation code that calls `report.plot_*`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from danlu.fileio import atomic_write_text
from danlu.plots import (  # noqa: F401 - re-exported: evaluation code calls report.plot_*
    bars_figure,
    plot_bars,
    plot_confusion_matrix,
    plot_histogram,
    plot_pr_curves,
    pr_curves_figure,
)


def jsonable(obj: Any) -> Any:
    """numpy scalars/arrays -> Python; NaN and infinity -> None (JSON has no NaN); keys -> str."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    """Write `obj` as indented UTF-8 JSON (NaN becomes null), atomically."""
    text = json.dumps(jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_text(path, text)
    return Path(path)
