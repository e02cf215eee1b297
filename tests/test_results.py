"""utils/files/results.py: results files refuse a NaN and replace a model's rows."""
import pandas as pd
import pytest

from utils.errors import UserError
from utils.files import results, safe_io
from utils.maths import uncertainty_metrics as um


def test_queue_results_refuses_a_nan_and_upserts(tmp_path):
    row = {name: 0.5 for name in um.METRIC_COLUMNS}
    rows = [{**row, "model": "a", "wrapper": "w", "uncertainty_type": "u", "gflops": 1.0, "params": 1.0, "split": "test"}]

    def write():
        outputs = safe_io.Outputs()
        written = results.queue_results(outputs, tmp_path, "single_model", "d", rows)
        outputs.commit()
        return written
    written = write()
    assert written == [tmp_path / "evaluation_single_model_d.csv"]
    rows[0]["NLL"] = 0.25
    write()
    frame = pd.read_csv(written[0])
    assert len(frame) == 1 and frame.NLL.item() == 0.25 and list(frame.columns[:len(um.METRIC_COLUMNS)]) == \
        list(um.METRIC_COLUMNS)
    rows[0]["NLL"] = float("nan")
    with pytest.raises(UserError, match="NLL"):
        write()
