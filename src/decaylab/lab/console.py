"""Terminal feedback: a progress bar per run and a final table (rich), or silence."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path


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
                bars.update(tasks[name], completed=row["epoch"], stats=stats)

            yield update

    def table(self, run_dir: Path) -> None:
        """The summary: one row per run from its final.json (or 'incomplete')."""
        if self.quiet:
            return
        from rich.table import Table

        t = Table(title=f"decaylab: {run_dir}")
        for col in ("run", "penalty", "val acc", "test acc", "gap", "exact zeros", "inputs kept", "epoch s"):
            t.add_column(col, justify="left" if col in ("run", "penalty") else "right")
        cfg = json.loads((run_dir / "config.json").read_text())
        for run in cfg["runs"]:
            spec_file = run_dir / "runs" / run["name"] / "spec.json"
            if not spec_file.exists():
                t.add_row(run["name"], "not started", "", "", "", "", "", "")
                continue
            spec = json.loads(spec_file.read_text())
            final_file = spec_file.parent / "final.json"
            if not final_file.exists():
                t.add_row(spec["name"], spec["describe"], "incomplete", "", "", "", "", "")
                continue
            f = json.loads(final_file.read_text())
            acc, kept = _acc_and_kept(f)
            val = f["val_acc"] if f["val_acc"] is not None else f["val_loss"]
            t.add_row(spec["name"], spec["describe"], _num(val), _num(acc), f"{f['gap']:+.3f}", f"{f['zero_fraction']:.1%}",
                      kept, f"{f.get('mean_epoch_time', 0):.2f}")
        self.out.print(t)


def _acc_and_kept(final: dict) -> tuple[float, str]:
    """Test accuracy (test loss for regression) and "live/all" inputs of a final.json."""
    acc = final["test_acc"] if final["test_acc"] is not None else final["test_loss"]
    kept = f"{final['live_inputs']}/{final['n_inputs']}" if final["n_inputs"] else "-"
    return acc, kept


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown_table(run_dirs, within: float = 0.005) -> str:
    """Results of one or more run folders as one Markdown table, plus the sparsest run that
    stays within ``within`` (absolute validation accuracy) of the best dense run (no penalty or
    L2), both chosen on validation (the test column is reported, never used to choose)."""
    lines = ["| run | penalty | val acc | test acc | train−test gap | exact-zero weights | inputs kept | epoch time (s) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    done = []
    for run_dir in [run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs:
        run_dir = Path(run_dir)
        cfg = json.loads((run_dir / "config.json").read_text())
        for run in cfg["runs"]:
            row = _markdown_row(run_dir / "runs" / run["name"], run)
            lines.append(row[0])
            if row[1] is not None:
                done.append((run, row[1]))
    dense = [f["val_acc"] for r, f in done if r["penalty"] in ("none", "l2") and f["val_acc"] is not None]
    if dense:
        best = max(dense)
        ok = [(f["zero_fraction"], r["name"]) for r, f in done if f["val_acc"] is not None and f["val_acc"] >= best - within]
        z, name = max(ok)
        lines += ["", f"Best dense run (no penalty or L2) on validation: accuracy {best:.4f}. Sparsest run "
                      f"within {within * 100:.1f} points of it on validation: `{name}` with {z:.1%} exact-zero "
                      f"weights. (Chosen on validation; test accuracy is reported, never used to choose.)"]
    return "\n".join(lines)


def _markdown_row(d: Path, run: dict):
    if not (d / "final.json").exists():
        return f"| {run['name']} | incomplete | | | | | | |", None
    spec, f = json.loads((d / "spec.json").read_text()), json.loads((d / "final.json").read_text())
    acc, kept = _acc_and_kept(f)
    val = f["val_acc"] if f["val_acc"] is not None else f["val_loss"]
    return (f"| {run['name']} | {spec['describe']} | {val:.4f} | {acc:.4f} | {f['gap']:+.4f} | "
            f"{f['zero_fraction']:.1%} | {kept} | {f.get('mean_epoch_time', 0):.3g} |"), f
