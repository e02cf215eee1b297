"""Run a whole experiment by calling the stage scripts in order (a thin sequencer: every stage stays
runnable on its own). The screen shows one line when each step starts and one when it ends, one line per
Ray Tune trial and the results table; each step's full output, led by its equivalent command line, goes to
<output_root>/logs/ (`--verbose` shows it all on the screen instead).

    python evaluate/run_pipeline.py --config configs/pipeline_mnist5k.yaml          # `make demo`
    python evaluate/run_pipeline.py --config configs/pipeline_caltech256.yaml --print_slurm

Stages whose outputs are complete are reused (trained checkpoints, prediction files, soups,
baselines); the evaluation stages rerun and upsert their rows unless nothing they read or write
changed since the last complete run (utils/files/step_stamps.py; `--refresh` reruns them anyway).
`--print_slurm` writes the equivalent job-array scripts under <output_root>/slurm/ instead of running anything.
"""
from __future__ import annotations

import importlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from utils.cli import console, slurm
from utils.cli.config import DATASETS, Field, check_mapping, load_yaml, resolve_config_path
from utils.cli.parsing import (ArgumentParser, UserError, bootstrap_resamples, cascade_steps, cpu_count, non_negative_float,
                               non_negative_int, positive_float, positive_int, run_main)
from utils.files import safe_io, step_stamps, tables
from utils.files.generated import GeneratedFiles
from utils.files.model_names import SOURCES, check_plain_name, checkpoint_dir, existing_path

REPOSITORY = Path(__file__).resolve().parents[1]
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


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/pipeline_mnist5k.yaml", help="pipeline YAML")
    parser.add_argument("--output_root", help="override the YAML's output_root")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="only these stages (default: the YAML's)")
    parser.add_argument("--print_slurm", action="store_true", help="write slurm job-array scripts instead of running")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: 1 epoch, 300 training images, 2 FT trials of the "
                        "large model and 1 of each sidekick, into <output_root>_tiny unless --output_root is given")
    parser.add_argument("--refresh", action="store_true",
                        help="rerun the evaluation steps even where nothing they read or write has changed")
    parser.add_argument("--verbose", action="store_true",
                        help="every stage's full output on the screen (default: in <output_root>/logs/)")
    return parser


class Plan:
    """Paths and per-stage command lines derived from the pipeline YAML."""

    def __init__(self, config: dict, root: Path, tiny: bool):
        self.config, self.root, self.tiny = config, root, tiny
        self.dataset = config["dataset"]
        self.train = dict(config.get("train") or {})
        if tiny:
            self.train.update(lp_samples=1, num_samples=2, sidekick_samples=1, epochs_lp=1, epochs_ff=1, subset=300)
        self.checkpoints, self.predictions = root / "checkpoints", root / "predictions"
        self.calibrated, self.results = root / "calibrated", root / "results"
        self.ff = checkpoint_dir(self.checkpoints, self.dataset, "ff")
        self.large = config["large"]
        seeds = int(config.get("ensemble_seeds", 0))
        self.seed_names = [f"{self.large}_s{i}" for i in range(1, seeds + 1)]
        # the deep ensemble's members: independently trained seeds (the paper), or the large model's FT
        # trials as predicted from soup/<large>/trial<i>.pth (the official code's ensemble)
        self.from_trials = (config.get("deep_ensemble") or {}).get("members") == "trials"
        self.trial_names = [f"{self.large}_trial{i}" for i in range(self.train.get("num_samples") or 12)]
        self.ensemble = self.trial_names if self.from_trials else [self.large] + self.seed_names
        if config.get("all_backbones"):
            backbones = tables.read_backbones(config.get("backbone_csv"))
            self.sidekicks = [m for m in tables.backbone_names(backbones) if m.casefold() != self.large.casefold()]
        else:
            self.sidekicks = list(config.get("sidekicks") or [])

    def common(self) -> list:
        args = ["--dataset", self.dataset]
        if self.config.get("data_dir"):
            args += ["--data_dir", self.config["data_dir"]]
        return args

    def backbone_args(self) -> list:
        """The demo's own backbones.csv (GFLOPs at its resolution); else the stages' default, the repository's."""
        if self.config.get("backbone_csv"):
            return ["--backbone_csv", self.config["backbone_csv"]]
        return [] if self.config.get("duos_csv") else ["--backbone_csv", self.root / "backbones.csv"]

    def listed_trials(self) -> list[str]:
        """The large model's FT trials as hp_tune listed them (soup/<large>_trials.csv; every search's, as the
        soups take them), predicted as <large>_trial<i>; before training, the trials this run will make."""
        listing = checkpoint_dir(self.checkpoints, self.dataset, "soup") / f"{self.large}_trials.csv"
        if not listing.exists():
            return self.trial_names
        trials = pd.to_numeric(safe_io.read_table(listing, "trials list")["trial"], errors="coerce").dropna()
        return [f"{self.large}_trial{int(i)}" for i in sorted(trials)] or self.trial_names

    def side_by_side(self) -> int:
        """How many searches of the sidekicks (and extra seeds) run at once, each in its own process: as many
        as their trials leave cores for (the demo: two sidekicks of one trial each on two cores); one on a GPU,
        where each would start its own Ray with the whole device."""
        if torch_sees_a_gpu():
            return 1
        samples = self.train.get("sidekick_samples") or self.train.get("num_samples") or 12
        return max(1, cpu_count() // max(int(samples), int(self.train.get("lp_samples") or 1)))

    def hp_tune(self, model: str, save_name: str, seed: int, samples: int, width: int = 1) -> list:
        t = self.train
        args = ["--model", model, "--save_name", save_name, *self.common(), "--output_dir", self.checkpoints,
                "--seed", seed, "--num_samples", samples, "--weights", self.config.get("weights", "default")]
        for key, flag in (("lp_samples", "--lp_samples"), ("epochs_lp", "--epochs_lp"), ("epochs_ff", "--epochs_ff"),
                          ("batch_size", "--batch_size"), ("subset", "--subset")):
            if t.get(key) is not None:
                args += [flag, t[key]]
        if self.config.get("source"):
            args += ["--source", self.config["source"]]
        if self.config.get("image_size"):
            args += ["--image_size", self.config["image_size"]]
        # share the cores between the trials that run at once (in `width` searches side by side)
        concurrent = max(samples, int(t.get("lp_samples") or 1))
        return args + ["--cpus_per_trial", max(1, cpu_count() // (concurrent * width))]

    def train_jobs(self) -> list[tuple[str, list]]:
        samples = self.train.get("num_samples") or 12
        jobs = [(self.large, self.hp_tune(self.large, self.large, 0, samples))]
        width = self.side_by_side()
        jobs += [(name, self.hp_tune(self.large, name, i + 1, 1, width)) for i, name in enumerate(self.seed_names)]
        jobs += [(m, self.hp_tune(m, m, 0, self.train.get("sidekick_samples") or samples, width)) for m in self.sidekicks]
        return jobs

    def duos_csv(self) -> Path:
        return Path(self.config["duos_csv"]) if self.config.get("duos_csv") else self.root / "duos.csv"


def write_duo_tables(plan: Plan, soups: bool, outputs: safe_io.Outputs, generated: GeneratedFiles) -> None:
    """The demo's duos.csv and backbones.csv, with GFLOPS counted at the run's resolution; with `soups`,
    the large model's greedy soup is paired with the same sidekicks (Fig. 7)."""
    if plan.config.get("duos_csv"):
        return
    from load_models import model_loader  # counting FLOPs builds the models; planning needs no torch
    rows = []
    for name in [plan.large] + plan.sidekicks:
        model = model_loader.get_model_with_head(name, 10, source=plan.config.get("source"), weights="none")
        rows.append({"model_name": name, "source": plan.config.get("source") or model_loader.guess_source(name),
                     "Params": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
                     "GFLOPS": model_loader.count_gflops(model, plan.config.get("image_size") or 224)})
    backbones = pd.DataFrame(rows)
    for suffix in ("", *[f"_s{i}" for i in range(1, len(plan.seed_names) + 1)], "_greedy", "_uniform"):
        if suffix:
            extra = backbones.iloc[[0]].copy()
            extra["model_name"] = plan.large + suffix
            backbones = pd.concat([backbones, extra], ignore_index=True)
    generated.write(outputs, plan.root / "backbones.csv", safe_io.frame_as_csv(backbones).encode(), "backbone CSV")
    duos = tables.duos_from_backbones(backbones, [plan.large], soups=soups)
    generated.write(outputs, plan.duos_csv(), safe_io.frame_as_csv(duos).encode(), "duos CSV")


def steps(plan: Plan, stages) -> list[tuple[str, str, list, Path | None]]:
    """(stage, script, argv, output that makes the step complete or None) in order."""
    out = []
    # stages 4, 5 and 8 bootstrap their comparisons with the TS model when the YAML asks for it
    resamples = ["--bootstrap", plan.config["bootstrap"]] if plan.config.get("bootstrap") else []
    for stage in stages:
        script = SCRIPTS[stage]
        if stage == "train":
            out += [(stage, script, argv, plan.ff / f"{name}.pth") for name, argv in plan.train_jobs()]
        elif stage == "soup":
            out.append((stage, script, ["--model", plan.large, *plan.common(), "--output_dir", plan.checkpoints,
                                        "--num_workers", 0], plan.ff / f"{plan.large}_greedy.pth"))
        elif stage == "predict":
            args = ["--all_models", "--model_dir", plan.ff, *plan.common(), "--output_dir", plan.predictions,
                    "--num_workers", 0, *plan.backbone_args()]
            for key in ("ood_dir", "image_size"):          # ImageNet: pretrained models, ImageNet-V2 as ood_test
                if plan.config.get(key):
                    args += [f"--{key}", plan.config[key]]
            if "train" not in stages:
                args += ["--weights", plan.config.get("weights", "default")]
            out.append((stage, script, args, None))
            if plan.from_trials:              # the deep ensemble's members: every FT trial of the large model
                trials = ["--model_dir", checkpoint_dir(plan.checkpoints, plan.dataset, "soup") / plan.large,
                          "--name_prefix", f"{plan.large}_"]
                out.append((stage, script, [*trials, *args[args.index("--model_dir") + 2:]], None))
        elif stage == "ivon":
            model = (plan.config.get("ivon") or {}).get("model", plan.large)
            cfg = plan.config.get("ivon") or {}
            args = ["--model", model, *plan.common(), "--output_dir", plan.checkpoints, "--predictions_dir",
                    plan.predictions, "--num_workers", 0]
            mc_keys = ("mc_samples", "repeats", "mc_batch_size")      # Table 3: repeated Monte-Carlo predictives
            args += sum(([f"--{k}", v] for k, v in cfg.items() if k not in ("model", *mc_keys)), [])
            if plan.tiny:
                args += ["--subset", plan.train.get("subset")]
            out.append((stage, script, args, plan.predictions / f"{model}_ivon.npz"))
            if cfg.get("mc_samples"):
                repeats = cfg.get("repeats", 1)
                predict_only = [*args[:args.index("--num_workers") + 2], "--predict_only",
                                "--test_samples", *cfg["mc_samples"], "--repeats", repeats]
                if cfg.get("mc_batch_size"):         # inference only: fewer posterior draws per image set
                    predict_only += ["--batch_size", cfg["mc_batch_size"]]
                out.append((stage, script, predict_only, plan.predictions /
                            f"{model}_ivon_mc{cfg['mc_samples'][-1]}_r{repeats - 1}.npz"))
        elif stage == "laplace":
            model = (plan.config.get("laplace") or {}).get("model", plan.large)
            args = ["--model_path", plan.ff / f"{model}.pth", *plan.common(), "--predictions_dir", plan.predictions,
                    "--num_workers", 0] + (["--subset", plan.train.get("subset")] if plan.tiny else [])
            out.append((stage, script, args, plan.predictions / f"{model}_LA.npz"))
        elif stage == "temp_scale":
            out.append((stage, script, ["--predictions_dir", plan.predictions, "--output_dir", plan.calibrated], None))
        elif stage == "duo_temp_scale":
            out.append((stage, script, ["--config", plan.duos_csv(), "--predictions_dir", plan.predictions,
                                        "--output_dir", plan.calibrated], None))
        elif stage == "evaluate":
            out.append((stage, script, ["--predictions_dir", plan.predictions, "--output_dir", plan.results,
                                        "--calibrated_dir", plan.calibrated, "--config", plan.duos_csv(),
                                        *plan.backbone_args(), *resamples], None))
        elif stage == "evaluate_duo":
            out.append((stage, script, ["--config", plan.duos_csv(), "--predictions_dir", plan.predictions,
                                        "--output_dir", plan.results, "--calibrated_dir", plan.calibrated,
                                        *plan.backbone_args(), *resamples], None))
        elif stage == "cascades":
            cfg = plan.config.get("cascades") or {}
            budgets = ["--budgets", *cfg["budgets"]] if cfg.get("budgets") else []
            out.append((stage, script, ["--config", plan.duos_csv(), "--predictions_dir", plan.predictions,
                                        "--output_dir", plan.results, "--calibrated_dir", plan.calibrated,
                                        *plan.backbone_args(), "--steps", cfg.get("steps", 20), *budgets], None))
        elif stage == "deep_ensemble" and len(plan.ensemble) > 1:
            cfg = plan.config.get("deep_ensemble") or {}
            sizes = cfg.get("sizes", [2])
            if plan.tiny:                     # --tiny trains 2 FT trials, whatever the YAML's ensemble sizes
                sizes = [m for m in sizes if m <= len(plan.ensemble)] or [len(plan.ensemble)]
            out.append((stage, script, ["--members", *plan.ensemble, "--predictions_dir", plan.predictions, "--sizes", *sizes,
                                        "--subsets", cfg.get("subsets", 32), "--name", plan.large,
                                        "--output_dir", plan.results, *resamples,
                                        *(["--base", plan.large] if resamples and plan.from_trials else [])], None))
        elif stage == "report":
            out.append((stage, script, ["--results_dir", plan.results, "--calibrated_dir", plan.calibrated,
                                        "--predictions_dir", plan.predictions, "--large", plan.large], None))
    return out


def command_line(script: str, argv: list) -> str:
    return "python " + " ".join(shlex.quote(str(a)) for a in [script, *argv])


def write_slurm(plan: Plan, all_steps, outputs: safe_io.Outputs, generated: GeneratedFiles) -> list[Path]:
    """The pipeline as slurm jobs (utils/cli/slurm.py): one array task per trained backbone (hp_tune with
    --resume and the job's CPUs, then its soups), then everything else on the backbones that finished."""
    folder = plan.root / "slurm"
    tasks = []
    for stage, script, argv, _ in all_steps:
        if stage != "train":
            continue
        argv = [str(a) for a in argv]
        cpus = argv.index("--cpus_per_trial")
        argv[cpus + 1] = '"$CPUS"'
        model, name = argv[argv.index("--model") + 1], argv[argv.index("--save_name") + 1]
        soup = ["--model", model, "--save_name", name, *plan.common(), "--output_dir", plan.checkpoints,
                "--num_workers", '"$CPUS"']
        tasks.append([(script, [*argv, "--gpus_per_trial", 1, "--resume"]), (SCRIPTS["soup"], soup)])
    after = [(script, [('"$CPUS"' if previous == "--num_workers" else value) for previous, value in zip([None, *argv], argv)])
             for stage, script, argv, _ in all_steps if stage not in ("train", "soup")]
    back = os.path.relpath(Path.cwd(), folder.resolve())      # where the run's relative paths start
    scripts = slurm.pipeline_scripts(tasks, after, back)
    for name, text in scripts.items():
        generated.write(outputs, folder / name, text.encode(), "slurm script")
    return [folder / name for name in scripts]


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config, path = load_pipeline(args.config)
    if args.output_root is not None and not args.output_root.strip():
        raise UserError("--output_root: empty; name the folder the run's outputs go to (e.g. runs/my_run)")
    # a smoke run never lands in the real run's folder, whose finished steps it would then stand in for
    root = args.output_root or config.get("output_root", "runs/pipeline") + ("_tiny" if args.tiny else "")
    plan = Plan(config, Path(root), args.tiny)
    # in pipeline order however they are listed: a step must never run on what a later stage is about to replace
    stages = [stage for stage in STAGES if stage in (args.stages or config.get("stages", list(STAGES)))]
    safe_io.make_folder(plan.root)
    # the run's own duos and backbones CSVs (and with --print_slurm its scripts) are written together, never over a
    # file the pipeline did not write
    outputs, generated = safe_io.Outputs([path]), GeneratedFiles(plan.root, "run_pipeline")
    write_duo_tables(plan, "soup" in config.get("stages", STAGES), outputs, generated)
    all_steps = steps(plan, stages)
    written = write_slurm(plan, all_steps, outputs, generated) if args.print_slurm else []
    generated.queue_manifest(outputs)
    outputs.commit()
    if args.print_slurm:
        print(f"wrote {', '.join(map(str, written))}; submit with `bash {shlex.quote(str(written[-1]))}`")
        return 0
    started = time.time()
    stamps = step_stamps.Stamps(plan.root / "logs" / step_stamps.STAMP_FILE)
    code = step_stamps.code_digest(REPOSITORY)
    stamped = {}                          # the steps to stamp when the run completes
    width = plan.side_by_side()           # the width the training steps' --cpus_per_trial was planned for
    side_by_side = []                     # sidekick searches waiting to run at once
    for number, (stage, script, step_argv, done_when) in enumerate(all_steps, start=1):
        prefix = f"[{number:>2}/{len(all_steps)} {stage:<14}]"
        log = plan.root / "logs" / f"{number:02d}_{stage}{step_label(step_argv)}.log"
        if done_when is not None and existing_path(done_when).exists():       # names in any case
            print(f"{prefix} reused: {done_when} exists")
            continue
        if stage == "train" and width > 1 and step_argv[step_argv.index("--save_name") + 1] != plan.large:
            side_by_side.append((prefix, log, script, step_argv))
            continue
        run_side_by_side(side_by_side, width, args.verbose)
        side_by_side = []
        if stage == "deep_ensemble" and plan.from_trials:        # the trials listed now, after this run's training
            members = step_argv.index("--members")
            step_argv = [*step_argv[:members + 1], *plan.listed_trials(),
                         *step_argv[step_argv.index("--predictions_dir"):]]
        if done_when is None:
            key, paths = step_stamps.Stamps.key(script, step_argv, code), step_stamps.step_paths(step_argv)
            stamped[key] = paths
            if not args.refresh and stamps.unchanged(key, paths):
                print(f"{prefix} reused: nothing it reads or writes changed since the last complete run "
                      f"(--refresh reruns it)")
                if stage == "report":
                    print(results_table(plan), end="")
                continue
        run_step(prefix, log, script, step_argv, args.verbose)
    run_side_by_side(side_by_side, width, args.verbose)
    stamps.record(stamped)
    console.show(f"pipeline finished in {time.time() - started:.0f} s; outputs under {plan.root}"
                 + ("" if args.verbose else f", each step's full output under {plan.root / 'logs'}"))
    return 0


def step_label(argv: list) -> str:
    """`_<model>` for the steps of one model (training, IVON, Laplace, the FT trials' predictions), so that their
    logs do not share a name."""
    if "--name_prefix" in argv:
        return f"_{argv[argv.index('--name_prefix') + 1]}trials"
    for flag in ("--save_name", "--model", "--model_path"):
        if flag in argv:
            return "_" + Path(str(argv[argv.index(flag) + 1])).stem
    return ""


def start_line(prefix: str, script: str, argv: list) -> str:
    return f"{prefix} {Path(script).stem}{step_label(argv).replace('_', ' ', 1)} ..."


def run_step(prefix: str, log: Path, script: str, argv: list, verbose: bool) -> None:
    """One stage, in this process: its command line and output to the screen (verbose) or to `log`, with a
    start and an end line."""
    began = time.time()
    module = importlib.import_module(script[:-3].replace("/", "."))
    if verbose:
        print(f"{prefix} {command_line(script, argv)}", flush=True)
        code = module.main([str(a) for a in argv])
    else:
        print(start_line(prefix, script, argv), flush=True)
        log.unlink(missing_ok=True)
        with console.captured(log):
            print(command_line(script, argv), flush=True)
            code = module.main([str(a) for a in argv])
    check_step(prefix, log, script, code, began, verbose)


def run_side_by_side(group: list[tuple[str, Path, str, list]], width: int, verbose: bool) -> None:
    """Searches that each leave cores idle (one trial of a small model), `width` at once, each in its own
    process with its own local Ray instance; each one's trial lines and end line appear when it ends. After a
    failure no further search starts; an interrupted or terminated pipeline stops the ones running."""
    running, failed, queue = [], None, list(group)
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        while (queue and failed is None) or running:
            while queue and failed is None and len(running) < width:
                running.append(_launch(*queue.pop(0), verbose))
            time.sleep(0.5)
            for entry in [e for e in running if e[0].poll() is not None]:
                running.remove(entry)
                process, output, prefix, log, script, screen, began = entry
                if output is not None:
                    output.close()
                if screen.exists():
                    if not verbose:
                        print(screen.read_text(), end="", flush=True)
                    screen.unlink()
                try:
                    check_step(prefix, log, script, process.returncode, began, verbose)
                except UserError as error:
                    failed = failed or error
    finally:
        signal.signal(signal.SIGTERM, previous)
        for process, *_ in running:                        # only after an interrupt: stop them with the pipeline
            _stop(process)
    if failed:
        raise UserError(f"{failed}" + (f" ({len(queue)} other search(es) not started)" if queue else ""))


def _launch(prefix: str, log: Path, script: str, argv: list, verbose: bool) -> tuple:
    print(start_line(prefix, script, argv) + " (side by side)", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    screen = log.with_suffix(".screen")
    screen.unlink(missing_ok=True)
    output = None if verbose else open(log, "w")
    if output is not None:
        output.write(command_line(script, argv) + "\n")
        output.flush()
    # the project's script by its path (a train/ or utils/ folder in the working folder must not stand in for
    # ours), in a process group of its own so that stopping the pipeline stops it and its Ray instance
    process = subprocess.Popen([sys.executable, str(REPOSITORY / script), *map(str, argv)], stdout=output,
                               stderr=subprocess.STDOUT if output else None, start_new_session=True,
                               env={**os.environ, console.SCREEN_FILE_ENV: str(screen)})
    return process, output, prefix, log, script, screen, time.time()


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def _stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def check_step(prefix: str, log: Path, script: str, code: int, began: float, verbose: bool) -> None:
    """The step's end line (what it wrote, how long, its warnings), or its log's tail and an error."""
    if not verbose and not code:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        written = [line for line in lines if line.startswith("wrote ")]
        warnings = sum(line.startswith("warning:") for line in lines)
        outcome = (written or lines[1:] or ["done"])[-1]
        print(f"{prefix} {outcome[:150]}{' ...' if len(outcome) > 150 else ''} ({time.time() - began:.0f} s"
              + (f"; {warnings} warning(s): see {log}" if warnings else "") + ")", flush=True)
    if code:
        tail = log.read_text(errors="replace").splitlines()[-15:] if not verbose else []
        print("\n".join(f"    {line}" for line in tail), file=sys.stderr)
        where = "" if verbose else f" (its full output: {log})"
        raise UserError(f"stage '{Path(script).stem}' failed (exit {code}){where}; fix it and rerun: finished stages "
                        f"are reused")


def results_table(plan: Plan) -> str:
    """The results table of the report a reused report step wrote (the screen ends with it either way)."""
    for name in ("REPORT.md", f"REPORT_{plan.dataset}.md"):
        path = plan.results / name
        if path.exists():
            section = path.read_text(errors="replace").split("\n## Results", 1)[-1].split("\n## ", 1)[0]
            return "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))
    return ""


def torch_sees_a_gpu() -> bool:
    import torch
    return torch.cuda.is_available()


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())
