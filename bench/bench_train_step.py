"""Images/s of the project's own training step (train.engine.train_one_epoch, the code hp_tune runs)
on synthetic input: the official configuration (fp32, batch 16) against the fast path (bf16 autocast
+ channels_last, batch 128). One JSON line per model and configuration.

    python bench/bench_train_step.py --device cuda                 # the five models of the GPU checks
    python bench/bench_train_step.py --models resnet18 --steps 2 --image_size 32 --device cpu   # smoke run
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from load_models import inference, model_loader
from train import engine

MODELS = ["resnet50", "convnext_base", "vit_b_16", "efficientnet_b0", "resnet18"]
CONFIGS = {"official_fp32_bs16": {"precision": "fp32", "channels_last": False, "batch": 16},
           "fast_bf16_channels_last_bs128": {"precision": "bf16", "channels_last": True, "batch": 128}}


def images_per_second(name: str, config: dict, device: torch.device, steps: int, warmup: int, size: int,
                      compile: bool) -> float:
    model = model_loader.get_model_with_head(name, 1000, source="torchvision", weights="none")
    model = inference.prepare_model(model, device, channels_last=config["channels_last"], compile=compile)
    optimizer = engine.make_optimizer(model, 1e-4, 1e-8)
    x = torch.randn(config["batch"], 3, size, size)
    y = torch.randint(0, 1000, (config["batch"],))
    batches = [(x, y, None)]

    def run(n):
        for _ in range(n):
            engine.train_one_epoch(model, batches, optimizer, device, config["precision"], config["channels_last"])
        if device.type == "cuda":
            torch.cuda.synchronize()
    run(warmup)
    start = time.perf_counter()
    run(steps)
    return steps * config["batch"] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    for name in args.models:
        result = {"model": name, "device": args.device, "image_size": args.image_size}
        for label, config in CONFIGS.items():
            result[label] = round(images_per_second(name, config, device, args.steps, args.warmup, args.image_size,
                                                    args.compile), 1)
        result["speedup"] = round(result["fast_bf16_channels_last_bs128"] / result["official_fp32_bs16"], 2)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
