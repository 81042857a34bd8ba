"""Task data: GLUE folders, generic local files and hub datasets -> tokenized `datasets.Dataset`s -> padded batches.

Rows are read into a `datasets.Dataset` with the columns ``text``, ``text_pair`` (pair tasks) and ``label``
(class index, or float for regression). Local files are read, and every row checked, by `compress.rows` (standard
library only, so that `compress validate` can check them without torch); hub datasets by `datasets`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
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
from compress.rows import (check_eval_labels, check_train_labels, has_test_labels, holdout_rows,  # noqa: F401
                           label_index, read_rows, read_split)
# the task table lives apart (standard library only: recipe validation needs it without torch); re-exported here
from compress.tasks import DEFAULT_GLUE_DIR, GLUE_TASKS, TaskSpec, data_dir, data_files, task_spec  # noqa: F401

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ reading

_READ: dict[tuple, Dataset] = {}
"""Local splits read by this process, by file identity (path, inode, size, mtime) and task layout: every stage of a
run reads the task again (reading and checking SST-2's 67k training rows took ~0.3 s each time). Datasets are not
changed in place here (`select`, `add_column`... make new ones), so one is shared."""
READ_KEPT = 8


def load_split(cfg: TaskConfig, split: str, spec: Optional[TaskSpec] = None) -> Dataset:
    """One split as a Dataset with columns text, [text_pair,] label."""
    spec = spec or task_spec(cfg)
    if cfg.hub_dataset:
        return _load_hub(cfg, spec, split)
    path = data_dir(cfg, spec) / spec.files.get(split, "")
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, split, repr(spec))
    except OSError:  # read_split says what is missing
        key = None
    if key is None or key not in _READ:
        ds = Dataset.from_dict(read_split(cfg, split, spec))
        if key is None:
            return ds
        while len(_READ) >= READ_KEPT:
            del _READ[next(iter(_READ))]  # the oldest
        _READ[key] = ds
    return _READ[key]


def _load_hub(cfg: TaskConfig, spec: TaskSpec, split: str) -> Dataset:
    import contextlib
    from unittest import mock

    import datasets
    import huggingface_hub.constants

    from compress import hub

    hub_split = {"dev": "validation"}.get(split, split)
    name = cfg.hub_dataset.split(":")[0]
    tsv = sorted(p.name for p in Path(name).rglob("*.tsv")) if os.path.isdir(name) else []
    if tsv:  # load_dataset reads them with CSV quoting: quotes dropped, rows between two quotes merged into one
        raise CompressError(f"task.hub_dataset: {name} is a local folder of .tsv files ({tsv[0]}): the datasets "
                            f"library would read them with CSV quoting (a text's quotes dropped, rows merged); give "
                            f"them as task.files instead (read GLUE-style, quotes kept)")
    offline = not os.path.exists(name) and not hub.reachable()
    with contextlib.ExitStack() as stack:
        if offline:  # the datasets cache only: without this, five retries (~23 s here) before the same failure
            stack.enter_context(mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True))
            stack.enter_context(mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True))
        try:
            args = cfg.hub_dataset.split(":")
            as_text = _cells_as_text(args)
            ds = datasets.load_dataset(*args, split=hub_split, **as_text)
        except Exception as e:  # the hub library raises many types; the user needs one line
            why = (" (the hub cannot be reached and the datasets cache does not hold it: use task.files with local "
                   "files, or run once online)" if offline else "")
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CompressError(f"task.hub_dataset: could not load {cfg.hub_dataset!r} split {hub_split!r}: "
                                f"{first}{why}") from None
    keep = {spec.text: "text", spec.label: "label"}
    if spec.text_pair:
        keep[spec.text_pair] = "text_pair"
    missing = [c for c in keep if c not in ds.column_names]
    if missing:
        raise CompressError(f"task.hub_dataset {cfg.hub_dataset}: column {missing[0]!r} not found "
                            f"(columns: {', '.join(ds.column_names)})")
    ds = ds.select_columns(list(keep)).rename_columns(keep)
    if as_text:  # read by the csv builder (pandas), which drops the first line's byte-order mark only
        ds = _drop_joined_boms(ds)
    as_index = ds.features.copy()
    as_index["label"] = datasets.Value("int64")  # else datasets keeps the column's type: indices '0', '1' (or 0.0)
    if spec.labels is not None and ds.features["label"].dtype in ("string", "large_string"):  # datasets 5: large_string
        ds = ds.map(lambda r: {"label": _hub_label(cfg, spec, hub_split, r["label"])}, features=as_index)
    elif spec.labels is not None and isinstance(ds.features["label"], datasets.ClassLabel):
        ds = _hub_class_labels(cfg, spec, hub_split, ds)
    elif spec.labels is not None and _numbered(spec.labels) and str(ds.features["label"].dtype).startswith(
            ("int", "uint", "float")):  # labels "1", "0": the value 1 (or 1.0, a column pandas wrote with a gap) is
        # the label named "1", as in local files, not index 1; 0.5 or nan is named by nothing and refused
        named = {int(x): x for x in spec.labels}  # "+1" names the value 1 too
        ds = ds.map(lambda r: {"label": _hub_label(cfg, spec, hub_split, None if r["label"] is None
                                                   else named.get(r["label"], str(r["label"])))}, features=as_index)
    _check_hub_rows(cfg, spec, hub_split, ds, {v: k for k, v in keep.items()})
    return ds


def _cells_as_text(args: list[str]) -> dict:
    """What `load_dataset` needs to read a CSV (or TSV) dataset's cells as local files are read: its csv builder reads
    them with pandas' NA strings, so a text "None", "NA", "n/a" or "null" became a missing value (the row refused as
    having no text, a label named "NA" as no label). An empty cell is still missing. Other builders (parquet, JSON)
    refuse these options, hence the look at the builder first."""
    import datasets
    from datasets.packaged_modules.csv.csv import CsvConfig

    if not isinstance(datasets.load_dataset_builder(*args).config, CsvConfig):
        return {}
    return {"keep_default_na": False, "na_values": [""]}


def _drop_joined_boms(ds: Dataset) -> Dataset:
    """A CSV dataset's cells without a leading byte-order mark: one at the start of a later line (files joined with
    ``cat``, each saved with a mark) stayed in that row's first cell (a text starting with U+FEFF, a label refused as
    '\\ufeffneg'), where local files drop it (`compress.rows`). A mark is never text at a cell's start."""
    cols = [c for c in ds.column_names if getattr(ds.features[c], "dtype", None) in ("string", "large_string")]
    if not any(isinstance(v, str) and v.startswith("\ufeff") for c in cols for v in ds[c]):
        return ds
    return ds.map(lambda r: {c: r[c].lstrip("\ufeff") if isinstance(r[c], str) else r[c] for c in cols},
                  features=ds.features)


def _check_hub_rows(cfg: TaskConfig, spec: TaskSpec, split: str, ds: Dataset, columns: dict[str, str]) -> None:
    """One line for a hub dataset's row that local files would have refused (and training met as a traceback): a text
    that is missing or not a string, a label that is not one of the task's class indices (a plain integer column's
    2 of two labels, an unlabelled split's -1, 0.5), a regression target that is not a finite number. ``columns``:
    the dataset's names of the text, text_pair and label columns."""
    where = f"task.hub_dataset {cfg.hub_dataset} split {split!r}"
    for key in ("text", "text_pair"):
        if key in ds.column_names:
            bad = next((i for i, t in enumerate(ds[key]) if not isinstance(t, str) or not t.strip()), None)
            if bad is not None:
                raise CompressError(f"{where}: row {bad} has no text in column {columns[key]!r} "
                                    f"(got {ds[bad][key]!r})")
    for i, value in enumerate(ds["label"]):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        what = "a finite number"
        if spec.labels is not None:
            ok = ok and value == int(value) and 0 <= value < len(spec.labels)
            what = f"a class index 0..{len(spec.labels) - 1} of {spec.labels}"
        if not ok:
            raise CompressError(f"{where}: row {i}'s label {value!r} in column {columns['label']!r} is not {what}")


def _hub_class_labels(cfg: TaskConfig, spec: TaskSpec, split: str, ds: Dataset) -> Dataset:
    """A hub dataset's class indices in ``task.labels``' order: put there by name (case aside, as a head's names are
    matched) where its classes are the task's labels in another order, else taken by position (glue:sst2's
    negative/positive for "0", "1"); a class count other than the labels' is refused."""
    import datasets

    names = ds.features["label"].names
    if len(names) != len(spec.labels):
        raise CompressError(f"task.hub_dataset {cfg.hub_dataset} split {split!r}: its label column has {len(names)} "
                            f"classes {names}; task.labels lists {len(spec.labels)}: {spec.labels}")
    low, wanted = [n.lower() for n in names], [str(x).lower() for x in spec.labels]
    if len(set(wanted)) < len(wanted):  # labels that differ only in case: by exact name
        low, wanted = list(names), list(spec.labels)
    if sorted(low) != sorted(wanted):
        log.info("task.hub_dataset %s: its classes %s taken as task.labels %s by position", cfg.hub_dataset, names,
                 spec.labels)
        return ds
    if low == wanted:
        return ds
    order = [wanted.index(name) for name in low]
    features = ds.features.copy()
    features["label"] = datasets.ClassLabel(names=spec.labels)
    return ds.map(lambda r: {"label": order[r["label"]] if r["label"] >= 0 else r["label"]}, features=features)


def _numbered(labels: list[str]) -> bool:
    """Label names that are integers other than 0..n-1 in order ("1", "0"; "1", "2", "3"): an integer label column
    holds these names, not indices into them."""
    try:
        return [int(x) for x in labels] != list(range(len(labels)))
    except ValueError:
        return False


def _hub_label(cfg: TaskConfig, spec: TaskSpec, split: str, name: Optional[str]) -> int:
    """A hub dataset's label name -> its index in ``task.labels`` (surrounding spaces ignored, as in local files)."""
    if name is None:
        raise CompressError(f"task.hub_dataset {cfg.hub_dataset} split {split!r}: a row has no label")
    index = label_index(name.strip(), spec.labels)
    if index is None:
        raise CompressError(f"task.hub_dataset {cfg.hub_dataset} split {split!r}: label {name.strip()!r} is not one of "
                            f"{spec.labels}")
    return index


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
    dev_split_rows: Optional[int] = None
    """The dev split's rows before ``task.max_eval_samples`` (``dev`` holds its first rows only when fewer)."""
    test_split_rows: Optional[int] = None
    """The same of the labelled test split, where there is one."""


def load_task(cfg: TaskConfig, seed: int = 42) -> TaskData:
    """Train (minus a seeded held-out slice), holdout, dev and, where labelled, test."""
    spec = task_spec(cfg)
    full = load_split(cfg, "train", spec)
    check_train_labels(cfg, spec, full["label"])
    full = full.shuffle(seed=seed)  # an indices mapping: only the rows kept are copied below (all 67k of SST-2's,
    # copied at every load before, took ~1 s of each stage, with most runs keeping a few thousand)
    n_hold = holdout_rows(cfg, len(full))
    end = len(full) if cfg.max_train_samples is None else min(n_hold + cfg.max_train_samples, len(full))
    with _no_bars():  # a fraction of a second: its "Flattening the indices" bars were two lines of every stage's log
        holdout = full.select(range(n_hold)).flatten_indices()
        train = full.select(range(n_hold, end)).flatten_indices()
    dev = load_split(cfg, "dev", spec)
    dev_split_rows = len(dev)
    if cfg.max_eval_samples is not None:
        dev = dev.select(range(min(cfg.max_eval_samples, len(dev))))
    check_eval_labels(cfg, spec, dev["label"], "dev")
    test, test_split_rows = load_test(cfg, spec)
    if test is not None:
        check_eval_labels(cfg, spec, test["label"], "test")
    return TaskData(spec, train, holdout, dev, test, dev_split_rows, test_split_rows)


def bar_off(off: bool) -> dict:
    """tqdm's ``disable`` where a bar is off (another process's, an unnamed pass): given as ``disable=False``
    otherwise, it overrode ``TQDM_DISABLE=1``, and training bars filled a log that asked for none."""
    return {"disable": True} if off else {}


@contextlib.contextmanager
def _no_bars():
    """datasets' progress bars off for what is inside (as they were after)."""
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    was = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        yield
    finally:
        if was:
            enable_progress_bar()


def load_test(cfg: TaskConfig, spec: Optional[TaskSpec] = None) -> tuple[Optional[Dataset], Optional[int]]:
    """The task's labelled test split (MRPC's), its first rows only under ``task.max_eval_samples`` as dev, and its
    rows before the cap; ``(None, None)`` for a task without one."""
    spec = spec or task_spec(cfg)
    if "test" not in spec.files or not has_test_labels(cfg, spec):
        return None, None
    test = load_split(cfg, "test", spec)
    rows = len(test)
    if cfg.max_eval_samples is not None:
        test = test.select(range(min(cfg.max_eval_samples, rows)))
    return test, rows


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
    """Batches sorted by length (little padding) and the order to put predictions back in row order. The loader has
    a generator of its own: iterating a DataLoader draws a base seed from its generator, from the global torch RNG
    without one, so a held-out evaluation during training shifted every later dropout mask (turning ``eval_every`` on
    or off changed the trained model)."""
    order = np.argsort(row_lengths(ds), kind="stable")
    loader = DataLoader(ds.select(order.tolist()), batch_size=batch_size, shuffle=False, collate_fn=collator,
                        generator=torch.Generator())
    return loader, order
