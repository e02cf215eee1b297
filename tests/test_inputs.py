"""utils/stages/inputs.py: which dataset a set of files is about, and the prediction cache."""
import pytest

from tests.helpers import make_duo_logits, write_set
from utils.errors import UserError
from utils.stages import inputs


def test_resolve_dataset(tmp_path, capsys):
    assert inputs.resolve_dataset("imagenet", ["x"], tmp_path) == "imagenet"
    assert inputs.resolve_dataset(None, ["iwildcam", None, "iwildcam"], tmp_path) == "iwildcam"
    with pytest.raises(UserError, match="several datasets"):
        inputs.resolve_dataset(None, ["a", "b"], tmp_path)
    (tmp_path / "caltech").mkdir()
    assert inputs.resolve_dataset(None, [None], tmp_path / "caltech") == "caltech"
    assert "do not record their dataset" in capsys.readouterr().err


def test_prediction_cache_keeps_the_most_recent(tmp_path):
    sets = make_duo_logits(models=("a", "b", "c"), quality=(1, 1, 1), scale=(1, 1, 1))
    paths = [write_set(pset, tmp_path) for pset in sets.values()]
    cache = inputs.PredictionCache(max_items=2)
    first = cache.get(paths[0])
    assert cache.get(paths[0]) is first
    cache.get(paths[1]), cache.get(paths[2])
    assert cache.get(paths[0]) is not first                      # evicted, read again
