"""Task specs: the GLUE tasks' file layouts and metrics, a custom task's spec from its config, and where its files
are. Standard library only, so that validating a recipe (`compress validate`, `--dry-run`) does not import torch;
``compress.data`` re-exports everything here and does the reading."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from compress.config import TaskConfig
from compress.errors import CompressError

_CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_GLUE_DIR = (_CHECKOUT.parent / "shared" / "data" / "glue" if (_CHECKOUT / "pyproject.toml").is_file()
                    else Path("glue"))
"""Where GLUE task folders (SST-2/, MRPC/...) are read from without ``GLUE_DIR`` or ``task.data_dir``: ../shared/data/
glue beside a source checkout; ./glue (the working folder's) for an installed package, which has no such neighbour."""


def missing_hint(cfg: TaskConfig, spec: "TaskSpec", path: Path, recipe_dir: Optional[Path] = None) -> str:
    """What to set when a task's file (``path``) is missing from the folder it was looked for in: "" where the recipe
    named its folder (``task.data_dir``) or a custom task's file path is absolute. A custom task's relative ``files``
    are read from the working folder, not the recipe's: `compress run walk/r.yaml` said only "train.csv: file not
    found" (with ``recipe_dir``, the recipe's folder, the hint names it when the file is there)."""
    if cfg.data_dir:
        return ""
    if not spec.folder:
        if path.is_absolute():
            return ""
        beside = recipe_dir is not None and (recipe_dir / path).is_file() and recipe_dir.resolve() != Path.cwd()
        where = f"task.data_dir: {recipe_dir}, where the recipe and that file are" if beside else \
            "task.data_dir to the folder that holds them"
        return (f" (without task.data_dir, task.files are read from the folder compress runs in, {Path.cwd()}; "
                f"set {where})")
    where = "GLUE_DIR" if os.environ.get("GLUE_DIR") else f"the default {DEFAULT_GLUE_DIR}"
    return (f" (looked in {where}: set GLUE_DIR to the folder holding {spec.folder}/, or task.data_dir to the "
            f"{spec.folder} folder)")


@dataclass
class TaskSpec:
    """How one task's files are laid out and scored."""

    name: str
    folder: str
    text: str
    text_pair: Optional[str]
    label: str
    labels: Optional[list[str]]  # None: regression
    metrics: list[str]
    files: dict[str, str] = field(default_factory=lambda: {"train": "train.tsv", "dev": "dev.tsv"})
    header: bool = True
    """False: files have no header row and columns are given by index (CoLA)."""

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


METRIC_NAMES = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")
"""Every metric compress.metrics computes (checked there), for validating a recipe without importing it."""
REGRESSION_METRICS = ("pearson", "spearmanr")
"""The metrics of a regression task (one output); the others score classes (argmax)."""


def retention(metric: Optional[float], teacher: Optional[float]) -> Optional[float]:
    """``metric`` as a fraction of the teacher's; None where that is no share: either score missing or not finite (a
    pearson of constant predictions), or a teacher at or below 0 (an MCC of a one-label predictor: a student's 0.10
    over a teacher's -0.05 read -200%)."""
    scores = (metric, teacher)  # a hand-edited manifest's text is no score either
    if not all(isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in scores) \
            or teacher <= 0:
        return None
    return metric / teacher


def round_down(value: float, digits: int) -> float:
    """``value`` cut to ``digits`` decimals, for display: a retention of 0.98996 shows as 98.9%, a speedup of 3.998 as
    3.9x, never as the 99.0% / 4.0x a target would be met at (rounding to nearest did). The tiny slack keeps 0.29
    (0.28999... in binary) at 0.29."""
    scale = 10 ** digits
    return math.floor(value * scale + 1e-9) / scale


def constant_score(metric: str) -> str:
    """What ``metric`` of a model predicting one label for every row is, in words."""
    return {"accuracy": "that label's share", "f1": "that of predicting one label (2p/(1+p) or 0)",
            "matthews_correlation": "0 (no correlation)"}.get(metric, "that of a constant predictor")


_BINARY = ["0", "1"]
_NLI2 = ["entailment", "not_entailment"]
GLUE_TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "SST-2", "sentence", None, "label", _BINARY, ["accuracy"]),
    "mrpc": TaskSpec("mrpc", "MRPC", "#1 String", "#2 String", "Quality", _BINARY, ["f1", "accuracy"],
                     files={"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}),
    "rte": TaskSpec("rte", "RTE", "sentence1", "sentence2", "label", _NLI2, ["accuracy"]),
    "cola": TaskSpec("cola", "CoLA", "3", None, "1", _BINARY, ["matthews_correlation"], header=False),
    "stsb": TaskSpec("stsb", "STS-B", "sentence1", "sentence2", "score", None, ["pearson", "spearmanr"]),
    "qnli": TaskSpec("qnli", "QNLI", "question", "sentence", "label", _NLI2, ["accuracy"]),
    "mnli": TaskSpec("mnli", "MNLI", "sentence1", "sentence2", "gold_label",
                     ["contradiction", "entailment", "neutral"], ["accuracy"],
                     files={"train": "train.tsv", "dev": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv"}),
    "qqp": TaskSpec("qqp", "QQP", "question1", "question2", "is_duplicate", _BINARY, ["f1", "accuracy"]),
    "wnli": TaskSpec("wnli", "WNLI", "sentence1", "sentence2", "label", _BINARY, ["accuracy"]),
}


LABELS_NEEDED = "two or more distinct, non-empty label names are needed"


def good_labels(labels: list[str]) -> bool:
    """Label names a classifier can be trained and shipped with: two or more, distinct, none blank."""
    return len(labels) >= 2 and len(set(labels)) == len(labels) and all(str(x).strip() for x in labels)


def task_spec(cfg: TaskConfig) -> TaskSpec:
    """The spec of a GLUE task by name, or one built from a custom task's config."""
    if cfg.name in GLUE_TASKS and not cfg.files and not cfg.hub_dataset:
        return GLUE_TASKS[cfg.name]
    if not cfg.files and not cfg.hub_dataset:
        raise CompressError(f"task.name: {cfg.name!r} is not a GLUE task ({', '.join(GLUE_TASKS)}); "
                            f"a custom task needs task.files or task.hub_dataset")
    if cfg.labels is None and not cfg.regression:
        raise CompressError("task.labels: a custom classification task must list its labels (or set regression: true)")
    if cfg.regression and cfg.labels is not None:
        raise CompressError("task.labels: a regression task has no labels (drop labels or regression: true)")
    labels = None if cfg.regression else [str(x) for x in cfg.labels]
    twice = [x for i, x in enumerate(labels or []) if x in labels[:i]]
    if twice:  # the LABELS_NEEDED line listed them all without saying which
        raise CompressError(f"task.labels: {twice[0]!r} is listed twice, got {cfg.labels!r}")
    if labels is not None and not good_labels(labels):
        raise CompressError(f"task.labels: {LABELS_NEEDED}, got {cfg.labels!r}")
    spaced = [x for x in labels or [] if x != x.strip()]
    if spaced:  # label cells are read stripped: no row could have it, said only once the data was read
        raise CompressError(f"task.labels: {spaced[0]!r} has spaces around it; the data's label cells are read without "
                            f"them, so no row could have it")
    unknown = [m for m in cfg.metrics or [] if m not in METRIC_NAMES]
    if unknown or cfg.metrics == []:
        what = f"{unknown[0]!r} is unknown" if unknown else "the list is empty"
        raise CompressError(f"task.metrics: {what} (known: {', '.join(METRIC_NAMES)})")
    for m in cfg.metrics or []:
        if (m in REGRESSION_METRICS) != bool(cfg.regression):
            kind, fit = (("a regression task", ", ".join(REGRESSION_METRICS)) if cfg.regression else
                         ("a classification task", ", ".join(n for n in METRIC_NAMES if n not in REGRESSION_METRICS)))
            raise CompressError(f"task.metrics: {m!r} does not score {kind} (use {fit})")
        if m == "f1" and labels is not None and len(labels) != 2:
            raise CompressError(f"task.metrics: 'f1' is the F1 of the second label of a two-label task (as GLUE's); "
                                f"with {len(labels)} labels use accuracy or matthews_correlation")
    missing = [split for split in ("train", "dev") if cfg.files and split not in cfg.files]
    if missing and not cfg.hub_dataset:
        raise CompressError(f"task.files: no {missing[0]!r} file (train and dev are needed; test is optional)")
    metrics = cfg.metrics or (["pearson", "spearmanr"] if cfg.regression else ["accuracy"])
    return TaskSpec(cfg.name, "", cfg.text_column, cfg.text_pair_column, cfg.label_column, labels, metrics,
                    files=dict(cfg.files or {}))


def data_dir(cfg: TaskConfig, spec: TaskSpec) -> Path:
    if cfg.data_dir:
        return Path(cfg.data_dir)
    root = Path(os.environ.get("GLUE_DIR") or DEFAULT_GLUE_DIR)  # GLUE_DIR= (empty) is unset, not "."
    return root / spec.folder if spec.folder else Path(".")


def split_paths(cfg: TaskConfig) -> dict[str, Path]:
    """Split name -> the local file it is read from; empty for hub datasets."""
    if cfg.hub_dataset:
        return {}
    spec = task_spec(cfg)
    folder = data_dir(cfg, spec)
    return {split: folder / name for split, name in spec.files.items()}


def data_files(cfg: TaskConfig) -> list[Path]:
    """The local files a task reads (for input hashes in manifests): its split files, or every file of a local
    ``hub_dataset`` folder (what ``load_dataset`` may read there); none for a hub dataset id (its commit stands for
    them: compress.pipeline)."""
    if cfg.hub_dataset:
        folder = Path(cfg.hub_dataset.split(":")[0])
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.rglob("*") if p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return [path for path in split_paths(cfg).values() if path.is_file()]


def missing_files(cfg: TaskConfig) -> list[Path]:
    """The files a run will read (train, dev, and a custom task's test file) that are not there. A GLUE task's test
    file (MRPC's labelled one) is an extra: without it a run has no test metrics (`has_test_labels`)."""
    paths = split_paths(cfg)
    splits = ("train", "dev", "test") if cfg.files else ("train", "dev")
    return [paths[s] for s in splits if s in paths and not paths[s].is_file()]
