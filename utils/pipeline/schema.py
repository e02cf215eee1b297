"""The pipeline YAML (evaluate/run_pipeline.py): its keys, their types and ranges, and the stage flag each key
becomes, so that a YAML is refused before any training for what a stage would refuse after it."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from utils.cli.config import DATASETS, Field, check_mapping, load_yaml
from utils.cli.parsing import (
    bootstrap_resamples,
    cascade_steps,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from utils.errors import UserError
from utils.files.model_names import SOURCES, check_plain_name
from utils.files.prediction_io import CORRUPTION_NAMES
from utils.paths import resolve_config_path

STAGES = ("train", "soup", "predict", "ivon", "laplace", "temp_scale", "duo_temp_scale", "evaluate", "evaluate_duo",
          "cascades", "deep_ensemble", "report")
SCRIPTS = {"train": "train/hp_tune.py", "soup": "train/make_soup.py", "predict": "evaluate/1_single_model_prediction.py",
           "ivon": "train/ivon_train.py", "laplace": "evaluate/6_laplace.py", "temp_scale": "evaluate/2_temp_scale.py",
           "duo_temp_scale": "evaluate/3_duo_temp_scale.py", "evaluate": "evaluate/4_evaluate_predictions.py",
           "evaluate_duo": "evaluate/5_evaluate_duo_predictions.py", "cascades": "evaluate/7_evaluate_cascades.py",
           "deep_ensemble": "evaluate/8_evaluate_deep_ensemble.py", "report": "evaluate/9_make_report.py"}


_TEXT, _OPTIONAL_TEXT = Field((str,)), Field((str, type(None)))
_S1, _S4, _S5, _S7, _S8 = (SCRIPTS[s] for s in ("predict", "evaluate", "evaluate_duo", "cascades", "deep_ensemble"))
_HP, _IVON = SCRIPTS["train"], SCRIPTS["ivon"]
# Each YAML key that becomes a stage's flag, and the flags it becomes: its value is checked with that flag's own
# argparse type (utils/cli/parsing.py), so the YAML accepts exactly what the stages accept (tests/test_shared_checks.py
# checks every entry against the stages' parsers).
PASSED_ON = {
    "image_size": [(_HP, "--image_size"), (_S1, "--image_size")], "source": [(_HP, "--source")],
    **{f"train.{key}": [(_HP, f"--{key}")] for key in ("lp_samples", "num_samples", "epochs_lp", "epochs_ff",
                                                          "batch_size", "subset")},
    "train.sidekick_samples": [(_HP, "--num_samples")],
    "deep_ensemble.sizes": [(_S8, "--sizes")], "deep_ensemble.subsets": [(_S8, "--subsets")],
    **{f"ivon.{key}": [(_IVON, f"--{key}")] for key in ("epochs", "warmup_epochs", "train_samples", "test_samples",
                                                         "learning_rate", "ess", "hess_init", "weight_decay",
                                                         "batch_size", "repeats")},
    "ivon.mc_samples": [(_IVON, "--test_samples")], "ivon.mc_batch_size": [(_IVON, "--batch_size")],
    "bootstrap": [(_S4, "--bootstrap"), (_S5, "--bootstrap"), (_S8, "--bootstrap")],
    "cascades.steps": [(_S7, "--steps")], "cascades.budgets": [(_S7, "--budgets")],
}


def _passed(kind: type | tuple, check, optional: bool = False, many: bool = False) -> Field:
    """A key passed on to a stage flag whose argparse type is `check` (a list of them with `many`)."""
    types = (kind if isinstance(kind, tuple) else (kind,)) + ((type(None),) if optional else ())
    return Field((list,), items=types, check=check) if many else Field(types, check=check)


_NUMBER = (int, float)


def slurm_word(value: str) -> str:
    """A value written into an #SBATCH directive: letters, digits and _.:,- only (no space, no newline)."""
    if not re.fullmatch(r"[A-Za-z0-9_.:,-]+", str(value)):
        raise argparse.ArgumentTypeError(f"{value!r}: use letters, digits and _.:,- only (e.g. gpu, 64G, 12:00:00)")
    return str(value)

# every key of a pipeline YAML; a misspelt or mistyped one is an error, never a silently ignored setting
PIPELINE_SCHEMA = {
    "dataset": Field((str,), choices=DATASETS), "output_root": _TEXT, "data_dir": _OPTIONAL_TEXT, "ood_dir": _OPTIONAL_TEXT,
    "image_size": _passed(int, positive_int, optional=True), "weights": _TEXT,
    "source": Field((str, type(None)), choices=SOURCES),
    "large": _TEXT, "sidekicks": Field((list,), items=(str,)), "all_backbones": Field((bool,)),
    "duos_csv": _OPTIONAL_TEXT, "backbone_csv": _OPTIONAL_TEXT, "ensemble_seeds": Field((int,), 0),
    "train": {key: _passed(int, positive_int, optional=True) for key in (
        "lp_samples", "num_samples", "sidekick_samples", "epochs_lp", "epochs_ff", "batch_size", "subset")},
    "deep_ensemble": {"members": Field((str,), choices=("seeds", "trials")), "sizes": _passed(int, positive_int, many=True),
                      "subsets": _passed(int, positive_int)},
    "ivon": {"model": _TEXT, "epochs": _passed(int, positive_int), "warmup_epochs": _passed(int, non_negative_int),
             "train_samples": _passed(int, positive_int), "test_samples": _passed(int, positive_int),
             "learning_rate": _passed(_NUMBER, positive_float), "ess": _passed(_NUMBER, positive_float),
             "hess_init": _passed(_NUMBER, positive_float), "weight_decay": _passed(_NUMBER, non_negative_float),
             "batch_size": _passed(int, positive_int), "mc_samples": _passed(int, positive_int, many=True),
             "repeats": _passed(int, positive_int), "mc_batch_size": _passed(int, positive_int)},
    "laplace": {"model": _TEXT},
    "bootstrap": _passed(int, bootstrap_resamples),
    "cascades": {"steps": _passed(int, cascade_steps), "budgets": _passed(_NUMBER, positive_float, many=True)},
    "stages": Field((list,), items=(str,), choices=STAGES),
    # stage 1's corruption sweep of the test split (beyond the paper; docs/robustness.md)
    "corruptions": {"names": Field((list,), items=(str,), choices=(*CORRUPTION_NAMES, "all")),
                    "severities": Field((list,), items=(int,), choices=(1, 2, 3, 4, 5)), "seed": Field((int,))},
    # --print_slurm's jobs: GPUs (0: a CPU partition; trials then ask for none) and CPUs per job, and the partition,
    # memory and time limit of every job (utils/cli/slurm.py's RESOURCES when absent)
    "slurm": {"gpus": Field((int,), 0), "cpus": Field((int,), 1), "partition": Field((str,), check=slurm_word),
              "mem": Field((str,), check=slurm_word), "time": Field((str,), check=slurm_word)},
}


def load_pipeline(path: str) -> tuple[dict, Path]:
    """The pipeline YAML, checked against PIPELINE_SCHEMA; names that become file names are plain."""
    raw, path = load_yaml(path, "pipeline YAML")
    config = check_mapping(raw, PIPELINE_SCHEMA, path)
    for key in ("dataset", "large"):
        if key not in config:
            raise UserError(f"{path}: missing key '{key}'")
    if "output_root" in config and not config["output_root"].strip():
        raise UserError(f"{path}: 'output_root' is empty; name the folder the run's outputs go to (e.g. runs/my_run)")
    for name in [config["large"], *config.get("sidekicks", []), (config.get("ivon") or {}).get("model", "x"),
                 (config.get("laplace") or {}).get("model", "x")]:
        check_plain_name(name, f"{path}: model name")
    trained = [config["large"], *config.get("sidekicks", [])]
    repeated = sorted({n for n in trained if [m.casefold() for m in trained].count(n.casefold()) > 1})
    if repeated:         # two array tasks would train into the same files at once
        raise UserError(f"{path}: {repeated} listed twice among 'large' and 'sidekicks'")
    samples = (config.get("ivon") or {}).get("mc_samples")
    if samples is not None and (not samples or len(set(samples)) < len(samples)):
        raise UserError(f"{path}: 'ivon.mc_samples' must list distinct sample counts, e.g. [2, 4, 8, 16, 32] (got {samples})")
    ensemble = config.get("deep_ensemble") or {}
    if ensemble.get("members") == "trials":
        members, what = (config.get("train") or {}).get("num_samples") or 12, "FT trials (train.num_samples)"
    else:
        members, what = 1 + config.get("ensemble_seeds", 0), "members (large + ensemble_seeds)"
    too_large = [m for m in ensemble.get("sizes", [2]) if m > members]
    if "deep_ensemble" in config.get("stages", STAGES) and members > 1 and too_large:
        raise UserError(f"{path}: 'deep_ensemble.sizes' {too_large} exceed the {members} {what}")
    for key in ("duos_csv", "backbone_csv"):
        if config.get(key):
            resolve_config_path(config[key], f"{path}: {key}")           # the stages resolve it the same way
    return config, path


