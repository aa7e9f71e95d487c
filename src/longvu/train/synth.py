"""Synthetic video QA whose answers need the video (``longvu synth``).

Every video is a sequence of textured background *scenes* (a new texture every few
seconds) with a *cast* of four objects (``cast`` sets 1 to 4): different
shapes in different colours.  Each cast member appears a different number of
times (distinct values of 1..4), one of them moves across the frame every time it
appears, and one or two frames showing a word in large letters (a V-NIAH needle) are
inserted where no object is on screen.  Scene changes and object appearances are what
DINOv2-based frame reduction should keep; the quiet stretches between them are what it
should drop, so the longer the video, the more the answer depends on the compression.

Questions (one family per question; options as ``options="all"`` gives them, every value the
family can take in a fixed order; ``"four"`` gives four shuffled, chance 25%):

=========  ==========================================================  =================
family     question                                                     options (all)
=========  ==========================================================  =================
word       which word was shown                                         8 words
colour     what colour was the <shape>                                  6 colours
shape      what shape was the <colour> object                           6 shapes
order      which of these shapes appeared first                         6 shapes
count      how many times did the <shape> appear                        1, 2, 3, 4
motion     in which direction did the <shape> move                      left/right/up/down
=========  ==========================================================  =================

Output (``DIR``): ``videos/<id>.mp4`` (H.264 through PyAV, ``size`` x ``size`` pixels,
1 frame per second, so frame ``i`` is second ``i``), ``data.jsonl`` in the LLaVA /
LongVU video SFT format (see :func:`record`) with the fields ``longvu eval synthetic``
reads, and ``synth.json`` (the settings).  Video ``i`` of seed ``S`` depends only on
``(S, i)`` and the settings: the same command gives byte-identical files, a larger
``--n`` adds videos, and another seed gives held-out data.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import LongVUError
from .render import RENDERS, WordStyle, draw_style, render_word

FORMAT = "longvu-synth/1"
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = {
    "red": (215, 35, 35), "green": (30, 165, 55), "blue": (35, 75, 215),
    "yellow": (240, 215, 30), "purple": (135, 50, 175), "orange": (245, 135, 20),
}  # fmt: skip
WORDS = ("APPLE", "RIVER", "CANDLE", "PLANET", "TIGER", "BRIDGE", "VIOLIN", "GARDEN")  # V-NIAH's needles
WORD_QUESTION = "One frame of this video shows a word in large letters. Which word is it?"
DIRECTIONS = ("left", "right", "up", "down")
FAMILIES = ("word", "colour", "shape", "order", "count", "motion")
CAST = 4  # cast members per video by default (at most 4); their appearance counts are distinct values in 1..4
MAX_COUNT = 4  # the count family's options: 1..MAX_COUNT
MIN_SECONDS = 12  # the shortest timeline that fits four appearances of one object with gaps
WORD_SCALE = 1.6  # word needles fill most of the frame's width
LONE_SCALE = 1.9  # a lone object (``cast`` 1) is drawn this much larger by default: about half the frame across
INSTRUCTION = "Answer with the option's letter from the given choices directly."


# ------------------------------------------------------------------ drawing
def word_frame(word: str, h: int, w: int, scale: float = 1.0) -> np.ndarray:
    """``[h, w, 3]`` uint8: ``word`` in large black letters on white (the V-NIAH needle).

    ``scale`` 1 is V-NIAH's size (a 6-letter word spans about half the width); synth uses 1.6.
    """
    # lazy: PIL only on this path (the module imports without it)
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    size = max(10, int(min(h, w / max(1, len(word)) * 1.6) * 0.5 * scale))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    box = draw.textbbox((0, 0), word, font=font)
    draw.text(((w - (box[2] - box[0])) / 2, (h - (box[3] - box[1])) / 2), word, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon of ``shape`` centred on ``(cx, cy)`` with outer radius ``r`` (not for circles)."""
    if shape == "square":
        a = r * 0.85
        return [(cx - a, cy - a), (cx + a, cy - a), (cx + a, cy + a), (cx - a, cy + a)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "star":  # five points, inner radius 0.45 r
        return [(cx + rr * math.cos(a), cy + rr * math.sin(a))
                for k in range(10) for rr, a in [((r, r * 0.45)[k % 2], -math.pi / 2 + k * math.pi / 5)]]  # fmt: skip
    if shape == "cross":  # a plus sign, arms a third of the width
        a, b = r, r / 3
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b),
                (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b),
                (cx - a, cy - b), (cx - b, cy - b)]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


def draw_shape(draw, shape: str, colour: tuple[int, int, int], cx: float, cy: float, r: float) -> None:
    """Draw a filled ``shape`` with a dark outline on a PIL ``ImageDraw``."""
    outline, width = (25, 25, 25), max(1, int(round(r / 8)))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=outline, width=width)
    else:
        draw.polygon(shape_points(shape, cx, cy, r), fill=colour, outline=outline, width=width)


@dataclass(frozen=True)
class Scene:
    """A background texture shown from ``start`` to ``end`` (seconds, end exclusive)."""

    start: int
    end: int
    kind: str  # flat, hstripes, vstripes, checker, gradient, blobs
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    period: int  # stripe / checker period in pixels, blob grid side
    seed: int  # for the blobs texture


def muted_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A desaturated mid-tone, so that the saturated object colours stand out on it."""
    grey = int(rng.integers(70, 185))
    tint = rng.integers(-28, 29, 3)
    return tuple(int(v) for v in np.clip(grey + tint, 0, 255))


def background(scene: Scene, size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8 texture of ``scene`` (static: a scene only changes where objects move)."""
    a, b = (np.array(c, dtype=np.float32) for c in scene.colours)
    yy, xx = np.mgrid[0:size, 0:size]
    if scene.kind == "flat":
        mix = np.zeros((size, size), np.float32)
    elif scene.kind == "hstripes":
        mix = ((yy // scene.period) % 2).astype(np.float32)
    elif scene.kind == "vstripes":
        mix = ((xx // scene.period) % 2).astype(np.float32)
    elif scene.kind == "checker":
        mix = (((xx // scene.period) + (yy // scene.period)) % 2).astype(np.float32)
    elif scene.kind == "gradient":
        mix = (xx + yy) / (2 * size - 2.0)
    else:  # blobs: a coarse random grid, blown up to blocks
        grid = np.random.default_rng(scene.seed).random((scene.period, scene.period)).astype(np.float32)
        idx = np.arange(size) * scene.period // size
        mix = grid[idx][:, idx]
    out = a[None, None] * (1 - mix[..., None]) + b[None, None] * mix[..., None]
    return out.round().astype(np.uint8)


# ------------------------------------------------------------------ writing
def write_video(path: str | Path, frames: list[np.ndarray], *, fps: int = 1, crf: int = 18) -> None:
    """Encode ``[H, W, 3]`` uint8 frames as H.264 (PyAV), atomically (a temporary file, then rename)."""
    # lazy: av only on this path (the module imports without it)
    import av

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"crf": str(crf), "preset": "veryfast"}
        for f in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        out.mux(s.encode())
    os.replace(tmp, path)


# ------------------------------------------------------------------ what happens in a video
@dataclass(frozen=True)
class Appearance:
    """Cast member ``member`` on screen from ``start`` to ``end`` (timeline seconds, end exclusive).

    A static appearance sits in cell ``cell`` (row, column) of a 3x3 grid, offset by
    ``jitter`` pixels; the mover travels along row ``cell[0]`` (left/right) or column
    ``cell[1]`` (up/down) from one side to the other.
    """

    member: int
    start: int
    end: int
    cell: tuple[int, int] = (1, 1)
    jitter: tuple[float, float] = (0.0, 0.0)


@dataclass
class Plan:
    """Everything a video shows, on a timeline of ``seconds`` seconds; the word frames are inserted
    before timeline second ``word_at`` (so they interrupt no appearance)."""

    seconds: int
    scenes: list[Scene]
    shapes: list[str]
    colours: list[str]
    counts: list[int]
    mover: int
    direction: str
    radius: float
    appearances: list[Appearance] = field(default_factory=list)
    word: str = ""
    word_at: int = 0
    word_frames: int = 1
    word_style: WordStyle | None = None  # None: the plain needle (:func:`word_frame`)
    whole: bool = False  # objects are kept whole inside the frame (drawn larger than the cell grid allows)

    @property
    def length(self) -> int:
        """Frames (= seconds at 1 fps) in the video, word frames included."""
        return self.seconds + self.word_frames

    def frames_of(self, apps: list[Appearance]) -> list[int]:
        """Video frame indices showing ``apps`` (timeline seconds shifted past the word frames)."""
        shift = lambda t: t + self.word_frames if t >= self.word_at else t  # noqa: E731
        return sorted({shift(t) for a in apps for t in range(a.start, a.end)})


def plan_video(rng: np.random.Generator, seconds: int, size: int, cast: int = CAST, scale: float = 1.0) -> Plan:
    """Draw a video's scenes, cast of ``cast`` objects (``scale`` times the usual size), appearances and needle."""
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:cast]]
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:cast]]
    counts = [int(c) + 1 for c in rng.permutation(MAX_COUNT)[:cast]]
    mover = int(rng.integers(cast))
    plan = Plan(seconds, plan_scenes(rng, seconds), shapes, colours, counts, mover,
                DIRECTIONS[int(rng.integers(4))], size * float(rng.uniform(0.13, 0.16)) * scale, whole=scale > 1)  # fmt: skip
    times = appearance_times(rng, seconds, counts, mover)
    plan.appearances = place_appearances(rng, times, plan, size)
    plan.word = WORDS[int(rng.integers(len(WORDS)))]
    free = [t for t in range(seconds + 1) if not any(a.start < t < a.end for a in plan.appearances)]
    plan.word_at = free[int(rng.integers(len(free)))]
    plan.word_frames = int(rng.integers(1, 3))
    return plan


def plan_scenes(rng: np.random.Generator, seconds: int) -> list[Scene]:
    """Consecutive scenes of 6-30 s, each with its own texture."""
    kinds = ("flat", "hstripes", "vstripes", "checker", "gradient", "blobs")
    scenes, t = [], 0
    while t < seconds:
        end = min(seconds, t + int(rng.integers(6, 31)))
        kind = kinds[int(rng.integers(len(kinds)))]
        period = int(rng.integers(3, 9)) if kind == "blobs" else int(rng.integers(8, 25))
        scenes.append(Scene(t, end, kind, (muted_colour(rng), muted_colour(rng)), period,
                            int(rng.integers(2**31))))  # fmt: skip
        t = end
    return scenes


def appearance_times(rng: np.random.Generator, seconds: int, counts: list[int], mover: int) -> list[tuple]:
    """``(member, start, end)`` for every appearance; a member's k appearances fall one in each k-th of
    the timeline with at least a second between them, and one member is strictly the first on screen."""
    for _ in range(1000):
        out = []
        for m, k in enumerate(counts):
            seg = seconds / k
            lo, hi = (3, 5) if m == mover else (1, 3)
            for j in range(k):
                d = min(int(rng.integers(lo, hi + 1)), int(seg) - 1)  # leaves a 1 s gap to the next
                start = math.floor(j * seg) + int(rng.integers(0, int(seg) - d))
                out.append((m, start, start + d))
        firsts = sorted(min(s for mm, s, _ in out if mm == m) for m in range(len(counts)))
        if len(firsts) < 2 or firsts[0] < firsts[1]:
            return out
    raise RuntimeError("could not place the appearances")  # unreachable for seconds >= MIN_SECONDS


def place_appearances(rng: np.random.Generator, times: list[tuple], plan: Plan, size: int) -> list[Appearance]:
    """Give every appearance a place: the mover a lane of its own, the others free cells of the 3x3 grid."""
    horizontal = plan.direction in ("left", "right")
    placed: list[Appearance] = []
    for m, s, e in sorted(times, key=lambda x: (x[0] != plan.mover, x[1], x[0])):
        busy = set()
        for a in placed:
            if a.start < e and s < a.end:
                if a.member == plan.mover:
                    busy |= {(a.cell[0], c) for c in range(3)} if horizontal else {(r, a.cell[1]) for r in range(3)}
                else:
                    busy.add(a.cell)
        if m == plan.mover:
            lane = int(rng.integers(3))
            placed.append(Appearance(m, s, e, (lane, 1) if horizontal else (1, lane)))
            continue
        free = [(r, c) for r in range(3) for c in range(3) if (r, c) not in busy]
        cell = free[int(rng.integers(len(free)))]
        jit = tuple(float(v) for v in rng.uniform(-size / 48, size / 48, 2))
        placed.append(Appearance(m, s, e, cell, jit))
    return sorted(placed, key=lambda a: (a.start, a.member))


# ------------------------------------------------------------------ rendering
def appearance_centre(plan: Plan, a: Appearance, t: int, size: int) -> tuple[float, float]:
    """``(x, y)`` pixel centre of appearance ``a`` at timeline second ``t`` (the whole object in the frame)."""
    third = size / 3
    inside = (lambda v: min(max(v, plan.radius), size - plan.radius)) if plan.whole else (lambda v: v)  # noqa: E731
    if a.member != plan.mover:
        return inside((a.cell[1] + 0.5) * third + a.jitter[0]), inside((a.cell[0] + 0.5) * third + a.jitter[1])
    frac = (t - a.start) / max(1, a.end - a.start - 1)
    if plan.direction in ("left", "up"):
        frac = 1 - frac
    along = inside(size / 6 + frac * (size * 2 / 3))
    if plan.direction in ("left", "right"):
        return along, inside((a.cell[0] + 0.5) * third)
    return inside((a.cell[1] + 0.5) * third), along


def render(plan: Plan, size: int) -> list[np.ndarray]:
    """The video's frames, ``[size, size, 3]`` uint8 each, word frames included."""
    # lazy: PIL only on this path (the module imports without it)
    from PIL import Image, ImageDraw

    if plan.word_style is None:
        needle = word_frame(plan.word, size, size, WORD_SCALE)
    else:
        needle = render_word(plan.word, size, size, plan.word_style)[0]
    frames = []
    backgrounds = [background(sc, size) for sc in plan.scenes]
    scene_at = {t: k for k, sc in enumerate(plan.scenes) for t in range(sc.start, sc.end)}
    for t in range(plan.seconds):
        if t == plan.word_at:
            frames += [needle] * plan.word_frames
        img = Image.fromarray(backgrounds[scene_at[t]])
        draw = ImageDraw.Draw(img)
        on = [a for a in plan.appearances if a.start <= t < a.end]
        for a in sorted(on, key=lambda a: a.member == plan.mover):  # the mover on top
            x, y = appearance_centre(plan, a, t, size)
            draw_shape(draw, plan.shapes[a.member], COLOURS[plan.colours[a.member]], x, y, plan.radius)
        frames.append(np.asarray(img))
    if plan.word_at == plan.seconds:
        frames += [needle] * plan.word_frames
    return frames


# ------------------------------------------------------------------ questions
@dataclass(frozen=True)
class Question:
    """One multiple-choice question; ``answer`` indexes ``options``; ``evidence`` lists the frames that show it."""

    family: str
    text: str
    options: list[str]
    answer: int
    evidence: list[int]


OPTION_MODES = ("all", "four")


def _choices(rng: np.random.Generator, mode: str, universe, cast: list[str], correct: str) -> tuple[list[str], int]:
    """The options and the answer's index.

    ``all``: every value the family can take, in its fixed order (the letter names the value, so a
    model needs no in-context matching of option texts); ``four``: the cast's values (or the word
    and three others), shuffled.
    """
    if mode == "all":
        opts = list(universe)
        return opts, opts.index(correct)
    if len(cast) < 4:  # the word family, or a cast under four: fill up with other values
        others = [w for w in universe if w not in cast and w != correct]
        cast = list(dict.fromkeys([correct, *cast]))
        cast += [others[i] for i in rng.permutation(len(others))[: 4 - len(cast)]]
    order = [cast[i] for i in rng.permutation(len(cast))]
    return order, order.index(correct)


def _of(plan: Plan, m: int) -> list[Appearance]:
    return [a for a in plan.appearances if a.member == m]


def ask(rng: np.random.Generator, plan: Plan, family: str, options: str = "all") -> Question:
    """A question of ``family`` about ``plan``, its options chosen by ``options`` (:data:`OPTION_MODES`)."""
    m = int(rng.integers(len(plan.shapes)))
    shape, colour = plan.shapes[m], plan.colours[m]
    solo = len(plan.shapes) == 1  # one object: "the object", so no question names another's answer
    name = "object" if solo else shape
    if family == "word":
        opts, ans = _choices(rng, options, WORDS, [], plan.word)
        ev = list(range(plan.word_at, plan.word_at + plan.word_frames))
        return Question(family, WORD_QUESTION, opts, ans, ev)
    if family == "colour":
        opts, ans = _choices(rng, options, COLOURS, list(plan.colours), colour)
        return Question(family, f"What colour was the {name}?", opts, ans, plan.frames_of(_of(plan, m)))
    if family == "shape":
        opts, ans = _choices(rng, options, SHAPES, list(plan.shapes), shape)
        q = "What shape was the object?" if solo else f"What shape was the {colour} object?"
        return Question(family, q, opts, ans, plan.frames_of(_of(plan, m)))
    if family == "order":
        firsts = [min(_of(plan, k), key=lambda a: a.start) for k in range(len(plan.shapes))]
        first = min(firsts, key=lambda a: a.start).member
        opts, ans = _choices(rng, options, SHAPES, list(plan.shapes), plan.shapes[first])
        return Question(family, "Which of these shapes appeared first?", opts, ans, plan.frames_of(firsts))
    if family == "count":
        opts = [str(k) for k in range(1, MAX_COUNT + 1)]
        q = f"How many times did the {name} appear?"
        return Question(family, q, opts, plan.counts[m] - 1, plan.frames_of(_of(plan, m)))
    if family == "motion":
        q = f"In which direction did the {'object' if solo else plan.shapes[plan.mover]} move?"
        ev = plan.frames_of(_of(plan, plan.mover))
        return Question(family, q, list(DIRECTIONS), DIRECTIONS.index(plan.direction), ev)
    raise ValueError(f"unknown question family {family!r}")


def describe(plan: Plan) -> str:
    """The video in words, in order of first appearance: the word needle, then each cast member's
    colour and shape, how many times it appeared and, for the mover, its direction.

    A dense target for teaching a model what the videos hold (``caption`` in ``data.jsonl``);
    every question family's answer can be read off it.
    """
    word_time = plan.word_at - 0.5  # the word frames come before timeline second word_at
    events = [(word_time, f"The word {plan.word}.")]
    for m in range(len(plan.shapes)):
        first = min(a.start for a in _of(plan, m))
        k = plan.counts[m]
        moving = f", moving {plan.direction}" if m == plan.mover else ""
        article = "An" if plan.colours[m][0] in "aeiou" else "A"
        text = f"{article} {plan.colours[m]} {plan.shapes[m]}, {k} {'time' if k == 1 else 'times'}{moving}."
        events.append((first, text))
    return " ".join(text for _, text in sorted(events, key=lambda e: e[0]))


def mc_prompt(question: str, options: list[str]) -> str:
    """The question as the model sees it (after the video): question, lettered options, instruction."""
    letters = "".join(f"({chr(65 + i)}) {o}\n" for i, o in enumerate(options))
    return f"Question: {question}\nOptions:\n{letters}{INSTRUCTION}"


def record(video_id: str, video: str, plan: Plan, q: Question) -> dict:
    """One line of ``data.jsonl``: LLaVA video SFT fields plus what ``longvu eval synthetic`` scores."""
    letter = chr(65 + q.answer)
    return {
        "id": f"{video_id}-{q.family}",
        "video": video,
        "conversations": [
            {"from": "human", "value": "<image>\n" + mc_prompt(q.text, q.options)},
            {"from": "gpt", "value": letter},
        ],
        "family": q.family,
        "question": q.text,
        "options": q.options,
        "answer": letter,
        "answer_text": q.options[q.answer],
        "length": plan.length,
        "evidence": q.evidence,
        "caption": describe(plan),
    }


# ------------------------------------------------------------------ a dataset
@dataclass(frozen=True)
class SynthSettings:
    """What ``longvu synth`` makes; every video and question is a function of these and its index."""

    seed: int
    minutes: tuple[float, float] = (0.2, 4.0)  # video lengths, drawn log-uniformly (at least MIN_SECONDS)
    size: int = 128  # frame side in pixels
    families: tuple[str, ...] = FAMILIES
    questions_per_video: int = 1
    options: str = "all"  # OPTION_MODES: every value in a fixed order, or four shuffled
    cast: int = CAST  # objects per video, 1 to 4
    render: str = "default"  # the word needle's style set (longvu.train.render.RENDERS)
    object_scale: float | None = None  # objects' size against the usual; None: LONE_SCALE with cast 1, else 1

    def __post_init__(self) -> None:
        lo, hi = self.minutes
        if not 0 < lo <= hi <= 600:
            raise LongVUError(f"--minutes needs 0 < MIN <= MAX <= 600, got {lo} {hi}")
        if self.seed < 0:
            raise LongVUError(f"--seed must be >= 0, got {self.seed}")
        if not 64 <= self.size <= 1024:
            raise LongVUError(f"--size must be between 64 and 1024 pixels, got {self.size}")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families or len(set(self.families)) != len(self.families):
            raise LongVUError(f"--families takes distinct names from {', '.join(FAMILIES)}, got {list(self.families)}")
        if not 1 <= self.cast <= MAX_COUNT:
            raise LongVUError(f"--cast must be between 1 and {MAX_COUNT}, got {self.cast}")
        if self.object_scale is not None and not 0.5 <= self.object_scale <= 2.0:
            raise LongVUError(f"--object-scale must be between 0.5 and 2, got {self.object_scale}")
        if self.render not in RENDERS:
            raise LongVUError(f"--render must be one of {', '.join(RENDERS)}, got {self.render!r}")
        if self.options not in OPTION_MODES:
            raise LongVUError(f"--options must be one of {', '.join(OPTION_MODES)}, got {self.options!r}")
        if not 1 <= self.questions_per_video <= len(self.families):
            raise LongVUError(f"--questions-per-video must be between 1 and {len(self.families)} (the families asked)")

    def manifest(self) -> dict:
        return {"format": FORMAT, "seed": self.seed, "minutes": list(self.minutes), "size": self.size, "fps": 1,
                "families": list(self.families), "questions_per_video": self.questions_per_video,
                "options": self.options, "cast": self.cast, "render": self.render, "object_scale": self.scale}  # fmt: skip

    @property
    def scale(self) -> float:
        """The objects' size against the usual (``object_scale``, or its default for the cast)."""
        if self.object_scale is not None:
            return self.object_scale
        return LONE_SCALE if self.cast == 1 else 1.0


def video_seconds(rng: np.random.Generator, minutes: tuple[float, float]) -> int:
    """A timeline length, log-uniform in ``minutes`` (so short and long videos are equally common per octave)."""
    lo, hi = math.log(minutes[0] * 60), math.log(minutes[1] * 60)
    return max(MIN_SECONDS, int(round(math.exp(rng.uniform(lo, hi)))))


def make_video(settings: SynthSettings, index: int) -> tuple[Plan, list[Question]]:
    """Video ``index``: its plan and its questions (families taken in turn over the dataset)."""
    rng = np.random.default_rng([settings.seed, index])
    plan = plan_video(rng, video_seconds(rng, settings.minutes), settings.size, settings.cast, settings.scale)
    if settings.render != "plain":  # a stream of its own: the plan is the same whatever the render
        plan.word_style = draw_style(np.random.default_rng([settings.seed, index, 1]), settings.render)
    fams = settings.families
    asked = [fams[(index * settings.questions_per_video + j) % len(fams)] for j in range(settings.questions_per_video)]
    return plan, [ask(rng, plan, f, settings.options) for f in asked]


def generate(
    out_dir: str | Path, settings: SynthSettings, n: int, *, progress: Callable[[int, int], None] | None = None
) -> Path:
    """Write ``n`` videos and ``data.jsonl`` under ``out_dir``; returns the JSONL's path.

    Videos already there from an earlier run with the same settings are kept (each is
    written to a temporary name and renamed, so one that exists is complete).
    """
    if n < 1:
        raise LongVUError(f"--n must be at least 1, got {n}")
    out = Path(out_dir)
    check_manifest(out, settings)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        plan, questions = make_video(settings, i)
        vid = f"s{settings.seed}_{i:06d}"
        rel = f"videos/{vid}.mp4"
        if not (out / rel).exists():
            write_video(out / rel, render(plan, settings.size))
        lines += [json.dumps(record(vid, rel, plan, q)) for q in questions]
        if progress is not None:
            progress(i + 1, n)
    _write_atomic(out / "synth.json", json.dumps({**settings.manifest(), "n": n}, indent=1) + "\n")
    data = out / "data.jsonl"
    _write_atomic(data, "".join(line + "\n" for line in lines))
    return data


def check_manifest(out: Path, settings: SynthSettings) -> None:
    """Refuse to mix datasets: ``out`` must be new, empty, or made with the same settings."""
    path = out / "synth.json"
    if out.exists() and not out.is_dir():
        raise LongVUError(f"--out {out}: exists and is not a folder")
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if not isinstance(old, dict) or {k: v for k, v in old.items() if k != "n"} != settings.manifest():
            raise LongVUError(f"--out {out}: holds a dataset made with other settings (synth.json); use a new folder")
    elif out.is_dir() and any(out.iterdir()):
        raise LongVUError(f"--out {out}: not empty and not a longvu synth folder")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
