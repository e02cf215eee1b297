"""A pipeline run as data: the paths a pipeline YAML implies (`Plan`) and its steps (`Step`: the stage, its
script, its command line, the output that shows it done), one function per stage. The same steps run locally
(utils/pipeline/runner.py) or become slurm scripts (`slurm_scripts`)."""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from utils.cli import slurm
from utils.cli.parsing import cpu_count
from utils.files import safe_io, tables
from utils.files.model_names import checkpoint_dir
from utils.pipeline.schema import SCRIPTS

SLURM_CPUS = '"$CPUS"'             # the shell word of a slurm job's CPUs (utils/cli/slurm.py's prelude sets it)


@dataclass
class Step:
    """One stage call: its command line, and the file whose presence shows it done (None: the step is stamped
    instead, utils/files/step_stamps.py). `members` recomputes the command line when the step runs (a deep ensemble
    of the FT trials takes the trials listed after this run's training)."""
    stage: str
    argv: list
    done_when: Path | None = None
    side_by_side: bool = False
    members: Callable[[list], list] | None = field(default=None, repr=False)
    script: str = ""              # the stage's script (SCRIPTS) unless given

    def __post_init__(self):
        self.script = self.script or SCRIPTS[self.stage]

    def command_line(self) -> str:
        return "python " + " ".join(shlex.quote(str(a)) for a in [self.script, *self.argv])


class Plan:
    """Paths and per-stage command lines derived from the pipeline YAML. `gpu` says whether training sees a GPU
    (asked only when training steps are planned); `on_slurm` plans each step for a slurm job: the job's CPUs, and
    training with one GPU and --resume."""

    def __init__(self, config: dict, root: Path, tiny: bool, gpu: Callable[[], bool] = lambda: False,
                 on_slurm: bool = False):
        self.config, self.root, self.tiny, self.gpu, self.on_slurm = config, root, tiny, gpu, on_slurm
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
        self._width: int | None = None

    @property
    def slurm_gpus(self) -> int:
        return int((self.config.get("slurm") or {}).get("gpus", 1))

    def slurm_resources(self) -> dict:
        """The YAML's `slurm:` settings as #SBATCH directives over the defaults (gres None: no GPU requested)."""
        settings = self.config.get("slurm") or {}
        found = {"gres": f"gpu:{self.slurm_gpus}" if self.slurm_gpus else None}
        found.update({directive: settings[key] for key, directive in (("cpus", "cpus-per-task"), ("partition", "partition"),
                                                                    ("mem", "mem"), ("time", "time")) if key in settings})
        return found

    @property
    def workers(self):
        """--num_workers of the steps that load images: the job's CPUs on slurm, else 0 (this process)."""
        return SLURM_CPUS if self.on_slurm else 0

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

    def duos_csv(self) -> Path:
        return Path(self.config["duos_csv"]) if self.config.get("duos_csv") else self.root / "duos.csv"

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
        if self._width is None:
            samples = self.train.get("sidekick_samples") or self.train.get("num_samples") or 12
            self._width = 1 if self.on_slurm or self.gpu() else max(
                1, cpu_count() // max(int(samples), int(self.train.get("lp_samples") or 1)))
        return self._width

    def hp_tune(self, model: str, save_name: str, seed: int, samples: int, width: int = 1) -> list:
        t = self.train
        args = ["--model", model, "--save_name", save_name, *self.common(), "--output_dir", self.checkpoints,
                "--seed", seed, "--num_samples", samples, "--weights", self.config.get("weights", "default")]
        for key in ("lp_samples", "epochs_lp", "epochs_ff", "batch_size", "subset"):
            if t.get(key) is not None:
                args += [f"--{key}", t[key]]
        if self.config.get("source"):
            args += ["--source", self.config["source"]]
        if self.config.get("image_size"):
            args += ["--image_size", self.config["image_size"]]
        if self.on_slurm:                          # the job's CPUs, its GPU, and a requeued job resumes its search
            return args + ["--cpus_per_trial", SLURM_CPUS, "--gpus_per_trial", self.slurm_gpus, "--resume"]
        # share the cores between the trials that run at once (in `width` searches side by side)
        concurrent = max(samples, int(t.get("lp_samples") or 1))
        return args + ["--cpus_per_trial", max(1, cpu_count() // (concurrent * width))]


# ----------------------------------------------------------------------------- one function per stage

def _bootstrap(plan: Plan) -> list:
    """Stages 4, 5 and 8 bootstrap their comparisons with the TS model when the YAML asks for it."""
    return ["--bootstrap", plan.config["bootstrap"]] if plan.config.get("bootstrap") else []


def train_steps(plan: Plan, stages) -> list[Step]:
    samples = plan.train.get("num_samples") or 12
    steps = [Step("train", plan.hp_tune(plan.large, plan.large, 0, samples), plan.ff / f"{plan.large}.pth")]
    width = plan.side_by_side()
    for i, name in enumerate(plan.seed_names):
        steps.append(Step("train", plan.hp_tune(plan.large, name, i + 1, 1, width), plan.ff / f"{name}.pth",
                          side_by_side=width > 1))
    for model in plan.sidekicks:
        argv = plan.hp_tune(model, model, 0, plan.train.get("sidekick_samples") or samples, width)
        steps.append(Step("train", argv, plan.ff / f"{model}.pth", side_by_side=width > 1))
    return steps


def soup_steps(plan: Plan, stages, model: str | None = None, save_name: str | None = None) -> list[Step]:
    model = model or plan.large
    names = ["--save_name", save_name] if save_name else []
    return [Step("soup", ["--model", model, *names, *plan.common(), "--output_dir", plan.checkpoints, "--num_workers",
                          plan.workers], plan.ff / f"{save_name or model}_greedy.pth")]


def predict_steps(plan: Plan, stages) -> list[Step]:
    args = ["--all_models", "--model_dir", plan.ff, *plan.common(), "--output_dir", plan.predictions,
            "--num_workers", plan.workers, *plan.backbone_args()]
    for key in ("ood_dir", "image_size"):          # ImageNet: pretrained models, ImageNet-V2 as ood_test
        if plan.config.get(key):
            args += [f"--{key}", plan.config[key]]
    if "train" not in stages:
        args += ["--weights", plan.config.get("weights", "default")]
    sweep = plan.config.get("corruptions") or {}
    corrupted = (["--corruptions", *sweep["names"], "--severities", *sweep.get("severities", [1, 2, 3, 4, 5]),
                  "--corruption_seed", sweep.get("seed", 0)] if sweep.get("names") else [])
    steps = [Step("predict", args + corrupted)]        # the trials (deep-ensemble members) need no sweep
    if plan.from_trials:              # the deep ensemble's members: every FT trial of the large model
        trials = ["--model_dir", checkpoint_dir(plan.checkpoints, plan.dataset, "soup") / plan.large,
                  "--name_prefix", f"{plan.large}_"]
        steps.append(Step("predict", [*trials, *args[args.index("--model_dir") + 2:]]))
    return steps


def ivon_steps(plan: Plan, stages) -> list[Step]:
    cfg = plan.config.get("ivon") or {}
    model = cfg.get("model", plan.large)
    args = ["--model", model, *plan.common(), "--output_dir", plan.checkpoints, "--predictions_dir", plan.predictions,
            "--num_workers", plan.workers]
    mc_keys = ("mc_samples", "repeats", "mc_batch_size")      # Table 3: repeated Monte-Carlo predictives
    args += sum(([f"--{k}", v] for k, v in cfg.items() if k not in ("model", *mc_keys)), [])
    if plan.tiny:
        args += ["--subset", plan.train.get("subset")]
    steps = [Step("ivon", args, plan.predictions / f"{model}_ivon.npz")]
    if cfg.get("mc_samples"):
        repeats = cfg.get("repeats", 1)
        predict_only = [*args[:args.index("--num_workers") + 2], "--predict_only", "--test_samples",
                        *cfg["mc_samples"], "--repeats", repeats]
        if cfg.get("mc_batch_size"):         # inference only: fewer posterior draws per image set
            predict_only += ["--batch_size", cfg["mc_batch_size"]]
        steps.append(Step("ivon", predict_only,
                          plan.predictions / f"{model}_ivon_mc{cfg['mc_samples'][-1]}_r{repeats - 1}.npz"))
    return steps


def laplace_steps(plan: Plan, stages) -> list[Step]:
    model = (plan.config.get("laplace") or {}).get("model", plan.large)
    args = ["--model_path", plan.ff / f"{model}.pth", *plan.common(), "--predictions_dir", plan.predictions,
            "--num_workers", plan.workers] + (["--subset", plan.train.get("subset")] if plan.tiny else [])
    return [Step("laplace", args, plan.predictions / f"{model}_LA.npz")]


def temp_scale_steps(plan: Plan, stages) -> list[Step]:
    return [Step("temp_scale", ["--predictions_dir", plan.predictions, "--output_dir", plan.calibrated])]


def duo_temp_scale_steps(plan: Plan, stages) -> list[Step]:
    return [Step("duo_temp_scale", ["--config", plan.duos_csv(), "--predictions_dir", plan.predictions,
                                    "--output_dir", plan.calibrated])]


def evaluate_steps(plan: Plan, stages) -> list[Step]:
    return [Step("evaluate", ["--predictions_dir", plan.predictions, "--output_dir", plan.results, "--calibrated_dir",
                              plan.calibrated, "--config", plan.duos_csv(), *plan.backbone_args(), *_bootstrap(plan)])]


def evaluate_duo_steps(plan: Plan, stages) -> list[Step]:
    return [Step("evaluate_duo", ["--config", plan.duos_csv(), "--predictions_dir", plan.predictions, "--output_dir",
                                  plan.results, "--calibrated_dir", plan.calibrated, *plan.backbone_args(),
                                  *_bootstrap(plan)])]


def cascades_steps(plan: Plan, stages) -> list[Step]:
    cfg = plan.config.get("cascades") or {}
    budgets = ["--budgets", *cfg["budgets"]] if cfg.get("budgets") else []
    return [Step("cascades", ["--config", plan.duos_csv(), "--predictions_dir", plan.predictions, "--output_dir",
                              plan.results, "--calibrated_dir", plan.calibrated, *plan.backbone_args(), "--steps",
                              cfg.get("steps", 20), *budgets])]


def deep_ensemble_steps(plan: Plan, stages) -> list[Step]:
    if len(plan.ensemble) < 2:
        return []
    cfg = plan.config.get("deep_ensemble") or {}
    sizes = cfg.get("sizes", [2])
    if plan.tiny:                     # --tiny trains 2 FT trials, whatever the YAML's ensemble sizes
        sizes = [m for m in sizes if m <= len(plan.ensemble)] or [len(plan.ensemble)]
    resamples = _bootstrap(plan)

    def argv(members: list) -> list:
        return ["--members", *members, "--predictions_dir", plan.predictions, "--sizes", *sizes, "--subsets",
                cfg.get("subsets", 32), "--name", plan.large, "--output_dir", plan.results, *resamples,
                *(["--base", plan.large] if resamples and plan.from_trials else [])]
    # the FT trials as listed when the step runs, after this run's training
    return [Step("deep_ensemble", argv(plan.ensemble), members=(lambda _: argv(plan.listed_trials()))
                 if plan.from_trials else None)]


def report_steps(plan: Plan, stages) -> list[Step]:
    return [Step("report", ["--results_dir", plan.results, "--calibrated_dir", plan.calibrated, "--predictions_dir",
                            plan.predictions, "--large", plan.large])]


STEPS = {"train": train_steps, "soup": soup_steps, "predict": predict_steps, "ivon": ivon_steps,
         "laplace": laplace_steps, "temp_scale": temp_scale_steps, "duo_temp_scale": duo_temp_scale_steps,
         "evaluate": evaluate_steps, "evaluate_duo": evaluate_duo_steps, "cascades": cascades_steps,
         "deep_ensemble": deep_ensemble_steps, "report": report_steps}


def steps(plan: Plan, stages) -> list[Step]:
    """The run's steps in pipeline order."""
    return [step for stage in stages for step in STEPS[stage](plan, stages)]


def slurm_scripts(plan: Plan, all_steps: list[Step]) -> dict[str, str]:
    """The pipeline as slurm jobs (utils/cli/slurm.py): one array task per trained backbone (its search, then its
    soups), then everything else on the backbones that finished. `plan` must be planned `on_slurm`."""
    tasks, trained = [], []
    for step in all_steps:
        if step.stage == "train":
            model, name = (step.argv[step.argv.index(flag) + 1] for flag in ("--model", "--save_name"))
            soup = soup_steps(plan, (), model, name)[0]
            tasks.append([(step.script, step.argv), (soup.script, soup.argv)])
            trained.append((name, step.done_when))
    after = [(step.script, step.argv) for step in all_steps if step.stage not in ("train", "soup")]
    back = os.path.relpath(Path.cwd(), (plan.root / "slurm").resolve())      # where the run's relative paths start
    return slurm.pipeline_scripts(tasks, after, back, resources=plan.slurm_resources(), trained=trained)
