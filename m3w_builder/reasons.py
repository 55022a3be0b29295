"""Reason codes and their counts: nothing is dropped without a code and a count (STYLE (a)3).

A code is `<stage>.<why>`, e.g. `html.too_large`, `text.stopword_ratio`, `image.too_small`. Stages raise
`Skip(code)` for whole-item drops; the stage boundary catches it, counts it and logs it. `Counts` is a
Counter so per-task counts merge with `+` and serialise to report.json as a plain dict.
"""

from __future__ import annotations

from collections import Counter


class Skip(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Drop the current item with a reason code; `detail` names the input and offset for the log."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


class Counts(Counter):
    """Reason-code and progress counters, mergeable across tasks with `+` / `update`."""

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.items())}
