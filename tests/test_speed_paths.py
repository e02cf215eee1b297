"""The fast training/prediction paths on CPU (bf16 autocast, channels_last, gradient accumulation,
torch.compile) and the throughput tools; the GPU figures come from bench/gpu_checks.sh."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from load_models import inference, model_loader
from tests.conftest import REPO
from train import engine

CPU = torch.device("cpu")


def fixed_model_and_batches(seed=0, n=256):
    torch.manual_seed(seed)
    model = model_loader.get_model_with_head("resnet10t", 10, source="timm", weights="none").eval()
    x = torch.randn(n, 3, 32, 32)
    with torch.no_grad():                   # make the logits informative: calibrate the head to a random teacher
        labels = model(x).argmax(1)
    return model, [(x[i:i + 64], labels[i:i + 64], torch.arange(i, i + 64)) for i in range(0, n, 64)]


def test_bf16_prediction_matches_fp32_argmax():
    model, batches = fixed_model_and_batches()
    fp32 = inference.predict(model, batches, CPU, precision="fp32")
    bf16 = inference.predict(model, batches, CPU, precision="bf16")
    agree = np.mean(fp32.logits.argmax(1) == bf16.logits.argmax(1))
    # stated tolerance: >= 97% of argmax predictions identical, logits within 5% of their spread
    assert agree >= 0.97, agree
    assert np.abs(fp32.logits - bf16.logits).max() <= 0.05 * (fp32.logits.max() - fp32.logits.min())


def test_channels_last_prediction_is_the_same():
    model, batches = fixed_model_and_batches(seed=1, n=64)
    plain = inference.predict(model, batches, CPU)
    fast = inference.predict(inference.prepare_model(model, CPU, channels_last=True), batches, CPU, channels_last=True)
    assert np.allclose(plain.logits, fast.logits, atol=1e-4)


def test_gradient_accumulation_equals_the_full_batch():
    def make():
        torch.manual_seed(3)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    full, micro = make(), make()
    opt_full, opt_micro = (torch.optim.AdamW(m.parameters(), lr=0.1) for m in (full, micro))
    engine.train_one_epoch(full, [(x, y, None)], opt_full, CPU, "fp32")
    engine.train_one_epoch(micro, [(x[:8], y[:8], None), (x[8:], y[8:], None)], opt_micro, CPU, "fp32", accumulate=2)
    for a, b in zip(full.parameters(), micro.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_bf16_and_channels_last_training_step_runs():
    model, batches = fixed_model_and_batches(seed=2, n=64)
    model = inference.prepare_model(model.train(), CPU, channels_last=True)
    loss = engine.train_one_epoch(model, batches, engine.make_optimizer(model, 1e-3, 0), CPU, "bf16", channels_last=True)
    assert np.isfinite(loss)


@pytest.mark.slow
def test_compile_path():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    compiled = inference.prepare_model(model, CPU, compile=True)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(compiled(x), model(x), atol=1e-5)


def test_throughput_script_on_cpu(tmp_path, stage):
    out = tmp_path / "throughput.csv"
    code, stdout, err = stage("evaluate/extra_eval_throughput.py", "--models", "ShuffleNet_V2_X0_5", "MNASNet0_5",
                              "--pairs", "MNASNet0_5:ShuffleNet_V2_X0_5", "--device", "cpu", "--image_size", 32,
                              "--max_batch", 4, "--duo_batch", 2, "--warmup", 1, "--reps", 2, "--output", out)
    assert code == 0, err
    frame = pd.read_csv(out)
    assert set(frame.method) == {"eager", "analytic_official"}          # no CUDA graphs on the CPU
    assert (frame[frame.kind == "single"].batch == 4).all() and (frame.throughput > 0).all()
    assert "R² log throughput vs log GFLOPs" in stdout


@pytest.mark.slow
def test_train_step_benchmark_smoke():
    command = [sys.executable, str(REPO / "bench" / "bench_train_step.py"), "--models", "resnet18", "--steps", "1",
               "--warmup", "0", "--image_size", "32", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["official_fp32_bs16"] > 0 and line["fast_bf16_channels_last_bs128"] > 0
