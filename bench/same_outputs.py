"""Do two versions of the project give the same outputs? Runs the demo and docs/reproduction.md's command sequence
with one checkout, then compares two such runs file by file.

    python bench/same_outputs.py run --repo /path/to/checkout --out /tmp/before    # ~25 min on 2 cores
    python bench/same_outputs.py run --repo . --out /tmp/after
    python bench/same_outputs.py compare /tmp/before /tmp/after

CSV, Markdown and YAML files must be byte-identical but for what records when and where they were made: Ray's
trial folder names in the soup trial lists (`trial_<run id>_..._<date>`), the run's own folder where a path
records it, and, in an NPZ's meta, the `created` time stamp and the digest of the checkpoint it was predicted
from (a `.pth` records its creation time, so its digest changes with every training although the weights do
not); NPZ arrays must be identical. Checkpoints, figures, logs, step stamps and Ray's folders are left out: the
CSVs, reports and prediction files computed from them are compared instead.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

SKIPPED_PARTS = ("logs", "ray_results", "__pycache__")
SKIPPED_SUFFIXES = (".pth", ".png", ".log", ".lock", ".json", ".pt", ".screen", ".tmp")


def run(repo: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    code = ("import sys; from pathlib import Path\n"
            "try:\n    from tests import dataset_trees as trees\n"
            "except ImportError:\n    from tests import fixtures as trees          # before the rename\n"
            "work = Path(sys.argv[1]); trees.make_iwildcam(work / 'data'); "
            "trees.make_caltech256(work / 'data', per_class=35)")
    work = out / "readme"
    work.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", code, str(work)], env=env, check=True, cwd=repo)
    scripts = subprocess.run([sys.executable, "-c", "import json; from tests.test_readme import REPRODUCTION, "
                              "readme_scripts; print(json.dumps(readme_scripts(REPRODUCTION.read_text())[0]))"],
                             env=env, check=True, cwd=repo, capture_output=True, text=True)
    for script in json.loads(scripts.stdout):
        subprocess.run(["bash", "-c", script], cwd=work, env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, str(repo / "evaluate" / "run_pipeline.py"), "--config",
                    "configs/pipeline_mnist5k.yaml", "--output_root", str(out / "demo")], env=env, check=True,
                   cwd=out)


def compared_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
            and not any(part in SKIPPED_PARTS for part in p.relative_to(root).parts)
            and not p.name.endswith(SKIPPED_SUFFIXES)}


def same_npz(a: Path, b: Path, root_a: Path, root_b: Path) -> bool:
    with np.load(a) as left, np.load(b) as right:
        if sorted(left.files) != sorted(right.files):
            return False
        for key in left.files:
            if key == "meta":
                meta_a, meta_b = json.loads(str(left[key])), json.loads(str(right[key]))
                for meta, root in ((meta_a, root_a), (meta_b, root_b)):
                    meta.pop("created", None)
                    checkpoint = str(meta.get("source_checkpoint", "")).split("#sha256:")[0]
                    meta["source_checkpoint"] = normalised(checkpoint.encode(), root).decode()
                if meta_a != meta_b:
                    return False
            elif not np.array_equal(left[key], right[key]):
                return False
    return True


RAY_TRIAL = re.compile(rb"trial_[0-9a-f]+_(\d+)_[^\"]*?_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}")


def normalised(data: bytes, root: Path) -> bytes:
    """Ray's run ids and the run's own folder (an absolute --output_root is recorded in paths) made neutral."""
    return RAY_TRIAL.sub(rb"trial_\1", data).replace(str(root.resolve()).encode(), b"<run>")


def same_text(a: Path, b: Path, root_a: Path, root_b: Path) -> bool:
    return normalised(a.read_bytes(), root_a) == normalised(b.read_bytes(), root_b)


def compare(a: Path, b: Path) -> int:
    files_a, files_b = compared_files(a), compared_files(b)
    differ = sorted(name for name in files_a & files_b
                    if not (same_npz(a / name, b / name, a, b) if name.endswith(".npz")
                            else same_text(a / name, b / name, a, b)))
    print(f"{len(files_a & files_b)} file(s) in both; {len(files_a - files_b)} only in {a}; "
          f"{len(files_b - files_a)} only in {b}; {len(differ)} differ")
    for name in sorted(files_a ^ files_b)[:20]:
        print(f"  only in one: {name}")
    for name in differ[:40]:
        print(f"  differs: {name}")
    return int(bool(differ or files_a ^ files_b))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sub.add_parser("run")
    runner.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    runner.add_argument("--out", type=Path, required=True)
    comparer = sub.add_parser("compare")
    comparer.add_argument("a", type=Path)
    comparer.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.repo.resolve(), args.out.resolve())
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
