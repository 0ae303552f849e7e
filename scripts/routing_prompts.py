"""The subject-labelled prompts the routing recipes (routing_vllm.py, routing_sglang.py) run:
reading a JSONL / JSON / CSV / TSV / Parquet file and picking its text and subject columns as
MoEScope does. Keep this file beside the recipes when copying them to the cluster.
"""

import csv
import json
import os
import sys
from collections import Counter
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

TEXT_DEFAULTS = ("text", "prompt", "question")
SUBJECT_DEFAULTS = ("subject", "category", "domain", "topic")


# ---------------------------------------------------------------------------------------------
# Dataset reading
# ---------------------------------------------------------------------------------------------


def read_rows(path: str) -> List[Dict[str, object]]:
    """Rows of a JSONL / JSON / CSV / TSV / Parquet file as dicts."""
    lower = path.lower()
    if lower.endswith((".csv", ".tsv")):
        csv.field_size_limit(2**31 - 1)  # long texts
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if lower.endswith(".tsv") else ","))
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq  # optional; only for Parquet input

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        content = f.read()
    if lower.endswith(".json") and content.lstrip().startswith("["):
        return json.loads(content)
    rows = []
    for number, line in enumerate(content.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{number}: not a JSON line ({e})")
    return rows


def pick_column(columns: Sequence[str], given: Optional[str], defaults: Sequence[str],
                what: str, path: str) -> Optional[str]:
    """The column named by a flag (exact), else the first default present (any case)."""
    if given is not None:
        if given not in columns:
            sys.exit(f"{path}: no {what} column {given!r} (columns: {', '.join(columns)})")
        return given
    by_lower = {c.lower(): c for c in reversed(list(columns))}
    for name in defaults:
        if name in columns:
            return name
        if name in by_lower:
            return by_lower[name]
    return None


def load_prompts(path: str, text_column: Optional[str], subject_column: Optional[str],
                 limit_per_subject: Optional[int]) -> List[Tuple[str, str]]:
    """(subject, text) pairs in file order; empty texts dropped, at most N per subject."""
    rows = read_rows(path)
    if not rows:
        sys.exit(f"{path}: no rows")
    if not isinstance(rows[0], dict):
        sys.exit(f"{path}: rows are not objects with named fields")
    columns = list(rows[0].keys())
    text_col = pick_column(columns, text_column, TEXT_DEFAULTS, "text", path)
    if text_col is None:
        sys.exit(f"{path}: no text column (looked for {', '.join(TEXT_DEFAULTS)}; "
                 f"columns: {', '.join(columns)}); name one with --text-column")
    subject_col = pick_column(columns, subject_column, SUBJECT_DEFAULTS, "subject", path)
    fixed_subject = os.path.splitext(os.path.basename(path))[0]
    if subject_col is None:
        print(f"{path}: no subject column; every prompt is subject {fixed_subject!r}",
              file=sys.stderr)
    taken: Counter = Counter()
    prompts = []
    for row in rows:
        text = row.get(text_col)
        if text is None or not str(text).strip():
            continue
        subject = fixed_subject if subject_col is None else row.get(subject_col)
        subject = "" if subject is None else str(subject).strip()
        if not subject:
            continue
        if limit_per_subject is not None and taken[subject] >= limit_per_subject:
            continue
        taken[subject] += 1
        prompts.append((subject, str(text)))
    if not prompts:
        sys.exit(f"{path}: no rows with both a text and a subject")
    print(f"{len(prompts)} prompts, {len(taken)} subjects from {path} "
          f"(text: {text_col!r}, subject: {subject_col or 'file name'!r})", file=sys.stderr)
    return prompts


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
