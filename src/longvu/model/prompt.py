"""Chat prompts and tokenisation with the video placeholder.

The reference builds the prompt as text with an ``<image>`` marker, tokenises the
pieces around the marker *separately* and joins them with the placeholder id -200
(``tokenizer_image_token``).  Qwen uses a fixed ChatML template; Llama-3 uses the
tokenizer's own chat template, and the reference then drops the first id because
the template writes ``<|begin_of_text|>`` and the tokenizer adds another.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import PromptError

IMAGE_TOKEN_INDEX = -200
IMAGE_MARKER = "<image>"
SYSTEM_PROMPT = "You are a helpful assistant."
DESCRIBE_PROMPT = "Describe this video in detail."  # what `longvu describe` and `LongVU.describe` ask


@dataclass
class Conversation:
    """A chat about one video, or about none.  The video is attached to the first user turn.

    Attributes:
        template: "qwen" (ChatML) or "llama3" (the tokenizer's chat template).
        turns: ``(role, text)`` pairs, role "user" or "assistant".
        video: the prompt holds the video placeholder; False for a text-only chat.
    """

    template: str
    system: str = SYSTEM_PROMPT
    turns: list[tuple[str, str]] = field(default_factory=list)
    video: bool = True

    @property
    def stop_str(self) -> str:
        return "<|im_end|>" if self.template == "qwen" else "<|eot_id|>"

    def copy(self) -> Conversation:
        return replace(self, turns=list(self.turns))

    def newest(self) -> Conversation:
        """The same conversation with only its last user turn."""
        users = [t for t in self.turns if t[0] == "user"]
        return replace(self, turns=users[-1:])

    def without_oldest_exchange(self) -> Conversation:
        """Drop the first user turn and everything up to the next user turn (its answers)."""
        rest = self.turns[1:]
        while rest and rest[0][0] != "user":
            rest = rest[1:]
        if not rest:
            raise ValueError("the newest question cannot be dropped")
        return replace(self, turns=rest)

    def add_user(self, text: str) -> None:
        self.turns.append(("user", text))

    def add_assistant(self, text: str) -> None:
        self.turns.append(("assistant", text))

    def _messages(self) -> list[tuple[str, str]]:
        out = []
        for i, (role, text) in enumerate(self.turns):
            if i == 0 and role == "user" and self.video:
                text = f"{IMAGE_MARKER}\n{text}"
            out.append((role, text))
        return out

    def render(self, tokenizer=None) -> str:
        """The prompt text, ending with the assistant header (generation prompt)."""
        if not self.turns or self.turns[-1][0] != "user":
            raise ValueError("a prompt must end with a user turn")
        msgs = self._messages()
        if self.template == "qwen":
            text = f"<|im_start|>system\n{self.system}<|im_end|>\n"
            for role, content in msgs:
                text += f"<|im_start|>{role}\n{content}<|im_end|>\n"
            return text + "<|im_start|>assistant\n"
        if tokenizer is None:
            raise ValueError("the llama3 template needs the tokenizer's chat template")
        chat = [{"role": "system", "content": self.system}] + [{"role": r, "content": c} for r, c in msgs]
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def reserved_markers(tokenizer) -> list[str]:
    """Strings a message may not contain: the video marker and the tokenizer's special tokens.

    A user who writes ``<image>`` would add a second video placeholder, and one who writes
    ``<|im_start|>`` would open a turn of the template's own: both are refused, not escaped,
    so no message means something other than its text.
    """
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials.update(t.content for t in added.values() if getattr(t, "special", False))
    return [IMAGE_MARKER, *sorted(s for s in specials if s)]


def check_message(text: str, markers: list[str], where: str) -> None:
    """Raise :class:`PromptError` if ``text`` holds a reserved marker (see :func:`reserved_markers`)."""

    if "\x00" in text:
        raise PromptError(f"{where} contains a NUL character")
    for m in markers:
        if m in text:
            raise PromptError(f"{where} contains {m!r}, which is reserved by the chat template")


def tokenize_with_image(prompt: str, tokenizer, *, drop_first: bool = False) -> list[int]:
    """Token ids of ``prompt`` with ``IMAGE_TOKEN_INDEX`` at each ``<image>`` marker.

    Each text piece is tokenised on its own; a BOS the tokenizer puts at the start of
    the pieces is kept once at the very start (the reference's ``tokenizer_image_token``).
    ``drop_first`` removes the first id afterwards (the reference's Llama "remove bos").
    """
    # verbose=False: no "longer than the maximum" note; the context policy checks the length (context.py)
    chunks = [tokenizer(piece, verbose=False).input_ids for piece in prompt.split(IMAGE_MARKER)]
    bos = getattr(tokenizer, "bos_token_id", None)
    ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and bos is not None and chunks[0][0] == bos:
        offset = 1
        ids.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    if drop_first:
        ids = ids[1:]
    return ids
