"""Tables of measured candidates (CSV, parquet, or a DataFrame such as a search run's
trials, ``nars.search.store.measured_trials``) for training and evaluating predictors.

A row is one trained candidate: either a ``candidate`` column holding its JSON (as the
search store writes it), or one column per parameter (empty for inactive ones; lists and
booleans may be JSON text), plus one column per metric (default ``segm_AP``, ``bbox_AP``).
Rows without every metric (failed trials) are left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from nars.errors import UserError
from search_spaces import SearchSpace

METRICS = ("segm_AP", "bbox_AP")


def read_frame(path: str | Path) -> pd.DataFrame:
    """A CSV or parquet table."""
    path = Path(path)
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}
    if path.suffix.lower() not in readers:
        raise UserError(f"{path}: expected a .csv or .parquet table")
    try:
        return readers[path.suffix.lower()](path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the table ({e})") from None


def _cell(value: Any) -> Any:
    """A table cell as a plain value: numpy scalars unwrapped, JSON text decoded."""
    if isinstance(value, np.ndarray):
        return [_cell(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def read_table(
    table: str | Path | pd.DataFrame, space: SearchSpace, metrics: Sequence[str] = METRICS, name: str | None = None
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """(canonical candidates, metrics [N, len(metrics)]) of the table's complete rows; a
    DataFrame is named ``name`` in errors."""
    frame = table if isinstance(table, pd.DataFrame) else read_frame(table)
    path = name or ("the table" if isinstance(table, pd.DataFrame) else str(table))
    absent = [m for m in metrics if m not in frame.columns]
    if absent:
        raise UserError(f"{path}: no column {absent[0]} (columns: {', '.join(map(str, frame.columns))})")
    frame = frame.dropna(subset=list(metrics))
    if "candidate" in frame.columns:
        raw = [_cell(v) for v in frame["candidate"]]
    else:
        names = [p.name for p in space.params if p.name in frame.columns]
        raw = [{n: _cell(row[n]) for n in names if not _missing(row[n])} for _, row in frame.iterrows()]
    candidates = [space.canonical(c, f"{path}: row {i}") for i, c in zip(frame.index, raw)]
    return candidates, frame[list(metrics)].to_numpy(dtype=np.float64)
