"""Video SFT training data: the LLaVA / LongVU JSONL format, read and checked line by line.

One JSON object per line::

    {"id": "clip-0001",                      # optional, unique; default "line<N>"
     "video": "videos/clip-0001.mp4",         # relative to the JSONL's folder (or an absolute path)
     "conversations": [
         {"from": "human", "value": "<image>\\nWhat does the chef cut first?"},
         {"from": "gpt", "value": "An onion."},
         {"from": "human", "value": "And then?"},       # more turns are allowed
         {"from": "gpt", "value": "A carrot."}]}

Turns alternate ``human`` / ``gpt``, starting with ``human`` and ending with ``gpt``;
the first human turn holds the ``<image>`` placeholder (where the video goes) exactly
once and no other turn holds it; no turn is empty.  A line with no ``video`` field is a
text-only conversation (as in LLaVA's SFT mixtures): no turn may hold ``<image>`` then.  Other fields (``longvu synth``
writes ``family``, ``options``, ``answer``, ...) are kept in :attr:`Example.extra`.

:func:`load_examples` reads a JSONL file, or a folder holding ``data.jsonl`` as
``longvu synth`` writes it, and raises :class:`DataError` naming every malformed line
(``FILE:LINE: what is wrong``) instead of failing later in the middle of training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LongVUError
from ..model.prompt import IMAGE_MARKER

DATA_FILE = "data.jsonl"
ROLES = ("human", "gpt")
MAX_REPORTED = 50  # error lines kept in a DataError


class DataError(LongVUError):
    """Malformed training data.  ``errors`` holds one ``FILE:LINE: message`` per bad line (the first 50)."""

    def __init__(self, errors: list[str], total: int) -> None:
        more = f" (and {total - 1} more line(s) with errors; `longvu data check` lists them)" if total > 1 else ""
        super().__init__(errors[0] + more)
        self.errors = errors
        self.total = total


@dataclass(frozen=True)
class Example:
    """One checked line.  ``turns`` are ``(role, text)`` pairs, role ``human`` or ``gpt``."""

    line: int
    id: str
    video: Path | None  # None: a text-only conversation
    turns: list[tuple[str, str]]
    extra: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The first human turn without its ``<image>`` placeholder (and the newline after it)."""
        text = self.turns[0][1]
        return (
            text.replace(IMAGE_MARKER + "\n", "", 1)
            if IMAGE_MARKER + "\n" in text
            else text.replace(IMAGE_MARKER, "", 1)
        )


def resolve_data(path: str | Path) -> Path:
    """The JSONL file behind ``path``: the file itself, or ``data.jsonl`` (or the only ``*.jsonl``) in a folder."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise DataError([f"{p}: no such file or folder"], 1)
    if (p / DATA_FILE).is_file():
        return p / DATA_FILE
    found = sorted(p.glob("*.jsonl"))
    if len(found) != 1:
        what = "no .jsonl file" if not found else f"{len(found)} .jsonl files ({', '.join(f.name for f in found)})"
        raise DataError([f"{p}: expected {DATA_FILE} or a single .jsonl file, found {what}"], 1)
    return found[0]


def check_turns(conv: object, video: bool = True) -> list[tuple[str, str]]:
    """The ``conversations`` list as ``(role, text)`` pairs, or ValueError saying what is wrong.

    ``video``: the first human turn must hold the placeholder once; False: no turn may.
    """
    if not isinstance(conv, list) or not conv:
        raise ValueError("'conversations' must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(conv, 1):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("from"), str)
            or not isinstance(turn.get("value"), str)
        ):
            raise ValueError(f"turn {i} must be an object with string fields 'from' and 'value'")
        role, text = turn["from"], turn["value"]
        want = ROLES[(i - 1) % 2]
        if role != want:
            raise ValueError(f"turn {i} is from {role!r}, expected {want!r} (turns alternate human, gpt)")
        if (i > 1 or not video) and IMAGE_MARKER in text:
            where = "only the first human turn may" if video else "a line with no 'video' is text-only"
            raise ValueError(f"turn {i} holds {IMAGE_MARKER}; {where}")
        if not text.replace(IMAGE_MARKER, "").strip():
            raise ValueError(f"turn {i} ({role}) is empty")
        turns.append((role, text))
    if video and turns[0][1].count(IMAGE_MARKER) != 1:
        raise ValueError(
            f"the first human turn must hold {IMAGE_MARKER} exactly once, found {turns[0][1].count(IMAGE_MARKER)}"
        )
    if turns[-1][0] != "gpt":
        raise ValueError("the last turn is from 'human': nothing to learn from it")
    return turns


def check_line(text: str, line: int, root: Path, *, check_videos: bool = True) -> Example:
    """Parse and check one JSONL line; ValueError with a message (without the location) if malformed."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    video = obj.get("video")
    if "video" in obj and (not isinstance(video, str) or not video.strip()):
        raise ValueError("'video' must be a non-empty string (leave the field out for a text-only line)")
    turns = check_turns(obj.get("conversations"), video=video is not None)
    ident = obj.get("id", f"line{line}")
    if not isinstance(ident, (str, int)) or isinstance(ident, bool):
        raise ValueError("'id' must be a string or an integer")
    path = None if video is None else Path(video) if Path(video).is_absolute() else root / video
    if check_videos and path is not None and not path.is_file():
        raise ValueError(f"video {video} not found (looked for {path})")
    extra = {k: v for k, v in obj.items() if k not in ("id", "video", "conversations")}
    return Example(line, str(ident), path, turns, extra)


def load_examples(
    data: str | Path, *, video_root: str | Path | None = None, check_videos: bool = True
) -> list[Example]:
    """Read and check every line of a training JSONL (or a folder holding one).

    Args:
        video_root: folder that relative ``video`` paths start from (default: the JSONL's folder).
        check_videos: require every video file to exist.
    Raises:
        DataError: one or more malformed lines (all of them are checked), or no example at all.
    """
    path = resolve_data(data)
    root = Path(video_root) if video_root is not None else path.parent
    examples: list[Example] = []
    errors: list[str] = []
    total = 0
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                ex = check_line(text, n, root, check_videos=check_videos)
                if ex.id in seen:
                    raise ValueError(f"duplicate id {ex.id!r} (first on line {seen[ex.id]})")
            except ValueError as e:
                total += 1
                if len(errors) < MAX_REPORTED:
                    errors.append(f"{path}:{n}: {e}")
                continue
            seen[ex.id] = n
            examples.append(ex)
    if errors:
        raise DataError(errors, total)
    if not examples:
        raise DataError([f"{path}: no examples"], 1)
    return examples
