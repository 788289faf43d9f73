"""Teacher rubrics: versioned, user-editable prompt files for doc- and chunk-level annotation.

A rubric is a YAML file with `version`, `system`, `user` (a Jinja template) and optionally
`answers`, what it asks the teacher for: `scores` (doc level), `program`, `deletion_program`
or `cleaned_text` (chunk level); a rubric used for a kind of answer it does not ask for is
refused before any request. The packaged ones (`doc-v1`, `chunk-v1`, `chunk-deletion-v1`,
`clean-v1`) live in `rubrics/`; a path to the user's own file works the same. Every annotation
records the rubric version it was made with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from proxkit.prompts import compiled_template

PACKAGED = Path(__file__).parent / "rubrics"


ANSWERS = ("scores", "program", "deletion_program", "cleaned_text")


class RubricError(ValueError):
    """A rubric file that cannot be used."""


@dataclass(frozen=True)
class Rubric:
    version: str
    system: str
    user: str  # Jinja template source
    path: str
    answers: str | None = None  # what it asks for (ANSWERS); None: not said

    def check_answers(self, wanted: tuple[str, ...]) -> None:
        """Refuse a rubric that says it asks for another kind of answer than `wanted`."""
        if self.answers is not None and self.answers not in wanted:
            raise RubricError(
                f"rubric {self.version} ({self.path}) asks for {self.answers}; "
                f"this annotation needs {' or '.join(wanted)}"
            )

    def messages(self, **values: Any) -> list[dict[str, str]]:
        """The chat messages of one request."""
        user = compiled_template(self.user).render(**values)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def load_rubric(name_or_path: str) -> Rubric:
    """A packaged rubric by name (`doc-v1`) or a YAML file of the user's."""
    path = Path(name_or_path)
    if not path.exists():
        path = PACKAGED / f"{name_or_path}.yaml"
    if not path.exists():
        packaged = ", ".join(sorted(p.stem for p in PACKAGED.glob("*.yaml")))
        raise RubricError(f"no rubric {name_or_path!r}: give a YAML file or one of {packaged}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RubricError(f"{path}: not valid YAML: {exc}") from exc
    missing = [
        k for k in ("version", "system", "user") if not isinstance(data, dict) or not data.get(k)
    ]
    if missing:
        raise RubricError(f"{path}: missing {', '.join(missing)}")
    answers = data.get("answers")
    if answers is not None and answers not in ANSWERS:
        raise RubricError(f"{path}: answers must be one of {', '.join(ANSWERS)}, got {answers!r}")
    return Rubric(str(data["version"]), str(data["system"]), str(data["user"]), str(path), answers)
