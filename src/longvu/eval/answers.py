"""Multiple-choice answer parsing.

The original scripts delete the word "Answer" and take the first regex match of a capital
option letter, anywhere, even inside a word ("Based on ..." reads as B); when nothing
matches, ``pred_answer[0]`` raises and the whole run stops.  Here an answer is parsed to a
letter only when it names exactly one of the offered letters; otherwise it is ``None``:
counted wrong and listed in the summary, and the run goes on.  On the short answers that
greedy decoding of 5 tokens gives ("B", "B.", "(B)"), both read the same letter.
"""

from __future__ import annotations

import re

_PATTERNS = [
    r"^\s*\(?([A-Z])\)?\s*$",  # "B", "(B)"
    r"^\s*\(?([A-Z])[\).:,]",  # "B.", "B)", "(B) text", "B: text"
    r"(?i:answer|option)\s*(?i:is)?\s*:?\s*\(?([A-Z])(?![a-z])",  # "The answer is B", "Answer: (B)"
]


def parse_choice(text: str, letters: list[str]) -> str | None:
    """The option letter ``text`` answers with, or None if it names none or several."""
    t = text.strip()
    if not t:
        return None
    for pat in _PATTERNS:
        m = re.search(pat, t)
        if m and m.group(1).upper() in letters:
            return m.group(1).upper()
    # Fall back to capital letters standing alone: accept only if exactly one offered letter
    # appears ("A or B" is ambiguous).  A sentence opening with the article "A" still reads
    # as option A here, as in the original scripts.
    found = {x for x in re.findall(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", t) if x in letters}
    return found.pop() if len(found) == 1 else None


def letters_for(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]
