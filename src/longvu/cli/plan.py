"""``longvu plan``: print what a run would need (see :mod:`longvu.loading.plan`)."""

from __future__ import annotations

import json
import os
import sys

from ..errors import LongVUError
from . import common as c
from .common import add_placement_options, print_error

GiB = 1024**3


COMMANDS = {"plan": "predict memory per component and stage, and the settings that fit"}


def add_parser(sub) -> None:
    from ..config import DEFAULT_MODEL

    p = sub.add_parser("plan", help=COMMANDS["plan"],
                       description="Predict a run's peak memory per stage, device and component before anything is "
                                   "loaded; with --device-memory, name the first settings that fit.",
                       epilog=c.examples(
                           "longvu plan --device-memory 24GB --minutes 60",
                           "longvu plan --model Vision-CAIR/LongVU_Llama3_2_3B --device-memory 12GB --video lecture.mp4",
                           f"longvu plan --model {c.TINY_MODEL} --device cpu --json",
                       ))  # fmt: skip
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint folder or a released model (Vision-CAIR/LongVU_Qwen2_7B, "
                        "Vision-CAIR/LongVU_Llama3_2_3B, or qwen2-7b / llama3.2-3b)")  # fmt: skip
    p.add_argument("--device", default="cuda", choices=["auto", "cpu", "cuda", "mps"],
                   help="device planned for; auto: this machine's, as `longvu ask` picks it (cuda, then mps, then "
                        "cpu); mps: Apple's unified memory, where the GPU's memory is the host's RAM")  # fmt: skip
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="auto: bfloat16 on cuda, float16 on mps, float32 on cpu")  # fmt: skip
    add_placement_options(p)
    p.add_argument("--device-memory", metavar="SIZE",
                   help="memory of the device (e.g. 24GB; for mps the GPU's share of the RAM, which macOS "
                        "caps at about 2/3 to 3/4 of it): say which settings fit")  # fmt: skip
    p.add_argument("--video", help="a video: its length and frame size replace --minutes and --frame-size")
    p.add_argument("--minutes", type=c.positive_number, default=60.0, help="video length")
    p.add_argument("--fps", type=c.positive_number, default=1.0, help="frames sampled per second")
    p.add_argument("--frame-size", default="640x360", metavar="WxH", help="decoded frame size")
    p.add_argument("--max-new-tokens", type=c.positive_int, default=512, metavar="N", help="answer length at most")
    c.add_set_option(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def settings_from_args(args):
    from ..loading.plan import Settings, parse_size

    args.device = resolve_device(args.device)
    dtype = args.dtype if args.dtype != "auto" else {"cpu": "float32", "mps": "float16"}.get(args.device, "bfloat16")
    if args.video:
        minutes, (w, h) = _probe(args.video)
        args.minutes, args.frame_size = minutes, f"{w}x{h}"
    try:
        w, h = (int(x) for x in args.frame_size.lower().split("x"))
    except ValueError:
        raise LongVUError(f"--frame-size expects WxH, e.g. 1920x1080, got {args.frame_size!r}") from None
    if w <= 0 or h <= 0 or args.minutes <= 0 or args.fps <= 0 or args.max_new_tokens <= 0:
        raise LongVUError("--frame-size, --minutes, --fps and --max-new-tokens must be positive")
    st = Settings(
        device=args.device, dtype=dtype, quantize=args.quantize, vision_device=args.vision_device,
        vision_dtype=args.vision_dtype, llm_gpu_memory=parse_size(args.llm_gpu_memory) if args.llm_gpu_memory else None,
        minutes=args.minutes, fps=args.fps, frame_size=(w, h), max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    _check(st)
    return st


def resolve_device(device: str) -> str:
    """``--device auto`` as ``longvu ask`` resolves it (:func:`longvu.model.pick_device`); torch is
    imported for that only on a machine where a GPU may be (see :func:`_may_have_gpu`)."""
    if device != "auto":
        return device
    if not _may_have_gpu():
        return "cpu"
    from ..loading.load import pick_device

    return pick_device("auto").type


def _may_have_gpu() -> bool:
    """False only where no GPU torch could use can be: Linux without an NVIDIA, ROCm or WSL GPU device."""
    if not sys.platform.startswith("linux"):
        return True  # macOS (mps), Windows: let torch say
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg"))


def _probe(path: str) -> tuple[float, tuple[int, int]]:
    """Length in minutes and frame size of a video, from its container (nothing decoded)."""
    import av

    from ..model.intake import probe_video
    from ..model.video import count_frames

    probe_video(path)
    total, fps = count_frames(path)
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        return total / fps / 60, (int(cc.width), int(cc.height))


def _check(st) -> None:
    from ..loading.quantize import check_scheme

    check_scheme(st.quantize, st.device)
    if {st.device, st.vdev} == {"cuda", "mps"}:
        raise LongVUError("cuda and mps cannot be combined in one run")
    if st.llm_gpu_memory is not None and st.device != "cuda":
        raise LongVUError("--llm-gpu-memory (offloading LLM layers to CPU RAM) needs --device cuda")


def run(args) -> int:
    from ..config import check_set_options
    from ..loading.plan import fit, load_shapes, parse_size, plan

    overrides = check_set_options(args.overrides)
    st = settings_from_args(args)
    shapes = load_shapes(args.model, overrides or None)
    p = plan(shapes, st)
    out = p.to_dict()
    result = None
    if args.device_memory:
        mem = parse_size(args.device_memory)
        result = fit(shapes, st, mem)
        out["fit"] = {k: v for k, v in result.items() if k != "plan"}
        out["fit"]["device_memory"] = mem
        if result["fits"]:
            out["fit"]["peak_bytes"] = result["plan"].peak_bytes
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(render(p, result))
    if result is not None and not result["fits"]:
        print_error(args, result["why"])
        return 2
    return 0


def render(p, result=None) -> str:
    """A human-readable plan: one block per stage, components with GiB per device."""
    st = p.settings
    lines = [f"{p.model}: {st.describe()}, {c.format_duration(st.minutes * 60)} at {st.fps:g} fps "
             f"({c.plural(p.frames, 'frame')}, at most {p.kept_frames} kept)", ""]  # fmt: skip
    acc = st.accelerator
    for stage, devices in p.stages.items():
        tot = {d: sum(v.values()) for d, v in devices.items()}
        lines.append(f"{stage:9s} {acc:4s} {tot[acc] / GiB:6.2f} GiB   cpu {tot['cpu'] / GiB:6.2f} GiB")
        for dev, parts in devices.items():
            for name, v in parts.items():
                if v >= 1024**2:
                    lines.append(f"  {dev:4s} {v / GiB:7.3f}  {name}")
    peak = p.peak_bytes
    lines += ["", f"peak: {acc} {peak[acc] / GiB:.2f} GiB ({p.peak_stage(acc)}), "
              f"cpu {peak['cpu'] / GiB:.2f} GiB ({p.peak_stage('cpu')})"]  # fmt: skip
    if acc == "mps":
        lines.append(f"mps is unified memory: the GPU's memory is the host's RAM, so both columns come out of it "
                     f"({p.unified_peak_bytes / GiB:.2f} GiB at the largest stage, memory-mapped checkpoint pages "
                     "included)")  # fmt: skip
    lines.append(f"feature cache for this video: {p.feature_cache_bytes / 1024**2:.0f} MiB")
    if result is not None:
        lines.append("")
        for t in result["tried"]:
            mark = "fits" if t["fits"] else "too big"
            lines.append(f"  {t['need_bytes'] / GiB:6.1f} GiB  {mark:8s} {t['settings']}")
        lines.append(f"use: {result['settings']}" if result["fits"] else result["why"])
    return "\n".join(lines)
