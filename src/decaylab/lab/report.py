"""A self-contained HTML report rebuilt from a run folder's JSON files alone.

The report reads only what ``docs/run-folder.md`` lists (``config.json``, ``status.json``,
``data.json``, ``sweep.json`` / ``compare.json`` and, per run, ``spec.json``,
``metrics.jsonl``, ``final.json`` and, after ``decaylab compact``, ``compact.json``); it
never opens a ``.pt`` file. ``report.html`` is one file that opens offline: figures are inlined
as base64 PNG, the CSS is inline, and there is no script and no external URL.

Figures are drawn with matplotlib's object-oriented API (rendered by Agg) inside a fixed
style context, so the same JSON gives byte-identical PNGs and the caller's pyplot backend
and rcParams are left untouched. matplotlib is imported only when figures are drawn.
"""
from __future__ import annotations

import base64
import html
import pathlib

from . import figures as figure_table
from . import runfolder
from .figures_runs import label_noise
from .plotting import is_regression

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;padding:0 1em;
color:#222;line-height:1.4}h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;
border-bottom:1px solid #ddd}dl.facts{display:grid;grid-template-columns:max-content 1fr;
gap:.2em 1em}dt{font-weight:600;color:#555}dd{margin:0}
table{border-collapse:collapse;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:right}th{background:#f3f3f3;text-align:center}td.name,td.desc{text-align:left}
tr.best td.metric{font-weight:700;background:#dff3e3}.complete{color:#1a7f37;font-weight:600}
.incomplete{color:#a15c00;font-weight:600}.failed{color:#b00020;font-weight:600}
pre.error{background:#fff0f0;border:1px solid #e0b4b4;padding:.6em;white-space:pre-wrap}
img{max-width:100%;height:auto}figcaption{color:#444;font-size:.95em}
"""


# ----------------------------------------------------------------------------- loading
def load_run_folder(run_dir) -> dict:
    """:func:`runfolder.load` (the one reader of a run folder) plus what a sweep or a compare
    with selection adds: ``"sweep"`` (sweep.json), ``"compare"`` (compare.json) and
    ``"sweeps"`` ([(run name, sweep.json)] of ``sweeps/*/``).

    >>> load_run_folder("runs/digits-compare")["sweeps"]  # doctest: +SKIP
    []
    """
    return {**runfolder.load(run_dir), "sweep": runfolder.read_sweep(run_dir),
            "compare": runfolder.read_compare(run_dir), "sweeps": runfolder.read_sweeps(run_dir)}


def figures(run) -> dict[str, bytes]:
    """The report's figures (:func:`decaylab.lab.figures.draw`) of a run dict or folder.

    >>> sorted(figures("runs/digits-compare"))  # doctest: +SKIP
    ['curves', 'histograms', 'input-maps', 'layer-sparsity', 'sparsity-over-time']
    """
    return figure_table.draw(run if isinstance(run, dict) else load_run_folder(run))


# ----------------------------------------------------------------------------- HTML
def _esc(value):
    return html.escape("—" if value is None or value == "" else str(value))


def _fmt(x, spec):
    return None if x is None else format(x, spec)


def _describe(value):
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return value


def _state(run):
    """(label, css class) for the folder: complete, failed, or incomplete (raw state)."""
    state = str(run["status"].get("state") or "unknown")
    missing = sum(r["final"] is None for r in run["runs"])
    if state == "failed":
        return "failed", "failed"
    if state == "complete" and not missing:
        return "complete", "complete"
    detail = state if state != "complete" else f"{missing} run(s) without final.json"
    return f"incomplete ({detail})", "incomplete"


def _header_html(run):
    cfg, data = run["config"], run["data"]
    sizes = ", ".join(f"{data[k]} {k[2:]}" for k in ("n_train", "n_val", "n_test") if k in data)
    classes = f", {data['n_classes']} classes" if data.get("n_classes") else ""
    data_line = f"{data.get('name', '—')} ({data.get('task', '?')}; {sizes}; " \
                f"{data.get('n_features', '?')} features{classes})"
    versions = cfg.get("versions") or {}
    label, css = _state(run)
    facts = [("command", cfg.get("command")), ("data set", data_line),
             ("model", _describe(cfg.get("model"))), ("seed", cfg.get("seed")),
             ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
             ("created", cfg.get("created")), ("updated", run["status"].get("updated"))]
    rows = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts)
    rows += f'<dt>status</dt><dd class="{css}">{_esc(label)}</dd>'
    error = run["status"].get("error")
    err = f'<pre class="error">{_esc(error)}</pre>' if error else ""
    title = f"decaylab {cfg.get('command') or 'run'}: {pathlib.Path(run['path']).name}"
    return f"<h1>{_esc(title)}</h1>\n<dl class=\"facts\">{rows}</dl>\n{err}"


def _summary_row(r, regression):
    """The numbers of one summary-table row: final.json's, else the last epoch's."""
    final = r["final"] or {}
    src = final or (r["metrics"][-1] if r["metrics"] else {})
    kind = "loss" if regression else "acc"
    train, test, val = src.get(f"train_{kind}"), src.get(f"test_{kind}"), src.get(f"val_{kind}")
    gap = final.get("gap")
    if gap is None and train is not None and test is not None:
        gap = test - train if regression else train - test
    times = [m["epoch_time"] for m in r["metrics"] if m.get("epoch_time") is not None]
    mean_time = final.get("mean_epoch_time", sum(times) / len(times) if times else None)
    live, n_in = src.get("live_inputs"), src.get("n_inputs")
    nonzero, params = final.get("nonzero_params"), final.get("n_params")
    return {"val": val, "test": test, "gap": gap, "zero": src.get("zero_fraction"), "time": mean_time,
            "inputs": f"{live:,} / {n_in:,}" if live is not None and n_in else None,
            "params": f"{nonzero:,} / {params:,}" if nonzero is not None and params else None}


def _summary_cells(r, v, regression):
    """(text, css class) per cell of one summary-table row."""
    metric = ".4g" if regression else ".1%"
    state = "complete" if r["final"] is not None else \
        f"incomplete ({len(r['metrics'])} epochs logged)"
    return [(r["name"], "name"), (r["spec"].get("describe") or r["spec"].get("penalty"), "desc"),
            (_fmt(v["val"], metric), "metric"), (_fmt(v["test"], metric), ""),
            (_fmt(v["gap"], "+" + metric), ""),
            (_fmt(v["zero"], ".1%"), ""), (v["inputs"], ""), (v["params"], ""),
            (None if v["time"] is None else f"{v['time']:.2f} s", ""),
            (state, state.split()[0])]


def _summary_html(run):
    regression = is_regression(run)
    rows = [(r, _summary_row(r, regression)) for r in run["runs"]]
    vals = [v["val"] for _, v in rows if v["val"] is not None]
    best = (min(vals) if regression else max(vals)) if vals else None  # chosen on validation only
    head = ["run", "penalty", "validation loss" if regression else "validation accuracy",
            "test loss" if regression else "test accuracy",
            "gap (test − train loss)" if regression else "gap (train − test acc)",
            "exact-zero fraction", "inputs kept", "nonzero params / params",
            "mean epoch time", "state"]
    body = []
    for r, v in rows:
        tds = "".join(f'<td class="{css}">{_esc(text)}</td>' if css else f"<td>{_esc(text)}</td>"
                      for text, css in _summary_cells(r, v, regression))
        tr = '<tr class="best">' if best is not None and v["val"] == best else "<tr>"
        body.append(f"{tr}{tds}</tr>")
    ths = "".join(f"<th>{_esc(h)}</th>" for h in head)
    note = "The best validation loss" if regression else "The best validation accuracy"
    return (f'<table id="summary"><thead><tr>{ths}</tr></thead><tbody>{"".join(body)}'
            f"</tbody></table>\n<p>{note} is highlighted: runs are chosen on validation data; "
            f"the test set is reported, never used to choose. Incomplete runs show their last "
            f"logged epoch. {html.escape(_noise_note(run, short=True))}</p>")


def _ms(v, spec=".3f"):
    m, s = v if isinstance(v, (list, tuple)) else (v, None)
    if m is None:
        return "—"
    return format(m, spec) + (" ± " + format(s, spec.lstrip("+")) if s is not None else "")


def _selection_html(run):
    """The choice on validation: compare.json's mean ± sd table, or sweep.json's choice."""
    out = []
    cmp_ = run.get("compare")
    if cmp_:
        n = len(cmp_.get("seeds", []))
        head = "".join(f"<th>{h}</th>" for h in ("run", "penalty (λ chosen on validation)", "validation accuracy",
                                                   "test accuracy", "train − test gap", "exact zeros"))
        body = "".join(
            f'<tr><td class="name">{_esc(r["name"])}</td><td class="desc">{_esc(r["describe"])}</td>'
            f"<td>{_ms(r['val_acc'], '.1%')}</td><td>{_ms(r['test_acc'], '.1%')}</td><td>{_ms(r['gap'], '+.1%')}</td>"
            f"<td>{_ms(r['zero_fraction'], '.1%')}</td></tr>" for r in cmp_.get("runs", []))
        verdicts = "".join(f"<li>{_esc(v)}</li>" for v in cmp_.get("verdicts", []))
        out += [f"<h2>Chosen on validation, mean ± sd over {n} seeds</h2>",
                f'<table id="selection"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>',
                f"<ul>{verdicts}</ul><p>{_esc(cmp_.get('note'))}. {html.escape(_noise_note(run, short=True))}</p>"]
    sw = run.get("sweep")
    if sw:
        ch, test = sw.get("chosen", {}), sw.get("chosen_test_acc", {})
        stopped = sum(1 for p in sw.get("points", []) if p.get("stopped_early"))
        u = ".1%" if sw.get("metric", "accuracy") == "accuracy" else ".3f"  # the Summary's units
        out += ["<h2>Chosen strength</h2>",
                f"<p>{_esc(sw.get('describe'))}: best λ = {_esc(ch.get('best'))} (test {_ms(test.get('best'), u)}), "
                f"one-SE λ = {_esc(ch.get('one_se'))} (test {_ms(test.get('one_se'), u)}). "
                f"{_esc(sw.get('selection'))}. SE: {_esc(sw.get('se'))}. {stopped} of {len(sw.get('points', []))} "
                f"points were stopped early by successive halving (see sweep.json).</p>"]
        out += _reference_html(sw)
    for name, swept in run.get("sweeps") or []:
        out += _reference_html(swept, f" to the {name} sweep")
    return out


def _reference_html(sw, of=""):
    """The magnitude-pruning reference next to the sweep's point of the same sparsity."""
    ref = sw.get("reference")
    if not ref:
        return []
    title = f"<h2>Magnitude-pruning reference{html.escape(of)}</h2>"
    if not ref.get("points"):
        return [title, f"<p>{_esc(ref.get('note'))}</p>"]
    lr = (sw.get("chosen_lr") or {}).get("best")
    mine = {round(p["zeros"], 3): p for p in sw.get("points", []) if p.get("lr") == lr and p.get("zeros") is not None}
    name = "accuracy" if sw.get("metric", "accuracy") == "accuracy" else "mse"
    head = "".join(f"<th>{h}</th>" for h in (
        "exact zeros", f"magnitude pruning: validation {name}", f"magnitude pruning: test {name}",
        "sweep point at these zeros: λ", f"its validation {name}", f"its test {name}", "stopped early"))
    rows = []
    for p in ref["points"]:
        q = mine.get(round(p["target"], 3))
        cells = [_fmt(p["zeros"], ".1%"), _ms((p["val_acc"], p.get("val_acc_sd"))),
                 _ms((p["test_acc"], p.get("test_acc_sd"))), q and q["alpha"],
                 q and _ms((q["val_acc"], q.get("val_acc_sd"))), q and _ms((q["test_acc"], q.get("test_acc_sd"))),
                 q and ("yes" if q.get("stopped_early") else "no")]
        rows.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    return [title,
            f"<p>{_esc(ref.get('describe'))}; targets: {_esc(ref.get('targets_from'))}. Same data, model, "
            f"optimizer, schedule, epochs and seeds as the sweep.</p>",
            f'<table class="reference"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>']


def _noise_note(run, short=False):
    """Why train accuracy sits below test under label noise (empty without noise)."""
    p = label_noise(run)
    if not p or is_regression(run):
        return ""
    if short:
        return (f"A negative gap is expected here: train accuracy is measured on the training labels, {p:.0%} "
                f"of them flipped (data.label_noise), validation and test on clean labels (see the learning curves).")
    return (f"Train accuracy is measured on the training labels, {p:.0%} of which were flipped "
            f"(data.label_noise = {p:g}); validation and test labels are clean. A model that learns the "
            f"signal without memorizing the flipped labels scores about {1 - p:.0%} on train and more on "
            f"test, so train sits below test and the train − test gap is negative. The shaded band between "
            f"them shows memorization: as train climbs toward 100 % the model is fitting wrong labels; a good "
            f"penalty keeps train near {1 - p:.0%} while test rises.")


def _figure_html(fig_id, png, run):
    spec = figure_table.BY_ID[fig_id]
    title, caption = spec.title, spec.caption.format(metric="loss" if is_regression(run) else "accuracy")
    if fig_id == "curves" and _noise_note(run):
        caption = caption.split(": the shaded band")[0] + ". " + _noise_note(run)
    skipped = [r["name"] for r in run["runs"] if r["final"] is None]
    if skipped and fig_id in ("histograms", "input-maps"):
        caption += " Left out (incomplete, no final.json): " + ", ".join(skipped) + "."
    unchanged = [r["name"] for r in run["runs"] if (r.get("compact") or {}).get("compacted") is False]
    if unchanged and fig_id == "compaction":
        caption += " Nothing to remove (no zero neuron, channel or input): " + ", ".join(unchanged) + "."
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (f'<section><h2>{_esc(title)}</h2>\n<figure>'
            f'<img id="{fig_id}" data-figure="{fig_id}" src="{src}" '
            f'alt="{_esc(title)}: {_esc(caption)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure></section>")


def _page_html(run, figs):
    title = f"decaylab report: {pathlib.Path(run['path']).name}"
    parts = [_header_html(run)] + _selection_html(run) + ["<h2>Summary</h2>", _summary_html(run)]
    parts += [_figure_html(fig_id, png, run) for fig_id, png in figs.items()]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<link rel=\"icon\" href=\"data:,\"><title>{_esc(title)}</title>"
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")


def build_report(run_dir, out=None) -> pathlib.Path:
    """Write the self-contained ``report.html`` for a run folder.

    Args:
        run_dir: the run folder; only its JSON files are read.
        out: where to write; defaults to ``RUN_DIR/report.html``.

    Returns:
        The path written.

    >>> build_report("runs/digits-compare")  # doctest: +SKIP
    PosixPath('runs/digits-compare/report.html')
    """
    run = load_run_folder(run_dir)
    page = _page_html(run, figures(run))
    path = pathlib.Path(out) if out is not None else runfolder.report_path(run_dir)
    runfolder.write_text(path, page)   # atomic: a browser never sees half a report
    return path
