"""load_models/laplace_tools.py: the loader adapter for the Laplace library's predictive."""
import torch

from load_models.laplace_tools import PairLoader


def test_pair_loader_splits_batches_for_the_library_predictive():
    batches = [(torch.arange(8.0).reshape(8, 1), torch.arange(8), list(range(8))),
               (torch.arange(5.0).reshape(5, 1), torch.arange(5), list(range(5)))]

    class Loader(list):
        dataset = range(13)

    sizes = [len(y) for _, y in PairLoader(Loader(batches), "cpu", max_batch=3)]
    assert sizes == [3, 3, 2, 3, 2]
    assert [len(y) for _, y in PairLoader(Loader(batches), "cpu")] == [8, 5]
