"""The ``decaylab`` command: compare, train, report.

    decaylab compare [CONFIG.toml] [--set key=value ...]   several penalties, one report
    decaylab train CONFIG.toml [--set key=value ...]       one penalty setting
    decaylab report RUN_DIR                                rebuild report.html from a run folder
    decaylab select [CONFIG.toml] [--set key=value ...]    which features matter (selection.json)
    decaylab compact RUN_DIR                               remove zero neurons/channels/inputs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import config as config_mod

EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="decaylab", description="See what weight decay, L1, elastic net and group lasso do.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("compare", "train one model per penalty and compare them"),
                        ("train", "train one model with one penalty setting"),
                        ("select", "which of my features matter? (adaptive group lasso path, 1-SE choice)")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("config", nargs="?", help="TOML file (defaults: digits, MLP, the six penalties)")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key, e.g. --set train.epochs=5 --set runs.l1.alpha=1e-3")
        c.add_argument("--out", help="parent folder of the run folder (default: runs)")
        c.add_argument("--name", help="run folder name (default: COMMAND-DATA-TIME)")
        c.add_argument("--only", help="comma-separated run names to keep (compare)")
        c.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    r = sub.add_parser("report", help="rebuild report.html from a run folder alone")
    r.add_argument("run_dir", nargs="+", help="run folder (several with --markdown)")
    r.add_argument("--markdown", action="store_true", help="print the results as one Markdown table instead")
    k = sub.add_parser("compact", help="remove zero neurons, channels and inputs of each run's model")
    k.add_argument("run_dir", help="run folder written by compare/train")
    return p


def _resolve(args) -> dict:
    file_cfg = config_mod.load_file(args.config) if args.config else {}
    if args.command == "train" and not args.config and not args.overrides:
        raise config_mod.ConfigError("decaylab train needs a CONFIG.toml or --set penalty.KEY=VALUE overrides")
    cfg = config_mod.resolve(file_cfg, args.overrides, command=args.command)
    if args.out:
        cfg["out"] = args.out
    if args.name:
        cfg["name"] = args.name
    if args.only:
        keep = [n.strip() for n in args.only.split(",")]
        unknown = sorted(set(keep) - {r["name"] for r in cfg["runs"]})
        if unknown:
            raise config_mod.ConfigError(f"--only names unknown runs {unknown}; runs are {[r['name'] for r in cfg['runs']]}")
        cfg["runs"] = [r for r in cfg["runs"] if r["name"] in keep]
    return cfg


def _experiment(args) -> int:
    from . import console, train

    cfg = _resolve(args)
    run_dir = train.new_run_dir(cfg, args.command)
    ui = console.Console(quiet=args.quiet)
    ui.say(f"run folder: {run_dir}")
    try:
        with ui.progress(cfg) as progress:
            train.run_experiment(cfg, args.command, progress=progress, run_dir=run_dir)
    finally:
        report = _build_report(run_dir, ui)
    ui.table(run_dir)
    ui.say(f"report: {report}" if report else "report: not built (see the error above)")
    return 0


def _build_report(run_dir: Path, ui) -> Path | None:
    try:
        from .report import build_report

        return build_report(run_dir)
    except Exception as err:  # a report failure must not hide the training result
        ui.error(f"could not build the report: {type(err).__name__}: {err}")
        return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "report" and args.markdown:
            from .console import markdown_table

            print(markdown_table(args.run_dir))
            return 0
        if args.command == "select":
            from .select import run_select

            run_select(_resolve(args))
            return 0
        if args.command == "compact":
            from .compacting import compact_run_folder

            compact_run_folder(args.run_dir)
            return 0
        if args.command == "report":
            from .report import build_report

            for run_dir in args.run_dir:
                print(f"report: {build_report(run_dir)}")
            return 0
        return _experiment(args)
    except KeyboardInterrupt:
        print("interrupted; finished epochs are in the run folder (status: interrupted)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (config_mod.ConfigError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"decaylab: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:
        print(f"decaylab: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
