"""The ``decaylab`` command: compare, train, report.

    decaylab compare [CONFIG.toml] [--set key=value ...]   several penalties, one report
    decaylab train CONFIG.toml [--set key=value ...]       one penalty setting
    decaylab sweep [CONFIG.toml] --penalty l2 --alphas 1e-4:1:9   a λ grid, the path and the choice
    decaylab resume RUN_DIR                                continue an interrupted run folder
    decaylab report RUN_DIR                                rebuild report.html from a run folder
    decaylab select [CONFIG.toml] [--set key=value ...]    which features matter (selection.json)
    decaylab compact RUN_DIR                               remove zero neurons/channels/inputs

Bad input (config, paths, devices, data) is one line on stderr and exit code 2, checked
before a run folder is created; a failed run exits 1, Ctrl-C exits 130 after a checkpoint;
output piped into a reader that quits (``| head -1``) ends quietly with exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Callable

from . import config as config_mod
from .build import help_text  # the registries of models and data sets

EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line like every other bad input."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"decaylab: error: {_one_line(message)} (see '{self.prog} --help')\n")


_EXPERIMENTS = (
    ("compare", "train one model per penalty and compare them",
     "TOML file with [[runs]] tables (default: digits, MLP 256-128, the six penalties)"),
    ("train", "train one model with one penalty setting",
     "TOML file with one [penalty] table (or give it with --set penalty.KEY=VALUE)"),
    ("select", "which of my features matter? (adaptive group lasso path, 1-SE choice)",
     "TOML file with [data] and [select] tables (default: digits, MLP)"))
_SET_HELP = {"compare": "override a key, e.g. --set train.epochs=5 --set runs.l1.alpha=1e-3",
             "train": "override a key, e.g. --set penalty.penalty=l1 --set penalty.alpha=1e-4",
             "select": "override a key, e.g. --set data.name=csv --set data.path=my.csv --set select.n_alphas=6"}


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="decaylab", description="See what weight decay, L1, elastic net and group lasso do.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_, config_help in _EXPERIMENTS:
        c = sub.add_parser(name, help=help_, description=help_)
        c.add_argument("config", nargs="?", help=config_help)
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help=f"{_SET_HELP[name]}. {help_text()}")
        c.add_argument("--out", help="parent folder of the run folder (default: runs)")
        c.add_argument("--name", help=f"run folder name (default: {name}-DATA-TIME)")
        if name == "compare":
            c.add_argument("--only", help="comma-separated run names to keep, e.g. none,l1")
        c.add_argument("--quiet", action="store_true", help="print only the run folder's path")
        c.add_argument("--print-config", action="store_true",
                       help="print the resolved config as TOML (a valid CONFIG file) and exit")
    _sweep_parser(sub)
    c = sub.add_parser("resume", help="continue an interrupted compare/train run folder from its checkpoints")
    c.add_argument("run_dir", help="the run folder")
    c.add_argument("--quiet", action="store_true", help="print only the run folder's path")
    r = sub.add_parser("report", help="rebuild report.html from a run folder alone")
    r.add_argument("run_dir", nargs="+", help="run folder (several with --markdown)")
    r.add_argument("--markdown", action="store_true", help="print the results as one Markdown table instead")
    k = sub.add_parser("compact", help="remove zero neurons, channels and inputs of each run's model")
    k.add_argument("run_dir", help="run folder written by compare/train")
    return p


def _sweep_parser(sub) -> None:
    s = sub.add_parser("sweep", help="train a grid of strengths (stacked) and choose one on validation")
    s.add_argument("config", nargs="?", help="TOML file with one [penalty] table (defaults: digits, MLP)")
    s.add_argument("--penalty", required=True, help="l2, l1, elasticnet, grouplasso or l2sp")
    s.add_argument("--alphas", required=True, help="LO:HI:N (N log-spaced values) or a comma list a,b,c")
    s.add_argument("--lrs", help="learning rates as a second axis (LO:HI:N or a comma list)")
    s.add_argument("--seeds", type=int, default=1, help="train every point with N seeds (mean ± sd)")
    s.add_argument("--full", action="store_true", help="train every point the full schedule (no halving)")
    s.add_argument("--eta", type=int, default=2, help="successive halving keeps 1/ETA of the points per rung")
    s.add_argument("--min-full", type=int, default=2, help="halving stops once this many points are left")
    s.add_argument("--log-every", type=int, default=0,
                   help="metrics every N epochs (default 0: only at halving rungs and the last epoch)")
    s.add_argument("--max-memory", type=float, help="MiB a stack may take (default: half the free memory)")
    s.add_argument("--backend", choices=("local", "ray"), default="local", help="local stacks or Ray Tune trials")
    s.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a key, e.g. --set train.epochs=10. {help_text()}")
    s.add_argument("--out", help="parent folder of the run folder (default: runs)")
    s.add_argument("--name", help="run folder name (default: sweep-DATA-TIME)")
    s.add_argument("--quiet", action="store_true", help="print only the run folder's path")


def _sweep(args) -> int:
    from . import console, grid, sweep, train
    from .path import describe_result

    file_cfg = config_mod.load_file(args.config) if args.config else {}
    cfg = config_mod.resolve(file_cfg, args.overrides, command="train")
    cfg["out"], cfg["name"] = args.out or cfg["out"], args.name or cfg["name"]
    spec = {"penalty": args.penalty, "alphas": grid.parse_grid(args.alphas, "--alphas"),
            "lrs": grid.parse_grid(args.lrs, "--lrs") if args.lrs is not None else None,
            "seeds": args.seeds, "full": args.full, "backend": args.backend, "eta": args.eta,
            "min_full": args.min_full, "log_every": args.log_every,
            "max_memory": int(args.max_memory * 2**20) if args.max_memory is not None else None}
    if spec["max_memory"] is not None and not spec["max_memory"] > 0:
        raise grid.SweepError(f"--max-memory {args.max_memory} must be > 0 (MiB)")
    cfg["runs"][0]["penalty"] = args.penalty if args.penalty in config_mod.PENALTIES else cfg["runs"][0]["penalty"]
    sweep.check_spec(cfg, spec)
    if args.backend == "ray" and cfg["pareto"]["reference"] != "none":
        raise grid.SweepError("pareto.reference is trained by the local backend only; drop --backend ray "
                              "or set pareto.reference=\"none\"")
    if args.backend == "ray":
        from . import sweep_ray

        sweep_ray.check(args.address)
    train.check_device(cfg["train"]["device"])
    data = train.load_data(cfg)
    n = len(spec["alphas"]) * len(spec["lrs"] or [0])
    grid.memory_plan(cfg, data, n, spec["max_memory"])  # refuses before a folder exists
    run_dir = train.new_run_dir({**cfg, "runs": []}, "sweep")
    ui = console.Console(quiet=args.quiet)

    def work():
        if args.backend == "ray":
            return sweep_ray.run(cfg, spec, run_dir, args.address, say=ui.say)
        points = grid.make_points(spec["alphas"], spec["lrs"] or [cfg["train"]["lr"]],
                                  [cfg["seed"] + i for i in range(spec["seeds"])])
        with ui.progress({**cfg, "runs": [{"name": p["name"], "finetune_epochs": 0} for p in points]}) as progress:
            return sweep.run_sweep(cfg, spec, run_dir, data=data, progress=progress, say=ui.say)

    return _run_then_report(run_dir, ui, work, lambda result: ui.say(describe_result(result)))


def _selected_compare(args, cfg: dict, run_dir: Path | None = None) -> int:
    """compare with runs.NAME.alphas (λ chosen on validation) and/or seeds > 1; with
    ``run_dir`` (``decaylab resume``) continue that folder."""
    from . import choose, console, train

    resume = run_dir is not None
    if not resume:
        choose.check(cfg)
        train.prepare(cfg)  # bad input fails here, before a run folder exists
        run_dir = train.new_run_dir(cfg, args.command)
    ui = console.Console(quiet=args.quiet)

    def work():
        seeds = range(cfg["seed"], cfg["seed"] + cfg["seeds"])
        names = [{**r, "name": f"{r['name']}-s{s}" if cfg["seeds"] > 1 else r["name"]}
                 for s in seeds for r in cfg["runs"]]
        with ui.progress({**cfg, "runs": names}) as progress:
            return choose.run_compare(cfg, run_dir, progress=progress, say=ui.say, resume=resume)

    return _run_then_report(run_dir, ui, work, lambda result: ui.say(choose.markdown(result)))


@contextlib.contextmanager
def _hint_on_interrupt(run_dir: Path, resumable: bool = True):
    """On Ctrl-C, say on stderr what was kept and how to go on, then let it through."""
    try:
        yield
    except KeyboardInterrupt:
        from .train import resume_command

        hint = (f"continue with: {resume_command(run_dir)}" if resumable else
                f"'{run_dir}' is incomplete and cannot be resumed; run the command again")
        print(f"interrupted: {hint}", file=sys.stderr, flush=True)
        raise


def _select(args) -> int:
    from . import reference, train
    from .select import run_select

    cfg = _resolve(args)
    if args.print_config:
        print(config_mod.to_toml(cfg, args.command), end="")
        return 0
    reference.check(cfg, "select", swept=False)
    if cfg["model"]["factory"]:
        raise config_mod.ConfigError(
            f"decaylab select ranks the input columns of the lab's MLP; model.factory="
            f"{cfg['model']['factory']!r} cannot be used there: unset it (a data.factory with flat "
            f"features [N, F] works) or choose lambda for your model with decaylab sweep")
    data = train.prepare(cfg)  # bad input (a CSV error) fails before any folder is made
    run_dir = train.new_run_dir(cfg, "select")
    with _hint_on_interrupt(run_dir, resumable=False):
        run_select(cfg, data=data, run_dir=run_dir)
    return 0


def _version() -> str:
    import platform

    import torch

    import decaylab

    return f"decaylab {decaylab.__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def _resolve(args) -> dict:
    file_cfg = config_mod.load_file(args.config) if args.config else {}
    if args.command == "train" and not args.config and not args.overrides:
        raise config_mod.ConfigError("decaylab train needs a CONFIG.toml or --set penalty.KEY=VALUE overrides")
    cfg = config_mod.resolve(file_cfg, args.overrides, command=args.command)
    if args.out:
        cfg["out"] = args.out
    if args.name:
        cfg["name"] = args.name
    if getattr(args, "only", None):
        keep = [n.strip() for n in args.only.split(",")]
        unknown = sorted(set(keep) - {r["name"] for r in cfg["runs"]})
        if unknown:
            raise config_mod.ConfigError(f"--only names unknown runs {unknown}; runs are {[r['name'] for r in cfg['runs']]}")
        cfg["runs"] = [r for r in cfg["runs"] if r["name"] in keep]
    return cfg


def _experiment(args) -> int:
    cfg = _resolve(args)
    if args.print_config:
        print(config_mod.to_toml(cfg, args.command), end="")
        return 0
    from . import choose, reference, train

    reference.check(cfg, args.command, any(r.get("alphas") for r in cfg["runs"]) and args.command == "compare")
    if args.command == "compare" and choose.wants_selection(cfg):
        return _selected_compare(args, cfg)
    if any(r.get("alphas") for r in cfg["runs"]) or cfg.get("seeds", 1) != 1:
        raise config_mod.ConfigError("'alphas' and 'seeds' are for decaylab compare; use decaylab sweep")
    data = train.prepare(cfg)  # bad input fails here, before a run folder exists
    run_dir = train.new_run_dir(cfg, args.command)
    return _train(args, cfg, run_dir, lambda progress: train.run_experiment(
        cfg, args.command, progress=progress, run_dir=run_dir, data=data))


def _resume(args) -> int:
    """``decaylab resume``: continue a folder as the command that wrote it, or refuse."""
    from . import choose, resuming, runfolder, train

    run_dir = Path(args.run_dir)
    saved = runfolder.read_config(run_dir)
    command = saved.get("command")
    if command not in resuming.RESUMABLE:
        raise config_mod.ConfigError(
            f"{run_dir} was written by 'decaylab {command}', which keeps no checkpoints to continue from; "
            f"run 'decaylab {command}' again (a new --name) instead of resuming it")
    then, now = saved.get("versions") or {}, train.versions()
    changed = [f"{k} {then[k]} -> {now[k]}" for k in ("decaylab", "torch", "numpy") if then.get(k, now[k]) != now[k]]
    if changed:
        print(f"decaylab: note: versions changed since the run started ({', '.join(changed)}); the resumed "
              f"run may differ from an uninterrupted one in the last bits", file=sys.stderr)
    chosen = command == "compare" and "base_runs" in saved  # strengths chosen on validation, seeds
    cfg = None if command == "sweep" else choose.resume_config(run_dir) if chosen else train.folder_config(run_dir)
    with runfolder.lock(run_dir):  # a folder another process trains into is refused, done or not
        finished = resuming.finished(run_dir, saved)
    if finished:
        print(run_dir if args.quiet else f"nothing to do: every run in {run_dir} is complete "
              f"(report: decaylab report {run_dir})", flush=True)
        return 0
    if command == "sweep":
        return _resume_sweep(args, run_dir)
    data = train.prepare(cfg)
    if chosen:
        return _selected_compare(args, cfg, run_dir)
    return _train(args, cfg, run_dir, lambda progress: train.resume_experiment(run_dir, progress, data))


def _resume_sweep(args, run_dir: Path) -> int:
    from . import console, sweep
    from .path import describe_result

    ui = console.Console(quiet=args.quiet)
    return _run_then_report(run_dir, ui, lambda: sweep.resume_sweep(run_dir, say=ui.say),
                            lambda result: ui.say(describe_result(result)))


def _train(args, cfg: dict, run_dir: Path, go) -> int:
    from . import console

    ui = console.Console(quiet=args.quiet)

    def work():
        with ui.progress(cfg) as progress:
            go(progress)

    return _run_then_report(run_dir, ui, work, lambda _: ui.table(run_dir))


def _run_then_report(run_dir: Path, ui, work: Callable[[], object], show: Callable[[object], None]) -> int:
    """Every command that trains: name the folder, run ``work()`` (Ctrl-C leaves the resume
    hint), build the report whatever happened, then ``show`` the result and the report."""
    print(run_dir if ui.quiet else f"run folder: {run_dir}", flush=True)
    try:
        with _hint_on_interrupt(run_dir):
            result = work()
    finally:
        report = _build_report(run_dir, ui)
    show(result)
    _say_report(ui, report)
    return 0


def _build_report(run_dir: Path, ui) -> Path | None:
    try:
        from .report import build_report

        return build_report(run_dir)
    except Exception as err:  # a report failure must not hide the training result
        ui.error(f"could not build the report: {type(err).__name__}: {err}")
        return None


def _say_report(ui, report: Path | None) -> None:
    ui.say(f"report: {report}" if report else "report: not built (see the error above)")


def _glue_grid_values(argv: list[str]) -> list[str]:
    """``--alphas -1e-3,1e-2`` as ``--alphas=-1e-3,1e-2``: argparse takes a value that starts
    with '-' (and is not one plain number) for an option; glued, the grid's own check says
    what is wrong with it (strengths must be > 0).

    >>> _glue_grid_values(["sweep", "--alphas", "-1e-3,1e-2", "--lrs", "1e-3"])
    ['sweep', '--alphas=-1e-3,1e-2', '--lrs', '1e-3']
    """
    out, i = [], 0
    while i < len(argv):
        if argv[i] in ("--alphas", "--lrs") and i + 1 < len(argv) and re.match(r"-[\d.]", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _report(args) -> int:
    if args.markdown:
        from .console import markdown_table

        print(markdown_table(args.run_dir))
        return 0
    from .report import build_report

    for run_dir in args.run_dir:
        print(f"report: {build_report(run_dir)}")
    return 0


def _compact(args) -> int:
    from . import console
    from .compacting import compact_run_folder

    compact_run_folder(args.run_dir)
    ui = console.Console()
    _say_report(ui, _build_report(Path(args.run_dir), ui))  # its figures now show the compaction
    return 0


# the subcommands: each takes the parsed arguments and returns the exit status
COMMANDS: dict[str, Callable] = {"train": _experiment, "compare": _experiment, "sweep": _sweep, "select": _select,
                                 "compact": _compact, "report": _report, "resume": _resume}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_glue_grid_values(sys.argv[1:] if argv is None else list(argv)))
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `decaylab ... | head -1`: the reader left; stop quietly, as rich does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush there
        return EXIT_FAILED
    except (config_mod.ConfigError, FileExistsError, FileNotFoundError, NotADirectoryError, ValueError) as err:
        print(f"decaylab: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:
        print(f"decaylab: failed: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        return EXIT_FAILED


def _one_line(err) -> str:
    """The message on one line: line breaks a user typed into a key or path are escaped."""
    text = str(err)
    return text.translate({c: repr(chr(c))[1:-1] for c in range(32)} | {0x85: "\\x85", 0x2028: "\\u2028",
                                                                         0x2029: "\\u2029"})


if __name__ == "__main__":
    sys.exit(main())
