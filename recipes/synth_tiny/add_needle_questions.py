"""Stage 2b of the longvu-synth-tiny recipe: ask each word question a second time, V-NIAH's way.

    python recipes/synth_tiny/add_needle_questions.py DATA_DIR

For every ``word`` line of a ``longvu synth`` folder's ``data.jsonl``, adds a line with the same
video, V-NIAH's free-form question (:data:`longvu.eval.vniah.QUESTION`) and the word itself as the
answer, so that the trained model can be scored by ``longvu eval vniah`` (which asks that question
about other videos: its own haystacks and needle sizes).  A folder already extended is left as it is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from longvu.eval.vniah import QUESTION
from longvu.files import atomic_write_text


def needle_line(row: dict) -> dict:
    return {
        "id": f"{row['id']}-free", "video": row["video"],
        "conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"},
                          {"from": "gpt", "value": row["answer_text"]}],
    }  # fmt: skip


def main(folder: Path) -> None:
    path = folder / "data.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if any(r["id"].endswith("-free") for r in rows):
        return
    added = [needle_line(r) for r in rows if r.get("family") == "word"]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows + added))
    print(f"{path}: {len(added)} free-form word questions added ({len(rows) + len(added)} lines)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
