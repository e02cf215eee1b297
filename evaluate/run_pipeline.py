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
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from utils.cli import console
from utils.cli.parsing import ArgumentParser, UserError, run_main
from utils.files import safe_io, tables
from utils.files.generated import GeneratedFiles
from utils.pipeline import runner
from utils.pipeline.plan import Plan, slurm_scripts, steps
from utils.pipeline.schema import STAGES, load_pipeline


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/pipeline_mnist5k.yaml", help="pipeline YAML")
    parser.add_argument("--output_root", help="override the YAML's output_root")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="only these stages (default: the YAML's)")
    parser.add_argument("--print_slurm", action="store_true", help="write slurm job-array scripts instead of running")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: 1 epoch, 300 training images, 2 FT trials of "
                        "the large model and 1 of each sidekick, into <output_root>_tiny unless --output_root is given")
    parser.add_argument("--refresh", action="store_true",
                        help="rerun the evaluation steps even where nothing they read or write has changed")
    parser.add_argument("--verbose", action="store_true",
                        help="every stage's full output on the screen (default: in <output_root>/logs/)")
    return parser


def write_duo_tables(plan: Plan, soups: bool, outputs: safe_io.Outputs, generated: GeneratedFiles) -> None:
    """The demo's duos.csv and backbones.csv, with GFLOPS counted at the run's resolution; with `soups`,
    the large model's greedy soup is paired with the same sidekicks (Fig. 7)."""
    if plan.config.get("duos_csv"):
        return
    from load_models import model_loader  # counting FLOPs builds the models; planning needs no torch
    rows = []
    for name in [plan.large] + plan.sidekicks:
        model = model_loader.get_model_with_head(name, 10, source=plan.config.get("source"), weights="none")
        try:
            gflops = model_loader.count_gflops(model, plan.config.get("image_size") or 224)
        except UserError as exc:
            raise UserError(f"--config: {name}: {exc}") from None
        rows.append({"model_name": name, "source": plan.config.get("source") or model_loader.guess_source(name),
                     "Params": round(sum(p.numel() for p in model.parameters()) / 1e6, 3), "GFLOPS": gflops})
    backbones = pd.DataFrame(rows)
    for suffix in ("", *[f"_s{i}" for i in range(1, len(plan.seed_names) + 1)], "_greedy", "_uniform"):
        if suffix:
            extra = backbones.iloc[[0]].copy()
            extra["model_name"] = plan.large + suffix
            backbones = pd.concat([backbones, extra], ignore_index=True)
    generated.write(outputs, plan.root / "backbones.csv", safe_io.frame_as_csv(backbones).encode(), "backbone CSV")
    duos = tables.duos_from_backbones(backbones, [plan.large], soups=soups)
    generated.write(outputs, plan.duos_csv(), safe_io.frame_as_csv(duos).encode(), "duos CSV")


def torch_sees_a_gpu() -> bool:
    """Asked only when training steps are planned on this machine."""
    import torch
    return torch.cuda.is_available()


def stage_main(script: str):
    """A stage script's main(argv), to run it in this process."""
    return importlib.import_module(script[:-3].replace("/", ".")).main


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config, path = load_pipeline(args.config)
    if args.output_root is not None and not args.output_root.strip():
        raise UserError("--output_root: empty; name the folder the run's outputs go to (e.g. runs/my_run)")
    # a smoke run never lands in the real run's folder, whose finished steps it would then stand in for
    root = args.output_root or config.get("output_root", "runs/pipeline") + ("_tiny" if args.tiny else "")
    plan = Plan(config, Path(root), args.tiny, torch_sees_a_gpu, on_slurm=args.print_slurm)
    # in pipeline order however they are listed: a step must never run on what a later stage is about to replace
    stages = [stage for stage in STAGES if stage in (args.stages or config.get("stages", list(STAGES)))]
    safe_io.make_folder(plan.root)
    # the run's own duos and backbones CSVs (and with --print_slurm its scripts) are written together, never over a
    # file the pipeline did not write
    outputs, generated = safe_io.Outputs([path]), GeneratedFiles(plan.root, "run_pipeline")
    write_duo_tables(plan, "soup" in config.get("stages", STAGES), outputs, generated)
    all_steps = steps(plan, stages)
    written = []
    if args.print_slurm:
        for name, text in slurm_scripts(plan, all_steps).items():
            generated.write(outputs, plan.root / "slurm" / name, text.encode(), "slurm script")
            written.append(plan.root / "slurm" / name)
    generated.queue_manifest(outputs)
    outputs.commit()
    if args.print_slurm:
        print(f"wrote {', '.join(map(str, written))}; submit with `bash {shlex.quote(str(written[-1]))}`")
        return 0
    started = time.time()
    runner.run_steps(plan, all_steps, runner.Options(args.refresh, args.verbose), stage_main)
    console.show(f"pipeline finished in {time.time() - started:.0f} s; outputs under {plan.root}"
                 + ("" if args.verbose else f", each step's full output under {plan.root / 'logs'}"))
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())
