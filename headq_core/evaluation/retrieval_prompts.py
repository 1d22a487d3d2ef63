"""Seeded needle-in-a-haystack prompts, built as token ids, and the exact-match scorer.

A prompt of ``length`` tokens is ``head + haystack[:cut] + needle + haystack[cut:] + tail``: ``head``
the template's start (BOS or the chat template up to the user's text) and an instruction; the
haystack a seeded stretch of real text; the needle "The secret number of <name> is <7 digits>.";
``tail`` the question, the end of the chat template (when used) and the start of the answer ("The
secret number of <name> is"). ``cut = round(depth / 100 * haystack tokens)``, so the needle starts
exactly at its depth of the haystack and the prompt has exactly ``length`` tokens. The same seed,
length, depth and sample give the same prompt.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Literal

from headq_spec.retrieval import NUMBER_DIGITS

NAMES = ("Alice", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiroshi", "Ines", "Jonas",
         "Kwame", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tamara")
INSTRUCTION = "Read the text below. A secret number is hidden in it; remember it.\n\n"
QUESTION = "\n\nQuestion: What is the secret number of {name}?"
ANSWER_START = "The secret number of {name} is"
_MARK = "\x1fHAYSTACK\x1f"  # where the chat template's user text is split
Template = Literal["chat", "plain"]


@dataclass(frozen=True)
class Prompt:
    """One prompt: ``ids`` [length] token ids, the needle at ``ids[needle_start : needle_start +
    needle_tokens]``, the answer ``number`` (7 digits) of ``name``."""

    index: int
    length: int
    depth: float
    sample: int
    ids: list[int]
    needle_start: int
    needle_tokens: int
    name: str
    number: str

    def describe(self) -> dict[str, Any]:
        """The prompt's entry in the results document (everything but the ids)."""
        return {"index": self.index, "length": self.length, "depth": self.depth, "sample": self.sample,
                "needle_start": self.needle_start, "needle_tokens": self.needle_tokens, "name": self.name,
                "number": self.number}


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def choose_template(tokenizer: Any, template: str) -> Template:
    """``auto``: ``chat`` when the tokenizer has a chat template, else ``plain``; ``chat`` needs one."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        raise ValueError("retrieval.template: the tokenizer has no chat template (use 'plain' or 'auto')")
    if template not in ("auto", "chat", "plain"):
        raise ValueError(f"retrieval.template: must be 'auto', 'chat' or 'plain', got {template!r}")
    return "chat" if template == "chat" or (template == "auto" and has_chat) else "plain"


def frame(tokenizer: Any, template: Template, name: str) -> tuple[list[int], list[int]]:
    """(head ids, tail ids) around the haystack of a prompt about ``name``."""
    question, answer = QUESTION.format(name=name), ANSWER_START.format(name=name)
    if template == "chat":
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": INSTRUCTION + _MARK + question}], tokenize=False,
            add_generation_prompt=True)
        head, tail = rendered.split(_MARK)
        return encode(tokenizer, head), encode(tokenizer, tail + answer)
    start = list(tokenizer("", add_special_tokens=True)["input_ids"])  # BOS, if the tokenizer adds one
    return start + encode(tokenizer, INSTRUCTION), encode(tokenizer, question + "\nAnswer: " + answer)


def haystack_ids(tokenizer: Any, texts: list[str], max_tokens: int) -> list[int]:
    """The first ``max_tokens`` token ids of the documents ``texts`` joined by blank lines."""
    ids: list[int] = []
    for text in texts:
        ids += encode(tokenizer, text + "\n\n")
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


def build_prompt(tokenizer: Any, haystack: list[int], *, length: int, depth: float, sample: int = 0,
                 seed: int = 0, index: int = 0, template: Template = "plain", field: str = "retrieval.lengths"
                 ) -> Prompt:
    """The prompt of one grid cell (module docstring). ``ValueError`` naming ``field`` when ``length``
    leaves no room for haystack or the haystack is shorter than the prompt needs."""
    rng = random.Random(f"retrieval:{seed}:{length}:{depth!r}:{sample}")
    name = rng.choice(NAMES)
    head, tail = frame(tokenizer, template, name)
    for _ in range(100):  # a number the haystack stretch does not already hold
        number = str(rng.randrange(10 ** (NUMBER_DIGITS - 1), 10**NUMBER_DIGITS))
        needle = encode(tokenizer, f" The secret number of {name} is {number}.")
        room = length - len(head) - len(needle) - len(tail)
        if room < 1:
            raise ValueError(f"{field}: {length} tokens leave no room for haystack (the template, needle "
                             f"and question take {length - room})")
        if room > len(haystack):
            raise ValueError(f"{field}: {length} tokens need {room} haystack tokens; the dataset gives "
                             f"{len(haystack)} (raise dataset.max_tokens or use a longer text)")
        start = rng.randrange(len(haystack) - room + 1)
        filler = haystack[start : start + room]
        if number not in tokenizer.decode(filler):
            break
    cut = round(depth / 100.0 * room)
    ids = head + filler[:cut] + needle + filler[cut:] + tail
    return Prompt(index=index, length=length, depth=depth, sample=sample, ids=ids,
                  needle_start=len(head) + cut, needle_tokens=len(needle), name=name, number=number)


def answer_digits(text: str) -> str:
    """The digits of the first number in ``text``, separators between its digits (spaces, commas:
    "4 829 173", "4,829,173") ignored; "" if there is none."""
    found = re.search(r"\d(?:[\s,]*\d)*", text)
    return re.sub(r"\D", "", found.group(0)) if found else ""


def exact_match(text: str, number: str) -> bool:
    """Whether the answer's first digits (:func:`answer_digits`) are exactly ``number``."""
    return answer_digits(text) == number
