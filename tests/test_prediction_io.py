import numpy as np
import pytest

from tests.helpers import make_duo_logits, permuted, write_official, write_set
from utils.cli.parsing import UserError
from utils.files.prediction_io import (
    Split,
    align,
    find_prediction_file,
    list_prediction_files,
    normalise_predictions_dir,
    read_predictions,
)


@pytest.fixture
def sets():
    return make_duo_logits(num_classes=5, sizes={"val": 40, "test": 50, "ood_test": 30})


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_roundtrip(tmp_path, sets, suffix):
    path = write_set(sets["large"], tmp_path, suffix)
    back = read_predictions(path)
    assert back.model == "large" and back.num_classes == 5 and set(back.splits) == {"val", "test", "ood_test"}
    for name, split in sets["large"].splits.items():
        assert np.array_equal(back.splits[name].logits, split.logits)
        assert np.array_equal(back.splits[name].labels, split.labels)
        assert back.splits[name].ids.tolist() == split.ids.tolist()
    if suffix == ".npz":
        assert back.meta["dataset"] == "synthetic" and back.meta["kind"] == "logits"


def test_integer_ids_roundtrip_csv(tmp_path, sets):
    pset = sets["large"]
    for split in pset.splits.values():
        split.ids = np.arange(len(split), dtype=np.int64) * 3
    back = read_predictions(write_set(pset, tmp_path, ".csv"))
    assert back.splits["test"].ids.dtype == np.int64
    assert back.splits["test"].ids.tolist() == pset.splits["test"].ids.tolist()


def test_official_layout(tmp_path, sets):
    root = write_official(sets["small"], tmp_path / "y-prediction" / "iwildcam")
    back = read_predictions(root / "val" / "raw" / "small.csv")
    assert back.dataset == "iwildcam" and set(back.splits) == {"val", "test", "ood_test"}
    assert np.allclose(back.splits["test"].logits, sets["small"].splits["test"].logits)
    assert back.splits["test"].ids.tolist() == list(range(50))
    assert normalise_predictions_dir(root / "val" / "raw") == root
    assert list_prediction_files(root / "val" / "raw") == {"small": root / "val" / "raw" / "small.csv"}
    assert find_prediction_file(root, "small") is not None and find_prediction_file(root, "nope") is None


def test_listing_skips_features_and_prefers_npz(tmp_path, sets):
    write_set(sets["large"], tmp_path, ".npz")
    write_set(sets["large"], tmp_path, ".csv")
    write_set(sets["small"], tmp_path, ".csv")
    (tmp_path / "large.features.npz").write_bytes(b"")
    assert {k: v.name for k, v in list_prediction_files(tmp_path).items()} == {"large": "large.npz", "small": "small.csv"}


def test_model_names_with_dots(tmp_path, sets):
    pset = sets["large"]
    pset.model = "tf_efficientnetv2_l.in21k_ft_in1k"
    path = write_set(pset, tmp_path, ".csv")
    assert read_predictions(path).model == "tf_efficientnetv2_l.in21k_ft_in1k"
    assert list(list_prediction_files(tmp_path)) == ["tf_efficientnetv2_l.in21k_ft_in1k"]


def test_align_reorders_by_id(sets):
    large, small = sets["large"], sets["small"]
    shuffled = permuted(small).splits["test"]
    aligned = align(large.splits["test"], shuffled, "a", "b", "test")
    assert np.array_equal(aligned.logits, small.splits["test"].logits)
    assert np.array_equal(aligned.ids, large.splits["test"].ids)


def test_align_errors(sets):
    base = sets["large"].splits["test"]
    other = sets["small"].splits["test"]
    changed = Split(other.logits, other.labels, np.array([*other.ids[:-2], "x", "y"]))
    with pytest.raises(UserError, match=r"2 only in the first, e\.g\. 'img_test_00048\.jpg' \(text\), "
                                        r"'img_test_00049\.jpg' \(text\), 2 only in the second, e\.g\. 'x' \(text\)"):
        align(base, changed, "large.npz", "small.npz", "test")
    # ids that differ only by zero-padding: the examples show both spellings and their types
    numbered = Split(base.logits, base.labels, np.arange(len(base.ids)))
    padded = Split(other.logits, other.labels, np.array([f"{i:04d}" for i in range(len(other.ids))]))
    with pytest.raises(UserError, match=r"e\.g\. 0 \(whole number\).*e\.g\. '0000' \(text\)"):
        align(numbered, padded, "large.npz", "small.npz", "test")
    with pytest.raises(UserError, match="5 classes but small.npz has 6"):
        align(base, Split(np.zeros((50, 6), np.float32), other.labels, other.ids), "large.npz", "small.npz", "test")
    relabelled = Split(other.logits, (other.labels + 1) % 5, other.ids)
    with pytest.raises(UserError, match=r"disagree on the label of 50 sample\(s\) with the same id \(e\.g\. id "
                                        r"'img_test_00000\.jpg': label \d in the first, \d in the second\)"):
        align(base, relabelled, "large.npz", "small.npz", "test")


def test_validation_messages(tmp_path, sets):
    pset = sets["large"]
    pset.splits["val"].logits[:3, 0] = np.nan
    pset.splits["val"].logits[5, 1] = np.inf
    path = write_set(pset, tmp_path)
    with pytest.raises(UserError, match=r"large\.npz: split 'val' has NaN or inf logits in 4 of 40 rows"):
        read_predictions(path)


def test_zero_padded_text_ids_keep_their_spelling(tmp_path, sets, stage):
    """Ids such as '00017' written by our CSV writer come back as the same text, so the CSV pairs with
    an NPZ of the same ids; plain integer ids still come back as integers."""
    for pset in sets.values():
        for split in pset.splits.values():
            split.ids = np.array([f"{i:05d}" for i in range(len(split))])
    csv = write_set(sets["large"], tmp_path, ".csv")
    write_set(sets["small"], tmp_path, ".npz")
    back = read_predictions(csv)
    assert back.splits["val"].ids.tolist()[:3] == ["00000", "00001", "00002"]
    code, _, err = stage("evaluate/3_duo_temp_scale.py", "--large_model_pred", csv, "--small_model_pred",
                         tmp_path / "small.npz", "--output_dir", tmp_path / "cal")
    assert code == 0, err


def test_extended_precision_logits_are_read_as_float64(tmp_path, sets):
    path = write_set(sets["large"], tmp_path)
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["logits_val"] = arrays["logits_val"].astype(np.longdouble)
    np.savez(path, **arrays)
    back = read_predictions(path).splits["val"].logits
    assert back.dtype == np.float64 and np.array_equal(back, sets["large"].splits["val"].logits.astype(np.float64))
