import multiprocessing as mp

import pandas as pd
import pytest

from utils import safe_io


def _upsert_worker(path, worker, rows):
    for i in range(rows):
        safe_io.upsert_csv(path, pd.DataFrame([{"name": f"w{worker}_r{i}", "value": worker * 100 + i}]), ["name"])


def test_concurrent_upserts_lose_nothing(tmp_path):
    path = tmp_path / "shared.csv"
    ctx = mp.get_context("fork")
    workers = [ctx.Process(target=_upsert_worker, args=(path, w, 10)) for w in range(8)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    table = pd.read_csv(path)
    assert len(table) == 80 and table.name.is_unique
    safe_io.upsert_csv(path, pd.DataFrame([{"name": "w3_r4", "value": -1}]), ["name"])
    table = pd.read_csv(path)
    assert len(table) == 80 and table.loc[table.name == "w3_r4", "value"].item() == -1


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with safe_io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
