"""train/tuning.py: the Ray Tune glue (resources, auth token, trial checkpoints)."""
import pytest
import torch

from train import tuning
from utils.errors import UserError


def test_default_resources_follow_the_hardware():
    expected_gpu = 1 if torch.cuda.is_available() else 0
    assert tuning.default_resources(None, None)["gpu"] == expected_gpu
    assert tuning.default_resources(3, 0.5) == {"cpu": 3, "gpu": 0.5}


def test_auth_token_source_order(monkeypatch, tmp_path):
    monkeypatch.setattr(tuning, "_TOKEN_FILE", tmp_path / "absent")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert tuning.auth_token_source() is None
    token = tmp_path / "token"
    token.write_text("t")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert tuning.auth_token_source() == str(token)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    assert tuning.auth_token_source() == "RAY_AUTH_TOKEN"


def test_trial_state_and_best_weights(tmp_path):
    current, best = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    torch.save({"epoch": 3, "model": current, "best_state": best, "best_is_current": False, "best_metric": 0.5},
               tmp_path / "state.pt")
    saved = tuning.load_trial_state(tmp_path)
    assert torch.equal(tuning.best_weights(saved)["w"], best["w"])
    assert tuning.best_weights({**saved, "best_is_current": True}) is saved["model"]
    torch.save({"not": "a trial"}, tmp_path / "state.pt")
    with pytest.raises(UserError, match="not a trial checkpoint"):
        tuning.load_trial_state(tmp_path)


def test_a_trial_larger_than_the_cluster_is_refused_at_once(ray_session):
    cpus = ray_session.cluster_resources()["CPU"]
    tuning.check_resources_fit({"cpu": cpus, "gpu": 0})
    with pytest.raises(UserError, match=f"--cpus_per_trial {cpus + 1:g}: the Ray cluster has {cpus:g} CPU"):
        tuning.check_resources_fit({"cpu": cpus + 1, "gpu": 0})
    gpus = ray_session.cluster_resources().get("GPU", 0)
    with pytest.raises(UserError, match="--gpus_per_trial"):
        tuning.check_resources_fit({"cpu": 1, "gpu": gpus + 1})
