"""Step stamps: a pipeline step is skipped only when its command, code and files are as last stamped."""
import os

from utils.files import step_stamps


def make_tree(root):
    (root / "predictions").mkdir(parents=True)
    (root / "predictions" / "a.npz").write_bytes(b"logits a")
    (root / "predictions" / "b.npz").write_bytes(b"logits b")
    (root / "duos.csv").write_text("model_large,model_small\nA,B\n")
    return [str(root / "predictions"), str(root / "duos.csv")]


def test_fingerprint_follows_content_names_and_presence_not_hidden_files(tmp_path):
    paths = make_tree(tmp_path)
    first = step_stamps.fingerprint(paths)
    assert step_stamps.fingerprint(list(reversed(paths))) == first          # order of the flags does not matter
    (tmp_path / "predictions" / ".a.npz.lock").write_text("")                # locks and temporaries do not count
    (tmp_path / "predictions" / ".a.npz.x1y2z3w4.tmp").write_text("partial")
    assert step_stamps.fingerprint(paths) == first
    stat = (tmp_path / "duos.csv").stat()                                     # rewritten with the same content
    (tmp_path / "duos.csv").write_text("model_large,model_small\nA,B\n")
    os.utime(tmp_path / "duos.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert step_stamps.fingerprint(paths) == first
    (tmp_path / "predictions" / "b.npz").write_bytes(b"logits B")           # same size, other content
    changed = step_stamps.fingerprint(paths)
    assert changed != first
    (tmp_path / "predictions" / "b.npz").rename(tmp_path / "predictions" / "c.npz")     # renamed
    assert step_stamps.fingerprint(paths) not in (first, changed)
    (tmp_path / "predictions" / "c.npz").unlink()
    (tmp_path / "predictions" / "a.npz").unlink()
    empty = step_stamps.fingerprint(paths)
    for hidden in (tmp_path / "predictions").iterdir():
        hidden.unlink()
    (tmp_path / "predictions").rmdir()
    assert step_stamps.fingerprint(paths) != empty                         # an empty folder is not a missing one


def test_large_files_by_size_and_time(tmp_path, monkeypatch):
    monkeypatch.setattr(step_stamps, "_CONTENT_LIMIT", 4)
    big = tmp_path / "ckpt.pth"
    big.write_bytes(b"weights1")
    first = step_stamps.fingerprint([big])
    big.write_bytes(b"weights2")                                             # same size; the time tells
    os.utime(big, ns=(big.stat().st_atime_ns, big.stat().st_mtime_ns + 10**9))
    assert step_stamps.fingerprint([big]) != first


def test_stamps_round_trip_and_key(tmp_path):
    paths = make_tree(tmp_path)
    argv = ["--predictions_dir", paths[0], "--config", paths[1], "--steps", 20, "--dataset", "mnist5k"]
    assert step_stamps.step_paths(argv) == paths                  # only the path flags' values
    key = step_stamps.Stamps.key("evaluate/5_evaluate_duo_predictions.py", argv, "code1")
    assert key != step_stamps.Stamps.key("evaluate/5_evaluate_duo_predictions.py", argv[:-1] + ["imagenet"], "code1")
    assert key != step_stamps.Stamps.key("evaluate/5_evaluate_duo_predictions.py", argv, "code2")
    file = tmp_path / "logs" / step_stamps.STAMP_FILE
    stamps = step_stamps.Stamps(file)
    assert not stamps.unchanged(key, paths)                                  # never stamped
    stamps.record({key: paths})
    again = step_stamps.Stamps(file)
    assert again.unchanged(key, paths)
    (tmp_path / "predictions" / "a.npz").write_bytes(b"logits A")
    assert not again.unchanged(key, paths)
    file.write_text("{not json")                                             # a damaged file: everything reruns
    assert step_stamps.Stamps(file).saved == {}


def test_code_digest_changes_with_the_sources(tmp_path):
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "m.py").write_text("x = 1\n")
    first = step_stamps.code_digest(tmp_path)
    (tmp_path / "utils" / "m.py").write_text("x = 2\n")
    assert step_stamps.code_digest(tmp_path) != first


def test_a_config_found_in_the_repository_is_stamped_where_the_stages_read_it(tmp_path, monkeypatch):
    from utils.paths import REPO_ROOT
    monkeypatch.chdir(tmp_path)                   # a working folder without configs/: the stages read the repository's
    paths = step_stamps.step_paths(["--config", "configs/duos.csv", "--output_dir", "results"])
    assert paths == [str(REPO_ROOT / "configs" / "duos.csv"), "results"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "duos.csv").write_text("model_large,model_small\nA,B\n")   # a local copy wins, as there
    assert step_stamps.step_paths(["--config", "configs/duos.csv"]) == ["configs/duos.csv"]
