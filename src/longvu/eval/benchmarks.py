"""Benchmark loaders (published layouts) and the original evaluation scripts' settings.

Each loader returns :class:`Item` s: one multiple-choice question about one video,
with the prompt worded as the original script words it and the answer as a letter.
Each benchmark also has a :class:`Preset`: how the original script samples frames and
which thresholds it sets at run time.  ``--fps``/``--set`` override them.

Layouts (``DIR`` is ``--data``):

* ``videomme``: ``DIR/videomme/test-00000-of-00001.parquet`` (or ``DIR/test-...``),
  videos ``DIR/data/<youtube id>.mp4``, optional ``DIR/subtitle/<youtube id>.srt``.
* ``mlvu``: ``DIR/json/<n>_<task>.json``, videos ``DIR/video/<n>_<task>/<video>``.
* ``egoschema``: ``DIR/questions.json``, ``DIR/subset_answers.json``, videos
  ``DIR/good_clips_git/<q_uid>.mp4``.
* ``mvbench``: ``DIR/json/<task>.json``, videos ``DIR/video/<prefix>/<video>`` (one task
  reads JPEG frame folders).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import LongVUError
from ..model.video import evenly_spaced
from .answers import letters_for
from .items import Item
from .synthetic import load_synthetic

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass(frozen=True)
class Preset:
    """Frame sampling and run-time config of an original evaluation script.

    The defaults are the scripts' own; ``--sample-fps``/``--stride-to`` replace
    ``sample_fps``/``stride_to`` for every benchmark, with the same rule around them.
    ``max_frames`` (``--max-frames``) then keeps at most that many, evenly spread: the rule
    ``longvu ask --max-frames`` follows (:func:`longvu.model.video.evenly_spaced`).
    """

    name: str
    sample_fps: float  # frames per second; the step is round(fps / sample_fps)
    stride_to: int | None = None  # strided down to about this many (the scripts' rule; can leave up to 2x)
    overrides: tuple[tuple[str, object], ...] = ()
    max_new_tokens: int = 5
    round_fps: bool = True  # round the video's fps before use (eval_videomme/mlvu/egoschema.py); MVBench does not
    folder_fps: float = 3.0  # frame rate of the JPEG frame folders (MVBench's tvqa frames)
    max_frames: int | None = None  # then at most this many, evenly spread (as ``longvu ask --max-frames``)

    def __post_init__(self) -> None:
        if not self.sample_fps > 0:
            raise LongVUError(f"--sample-fps must be positive, got {self.sample_fps}")
        for flag, value in (("--stride-to", self.stride_to), ("--max-frames", self.max_frames)):
            if value is not None and value < 1:
                raise LongVUError(f"{flag} must be at least 1, got {value}")

    def step(self, fps: float) -> int:
        return max(1, round(fps / self.sample_fps))

    def frame_indices(self, total: int, avg_fps: float, bound: tuple[float, float] | None = None) -> list[int]:
        """Source frame indices out of ``total``, as the original script picks them.

        Unbounded: ``range(0, total, step)``.  Bounded (MVBench's start/end seconds):
        ``range(max(0, round(start * fps)), min(round(end * fps), total - 1), step)``.
        Where that range is empty the script crashes (``np.stack([])``); here the first
        frame of the bound (within the video) is used alone.
        """
        fps = round(avg_fps) if self.round_fps else avg_fps
        step = self.step(fps)
        if bound is None:
            return self.thin(list(range(0, total, step)))
        lo = max(0, round(bound[0] * fps))
        hi = min(round(bound[1] * fps), total - 1)
        return self.thin(list(range(lo, hi, step)) or [max(0, min(lo, total - 1))])

    def folder_indices(self, n_files: int, bound: tuple[float, float] | None) -> list[int]:
        """eval_mvbench.py's rule for JPEG frame folders (1-based ``%05d.jpg`` at ``folder_fps``).

        An unbounded folder uses the bound (-100000, 100000) s, as the script does, so
        its last frame (``n_files``) is never taken.
        """
        lo, hi = bound if bound else (-100000.0, 100000.0)
        start = max(1, round(lo * self.folder_fps))
        end = min(round(hi * self.folder_fps), n_files)
        return self.thin(list(range(start, end, self.step(self.folder_fps))) or [start])

    def thin(self, idx: list[int]) -> list[int]:
        """More than ``stride_to`` indices: every ``len // stride_to``-th (the scripts' rule, which can leave
        up to 2x as many); then at most ``max_frames``, evenly spread."""
        if self.stride_to and len(idx) > self.stride_to:
            idx = idx[:: len(idx) // self.stride_to]
        return evenly_spaced(idx, self.max_frames)


PRESETS = {
    "videomme": Preset("videomme", 0.5, None, (("drop_threshold", 0.65),)),
    "mlvu": Preset("mlvu", 0.5, 1000, (("dino_threshold", 0.82), ("drop_threshold", 0.77))),
    "egoschema": Preset("egoschema", 0.5, 1000, (("drop_threshold", 0.8),)),
    # eval_mvbench.py: step round(fps / 2) of the float fps, so 2 "frames per second"
    "mvbench": Preset("mvbench", 2.0, None, (("drop_threshold", 0.8),), round_fps=False),
    "synthetic": Preset("synthetic", 1.0),  # `longvu synth` videos: 1 fps, every frame
}


def _find_video(folder: Path, stem: str) -> Path:
    for ext in VIDEO_EXTS:
        p = folder / f"{stem}{ext}"
        if p.exists():
            return p
    return folder / f"{stem}.mp4"


def _mc_prompt(question: str, options: list[str], closing: str) -> str:
    lines = [f"Question: {question}", "Options:"]
    lines += [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(options)]
    return "\n".join(lines) + "\n" + closing


def load_videomme(data: Path, subtitles: bool = False) -> list[Item]:
    parquet = next((p for p in (data / "videomme" / "test-00000-of-00001.parquet",
                                data / "test-00000-of-00001.parquet") if p.exists()), None)  # fmt: skip
    if parquet is None:
        raise LongVUError(f"{data}: no videomme/test-00000-of-00001.parquet (the Video-MME layout)")
    # lazy: pyarrow comes with the eval extra
    import pyarrow.parquet as pq

    rows = pq.read_table(parquet).to_pylist()
    items = []
    for r in rows:
        yt = str(r.get("videoID") or str(r.get("url", "")).split("watch?v=")[-1])
        q = f"Question: {r['question']}\nOptions:\n" + "".join(f"{op}\n" for op in r["options"])
        q += "Respond with only the letter (A, B, C, or D) of the correct option.\n"
        extra = {"duration": r.get("duration"), "task_type": r.get("task_type"), "domain": r.get("domain")}
        srt = data / "subtitle" / f"{yt}.srt"
        if subtitles and srt.exists():
            extra["subtitle"] = str(srt)
        items.append(Item(str(r["question_id"]), "videomme", str(_find_video(data / "data", yt)), q,
                          letters_for(len(r["options"])), str(r["answer"]).strip(), str(r.get("duration")), extra))  # fmt: skip
    return items


MLVU_TASKS = {
    "count": "4_count", "ego": "3_ego", "needle": "2_needle", "order": "5_order", "plotQA": "1_plotQA",
    "anomaly_reco": "6_anomaly_reco", "topic_reasoning": "7_topic_reasoning",
}  # fmt: skip


def load_mlvu(data: Path) -> list[Item]:
    items = []
    found = False
    for task, stem in MLVU_TASKS.items():
        path = data / "json" / f"{stem}.json"
        if not path.exists():
            continue
        found = True
        for i, d in enumerate(json.loads(path.read_text())):
            cands = list(d["candidates"])
            prompt = _mc_prompt(
                d["question"], cands, "Respond with only the letter (A, B, C or D) of the correct option."
            )
            ans = chr(ord("A") + cands.index(d["answer"])) if d["answer"] in cands else None
            items.append(Item(f"{task}-{i}", "mlvu", str(data / "video" / stem / d["video"]), prompt.rstrip(),
                              letters_for(len(cands)), ans, task, {}))  # fmt: skip
    if not found:
        raise LongVUError(f"{data}: no json/<n>_<task>.json files (the MLVU layout)")
    return items


def load_egoschema(data: Path) -> list[Item]:
    qpath = data / "questions.json"
    if not qpath.exists():
        raise LongVUError(f"{data}: no questions.json (the EgoSchema layout)")
    answers_path = data / "subset_answers.json"
    answers = json.loads(answers_path.read_text()) if answers_path.exists() else {}
    items = []
    for d in json.loads(qpath.read_text()):
        opts = [d[f"option {i}"] for i in range(5)]
        prompt = _mc_prompt(
            d["question"], opts, "Respond with only the letter (A, B, C, D or E) of the correct option."
        )
        ans = answers.get(d["q_uid"])
        letter = chr(ord("A") + int(ans)) if ans is not None else None
        items.append(Item(d["q_uid"], "egoschema", str(_find_video(data / "good_clips_git", d["q_uid"])), prompt,
                          letters_for(5), letter, "subset" if ans is not None else "full", {}))  # fmt: skip
    return items


MVBENCH_TASKS = {
    "Action Sequence": ("action_sequence.json", "star/Charades_v1_480/", "video", True),
    "Action Prediction": ("action_prediction.json", "star/Charades_v1_480/", "video", True),
    "Action Antonym": ("action_antonym.json", "ssv2_video/", "video", False),
    "Fine-grained Action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos/", "video", False),
    "Unexpected Action": ("unexpected_action.json", "FunQA_test/test/", "video", False),
    "Object Existence": ("object_existence.json", "clevrer/video_validation/", "video", False),
    "Object Interaction": ("object_interaction.json", "star/Charades_v1_480/", "video", True),
    "Object Shuffle": ("object_shuffle.json", "perception/videos/", "video", False),
    "Moving Direction": ("moving_direction.json", "clevrer/video_validation/", "video", False),
    "Action Localization": ("action_localization.json", "sta/sta_video/", "video", True),
    "Scene Transition": ("scene_transition.json", "scene_qa/video/", "video", False),
    "Action Count": ("action_count.json", "perception/videos/", "video", False),
    "Moving Count": ("moving_count.json", "clevrer/video_validation/", "video", False),
    "Moving Attribute": ("moving_attribute.json", "clevrer/video_validation/", "video", False),
    "State Change": ("state_change.json", "perception/videos/", "video", False),
    "Fine-grained Pose": ("fine_grained_pose.json", "nturgbd/", "video", False),
    "Character Order": ("character_order.json", "perception/videos/", "video", False),
    "Egocentric Navigation": ("egocentric_navigation.json", "vlnqa/", "video", False),
    "Episodic Reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq/", "frame", True),
    "Counterfactual Inference": ("counterfactual_inference.json", "clevrer/video_validation/", "video", False),
}


def load_mvbench(data: Path) -> list[Item]:
    items = []
    for task, (jname, prefix, kind, bounded) in MVBENCH_TASKS.items():
        path = data / "json" / jname
        if not path.exists():
            continue
        for i, d in enumerate(json.loads(path.read_text())):
            cands = list(d["candidates"])
            prompt = "Question: {}\nOptions:\n{}Answer with the option's letter from the given choices directly and only give the best option.".format(
                d["question"], "".join(f"({chr(ord('A') + k)}) {c}\n" for k, c in enumerate(cands))
            )
            ans = chr(ord("A") + cands.index(d["answer"])) if d["answer"] in cands else None
            extra = {"kind": kind}
            if bounded:
                extra["bound"] = [float(d["start"]), float(d["end"])]
            items.append(Item(f"{task}-{i}", "mvbench", str(data / "video" / prefix / d["video"]), prompt,
                              letters_for(len(cands)), ans, task, extra))  # fmt: skip
    if not items:
        raise LongVUError(f"{data}: no json/<task>.json files (the MVBench layout)")
    return items


LOADERS = {"videomme": load_videomme, "mlvu": load_mlvu, "egoschema": load_egoschema, "mvbench": load_mvbench,
           "synthetic": load_synthetic}  # fmt: skip


def load_items(benchmark: str, data: str | Path, **kw) -> list[Item]:
    if benchmark not in LOADERS:
        raise LongVUError(f"unknown benchmark {benchmark!r}; known: {', '.join(LOADERS)}")
    data = Path(data)
    if not data.is_dir():
        raise LongVUError(f"{data}: no such data folder")
    return LOADERS[benchmark](data, **kw) if benchmark == "videomme" else LOADERS[benchmark](data)
