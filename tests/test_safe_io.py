import multiprocessing as mp

import pandas as pd
import pytest

from utils.files import safe_io


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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(tmp_path, umask, mode):
    import os
    old = os.umask(umask)
    try:
        safe_io.write_text(tmp_path / "sub" / "out.txt", "x")
        safe_io.upsert_csv(tmp_path / "table.csv", pd.DataFrame([{"name": "a"}]), ["name"])
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "out.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "table.csv").stat().st_mode & 0o777 == mode


def test_an_output_folder_that_is_a_file_is_a_one_line_error(tmp_path, stage):
    from tests.helpers import make_duo_logits, write_set
    path = write_set(make_duo_logits()["large"], tmp_path)
    (tmp_path / "taken").write_text("")
    code, out, err = stage("evaluate/2_temp_scale.py", "--predictions", path, "--output_dir", tmp_path / "taken")
    assert code == 2 and err.startswith("error: ") and "a file of that name is in the way" in err
    assert len(err.strip().splitlines()) == 1 and (tmp_path / "taken").read_text() == ""


def test_an_upsert_refuses_a_table_with_one_model_twice(tmp_path):
    path = tmp_path / "temperature_single_model.csv"
    path.write_text("full_name,temperature\nConvNeXt_Base,0.5\nconvnext_base,2.0\n")
    before = path.read_bytes()
    with pytest.raises(safe_io.UserError, match="two rows for convnext_base"):
        safe_io.upsert_csv(path, pd.DataFrame([{"full_name": "EfficientNet_B0", "temperature": 1.0}]), ["full_name"])
    assert path.read_bytes() == before
