"""Training runs: one model, data and seed; one run per penalty setting; a run folder.

Data flows one way: config -> :func:`build_state` -> :func:`run_epochs` (a
:class:`~decaylab.lab.state.TrainState`) -> the run folder (written only through
:mod:`decaylab.lab.runfolder`, layout in docs/run-folder.md). Each epoch appends a flushed
metrics line and then an atomic checkpoint, so a crash leaves every finished epoch
readable and ``decaylab resume`` continues bit for bit; Ctrl-C stops after the current
step, checkpoints, and ``status.json`` says "interrupted". A run's pieces (penalty, rules,
optimizer, schedule) come from :mod:`decaylab.lab.recipe`, its metrics from
:mod:`decaylab.lab.measure`.
"""

from __future__ import annotations

import math
import platform
import signal
import threading
from datetime import datetime
from pathlib import Path

import torch

import decaylab as dl
from decaylab.stats import selected_weights

from . import build, loop, runfolder
from .loop import Interrupted
from .measure import epoch_row, final_metrics
from .recipe import cosine_schedule, describe, make_optimizer, make_rules
from .state import TrainState


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


request_stop = loop.request_stop  # Ctrl-C's effect, for a caller that has no terminal


def versions() -> dict:
    import numpy
    import sklearn

    return {"decaylab": dl.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "sklearn": sklearn.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


# -- the loop ---------------------------------------------------------------------------
def build_state(cfg: dict, data, run: dict) -> TrainState:
    """A fresh run: the model (seeded), optimizer, penalty rules and schedule of ``run``."""
    tr = cfg["train"]
    torch.manual_seed(cfg["seed"])
    model = build.build_model(cfg, data).to(tr["device"])
    opt = make_optimizer(tr, model.parameters())
    rules = make_rules(run, model, math.ceil(len(data.x_train) / tr["batch_size"]))
    if rules is not None:
        opt = dl.regularize(opt, model, rules)
    sched = cosine_schedule(opt, tr["epochs"]) if tr["schedule"] == "cosine" else None
    return TrainState(model, opt, sched, torch.Generator().manual_seed(cfg["seed"]),
                      regularized=opt if rules is not None else None)


def enter_finetune(state: TrainState, run: dict, tr: dict) -> None:
    """Switch to fine-tuning: the penalty off, a fresh optimizer, the zeros held at zero."""
    state.masks = [p.detach() != 0 for _, p in selected_weights(state.model)]
    lr = run["finetune_lr"] or tr["lr"] * 0.1
    state.opt = make_optimizer(tr, state.model.parameters(), lr=lr)
    state.sched = cosine_schedule(state.opt, run["finetune_epochs"]) if tr["schedule"] == "cosine" else None
    state.phase = "finetune"


@torch.no_grad()
def _hold_zeros(state: TrainState) -> None:
    for (_, p), mask in zip(selected_weights(state.model), state.masks):
        p.mul_(mask)


def _run_loss(state: TrainState, task: str, run_name: str):
    """The loss of one batch for :mod:`loop`; a NaN or infinite loss stops the run."""
    def loss(xb, yb):
        value = loop.task_loss(state.model(xb), yb, task)
        if not torch.isfinite(value):
            raise TrainingDiverged(
                f"run '{run_name}': loss became {float(value.detach())} at {state.phase} epoch "
                f"{state.epoch + 1}, step {state.step}; lower train.lr or the penalty strength")
        return value
    return loss


def run_epochs(state: TrainState, cfg: dict, data, run: dict, out: runfolder.Run | None = None,
               progress=None) -> TrainState:
    """Train ``state`` to the end of ``run``'s epochs (both phases) and return it.

    Each finished epoch appends a metrics line to ``out`` and then, if
    ``cfg["train"]["checkpoint"]``, an atomic checkpoint; ``progress(name, row)`` is called
    last. A stop request (Ctrl-C) checkpoints mid-epoch (even with checkpoints off) and
    raises :class:`Interrupted`.

    >>> from decaylab.lab import config
    >>> cfg = config.resolve({}, ["train.epochs=2", "model.hidden=[8]", "data.n_train=100",
    ...                           'penalty.penalty="l1"', "penalty.alpha=0.01"], command="train")
    >>> ds, run = prepare(cfg), cfg["runs"][0]
    >>> state = run_epochs(build_state(cfg, ds, run), cfg, ds, run)
    >>> state.epoch, state.step, state.phase, sorted(state.state_dict())[:4]
    (2, 4, 'train', ['batch', 'batch_gen', 'epoch', 'epoch_seconds'])
    """
    tr = cfg["train"]
    on_stop = out.checkpoint if out is not None else (lambda s: None)
    save = on_stop if tr.get("checkpoint", True) else (lambda s: None)
    plan = [("train", tr["epochs"], 0), ("finetune", run["finetune_epochs"], tr["epochs"])]
    for phase, epochs, offset in plan:
        if phase == "finetune" and epochs > 0 and state.phase == "train":
            enter_finetune(state, run, tr)
        while state.phase == phase and state.epoch < offset + epochs:
            lr = loop.epoch(state, data.x_train, data.y_train, tr["batch_size"],
                            _run_loss(state, data.task, run["name"]), on_stop=on_stop, name=run["name"],
                            after_step=(lambda: _hold_zeros(state)) if state.masks is not None else None)
            row = epoch_row(state, data, lr, state.times[-1])
            if out is not None:
                out.append_metrics(row)
            save(state)
            if progress is not None:
                progress(run["name"], row)
    return state


def train_run(cfg: dict, data, run: dict, run_dir: Path, progress=None, resume: bool = False) -> dict:
    """Train one penalty setting into ``run_dir``; returns what final.json holds.

    With ``resume=True`` a run that is complete is left as it is, a run with a checkpoint
    continues from it (metric lines past the checkpoint are dropped and redone), and any
    other run starts again from scratch.
    """
    out = runfolder.Run(run_dir)
    if resume and out.is_complete():
        if progress is not None and out.metrics():  # its bar shows it done, not 0/N
            progress(run["name"], out.metrics()[-1])
        return out.final()
    ckpt = out.load_checkpoint() if resume else None
    state = build_state(cfg, data, run)
    if ckpt is None:
        out.begin({**run, "describe": describe(run, cfg["train"]["optimizer"])})
    else:
        if ckpt["phase"] == "finetune":
            state.model.load_state_dict(ckpt["model"])
            enter_finetune(state, run, cfg["train"])
        state.load_state_dict(ckpt)
        out.keep_epochs(state.epoch)
    with _stop_on_sigint():
        run_epochs(state, cfg, data, run, out, progress)
    return finish_run(state, out)


def finish_run(state: TrainState, out: runfolder.Run) -> dict:
    """Write rules.txt (with the final zeros), model.pt and final.json; drop the checkpoint."""
    if state.regularized is not None:
        out.write_rules(dl.summary(state.regularized))
    out.save_model(state.model.state_dict())
    final = final_metrics(state.model, state.last, state.last_stats)
    final["mean_epoch_time"] = sum(state.times) / max(len(state.times), 1)
    out.write_final(final)
    out.drop_checkpoint()
    return final


class _stop_on_sigint:
    """Within the block, the first Ctrl-C asks the loop to stop after its step (and
    checkpoint); a second one interrupts at once. Only the main thread installs it."""

    def __enter__(self):
        self.previous = None
        if _IN_WORKER:  # a worker process: its parent owns Ctrl-C and sets the shared STOP
            return self
        loop.STOP.clear()
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if loop.STOP.is_set():
            raise KeyboardInterrupt
        loop.STOP.set()

    def __exit__(self, *exc):
        if _IN_WORKER:
            return False
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        loop.STOP.clear()
        return False


# -- an experiment: a run folder with one run per penalty ---------------------------------
def load_data(cfg: dict):
    return build.build_data(cfg)


def check_device(name: str) -> torch.device:
    """The ``train.device`` as a torch device, or a ``ValueError`` saying what to use.

    >>> check_device("cpu")
    device(type='cpu')
    """
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"train.device={name!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={name!r} but this torch {torch.__version__} has no usable CUDA "
                             f"device; use --set train.device=cpu or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"train.device={name!r} but only {torch.cuda.device_count()} CUDA device(s) "
                             f"exist; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"train.device={name!r} but MPS is not available here; use --set train.device=cpu")
    elif dev.type != "cpu":
        raise ValueError(f"train.device={name!r} is not supported; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return dev


def check_runs(cfg: dict) -> None:
    """Build every penalty once so a bad strength fails before any training starts."""
    for run in cfg["runs"]:
        try:
            if run["penalty"] == "none" and not (math.isfinite(run["alpha"]) and run["alpha"] >= 0):
                raise ValueError(f"alpha={run['alpha']} must be finite and >= 0 (and has no effect "
                                 f"with penalty 'none')")
            describe(run, cfg["train"]["optimizer"])
        except ValueError as err:
            raise ValueError(f"run '{run['name']}': {err}") from None


def prepare(cfg: dict):
    """Check what can be checked without training (penalties, device, data) and load the
    data: everything that can fail on bad input fails here, before a run folder exists."""
    check_runs(cfg)
    check_device(cfg["train"]["device"])
    data = load_data(cfg)
    if cfg["model"].get("factory"):  # a model.factory mistake, too, fails before any folder exists
        build.build_model(cfg, data)
    return data


def new_run_dir(cfg: dict, command: str) -> Path:
    """Create the run folder ``out/name`` (default name ``COMMAND-DATA-TIME``)."""
    check_runs(cfg)
    data_name = cfg["data"]["factory"].rpartition(":")[2] if cfg["data"].get("factory") else cfg["data"]["name"]
    name = cfg["name"] or f"{command}-{data_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return runfolder.create(cfg["out"], name)


_IN_WORKER = False


def _init_worker(stop) -> None:
    """A worker process ignores Ctrl-C; the parent sets the shared ``stop`` event instead,
    so a run in progress stops after its step and checkpoints, and no new run starts."""
    global _IN_WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop.STOP, _IN_WORKER = stop, True


def _worker(cfg: dict, run: dict, run_dir: str, resume: bool) -> str:
    """One run in a worker process (data loaded there; one result folder per run)."""
    if loop.STOP.is_set():
        raise Interrupted(f"run '{run['name']}' not started: stopped by the user")
    train_run(cfg, load_data(cfg), run, runfolder.run(run_dir, run["name"]).path, resume=resume)
    return run["name"]


def _train_parallel(cfg: dict, run_dir: Path, progress, resume: bool) -> None:
    """Runs in ``train.jobs`` processes; each run is still seeded and ordered the same,
    so results equal a sequential run. Progress is reported per finished run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    pool = ProcessPoolExecutor(cfg["train"]["jobs"], mp_context=ctx, initializer=_init_worker, initargs=(stop,))
    try:
        futures = [pool.submit(_worker, cfg, run, str(run_dir), resume) for run in cfg["runs"]]
        for fut in as_completed(futures):
            name = fut.result()
            if progress is not None:
                progress(name, runfolder.run(run_dir, name).metrics()[-1])
    except BaseException:  # Ctrl-C or a failed run: running runs stop after a step and
        stop.set()          # checkpoint, and no further run starts
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


def _execute(cfg: dict, run_dir: Path, data, progress, resume: bool) -> None:
    """Train every run of ``cfg`` into ``run_dir``; status.json says how it ended."""
    with runfolder.lock(run_dir):
        _execute_locked(cfg, run_dir, data, progress, resume)


def _execute_locked(cfg: dict, run_dir: Path, data, progress, resume: bool) -> None:
    runfolder.set_status(run_dir, "running")
    with runfolder.tracking(run_dir, resume_command(run_dir)):
        data = data if data is not None else load_data(cfg)
        runfolder.write_data_info(run_dir, data.info())
        if cfg["train"]["jobs"] > 1 and len(cfg["runs"]) > 1:
            _train_parallel(cfg, run_dir, progress, resume)
        else:
            for run in cfg["runs"]:
                train_run(cfg, data, run, runfolder.run(run_dir, run["name"]).path, progress, resume)


def resume_command(run_dir) -> str:
    return f"decaylab resume {run_dir}"


def run_experiment(cfg: dict, command: str = "compare", progress=None, run_dir: Path | None = None,
                   data=None) -> Path:
    """Load data, train every run of ``cfg`` into a new run folder, return the folder.

    ``status.json`` ends as "complete", "failed" (with the error) or "interrupted".
    """
    if run_dir is None:
        data = prepare(cfg)
        run_dir = new_run_dir(cfg, command)
    runfolder.write_config(run_dir, {**cfg, "command": command, "versions": versions(), "created": runfolder.now()})
    _execute(cfg, run_dir, data, progress, resume=False)
    return run_dir


RUN_KEYS = ("command", "versions", "created", "sweep", "base_runs")  # what config.json adds to the config


def folder_config(run_dir) -> dict:
    """The config a run folder was trained with (config.json less what training added)."""
    from . import config

    saved = {k: v for k, v in runfolder.read_config(run_dir).items() if k not in RUN_KEYS}
    try:  # checked again, as a config file: an edited or foreign config.json fails clearly
        return config.resolve(saved, command="compare")
    except config.ConfigError as err:
        raise config.ConfigError(f"{Path(run_dir) / runfolder.CONFIG}: {err}") from None


def resume_experiment(run_dir, progress=None, data=None) -> Path:
    """Continue an interrupted or failed run folder in place (``decaylab resume``).

    Complete runs are kept, runs with a checkpoint continue from it, the others start
    again. On CPU the result is bit-identical to a run that was never interrupted.
    """
    run_dir = Path(run_dir)
    cfg = folder_config(run_dir)
    if data is None:
        data = prepare(cfg)
    _execute(cfg, run_dir, data, progress, resume=True)
    return run_dir
