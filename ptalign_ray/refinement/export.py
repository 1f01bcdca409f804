"""Export of the refined dataset for other tools (TRL's DPO/KTO/SFT trainers and the like).

- ``sft``: ``{"messages": [user question, assistant positive]}`` - harmless answers only, followed by
  the kept benign answers (``benign`` frame: question, response), as PT-ALIGN's MLE term sees them;
- ``preference``: ``{"prompt": [user], "chosen": [assistant positive], "rejected": [assistant toxic]}``
  in TRL's conversational format. It contains the toxic responses, so it is written only when the
  caller passes ``include_toxic=True`` (``ptalign export --format preference --include-toxic``).
Files are written atomically.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from pathlib import Path

import pandas as pd

FORMATS = ("sft", "preference")


class ExportRefused(ValueError):
    """An export that would write toxic text without the explicit opt-in."""


def _records(df: pd.DataFrame, fmt: str):
    for r in df.itertuples():
        user = [{"role": "user", "content": r.question}]
        if fmt == "sft":
            yield {"id": r.id, "messages": user + [{"role": "assistant", "content": r.positive}]}
        else:
            yield {
                "id": r.id,
                "prompt": user,
                "chosen": [{"role": "assistant", "content": r.positive}],
                "rejected": [{"role": "assistant", "content": r.toxic}],
            }


def _benign_records(benign: pd.DataFrame):
    for r in benign.itertuples():
        yield {
            "id": r.id,
            "messages": [{"role": "user", "content": r.question}, {"role": "assistant", "content": r.response}],
        }


def export(
    df: pd.DataFrame, out: Path, fmt: str, include_toxic: bool = False, benign: pd.DataFrame | None = None
) -> int:
    """Writes df (refined triplets) as JSONL in the given format; returns the number of records.
    ``benign`` (question, response) rows are appended to the sft format only."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "preference" and not include_toxic:
        raise ExportRefused("the preference format contains the toxic responses; pass --include-toxic to write it")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    n = 0
    with os.fdopen(fd, "w") as f:
        records = _records(df, fmt)
        if fmt == "sft" and benign is not None:
            records = itertools.chain(records, _benign_records(benign))
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, out)
    return n
