"""Reading a task's local files (GLUE folders, CSV/TSV/JSONL/JSON) into columns, with the standard library only:
`compress validate` checks a recipe's data files with it without importing torch. Every problem a user can cause
(missing file or column, empty split, unknown label, a label that is not a finite number, a file that is not UTF-8) is
a `CompressError` naming the file and, where there is one, the line. A custom task's files are held to more: a row with
more fields than the header (an unquoted comma), a blank text, or a JSON text that is not a string is refused too;
GLUE files are read as GLUE distributes them (quoting off: their sentences hold bare double quotes; any byte-order mark
stripped).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import re
import sys
import unicodedata
from pathlib import Path
from typing import Optional

from compress.config import TaskConfig
from compress.errors import CompressError
from compress.tasks import TaskSpec, data_dir, missing_hint, split_paths, task_spec

csv.field_size_limit(sys.maxsize)
log = logging.getLogger(__name__)
_WARNED: set = set()  # (file, label) pairs already warned of: every stage reads the task again
SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")  # what `read_rows` reads; anything else is refused, not guessed


def read_rows(path: Path) -> tuple[list[str], list[list], list[int]]:
    """Rows of a TSV (quoting off), CSV (standard quoting), JSONL or JSON file: (header, rows, line numbers).

    The file must be UTF-8; a byte-order mark is dropped and empty lines are skipped. A ``.json`` file holding a
    JSON array is a list of row objects; any other ``.json`` file, like a ``.jsonl`` one, has one object per line.
    JSON cells keep their JSON type (`load_split` checks them); TSV and CSV cells are strings.
    """
    if not path.is_file():
        raise CompressError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CompressError(f"{path}: unknown file type {path.suffix or '(no extension)'!r}: a data file is "
                            f"{', '.join(SUFFIXES)}")
    text = _read_text(path)
    if suffix == ".json" and text.lstrip(" \t\r\n").startswith("["):
        return _read_json_array(path, text)
    if suffix == ".jsonl" or suffix == ".json":
        return _read_jsonl(path, io.StringIO(text, newline=""))
    delimiter = "," if suffix == ".csv" else "\t"
    quoting = csv.QUOTE_MINIMAL if suffix == ".csv" else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header, rows, lines, end = None, [], [], 0
    raw = functools.cache(lambda: io.StringIO(text, newline="").readlines())  # the lines the reader numbers, split
    for row in reader:  # once, only when a field needs a second look
        start, end = end + 1, reader.line_num  # a quoted field may span lines: a row is named by its first
        row = [c.rstrip("\r") for c in row]
        if not any(c.strip() for c in row):
            continue
        padded = next((i for i, c in enumerate(row) if suffix == ".csv" and _PADDED_QUOTED.fullmatch(c)
                       and _quoted_after_space(raw()[start - 1:end], i, c)), None)
        if padded is not None:  # `1, "great movie", pos`: CSV reads ` "great movie"`, quotes and all
            raise CompressError(f"{path}:{start}: field {padded + 1} is {row[padded][:40]!r}: a space before its "
                                f"opening '\"' makes the quotes part of the text; remove the space after the comma")
        if header is None:
            header = row
            _check_delimiter(path, start, header)
            continue
        if end > start and len(row) < len(header):  # a quote never closed swallows the lines after it
            raise CompressError(f"{path}:{start}: expected {len(header)} {_separated(path)} fields, got {len(row)}: "
                                f"a quoted field runs from line {start} to line {end} (a '\"' never closed?)")
        rows.append(row)
        lines.append(start)
    if header is None:
        raise CompressError(f"{path}: file is empty")
    if suffix == ".csv":
        _check_csv_quotes(path, text)
    return header, rows, lines


def _check_delimiter(path: Path, line: int, header: list[str]) -> None:
    """Refuse a header read as one column that another delimiter would split: a ';'-separated .csv (Excel's export
    where the decimal mark is a comma) stopped on its first quoted text with an error about quotes."""
    if len(header) != 1:
        return
    ours = "," if path.suffix.lower() == ".csv" else "\t"
    other = next((d for d in (";", "\t", ",", "|") if d != ours and d in header[0]), None)
    if other is not None:
        said = {"\t": "tab", ";": "';'", ",": "comma", "|": "'|'"}
        hint = ("name it .tsv" if other == "\t" else "name it .csv" if other == "," else
                "save it again comma-separated" + (" (or tab-separated, as .tsv)" if ours == "," else ", as .csv"))
        raise CompressError(f"{path}:{line}: the header {header[0][:60]!r} reads as one column: a {path.suffix} file "
                            f"is read {said[ours]}-separated, and this one looks {said[other]}-separated; {hint}")


_PADDED_QUOTED = re.compile(r'\s+".*"\s*', re.S)
"""A CSV field quoted after a space (``a, "b"``): CSV quotes only a field's first character."""


def _quoted_after_space(lines: list[str], index: int, field: str) -> bool:
    """Whether field ``index`` of the CSV row written on ``lines``, read as ``field`` (matching `_PADDED_QUOTED`), is
    quotes written after a space (``1, "great"``: read again skipping the space, it is another text), not a quoted
    text that starts with a space and a quote (``1," ""Great"" is the word"``, as pandas writes it: read the same
    either way)."""
    again = next(csv.reader(lines, skipinitialspace=True), [])
    return index >= len(again) or again[index].rstrip("\r") != field


def _check_csv_quotes(path: Path, text: str) -> None:
    """Refuse a CSV field whose quotes do not close where the field ends: read leniently (as `read_rows` does),
    ``"awful" movie`` became ``awful movie`` and a stray '"' merged the lines up to the next one into one row."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    end = 0
    try:
        for _ in reader:
            end = reader.line_num
    except csv.Error as e:
        start, line = end + 1, reader.line_num
        if str(e) == "unexpected end of data":
            raise CompressError(f"{path}:{start}: a quoted field runs from line {start} to the end of the file (a "
                                f"'\"' never closed?)") from None
        runs = f" (the field runs from line {start} to line {line})" if line > start else ""
        raise CompressError(f"{path}:{start}: a quoted field has text after its closing '\"'{runs}: quote the whole "
                            f"field and double each '\"' inside it") from None


def _read_text(path: Path) -> str:
    """The file's text, without a byte-order mark; bytes that are not UTF-8 are an error naming the line. A mark at the
    start of a later line (files joined with ``cat``) is dropped too: it stayed in that row's first cell (a text that
    starts with it, a label refused as U+FEFF and its name, a JSON line refused as not JSON)."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\x00" in data:  # UTF-16 without its byte-order mark decodes as "UTF-8" with a NUL in every other byte
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise CompressError(f"{path}:{line}: a NUL byte: not UTF-8 text (UTF-16?); the file must be UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, byte = data.count(b"\n", 0, e.start) + 1, data[e.start]
        raise CompressError(f"{path}:{line}: not UTF-8 text (byte {byte:#04x}); the file must be UTF-8") from None
    return _JOINED_BOM.sub("", text) if "\ufeff" in text else text


_JOINED_BOM = re.compile("(?<=[\r\n])\ufeff+")
"""Byte-order marks at the start of a line after the first (the first line's is dropped from the bytes)."""


def _read_jsonl(path: Path, f) -> tuple[list[str], list[list], list[int]]:
    records, lines = [], []
    for n, line in enumerate(f, 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise CompressError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            except (ValueError, RecursionError) as e:  # a number of over 4300 digits; nesting deeper than Python's
                raise CompressError(f"{path}:{n}: JSON this reader cannot take ({_first_sentence(e)})") from None
            lines.append(n)
    return _records_to_rows(path, records, lines)


def _read_json_array(path: Path, text: str) -> tuple[list[str], list[list], list[int]]:
    """A JSON file holding one array of row objects; each row's line is the line its object starts on."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise CompressError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:  # a number of over 4300 digits; nesting deeper than Python's stack
        raise CompressError(f"{path}: JSON this reader cannot take ({_first_sentence(e)})") from None
    if not isinstance(records, list):  # the text starts with '[': valid JSON there is an array
        raise CompressError(f"{path}: expected a JSON array of objects, got {_json_kind(records)}")
    return _records_to_rows(path, records, _element_lines(text))


def _first_sentence(e: Exception) -> str:
    return str(e).split(":")[0].split(";")[0].strip() or type(e).__name__


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
    """JSON rows (objects) -> header (every object's keys, in order of first appearance: a first row without the
    label was "column not found") and cells in header order (None where missing)."""
    if not records:
        raise CompressError(f"{path}: file is empty")
    for record, line in zip(records, lines):
        if not isinstance(record, dict):
            raise CompressError(f"{path}:{line}: expected a JSON object, got {_json_kind(record)}")
    header = list(dict.fromkeys(key for record in records for key in record))
    return header, [[r.get(k, NO_KEY) for k in header] for r in records], lines


NO_KEY = object()
"""The cell of a JSON row whose object lacks that key (null is None): the error says which it was."""


def _json_kind(value) -> str:
    """How an error names a JSON value's type."""
    if isinstance(value, bool):
        return "a boolean"
    kinds = {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def has_test_labels(cfg: TaskConfig, spec: TaskSpec, quiet: bool = False) -> bool:
    """Whether the task's test file carries its label column. GLUE's own MRPC download has an unlabelled test.tsv
    (no ``Quality`` column; the copy in ../shared/data/glue is labelled): it is left out, with a note, instead of
    stopping every run (or `compress validate`). A custom task's test file (task.files) must carry its labels: a
    misnamed label column there is refused, as in its other files."""
    path = split_paths(cfg).get("test")
    if cfg.hub_dataset or cfg.files or path is None:
        return True  # load_split reports what is wrong with it
    if not path.is_file():  # a GLUE folder holding train and dev only: the labelled test split is an extra
        if not quiet:
            print(f"note: {path}: not there: no test metrics", file=sys.stderr)
        return False
    if not spec.header:
        return True
    if spec.label in read_rows(path)[0]:
        return True
    if not quiet:
        print(f"note: {path}: no {spec.label!r} column (an unlabelled test split): no test metrics", file=sys.stderr)
    return False


def read_split(cfg: TaskConfig, split: str, spec: Optional[TaskSpec] = None) -> dict[str, list]:
    """One local split as columns text, [text_pair,] label (class index, or float for regression)."""
    spec = spec or task_spec(cfg)
    if split not in spec.files:
        raise CompressError(f"task {spec.name}: no {split!r} split (splits: {', '.join(spec.files)})")
    path = data_dir(cfg, spec) / spec.files[split]
    if not path.is_file():
        raise CompressError(f"{path}: file not found{missing_hint(cfg, spec, path)}")
    if spec.header:
        header, rows, lines = read_rows(path)
    else:  # headerless (CoLA): the first line is data, columns are indices
        header_row, rows, lines = read_rows(path)
        rows, lines = [header_row] + rows, [_first_row_line(path)] + lines
        header = [str(i) for i in range(max(len(r) for r in rows))]
    columns = {"text": spec.text, "text_pair": spec.text_pair, "label": spec.label}
    index = {}
    for role, name in columns.items():
        if name is None:
            continue
        if name not in header:
            # "a, b" headers: the space is in the name; a second byte-order mark (files joined) too, unseen
            near = [h for h in header if h.strip(" \t\ufeff") == name.strip()]
            what = "the byte-order mark (U+FEFF) in it" if near and "\ufeff" in near[0] else "the spaces around it"
            hint = f"; the header has {near[0]!r}: remove {what}" if near else ""
            shown = ", ".join(h if h.isprintable() else repr(h) for h in header)
            raise CompressError(f"{path}: column {name!r} not found (columns: {shown}){hint}")
        if header.count(name) > 1:  # header.index would read the first silently
            raise CompressError(f"{path}: column {name!r} appears {header.count(name)} times in the header; rename "
                                f"all but one")
        index[role] = header.index(name)
    custom = _is_custom(spec)
    out = {role: [] for role in index}
    if custom and path.suffix.lower() == ".tsv":
        _warn_quoted_tsv(path, rows, lines, [i for role, i in index.items() if role != "label"])
    if custom and spec.text_pair is None:
        _warn_unread_text(path, header, rows, index)
    if spec.header and not custom:
        _warn_long_rows(path, header, rows, lines)
    for row, line in zip(rows, lines):
        if spec.header and (len(row) < len(header) or (custom and len(row) > len(header))):
            raise CompressError(f"{path}:{line}: expected {len(header)} {_separated(path)} fields, got {len(row)}")
        for role, i in index.items():
            value = row[i] if i < len(row) else None
            if value is NO_KEY:
                raise CompressError(f"{path}:{line}: the row has no key {columns[role]!r}")
            if value is None:
                raise CompressError(f"{path}:{line}: column {columns[role]!r} is "
                                    f"{'null' if path.suffix.lower() in ('.json', '.jsonl') else 'empty'}")
            if role == "label":
                out[role].append(_label_text(value))
            else:
                out[role].append(_text_cell(value, columns[role], path, line, custom))
    if not out["text"]:
        raise CompressError(f"{path}: split {split!r} has no rows")
    out["label"] = _encode_labels(out["label"], spec, path, lines)
    return out


def _first_row_line(path: Path) -> int:
    """The line of a headerless TSV's first row: `read_rows` skips the blank lines (and lines of tabs) before it."""
    for n, line in enumerate(io.StringIO(_read_text(path), newline=""), 1):
        if line.replace("\t", "").strip():
            return n
    return 1


def _csv_quoted(cell) -> bool:
    """A cell as a CSV writer quotes it: in double quotes, any quote inside doubled (pandas' ``to_csv(sep="\\t")``)."""
    return (isinstance(cell, str) and len(cell) >= 2 and cell[0] == cell[-1] == '"'
            and '"' not in cell[1:-1].replace('""', ""))


def _warn_quoted_tsv(path: Path, rows: list, lines: list, columns: list[int]) -> None:
    """A custom TSV is read with quoting off (GLUE's convention: bare double quotes are text), so a file written with
    CSV quoting keeps its quotes (and doubled quotes) in the texts: said once per file, naming the first line."""
    if ("quoted", str(path)) in _WARNED:  # every stage reads the task again: scanned and said once
        return
    for row, line in zip(rows, lines):
        if any(i < len(row) and _csv_quoted(row[i]) for i in columns):
            _WARNED.add(("quoted", str(path)))
            log.warning("%s:%d: a text column is in double quotes as a CSV writer quotes it; TSV files are read "
                        "with quoting off, so the quotes stay in the text: write the file without quoting (pandas: "
                        "to_csv(sep='\\t', quoting=csv.QUOTE_NONE)) or as .csv", path, line)
            return


def _warn_long_rows(path: Path, header: list, rows: list, lines: list) -> None:
    """A GLUE file's row longer than its header is read (GLUE's own files are read as distributed), but one whose
    extra fields hold text had a tab inside a sentence: its columns shifted (MRPC: the pair read half of the first
    sentence, the second one dropped). Said once per file, with the count and the first line."""
    if ("long", str(path)) in _WARNED:
        return
    _WARNED.add(("long", str(path)))
    long = [line for row, line in zip(rows, lines) if any(cell.strip() for cell in row[len(header):])]
    if long:
        log.warning("%s:%d: %d row(s) with more fields than the header's %d, the extra ones not empty: a tab inside "
                    "a text shifts the columns after it (those rows are read as their first %d fields)", path,
                    long[0], len(long), len(header), len(header))


def _warn_unread_text(path: Path, header: list, rows: list, index: dict, sample: int = 200) -> None:
    """A single-text custom task whose file has another column of texts (three words or more in most of the first
    ``sample`` rows) is likely a pair task missing ``text_pair_column``: it would train on the first text only.
    Said once per file, naming the column."""
    if ("unread", str(path)) in _WARNED:
        return
    _WARNED.add(("unread", str(path)))
    used = set(index.values())
    head = rows[:sample]
    for i, name in enumerate(header):
        cells = [r[i] for r in head if i < len(r)]
        if i in used or not cells:
            continue
        texts = sum(isinstance(c, str) and len(c.split()) >= 3 for c in cells)
        if texts * 2 > len(cells):
            log.warning("%s: column %r holds texts but is not read (task.text_column is %r): for a text-pair task "
                        "set task.text_pair_column: %s", path, name, header[index["text"]], name)
            return


def check_train_labels(cfg: TaskConfig, spec: TaskSpec, encoded: list) -> None:
    """A custom classification task's training labels (``read_split``'s, all rows): two labels at least (one label
    trains a constant model that every later stage would measure and ship); a listed label with no row is warned of
    (it is never learnt)."""
    if not _is_custom(spec) or spec.is_regression or cfg.hub_dataset:
        return
    path, seen = data_dir(cfg, spec) / spec.files["train"], set(encoded)
    if len(seen) < 2:
        raise CompressError(f"{path}: column {spec.label!r}: every training row has label "
                            f"{spec.labels[encoded[0]]!r}; a classifier needs rows of at least two of {spec.labels}")
    for i, name in enumerate(spec.labels):
        if i not in seen and (str(path), name) not in _WARNED:
            _WARNED.add((str(path), name))
            log.warning("%s: column %r: no training row has label %r (of %s); the model will not learn it",
                        path, spec.label, name, spec.labels)


def check_eval_labels(cfg: TaskConfig, spec: TaskSpec, labels: list, split: str) -> None:
    """A classification task's scored split (``labels``: the rows a run scores, after ``task.max_eval_samples``) of one
    label only is warned of, once: every model's matthews_correlation (and f1, where it is not the label's) is then 0
    whatever it learnt, its accuracy that label's share of its predictions, and the retention, the int8 guards and
    the bundle's pick read those blind scores. A one-class dev file ran to a shipped bundle without a word."""
    if spec.is_regression or len(set(labels)) != 1:
        return
    where = str(data_dir(cfg, spec) / spec.files[split]) if split in spec.files and not cfg.hub_dataset \
        else f"{cfg.hub_dataset or spec.name} {split}"
    if (where, "one label") in _WARNED:
        return
    _WARNED.add((where, "one label"))
    label = spec.labels[labels[0]] if isinstance(labels[0], int) and 0 <= labels[0] < len(spec.labels) else labels[0]
    capped = " (task.max_eval_samples)" if cfg.max_eval_samples is not None else ""
    log.warning("%s: the %d %s rows scored%s all have label %r: their scores cannot tell models apart "
                "(matthews_correlation is 0 whatever a model learnt, accuracy the share of rows it gives that label), "
                "nor can the retention, the int8 guards and the bundle's pick that read them; score on rows of two "
                "labels or more", where, len(labels), split, capped, label)


def _is_custom(spec: TaskSpec) -> bool:
    """A custom task's spec (built by `task_spec` from the config) has no GLUE folder."""
    return not spec.folder


def _separated(path: Path) -> str:
    """How a row error names the file's field delimiter."""
    return "comma-separated" if path.suffix.lower() == ".csv" else "tab-separated"


def _label_text(value) -> str:
    """A label cell as text: a JSON number by its text (1 -> "1"), a JSON boolean as JSON writes it ("true", not
    Python's "True")."""
    if isinstance(value, bool):
        return json.dumps(value)
    return value if isinstance(value, str) else str(value)


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
    encoded = []
    for value, line in zip(values, lines):
        value = value.strip()
        index = label_index(value, spec.labels)
        if index is None:
            raise CompressError(f"{path}:{line}: column {spec.label!r}: label {value!r} is not one of {spec.labels}"
                                f"{_label_hint(value, spec.labels)}")
        encoded.append(index)
    return encoded


_INTEGER = re.compile(r"[-+]?\d+")


def label_index(value: str, labels: list[str]) -> Optional[int]:
    """The index in ``labels`` (the task's names, as the recipe wrote them) of the label ``value`` (a cell's text,
    stripped): the name of that text, else the one name of the same integer (``labels: [-1, +1]`` for cells 1 and -1;
    01 for 1); None when there is none, or two names of that integer."""
    if value in labels:
        return labels.index(value)
    if not _INTEGER.fullmatch(value):
        return None
    same = [i for i, name in enumerate(labels) if _INTEGER.fullmatch(name) and int(name) == int(value)]
    return same[0] if len(same) == 1 else None


def _label_hint(value: str, labels: list[str]) -> str:
    """Why a label cell that looks like one of ``labels`` is none of them: the same letters in another Unicode
    normalization form (the two print alike), or an integer where the names are not numbers (a local file's labels
    are read by name; a hub dataset's integer labels are indices)."""
    if unicodedata.normalize("NFC", value) in [unicodedata.normalize("NFC", x) for x in labels]:
        return (" (the same letters in another Unicode normalization form: the file's are "
                f"{ascii(value)}; write both in NFC)")
    if _INTEGER.fullmatch(value) and not any(_INTEGER.fullmatch(x) for x in labels):
        return " (a local file's labels are read by name, not as indices into task.labels: write the names)"
    return ""


def _regression_label(value: str, spec: TaskSpec, path: Path, line: int) -> float:
    """A regression target: a finite number (nan or inf would only surface later, as a loss that became nan)."""
    try:
        number = float(value)
    except ValueError:
        raise CompressError(f"{path}:{line}: column {spec.label!r}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise CompressError(f"{path}:{line}: column {spec.label!r}: {value!r} is not a finite number")
    if not _PLAIN_NUMBER.fullmatch(value.strip()):  # float() also reads "1_0" as 10 and other scripts' digits
        raise CompressError(f"{path}:{line}: column {spec.label!r}: {value!r} is not a number")
    return number


_PLAIN_NUMBER = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


def holdout_rows(cfg: TaskConfig, n: int, file: str = "") -> int:
    """How many of ``n`` training rows ``task.holdout`` holds out (at most ``holdout_max``); a fraction that rounds
    to none refused (``file``: the recipe, to name in the error)."""
    n_hold = min(cfg.holdout_max, int(round(cfg.holdout * n)))
    if cfg.holdout > 0 and n_hold < 1:
        raise CompressError(f"{file + ': ' if file else ''}task.holdout: {cfg.holdout} of {n} training rows holds out "
                            f"nothing (raise it, or 0 for none)")
    return n_hold
