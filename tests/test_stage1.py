"""Stage 1 end to end on tiny fixture datasets with small random-init models."""
import numpy as np
import pytest
import torch

from load_data.dataloaders import get_dataloaders
from load_models import model_loader
from tests import dataset_trees
from utils.files.prediction_io import read_predictions

S1 = "evaluate/1_single_model_prediction.py"


@pytest.fixture
def caltech(tmp_path):
    dataset_trees.make_caltech256(tmp_path / "data")
    model = model_loader.get_model_with_head("resnet10t", 4, source="timm", weights="none")
    ckpt = model_loader.save_checkpoint(tmp_path / "ff" / "resnet10t.pth", model, model_name="resnet10t",
                                        source="timm", num_classes=4, dataset="caltech256", image_size=16)
    return tmp_path, model, ckpt


def common(root):
    return ["--dataset", "caltech256", "--data_dir", root / "data", "--output_dir", root / "preds",
            "--num_workers", 0, "--batch_size", 8, "--device", "cpu"]


def test_predictions_match_a_direct_forward_pass(caltech, stage):
    root, model, ckpt = caltech
    code, out, err = stage(S1, "--model_path", ckpt, *common(root), "--features")
    assert code == 0, err
    pset = read_predictions(root / "preds" / "resnet10t.npz")
    assert set(pset.splits) == {"val", "test"} and pset.meta["dataset"] == "caltech256"
    assert pset.meta["source_checkpoint"].startswith(str(ckpt)) and "sha256:" in pset.meta["source_checkpoint"]
    transforms = model_loader.get_transforms("resnet10t", "timm", image_size=16)
    loaders, _ = get_dataloaders("caltech256", root / "data", 6, transforms=transforms)
    model.eval()
    with torch.no_grad():
        xs, ys, ids = zip(*[(x, y, i) for x, y, batch_ids in loaders["test"] for i in [batch_ids]])
        direct = torch.cat([model(x) for x in xs]).numpy()
    assert np.allclose(pset.splits["test"].logits, direct, atol=1e-5)
    assert pset.splits["test"].ids.tolist() == [i for batch in ids for i in batch]
    features = np.load(root / "preds" / "resnet10t.features.npz")
    assert features["features_test"].shape == (6, 512) and features["ids_val"].tolist() == pset.splits["val"].ids.tolist()


def test_rerun_skips_and_overwrite_rewrites(caltech, stage):
    root, _, ckpt = caltech
    assert stage(S1, "--model_path", ckpt, *common(root))[0] == 0
    target = root / "preds" / "resnet10t.npz"
    first = target.stat().st_mtime_ns
    code, out, _ = stage(S1, "--model_path", ckpt, *common(root))
    assert code == 0 and "skipped" in out and target.stat().st_mtime_ns == first
    code, out, _ = stage(S1, "--model_path", ckpt, *common(root), "--overwrite")
    assert code == 0 and "wrote" in out and target.stat().st_mtime_ns != first
    # a file from another checkpoint is stale and is redone
    other = model_loader.get_model_with_head("resnet10t", 4, source="timm", weights="none")
    model_loader.save_checkpoint(ckpt, other, model_name="resnet10t", source="timm", num_classes=4, image_size=16)
    code, out, _ = stage(S1, "--model_path", ckpt, *common(root))
    assert "wrote" in out
    # a truncated file is redone too
    target.write_bytes(target.read_bytes()[:100])
    assert "wrote" in stage(S1, "--model_path", ckpt, *common(root))[1]


def test_all_models_with_soups_and_raw_state_dicts(caltech, stage):
    root, model, ckpt = caltech
    model_loader.save_checkpoint(root / "ff" / "resnet10t_greedy.pth", model, model_name="resnet10t_greedy",
                                 source="timm", num_classes=4, image_size=16)
    small = model_loader.get_model_with_head("MNASNet0_5", 4, source="torchvision", weights="none")
    torch.save(small.state_dict(), root / "ff" / "MNASNet0_5.pth")                   # the official code's format
    code, out, err = stage(S1, "--all_models", "--model_dir", root / "ff", *common(root), "--image_size", 16,
                           "--format", "csv")
    assert code == 0, err
    assert sorted(p.name for p in (root / "preds").iterdir()) == ["MNASNet0_5.csv", "resnet10t.csv",
                                                                   "resnet10t_greedy.csv"]
    assert read_predictions(root / "preds" / "MNASNet0_5.csv").num_classes == 4


def test_name_prefix_names_the_trials_of_a_search(caltech, stage):
    """--name_prefix: the FT trials of soup/<model>/ predicted as <model>_trial<i> (the official DE's members)."""
    root, model, ckpt = caltech
    trials = root / "soup" / "resnet10t"
    for i in range(2):
        model_loader.save_checkpoint(trials / f"trial{i}.pth", model, model_name="resnet10t", source="timm",
                                     num_classes=4, image_size=16)
    code, out, err = stage(S1, "--model_dir", trials, "--name_prefix", "resnet10t_", *common(root), "--image_size", 16)
    assert code == 0, err
    assert sorted(p.name for p in (root / "preds").iterdir()) == ["resnet10t_trial0.npz", "resnet10t_trial1.npz"]
    assert read_predictions(root / "preds" / "resnet10t_trial1.npz").model == "resnet10t_trial1"
    for prefix, message in (("../x", "--name_prefix: '../x' is not a plain name"), ("a/", "is not a plain name"),
                            (".x", "a hidden file no stage reads")):
        code, out, err = stage(S1, "--model_dir", trials, "--name_prefix", prefix, *common(root))
        assert code == 2 and message in err, err
    code, out, err = stage(S1, "--dataset", "imagenet", "--model", "resnet18", "--name_prefix", "x_")
    assert code == 2 and "pretrained models keep their own names" in err


def test_imagenet_pretrained_heads(tmp_path, stage):
    root, v2 = dataset_trees.make_imagenet(tmp_path)
    csv = tmp_path / "bb.csv"
    csv.write_text("model_name,source,tv_weights,GFLOPS\nShuffleNet_V2_X0_5,torchvision,IMAGENET1K_V1,0.04\n")
    code, _, err = stage(S1, "--all_models", "--dataset", "imagenet", "--data_dir", root, "--ood_dir", v2,
                         "--backbone_csv", csv, "--weights", "none", "--output_dir", tmp_path / "p", "--num_workers", 0,
                         "--model_dir", tmp_path / "nothing_here", "--image_size", 32)
    assert code == 0, err
    pset = read_predictions(tmp_path / "p" / "ShuffleNet_V2_X0_5.npz")
    assert pset.num_classes == 1000 and set(pset.splits) == {"val", "test", "ood_test"}


def test_dataset_is_inferred_from_the_checkpoint_or_folder(caltech, stage, monkeypatch):
    root, _, ckpt = caltech
    code, out, err = stage(S1, "--model_path", ckpt, "--data_dir", root / "data", "--output_dir", root / "p",
                           "--num_workers", 0)
    assert code == 0, err                              # the checkpoint records dataset=caltech256
    assert read_predictions(root / "p" / "resnet10t.npz").dataset == "caltech256"
    monkeypatch.chdir(root)                            # the seed README's bare `--all_models`
    (root / "checkpoints" / "caltech256").mkdir(parents=True)
    (root / "ff").rename(root / "checkpoints" / "caltech256" / "ff")
    code, out, err = stage(S1, "--all_models", "--data_dir", root / "data", "--num_workers", 0)
    assert code == 0, err
    assert (root / "predictions" / "resnet10t.npz").exists()


def test_corruption_sweep_predicts_each_corrupted_test_split(caltech, stage):
    """--corruptions adds one split per corruption x severity: the test images, corrupted as they are read, the
    same for the same seed; the clean splits are unchanged."""
    root, model, ckpt = caltech
    args = ["--model_path", ckpt, *common(root), "--corruptions", "contrast", "gaussian_noise", "--severities", 1, 4]
    code, out, err = stage(S1, *args)
    assert code == 0, err
    pset = read_predictions(root / "preds" / "resnet10t.npz")
    assert list(pset.splits) == ["val", "test", "c_contrast_1", "c_contrast_4", "c_gaussian_noise_1",
                                 "c_gaussian_noise_4"]
    test = pset.splits["test"]
    for split in list(pset.splits)[2:]:
        assert pset.splits[split].ids.tolist() == test.ids.tolist()
        assert not np.allclose(pset.splits[split].logits, test.logits)
    first = pset.splits["c_gaussian_noise_4"].logits
    assert stage(S1, *args, "--overwrite")[0] == 0
    assert np.array_equal(read_predictions(root / "preds" / "resnet10t.npz").splits["c_gaussian_noise_4"].logits, first)
    code, _, err = stage(S1, *args[:-6], "--corruptions", "fog")
    assert code == 2 and "fog" in err
