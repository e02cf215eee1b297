"""The layout's promises: the evaluation half needs no torch, and no library package reaches up into
the training or stage scripts."""
import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

NUMPY_STAGES = ["evaluate/2_temp_scale.py", "evaluate/3_duo_temp_scale.py", "evaluate/4_evaluate_predictions.py",
                "evaluate/5_evaluate_duo_predictions.py", "evaluate/7_evaluate_cascades.py",
                "evaluate/8_evaluate_deep_ensemble.py",
                "evaluate/9_make_report.py", "evaluate/run_pipeline.py"]
HEAVY = ("torch", "torchvision", "timm", "ray", "laplace", "ivon")
LIBRARIES = ("utils", "load_models", "load_data")
SCRIPTS = ("train", "evaluate")
NUMPY_LIBRARY = "utils"


def loaded_after_import(path: str) -> list[str]:
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('stage', {str(REPO / path)!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "module.build_parser()\n"
            f"print(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("path", NUMPY_STAGES)
def test_evaluation_stages_import_neither_torch_nor_ray(path):
    assert loaded_after_import(path) == []


def imports_of(path) -> set[str]:
    """Every module a file imports, at any depth of the file (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def package_files(package: str):
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", LIBRARIES)
def test_libraries_never_import_the_scripts(package):
    upward = {f"{path.relative_to(REPO)}: {name}" for path in package_files(package) for name in imports_of(path)
              if name.split(".")[0] in SCRIPTS}
    assert not upward


def test_the_numpy_library_never_imports_the_torch_side():
    torch_side = {f"{path.relative_to(REPO)}: {name}" for path in package_files(NUMPY_LIBRARY)
                  for name in imports_of(path)
                  if name.split(".")[0] in HEAVY + ("load_models", "load_data")}
    # imported inside functions only: the official grid+LBFGS fit (when that method is asked for) and torch's
    # vectorised exp for matrices of ImageNet size (test_small_matrices_never_import_torch)
    assert torch_side == {"utils/maths/calibrate_temperature.py: torch", "utils/maths/uncertainty_metrics.py: torch"}


def test_small_matrices_never_import_torch():
    code = ("import sys, numpy as np\n"
            "from utils.maths import uncertainty_metrics as um, calibrate_temperature as ct\n"
            "rng = np.random.default_rng(0)\n"
            "logits, labels = rng.normal(size=(42791, 182)), rng.integers(0, 182, 42791)\n"
            "um.compute_metrics(logits, labels); um.kl_divergence(logits, logits[::-1]); ct.fit_temperature(logits, labels)\n"
            "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0 and result.stdout.split() == ["False"], result.stderr


def test_evaluate_imports_train_only_in_training_stages():
    users = {str(path.relative_to(REPO)) for path in package_files("evaluate") if any(
        name.split(".")[0] == "train" for name in imports_of(path))}
    assert users == set()


# utils' layers, each importing only itself and the layers listed for it: the base layer (errors, paths) below
# everything; maths (numbers only) below files (what is on disk); stages (what the stages compute) above both; the
# report, the pipeline, the command-line helpers and the numpy API on top
LAYERS = {"errors": set(), "paths": {"errors"}, "maths": {"errors"}, "files": {"errors", "paths", "maths"},
          "stages": {"errors", "paths", "maths", "files"}, "report": {"errors", "paths", "maths", "files", "stages"},
          "cli": {"errors", "paths", "maths", "files"}, "pipeline": {"errors", "paths", "maths", "files", "cli"},
          "api": {"errors", "maths", "files", "stages"}}


def layer_of(path) -> str:
    parts = path.relative_to(REPO / "utils").parts
    return parts[0].removesuffix(".py")


def test_each_layer_of_utils_imports_only_the_layers_below_it():
    wrong = set()
    for path in package_files(NUMPY_LIBRARY):
        if path.name == "__init__.py":
            continue
        layer = layer_of(path)
        assert layer in LAYERS, f"{path}: a module outside the declared layers"
        for name in imports_of(path):
            if name.startswith("utils."):
                target = name.split(".")[1]
                if target != layer and target not in LAYERS[layer]:
                    wrong.add(f"{path.relative_to(REPO)} ({layer}): {name}")
    assert not wrong, sorted(wrong)


def test_the_base_layer_imports_nothing_of_the_project_but_itself():
    for module in ("errors", "paths"):
        names = {n for n in imports_of(REPO / "utils" / f"{module}.py") if n.startswith(("utils", "load_", "train",
                                                                                            "evaluate"))}
        assert names <= {"utils.errors"}, (module, names)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "evaluate").glob("[0-9]*.py"))
                         + ["evaluate/run_pipeline.py"])
def test_stage_scripts_are_wiring(path):
    """A stage script parses, calls the library and writes: at most about 200 lines."""
    assert len((REPO / path).read_text().splitlines()) <= 230, path
