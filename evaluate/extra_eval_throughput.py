"""Measured throughput of single models and duos (paper App. B, Fig. 8), not the analytic estimate.

    python evaluate/extra_eval_throughput.py --models ConvNeXt_Base ResNet18 --pairs ConvNeXt_Base:EfficientNet_B0 \
        --device cuda --precision bf16 --channels_last --output throughput.csv
    python evaluate/extra_eval_throughput.py --duos_csv configs/duos.csv --device cuda      # every duo of the CSV

Singles: the largest batch (from --max_batch, halved on out-of-memory), warm-up, then CUDA-event
timing (perf_counter on CPU). Duos, at each --duo_batch: eager sequential (large then sidekick),
one CUDA graph of the whole duo, and a CUDA graph with the sidekick on a second stream; plus the
official code's analytic estimate 1 / (1/thr_large + 1/thr_small). Writes throughput.csv and prints
R² of log throughput against log GFLOPs for singles and duos (the paper: 0.938 and 0.795 on a V100).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from load_models import model_loader
from load_models.inference import autocast_context, prepare_model, resolve_device
from utils.cli import flags
from utils.cli.parsing import ArgumentParser, UserError, add_backbone_csv, non_negative_int, positive_int, run_main
from utils.files import safe_io, tables


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], parents=[flags.device(precision="auto")])
    add_backbone_csv(parser, "sources, tv_weights and GFLOPS")
    parser.add_argument("--models", nargs="*", default=[], help="single models to time (default: none)")
    parser.add_argument("--pairs", nargs="*", default=[], metavar="LARGE:SMALL", help="duos to time")
    parser.add_argument("--duos_csv", help="time every duo of this CSV (and its members)")
    parser.add_argument("--max_batch", type=positive_int, default=512, help="singles: start here, halve on OOM")
    parser.add_argument("--duo_batch", type=positive_int, nargs="+", default=[256, 32], help="duo batch sizes")
    parser.add_argument("--image_size", type=positive_int, help="override every model's own input size")
    parser.add_argument("--warmup", type=non_negative_int, default=20, help="untimed calls before timing")
    parser.add_argument("--reps", type=positive_int, default=100, help="timed calls (mean latency)")
    parser.add_argument("--no_graphs", action="store_true", help="eager only (always on CPU)")
    parser.add_argument("--output", default="throughput.csv", help="results CSV")
    return parser


def input_size(name: str, source: str, tv_weights, override: int | None) -> int:
    if override:
        return override
    if source == "torchvision":
        return model_loader.torchvision_weights(name, tv_weights).transforms().crop_size[0]
    import timm
    return timm.models.get_pretrained_cfg(model_loader.architecture_of(name)).input_size[-1]


class Timer:
    """Mean seconds per call: CUDA events on the GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device, warmup: int, reps: int):
        self.device, self.warmup, self.reps = device, warmup, reps

    def __call__(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(self.reps):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000 / self.reps
        start = time.perf_counter()
        for _ in range(self.reps):
            fn()
        return (time.perf_counter() - start) / self.reps


class Member:
    def __init__(self, name: str, backbones, args, device):
        self.name = name
        self.source = tables.backbone_text(backbones, name, "source") or model_loader.guess_source(name)
        self.tv_weights = tables.backbone_text(backbones, name, "tv_weights")
        self.size = input_size(name, self.source, self.tv_weights, args.image_size)
        model = model_loader.get_model_with_head(name, source=self.source, tv_weights=self.tv_weights,
                                                 keep_imagenet_head=True, weights="none").eval()
        self.gflops = tables.backbone_value(backbones, name, "GFLOPS")
        if math.isnan(self.gflops):
            self.gflops = model_loader.count_gflops(model, self.size)
        self.model = prepare_model(model, device, channels_last=args.channels_last)
        self.args, self.device = args, device

    def batch(self, n: int) -> torch.Tensor:
        x = torch.randn(n, 3, self.size, self.size, device=self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.args.channels_last else x

    def forward(self, x):
        with autocast_context(self.device, self.args.precision):
            return self.model(x)


def largest_batch(member: Member, timer: Timer, start: int) -> tuple[int, float]:
    batch = start
    while batch >= 1:
        try:
            x = member.batch(batch)
            with torch.inference_mode():
                return batch, timer(lambda x=x: member.forward(x))
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            batch //= 2
    raise UserError(f"{member.name}: does not fit even at batch 1")


def graph(fn):
    """Capture fn (no arguments, static inputs) as a CUDA graph; returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    captured = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(captured):
        fn()
    return captured.replay


def duo_rows(large: Member, small: Member, batch: int, timer: Timer, use_graphs: bool) -> list[dict]:
    x_large, x_small = large.batch(batch), small.batch(batch)

    def alone():
        return large.forward(x_large)

    def sequential():
        return (large.forward(x_large) + small.forward(x_small)) / 2

    methods = {"eager": (alone, sequential)}
    if use_graphs:
        side = torch.cuda.Stream()

        def two_streams():
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                s = small.forward(x_small)
            big = large.forward(x_large)
            torch.cuda.current_stream().wait_stream(side)
            return (big + s) / 2
        methods["cuda_graph"] = (graph(alone), graph(sequential))
        methods["cuda_graph_2streams"] = (methods["cuda_graph"][0], graph(two_streams))
    rows = []
    with torch.inference_mode():
        for method, (base_fn, duo_fn) in methods.items():
            base, duo = timer(base_fn), timer(duo_fn)
            rows.append({"kind": "duo", "model": f"{large.name}+{small.name}", "model_large": large.name,
                         "model_small": small.name, "gflops": large.gflops + small.gflops,
                         "gflops_balance": small.gflops / large.gflops, "batch": batch, "method": method,
                         "latency_ms": duo * 1000, "throughput": batch / duo, "large_alone_throughput": batch / base,
                         "extra_time_pct": 100 * (duo - base) / base})
    return rows


def r_squared(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3:
        return math.nan
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    return float(1 - residual.var() / y.var()) if y.var() > 0 else math.nan


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    backbones = tables.read_backbones(args.backbone_csv)
    pairs = [tuple(p.split(":", 1)) for p in args.pairs]
    if any(len(p) != 2 for p in pairs):
        raise UserError("--pairs: write each pair as LARGE:SMALL")
    if args.duos_csv:
        duos = tables.read_duos(args.duos_csv)
        pairs += list(zip(duos["model_large"], duos["model_small"]))
    names = list(dict.fromkeys([*args.models, *[m for p in pairs for m in p]]))
    if not names:
        raise UserError("nothing to time: give --models, --pairs or --duos_csv")
    use_graphs = device.type == "cuda" and not args.no_graphs
    timer = Timer(device, args.warmup, args.reps)
    members, rows = {}, []
    for name in names:
        members[name] = member = Member(name, backbones, args, device)
        batch, seconds = largest_batch(member, timer, args.max_batch)
        rows.append({"kind": "single", "model": name, "gflops": member.gflops, "batch": batch, "method": "eager",
                     "latency_ms": seconds * 1000, "throughput": batch / seconds})
        print(f"{name:45s} {member.gflops:7.2f} GFLOPs  batch {batch:4d}  {batch / seconds:10.1f} img/s")
    single = {r["model"]: r["throughput"] for r in rows}
    for large, small in pairs:
        analytic = 1 / (1 / single[large] + 1 / single[small])
        rows.append({"kind": "duo", "model": f"{large}+{small}", "model_large": large, "model_small": small,
                     "gflops": members[large].gflops + members[small].gflops,
                     "gflops_balance": members[small].gflops / members[large].gflops, "method": "analytic_official",
                     "throughput": analytic, "large_alone_throughput": single[large],
                     "extra_time_pct": 100 * (single[large] / analytic - 1)})
        for batch in args.duo_batch:
            for row in duo_rows(members[large], members[small], batch, timer, use_graphs):
                rows.append(row)
                print(f"{row['model']:45s} bs {batch:4d} {row['method']:20s} {row['throughput']:10.1f} img/s  "
                      f"+{row['extra_time_pct']:.1f}% time over the large model alone")
    frame = pd.DataFrame(rows)
    safe_io.write_csv(Path(args.output), frame)
    singles = frame[frame["kind"] == "single"]
    duos = frame[(frame["kind"] == "duo") & (frame["method"] == "eager")]
    print(f"R² log throughput vs log GFLOPs: singles {r_squared(np.log(singles.gflops), np.log(singles.throughput)):.3f}"
          f" (paper 0.938), duos {r_squared(np.log(duos.gflops), np.log(duos.throughput)):.3f} (paper 0.795)")
    print(f"wrote {args.output}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())
