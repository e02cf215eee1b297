"""Ray Tune plumbing for hp_tune: the trial function (LP or FT), the search, and its results.

A trial builds its own model and loaders from a plain `setup` dict (so it runs on any Ray worker),
trains, validates every `report_every` epochs and reports `val_metric` with a checkpoint holding
the training state plus the best weights so far. A resumed trial continues from that checkpoint.
"""
from __future__ import annotations

import math
import os
import pickle
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from ray.tune import Callback

from utils.cli import console
from utils.cli.parsing import UserError
from utils.files.model_names import output_path

# the two searches, named as their checkpoint folders (utils/files/model_names.CHECKPOINT_STAGES): the linear probe,
# and the full fine-tuning, whose folder the official code calls "ff" (the paper's "FT")
LINEAR_PROBE, FINE_TUNE = "lp", "ff"
_STATE_FILE = "state.pt"


def _loaders(setup: dict, transforms):
    from load_data.dataloaders import get_dataloaders
    micro_batch = max(1, setup["batch_size"] // setup.get("accumulate", 1))
    loaders, data = get_dataloaders(setup["dataset"], setup["data_dir"], micro_batch, setup["num_workers"],
                                    transforms=transforms, split_dir=setup.get("split_dir"), subset=setup.get("subset"),
                                    pin_memory=torch.cuda.is_available())
    if loaders["train"] is None or loaders["val"] is None:
        raise ValueError(f"{setup['dataset']} has no train/val split to tune on")
    return loaders, data


def build_model(setup: dict, num_classes: int, stage: str):
    """LP: pretrained backbone (setup['weights']), frozen, new head. FT: the LP checkpoint, unfrozen."""
    from load_models import model_loader
    if stage == LINEAR_PROBE:
        return model_loader.get_model_with_head(setup["model"], num_classes, source=setup["source"],
                                                tv_weights=setup.get("tv_weights"), freeze=True, weights=setup["weights"])
    model, _ = model_loader.load_model_from_checkpoint(setup["lp_checkpoint"], setup["model"], setup["source"],
                                                       num_classes=num_classes)
    return model


def trial(config: dict) -> None:
    """The Ray Tune trainable for both stages (config = sampled hyper-parameters + 'setup')."""
    from ray import tune

    from load_models import inference, model_loader
    from train import engine

    setup = config["setup"]
    stage = setup["stage"]
    torch.set_num_threads(max(1, int(setup.get("threads", 1))))
    trial_index = int(tune.get_context().get_trial_id().rsplit("_", 1)[-1])
    torch.manual_seed(setup["seed"] * 1000 + trial_index)
    transforms = model_loader.get_transforms(setup["model"], setup["source"], setup.get("tv_weights"),
                                             setup.get("image_size"),
                                             setup.get("augment", model_loader.DEFAULT_AUGMENT))
    loaders, data = _loaders(setup, transforms)
    device = inference.resolve_device(setup.get("device", "auto"))
    raw = build_model(setup, data.num_classes, stage)
    if stage == FINE_TUNE:
        for parameter in raw.parameters():
            parameter.requires_grad = True
    channels_last = bool(setup.get("channels_last"))
    model = inference.prepare_model(raw, device, channels_last, bool(setup.get("compile")))   # raw keeps plain keys
    optimizer = engine.make_optimizer(model, config["lr"], config.get("weight_decay", 0.0))
    epochs = setup["epochs"]
    scheduler = engine.make_scheduler(optimizer, epochs, setup["warmup_epochs"]) if stage == FINE_TUNE else None
    start_epoch, best_metric, best_state = 0, -math.inf, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = load_trial_state(folder)
        if saved.get("optimizer") is not None:        # the final epoch's checkpoint keeps only the best weights
            raw.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved.get("scheduler"):
                scheduler.load_state_dict(saved["scheduler"])
        start_epoch, best_metric, best_state = saved["epoch"] + 1, saved["best_metric"], best_weights(saved)
    for epoch in range(start_epoch, epochs):
        loss = engine.train_one_epoch(model, loaders["train"], optimizer, device, setup.get("precision", "auto"),
                                      channels_last, setup.get("accumulate", 1))
        if scheduler is not None:
            scheduler.step()
        if epoch % setup.get("report_every", 1) != 0 and epoch != epochs - 1:
            continue
        predictions = inference.predict(model, loaders["val"], device, precision=setup.get("precision", "auto"),
                                        channels_last=channels_last)
        metric = engine.selection_score(predictions, setup["selection_metric"])
        improved = metric > best_metric
        if improved:
            best_metric = metric
            best_state = {k: v.detach().cpu().clone() for k, v in raw.state_dict().items()}
        final = epoch == epochs - 1
        with tempfile.TemporaryDirectory() as folder:
            # The best weights are stored once (the current ones when this epoch is the best), and the final
            # epoch's checkpoint, which no resume continues from, keeps only them: for ConvNeXt-B that is
            # 350 MB per trial instead of 1.4 GB.
            torch.save({"model": raw.state_dict() if improved or not final else None,
                        "optimizer": None if final else optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler and not final else None, "epoch": epoch,
                        "best_metric": best_metric, "best_is_current": improved,
                        "best_state": None if improved else best_state}, Path(folder) / _STATE_FILE)
            tune.report({"val_metric": metric, "best_val_metric": best_metric, "train_loss": loss, "epoch": epoch + 1},
                        checkpoint=tune.Checkpoint.from_directory(folder))


def load_trial_state(folder: str | Path) -> dict:
    """A trial checkpoint's state.pt: tensors, numbers and dicts only (weights_only), so a tampered
    file in a shared results folder is refused instead of running code."""
    path = Path(folder) / _STATE_FILE
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: not a plain trial checkpoint, refused ({reason[:160]})") from None
    if not isinstance(saved, dict) or "epoch" not in saved:
        raise UserError(f"{path}: not a trial checkpoint of this project")
    return saved


def best_weights(saved: dict) -> dict | None:
    """The best weights a trial checkpoint holds (the current ones when that epoch was the best)."""
    return saved["model"] if saved.get("best_is_current") else saved.get("best_state")


@dataclass
class TrialResult:
    index: int
    config: dict          # the sampled hyper-parameters
    best_metric: float
    best_state: dict
    epochs_run: int
    run_id: str = ""      # <experiment>/<trial folder>: the same trial whenever a search is restored


def finished_trials(result_grid) -> tuple[list[TrialResult], list[str]]:
    """Successful trials with their best weights, and one line per failed trial."""
    done, failed = [], []
    for result in result_grid:
        name = Path(result.path).name if result.path else "?"
        if result.error is not None or result.checkpoint is None:
            failed.append(f"{name}: {type(result.error).__name__ if result.error else 'no checkpoint'}: "
                          f"{str(result.error).splitlines()[0] if result.error else ''}")
            continue
        try:
            with result.checkpoint.as_directory() as folder:
                saved = load_trial_state(folder)
        except UserError as exc:
            failed.append(f"{name}: {exc}")
            continue
        best_state = best_weights(saved)
        if best_state is None:
            failed.append(f"{name}: never validated")
            continue
        suffix = str(result.metrics.get("trial_id", name)).rsplit("_", 1)[-1]
        index = int(suffix) if suffix.isdigit() else len(done) + len(failed)
        hyper = {k: v for k, v in result.config.items() if k != "setup"}
        run_id = f"{Path(result.path).parent.name}/{name}" if result.path else ""
        done.append(TrialResult(index, hyper, float(saved["best_metric"]), best_state,
                                int(result.metrics.get("epoch", 0)), run_id))
    return sorted(done, key=lambda t: t.index), failed


def run_search(stage: str, setup: dict, param_space: dict, num_samples: int, storage: Path, resources: dict,
               grace_period: int, seed: int, resume: bool):
    """One Ray Tune search (LP: no early stopping; FT: ASHA). Returns the ResultGrid."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    epochs = setup["epochs"]
    scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=epochs if stage == LINEAR_PROBE else
                              max(1, min(grace_period, epochs)))
    name = f"{setup['save_name']}_{stage}"
    trainable = tune.with_resources(trial, resources)
    experiment = output_path(storage, name)                      # a search started under another case
    if resume and tune.Tuner.can_restore(str(experiment)):
        print(f"resuming the {stage.upper()} search in {experiment}")
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_errored=True,
                                   param_space={**param_space, "setup": setup})
    else:
        tuner = tune.Tuner(
            trainable, param_space={**param_space, "setup": setup},
            tune_config=tune.TuneConfig(metric="val_metric", mode="max", num_samples=num_samples, scheduler=scheduler,
                                        search_alg=BasicVariantGenerator(random_state=seed)),
            run_config=tune.RunConfig(name=experiment.name, storage_path=str(storage), verbose=0,
                                      callbacks=[TrialLines(stage)],
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                      failure_config=tune.FailureConfig(max_failures=0)))
    return tuner.fit()


class TrialLines(Callback):
    """One line per finished or failed trial (instead of Ray's table), readable in slurm logs."""

    def __init__(self, stage: str):
        self.stage = stage.upper()

    def on_trial_complete(self, iteration, trials, trial, **info):
        metrics = trial.last_result or {}
        setup = trial.config.get("setup", {})
        hyper = ", ".join(f"{'wd' if k == 'weight_decay' else k} {v:.2g}" for k, v in trial.config.items()
                          if k != "setup" and isinstance(v, (int, float)))
        number = trial.trial_id.rsplit("_", 1)[-1]
        console.show(f"    {setup.get('save_name', '')} {self.stage} trial {number}: {hyper} "
                     f"-> best val {setup.get('selection_metric', 'metric')} "
                     f"{metrics.get('best_val_metric', float('nan')):.4f} after {metrics.get('epoch', '?')} epoch(s)",
                     flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        console.show(f"    {self.stage} trial {trial.trial_id} FAILED (the search continues; Ray's error.txt is under "
                     f"{trial.path})", flush=True)


def default_resources(cpus: int | None, gpus: float | None) -> dict:
    has_gpu = torch.cuda.is_available()
    return {"cpu": cpus or (4 if has_gpu else 1), "gpu": gpus if gpus is not None else (1 if has_gpu else 0)}


def check_resources_fit(resources: dict) -> None:
    """A trial asking for more CPUs or GPUs than the whole Ray cluster has never starts: Ray waits for them
    forever. Say so at once (e.g. a slurm job's SLURM_CPUS_PER_TASK above the cores the job can use)."""
    import ray
    available = ray.cluster_resources()
    for key, flag in (("cpu", "--cpus_per_trial"), ("gpu", "--gpus_per_trial")):
        have = available.get(key.upper(), 0.0)
        if resources[key] > have:
            raise UserError(f"{flag} {resources[key]:g}: the Ray cluster has {have:g} {key.upper()}(s) in all, so no "
                            f"trial could ever start; pass {flag} {have:g} or fewer (or join a larger cluster with "
                            f"--ray_address)")


# ----------------------------------------------------------------------------- joining a cluster

_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def auth_token_source() -> str | None:
    """Where this process would read a Ray auth token from, or None (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    then Ray's default file ~/.ray/auth_token)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    custom = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if custom:
        return custom if Path(custom).is_file() else None
    return str(_TOKEN_FILE) if _TOKEN_FILE.is_file() else None


def _gcs_address(address: str) -> str | None:
    """host:port of an explicit address (`auto` resolved from RAY_ADDRESS), else None."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    address = address.removeprefix("ray://")
    return address if ":" in address else None


def connect(address: str | None, num_cpus: int) -> None:
    """Start a local Ray instance, or join the cluster at `address` (host:port or `auto`).

    Since Ray 2.59 a head started with `ray start` uses token authentication whenever a token exists,
    but a driver given an explicit address sends its token only with RAY_AUTH_MODE=token; so when the
    mode is unset and a token is available, this driver uses it (a token is harmless to a cluster
    without authentication). A head that does not answer is an error within seconds, not minutes."""
    import ray
    if address is None:
        # "local": always a Ray of its own. Without it, ray.init() joins whatever cluster /tmp/ray/ray_current_cluster
        # names (a `ray start` of another job on this node, or a dead one whose file stayed) and then fails.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
        return
    token = auth_token_source()
    if "RAY_AUTH_MODE" not in os.environ and token is not None:
        # Ray's own switch: sets RAY_AUTH_MODE=token and reloads its config, which `import ray` already read
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    mode = os.environ.get("RAY_AUTH_MODE", "unset")
    gcs = _gcs_address(address)
    if gcs is not None:
        host, _, port = gcs.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise UserError(f"--ray_address {address}: no Ray head answers at {gcs} ({exc}); start one with "
                            f"`ray start --head --port {port}` on {host} or check the address") from None
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "10")   # Ray's default retries for ~20 s, or minutes
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    except Exception as exc:           # ConnectionError, AuthenticationError, RuntimeError: all mean "not joined"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"--ray_address {address}: could not join the Ray cluster ({reason}) with RAY_AUTH_MODE={mode} "
                        f"and token {token or 'none found'}; a head started by `ray start` with a token needs the same "
                        f"token here: export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the head's ~/.ray/auth_token> (or "
                        f"share ~/.ray/auth_token), or start the head with RAY_AUTH_MODE=disabled") from None
