"""Same seed, same numbers? The demo pipeline (stages 1–3) run several times on one machine, compared
step by step.

Makes a small synthetic parts VOC once, then runs `cpn pipeline --config pipeline_demo.yaml` into
`OUT/run{i}` for each run (each packs its own shards and trains its own CPN, AffinityNet and DeepLab,
with short step budgets), and compares the runs' outputs per step: every PNG and NPY byte for byte,
every `model_final.pth` tensor by tensor, and the scores. (AffinityNet starts from its seeded random
init, where `make demo` starts it from the demo's warm-up.) The first step whose outputs differ is where
the runs part; the scores show by how much the final figures vary.

    .venv/bin/python benchmarks/bench_repro.py --runs 3 --out /tmp/repro
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPN = [sys.executable, "-m", "cpn_dist"]

# the pipeline's work_dir folders, in step order, and the step that writes each
FOLDERS = [("shards", "pack"), ("cpn", "train_cpn"), ("cams", "cams"), ("pseudo", "pseudo"),
           ("affinity_labels", "affinity_labels"), ("affinity", "train_affinity"), ("rw", "rw"),
           ("segmentation", "train_segmentation"), ("segmentation_out", "segment")]  # fmt: skip


def digest(path: Path) -> str:
    """A content digest: tensors only for weights (a checkpoint also records paths and times)."""
    if path.suffix == ".pth":
        from cpn_dist.models.weights import read_state_dict

        state = read_state_dict(path)
        h = hashlib.sha256()
        for key in sorted(state):
            h.update(key.encode())
            h.update(state[key].detach().contiguous().numpy().tobytes())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_digests(work: Path, folder: str) -> dict[str, str]:
    root = work / folder
    if folder in ("cpn", "affinity", "segmentation"):
        files = [root / "model_final.pth"] if (root / "model_final.pth").is_file() else []
    else:
        files = [p for p in sorted(root.rglob("*")) if p.suffix in (".png", ".npy", ".tar")]
    return {str(p.relative_to(root)): digest(p) for p in files}


def scores(work: Path) -> dict[str, float]:
    summary = json.loads((work / "summary.json").read_text())
    return {f"{s['stage']} ({s['split']})": 100 * s["miou"] for s in summary["scores"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--steps", type=int, default=30, help="max_steps of each training (CPN, AffinityNet, DeepLab)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every process (OMP_NUM_THREADS)")
    ap.add_argument("overrides", nargs="*", help="further pipeline overrides for every run")
    args = ap.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    voc = args.out / "VOC2012"
    if not (voc / "ImageSets").is_dir():
        subprocess.run([*CPN, "synth-voc", "--out", str(voc), "--images", str(args.images), "--size", "64",
                        "--task", "parts-reliable", "--seed", "0"], check=True, env=env)  # fmt: skip
    budget = f"train.max_steps={args.steps}"
    runs = []
    for i in range(args.runs):
        work = args.out / f"run{i}"
        start = "model.weights=null"  # the demo's warm-up is not made here; the CPN's f9 is not AffinityNet's
        subprocess.run([*CPN, "pipeline", "--config", "pipeline_demo.yaml", f"voc_root={voc}",
                        f"shards={work}/shards", f"work_dir={work}", "weights.cpn=null",
                        f"overrides.cpn=[{budget}]", f"overrides.affinity=[{budget}, {start}]",
                        f"overrides.segmentation=[{budget}]", *args.overrides], check=True, env=env)  # fmt: skip
        runs.append(work)

    report = {"runs": [str(r) for r in runs], "threads": args.threads, "steps": {}, "scores": []}
    print("| step (folder) | files | identical in every run |")
    print("|---|---|---|")
    for folder, step in FOLDERS:
        digests = [folder_digests(r, folder) for r in runs]
        same = all(d == digests[0] for d in digests[1:])
        differing = sorted(k for k in digests[0] if any(d.get(k) != digests[0][k] for d in digests[1:]))
        report["steps"][step] = {"files": len(digests[0]), "identical": same, "differing": len(differing)}
        print(f"| {step} ({folder}) | {len(digests[0])} | {'yes' if same else f'no ({len(differing)} differ)'} |")
    report["scores"] = [scores(r) for r in runs]
    print("\n| score | " + " | ".join(f"run {i}" for i in range(len(runs))) + " | spread |")
    print("|---|" + "---|" * (len(runs) + 1))
    for key in report["scores"][0]:
        values = [s[key] for s in report["scores"]]
        print(f"| {key} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {max(values) - min(values):.2f} |")
    (args.out / "repro.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
