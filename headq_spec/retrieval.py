"""The retrieval (needle-in-a-haystack) job: its options in a job spec and its block in a results
document (docs/contracts.md "Retrieval"). Pure pydantic.

A retrieval job builds seeded prompts of ``lengths`` tokens with the needle "The secret number of
<name> is <7 digits>." at each of ``depths`` (percent of the haystack before the needle), answers
each with greedy ``generate()`` through the real quantized cache of every run, and scores the
digits by exact match. The rules below need no model; the core checks the model's maximum context
and the haystack's length.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from headq_spec.limits import MAX_TOKENS, MAX_WINDOW
from headq_spec.runs import RunSpec

MIN_LENGTH = 64  # tokens: room for the template, the needle, the question and some haystack
MAX_PROMPTS = 10_000  # prompts of one job: lengths x depths x samples
NUMBER_DIGITS = 7
# the maximum context of each built-in model (its config's max_position_embeddings)
BUILTIN_CONTEXT = {"builtin:smollm2-135m": 8192}


class RetrievalOptions(BaseModel):
    """The grid of a retrieval job: context ``lengths`` (tokens of the whole prompt), needle
    ``depths`` (percent), ``samples`` prompts per cell, ``new_tokens`` greedy answer tokens,
    ``template`` (``auto``: the tokenizer's chat template when it has one), ``heads`` (per-head
    needle attention rows)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    lengths: list[int] = Field(default_factory=lambda: [256, 512, 1024], min_length=1, max_length=64)
    depths: list[float] = Field(default_factory=lambda: [0.0, 25.0, 50.0, 75.0, 100.0], min_length=1,
                                max_length=101)
    samples: int = Field(default=1, ge=1, le=100)
    new_tokens: int = Field(default=12, ge=1, le=64)
    template: Literal["auto", "chat", "plain"] = "auto"
    heads: bool = True

    @field_validator("lengths")
    @classmethod
    def _lengths(cls, lengths: list[int]) -> list[int]:
        for index, length in enumerate(lengths):
            if not MIN_LENGTH <= length <= MAX_WINDOW:
                raise ValueError(f"{index}: a context length must lie in [{MIN_LENGTH}, {MAX_WINDOW}] "
                                 f"tokens, got {length}")
        if len(set(lengths)) != len(lengths):
            raise ValueError(f"duplicate lengths {sorted({n for n in lengths if lengths.count(n) > 1})}")
        return lengths

    @field_validator("depths", mode="before")
    @classmethod
    def _depths(cls, depths: Any) -> Any:
        if isinstance(depths, list):
            for index, depth in enumerate(depths):
                ok = type(depth) in (int, float) and 0.0 <= depth <= 100.0
                if not ok:
                    raise ValueError(f"{index}: a depth is a percentage in [0, 100], got {depth!r}")
            if len(set(depths)) != len(depths):
                raise ValueError("duplicate depths")
            return [float(d) for d in depths]
        return depths

    def prompts(self) -> int:
        """Prompts the grid asks for (each is answered once per run)."""
        return len(self.lengths) * len(self.depths) * self.samples

    def check(self, model_id: str, max_tokens: int | None, max_prompts: int = MAX_PROMPTS) -> None:
        """The rules that need the rest of the spec: ``ValueError`` naming ``retrieval.<field>``."""
        if self.prompts() > max_prompts:
            raise ValueError(f"retrieval: {self.prompts()} prompts (lengths x depths x samples) exceed "
                             f"{max_prompts}")
        context = BUILTIN_CONTEXT.get(model_id)
        for index, length in enumerate(self.lengths):
            if context is not None and length > context:
                raise ValueError(f"retrieval.lengths.{index}: {length} tokens exceed the maximum context "
                                 f"of {model_id} ({context})")
            if max_tokens is not None and length > max_tokens:
                raise ValueError(f"retrieval.lengths.{index}: {length} tokens exceed the haystack the "
                                 f"dataset may read (dataset.max_tokens = {max_tokens})")


def check_retrieval_runs(runs: list[RunSpec]) -> None:
    """What the real cache cannot run (``HeadQCache.from_run``), refused before a model is loaded:
    ``ValueError`` naming ``runs.<index>.<field>``."""
    if not runs:
        raise ValueError("runs: a retrieval job needs at least one run")
    for index, run in enumerate(runs):
        if run.intervention is not None:
            raise ValueError(f"runs.{index}.intervention: a perturbation for analysis; a retrieval job runs "
                             f"the real cache, which stores none")
        if run.headq is not None and run.headq.basis == "key_pca":
            raise ValueError(f"runs.{index}.headq.basis: key_pca needs every key before it encodes one; "
                             f"the cache encodes keys as they arrive: use query_pca or random")
        if run.value_policy is not None and run.value_policy.mode != "online":
            raise ValueError(f"runs.{index}.value_policy.mode: the cache decides values online; "
                             f"'{run.value_policy.mode}' is for analysis only")


class RetrievalPrompt(BaseModel):
    """One prompt: its grid cell, the needle's place (token offset and count) and the answer."""

    model_config = ConfigDict(extra="allow", strict=True)

    index: int = Field(ge=0, le=MAX_PROMPTS)
    length: int = Field(ge=1, le=MAX_TOKENS)
    depth: float = Field(ge=0.0, le=100.0)
    sample: int = Field(ge=0)
    needle_start: int = Field(ge=0, le=MAX_TOKENS)
    needle_tokens: int = Field(ge=1, le=MAX_TOKENS)
    name: str = Field(min_length=1, max_length=100)
    number: str = Field(pattern=rf"^[0-9]{{{NUMBER_DIGITS}}}$")


class RetrievalAnswer(BaseModel):
    """A run's greedy answer to one prompt, and whether its digits match the needle's."""

    model_config = ConfigDict(extra="allow", strict=True)

    run: str = Field(min_length=1, max_length=200)
    prompt: int = Field(ge=0, le=MAX_PROMPTS)
    text: str = Field(max_length=10_000)
    correct: bool


class RetrievalBlock(BaseModel):
    """The ``retrieval`` block of a results document: the grid, every prompt, every answer, and per
    run its accuracy grid ``accuracy[run][length index][depth index]`` (share of samples correct)."""

    model_config = ConfigDict(extra="allow", strict=True)

    lengths: list[int]
    depths: list[float]
    samples: int = Field(ge=1)
    new_tokens: int = Field(ge=1)
    template: Literal["chat", "plain"]
    prompts: list[RetrievalPrompt] = Field(default_factory=list)
    answers: list[RetrievalAnswer] = Field(default_factory=list)
    accuracy: dict[str, list[list[float]]] = Field(default_factory=dict)
