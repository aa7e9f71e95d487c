"""Is the answer in the visual tokens?  A linear probe on a checkpoint's SVA tokens, before any decoder.

    python recipes/synth_tiny_v2/probe_tokens.py MODEL DATA_DIR [--videos 800] [--train 600]

Encodes the first ``--videos`` videos of a ``longvu synth`` folder (``data_single.jsonl`` when
``multi_turn.py`` rewrote it, else ``data.jsonl``) through the pipeline (frame reduction and all), and
fits a linear classifier (softmax regression, features standardised) on the first ``--train`` of them
for each question family, from two inputs: the 9 tokens of the frames that show the answer (the
question's ``evidence``), and the whole video's tokens pooled (mean and max over frames).  Prints the
accuracy on the other videos, or with ``--test DIR ...`` on those folders' videos (another seed or
``--render``).  It tells a decoder that cannot read an answer from one that is given none.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from longvu import LongVU


def encode(model: str, folder: Path, videos: int) -> list[dict]:
    lv = LongVU.from_pretrained(model, device="cpu", dtype="float32", cache=False)
    name = "data_single.jsonl" if (folder / "data_single.jsonl").exists() else "data.jsonl"
    by_video: dict[str, dict] = {}
    for line in (folder / name).read_text().splitlines():
        row = json.loads(line)
        if "family" in row:
            by_video.setdefault(row["video"], {})[row["family"]] = row
    out = []
    for video, rows in list(by_video.items())[:videos]:
        f = lv.features(str(folder / video))
        stored = {int(f.source_indices[p]): k for k, p in enumerate(f.stored)}  # video frame -> row of sampled
        out.append({"sampled": f.sampled.float(), "stored": stored,
                    "answer": {fam: r["options"].index(r["answer_text"]) for fam, r in rows.items()},
                    "evidence": {fam: r["evidence"] for fam, r in rows.items()}})  # fmt: skip
    return out


def inputs(item: dict, family: str, kind: str) -> torch.Tensor:
    s = item["sampled"]
    if kind == "pooled":
        return torch.cat([s.mean(0).flatten(), s.amax(0).flatten()])
    rows = [item["stored"][i] for i in item["evidence"][family] if i in item["stored"]]
    return s[rows].mean(0).flatten() if rows else torch.zeros(s[0].numel())


def probe(items: list[dict], family: str, kind: str, n_train: int) -> float:
    x = torch.stack([inputs(it, family, kind) for it in items])
    y = torch.tensor([it["answer"][family] for it in items])
    return float((linear_probe(x, y, n_train) == y[n_train:]).float().mean())


def linear_probe(x: torch.Tensor, y: torch.Tensor, n_train: int) -> torch.Tensor:
    """Softmax regression on standardised ``x[:n_train]`` -> ``y[:n_train]``; the classes it predicts for
    the rest of ``x``."""
    x = (x - x[:n_train].mean(0)) / (x[:n_train].std(0) + 1e-5)
    torch.manual_seed(0)
    w = torch.zeros(x.shape[1], int(y.max()) + 1, requires_grad=True)
    b = torch.zeros(int(y.max()) + 1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(x[:n_train] @ w + b, y[:n_train]) + 1e-3 * w.pow(2).sum()
        opt.zero_grad(), loss.backward(), opt.step()
    return (x[n_train:] @ w + b).argmax(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("data", type=Path)
    ap.add_argument("--videos", type=int, default=800)
    ap.add_argument("--train", type=int, default=600, help="videos the probe fits on; the rest score it")
    ap.add_argument(
        "--test", type=Path, nargs="+", help="score on these synth folders' videos instead (e.g. another --render)"
    )
    a = ap.parse_args()
    items = encode(a.model, a.data, a.videos)
    if a.test:  # fit on the first --train videos of DATA_DIR, score on every video of the --test folders
        test = [it for folder in a.test for it in encode(a.model, folder, a.videos)]
        items = items[: a.train] + test
    scored = items[a.train :]
    families = sorted(
        {fam for it in items[: a.train] for fam in it["answer"]}
        & set.intersection(*(set(it["answer"]) for it in scored))
    )
    held = len(scored)
    for family in families:
        scores = {kind: probe(items, family, kind, a.train) for kind in ("evidence", "pooled")}
        print(f"{family}: " + ", ".join(f"{k} {v:.1%}" for k, v in scores.items()) + f" (n={held} held-out videos)")


if __name__ == "__main__":
    main()
