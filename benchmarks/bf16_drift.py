"""How far a bfloat16 run's decisions drift from float32's, on the CPU (no GPU needed).

    python -m benchmarks.bf16_drift              # the shared golden cases + the API branches
    python -m benchmarks.bf16_drift --device cuda --dtype float16

For each golden case, the run in ``--dtype`` is compared with the case's float32 golden;
for each API branch the golden cases miss (STC on low-res tokens, a window emptied by
force-remove, Llama with STC, frame_pos with STC), with this code's own float32 run.
Reported: whether stage 1's kept frames and the high-res frames are equal, and every token
count that differs.  Results go to ``<out>/bf16_drift.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "parity"
QWEN = FIXTURES / "checkpoints" / "tiny-longvu-qwen2"
LLAMA = FIXTURES / "checkpoints" / "tiny-longvu-llama3_2"
VIDEO1 = FIXTURES / "videos" / "video1.mp4"
QUESTION = "Describe this video in detail."


def decisions(model: Path, video: Path, question: str, overrides: dict, device: str, dtype: str) -> dict:
    from longvu import GenerationOptions, LongVU

    lv = LongVU.from_pretrained(model, device=device, dtype=dtype, overrides=overrides, cache=False)
    t = lv.ask(video, question, generation=GenerationOptions(max_new_tokens=1, greedy=True)).trace.data
    return {"kept": t["dino"]["kept_indices"], "high_res": t["selection"]["high_res_frames"], "counts": t["counts"]}


def compare(ref: dict, run: dict) -> dict:
    diff = {k: [ref["counts"][k], run["counts"][k]] for k in ref["counts"] if ref["counts"][k] != run["counts"][k]}
    stc = "visual_tokens_after_stc_drop"
    return {
        "kept_equal": ref["kept"] == run["kept"],
        "high_res_equal": ref["high_res"] == run["high_res"],
        "count_differences": diff,
        "stc_drift_pct": round(100 * abs(run["counts"][stc] - ref["counts"][stc]) / ref["counts"][stc], 2),
    }


def branches(tmp: Path) -> list[tuple[str, Path, Path, dict]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import scene_frames, write_video

    square = write_video(tmp / "square.mp4", scene_frames(210, h=96, w=96, scene_len=30), fps=10)
    return [
        ("stc_on_low_res_tokens", QWEN, square, {"tokenizer_model_max_length": 1500}),
        ("window_emptied_by_force_remove", QWEN, VIDEO1, {"tokenizer_model_max_length": 200}),
        ("llama_with_stc", LLAMA, VIDEO1, {"tokenizer_model_max_length": 669}),
        ("frame_pos_with_stc", QWEN, VIDEO1, {"tokenizer_model_max_length": 669, "frame_pos": True}),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    cases = json.loads((FIXTURES / "cases.json").read_text())["cases"]
    results = {}
    for case in cases:
        rel = case["video"]
        video = FIXTURES / "videos" / rel.removeprefix("../videos/") if rel.startswith("../") else FIXTURES / rel
        gold = json.loads((FIXTURES / "golden" / case["name"] / "trace.json").read_text())
        ref = {"kept": gold["dino"]["kept_indices"], "high_res": gold["selection"]["high_res_frames"],
               "counts": gold["counts"]}  # fmt: skip
        run = decisions(FIXTURES / case["checkpoint"], video, case["question"], case["config_overrides"],
                        args.device, args.dtype)  # fmt: skip
        results[case["name"]] = {"against": "float32 golden", **compare(ref, run)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, video, overrides in branches(Path(tmp)):
            ref = decisions(model, video, QUESTION, overrides, args.device, "float32")
            run = decisions(model, video, QUESTION, overrides, args.device, args.dtype)
            results[name] = {"against": "float32 run", **compare(ref, run)}
    summary = {"command": "python -m benchmarks.bf16_drift " + " ".join(argv if argv is not None else sys.argv[1:]),
               "device": args.device, "dtype": args.dtype, "results": results}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if (args.device, args.dtype) == ("cpu", "bfloat16") else f"_{args.device}_{args.dtype}"
    (out / f"bf16_drift{suffix}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
