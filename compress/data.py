"""Task data: GLUE folders, generic local files and hub datasets -> tokenized `datasets.Dataset`s -> padded batches.

Rows are read into a `datasets.Dataset` with the columns ``text``, ``text_pair`` (pair tasks) and ``label``
(class index, or float for regression). GLUE TSV files are read with quoting off (their sentences hold bare double
quotes) and with any byte-order mark stripped. Every problem a user can cause (missing file or column, empty split,
unknown label, a label that is not a finite number, a file that is not UTF-8) is a `CompressError` naming the file
and, where there is one, the line. A custom task's files are held to more: a row with more fields than the header
(an unquoted comma), a blank text, or a JSON text that is not a string is refused too; GLUE files are read as GLUE
distributes them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers.data.data_collator import pad_without_fast_tokenizer_warning
from transformers.trainer_pt_utils import LengthGroupedSampler

from compress.config import TaskConfig
from compress.errors import CompressError
# the task table lives apart (standard library only: recipe validation needs it without torch); re-exported here
from compress.tasks import DEFAULT_GLUE_DIR, GLUE_TASKS, TaskSpec, data_dir, data_files, task_spec  # noqa: F401

csv.field_size_limit(sys.maxsize)


# ------------------------------------------------------------------------------------------------------ reading
def read_rows(path: Path) -> tuple[list[str], list[list], list[int]]:
    """Rows of a TSV (quoting off), CSV (standard quoting), JSONL or JSON file: (header, rows, line numbers).

    The file must be UTF-8; a byte-order mark is dropped and empty lines are skipped. A ``.json`` file holding a
    JSON array is a list of row objects; any other ``.json`` file, like a ``.jsonl`` one, has one object per line.
    JSON cells keep their JSON type (`load_split` checks them); TSV and CSV cells are strings.
    """
    if not path.is_file():
        raise CompressError(f"{path}: file not found")
    suffix = path.suffix.lower()
    text = _read_text(path)
    if suffix == ".json" and text.lstrip(" \t\r\n").startswith("["):
        return _read_json_array(path, text)
    if suffix == ".jsonl" or suffix == ".json":
        return _read_jsonl(path, io.StringIO(text, newline=""))
    delimiter = "," if suffix == ".csv" else "\t"
    quoting = csv.QUOTE_MINIMAL if suffix == ".csv" else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header, rows, lines = None, [], []
    for row in reader:
        row = [c.rstrip("\r") for c in row]
        if not any(c.strip() for c in row):
            continue
        if header is None:
            header = row
            continue
        rows.append(row)
        lines.append(reader.line_num)
    if header is None:
        raise CompressError(f"{path}: file is empty")
    return header, rows, lines


def _read_text(path: Path) -> str:
    """The file's text, without a byte-order mark; bytes that are not UTF-8 are an error naming the line."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, byte = data.count(b"\n", 0, e.start) + 1, data[e.start]
        raise CompressError(f"{path}:{line}: not UTF-8 text (byte {byte:#04x}); the file must be UTF-8") from None


def _read_jsonl(path: Path, f) -> tuple[list[str], list[list], list[int]]:
    records, lines = [], []
    for n, line in enumerate(f, 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise CompressError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            lines.append(n)
    return _records_to_rows(path, records, lines)


def _read_json_array(path: Path, text: str) -> tuple[list[str], list[list], list[int]]:
    """A JSON file holding one array of row objects; each row's line is the line its object starts on."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise CompressError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(records, list):  # the text starts with '[': valid JSON there is an array
        raise CompressError(f"{path}: expected a JSON array of objects, got {_json_kind(records)}")
    return _records_to_rows(path, records, _element_lines(text))


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _element_lines(text: str) -> list[int]:
    """The line each element of a valid JSON array (the whole of ``text``) starts on."""
    decoder, lines, line, seen = json.JSONDecoder(), [], 1, 0
    pos = _JSON_SPACE.match(text, text.index("[") + 1).end()
    while text[pos] != "]":
        line, seen = line + text.count("\n", seen, pos), pos
        lines.append(line)
        pos = _JSON_SPACE.match(text, decoder.raw_decode(text, pos)[1]).end()
        pos = _JSON_SPACE.match(text, pos + (text[pos] == ",")).end()
    return lines


def _records_to_rows(path: Path, records: list, lines: list[int]) -> tuple[list[str], list[list], list[int]]:
    """JSON rows (objects) -> header (the first object's keys) and cells in header order (None where missing)."""
    if not records:
        raise CompressError(f"{path}: file is empty")
    for record, line in zip(records, lines):
        if not isinstance(record, dict):
            raise CompressError(f"{path}:{line}: expected a JSON object, got {_json_kind(record)}")
    header = list(records[0])
    return header, [[r.get(k) for k in header] for r in records], lines


def _json_kind(value) -> str:
    """How an error names a JSON value's type."""
    if isinstance(value, bool):
        return "a boolean"
    kinds = {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def load_split(cfg: TaskConfig, split: str, spec: Optional[TaskSpec] = None) -> Dataset:
    """One split as a Dataset with columns text, [text_pair,] label."""
    spec = spec or task_spec(cfg)
    if cfg.hub_dataset:
        return _load_hub(cfg, spec, split)
    if split not in spec.files:
        raise CompressError(f"task {spec.name}: no {split!r} split (splits: {', '.join(spec.files)})")
    path = data_dir(cfg, spec) / spec.files[split]
    if spec.header:
        header, rows, lines = read_rows(path)
    else:  # headerless (CoLA): the first line is data, columns are indices
        header_row, rows, lines = read_rows(path)
        rows, lines = [header_row] + rows, [1] + lines
        header = [str(i) for i in range(max(len(r) for r in rows))]
    columns = {"text": spec.text, "text_pair": spec.text_pair, "label": spec.label}
    index = {}
    for role, name in columns.items():
        if name is None:
            continue
        if name not in header:
            raise CompressError(f"{path}: column {name!r} not found (columns: {', '.join(header)})")
        index[role] = header.index(name)
    custom = _is_custom(spec)
    out = {role: [] for role in index}
    for row, line in zip(rows, lines):
        if spec.header and (len(row) < len(header) or (custom and len(row) > len(header))):
            raise CompressError(f"{path}:{line}: expected {len(header)} {_separated(path)} fields, got {len(row)}")
        for role, i in index.items():
            value = row[i] if i < len(row) else None
            if value is None:
                raise CompressError(f"{path}:{line}: column {columns[role]!r} is empty")
            if role == "label":
                out[role].append(value if isinstance(value, str) else str(value))
            else:
                out[role].append(_text_cell(value, columns[role], path, line, custom))
    if not out["text"]:
        raise CompressError(f"{path}: split {split!r} has no rows")
    out["label"] = _encode_labels(out["label"], spec, path, lines)
    return Dataset.from_dict(out)


def _is_custom(spec: TaskSpec) -> bool:
    """A custom task's spec (built by `task_spec` from the config) has no GLUE folder."""
    return not spec.folder


def _separated(path: Path) -> str:
    """How a row error names the file's field delimiter."""
    return "comma-separated" if path.suffix.lower() == ".csv" else "tab-separated"


def _text_cell(value, name: str, path: Path, line: int, custom: bool) -> str:
    """A text or text-pair cell: a string (a JSON number, boolean, list or object is refused) that, in a custom
    task, is not blank (a shipped bundle refuses blank texts, so training on them would not match it)."""
    if not isinstance(value, str):
        raise CompressError(f"{path}:{line}: column {name!r}: expected a string, got {_json_kind(value)}")
    if custom and not value.strip():
        raise CompressError(f"{path}:{line}: empty text in column {name!r}")
    return value


def _encode_labels(values: list[str], spec: TaskSpec, path: Path, lines: list[int]) -> list:
    if spec.is_regression:
        return [_regression_label(value, spec, path, line) for value, line in zip(values, lines)]
    lookup = {name: i for i, name in enumerate(spec.labels)}
    encoded = []
    for value, line in zip(values, lines):
        value = value.strip()
        if value not in lookup:
            raise CompressError(f"{path}:{line}: column {spec.label!r}: label {value!r} is not one of {spec.labels}")
        encoded.append(lookup[value])
    return encoded


def _regression_label(value: str, spec: TaskSpec, path: Path, line: int) -> float:
    """A regression target: a finite number (nan or inf would only surface later, as a loss that became nan)."""
    try:
        number = float(value)
    except ValueError:
        raise CompressError(f"{path}:{line}: column {spec.label!r}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise CompressError(f"{path}:{line}: column {spec.label!r}: {value!r} is not a finite number")
    return number


def _load_hub(cfg: TaskConfig, spec: TaskSpec, split: str) -> Dataset:  # pragma: no cover - needs the network
    import datasets

    hub_split = {"dev": "validation"}.get(split, split)
    try:
        ds = datasets.load_dataset(*cfg.hub_dataset.split(":"), split=hub_split)
    except Exception as e:  # the hub library raises many types; the user needs one line
        raise CompressError(f"task.hub_dataset: could not load {cfg.hub_dataset!r} split {hub_split!r}: {e}") from None
    keep = {spec.text: "text", spec.label: "label"}
    if spec.text_pair:
        keep[spec.text_pair] = "text_pair"
    missing = [c for c in keep if c not in ds.column_names]
    if missing:
        raise CompressError(f"task.hub_dataset {cfg.hub_dataset}: column {missing[0]!r} not found "
                            f"(columns: {', '.join(ds.column_names)})")
    ds = ds.select_columns(list(keep)).rename_columns(keep)
    if spec.labels is not None and ds.features["label"].dtype == "string":
        ds = ds.map(lambda r: {"label": spec.labels.index(r["label"])})
    return ds


@dataclass
class TaskData:
    spec: TaskSpec
    train: Dataset
    holdout: Dataset
    """Held out from train, used to select checkpoints."""
    dev: Dataset
    """Reported, never used for selection."""
    test: Optional[Dataset] = None
    """Only where the task's test split is labelled (MRPC)."""


def load_task(cfg: TaskConfig, seed: int = 42) -> TaskData:
    """Train (minus a seeded held-out slice), holdout, dev and, where labelled, test."""
    spec = task_spec(cfg)
    full = load_split(cfg, "train", spec).shuffle(seed=seed).flatten_indices()
    n_hold = min(cfg.holdout_max, int(round(cfg.holdout * len(full))))
    if cfg.holdout > 0 and n_hold < 1:
        raise CompressError(f"task.holdout: {cfg.holdout} of {len(full)} training rows holds out nothing (raise it, or "
                            f"0 for none)")
    holdout = full.select(range(n_hold))
    train = full.select(range(n_hold, len(full)))
    if cfg.max_train_samples is not None:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    dev = load_split(cfg, "dev", spec)
    if cfg.max_eval_samples is not None:
        dev = dev.select(range(min(cfg.max_eval_samples, len(dev))))
    test = load_split(cfg, "test", spec) if "test" in spec.files else None
    if test is not None and cfg.max_eval_samples is not None:
        test = test.select(range(min(cfg.max_eval_samples, len(test))))
    return TaskData(spec, train, holdout, dev, test)


def rows_digest(ds: Dataset) -> str:
    """sha256 of a dataset's rows (every column, in row order): tells whether two stages saw the same rows."""
    h = hashlib.sha256()
    table = ds.with_format("arrow")[:]  # the selected rows, in order
    for name in sorted(ds.column_names):
        h.update(name.encode())
        h.update(json.dumps(table.column(name).to_pylist(), ensure_ascii=False).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------- tokenizing
def tokenize(ds: Dataset, tokenizer, max_length: int, prefix: str = "") -> Dataset:
    """Add ``{prefix}input_ids``, ``{prefix}attention_mask`` (and token_type_ids where the model has them) and
    ``{prefix}length``. A prefix lets one dataset carry two tokenizations (teacher and student)."""

    def encode(batch):
        pair = batch["text_pair"] if "text_pair" in batch else None
        enc = tokenizer(batch["text"], pair, truncation=True, max_length=max_length)
        out = {f"{prefix}{k}": v for k, v in enc.items()}
        out[f"{prefix}length"] = [len(x) for x in enc["input_ids"]]
        return out

    return ds.map(encode, batched=True, batch_size=2000, desc=f"tokenizing{' ' + prefix if prefix else ''}")


class Collator:
    """Pads each tokenization in a batch to its own longest row (dynamic padding)."""

    def __init__(self, tokenizers: dict[str, object], regression: bool = False):
        self.tokenizers = tokenizers  # prefix -> tokenizer
        self.regression = regression

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for prefix, tok in self.tokenizers.items():
            keys = [k for k in rows[0] if k.startswith(prefix) and k[len(prefix):] in tok.model_input_names]
            if prefix == "":  # "" is a prefix of every key: keep only un-prefixed model inputs
                keys = [k for k in rows[0] if k in tok.model_input_names]
            feats = [{k[len(prefix):]: r[k] for k in keys} for r in rows]
            padded = pad_without_fast_tokenizer_warning(tok, feats, return_tensors="pt")  # rows are pre-tokenized
            batch.update({f"{prefix}{k}": v for k, v in padded.items()})
        if "label" in rows[0]:
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.tensor([r["label"] for r in rows], dtype=dtype)
        if "index" in rows[0]:
            batch["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        if "gold" in rows[0]:  # augmented copies (gold 0) have no label of their own
            batch["gold"] = torch.tensor([r["gold"] for r in rows], dtype=torch.float32)
        return batch


def row_lengths(ds: Dataset) -> np.ndarray:
    """The ``length`` column as one array. Not ``ds["length"]``: datasets' lazy Column costs ~0.65 ms per lookup,
    and the length-grouped sampler's sort looks up every row: 160 s at each epoch start on a 245k-row transfer set,
    0.08 s from this array."""
    return ds.with_format("numpy", columns=["length"])[:]["length"]


def train_loader(ds: Dataset, collator: Collator, batch_size: int, seed: int, epoch: int,
                 group_by_length: bool = True) -> DataLoader:
    """Shuffled batches for one epoch, the same for the same (seed, epoch); length-grouped when asked."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    if group_by_length:
        sampler = LengthGroupedSampler(batch_size, lengths=row_lengths(ds).tolist(), generator=g)
    else:
        sampler = torch.utils.data.RandomSampler(ds, generator=g)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collator)


def eval_loader(ds: Dataset, collator: Collator, batch_size: int) -> tuple[DataLoader, np.ndarray]:
    """Batches sorted by length (little padding) and the order to put predictions back in row order."""
    order = np.argsort(row_lengths(ds), kind="stable")
    loader = DataLoader(ds.select(order.tolist()), batch_size=batch_size, shuffle=False, collate_fn=collator)
    return loader, order
