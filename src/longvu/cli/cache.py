"""``longvu cache info|clear``: the feature cache (:mod:`longvu.pipeline.cache`), without loading a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import common as c

COMMANDS = {"cache": "inspect or empty the feature cache"}


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help=COMMANDS["cache"],
                       description="The feature cache keeps each video's encoding, so a second question about it "
                                   "skips decoding and the vision towers. Bounded by $LONGVU_CACHE_MAX_GB (default "
                                   "20); the least recently used entries go first.",
                       epilog=c.examples("longvu cache info", "longvu cache clear --cache-dir /scratch/longvu-cache"))  # fmt: skip
    p.add_argument(
        "action", choices=["info", "clear"], help="info: folder, entries and size; clear: remove every entry"
    )
    p.add_argument("--cache-dir", metavar="DIR", help="cache folder (default: $LONGVU_CACHE_DIR or ~/.cache/longvu)")


def run(args: argparse.Namespace) -> int:
    from ..pipeline.cache import FeatureCache, default_cache_bytes, default_cache_dir

    root = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if not (root / "index.sqlite").is_file():  # no cache there: report it, create nothing
        if args.action == "info":
            print(f"folder:  {root} ({'no cache in it yet' if root.is_dir() else 'does not exist yet'})")
            print("entries: 0")
            print(f"size:    0.0 MiB of {default_cache_bytes() / 1024**3:.1f} GiB")
        else:
            print(f"nothing to remove: no feature cache in {root}")
        return 0
    cache = FeatureCache(root, sweep=args.action != "info")  # info counts a killed process's leftovers
    if args.action == "info":
        info = cache.info()
        print(f"folder:  {info['root']}")
        print(f"entries: {info['entries']} ({c.plural(info['videos'], 'video')})")
        print(f"size:    {info['bytes'] / 1024**2:.1f} MiB of {info['max_bytes'] / 1024**3:.1f} GiB")
        print(f"on disk: {info['on_disk'] / 1024**2:.1f} MiB, {info['orphans']} orphan blob(s) of a killed process "
              f"({info['orphan_bytes'] / 1024**2:.1f} MiB; 'cache clear' removes them)")  # fmt: skip
    else:
        print(f"removed {c.plural(cache.clear(), 'entry', 'entries')} from {cache.root}")
    return 0
