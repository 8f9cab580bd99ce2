"""Terminal feedback: a progress bar per run and a final table (rich), or silence."""

from __future__ import annotations

import contextlib
from pathlib import Path

from . import runfolder


class Console:
    """Progress bars and tables on stderr/stdout; ``quiet=True`` prints only errors."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        from rich.console import Console as RichConsole

        self.out = RichConsole(highlight=False)
        if not self.out.is_terminal:  # piped or logged: room for the table, no wrapping
            self.out = RichConsole(highlight=False, width=160)
        self.err = RichConsole(stderr=True, highlight=False)

    def say(self, text: str) -> None:
        if not self.quiet:
            self.out.print(text, markup=False)

    def error(self, text: str) -> None:
        self.err.print(text, markup=False, style="red")

    @contextlib.contextmanager
    def progress(self, cfg: dict):
        """Yields a callback ``(run_name, metrics_row)`` that advances that run's bar."""
        if self.quiet:
            yield None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bars = Progress(TextColumn("{task.fields[run]:<12}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=self.err)
        tasks = {}
        with bars:
            for run in cfg["runs"]:
                total = cfg["train"]["epochs"] + run["finetune_epochs"]
                tasks[run["name"]] = bars.add_task("", total=total, run=run["name"], stats="")

            def update(name: str, row: dict) -> None:
                acc = row["test_acc"] if row["test_acc"] is not None else row["test_loss"]
                stats = (f"loss {row['train_loss']:.3f}  train {_num(row['train_acc'])}  "
                         f"test {_num(acc)}  zeros {row['zero_fraction']:.1%}")
                if name not in tasks:  # a run the command adds as it goes (a sweep's reference curve)
                    tasks[name] = bars.add_task("", total=cfg["train"]["epochs"], run=name, stats="")
                bars.update(tasks[name], completed=row["epoch"], stats=stats)

            yield update

    def table(self, run_dir: Path) -> None:
        """The summary: one row per run from its final.json (or 'incomplete')."""
        if self.quiet:
            return
        from rich.table import Table

        folder = runfolder.load(run_dir)
        t = Table(title=f"decaylab: {run_dir}")
        for col in ("run", "penalty", _test_label([folder]).replace("test", "val"), _test_label([folder]), "gap",
                    "exact zeros", "inputs kept", "epoch s"):
            t.add_column(col, justify="left" if col in ("run", "penalty") else "right")
        for name, run in _runs_in_order(folder):
            if run is None or not run["spec"]:
                t.add_row(name, "not started", "", "", "", "", "", "")
                continue
            spec, f = run["spec"], run["final"]
            if f is None:
                t.add_row(spec["name"], spec["describe"], "incomplete", "", "", "", "", "")
                continue
            acc, kept = _acc_and_kept(f)
            val = f["val_acc"] if f["val_acc"] is not None else f["val_loss"]
            t.add_row(spec["name"], spec["describe"], _num(val), _num(acc), f"{f['gap']:+.3f}", f"{f['zero_fraction']:.1%}",
                      kept, f"{f.get('mean_epoch_time', 0):.2f}")
        self.out.print(t)


def _runs_in_order(folder: dict):
    """(name, run or None) for each run config.json names, in its order."""
    by_name = {r["name"]: r for r in folder["runs"]}
    return [(run["name"], by_name.get(run["name"])) for run in folder["config"].get("runs", [])]


def _test_label(folders: list[dict]) -> str:
    """'test acc', or 'test MSE' when every folder is a regression task."""
    tasks = {f["data"].get("task") for f in folders}
    if tasks == {"regression"}:
        return "test MSE"
    return "test acc" if "regression" not in tasks else "test acc / MSE"


def _acc_and_kept(final: dict) -> tuple[float, str]:
    """Test accuracy (test loss for regression) and "live/all" inputs of a final.json."""
    acc = final["test_acc"] if final["test_acc"] is not None else final["test_loss"]
    kept = f"{final['live_inputs']}/{final['n_inputs']}" if final["n_inputs"] else "-"
    return acc, kept


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown_table(run_dirs, within: float = 0.005) -> str:
    """Results of one or more run folders as one Markdown table (with several, each folder's
    rows follow a row naming the folder), plus the sparsest run that
    stays within ``within`` (absolute validation accuracy) of the best dense run (no penalty or
    L2), both chosen on validation (the test column is reported, never used to choose)."""
    folders = []
    for run_dir in [run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs:
        runfolder.read_config(run_dir)  # not a run folder: one clear error
        folders.append(runfolder.load(run_dir))
    lines = [f"| run | penalty | {_test_label(folders).replace('test', 'val')} | {_test_label(folders)} "
             f"| train−test gap | exact-zero weights | inputs kept | epoch time (s) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    done, several = [], len(folders) > 1
    for folder in folders:
        if several:  # each folder's rows under a row naming it; runs named folder/run below
            lines.append("| **" + folder["path"].replace("|", "\\|") + "** |" + " |" * 7)
        for name, run in _runs_in_order(folder):
            row = _markdown_row(name, run)
            lines.append(row)
            if run is not None and run["final"] is not None:
                label = f"{folder['path']}/{run['spec']['name']}" if several else run["spec"]["name"]
                done.append((run["spec"], run["final"], label))
    lines += [choice for folder in folders if (choice := _sweep_choice(folder, several))]
    dense = [f["val_acc"] for r, f, _ in done if r["penalty"] in ("none", "l2") and f["val_acc"] is not None]
    if dense:
        best = max(dense)
        ok = [(f["zero_fraction"], label) for r, f, label in done if f["val_acc"] is not None and f["val_acc"] >= best - within]
        z, name = max(ok)
        lines += ["", f"Best dense run (no penalty or L2) on validation: accuracy {best:.1%}. Sparsest run "
                      f"within {within * 100:.1f} points of it on validation: `{name}` with {z:.1%} exact-zero "
                      f"weights. (Chosen on validation; test accuracy is reported, never used to choose.)"]
    return "\n".join(lines)


def _sweep_choice(folder: dict, several: bool) -> str | None:
    """A sweep folder's choice (sweep.json), with the learning rate when it swept several."""
    sw = runfolder.read_sweep(folder["path"])
    if sw is None or "chosen" not in sw:
        return None
    lr = len(sw.get("lrs") or []) > 1
    picks = "; ".join(f"{k} alpha={sw['chosen'][k]:g}" + (f", lr={sw['chosen_lr'][k]:g}" if lr else "")
                      for k in ("best", "one_se"))
    return "\n" + (f"`{folder['path']}`: " if several else "") + f"Chosen on validation (sweep.json): {picks}."


def _markdown_row(name: str, run: dict | None) -> str:
    if run is None or run["final"] is None:
        return f"| {name} | incomplete | | | | | | |"
    spec, f = run["spec"], run["final"]
    acc, kept = _acc_and_kept(f)
    if f["val_acc"] is not None:  # accuracy in %, as the HTML report shows it
        val, acc, gap = f"{f['val_acc']:.1%}", f"{acc:.1%}", f"{f['gap']:+.1%}"
    else:  # regression: losses as they are
        val, acc, gap = f"{f['val_loss']:.4f}", f"{acc:.4f}", f"{f['gap']:+.4f}"
    return (f"| {name} | {spec['describe']} | {val} | {acc} | {gap} | "
            f"{f['zero_fraction']:.1%} | {kept} | {f.get('mean_epoch_time', 0):.3g} |")
