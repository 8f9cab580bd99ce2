"""``decaylab sweep --backend ray``: the sweep's stacked batches as Ray Tune trials.

Each trial is a plain function of its config (``ray.tune.Tuner`` over a grid of batch
indices): it trains one stacked batch of points (:func:`decaylab.lab.sweep.train_stack`,
full schedule, no halving) into the same run folder and reports each point's final
metrics with ``ray.tune.report``. The result is the run folder a local sweep writes, plus
Ray's own records under ``ray/`` (:func:`runfolder.ray_storage`). Ray is optional:
``pip install "decaylab[ray]"``.

Without ``--address`` a local Ray is started; with one, the run folder must be on storage
every node can write (a trial writes its points' folders where it runs).
"""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path

from . import sweep as sweep_mod
from .grid import SweepError, make_points
from .path import summarize
from . import runfolder
from . import train as train_mod
from .recipe import describe

EXTRA = 'pip install "decaylab[ray]"'


def check(address: str | None) -> None:
    """Refuse early: Ray missing, or an ``--address`` that does not answer."""
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError as err:
        raise SweepError(f"--backend ray needs Ray Tune, which is not installed ({err}); "
                         f"install the extra: {EXTRA}") from None
    if address and address != "auto":
        host, port = _host_port(address)
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as err:
            raise SweepError(f"--address {address}: cannot reach {host}:{port} ({err}); start the "
                             f"cluster (ray start --head) or drop --address for a local Ray") from None


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise SweepError(f"--address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379)") from None


def _trial(config, *, cfg, run, batches, run_dir, log_every):
    """One Ray Tune trial: one stacked batch of points of one seed."""
    import torch
    from ray import tune

    torch.set_num_threads(1)
    points = batches[config["batch"]]
    cfg_s = {**cfg, "seed": points[0]["seed"]}
    data = train_mod.load_data(cfg_s)
    sweep_mod.train_stack(cfg_s, data, run, points, Path(run_dir), None, [], None, log_every)
    for p in points:
        f = runfolder.final(run_dir, p["name"])
        tune.report({"point": p["name"], "alpha": p["alpha"], "lr": p["lr"], "seed": p["seed"],
                     "val_acc": f["val_acc"], "test_acc": f["test_acc"], "val_loss": f["val_loss"]})


def run(cfg: dict, spec: dict, run_dir: Path, address: str | None = None, say=print,
        num_cpus: int | None = None) -> dict:
    """Train the sweep as Ray Tune trials (one per stacked batch) and write sweep.json."""
    import ray
    from ray import tune

    lrs = spec.get("lrs") or [cfg["train"]["lr"]]
    seeds = [cfg["seed"] + i for i in range(spec["seeds"])]
    points = make_points(spec["alphas"], lrs, seeds)
    run_ = {**cfg["runs"][0], "penalty": spec["penalty"]}
    runfolder.set_status(run_dir, "running")
    cfg_saved = {**cfg, "runs": [{**run_, "name": p["name"], "alpha": p["alpha"]} for p in points]}
    runfolder.write_config(run_dir, cfg_saved, "sweep", versions=train_mod.versions(), sweep=spec)
    with runfolder.tracking(run_dir):
        data = train_mod.load_data(cfg)
        runfolder.write_data_info(run_dir, data.info())
        cpus = num_cpus or os.cpu_count() or 1
        per_seed = math.ceil(len(points) / len(seeds) / max(1, cpus // len(seeds)))
        batches = []
        for s in seeds:
            mine = [p for p in points if p["seed"] == s]
            batches += [mine[i:i + per_seed] for i in range(0, len(mine), per_seed)]
        for p in points:
            runfolder.run(run_dir, p["name"]).begin({**run_, "name": p["name"], "alpha": p["alpha"], "lr": p["lr"],
                                                     "seed": p["seed"],
                                                     "describe": describe({**run_, "alpha": p["alpha"]})})
        src = str(Path(__file__).resolve().parents[2])
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        ray.init(address=address, num_cpus=None if address else cpus, include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": env}, ignore_reinit_error=True)
        try:
            say(f"ray: {len(batches)} trials (stacked batches of up to {per_seed} points) on "
                f"{'a local Ray' if not address else address}")
            trainable = tune.with_parameters(_trial, cfg=cfg, run=run_, batches=batches,
                                             run_dir=str(run_dir.resolve()), log_every=spec.get("log_every", 0))
            tuner = tune.Tuner(trainable, param_space={"batch": tune.grid_search(list(range(len(batches))))},
                               run_config=tune.RunConfig(name="tune", storage_path=str(runfolder.ray_storage(run_dir)),
                                                         verbose=0))
            failed = [r.error for r in tuner.fit() if r.error is not None]
            if failed:
                raise RuntimeError(f"{len(failed)} Ray trials failed; first: {failed[0]}")
        finally:
            ray.shutdown()
        method = {"stacked": True, "backend": "ray", "trials": len(batches), "per_stack": per_seed,
                  "halving_rungs": [], "warm_starts": False,
                  "logged_epochs": "at the last epoch" if not spec.get("log_every") else f"every {spec['log_every']}"}
        result = summarize(run_dir, {**spec, "lrs": lrs}, points, run_, method)
        runfolder.write_sweep(run_dir, result)
    return result
