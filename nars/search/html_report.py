"""``nars report``: a run as one self-contained HTML page, to read while it searches.

One file, nothing to fetch: the plots are PNGs inside the page (base64 data URIs) and the
style is inline, so the page can be mailed, archived or opened from a cluster's shared disk.
While the run is not finished the page reloads itself (``<meta http-equiv="refresh">``) and
``nars report --watch`` rewrites it, so a browser left on it follows the search.
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Container, Iterable, Mapping, Sequence

from nars.engine.events import read_metrics
from nars.errors import UserError
from nars.fileio import atomic_write_text
from nars.search.export import pick
from nars.search.fronts import SHOWN, X_AXES, axis_label, cost_of, fronts, seed_means, series
from nars.search.halving import MIN_PAIRS as MIN_TAU_POINTS, rung_pairs
from nars.search.paired import paired_images, per_image
from nars.search.pareto import plot_front
from nars.search.store import STATUSES, open_run
from nars.search.tensorboard_log import SUPERNET_DIR

REFRESH_S = 30  # how often a live page reloads itself when nobody said
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1240px; padding: 0 16px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.muted { color: #666; } .live { color: #b35900; } .plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots img { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 12.5px; } td, th { padding: 3px 7px; border-bottom: 1px solid #eee; }
th { background: #f4f4f4; text-align: left; position: sticky; top: 0; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.winner td { background: #fff4d6; } .s-failed { color: #b00020; } .s-pruned { color: #777; } .s-running { color: #b35900; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; } dl.summary dt { color: #666; }
.choices { columns: 4 200px; font: 12px monospace; } pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _figure_png(draw: Callable[[Any], None], size: tuple[float, float] = (7, 4.5)) -> bytes:
    """A matplotlib figure (Agg) drawn by ``draw(ax)``, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _front_png(run_dir: Path, f: dict[str, Any], x: str) -> bytes:
    """``nars pareto --plot``'s figure with stage 2's predicted front added (at its predicted AP)."""
    s = series(f, x)
    key = "mflops" if x == "mflops" else "latency_ms"
    predicted = [p for p in f["predicted"] if p.get(key) is not None]
    if predicted:
        s["groups"]["stage 2 predicted front (predicted AP)"] = ([p[key] for p in predicted],
                                                                 [p["pred_segm_AP"] for p in predicted])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "front.png"
        plot_front(path, s["groups"], s["measured"], s["reference"], f"{run_dir.name}: fronts",
                   xlabel=axis_label(f, x))
        return path.read_bytes()


def _curves_png(trials: Sequence[dict[str, Any]]) -> bytes:
    def draw(ax: Any) -> None:
        rounds = sorted({t["round"] for t in trials})
        for t in trials:
            colour = f"C{rounds.index(t['round']) % 10}"
            points = sorted((r["iteration"], r["segm_AP"]) for r in t["history"] if "segm_AP" in r)
            ax.plot(*zip(*points), marker="o", ms=3, lw=1, alpha=0.8, color=colour)
        for i, r in enumerate(rounds):
            ax.plot([], [], color=f"C{i % 10}", label=f"round {r + 1}")
        ax.set(xlabel="iteration", ylabel="segm AP", title="stage 1 learning curves (one line per trial)")
        ax.legend(fontsize=8)

    return _figure_png(draw)


def _fit_png(pairs: Sequence[tuple[float, float]]) -> bytes:
    def draw(ax: Any) -> None:
        xs, ys = zip(*pairs)
        ax.scatter(xs, ys, s=30)
        low, high = min(xs + ys), max(xs + ys)
        ax.plot([low, high], [low, high], color="grey", lw=1, ls="--", label="measured = predicted")
        ax.set(xlabel="predicted segm AP (stage 2)", ylabel="measured segm AP (verified)",
               title="the predictor on the verified candidates")
        ax.legend(fontsize=8)

    return _figure_png(draw, size=(5.5, 4.5))


def _kendall(pairs: Sequence[tuple[float, float]]) -> str | None:
    """Kendall's tau and its p-value over (x, y) pairs, as text; None when there are too few to
    say anything."""
    if len(pairs) < MIN_TAU_POINTS:
        return None
    from scipy.stats import kendalltau

    tau, p = kendalltau(*zip(*pairs))
    return f"Kendall's tau {tau:.2f} (p = {p:.2g})"


def _fit(trials: Sequence[dict[str, Any]], predicted: Sequence[dict[str, Any]]) -> tuple[list[tuple[float, float]], str]:
    """(predicted, measured) segm AP of the verified candidates on stage 2's front, and what
    Kendall's tau over them says."""
    by_id = {p["id"]: p["pred_segm_AP"] for p in predicted}
    pairs = [(by_id[t["candidate_id"]], t["metrics"]["segm_AP"]) for t in trials
             if t["stage"] == "verify" and t["status"] == "done" and t["candidate_id"] in by_id
             and "segm_AP" in (t["metrics"] or {})]
    agreement = _kendall(pairs)
    if agreement is None:
        return pairs, (f"Too few points for a rank correlation: {len(pairs)} verified candidate(s) with a prediction "
                       f"(Kendall's tau needs at least {MIN_TAU_POINTS}).")
    return pairs, (f"{agreement} over {len(pairs)} verified candidates: how well stage 2's "
                   "predicted ranking held at the full budget. The predictor learnt stage 1's short-budget APs, "
                   "so only the ranking, not the scale, is comparable.")


def _paired(run_dir: Path, trials: Sequence[dict[str, Any]]) -> str:
    """Each verified trial (and a recipe trial that beat it) against the reference, image by
    image (``nars.search.paired``): the same images, so the differences pair up."""
    ref = next((t for t in trials if t["stage"] == "reference" and t["status"] == "done"), None)
    base = None if ref is None else per_image(run_dir / "trials" / ref["id"])
    if base is None:
        return '<p class="muted">No reference with per-image results yet.</p>'
    rows = []
    for t in trials:
        if t["stage"] not in ("verify", "recipe") or t["status"] != "done":
            continue
        ours = per_image(run_dir / "trials" / t["id"])
        d = None if ours is None else paired_images(ours, base)
        if d is not None:
            rows.append((_e(t["candidate_id"]), _e(t["stage"]), _num(t["mflops"], 1), _num(t["metrics"].get("segm_AP")),
                         f"{d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]", f"{d['p']:.2g}",
                         f"{d['better']} / {d['worse']} of {d['images']}"))
    if not rows:
        return '<p class="muted">No verified trial with per-image results yet.</p>'
    return (f"<p>Segm AP per validation image minus the reference's ({_e(ref['candidate_id'])}, segm AP "
            f"{_num(ref['metrics'].get('segm_AP'))}) on the same images: the mean with its 95% bootstrap interval, "
            "Wilcoxon's signed-rank p-value, and the images each did better on. An interval across 0 means this "
            "validation set cannot tell the two apart.</p>"
            + _table(("candidate", "stage", "MFLOPs", "segm AP", "per-image difference [95% CI]", "p", "better / worse"),
                     rows, {2, 3, 5}))


def _baseline(row: Mapping[str, Any] | None) -> str:
    """A baseline's summary: id, segm AP, MFLOPs."""
    if row is None:
        return "-"
    seeds = f", mean of {row['seeds']} seeds" if row["seeds"] > 1 else ""
    return (f"{_e(row['id'])} ({_num(row['segm_AP'])} segm AP{seeds}, {_num(row['mflops'], 1)} MFLOPs, "
            f"{row['iterations']} iterations)")


def _verify_gate(gate: Mapping[str, Any] | None) -> str:
    """What verification trained, and why (``stage1.predictor_gate``, as stored before it trained)."""
    if gate is None:
        return ""
    if gate["min_tau"] is None:
        why = "verify.min_tau is null"
    else:
        tau = "not measurable" if gate["tau"] is None else f"{gate['tau']:.2f}"
        why = f"out-of-fold Kendall tau {tau} on {gate['results']} stage-1 results; verify.min_tau {gate['min_tau']:g}"
    what = ("the predictor's front (its best, stage 1's best measured, then spread along it)" if gate["trusted"]
            else "stage 1's best measured candidates, not the predictor's extrapolations")
    return f"<p>Verification trained {_e(what)}: {_e(why)}.</p>"


def _paired_halving(paired: Mapping[str, list[Mapping[str, Any]]], halving: Mapping[str, list[list[str]]],
                    max_p: float | None) -> str:
    """Each deciding rung's per-image comparisons with its leader (meta ``halving_paired``) and
    what became of each trial (meta ``halving``)."""
    rows = [(int(r) + 1, k + 1, _e(tid), "-" if d is None else
             f"{d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]", "-" if d is None else f"{d['p']:.3f}",
             "went on" if tid in halving[r][k] else "stopped")
            for r, rungs in sorted(paired.items(), key=lambda kv: int(kv[0])) for k, rung in enumerate(rungs)
            if k < len(halving.get(r, [])) for tid, d in rung.items()]
    if not rows or max_p is None:
        return ""
    return (f"<p>Each deciding rung compared its trials with its leader image by image: a trial outside the best "
            f"1/rf stopped only when worse there at Wilcoxon p &lt; {max_p:g} (stage1.early_stop.wilcoxon_p).</p>"
            + _table(("round", "rung", "trial", "per-image difference from the leader [95% CI]", "p", "then"),
                     rows, {0, 1, 4}))


def _fidelity(trials: Sequence[dict[str, Any]], gate: Mapping[str, list[dict[str, Any]]], min_tau: float | None) -> str:
    """This run's own rung fidelity (``halving.rung_pairs``): Kendall's tau of each rung's AP
    against the AP the same trials reached later; and, per round, whether each rung decided
    (``halving.rung_gate``, as stored before the round trained)."""
    rows = [(_e(what), len(pairs), _e(_kendall(pairs) or f"too few pairs (tau needs {MIN_TAU_POINTS})"))
            for what, pairs in rung_pairs(trials).items()]
    if not rows:
        html = '<p class="muted">No trial has reached two measured points yet.</p>'
    else:
        html = ("<p>How well each early look ranked the candidates as training longer did. A rung whose tau is "
                "low decides on noise: more iterations per trial (stage1.max_iter) or a later grace period would "
                "help.</p>" + _table(("from -> to", "pairs", "agreement"), rows, {1}))
    decisions = [(int(r) + 1, g["iteration"], g["pairs"], "-" if g["tau"] is None else f"{g['tau']:.2f}",
                  "decided (pruned the worst)" if g["used"] else "trained through")
                 for r, gates in sorted(gate.items(), key=lambda kv: int(kv[0])) for g in gates]
    if decisions:
        rule = ("every rung decides (stage1.early_stop.min_tau is null)" if min_tau is None else
                f"a rung decides once earlier rounds' trials gave it Kendall tau >= {min_tau:g} over at least "
                f"{MIN_TAU_POINTS} pairs (stage1.early_stop.min_tau)")
        html += f"<p>Early stopping per round: {_e(rule)}.</p>" + _table(
            ("round", "rung (iteration)", "pairs then", "tau then", "rung"), decisions, {0, 1, 2, 3})
    return html


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Container[int],
           marked: Container[int] = ()) -> str:
    """An HTML table of ready-made cells: ``numeric`` columns right-aligned, the rows numbered
    in ``marked`` highlighted."""
    body = []
    for r, cells in enumerate(rows):
        tds = "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(cells))
        body.append(f'<tr{" class=winner" if r in marked else ""}>{tds}</tr>')
    return (f"<table><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


_NUMERIC = range(4, 11)  # the trial table's right-aligned columns


def _trial_table(trials: Sequence[dict[str, Any]], winner: str | None) -> str:
    head = ("trial", "stage", "round", "status", "segm AP", "bbox AP", "MFLOPs", "params", "latency ms<br>pred / meas",
            "iterations<br>reached / max", "wall s", "choices")
    rows = []
    for t in trials:
        m = t["metrics"] or {}
        reached = max((r["iteration"] for r in t["history"]), default=None)
        latency = (f"{_num(t['latency_ms'], 1)} / {_num(t['measured_latency_ms'], 1)}"
                   if t["latency_ms"] is not None or t["measured_latency_ms"] is not None else "-")
        choices = " ".join(f"{k}={t['candidate'][k]}" for k in SHOWN if k in t["candidate"])
        note = f' <span class="s-failed">{_e(t["error"])}</span>' if t["error"] else ""
        cells = [_e(t["id"]), _e(t["stage"]), t["round"] + 1, f'<span class="s-{t["status"]}">{t["status"]}</span>',
                 _num(m.get("segm_AP")), _num(m.get("bbox_AP")), _num(t["mflops"], 1),
                 "-" if t["params"] is None else f"{t['params']:,}", latency,
                 f"{reached if reached is not None else '-'} / {t['max_iter']}", _num(t["wall_time"], 0),
                 _e(choices) + note]
        rows.append(cells)
    return _table(head, rows, _NUMERIC, [i for i, t in enumerate(trials) if t["id"] == winner])


_SUPERNET_LOSSES = ("loss_largest", "loss_smallest", "kd_rpn", "kd_cls", "kd_mask")


def _supernet_curves_png(metrics: Sequence[Mapping[str, Any]]) -> bytes:
    def draw(ax: Any) -> None:
        for name in _SUPERNET_LOSSES:
            points = [(r["iteration"], r[name]) for r in metrics if name in r]
            if points:
                ax.plot(*zip(*points), lw=1, label=name)
        lr = ax.twinx()
        lr.plot([r["iteration"] for r in metrics], [r["lr"] for r in metrics], color="grey", ls=":", lw=1,
                label="lr (right axis)")
        lr.set_ylabel("learning rate")
        ax.set(xlabel="iteration", ylabel="loss", title="supernet training (kd_*: the students' mean distillation terms)")
        lines = ax.get_lines() + lr.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], fontsize=8)

    return _figure_png(draw)


def _zero_shot_png(zero_shot: Sequence[Mapping[str, Any]]) -> bytes:
    def draw(ax: Any) -> None:
        ax.scatter([z["mflops"] for z in zero_shot], [z["segm_AP"] for z in zero_shot], s=14)
        ax.set(xlabel=X_AXES["mflops"], ylabel="zero-shot segm AP",
               title=f"{len(zero_shot)} sub-networks, straight from the supernet's weights")

    return _figure_png(draw, size=(5.5, 4.5))


def _zero_shot_pairs(trials: Sequence[dict[str, Any]],
                     zero_shot: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], float]]:
    """(zero-shot record, measured segm AP) of each finished stage-1 trial whose architecture
    (its candidate restricted to a record's keys) is a zero-shot record's."""
    pairs = []
    for t in trials:
        if t["stage"] != "stage1" or t["status"] != "done" or "segm_AP" not in (t["metrics"] or {}):
            continue
        pairs += [(z, t["metrics"]["segm_AP"]) for z in zero_shot
                  if z["choices"] == {k: t["candidate"].get(k) for k in z["choices"]}]
    return pairs


def _supernet(metrics: Sequence[Mapping[str, Any]], zero_shot: Sequence[Mapping[str, Any]],
              trials: Sequence[dict[str, Any]]) -> str:
    """The supernet section: its training curves, the zero-shot results and how their ranking
    held for the stage-1 trials of the same architectures."""
    plots = []
    if metrics:
        plots.append(_img(_supernet_curves_png(metrics), "supernet training losses and learning rate"))
    if zero_shot:
        plots.append(_img(_zero_shot_png(zero_shot), "zero-shot segm AP against MFLOPs"))
    out = f'<div class="plots">{"".join(plots)}</div>' if plots else ""
    if not metrics:
        out += '<p class="muted">The supernet has not logged a training step yet.</p>'
    if not zero_shot:
        return out + '<p class="muted">No sub-network has been evaluated zero-shot yet.</p>'
    pairs = _zero_shot_pairs(trials, zero_shot)
    agreement = _kendall([(z["segm_AP"], measured) for z, measured in pairs])
    if agreement is not None:
        free = _kendall([(z["mflops"], measured) for z, measured in pairs])  # the proxy that costs nothing
        out += (f"<p>{agreement} between the zero-shot segm AP and the measured one of "
                f"{len(pairs)} stage-1 trials of the same architectures: how well the supernet's ranking held when "
                "each was trained on its own (with its own recipe, so only the ranking is comparable). "
                f"MFLOPs alone, the proxy that costs nothing, ranks them at {free}.</p>")
    rows = [(_e(z["id"]), _num(z["mflops"], 1), f"{z['params']:,}", _num(z["bbox_AP"]), _num(z["segm_AP"]))
            for z in sorted(zero_shot, key=lambda z: z["mflops"])]
    table = _table(("sub-network", "MFLOPs", "params", "bbox AP", "segm AP"), rows, range(1, 5))
    return out + f"<details><summary>the {len(zero_shot)} zero-shot evaluations, by MFLOPs</summary>{table}</details>"


def _winner(run_dir: Path, trials: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The trial ``nars export --best`` would take, and its section's HTML."""
    try:
        best = pick(trials, None, None)
    except UserError:
        return None, '<p class="muted">No verified trial has finished yet.</p>'
    m = best["metrics"]
    mean, n = seed_means(trials).get(best["candidate_id"], (None, 1))
    seeds = f" (mean over {n} seeds: {_num(mean)})" if n > 1 else ""
    choices = "".join(f"<div>{_e(k)} = {_e(v)}</div>" for k, v in sorted(best["candidate"].items()))
    config = Path(run_dir) / "trials" / best["id"] / "config.yaml"
    yaml = (f"<details><summary>its training config ({_e(config)})</summary><pre>{_e(config.read_text())}</pre></details>"
            if config.is_file() else "")
    return best, (
        f"<p><b>{_e(best['candidate_id'])}</b> (trial {_e(best['id'])}): segm AP {_num(m.get('segm_AP'))}{seeds}, "
        f"bbox AP {_num(m.get('bbox_AP'))}, {_num(best['mflops'], 1)} MFLOPs, {best['params']:,} params, "
        f"{best['max_iter']} iterations: the best verified segm AP, as <code>nars export {_e(run_dir)} --best "
        f"--out DIR</code> takes it.</p><div class=choices>{choices}</div>{yaml}")


def build(run_dir: Path, refresh_s: int = REFRESH_S) -> tuple[str, dict[str, Any]]:
    """The page and a summary of the run (``state``, ``counts`` by status)."""
    run_dir = Path(run_dir)
    store = open_run(run_dir)
    try:
        trials = store.trials()
        experiment = store.get_meta("experiment") or {}
        state = store.get_meta("state") or "starting"
        predicted = store.get_meta("stage2_front") or []
        zero_shot = store.get_meta("zero_shot") or []
        gate = store.get_meta("rung_gate") or {}
        verify_gate = store.get_meta("verify_gate")
        halving, halving_paired = store.get_meta("halving") or {}, store.get_meta("halving_paired") or {}
    finally:
        store.close()
    counts = Counter(t["status"] for t in trials)
    live = state != "finished"
    best, winner_html = _winner(run_dir, trials)

    plots = []
    f = fronts(run_dir, "mflops")
    if f["trials"] or predicted:
        plots.append(_img(_front_png(run_dir, f, "mflops"), "segm AP against MFLOPs: trials, fronts, reference"))
        if any(cost_of(r, "latency") is not None for r in f["trials"]):
            plots.append(_img(_front_png(run_dir, fronts(run_dir, "latency"), "latency"),
                              "segm AP against latency: trials, fronts, reference"))
    fronts_html = (f'<div class="plots">{"".join(plots)}</div>' if plots
                   else '<p class="muted">No trial has been measured yet.</p>')
    measured = ", ".join(f"{_e(r['id'])} ({_num(r['segm_AP'])} AP, {_num(r['mflops'], 1)} MFLOPs)" for r in f["measured"])
    fronts_html += (f"<p>Measured front (verified trials no other beats on both segm AP and MFLOPs): {measured or '-'}. "
                    f"Stage 2's predicted front: {len(predicted)} candidates.</p>")

    curved = [t for t in trials if t["stage"] == "stage1" and any("segm_AP" in r for r in t["history"])]
    curves_html = _img(_curves_png(curved), "stage 1 learning curves") if curved else \
        '<p class="muted">No stage-1 trial has reported yet.</p>'
    pairs, tau = _fit(trials, predicted)
    early_stop = experiment.get("stage1", {}).get("early_stop", {})
    fidelity_html = (_fidelity(trials, gate, early_stop.get("min_tau"))
                     + _paired_halving(halving_paired, halving, early_stop.get("wilcoxon_p")))
    fit_html = (f'<div class="plots">{_img(_fit_png(pairs), "predicted against measured segm AP")}</div>'
                if pairs else "") + f"<p>{_e(tau)}</p>" + _verify_gate(verify_gate)

    supernet_metrics = read_metrics(run_dir / SUPERNET_DIR)
    supernet_html = (f"<h2>Supernet</h2>{_supernet(supernet_metrics, zero_shot, trials)}"
                     if (run_dir / SUPERNET_DIR).is_dir() or zero_shot else "")

    by_status = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
    by_stage = ", ".join(f"{n} {s}" for s, n in Counter(t["stage"] for t in trials).items())
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if live else ""
    status_line = (f'<span class="live">live: the run is at <b>{_e(state)}</b>; this page reloads every '
                   f'{refresh_s} s</span>' if live else "finished")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<title>NARS report: {_e(run_dir.name)}</title><style>{_STYLE}</style></head><body>
<h1>NARS search {_e(experiment.get("name", run_dir.name))}</h1>
<p class="muted">{_e(run_dir.resolve())}, written {now}</p>
<dl class="summary">
<dt>state</dt><dd>{status_line}</dd>
<dt>space</dt><dd>{_e(experiment.get("space", "-"))}</dd>
<dt>trials</dt><dd>{len(trials)}: {by_status or "none yet"} ({by_stage or "-"})</dd>
<dt>best verified</dt><dd>{_e(best["candidate_id"]) + f" ({_num(best['metrics'].get('segm_AP'))} segm AP)" if best else "-"}</dd>
<dt>reference</dt><dd>{_baseline(f["reference"])}</dd>
<dt>tuned parent</dt><dd>{_baseline(f["tuned"]) if f["tuned"] else "no recipe stage, or no recipe beat the reference's"}</dd>
</dl>
<h2>Fronts</h2>{fronts_html}
<h2>Winner</h2>{winner_html}
<h2>Against the reference, image by image</h2>{_paired(run_dir, trials)}
<h2>Predictor fit</h2>{fit_html}
<h2>Learning curves</h2>{curves_html}
<h2>Rung fidelity</h2>{fidelity_html}
{supernet_html}
<h2>Trials</h2>{_trial_table(trials, best["id"] if best else None)}
</body></html>
"""
    return page, {"state": state, "counts": counts, "trials": len(trials)}


def write(run_dir: Path, out: Path, refresh_s: int = REFRESH_S) -> dict[str, Any]:
    """Build the page and write it atomically (a browser reloading it never reads half a page)."""
    if not Path(out).parent.is_dir():
        raise UserError(f"--out {out}: the folder {Path(out).parent} does not exist")
    page, summary = build(run_dir, refresh_s)
    atomic_write_text(out, page)
    return summary
