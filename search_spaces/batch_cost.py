"""The analytic cost (MFLOPs, params) of many candidates at once: ``nars.model.cost``
column-wise in numpy, on code rows (``SearchSpace.unit_codes``).

Why: stage 2 scores about a million candidates, and the scalar path (fill the templates,
build the ArchSpec, integer arithmetic per single block in Python) takes ~140 µs each;
this takes a few. The formulas are ``block_cost``'s and ``model_cost``'s (MFLOPs and params
only); a repeated block is its first block plus ``n - 1`` identical ones (stride 1, so the
same shapes and cost). The config side (``cost_settings``: input size, RoIs, anchors...)
is taken once per distinct combination of the parameters it reads. Integer arithmetic and
float64 give the scalar model's figures to the bit (tests/test_evolution.py checks every
shipped space).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from nars.model.cost import cost_settings
from search_spaces.space import Ref, SearchSpace, _refs

Values = Mapping[str, np.ndarray]


def _divisible(num: Any, divisor: Any) -> np.ndarray:
    """``nars.model.arch.get_divisible_by(num, divisor)`` element-wise."""
    num = np.asarray(num, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):  # divisor <= 0 keeps int(num)
        rounded = np.maximum(np.floor(num / divisor + 0.5), 1) * divisor
        inexact = (divisor > 0) & (np.mod(num, divisor) != 0)
    rounded = np.where(rounded < 0.95 * num, rounded + divisor, rounded)
    return np.maximum(np.where(inexact, rounded, np.trunc(num)), divisor).astype(np.int64)


def _out_size(size: Any, kernel: Any, stride: int) -> Any:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def _single(kind: str, stride: int, k: Any, se: Any, cout: Any, e: Any, cin: Any, h: Any, w: Any,
            divisor: Any) -> tuple[Any, Any, Any, Any]:
    """``block_cost`` of one single block: (params, multiply-adds, out h, out w)."""
    k2 = k * k
    if kind == "conv":
        ho, wo = _out_size(h, k, stride), _out_size(w, k, stride)
        return cin * cout * k2 + cout + 2 * cout, ho * wo * cout * cin * k2, ho, wo
    mid = _divisible(cin * e, divisor)
    pw = mid != cin
    params, macs = np.where(pw, cin * mid + 2 * mid, 0), np.where(pw, h * w * cin * mid, 0)
    if stride == -2:
        h, w = 2 * h, 2 * w
    ho, wo = _out_size(h, k, max(stride, 1)), _out_size(w, k, max(stride, 1))
    se_mid = _divisible(np.trunc(mid * 0.25), divisor)
    params = params + mid * k2 + np.where(se, 2 * mid * se_mid + se_mid + mid, 0) + mid * cout + 2 * cout
    macs = macs + ho * wo * mid * k2 + np.where(se, 2 * mid * se_mid, 0) + ho * wo * mid * cout
    return params, macs, ho, wo


class BatchCost:
    """``SearchSpace._cost`` of code rows: ``cost(codes) -> (mflops [N] float64, params [N] int64)``
    for the space as given (bound or not)."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.columns = {p.name: j for j, p in enumerate(space.params)}
        self.config_refs = sorted({r for t in space._cost_templates.values() for r in _refs(t)})
        self._settings: dict[tuple[float, ...], dict[str, Any]] = {}

    def __call__(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = np.atleast_2d(codes)
        values = {p.name: p.numbers(codes[:, j]) for j, p in enumerate(self.space.params)
                  if p.name in self.space.arch_names}
        s = self._settings_of(codes)
        nc, na, div = s["num_classes"], s["num_anchors"], s["divisor"]
        arch = self.space.arch_template
        trunk_p, trunk_m, feat, h, w = self._stages(arch["trunk"], values, 3, s["h"], s["w"], div)
        rpn_p, rpn_m, rc, fh, fw = self._stages(arch["rpn"], values, feat, h, w, div)
        rpn_p, rpn_m = rpn_p + rc * na * 5 + na * 5, rpn_m + fh * fw * rc * na * 5
        box_p, box_m, bc, _, _ = self._stages(arch["box_head"], values, feat, s["box_resolution"],
                                              s["box_resolution"], div)
        predictor_p = bc * (nc + 1) + (nc + 1) + bc * 4 * nc + 4 * nc
        predictor_m = bc * (nc + 1) + bc * 4 * nc
        mask_p, mask_m, mc, mh, mw = self._stages(arch["mask_head"], values, feat, s["mask_resolution"],
                                                  s["mask_resolution"], div)
        mask_p, mask_m = mask_p + mc * nc + nc, mask_m + mh * mw * mc * nc
        params = trunk_p + rpn_p + box_p + predictor_p + mask_p
        mflops = (trunk_m / 1e6 + rpn_m / 1e6 + s["rois"] * ((box_m + predictor_m) / 1e6)
                  + s["mask_rois"] * (mask_m / 1e6))
        n = len(codes)
        return np.broadcast_to(np.asarray(mflops, dtype=float), n).copy(), np.broadcast_to(params, n).astype(np.int64)

    def _stages(self, stages: list[list[tuple[Any, ...]]], values: Values, cin: Any, h: Any, w: Any,
                divisor: Any) -> tuple[Any, Any, Any, Any, Any]:
        """``stages_cost`` of templated stages: (params, multiply-adds, out channels, h, w)."""
        params = macs = 0
        for block in (b for stage in stages for b in stage):
            kind, k, se, c, stride, n, e = (values[v.name] if isinstance(v, Ref) else v for v in block)
            k, c, n, se = (np.asarray(x).astype(np.int64) for x in (k, c, n, se))
            p1, m1, ho, wo = _single(kind, stride, k, se, c, e, cin, h, w, divisor)
            params, macs = params + p1, macs + m1
            if isinstance(block[5], Ref) or block[5] > 1:  # the repeats: stride 1, input = output
                pr, mr, _, _ = _single(kind, 1, k, se, c, e, c, ho, wo, divisor)
                params, macs = params + (n - 1) * pr, macs + (n - 1) * mr
            cin, h, w = c, ho, wo
        return params, macs, cin, h, w

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
            s = cost_settings(self.space._cost_config(candidate))
            s["h"], s["w"] = s.pop("input_size")
            self._settings[key] = s
        return self._settings[key]
