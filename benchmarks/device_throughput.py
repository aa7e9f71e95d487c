"""Throughput of the device-dependent paths, each against its baseline in the same run.

    python -m benchmarks.device_throughput                 # every pair this machine can run
    python -m benchmarks.device_throughput --only decode   # one pair
    python -m benchmarks.device_throughput --device cuda --dtype bfloat16   # on a GPU machine
    python -m benchmarks.device_throughput --e2e-minutes 60 --device cuda --dtype bfloat16  # + one long video

Each pair runs its two variants in turn (A B A B ..., ``--repeats`` times), each run a
fresh process timing only its own section (process start-up excluded), and reports the
median time of each and the median of the pairwise ratios (new / baseline: below 1 is faster):

* ``decode``: PyAV with frame threading (``AUTO``, used when the model is not on the
  CPU) against ``SLICE``, decoding a 1080p30 H.264 clip at 1 fps;
* ``dino``: DINOv2 on 32 frames in one forward (2 windows, ``encode_chunk=32``) against
  two forwards of 16, with a random 4-layer DINOv2 of ``--dino-width`` (192 by default; 1536
  is DINOv2-giant);
* ``spill``: stage-1 spills of 160 frames of DINOv2-giant features written as now (one
  host copy per window, in the model's dtype) against as before (one host copy and a
  float32 conversion per frame), in ``--dtype``; bytes written are reported;
* ``upload`` (CUDA only): 64 frames of pixels uploaded pinned and non-blocking, cast on
  the device, against a pageable copy cast on the host;
* ``chat`` (CUDA only): five chat turns about cached features kept on the device,
  against re-uploading them every turn.

Results go to ``<out>/device_throughput.json`` and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "parity" / "checkpoints" / "tiny-longvu-qwen2"
PAIRS = {  # name: (new variant, baseline variant, CUDA only)
    "decode": ("AUTO", "SLICE", False),
    "dino": ("32", "16", False),
    "spill": ("window", "frame", False),
    "upload": ("pinned", "pageable", True),
    "chat": ("kept", "reupload", True),
}


# ----------------------------------------------------------------- child runs: each prints {"s": seconds, ...}
def child_decode(variant: str, video: str) -> dict:
    from longvu.model.video import Sampling, StreamInfo, iter_frames

    info = StreamInfo()
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_frames(video, Sampling(), info, thread_type=variant))
    return {"s": time.perf_counter() - t0, "sampled": n, "decoded": info.total}


def child_dino(variant: str, width: int, device: str, dtype: str) -> dict:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=width, num_hidden_layers=4, num_attention_heads=max(1, width // 64),
                       image_size=518, patch_size=14, use_swiglu_ffn=True)  # fmt: skip
    model = Dinov2Model(cfg).to(device=device, dtype=getattr(torch, dtype)).eval()
    pixels = torch.randn(32, 3, 378, 378)
    per = int(variant)
    with torch.inference_mode():
        model(pixels[:per].to(device=device, dtype=model.dtype))  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for i in range(0, 32, per):
            model(pixels[i : i + per].to(device=device, dtype=model.dtype)).last_hidden_state.float().cpu()
        _sync(device)
    return {"s": time.perf_counter() - t0, "frames": 32}


def child_spill(variant: str, dtype: str, device: str) -> dict:
    import numpy as np
    import torch

    from longvu.model.encode import _Spill

    feats = torch.randn(16, 576, 1536, device=device).to(getattr(torch, dtype))  # one window of DINOv2-giant
    image = (np.zeros((384, 384, 3), np.uint8), True)
    with tempfile.TemporaryDirectory() as tmp, _Spill(tmp) as spill:
        t0 = time.perf_counter()
        for w in range(10):  # 160 frames
            if variant == "window":
                spill.put([(w * 16 + i, image) for i in range(16)], feats)
            else:  # before: a host copy and a float32 conversion per frame
                for i in range(16):
                    f = feats[i].detach().cpu().float().numpy()
                    spill.feats.seek(0, os.SEEK_END)
                    spill.images.seek(0, os.SEEK_END)
                    spill.images.write(image[0].tobytes())
                    spill.feats.write(f.tobytes())
        spill.feats.flush()
        s = time.perf_counter() - t0
        size = os.path.getsize(os.path.join(tmp, "dino.bin"))
    return {"s": s, "dino_bytes": size}


def child_upload(variant: str, dtype: str) -> dict:
    import numpy as np
    import torch

    from longvu.model.devices import host_batch, upload

    dev = torch.device("cuda")
    frames = [np.random.default_rng(i).standard_normal((3, 378, 378)).astype(np.float32) for i in range(64)]
    dt = getattr(torch, dtype)
    upload(host_batch(frames, dev), dev, dt)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        if variant == "pinned":
            x = upload(host_batch(frames, dev), dev, dt)
        else:
            x = torch.from_numpy(np.stack(frames)).to(dtype=dt).to(dev)
        x.sum()
    torch.cuda.synchronize()
    return {"s": time.perf_counter() - t0, "batches": 10}


def child_chat(variant: str, model: str, dtype: str) -> dict:
    import torch

    from longvu import GenerationOptions, LongVU

    lv = LongVU.from_pretrained(model, device="cuda", dtype=dtype, cache=False)
    feats = lv.features(str(TINY.parent.parent / "videos" / "video1.mp4"))
    session = lv.chat(feats)
    opts = GenerationOptions(max_new_tokens=1, greedy=True)
    session.ask("Warm up.", opts)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(5):
        if variant == "reupload":
            feats.sampled = feats.sampled.cpu()  # as before: the cached features came back every turn
        session.ask(f"Question {i}?", opts)
    torch.cuda.synchronize()
    return {"s": time.perf_counter() - t0, "turns": 5}


def child_e2e(minutes: float, model: str, device: str, dtype: str, videos: str) -> dict:
    """One long synthetic video through ``ask``: the per-stage seconds of the trace."""
    from benchmarks.long_video import make_video
    from longvu import GenerationOptions, LongVU

    v = Path(videos) / f"synth_{minutes:g}min_30fps.mp4"
    if not v.exists():
        v.parent.mkdir(parents=True, exist_ok=True)
        make_video(v, minutes, 30)
    t0 = time.perf_counter()
    lv = LongVU.from_pretrained(model, device=device, dtype=dtype, cache=False)
    load = time.perf_counter() - t0
    ans = lv.ask(v, "What happens in this video?", generation=GenerationOptions(max_new_tokens=16, greedy=True))
    t = ans.trace.data
    return {"s": time.perf_counter() - t0, "load_s": load, "timings": t["timings"], "counts": t["counts"]}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ----------------------------------------------------------------------- driver
def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.device_throughput", *args], capture_output=True,
                         text=True, cwd=ROOT, check=False)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {out.stderr[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_pair(name: str, opts: argparse.Namespace, video: str) -> dict:
    new, base, _ = PAIRS[name]
    extra = ["--device", opts.device, "--dtype", opts.dtype, "--dino-width", str(opts.dino_width),
             "--video", video, "--model", opts.model]  # fmt: skip
    runs: dict[str, list[dict]] = {new: [], base: []}
    for _ in range(opts.repeats):
        for variant in (new, base):
            runs[variant].append(run_child(["--child", name, "--variant", variant, *extra]))
    ratios = [a["s"] / b["s"] for a, b in zip(runs[new], runs[base])]
    return {
        "new": new, "baseline": base,
        "new_s": round(statistics.median(r["s"] for r in runs[new]), 4),
        "baseline_s": round(statistics.median(r["s"] for r in runs[base]), 4),
        "ratio_median": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
        "details": {new: runs[new][0], base: runs[base][0]},
    }  # fmt: skip


def decode_video(videos: Path) -> Path:
    from benchmarks.long_video import make_video

    path = videos / "synth_1080p_1min_30fps.mp4"
    if not path.exists():
        videos.mkdir(parents=True, exist_ok=True)
        print(f"generating {path.name} ...", file=sys.stderr, flush=True)
        make_video(path, 1, 30, w=1920, h=1080)
    return path


def table(results: dict) -> str:
    rows = ["| pair | new | baseline | new (s) | baseline (s) | new / baseline (median of pairs) |",
            "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, r in results.items():
        rows.append(f"| {name} | {r['new']} | {r['baseline']} | {r['new_s']:.3f} | {r['baseline_s']:.3f} | "
                    f"{r['ratio_median']:.2f} |")  # fmt: skip
    return "\n".join(rows)


def child_main(args: argparse.Namespace) -> int:
    name, v = args.child, args.variant
    if name == "decode":
        res = child_decode(v, args.video)
    elif name == "dino":
        res = child_dino(v, args.dino_width, args.device, args.dtype)
    elif name == "spill":
        res = child_spill(v, args.dtype, args.device)
    elif name == "upload":
        res = child_upload(v, args.dtype)
    elif name == "chat":
        res = child_chat(v, args.model, args.dtype)
    else:
        res = child_e2e(float(v), args.model, args.device, args.dtype, args.videos)
    print(json.dumps(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", choices=sorted(PAIRS), help="pairs to run (default: all this machine can)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dino-width", type=int, default=192)
    ap.add_argument("--model", default=str(TINY))
    ap.add_argument("--videos", default=os.path.join(tempfile.gettempdir(), "longvu-bench-videos"))
    ap.add_argument("--video", default=None, help="the decode pair's video (default: a generated 1080p30 minute)")
    ap.add_argument("--e2e-minutes", type=float, default=None, help="also run one video of this length through ask")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)
    cuda = args.device.startswith("cuda")
    names = [n for n in (args.only or PAIRS) if cuda or not PAIRS[n][2]]
    video = args.video or str(decode_video(Path(args.videos)))
    results = {}
    for name in names:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        results[name] = measure_pair(name, args, video)
    summary = {"machine": {"cpus": len(os.sched_getaffinity(0)), "python": sys.version.split()[0]},
               "command": "python -m benchmarks.device_throughput " + " ".join(argv if argv is not None else sys.argv[1:]),
               "device": args.device, "dtype": args.dtype, "results": results}  # fmt: skip
    if args.e2e_minutes:
        summary["e2e"] = run_child(["--child", "e2e", "--variant", str(args.e2e_minutes), "--device", args.device,
                                    "--dtype", args.dtype, "--model", args.model, "--videos", args.videos])  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    default = args.device == "cpu" and args.dtype == "float32"
    suffix = "" if default else f"_{args.device.split(':')[0]}_{args.dtype}"
    (out / f"device_throughput{suffix}.json").write_text(json.dumps(summary, indent=1))
    print(table(results))
    if "e2e" in summary:
        print(json.dumps(summary["e2e"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
