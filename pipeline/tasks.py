"""Downstream tasks: how each file layout becomes (text, pair, label) rows.

``nsmc``: TSV ``id<TAB>document<TAB>label`` with a header. ``klue-nli`` and ``klue-sts``:
the KLUE JSON layout. ``generic``: TSV/CSV/JSONL with named columns, single sentences or
pairs, labels as strings or numbers.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError


@dataclass
class TaskSpec:
    name: str
    regression: bool
    main_metric: str
    label_names: list[str] | None  # fixed label set as the files write it, or None: from the train file
    display_names: list[str] | None = None  # what the model says (id2label), when the files use codes
    official: tuple[tuple[str, int], ...] = ()  # (file name, rows) of the evaluation sets published scores use
    references: str = ""  # published scores on those sets

    def shown_names(self, names: list[str] | None) -> list[str] | None:
        return self.display_names or names


TASKS = {
    "nsmc": TaskSpec("nsmc", False, "accuracy", ["0", "1"], ["negative", "positive"],
                     (("ratings_test.txt", 50000),), "KoBERT 90.1%, KcBERT-base 89.6%, KoELECTRA-base-v3 90.6% accuracy"),
    "klue-nli": TaskSpec("klue-nli", False, "accuracy", ["entailment", "neutral", "contradiction"], None,
                         (("klue-nli-v1.1_dev.json", 3000),), "KLUE-BERT-base 81.6 accuracy (dev)"),
    "klue-sts": TaskSpec("klue-sts", True, "pearson", None, None,
                         (("klue-sts-v1.1_dev.json", 519),), "KLUE-BERT-base 90.9 Pearson (dev)"),
    "generic": TaskSpec("generic", False, "accuracy", None),
}


def is_official(spec: TaskSpec, path, rows: int) -> bool:
    """Whether ``path`` is the evaluation set the task's published scores were measured on
    (its released name and row count): only then are those scores a comparison."""
    return (Path(path).name, rows) in spec.official


@dataclass
class Rows:
    text: list[str]
    pair: list[str] | None
    label: list  # raw labels: strings (classification) or floats (regression)
    binary: list[int] | None = None  # KLUE-STS binary label


def _need(path: Path, row: dict, key: str, where: str):
    if key not in row:
        raise PipelineError(f"{path}: {where} has no '{key}' field (it has {sorted(row)}); "
                            f"is this the right file for the task?")
    return row[key]


def _number(path: Path, row: int, value) -> float:
    """A regression label; anything but a finite number names its row."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not math.isfinite(number):
        raise PipelineError(f"{path}: row {row} has the label {value!r}, not a number; STS labels are scores such as 3.2")
    return number


def _read_table(path: Path) -> list[dict]:
    if not path.is_file():
        raise PipelineError(f"{path}: no such file; check --train/--eval")
    if path.stat().st_size == 0:
        raise PipelineError(f"{path}: the file is empty; pass a file with a header and rows")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PipelineError(f"{path}: not valid UTF-8 ({err.reason}); convert it to UTF-8") from None
    if path.suffix in (".jsonl", ".json"):
        try:
            if text.lstrip().startswith("["):
                rows = json.loads(text)
            else:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise PipelineError(f"{path}: not valid JSON at line {err.lineno} ({err.msg}); fix the file") from None
        if not all(isinstance(r, dict) for r in rows):
            raise PipelineError(f"{path}: every row must be a JSON object with the task's fields")
    else:
        delim = "," if path.suffix == ".csv" else "\t"
        csv.field_size_limit(2**31 - 1)  # a long review is data, not an error (the default is 128 KiB)
        try:
            rows = list(csv.DictReader(text.splitlines(), delimiter=delim, quoting=csv.QUOTE_NONE))
        except csv.Error as err:
            raise PipelineError(f"{path}: not a readable {'CSV' if delim == ',' else 'TSV'} file ({err}); fix the file") from None
    if not rows:
        raise PipelineError(f"{path}: no rows; pass a file with data rows")
    return rows


def load_rows(task: str, path: str | Path, text_column: str = "text", pair_column: str = "",
              label_column: str = "label") -> Rows:
    """Read a task file into rows, with errors that name the file, the column and the fix."""
    path = Path(path)
    rows = _read_table(path)
    if task == "nsmc":
        text = [_need(path, r, "document", "the header") or "" for r in rows]
        return Rows(text, None, [str(_need(path, r, "label", "the header")).strip() for r in rows])
    if task == "klue-nli":
        return Rows([_need(path, r, "premise", "a row") for r in rows], [_need(path, r, "hypothesis", "a row") for r in rows],
                    [_need(path, r, "gold_label", "a row") for r in rows])
    if task == "klue-sts":
        labels = [_need(path, r, "labels", "a row") for r in rows]
        for i, lab in enumerate(labels, 1):
            if not isinstance(lab, dict):
                raise PipelineError(f"{path}: row {i} has 'labels' {lab!r}; KLUE-STS rows hold an object such as "
                                    '{"label": 3.2, "binary-label": 1}')
        scores = [_number(path, i, _need(path, lab, "label", "a row's labels")) for i, lab in enumerate(labels, 1)]
        binary = [lab.get("binary-label", int(score >= 3.0)) for lab, score in zip(labels, scores)]
        bad = next((i for i, b in enumerate(binary, 1) if b not in (0, 1, True, False)), None)
        if bad:
            raise PipelineError(f"{path}: row {bad} has 'binary-label' {binary[bad - 1]!r}; use 0 or 1")
        return Rows([_need(path, r, "sentence1", "a row") for r in rows], [_need(path, r, "sentence2", "a row") for r in rows],
                    scores, [int(b) for b in binary])
    text = [str(_need(path, r, text_column, "the header/rows (set --text-column)")) for r in rows]
    pair = [str(_need(path, r, pair_column, "the header/rows (set --pair-column)")) for r in rows] if pair_column else None
    return Rows(text, pair, [str(_need(path, r, label_column, "the header/rows (set --label-column)")).strip() for r in rows])


def label_ids(spec: TaskSpec, train: Rows, eval_rows: Rows, eval_path) -> tuple[list[str] | None, list, list]:
    """Map labels to ids; an eval label unseen in training is an error naming it."""
    if spec.regression:
        return None, train.label, eval_rows.label
    names = spec.label_names or sorted(set(train.label), key=lambda s: (len(s), s))
    if len(set(train.label)) < 2:
        raise PipelineError(f"--train: every row has the label {train.label[0]!r}; a classifier needs at least two "
                            f"classes (check --label-column, or the file)")
    index = {n: i for i, n in enumerate(names)}
    for rows, where in ((train, "--train"), (eval_rows, eval_path)):
        bad = next((lab for lab in rows.label if lab not in index), None)
        if bad is not None:
            raise PipelineError(f"{where}: unknown label {bad!r} for task {spec.name} (labels: {', '.join(names)}); "
                                f"fix the file or pick the right --task")
    return names, [index[lab] for lab in train.label], [index[lab] for lab in eval_rows.label]
