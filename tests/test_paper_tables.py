"""utils/report/paper_tables.py and figures.py: the report's arithmetic, and one spread convention for the
report and stage 8."""
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from utils.maths import uncertainty_metrics as um
from utils.report import figures, paper_tables
from utils.stages.ensembles import Ensemble


@pytest.mark.parametrize("metric, value, base, expected", [
    ("Acc", 0.9, 0.8, 50.0),          # half the way from 0.8 to a perfect 1
    ("NLL", 0.6, 0.8, 25.0),          # a quarter lower
    ("ECE", 0.04, 0.02, -100.0),      # twice as high: worse
])
def test_relative_improvement(metric, value, base, expected):
    assert paper_tables.relative_improvement(value, base, metric) == pytest.approx(expected)


def test_markdown_table_and_flops_buckets():
    frame = pd.DataFrame({"model": ["a"], "NLL": [0.123456], "note": [None]})
    assert figures.markdown_table(frame, digits=2).splitlines() == ["| model | NLL | note |", "|---|---|---|",
                                                                     "| a | 0.12 |  |"]
    duos = pd.DataFrame({"model_large": ["L", "L", "L", "M"], "mode": ["asymmetric", "asymmetric", "uqonly", "asymmetric"],
                         "uncertainty_type": ["softmax_response"] * 4, "gflops_large": [4.1, 4.1, 4.1, 16.4],
                         "gflops_small": [0.41, 4.0, 2.0, 0.1], "gflops_balance": [0.1, 0.99, 0.5, 0.1 / 16.4]})
    # total FLOPs in units of a 4.1-GFLOPs reference: 1.1, 1.98 and (uqonly left out) 4.02; exactly 2x is bucket 2
    assert paper_tables.flops_buckets(duos, 4.1)["bucket"].tolist() == [1, 1, 4]
    assert paper_tables.flops_buckets(duos.assign(gflops_small=[4.1, 4.0, 2.0, 0.1]), 4.1)["bucket"].tolist() == [2, 1, 4]


def test_one_spread_convention_everywhere():
    """The report's ± and stage 8's std rows are both the sample standard deviation (ddof = 1)."""
    assert paper_tables.cell([0.01, 0.03], "Acc") == f"2.00 ± {math.sqrt(2):.2f}"        # % with the sample std
    assert paper_tables.cell([0.0005], "Brier") == "5.00"                                 # x10^4, one value: no spread
    assert paper_tables.cell([float("nan"), 0.9], "CP_AUROC") == "90.00"
    rows = [{**{m: value for m in um.METRIC_COLUMNS}, "m": 2, "uncertainty_type": "softmax_response", "split": "test"}
            for value in (0.01, 0.03)]
    summaries = Ensemble.summaries(SimpleNamespace(name="de", provenance={}), rows)
    std = next(row for row in summaries if row["subset"] == "std")
    assert std["Acc"] == pytest.approx(np.std([0.01, 0.03], ddof=1))                   # stage 8's std rows: ddof = 1
