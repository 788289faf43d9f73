"""The one interface every programmer (rules, stored programs, language models) implements.

A programmer receives a batch of documents for one stage and returns, per document, the
program text it wrote (`None`: no program, the stage is skipped for that document) and
optional details that go to `metadata.prox` (rules that fired, a model's keep score).
For the chunk stage a model programmer chunks the document itself and joins its per-chunk
programs with "\\n", as the reference does; the executor always sees one program per document.

A programmer that works in the background (a model on a GPU) also offers `submit`, which
starts a batch and returns at once with a `Pending` to call for the result; `submit()` below
gives every programmer that shape, so runners can keep a model busy while they do CPU work.
A model programmer may also offer `prompt_builder(stages)`: a picklable function from the
documents' texts to its inputs for those stages, which a runner can call in worker processes
ahead of the model and hand back to `submit` as `prepared`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from proxkit.io.readers import Document

Stage = Literal["doc", "chunk"]
STAGES: tuple[Stage, ...] = ("doc", "chunk")


@dataclass(frozen=True)
class Written:
    """What a programmer wrote for one document at one stage."""

    program: str | None
    info: Mapping[str, Any] = field(default_factory=dict)


class Programmer(Protocol):
    name: str

    def write(self, stage: Stage, documents: Sequence[Document]) -> list[Written]:
        """One `Written` per document, in input order."""
        ...


class ProgrammerError(ValueError):
    """A programmer that cannot be made as configured: refused at start-up."""


class BackendCannot(ProgrammerError):
    """A programmer or backend that cannot do what the configuration asks (say, keep
    generation inside the grammar): refused when it is made, never silently ignored."""


class BackendGone(RuntimeError):
    """The model behind a programmer stopped answering (a server or an engine process gone):
    the run cannot go on. It stops, the finished units stay, and the same command resumes."""


Pending = Callable[[], list[Written]]
"""Programs still being written: calling it waits for them."""


def submit(
    programmer: Programmer, stage: Stage, documents: Sequence[Document], prepared: Any = None
) -> Pending:
    """Start writing programs for a batch; a programmer without `submit` writes them now.
    `prepared`: what the programmer's `prompt_builder` built for these documents, if any."""
    start = getattr(programmer, "submit", None)
    if start is not None:
        return start(stage, documents) if prepared is None else start(stage, documents, prepared)
    written = programmer.write(stage, documents)
    return lambda: written
