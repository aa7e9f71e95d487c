"""Command line: ``longvu ask VIDEO QUESTION`` and ``longvu describe VIDEO``.

The answer goes to stdout; progress and diagnostics go to stderr.  Errors caused by
the input (a bad file, checkpoint or option) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .errors import LongVUError

EXIT_USAGE = 2


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None


def _add_model(p: argparse.ArgumentParser):
    from .model import DEFAULT_MODEL

    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint folder or hub id (default {DEFAULT_MODEL})")
    g.add_argument("--siglip", help="local folder of the SigLIP tower (default: <model>/vision_towers/siglip)")
    g.add_argument("--dinov2", help="local folder of the DINOv2 tower (default: <model>/vision_towers/dinov2)")
    g.add_argument("--adapter", help="a folder written by `longvu train` (LoRA / trained connector) to apply")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    g.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config field, e.g. --set dino_threshold=0.8 (repeatable)")  # fmt: skip
    from .plan_cli import add_placement_options

    add_placement_options(p.add_argument_group("quantization and placement (see `longvu plan`)"))
    c = p.add_argument_group("feature cache")
    c.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    c.add_argument("--cache-dir", help="cache folder (default $LONGVU_CACHE_DIR or ~/.cache/longvu)")


def _add_common(p: argparse.ArgumentParser) -> None:
    _add_model(p)
    s = p.add_argument_group("sampling")
    s.add_argument("--fps", type=_float, default=1.0, help="frames sampled per second (default 1)")
    s.add_argument("--max-frames", type=_positive_int, help="keep at most this many sampled frames, evenly spaced")
    s.add_argument("--start", type=_float, help="first second of the video to use")
    s.add_argument("--end", type=_float, help="last second of the video to use")
    d = p.add_argument_group("generation")
    d.add_argument("--max-new-tokens", type=_positive_int, default=512)
    d.add_argument(
        "--greedy", action="store_true", help="greedy decoding (the checkpoint's repetition penalty still applies)"
    )
    d.add_argument("--temperature", type=_float, help="sampling temperature (0 means greedy)")
    d.add_argument("--top-p", type=_float, help="nucleus sampling threshold")
    o = p.add_argument_group("output")
    o.add_argument("--trace", metavar="FILE.json", help="write the compression trace (longvu-parity-trace/1)")
    o.add_argument("--trace-arrays", metavar="FILE.npz", help="write trace arrays (first-step logits, ...)")
    o.add_argument("--stream", dest="stream", action="store_true", default=None, help="print tokens as they come")
    o.add_argument("--no-stream", dest="stream", action="store_false", help="print the answer at the end")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress or summary on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longvu", description="Answer questions about long videos with LongVU.")
    parser.add_argument("--version", action="version", version=f"longvu {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ask = sub.add_parser("ask", help="answer a question about a video")
    ask.add_argument("video")
    ask.add_argument("question")
    _add_common(ask)
    desc = sub.add_parser("describe", help="describe a video in detail")
    desc.add_argument("video")
    _add_common(desc)
    chat = sub.add_parser("chat", help="an interactive conversation about a video (questions on stdin)")
    chat.add_argument("video")
    _add_common(chat)
    srv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with a web page")
    _add_model(srv)
    n = srv.add_argument_group("server")
    n.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    n.add_argument("--port", type=int, default=8000)
    n.add_argument("--served-model-name", default=None, help="model id clients send (default: the --model name)")
    n.add_argument("--allowed-local-media-path", help="folder whose videos requests may name by path")
    n.add_argument("--allow-remote-urls", action="store_true", help="let requests name http(s) video URLs")
    n.add_argument("--api-key", default=os.environ.get("LONGVU_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/ (default $LONGVU_API_KEY)")  # fmt: skip
    n.add_argument("--max-upload-mb", type=_float, default=1024.0, help="largest video accepted (default 1024)")
    n.add_argument("--max-video-seconds", type=_float, default=4 * 3600.0, help="longest video accepted")
    n.add_argument("--request-timeout", type=_float, default=1800.0, help="seconds before a request is abandoned")
    n.add_argument("--queue-size", type=_positive_int, default=8, help="requests waiting at most (then 503)")
    n.add_argument("--max-new-tokens", type=_positive_int, default=512, help="default answer length (default 512)")
    n.add_argument("--max-tokens-limit", type=_positive_int, default=4096,
                   help="largest max_tokens a request may ask for; above it, 400 (default 4096)")  # fmt: skip
    n.add_argument("--upload-dir", help="where uploads are kept (default: a private temporary folder)")
    n.add_argument("--quiet", "-q", action="store_true")
    r = srv.add_argument_group("scale-out (Ray Serve)")
    r.add_argument("--replicas", type=_positive_int, help="run N model replicas as a Ray Serve deployment")
    r.add_argument("--ray", metavar="ADDRESS", help="Ray cluster for --replicas ('auto', an address; default: local)")
    ev = sub.add_parser("eval", help="run a benchmark (videomme, mlvu, egoschema, mvbench, vniah, synthetic)")
    ev.add_argument("benchmark", choices=["videomme", "mlvu", "egoschema", "mvbench", "vniah", "synthetic"])
    ev.add_argument("--data", required=True, help="the benchmark's folder, in its published layout")
    ev.add_argument("--out", required=True, help="results folder (a re-run resumes)")
    ev.add_argument("--model", default=None, help="checkpoint folder or hub id")
    ev.add_argument("--adapter", help="a folder written by `longvu train` to apply to --model")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ev.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    ev.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                    help="override the preset's config, e.g. --set drop_threshold=0.7")  # fmt: skip
    ev.add_argument("--workers", type=_positive_int, default=1, help="model processes on this machine (or Ray actors)")
    ev.add_argument(
        "--ray", metavar="ADDRESS", help="run the workers on a Ray cluster ('auto', an address, or 'local')"
    )
    ev.add_argument(
        "--ray-gpus", type=_float, default=None, help="GPUs per Ray worker (default 1 if the cluster has GPUs)"
    )
    ev.add_argument("--limit", type=_positive_int, help="only the first N questions")
    ev.add_argument("--subtitles", action="store_true", help="VideoMME: add the subtitles (the 'w/ subs' setting)")
    ev.add_argument("--sample-fps", type=_float, help="override the preset's frames per second")
    ev.add_argument("--max-frames", type=_positive_int, help="override the preset's frame limit")
    ev.add_argument("--mode", choices=["teacher", "generate"], default="teacher", help="V-NIAH scoring")
    ev.add_argument("--force", action="store_true", help="add to answers in --out made with other settings")
    ev.add_argument("--quiet", "-q", action="store_true")
    vn = sub.add_parser("vniah", help="make V-NIAH haystack videos")
    vn.add_argument("action", choices=["generate"])
    vn.add_argument("--out", required=True)
    vn.add_argument("--haystack", help="a video to build the haystack from (default: synthetic frames)")
    vn.add_argument("--lengths", type=_positive_int, nargs="+", default=[60, 120, 240, 480])
    vn.add_argument("--depths", type=_float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    from .plan_cli import add_plan_parser

    add_plan_parser(sub)
    from .synth_cli import add_parsers as add_data_parsers

    add_data_parsers(sub)
    from .train_cli import add_parsers as add_train_parsers

    add_train_parsers(sub)
    cache = sub.add_parser("cache", help="inspect or empty the feature cache")
    cache.add_argument("action", choices=["info", "clear"])
    cache.add_argument("--cache-dir", help="cache folder (default $LONGVU_CACHE_DIR or ~/.cache/longvu)")
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def _log(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def _check_generation_args(args) -> None:
    if args.temperature is not None and args.temperature < 0:
        raise LongVUError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise LongVUError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.greedy and (args.temperature or args.top_p is not None):
        raise LongVUError("--greedy cannot be combined with --temperature or --top-p")


def _load_model(args, overrides: dict, progress: bool):
    from .cache import FeatureCache
    from .pipeline import LongVU
    from .plan_cli import load_options

    t0 = time.perf_counter()
    _log(args, f"loading {args.model} ...")
    lv = LongVU.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, siglip=args.siglip, dinov2=args.dinov2,
        overrides=overrides, cache=False if args.no_cache else FeatureCache(args.cache_dir), progress=progress,
        options=load_options(args), adapter=args.adapter,
    )  # fmt: skip
    dtype = str(lv.dtype).removeprefix("torch.")
    if lv.model.options.quantize:
        dtype += f", LLM {lv.model.options.quantize}"
    _log(args, f"loaded in {time.perf_counter() - t0:.1f}s on {lv.device} ({dtype})")
    return lv


def _load(args):
    """Check the arguments and the video, then load the model: returns (LongVU, Sampling, options)."""
    from .config import parse_set_options
    from .pipeline import GenerationOptions
    from .video import Sampling, probe_video

    _check_generation_args(args)
    overrides = parse_set_options(args.overrides)
    sampling = Sampling(fps=args.fps, max_frames=args.max_frames, start=args.start, end=args.end)
    probe_video(args.video)  # fail fast, before the (slow) model load
    lv = _load_model(args, overrides, progress=not args.quiet and sys.stderr.isatty())
    gen = GenerationOptions(
        max_new_tokens=args.max_new_tokens, greedy=args.greedy, temperature=args.temperature, top_p=args.top_p
    )
    return lv, sampling, gen


def _encode(args, lv, sampling, observer=None):
    t0 = time.perf_counter()
    feats = lv.features(args.video, sampling, observer=observer)
    how = "from the feature cache" if feats.from_cache else "encoded"
    _log(args, f"{len(feats)} frames sampled from {feats.num_frames_total} ({feats.avg_fps:.2f} fps, every "
               f"{feats.step}); {how} in {time.perf_counter() - t0:.1f}s")  # fmt: skip
    return feats


def _print_stream(stream, enabled: bool) -> None:
    if enabled:
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        for _ in stream:
            pass
        print(stream.answer.text)
    sys.stdout.flush()


def run_ask(args) -> int:
    from .observe import ParityObserver
    from .pipeline import DESCRIBE_PROMPT

    question = DESCRIBE_PROMPT if args.command == "describe" else args.question
    if not question.strip():
        raise LongVUError("the question is empty")
    lv, sampling, gen = _load(args)
    conv = lv.conversation()
    conv.add_user(question)
    lv.prompt_ids(conv)  # a question that cannot fit fails here, before the video is encoded
    observer = ParityObserver(arrays=bool(args.trace_arrays)) if (args.trace or args.trace_arrays) else None
    feats = _encode(args, lv, sampling, observer)
    t1 = time.perf_counter()
    stream = lv.generate(feats, conv, generation=gen, observer=observer)
    _print_stream(stream, args.stream if args.stream is not None else sys.stdout.isatty())
    answer = stream.answer
    if args.trace:
        answer.trace.save(args.trace)
    if args.trace_arrays:
        answer.trace.save_arrays(args.trace_arrays)
    _log(args, answer.trace.summary())
    _log(args, f"answered in {time.perf_counter() - t1:.1f}s")
    return 0


def run_chat(args) -> int:
    if args.trace or args.trace_arrays:
        raise LongVUError("--trace and --trace-arrays are for `longvu ask`; chat turns are not traced")
    lv, sampling, gen = _load(args)
    feats = _encode(args, lv, sampling)
    session = lv.chat(feats)
    interactive = sys.stdin.isatty()
    stream_out = args.stream if args.stream is not None else sys.stdout.isatty()
    if interactive:
        _log(args, "ask questions about the video; an empty line or Ctrl-D ends the chat, /reset forgets the history")
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line or not line.strip():
            break
        question = line.strip()
        if question == "/reset":
            session.reset()
            _log(args, "(history cleared)")
            continue
        try:
            _print_stream(session.ask_stream(question, gen), stream_out)
        except LongVUError as e:  # this question only: the session goes on
            print(f"longvu: error: {e}", file=sys.stderr, flush=True)
    return 0


def run_serve(args) -> int:
    from .config import parse_set_options
    from .server import ServerSettings, serve

    overrides = parse_set_options(args.overrides)
    if args.allowed_local_media_path and not os.path.isdir(args.allowed_local_media_path):
        raise LongVUError(f"--allowed-local-media-path {args.allowed_local_media_path}: not a folder")
    if args.ray and not args.replicas:
        raise LongVUError("--ray needs --replicas N")
    settings = ServerSettings(
        model_name=args.served_model_name or str(args.model).rstrip("/").split("/")[-1],
        allowed_local_media_path=args.allowed_local_media_path,
        allow_remote_urls=args.allow_remote_urls,
        api_key=args.api_key,
        max_upload_mb=args.max_upload_mb,
        max_video_seconds=args.max_video_seconds,
        request_timeout_s=args.request_timeout,
        queue_size=args.queue_size,
        max_new_tokens=args.max_new_tokens,
        max_tokens_limit=args.max_tokens_limit,
        upload_dir=args.upload_dir,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        _log(args, f"warning: listening on {args.host} without --api-key: anyone who can reach it can use it")
    if args.replicas:
        from . import serve_ray

        load = {"device": args.device, "dtype": args.dtype, "siglip": args.siglip, "dinov2": args.dinov2,
                "overrides": overrides, "adapter": args.adapter}  # fmt: skip
        serve_ray.run(args.model, load, settings, host=args.host, port=args.port, replicas=args.replicas,
                      address=args.ray, cache_dir="" if args.no_cache else args.cache_dir)  # fmt: skip
        return 0
    lv = _load_model(args, overrides, progress=False)
    serve(lv, settings, args.host, args.port)
    return 0


def run_eval(args) -> int:
    from .config import parse_set_options
    from .model import DEFAULT_MODEL

    overrides = parse_set_options(args.overrides)
    model = args.model or DEFAULT_MODEL
    if args.benchmark == "vniah":
        from .eval.vniah import run_vniah

        summary = run_vniah(args.data, args.out, model=model, mode=args.mode, device=args.device,
                            dtype=args.dtype, overrides=overrides, adapter=args.adapter)  # fmt: skip
        print(f"V-NIAH ({summary['mode']}): {summary['accuracy']}% of {summary['items']} items; "
              f"needle frame kept in {summary['needle_kept_rate']}%; heatmap {args.out}/heatmap.png")  # fmt: skip
        return 0
    import dataclasses

    from .eval.benchmarks import PRESETS, load_items
    from .eval.runner import run_benchmark

    preset = PRESETS[args.benchmark]
    if args.sample_fps is not None or args.max_frames is not None:
        preset = dataclasses.replace(
            preset,
            sample_fps=preset.sample_fps if args.sample_fps is None else args.sample_fps,
            max_frames=preset.max_frames if args.max_frames is None else args.max_frames,
        )

    items = load_items(args.benchmark, args.data, **({"subtitles": True} if args.subtitles else {}))
    if args.limit:
        items = items[: args.limit]
    _log(args, f"{len(items)} questions from {args.data}")
    summary = run_benchmark(
        args.benchmark, items, args.out, model=model, device=args.device, dtype=args.dtype, overrides=overrides,
        workers=args.workers, ray_address=args.ray, ray_gpus=args.ray_gpus, progress=not args.quiet, preset=preset,
        subtitles=args.subtitles, force=args.force, adapter=args.adapter,
    )  # fmt: skip
    print(open(os.path.join(args.out, "summary.md")).read(), end="")
    if summary["unparseable"]:
        _log(args, f"{summary['unparseable']} answers could not be parsed (counted wrong): see summary.json")
    if summary["errors"]:
        _log(args, f"{summary['errors']} questions failed (counted wrong; see summary.json); run again to retry them")
    return 0


def run_vniah_generate(args) -> int:
    from .eval.vniah import generate

    if args.haystack:
        from .video import probe_video

        probe_video(args.haystack)
    manifest = generate(args.out, lengths=args.lengths, depths=args.depths, haystack=args.haystack)
    print(f"wrote {manifest}")
    return 0


def run_cache(args) -> int:
    from .cache import FeatureCache

    cache = FeatureCache(args.cache_dir)
    if args.action == "info":
        info = cache.info()
        print(f"folder:  {info['root']}")
        print(f"entries: {info['entries']} ({info['videos']} videos)")
        print(f"size:    {info['bytes'] / 1024**2:.1f} MiB of {info['max_bytes'] / 1024**3:.1f} GiB")
    else:
        print(f"removed {cache.clear()} entries from {cache.root}")
    return 0


class _StderrHandler(logging.Handler):
    """Writes each record as one ``longvu: ...`` line to whatever ``sys.stderr`` is at the time."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"longvu: {record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:  # logging must never fail the command
            self.handleError(record)


def _setup_logging(quiet: bool) -> None:
    """Our own warnings (e.g. a corrupt cache entry) on stderr; other libraries' logging is left alone."""
    log = logging.getLogger("longvu")
    handler = next((h for h in log.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        log.addHandler(handler)
    handler.setLevel(logging.ERROR if quiet else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(bool(getattr(args, "quiet", False)))
    try:
        if args.command == "cache":
            return run_cache(args)
        if args.command == "chat":
            return run_chat(args)
        if args.command == "serve":
            return run_serve(args)
        if args.command == "eval":
            return run_eval(args)
        if args.command == "vniah":
            return run_vniah_generate(args)
        if args.command == "plan":
            from .plan_cli import run_plan

            return run_plan(args)
        if args.command in ("train", "merge"):
            from .train_cli import run as run_train

            return run_train(args)
        if args.command in ("synth", "data"):
            from .synth_cli import run as run_data

            return run_data(args)
        return run_ask(args)
    except LongVUError as e:
        print(f"longvu: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("longvu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # an internal error: one line, traceback on request
        if os.environ.get("LONGVU_DEBUG"):
            raise
        print(f"longvu: internal error: {type(e).__name__}: {e} (set LONGVU_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
