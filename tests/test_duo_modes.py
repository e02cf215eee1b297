import numpy as np
import pytest
import torch
from scipy.special import softmax

from load_models.DuoWrapper import DuoWrapper
from load_models.ShallowEnsembleWrapper import ShallowEnsembleWrapper, summarize_heads
from load_models.TempScaleWrapper import TempScaleWrapper
from utils.maths import uncertainty_metrics as um
from utils.maths.duo_modes import MODES, DuoTemperatures, duo_outputs

# Three samples, three classes. Sample 0: the large model says class 0, the duo says class 1.
LARGE = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.5]])
SMALL = np.array([[0.0, 4.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 3.0]])
TEMPS = DuoTemperatures(single_large=2.0, single_small=0.5, weight_large=1.0, weight_small=0.3)


def kl(p, q):
    return (p * np.log(p / q)).sum(1)


@pytest.fixture(scope="module")
def outputs():
    return duo_outputs(LARGE, SMALL, TEMPS)


def test_unweighted_averages_raw_logits(outputs):
    p = softmax((LARGE + SMALL) / 2, axis=1)
    out = outputs["unweighted"]
    assert np.allclose(torch.softmax(torch.from_numpy(out.logits.materialise()), 1).numpy(), p)
    assert out.predictions.tolist() == [1, 1, 2]
    assert np.allclose(out.uncertainty["softmax_response"], 1 - p.max(1))
    assert np.allclose(out.uncertainty["entropy"], -(p * np.log(p)).sum(1))
    p_large, p_small = softmax(LARGE, axis=1), softmax(SMALL, axis=1)
    assert np.allclose(out.uncertainty["kl_disagreement"], 1 - p.max(1) + 0.1 * kl(p_small, p_large))


def test_unweighted_ts_averages_single_temperature_scaled_logits(outputs):
    p = softmax((LARGE / 2.0 + SMALL / 0.5) / 2, axis=1)
    out = outputs["unweighted_ts"]
    assert np.allclose(torch.softmax(torch.from_numpy(out.logits.materialise()), 1).numpy(), p)
    assert out.predictions.tolist() == p.argmax(1).tolist()
    assert np.allclose(out.uncertainty["softmax_response"], 1 - p.max(1))
    p_large, p_small = softmax(LARGE / 2.0, axis=1), softmax(SMALL / 0.5, axis=1)
    assert np.allclose(out.uncertainty["kl_disagreement"], 1 - p.max(1) + 0.1 * kl(p_small, p_large))


def test_duo_modes_share_probabilities_and_differ_in_prediction_and_uncertainty(outputs):
    z = 1.0 * LARGE + 0.3 * SMALL          # w_l l + w_s s = (l / T_l + s / T_s) / 2 with T = 1 / (2w)
    p = softmax(z, axis=1)
    large_pred = LARGE.argmax(1)
    assert large_pred.tolist() == [0, 1, 0] and p.argmax(1).tolist() == [1, 1, 2]
    for mode in ("uqonly", "asymmetric", "asymmetric_code"):
        assert np.allclose(torch.softmax(torch.from_numpy(outputs[mode].logits.materialise()), 1).numpy(), p)
        assert np.allclose(outputs[mode].uncertainty["entropy"], -(p * np.log(p)).sum(1))
    at_large = 1 - p[np.arange(3), large_pred]
    assert outputs["uqonly"].predictions.tolist() == [0, 1, 0]
    assert np.allclose(outputs["uqonly"].uncertainty["softmax_response"], at_large)
    assert outputs["asymmetric"].predictions.tolist() == [1, 1, 2]
    assert np.allclose(outputs["asymmetric"].uncertainty["softmax_response"], 1 - p.max(1))
    assert outputs["asymmetric_code"].predictions.tolist() == [1, 1, 2]
    assert np.allclose(outputs["asymmetric_code"].uncertainty["softmax_response"], at_large)
    # members scaled by 1 / T_duo = 2w
    p_large, p_small = softmax(2.0 * LARGE, axis=1), softmax(0.6 * SMALL, axis=1)
    for mode, base in (("asymmetric", 1 - p.max(1)), ("uqonly", at_large)):
        assert np.allclose(outputs[mode].uncertainty["kl_disagreement"], base + 0.1 * kl(p_small, p_large))


def test_reverting_to_large_gives_large_model_predictions():
    temps = DuoTemperatures(weight_large=1.0, weight_small=0.0)     # the paper: T_large = 1, T_small = 0
    out = duo_outputs(LARGE, SMALL, temps, modes=["asymmetric"])["asymmetric"]
    p = softmax(LARGE, axis=1)
    assert out.predictions.tolist() == LARGE.argmax(1).tolist()
    assert np.allclose(out.uncertainty["softmax_response"], 1 - p.max(1))


def test_duo_wrapper_matches_offline_modes():
    torch.manual_seed(0)
    large, small = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x = torch.randn(50, 4)
    for mode in MODES:
        duo = DuoWrapper(large, small, mode=mode, temperatures=TEMPS)
        online = duo.predict_with_uncertainty(x)
        offline = duo_outputs(large(x).detach(), small(x).detach(), TEMPS, modes=[mode])[mode]
        assert torch.allclose(duo(x).double(), online["logits"].double(), atol=1e-5)
        assert online["preds"].tolist() == offline.predictions.tolist()
        for name in ("softmax_response", "entropy", "kl_disagreement"):
            assert np.allclose(online[name].numpy(), offline.uncertainty[name])
        assert torch.allclose(online["probs"].sum(1), torch.ones(50))


def test_duo_wrapper_accepts_a_pair_of_inputs_and_fits():
    torch.manual_seed(1)
    large, small = torch.nn.Linear(4, 3), torch.nn.Linear(6, 3)
    x_large, x_small = torch.randn(200, 4), torch.randn(200, 6)
    labels = large(x_large).argmax(1)
    labels[:40] = torch.randint(0, 3, (40,))      # not the large model's own predictions: val has an optimum
    duo = DuoWrapper(large, small)
    fit = duo.fit(large(x_large), small(x_small), labels)
    assert duo.temperatures.weight_large == fit.weight_large > 0
    assert duo((x_large, x_small)).shape == (200, 3)
    loader = [(x_large[:100], x_small[:100]), labels[:100]], [(x_large[100:], x_small[100:]), labels[100:]]
    refit = duo.fit_on_loader(loader)
    assert refit.nll == pytest.approx(fit.nll)


def test_temp_scale_wrapper():
    torch.manual_seed(2)
    model = torch.nn.Linear(5, 4)
    x = torch.randn(300, 5)
    labels = (model(x) * 5).argmax(1)
    labels[:60] = torch.randint(0, 4, (60,))
    wrapper = TempScaleWrapper(model)
    fit = wrapper.fit(model(x), labels)
    assert float(wrapper.temperature) == fit.temperature
    assert torch.allclose(wrapper(x), model(x) / fit.temperature)
    out = wrapper.predict_with_uncertainty(x)
    assert out["preds"].tolist() == model(x).argmax(1).tolist()
    assert set(out) == {"logits", "probs", "preds", "softmax_response", "entropy"}


def test_shallow_ensemble_mutual_information():
    heads = torch.tensor([[[4.0, 0.0]], [[0.0, 4.0]]])      # two heads disagree completely
    agree = torch.tensor([[[4.0, 0.0]], [[4.0, 0.0]]])
    split = summarize_heads(heads)
    same = summarize_heads(agree)
    assert torch.allclose(split["probs"], torch.tensor([[0.5, 0.5]]))
    assert split["mutual_information"].item() > 0.5
    assert same["mutual_information"].item() == pytest.approx(0.0, abs=1e-7)
    model = ShallowEnsembleWrapper(torch.nn.Identity(), feature_dim=3, num_classes=5, num_heads=4)
    out = model.predict_with_uncertainty(torch.randn(7, 3))
    assert out["probs"].shape == (7, 5) and torch.allclose(out["probs"].sum(1), torch.ones(7))
    assert torch.allclose(torch.softmax(model(torch.randn(7, 3)), 1).sum(1), torch.ones(7))


def test_temp_scale_wrapper_at_infinite_temperature_keeps_the_models_predictions():
    torch.manual_seed(3)
    model = torch.nn.Linear(5, 4)
    x = torch.randn(50, 5)
    out = TempScaleWrapper(model, temperature=float("inf")).predict_with_uncertainty(x)
    assert out["preds"].tolist() == model(x).argmax(1).tolist()
    assert torch.allclose(out["probs"], torch.full((50, 4), 0.25))


def test_a_duo_with_both_weights_zero_is_uniform_with_the_large_models_predictions():
    rng = np.random.default_rng(0)
    large, small = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
    outputs = duo_outputs(large, small, DuoTemperatures(np.inf, np.inf, 0.0, 0.0))
    for mode in MODES[1:]:                       # every mode but the raw average has all weights 0 here
        assert outputs[mode].predictions.tolist() == large.argmax(1).tolist(), mode
        assert np.allclose(outputs[mode].uncertainty["softmax_response"], 1 - 1 / 5), mode
    assert outputs["unweighted"].predictions.tolist() == (large + small).argmax(1).tolist()


def test_probability_averaging_equals_a_hand_computed_case():
    # two samples, two classes, unweighted: p = (softmax(l) + softmax(s)) / 2 written out by hand
    large, small = np.array([[0.0, np.log(3.0)], [0.0, 0.0]]), np.array([[0.0, 0.0], [np.log(4.0), 0.0]])
    # sample 0: (1/4, 3/4) and (1/2, 1/2) -> (3/8, 5/8); sample 1: (1/2, 1/2) and (4/5, 1/5) -> (13/20, 7/20)
    expected = np.array([[3 / 8, 5 / 8], [13 / 20, 7 / 20]])
    out = duo_outputs(large, small, DuoTemperatures(), modes=["unweighted"], combine="probs")["unweighted"]
    assert np.allclose(softmax(out.logits.materialise(), axis=1), expected, atol=1e-15)
    assert out.predictions.tolist() == [1, 0]
    assert np.allclose(out.uncertainty["softmax_response"], [3 / 8, 7 / 20])
    labels = np.array([0, 0])
    metrics = um.compute_metrics(out.logits, labels)
    assert metrics["NLL"] == pytest.approx(-(np.log(3 / 8) + np.log(13 / 20)) / 2, abs=1e-14)
    assert metrics["Brier"] == pytest.approx(((5 / 8) ** 2 * 2 + (7 / 20) ** 2 * 2) / 4, abs=1e-14)
    # the logit average differs: the switch changes the numbers
    logit_average = duo_outputs(large, small, DuoTemperatures(), modes=["unweighted"])["unweighted"]
    assert not np.allclose(softmax(logit_average.logits.materialise(), axis=1), expected)


def test_probability_averaging_uses_each_modes_member_scaling():
    out = duo_outputs(LARGE, SMALL, TEMPS, combine="probs")
    # (scale, share) per member: the unweighted modes average their scaled members; the duo modes mix the members at
    # the common sharpness c = w_l + w_s = 1.3 with shares w / c (TEMPS: w = (1.0, 0.3))
    scalings = {"unweighted": ((1.0, 0.5), (1.0, 0.5)), "unweighted_ts": ((1 / 2.0, 0.5), (1 / 0.5, 0.5)),
                "asymmetric": ((1.3, 1.0 / 1.3), (1.3, 0.3 / 1.3))}
    for mode, ((a_l, pi_l), (a_s, pi_s)) in scalings.items():
        expected = pi_l * softmax(a_l * LARGE, axis=1) + pi_s * softmax(a_s * SMALL, axis=1)
        assert np.allclose(softmax(out[mode].logits.materialise(), axis=1), expected, atol=1e-14), mode
        # gather (the label log-probability every metric uses) agrees with the block
        index = np.array([2, 0, 1])
        assert np.allclose(out[mode].logits.gather(index), np.log(expected[np.arange(3), index]), atol=1e-14)
    assert out["uqonly"].predictions.tolist() == LARGE.argmax(1).tolist()
    wrapper = DuoWrapper(None, None, mode="asymmetric", temperatures=TEMPS, combine="probs")
    online = wrapper.combine(torch.from_numpy(LARGE), torch.from_numpy(SMALL))
    assert np.allclose(torch.softmax(online, 1).numpy(), softmax(out["asymmetric"].logits.materialise(), axis=1))
    with pytest.raises(ValueError, match="combine"):
        DuoWrapper(None, None, combine="mean")


def test_a_zero_weight_removes_its_member_from_the_probability_mixture():
    # w_s = 0 ("revert to f_large"): the probability form is exactly the logit form, softmax(w_l l)
    reverted = DuoTemperatures(2.0, 0.5, 0.8, 0.0)
    for combine in ("logits", "probs"):
        out = duo_outputs(LARGE, SMALL, reverted, modes=["asymmetric"], combine=combine)["asymmetric"]
        assert np.allclose(softmax(out.logits.materialise(), axis=1), softmax(0.8 * LARGE, axis=1), atol=1e-14), combine
    wrapper = DuoWrapper(None, None, mode="asymmetric", temperatures=reverted, combine="probs")
    online = wrapper.combine(torch.from_numpy(LARGE), torch.from_numpy(SMALL))
    assert np.allclose(torch.softmax(online, 1).numpy(), softmax(0.8 * LARGE, axis=1))
    # both weights 0: uniform probabilities, as in the logit form
    out = duo_outputs(LARGE, SMALL, DuoTemperatures(1, 1, 0.0, 0.0), modes=["asymmetric"], combine="probs")["asymmetric"]
    assert np.allclose(softmax(out.logits.materialise(), axis=1), 1 / LARGE.shape[1])
