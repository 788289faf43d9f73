"""Run statistics: counted where documents are refined, merged across workers, printed at the end.

The same counters are written as `stats.json` next to the output and printed as the end-of-run
summary, so what a user reads and what a script parses cannot disagree.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from proxkit.pipeline.records import Refined


@dataclass
class RunStats:
    documents: int = 0
    kept: int = 0
    dropped: int = 0
    refined: int = 0  # kept and the text changed
    rejected: int = 0
    outcomes: Counter = field(default_factory=Counter)  # "doc:kept", "chunk:refined", ...
    drop_reasons: Counter = field(default_factory=Counter)  # which rule or stage dropped
    lines_removed: int = 0
    normalizations: int = 0
    cuts: int = 0  # line-anchored cuts (remove_str) applied
    edits_not_applied: int = 0  # --deletion-only: operations left out as not deletions
    program_errors: int = 0
    documents_with_program_errors: int = 0
    chars_before: int = 0
    chars_after: int = 0
    words_before: int = 0
    words_after: int = 0
    tokens_before: int = 0  # counted only when a tokenizer is configured
    tokens_after: int = 0
    programmer_failures: int = 0  # documents kept unrefined because a model call failed
    prompt_worker_fallbacks: int = 0  # batches whose prompts the model's process built instead
    records_with_unencodable_values: int = 0  # lone surrogates, NaN: replaced, originals kept
    records_with_displaced_fields: int = 0  # input values moved to metadata.prox.displaced
    # --chunk-score-range only: characters sent to the chunk stage and kept from it, and the
    # seconds spent in the chunk programmer (to estimate the model time the band saved)
    chunk_stage_chars: int = 0
    chunk_skipped_chars: int = 0
    chunk_stage_seconds: float = 0.0
    programmers: dict = field(default_factory=dict)  # per stage, e.g. program cache hit rate

    def add(self, refined: Refined, drop_reason: str | None = None) -> None:
        text = refined.text
        self.documents += 1
        self.chars_before += len(refined.original)
        self.chars_after += len(text)
        self.words_before += len(refined.original.split())
        self.words_after += len(text.split())
        errors = 0
        for stage, result in (("doc", refined.doc), ("chunk", refined.chunk)):
            if result is None:
                continue
            self.outcomes[f"{stage}:{result.outcome.value}"] += 1
            errors += len(result.errors)
        if refined.dropped:
            self.dropped += 1
            self.drop_reasons[drop_reason or "dropped"] += 1
        else:
            self.kept += 1
            if text != refined.original:
                self.refined += 1
        chunk = refined.chunk
        if chunk is not None and chunk.outcome.value in ("refined", "unchanged"):
            self.lines_removed += sum(end - start + 1 for start, end in chunk.removed_lines)
            self.normalizations += sum(count for _, _, count in chunk.normalizations)
            self.cuts += len(chunk.cuts)
        if chunk is not None:
            self.edits_not_applied += len(chunk.not_applied)
        self.program_errors += errors
        self.documents_with_program_errors += errors > 0
        self.records_with_unencodable_values += refined.unencodable
        self.records_with_displaced_fields += refined.displaced

    def merge(self, other: RunStats) -> None:
        for name, value in vars(other).items():
            current = getattr(self, name)
            if isinstance(current, (Counter, dict)):
                current.update(value)
            else:
                setattr(self, name, current + value)

    def to_dict(self) -> dict[str, Any]:
        data = {
            k: (dict(sorted(v.items())) if isinstance(v, Counter) else v)
            for k, v in vars(self).items()
        }
        data["kept_fraction"] = round(self.kept / self.documents, 6) if self.documents else 0.0
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStats:
        stats = cls()
        for name, value in data.items():
            if not hasattr(stats, name):
                continue
            current = getattr(stats, name)
            setattr(stats, name, Counter(value) if isinstance(current, Counter) else value)
        return stats

    def _deletion_rows(self) -> list[tuple[str, str]]:
        rows = []
        if self.edits_not_applied:
            rows.append(("edits not applied (not deletions)", f"{self.edits_not_applied:,}"))
        if self.outcomes.get("chunk:not_a_subsequence"):
            rows.append(
                (
                    "left unrefined: output not a subsequence",
                    f"{self.outcomes['chunk:not_a_subsequence']:,}",
                )
            )
        return rows

    def _band_rows(self) -> list[tuple[str, str]]:
        """Documents the score band kept from the chunk stage, and the model time that saved,
        estimated at the chunk stage's own seconds per character."""
        above = self.outcomes.get("chunk:above_score_band", 0)
        below = self.outcomes.get("chunk:below_score_band", 0)
        if not above + below:
            return []
        rows = [
            ("chunk stage skipped: keep score above / below the band", f"{above:,} / {below:,}")
        ]
        if self.chunk_stage_chars:
            share = self.chunk_skipped_chars / (self.chunk_skipped_chars + self.chunk_stage_chars)
            saved = self.chunk_stage_seconds * self.chunk_skipped_chars / self.chunk_stage_chars
            rows.append(
                (
                    "chunk stage time saved (estimated)",
                    f"{saved:,.1f} s ({share:.1%} of the kept characters; "
                    f"{self.chunk_stage_seconds:,.1f} s spent)",
                )
            )
        return rows

    def summary_lines(self) -> list[tuple[str, str]]:
        def share(part: int, whole: int) -> str:
            return f"{part:,} ({part / whole:.1%})" if whole else f"{part:,}"

        rows = [
            ("documents in", f"{self.documents + self.rejected:,}"),
            ("kept", share(self.kept, self.documents)),
            ("  of which refined", share(self.refined, self.documents)),
            ("dropped", share(self.dropped, self.documents)),
        ]
        rows += [(f"  {reason}", f"{count:,}") for reason, count in self.drop_reasons.most_common()]
        rows += [
            ("rejected records", f"{self.rejected:,}"),
            ("lines removed", f"{self.lines_removed:,}"),
            ("normalizations applied", f"{self.normalizations:,}"),
            *([("line cuts applied", f"{self.cuts:,}")] if self.cuts else []),
            (
                "program errors",
                f"{self.program_errors:,} in {self.documents_with_program_errors:,} documents",
            ),
            ("characters before -> after", f"{self.chars_before:,} -> {self.chars_after:,}"),
            ("words before -> after", f"{self.words_before:,} -> {self.words_after:,}"),
        ]
        rows += self._deletion_rows() + self._band_rows()
        if self.programmer_failures:
            rows.append(("programmer failures (kept unrefined)", f"{self.programmer_failures:,}"))
        if self.prompt_worker_fallbacks:
            rows.append(
                (
                    "batches prompted in the model's process (a prompt worker failed)",
                    f"{self.prompt_worker_fallbacks:,}",
                )
            )
        if self.records_with_unencodable_values:
            rows.append(
                (
                    "records with unencodable values (replaced, kept in metadata)",
                    f"{self.records_with_unencodable_values:,}",
                )
            )
        if self.records_with_displaced_fields:
            rows.append(
                (
                    "records with fields moved aside (metadata.prox.displaced)",
                    f"{self.records_with_displaced_fields:,}",
                )
            )
        for stage in ("doc", "chunk"):
            numbers = self.programmers.get(stage, {})
            if numbers.get("prompts"):
                rows.append(
                    (
                        f"{stage} prompts (cache hits)",
                        f"{numbers['prompts']:,} ({numbers['cache_hit_rate']:.1%})",
                    )
                )
            if numbers.get("output_tokens"):
                outputs = sum(numbers["output_tokens"].values())
                rows.append(
                    (
                        f"{stage} tokens generated (outputs at the token limit)",
                        f"{numbers['generated_tokens']:,} ({numbers['outputs_at_token_limit']:,} of {outputs:,})",
                    )
                )
        model = self.programmers.get("model", {})
        if model.get("steps_corrected_by_grammar"):
            rows.append(
                (
                    "decoding steps where the grammar replaced the model's choice",
                    f"{model['steps_corrected_by_grammar']:,}",
                )
            )
        if model.get("oom_splits"):
            rows.append(
                ("batches split after running out of GPU memory", f"{model['oom_splits']:,}")
            )
        if self.tokens_before:
            rows.append(
                ("tokens before -> after", f"{self.tokens_before:,} -> {self.tokens_after:,}")
            )
        return rows
