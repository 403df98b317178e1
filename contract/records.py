"""Read and validate labelled text datasets (JSONL or CSV); pure Python, no torch.

The API validates uploads with this module and stores the canonical JSONL it produces; the
engine reads that canonical form back with `read_jsonl`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

MAX_TEXT_CHARS = 100_000
# Room for text and text_pair at MAX_TEXT_CHARS even when \u-escaped; a longer line is refused
# before it is read whole, so memory stays bounded whatever the file holds.
MAX_LINE_BYTES = 4 * 1024 * 1024
MIN_ROWS = 4
# A spreadsheet runs a cell that starts with = + - or @ as a formula. Only a function call
# (NAME( as in HYPERLINK( or WEBSERVICE() or a DDE link (NAME| as in cmd|) reaches outside the
# sheet, so those cells are refused while "-5 stars", "+1" and "@bob thanks" pass. The
# lookbehind starts a name only at a word's start, which keeps the match linear in the text.
FORMULA = re.compile(r"[=+\-@].*?(?<![A-Za-z0-9_.])[A-Za-z_][A-Za-z0-9_.]*[(|]", re.DOTALL)
LabelType = Literal["categorical", "numeric", "none"]


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    text_pair: str | None = None
    label: str | float | None = None


class RecordError(ValueError):
    """A row is unusable; `line` is 1-based in the uploaded file (the CSV header is line 1)."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None):
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{message}")
        self.line = line
        self.field = field


@dataclass
class ParsedDataset:
    format: Literal["jsonl", "csv"]
    examples: list[Example]
    label_type: LabelType
    labels: list[str] = field(default_factory=list)
    has_text_pair: bool = False

    @property
    def num_rows(self) -> int:
        return len(self.examples)


def detect_format(filename: str, head: bytes) -> Literal["jsonl", "csv"]:
    name = filename.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    return "jsonl" if head.lstrip().startswith(b"{") else "csv"


def _lines(stream: BinaryIO) -> Iterator[tuple[int, str]]:
    """Decode UTF-8 line by line so a bad byte is reported with its line number."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    number = 0
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise RecordError(f"the line is longer than {MAX_LINE_BYTES} bytes", line=number)
        try:
            yield number, decoder.decode(raw)
        except UnicodeDecodeError as exc:
            raise RecordError("not valid UTF-8 (save the file as UTF-8)", line=number) from exc


def _text(value: Any, *, line: int, name: str, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RecordError(f"'{name}' is missing or empty", line=line, field=name)
        return None
    if not isinstance(value, str):
        raise RecordError(f"'{name}' must be a string", line=line, field=name)
    if len(value) > MAX_TEXT_CHARS:
        raise RecordError(
            f"'{name}' is longer than {MAX_TEXT_CHARS} characters", line=line, field=name
        )
    _refuse_formula(value, line=line, name=name)
    return value.strip()


def _refuse_formula(value: str, *, line: int, name: str) -> None:
    if FORMULA.match(value.lstrip()):
        raise RecordError(
            f"'{name}' looks like a spreadsheet formula (it starts with {value.lstrip()[0]!r} "
            "and calls a function or a DDE link), which would run if the data were opened in a "
            "spreadsheet; reword it or start it with an apostrophe (')",
            line=line,
            field=name,
        )


def _label(value: Any, *, line: int) -> str | float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise RecordError(
            "'label' must be a string or a number, not a boolean", line=line, field="label"
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RecordError("'label' must be a finite number", line=line, field="label")
        return str(int(value)) if value.is_integer() else value
    if isinstance(value, str):
        if _is_number(value) and not math.isfinite(float(value)):  # "nan", "+inf", "1e999"
            raise RecordError(f"'label' {value!r} is not a usable label", line=line, field="label")
        _refuse_formula(value, line=line, name="label")
        return value.strip()
    raise RecordError("'label' must be a string or a number", line=line, field="label")


def _jsonl_rows(stream: BinaryIO) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in _lines(stream):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(f"invalid JSON ({exc.msg})", line=number) from exc
        if not isinstance(obj, dict):
            raise RecordError("each line must be a JSON object", line=number)
        yield number, obj


def _csv_rows(stream: BinaryIO) -> Iterator[tuple[int, dict[str, Any]]]:
    # csv needs whole logical records; keep physical line numbers for messages.
    text_lines = ((n, s) for n, s in _lines(stream))
    numbers: list[int] = []

    def feed() -> Iterator[str]:
        for n, s in text_lines:
            numbers.append(n)
            yield s

    reader = csv.DictReader(feed())
    try:
        fieldnames = reader.fieldnames
    except csv.Error as exc:
        raise RecordError(
            f"malformed CSV header ({exc})", line=numbers[-1] if numbers else 1, field="file"
        ) from exc
    if fieldnames is None:
        raise RecordError("the CSV file is empty", line=1)
    header = [h.strip() for h in fieldnames]
    if "text" not in header:
        raise RecordError("the CSV header has no 'text' column", line=1, field="text")
    seen: set[str] = set()
    for name in header:
        if name in seen and name:
            raise RecordError(
                f"the CSV header has the column '{name}' more than once", line=1, field=name
            )
        seen.add(name)
    reader.fieldnames = header
    try:
        for row in reader:
            line = numbers[-1] if numbers else 1
            if None in row:
                raise RecordError("the row has more fields than the header", line=line)
            yield line, row
    except csv.Error as exc:
        raise RecordError(f"malformed CSV ({exc})", line=numbers[-1] if numbers else 1) from exc


def parse_rows(
    rows: Iterable[tuple[int, dict[str, Any]]],
    *,
    fmt: Literal["jsonl", "csv"],
    numeric_csv_labels: bool = True,
) -> ParsedDataset:
    examples: list[Example] = []
    labelled: bool | None = None
    for line, obj in rows:
        text = _text(obj.get("text"), line=line, name="text", required=True)
        assert text is not None
        pair = _text(obj.get("text_pair"), line=line, name="text_pair", required=False)
        label = _label(obj.get("label"), line=line)
        if labelled is None:
            labelled = label is not None
        elif labelled != (label is not None):
            raise RecordError(
                "'label' is missing" if labelled else "'label' is set but earlier rows have none",
                line=line,
                field="label",
            )
        examples.append(Example(text=text, text_pair=pair, label=label))

    if len(examples) < MIN_ROWS:
        raise RecordError(f"a dataset needs at least {MIN_ROWS} rows, this one has {len(examples)}")
    label_type = _label_type(examples, fmt=fmt, numeric_csv_labels=numeric_csv_labels)
    if label_type == "numeric":
        examples = [Example(e.text, e.text_pair, float(e.label)) for e in examples]  # type: ignore[arg-type]
        labels: list[str] = []
    elif label_type == "categorical":
        examples = [Example(e.text, e.text_pair, str(e.label)) for e in examples]
        labels = sorted({str(e.label) for e in examples})
        if len(labels) < 2:
            raise RecordError(
                f"every row has the label {labels[0]!r}; a classifier needs at least two classes",
                field="label",
            )
    else:
        labels = []
    return ParsedDataset(
        format=fmt,
        examples=examples,
        label_type=label_type,
        labels=labels,
        has_text_pair=any(e.text_pair is not None for e in examples),
    )


def _is_number(value: str | float | None) -> bool:
    if isinstance(value, float):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _label_type(examples: list[Example], *, fmt: str, numeric_csv_labels: bool) -> LabelType:
    values = [e.label for e in examples]
    if values[0] is None:
        return "none"
    # A float anywhere (JSON) or a non-integer number in every CSV cell means regression.
    if any(isinstance(v, float) for v in values):
        for number, v in enumerate(values, start=1):
            if not _is_number(v):
                raise RecordError(
                    f"'label' {v!r} is not a number but other labels are",
                    field="label",
                    line=number,
                )
        return "numeric"
    if (
        fmt == "csv"
        and numeric_csv_labels
        and all(_is_number(v) for v in values)
        and any(not float(str(v)).is_integer() for v in values)
    ):
        return "numeric"
    return "categorical"


def parse_dataset(stream: BinaryIO, *, filename: str) -> ParsedDataset:
    """Parse and validate an upload; raises RecordError naming the line and field at fault."""
    head = stream.read(512)
    stream.seek(0)
    fmt = detect_format(filename, head)
    rows = _jsonl_rows(stream) if fmt == "jsonl" else _csv_rows(stream)
    return parse_rows(rows, fmt=fmt)


def to_jsonl(examples: Iterable[Example]) -> bytes:
    out = io.StringIO()
    for e in examples:
        obj: dict[str, Any] = {"text": e.text}
        if e.text_pair is not None:
            obj["text_pair"] = e.text_pair
        if e.label is not None:
            obj["label"] = e.label
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return out.getvalue().encode("utf-8")


def read_jsonl(stream: BinaryIO) -> list[Example]:
    """Read the canonical JSONL the API stored (already validated)."""
    return parse_rows(_jsonl_rows(stream), fmt="jsonl").examples
