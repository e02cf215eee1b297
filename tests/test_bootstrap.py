"""The paired bootstrap: each resample's metrics equal the metrics of the resampled test set computed the
ordinary way; identical predictors differ by exactly 0; the interval covers a known difference about 95%
of the time."""
from __future__ import annotations

import numpy as np
import pytest

from utils.maths import bootstrap
from utils.maths import uncertainty_metrics as um


def synthetic(n=2000, k=12, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 2.0
    logits[np.arange(n), labels] += 1.5
    uncertainty = um.softmax_response(logits, um.softmax_stats(logits))
    if ties:
        logits[:40] = np.round(logits[:40])
        uncertainty = np.round(uncertainty, 2)           # many equal uncertainties
    return logits, labels, uncertainty


@pytest.mark.parametrize("ties", [True, False])
def test_every_resample_equals_the_metrics_of_the_resampled_set(ties):
    logits, labels, uncertainty = synthetic(ties=ties)
    predictions = np.where(np.arange(len(labels)) % 7 == 0, labels, logits.argmax(1))   # not always the argmax
    terms = bootstrap.sample_terms(logits, labels, predictions, uncertainty)
    n = len(labels)
    counts = np.hstack([np.ones((n, 1)), bootstrap.resample_counts(n, 4, np.random.default_rng(1))])
    got = bootstrap.weighted_metrics(terms, counts)
    for r in range(counts.shape[1]):
        drawn = np.repeat(np.arange(n), counts[:, r].astype(int))       # copies adjacent, in sample order
        expected = um.compute_metrics(logits[drawn], labels[drawn], predictions[drawn], uncertainty[drawn])
        for metric in um.METRIC_COLUMNS:
            assert got[metric][r] == pytest.approx(expected[metric], rel=1e-10, abs=1e-13), (r, metric)


def test_sac_inside_a_block_of_repeated_errors():
    """A wrong prediction drawn many times at the end of the ranking: SAC@90 stops inside its block."""
    correct_logits = np.array([[5.0, 0.0]] * 19)
    logits = np.vstack([correct_logits, [[0.0, 5.0]]])       # the last sample is wrong, and least certain
    labels = np.zeros(20, dtype=np.int64)
    uncertainty = np.r_[np.linspace(0.01, 0.1, 19), 0.5]
    terms = bootstrap.sample_terms(logits, labels, uncertainty=uncertainty)
    counts = np.r_[np.ones(19), 5.0][:, None]                  # 24 samples, the last 5 wrong
    sac = bootstrap.weighted_metrics(terms, counts)
    # errors_k = k - 19 for k > 19: 100 (k - 19) <= 10 k holds up to k = 21 (100 * 2 <= 210)
    assert sac["SAC@90"][0] == pytest.approx(21 / 24)
    drawn = np.repeat(np.arange(20), counts[:, 0].astype(int))
    assert sac["SAC@90"][0] == um.compute_metrics(logits[drawn], labels[drawn], uncertainty=uncertainty[drawn])["SAC@90"]


def test_identical_predictors_differ_by_exactly_zero():
    logits, labels, uncertainty = synthetic(n=800)
    terms = bootstrap.sample_terms(logits, labels, uncertainty=uncertainty)
    table = bootstrap.paired_bootstrap(terms, terms, resamples=200, seed=3)
    assert set(table["metric"]) == set(um.METRIC_COLUMNS)
    assert (table["delta"] == 0).all() and (table["ci_low"] == 0).all() and (table["ci_high"] == 0).all()
    assert not table["significant"].any() and (table["B"] == 200).all() and (table["seed"] == 3).all()


def test_the_interval_covers_a_known_difference_about_95_percent_of_the_time():
    """Per sample u ~ U(0, 1): the base is right when u < 0.70, the other when u < 0.75, so the true accuracy
    difference is 0.05 and the two are strongly paired."""
    n, k, repeats, covered = 1000, 4, 120, 0
    for repeat in range(repeats):
        rng = np.random.default_rng(100 + repeat)
        labels = rng.integers(0, k, n)
        u = rng.random(n)
        wrong = (labels + 1) % k

        def predictor(threshold, u=u, labels=labels, wrong=wrong, rng=rng):
            chosen = np.where(u < threshold, labels, wrong)
            logits = rng.normal(size=(n, k)) * 0.1
            logits[np.arange(n), chosen] += 2.0
            return bootstrap.sample_terms(logits, labels)

        table = bootstrap.paired_bootstrap(predictor(0.70), predictor(0.75), resamples=300, seed=repeat)
        acc = table.set_index("metric").loc["Acc"]
        covered += acc["ci_low"] <= 0.05 <= acc["ci_high"]
    assert 0.88 <= covered / repeats <= 0.99, covered / repeats


def test_stage5_writes_intervals_that_agree_with_the_result_tables(tmp_path, stage):
    import pandas as pd

    from tests.helpers import make_duo_logits, write_set
    for pset in make_duo_logits(num_classes=6).values():
        write_set(pset, tmp_path / "p")
    common = ["--predictions_dir", tmp_path / "p", "--calibrated_dir", tmp_path / "cal", "--output_dir", tmp_path / "res"]
    assert stage("evaluate/4_evaluate_predictions.py", *common, "--fit_missing")[0] == 0
    (tmp_path / "duos.csv").write_text("model_large,model_small,gflops_large,gflops_small\nlarge,small,10,1\n")
    code, out, err = stage("evaluate/5_evaluate_duo_predictions.py", "--config", tmp_path / "duos.csv", *common,
                           "--fit_missing", "--modes", "asymmetric", "unweighted", "--bootstrap", 150, "--bootstrap_seed", 4)
    assert code == 0, err
    assert "paired-bootstrap row(s) (B=150)" in out
    for suffix, split in (("", "test"), ("_ood", "ood_test")):
        deltas = pd.read_csv(tmp_path / "res" / f"evaluation_duo_delta_synthetic{suffix}.csv")
        assert len(deltas) == 2 * 3 * len(um.METRIC_COLUMNS) and (deltas["B"] == 150).all() and (deltas["seed"] == 4).all()
        duo = pd.read_csv(tmp_path / "res" / f"evaluation_duo_synthetic{suffix}.csv").set_index(["mode", "uncertainty_type"])
        single = pd.read_csv(tmp_path / "res" / f"evaluation_single_model_synthetic{suffix}.csv")
        ts = single[(single["model"] == "large") & (single["wrapper"] == "TempScaleWrapper")].set_index("uncertainty_type")
        for row in deltas.itertuples():
            baseline = ts.loc["softmax_response" if row.uncertainty_type == "kl_disagreement" else row.uncertainty_type]
            expected = duo.loc[(row.mode, row.uncertainty_type), row.metric] - baseline[row.metric]
            assert row.delta == pytest.approx(expected, abs=1e-12), (row.mode, row.uncertainty_type, row.metric)
            assert row.ci_low <= row.ci_high and row.split == split
    # the report states, per duo, whether its NLL gain over the TS large model is real
    code, out, err = stage("evaluate/9_make_report.py", "--results_dir", tmp_path / "res", "--calibrated_dir",
                           tmp_path / "cal")
    assert code == 0, err
    report = (tmp_path / "res" / "REPORT.md").read_text()
    deltas = pd.read_csv(tmp_path / "res" / "evaluation_duo_delta_synthetic.csv")
    nll = deltas[(deltas["mode"] == "asymmetric") & (deltas["uncertainty_type"] == "softmax_response")
                 & (deltas["metric"] == "NLL")].iloc[0]
    # (this fixture's duo reverts to the large model: its NLL interval is clear of 0 by ~1e-14 only, no finding)
    verdict = ("lower (significant)" if nll.ci_high < -1e-9 else "higher (significant)" if nll.ci_low > 1e-9
               else "no significant difference")
    shown = ".2f" if max(abs(100 * v) for v in (nll.delta, nll.ci_low, nll.ci_high)) >= 0.005 else ".2g"
    cell = f"{100 * nll.delta:+{shown}} [{100 * nll.ci_low:+{shown}}, {100 * nll.ci_high:+{shown}}]"
    assert "## Paired bootstrap: is each duo's gain real?" in report
    assert "| large + small |" in report and cell in report and f"| {verdict} | 150 |" in report
    assert "hollow markers: the paired-bootstrap interval" in report
    # an interval older than the result rows (e.g. stage 5 reran without --bootstrap after a new temperature)
    # is left out and counted, never shown as current
    path = tmp_path / "res" / "evaluation_duo_delta_synthetic.csv"
    stale = pd.read_csv(path, keep_default_na=False, dtype=str)
    first_nll = stale.index[(stale["metric"] == "NLL") & (stale["mode"] == "asymmetric")
                            & (stale["uncertainty_type"] == "softmax_response")][0]
    stale.loc[first_nll, "delta"] = "0.5"
    stale.to_csv(path, index=False)
    assert stage("evaluate/9_make_report.py", "--results_dir", tmp_path / "res", "--calibrated_dir", tmp_path / "cal")[0] == 0
    report = (tmp_path / "res" / "REPORT.md").read_text()
    # one stale metric makes the whole predictor's intervals stale: all of this duo x mode x uncertainty type's
    assert f"_{len(um.METRIC_COLUMNS)} of {len(stale) * 2} paired-bootstrap row(s) are left out" in report
    section = report.split("## Paired bootstrap: is each duo's gain real?")[1].split("\n## ")[0]
    assert "**in-distribution (test)**" not in section and "**shifted (ood_test)**" in section   # ood's intervals stay


@pytest.mark.parametrize("resamples", [1, 99, 100_001])
def test_too_few_or_too_many_resamples_are_refused(tmp_path, stage, resamples):
    code, _, err = stage("evaluate/5_evaluate_duo_predictions.py", "--bootstrap", resamples, "--predictions_dir",
                         tmp_path)
    assert code == 2 and "expected 0 (off) or a whole number from 100 to 100000" in err


def test_stages_4_and_8_bootstrap_the_baselines_against_their_ts_backbone(tmp_path, stage):
    import pandas as pd

    from tests.helpers import make_duo_logits, write_set
    # a backbone, its Laplace predictive and a second seed (same samples): the report's baseline comparisons
    sets = make_duo_logits(num_classes=5, models=("ResNet50", "ResNet50_LA", "ResNet50_s1"), quality=(2.0, 2.2, 1.9),
                           scale=(2.0, 1.5, 2.0))
    for pset in sets.values():
        write_set(pset, tmp_path / "p")
    common = ["--predictions_dir", tmp_path / "p", "--calibrated_dir", tmp_path / "cal", "--output_dir", tmp_path / "res"]
    code, out, err = stage("evaluate/4_evaluate_predictions.py", *common, "--fit_missing", "--bootstrap", 120)
    assert code == 0, err
    assert "ResNet50_LA: paired bootstrap against the temperature-scaled ResNet50 (B=120)" in out
    single = pd.read_csv(tmp_path / "res" / "evaluation_single_model_synthetic.csv", keep_default_na=False)
    deltas = pd.read_csv(tmp_path / "res" / "evaluation_single_model_delta_synthetic.csv", keep_default_na=False)
    assert set(deltas["model"]) == {"ResNet50_LA"} and set(deltas["base"]) == {"ResNet50"}    # a seed is no baseline
    assert len(deltas) == 2 * 2 * len(um.METRIC_COLUMNS)                 # raw and TS x two uncertainty types
    values = single.set_index(["model", "wrapper", "uncertainty_type"])
    for row in deltas.itertuples():
        expected = (values.loc[(row.model, row.wrapper, row.uncertainty_type), row.metric]
                    - values.loc[("ResNet50", "TempScaleWrapper", row.uncertainty_type), row.metric])
        assert row.delta == pytest.approx(expected, abs=1e-12) and row.ci_low <= row.ci_high
    # the report with stage 4's intervals only (no stage 8 yet)
    code, out, err = stage("evaluate/9_make_report.py", "--results_dir", tmp_path / "res")
    assert code == 0, err
    assert "| ResNet50_LA (raw) | ResNet50 |" in (tmp_path / "res" / "REPORT.md").read_text()
    # stage 8: DE(2) of the backbone and its seed, the mean over its one subset, against the TS backbone
    code, out, err = stage("evaluate/8_evaluate_deep_ensemble.py", "--members", tmp_path / "p" / "ResNet50.npz",
                           tmp_path / "p" / "ResNet50_s1.npz", "--sizes", 1, 2, "--name", "ResNet50", "--output_dir",
                           tmp_path / "res", "--bootstrap", 120)
    assert code == 0, err
    ensembles = pd.read_csv(tmp_path / "res" / "evaluation_deep_ensemble_synthetic.csv", dtype={"subset": str})
    ensemble_deltas = pd.read_csv(tmp_path / "res" / "evaluation_deep_ensemble_delta_synthetic.csv")
    assert set(ensemble_deltas["base"]) == {"ResNet50"} and set(ensemble_deltas["m"]) == {1, 2}
    for row in ensemble_deltas[ensemble_deltas["uncertainty_type"] == "softmax_response"].itertuples():
        subsets = ensembles[(ensembles["m"] == row.m) & ~ensembles["subset"].isin(["mean", "std"])
                            & (ensembles["uncertainty_type"] == "softmax_response")]
        expected = subsets[row.metric].mean() - values.loc[("ResNet50", "TempScaleWrapper", "softmax_response"), row.metric]
        assert row.delta == pytest.approx(expected, abs=1e-12), (row.m, row.metric)
        assert row.subsets == len(subsets)
    # the report's section: every baseline against its TS backbone
    code, out, err = stage("evaluate/9_make_report.py", "--results_dir", tmp_path / "res")
    assert code == 0, err
    report = (tmp_path / "res" / "REPORT.md").read_text()
    section = report.split("## Paired bootstrap: baselines vs the temperature-scaled model")[1].split("\n## ")[0]
    for label in ("| ResNet50_LA (raw) | ResNet50 |", "| ResNet50_LA (TS) | ResNet50 |",
                  "| DE(2) ResNet50, mean of 1 subset(s) | ResNet50 |"):
        assert label in section, label
    # a hand-edited delta is stale: left out and counted
    path = tmp_path / "res" / "evaluation_single_model_delta_synthetic.csv"
    edited = pd.read_csv(path, keep_default_na=False, dtype=str)
    edited.loc[0, "delta"] = "0.25"
    edited.to_csv(path, index=False)
    assert stage("evaluate/9_make_report.py", "--results_dir", tmp_path / "res")[0] == 0
    assert f"_{len(um.METRIC_COLUMNS)} baseline interval row(s) are left out" in (tmp_path / "res" / "REPORT.md").read_text()


def test_stage8_compares_an_ensemble_of_trials_with_a_base_outside_it(tmp_path, stage):
    """The official code's ensemble of fine-tuning trials: the base (the best trial, as its own file) is no
    member, and --base names it."""
    import pandas as pd

    from tests.helpers import make_duo_logits, write_set
    sets = make_duo_logits(num_classes=5, models=("ResNet50", "ResNet50_trial0", "ResNet50_trial1"),
                           quality=(2.0, 1.8, 1.7), scale=(2.0, 1.5, 2.5))
    for pset in sets.values():
        write_set(pset, tmp_path / "p")
    code, out, err = stage("evaluate/4_evaluate_predictions.py", "--predictions_dir", tmp_path / "p", "--calibrated_dir",
                           tmp_path / "cal", "--output_dir", tmp_path / "res", "--fit_missing")
    assert code == 0, err
    single = pd.read_csv(tmp_path / "res" / "evaluation_single_model_synthetic.csv", keep_default_na=False)
    ts_base = single[(single["model"] == "ResNet50") & (single["wrapper"] == "TempScaleWrapper")
                     & (single["uncertainty_type"] == "softmax_response")].iloc[0]
    members = ["--members", "ResNet50_trial0", "ResNet50_trial1", "--predictions_dir", tmp_path / "p", "--sizes", 2,
               "--name", "ResNet50", "--output_dir", tmp_path / "res"]
    code, out, err = stage("evaluate/8_evaluate_deep_ensemble.py", *members, "--base", "resnet50")
    assert code == 2 and "--base" in err and "add --bootstrap" in err               # only the bootstrap uses it
    code, out, err = stage("evaluate/8_evaluate_deep_ensemble.py", *members, "--base", "resnet50", "--bootstrap", 120)
    assert code == 0, err
    assert "no member is named" not in err and "against the temperature-scaled ResNet50" in out
    ensembles = pd.read_csv(tmp_path / "res" / "evaluation_deep_ensemble_synthetic.csv", dtype={"subset": str})
    deltas = pd.read_csv(tmp_path / "res" / "evaluation_deep_ensemble_delta_synthetic.csv")
    assert set(deltas["base"]) == {"ResNet50"}
    pooled = ensembles[(ensembles["subset"] == "0") & (ensembles["uncertainty_type"] == "softmax_response")
                       & (ensembles["split"] == "test")].iloc[0]
    assert pooled["members"] == "ResNet50_trial0+ResNet50_trial1"
    for row in deltas[(deltas["uncertainty_type"] == "softmax_response") & (deltas["split"] == "test")].itertuples():
        assert row.delta == pytest.approx(pooled[row.metric] - ts_base[row.metric], abs=1e-12), row.metric
    # a base that cannot be read or does not fit stops the stage before anything is written
    other = tmp_path / "res2"
    members[members.index(tmp_path / "res")] = other
    code, out, err = stage("evaluate/8_evaluate_deep_ensemble.py", *members, "--base", "ResNet18", "--bootstrap", 120)
    assert code == 2 and "--base: no prediction file for 'ResNet18'" in err
    foreign = make_duo_logits(num_classes=5, models=("ResNet50",), quality=(2.0,), scale=(2.0,))["ResNet50"]
    foreign.meta["dataset"] = "caltech256"
    write_set(foreign, tmp_path / "q")
    code, out, err = stage("evaluate/8_evaluate_deep_ensemble.py", *members, "--base", tmp_path / "q" / "ResNet50.npz",
                           "--bootstrap", 120)
    assert code == 2 and "records dataset" in err and "combine predictions of one dataset" in err
    assert not other.exists() or not list(other.glob("evaluation_deep_ensemble*"))


def test_an_interval_clear_of_zero_only_by_rounding_is_no_finding():
    import pandas as pd

    from utils.report import paper_tables as pt
    # a duo whose fit reverted to f_large: its NLL differs from the TS large model's by ~1e-8 on every resample
    assert not bootstrap.excludes_zero(1.2e-10, 1.6e-10) and bootstrap.excludes_zero(2e-9, 3e-3)
    rows = pd.DataFrame({"metric": ["NLL"], "delta": [1.4e-10], "ci_low": [1.2e-10], "ci_high": [1.6e-10]}).set_index("metric")
    assert pt.nll_verdict(rows) == "no significant difference"
    assert not pt.delta_cell(rows.loc["NLL"], "NLL").endswith("*")
    rows = pd.DataFrame({"metric": ["NLL"], "delta": [-0.02], "ci_low": [-0.03], "ci_high": [-0.01]}).set_index("metric")
    assert pt.nll_verdict(rows) == "lower (significant)" and pt.delta_cell(rows.loc["NLL"], "NLL").endswith("*")


def duo_like_predictors(n: int, k: int, seed: int) -> list:
    """A baseline and predictors as a duo's modes give them: shared predictions with other uncertainties (uqonly,
    the uncertainty types of one mode), heavy ties, one identical to the baseline, and a degenerate one that is
    always right (CP_AUROC undefined in every resample)."""
    logits, labels, uncertainty = synthetic(n=n, k=k, seed=seed)
    rng = np.random.default_rng(seed + 1)
    other = logits + rng.normal(size=logits.shape)
    base = bootstrap.sample_terms(logits, labels)
    perfect = np.eye(k)[labels] * 5.0
    mostly_right = perfect * 0.5 + rng.normal(size=logits.shape)      # ~90-99 % right: SAC's levels in play
    return [base, bootstrap.sample_terms(mostly_right, labels), bootstrap.sample_terms(other, labels),
            bootstrap.sample_terms(other, labels, uncertainty=uncertainty),                 # ties in the ranking
            bootstrap.sample_terms(logits, labels, other.argmax(1), np.round(uncertainty, 1)),
            bootstrap.sample_terms(logits, labels), base, bootstrap.sample_terms(perfect, labels)]


@pytest.mark.parametrize("n, k, seed", [(20, 2, 0), (331, 5, 1), (3000, 12, 2), (200, 40, 3)])   # 40: classes left out
def test_shared_resampling_equals_each_predictor_on_its_own(n, k, seed):
    """The shared implementation (one count matrix, deduplicated passes, the compiled ranking pass) gives every
    predictor the metrics the plain one gives it on the same draws, to 1e-12: published intervals stay valid."""
    predictors = duo_like_predictors(n, k, seed)
    shared = bootstrap.resampled_metrics(predictors, 200, seed)
    plain = bootstrap.reference_resampled_metrics(predictors, 200, seed)
    for got, expected in zip(shared, plain):
        for metric in um.METRIC_COLUMNS:
            assert np.array_equal(np.isnan(got[metric]), np.isnan(expected[metric])), metric
            np.testing.assert_allclose(got[metric], expected[metric], rtol=0, atol=1e-12, equal_nan=True,
                                       err_msg=metric)
    assert np.isnan(shared[-1]["CP_AUROC"]).all() and (shared[-1]["Acc"] == 1).all()
    single = bootstrap.resampled_metrics(predictors[2], 200, seed)          # one predictor alone: the same draws
    assert all(np.array_equal(single[m], shared[2][m], equal_nan=True) for m in um.METRIC_COLUMNS)


def test_members_counted_one_group_at_a_time_give_the_same_numbers(monkeypatch):
    """The additive metrics come from passes over groups of members whose class counts fit CLASS_COUNT_BYTES (a
    thread's counts for 128 resamples; many members with many classes would otherwise need GBs): one member at a
    time changes nothing."""
    predictors = duo_like_predictors(331, 5, 1)
    whole = bootstrap.resampled_metrics(predictors, 300, 4)
    monkeypatch.setattr(bootstrap, "CLASS_COUNT_BYTES", 1)        # one member at a time
    for got, expected in zip(bootstrap.resampled_metrics(predictors, 300, 4), whole):
        for metric in ("Acc", "NLL", "Brier", "F1", "F1_present", "ECE"):
            assert np.array_equal(got[metric], expected[metric]), metric


@pytest.mark.parametrize("lanes, dtype", [(1, np.uint8), (7, np.int32), (200, np.uint8)])
def test_the_ranking_pass_gives_the_reference_numbers_for_any_group_of_resamples(monkeypatch, lanes, dtype):
    """The compiled ranking pass walks the resamples in groups (`lanes` at a time) over uint8 or int32 counts; every
    width gives `_weighted_selective`'s numbers: SAC exactly, the others to 1e-12 (ties, a degenerate predictor)."""
    from utils.maths import bootstrap_kernels
    monkeypatch.setattr(bootstrap_kernels, "lanes_for", lambda resamples: lanes)
    n = 331
    counts = bootstrap.draw_counts(n, 200, 6)
    for terms in duo_like_predictors(n, 5, 1):
        got = bootstrap._selective_resampled(terms, counts.astype(dtype))
        expected = bootstrap._weighted_selective(terms, counts.astype(np.float64), np.full(200, float(n)))
        for metric, values in got.items():
            if metric.startswith("SAC"):
                assert np.array_equal(values, expected[metric]), metric
            np.testing.assert_allclose(values, expected[metric], rtol=0, atol=1e-12, equal_nan=True, err_msg=metric)


def test_a_stage5_run_draws_each_split_once(monkeypatch):
    """Each duo of a stage-5 run resamples test and a shifted split for its intervals, and both again (the shifted
    split with its own seed) for shift detection: three draws in all, kept for every later duo of the run."""
    from utils.stages import shift
    drawn = []
    real = bootstrap.draw_counts
    monkeypatch.setattr(bootstrap, "draw_counts", lambda *args: drawn.append(args) or real(*args))
    monkeypatch.setattr(bootstrap, "_DRAWN", {})
    test_split, shifted_split = duo_like_predictors(300, 5, 0)[:2], duo_like_predictors(120, 5, 1)[:2]
    for _ in range(3):                                 # three duos
        for predictors in (test_split, shifted_split):
            bootstrap.resampled_metrics(predictors, 100, 0)
        shift._resampled(test_split[0].uncertainty, shifted_split[0].uncertainty, 100, 0)
    assert sorted(drawn) == [(120, 100, 0), (120, 100, 1), (300, 100, 0)]


def test_a_count_over_255_widens_the_drawn_counts(monkeypatch):
    """Counts are kept as uint8 (a sample drawn 256 times in one resample of N draws almost never happens); a chunk
    that holds such a count turns the whole matrix into int32, the chunks counted before it kept."""
    from utils.maths import bootstrap_kernels
    n, chunk = 500, bootstrap.CHUNK_ENTRIES // 500
    expected = bootstrap.draw_counts(n, 3 * chunk, 0).astype(np.int32)
    real = bootstrap_kernels.count_draws
    calls = []

    def count_draws(draws, counts):
        real(draws, counts)
        calls.append(1)
        if len(calls) == 2:                 # the second chunk: one sample drawn 300 times more in its first resample
            counts[0, 7] += 300
    monkeypatch.setattr(bootstrap_kernels, "count_draws", count_draws)
    got = bootstrap.draw_counts(n, 3 * chunk, 0)
    expected[7, chunk] += 300
    assert got.dtype == np.int32 and np.array_equal(got, expected)
