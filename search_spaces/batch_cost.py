"""The analytic cost (MFLOPs, params) of many candidates at once, on code rows
(``SearchSpace.unit_codes``), with ``nars.model.cost``'s own functions.

Why: stage 2 scores about a million candidates, and the scalar path (fill the templates,
build the ArchSpec, walk every block in Python) takes ~140 µs each. A block's cost depends
only on its few choices and its input (channels, size), which take few distinct values: each
templated block is costed once per distinct combination (``stages_cost``, memoised over the
search) and the results gathered column-wise; the layers outside the blocks are
``head_costs`` on the arrays. The config side (``cost_settings``: input size, RoIs,
anchors...) is taken once per distinct combination of the parameters it reads. The same
functions, so the scalar model's figures to the bit (tests/test_evolution.py checks every
shipped space).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from nars.model.arch import BlockSpec
from nars.model.cost import cost_settings, head_costs, stages_cost
from search_spaces.space import Ref, SearchSpace, _refs

Values = Mapping[str, np.ndarray]
_FIELDS = (int, bool, int, int, int, float)  # BlockSpec's kernel, se, out_channels, stride, repeats, expansion


def _distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each distinct row's first occurrence, each row's distinct index): a row key
    built column by column, re-numbered after each so it stays small (many times faster than
    ``np.unique(axis=0)``)."""
    key = np.zeros(len(rows), dtype=np.int64)
    for column in rows.T:
        _, codes = np.unique(column, return_inverse=True)
        _, key = np.unique(key * (codes.max() + 1) + codes, return_inverse=True)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return first, inverse.ravel()


class BatchCost:
    """``SearchSpace.cost`` of code rows: ``cost(codes) -> (mflops [N] float64, params [N] int64)``
    for the space as given (bound or not)."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.columns = {p.name: j for j, p in enumerate(space.params)}
        self.config_refs = sorted({r for t in space.cost_templates.values() for r in _refs(t)})
        self._settings: dict[tuple[float, ...], dict[str, Any]] = {}
        self._blocks: dict[tuple[str, tuple[float, ...]], tuple[int, int, int, int, int]] = {}

    def __call__(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = np.atleast_2d(codes)
        n = len(codes)
        values = {p.name: p.numbers(codes[:, j]) for j, p in enumerate(self.space.params)
                  if p.name in self.space.arch_names}
        s = self._settings_of(codes)
        div = np.broadcast_to(s["divisor"], n)
        arch = self.space.arch_template
        trunk_p, trunk_m, feat, h, w = self._stages(arch["trunk"], values, np.full(n, 3), s["h"], s["w"], div)
        rpn_p, rpn_m, rc, fh, fw = self._stages(arch["rpn"], values, feat, h, w, div)
        box_p, box_m, bc, _, _ = self._stages(arch["box_head"], values, feat, s["box_resolution"],
                                              s["box_resolution"], div)
        mask_p, mask_m, mc, mh, mw = self._stages(arch["mask_head"], values, feat, s["mask_resolution"],
                                                  s["mask_resolution"], div)
        heads = head_costs(rc, fh, fw, bc, mc, mh, mw, s["num_classes"], s["num_anchors"])
        rpn_p, rpn_m = rpn_p + heads["rpn"][0], rpn_m + heads["rpn"][1]
        predictor_p, predictor_m = heads["box_predictor"]
        mask_p, mask_m = mask_p + heads["mask_logits"][0], mask_m + heads["mask_logits"][1]
        params = trunk_p + rpn_p + box_p + predictor_p + mask_p
        mflops = (trunk_m / 1e6 + rpn_m / 1e6 + s["rois"] * ((box_m + predictor_m) / 1e6)
                  + s["mask_rois"] * (mask_m / 1e6))
        return np.broadcast_to(np.asarray(mflops, dtype=float), n).copy(), np.broadcast_to(params, n).astype(np.int64)

    def _stages(self, stages: list[list[tuple[Any, ...]]], values: Values, cin: Any, h: Any, w: Any,
                divisor: np.ndarray) -> tuple[Any, Any, Any, Any, Any]:
        """(params, multiply-adds, out channels, h, w) of templated stages, row by row."""
        params = macs = 0
        n = len(divisor)
        for block in (b for stage in stages for b in stage):
            kind, *fields = block
            columns = [np.broadcast_to(values[v.name] if isinstance(v, Ref) else v, n) for v in fields]
            rows = np.stack(columns + [np.broadcast_to(x, n) for x in (cin, h, w, divisor)], axis=1).astype(float)
            first, inverse = _distinct_rows(rows)
            table = np.array([self._block(kind, tuple(k)) for k in rows[first].tolist()], dtype=np.int64)
            p, m, cin, h, w = table[inverse].T
            params, macs = params + p, macs + m
        return params, macs, cin, h, w

    def _block(self, kind: str, key: tuple[float, ...]) -> tuple[int, int, int, int, int]:
        """``stages_cost`` of one templated (possibly repeated) block: params, multiply-adds,
        out channels, out h, out w; memoised, as the same combinations recur in every batch."""
        found = self._blocks.get((kind, key))
        if found is None:
            spec = BlockSpec(kind, *(t(v) for t, v in zip(_FIELDS, key[:6])))
            cost, cout, ho, wo = stages_cost(((spec,),), *(int(v) for v in key[6:9]), int(key[9]))
            found = self._blocks[(kind, key)] = (cost.params, cost.macs, cout, ho, wo)
        return found

    def _settings_of(self, codes: np.ndarray) -> dict[str, Any]:
        """``cost_settings`` per row (scalars when the space fixes them), ``input_size`` as h and w."""
        if not self.config_refs:
            return self._setting(())
        keys, inverse = np.unique(codes[:, [self.columns[r] for r in self.config_refs]], axis=0,
                                  return_inverse=True)
        rows = [self._setting(tuple(k)) for k in keys.tolist()]
        return {name: np.asarray([r[name] for r in rows])[inverse.ravel()] for name in rows[0]}

    def _setting(self, key: tuple[float, ...]) -> dict[str, Any]:
        if key not in self._settings:
            params = [self.space.params[self.columns[r]] for r in self.config_refs]
            candidate = {p.name: p.value(code) for p, code in zip(params, key)}
            s = cost_settings(self.space.cost_config(candidate))
            s["h"], s["w"] = s.pop("input_size")
            self._settings[key] = s
        return self._settings[key]
