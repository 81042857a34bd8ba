"""Recipe YAML -> typed, validated config.

Every section of a recipe is a dataclass below. `load_recipe` reads the YAML and builds them with `from_dict`, which
rejects unknown keys and wrong types with one error that names the file and the dotted key
(e.g. ``pipelines/x.yaml: teacher.lr: expected float, got 'fast'``).

Later stages add their own sections here: one dataclass per section, documented field by field, with defaults that
run offline.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from compress.errors import CompressError


# --------------------------------------------------------------------------------------------------------- sections
@dataclass
class TaskConfig:
    """What to learn and from which files."""

    name: str
    """GLUE task (sst2, mrpc, rte, cola, stsb, qnli, mnli, qqp, wnli) or any name for a custom task."""
    data_dir: Optional[str] = None
    """GLUE-format folder. Default: ``$GLUE_DIR/<Task>`` or ``../shared/data/glue/<Task>`` for GLUE tasks."""
    max_length: int = 128
    """Tokens per row after truncation (special tokens included)."""
    max_train_samples: Optional[int] = None
    """Use only the first N training rows (after a seeded shuffle). None: all."""
    max_eval_samples: Optional[int] = None
    """Use only the first N dev rows. None: all."""
    holdout: float = 0.05
    """Fraction of train held out for checkpoint selection (dev is reported, never used to select)."""
    holdout_max: int = 2000
    """Upper bound on the held-out rows."""
    group_by_length: bool = True
    """Length-grouped batches (rows of similar length together): far less padding."""
    # -- custom tasks (ignored for GLUE names) --
    files: Optional[dict[str, str]] = None
    """Custom task: split -> file (.tsv, .csv, .jsonl), e.g. {train: a.tsv, dev: b.tsv}."""
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    labels: Optional[list[str]] = None
    """Custom task: label names in index order. None with ``regression: true`` for a real-valued target."""
    regression: bool = False
    hub_dataset: Optional[str] = None
    """Custom task read with ``datasets.load_dataset(hub_dataset)`` (needs the network; not used offline)."""
    metrics: Optional[list[str]] = None
    """Custom task: metric names (accuracy, f1, matthews_correlation, pearson, spearmanr); first one selects."""

    def validate(self, file: str, where: str) -> None:
        if self.max_length < 8:
            raise CompressError(f"{file}: {where}.max_length: must be >= 8, got {self.max_length}")
        if not 0.0 <= self.holdout < 0.5:
            raise CompressError(f"{file}: {where}.holdout: must be in [0, 0.5), got {self.holdout}")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise CompressError(f"{file}: {where}.{key}: must be >= 1, got {value}")


@dataclass
class TrainConfig:
    """Optimisation settings shared by teacher fine-tuning and student distillation."""

    epochs: float = 3.0
    lr: float = 5.0e-5
    batch_size: int = 32
    grad_accum: int = 1
    """Gradient accumulation steps: the effective batch is batch_size x grad_accum x processes."""
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (overrides epochs when smaller)."""
    eval_every: Optional[int] = None
    """Also evaluate on the held-out slice every N optimizer steps (always at each epoch end)."""
    checkpoint_every: Optional[int] = None
    """Save a resumable checkpoint every N optimizer steps (None: only at the end)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocast (AVX-512 BF16 on CPU, tensor cores on GPU)."""
    seed: Optional[int] = None
    """None: the recipe's seed."""

    def validate(self, file: str, where: str) -> None:
        positive = {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size, "grad_accum": self.grad_accum}
        for key, value in positive.items():
            if value <= 0:
                raise CompressError(f"{file}: {where}.{key}: must be > 0, got {value}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise CompressError(f"{file}: {where}.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        for key in ("max_steps", "eval_every", "checkpoint_every"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise CompressError(f"{file}: {where}.{key}: must be >= 1, got {value}")


@dataclass
class TeacherConfig(TrainConfig):
    """The model to fine-tune on the task."""

    model: str = "minilm-l6"
    """Zoo name (minilm-l6, mpnet-base), a local folder, or a hub id (online only)."""


@dataclass
class Recipe:
    name: str
    task: TaskConfig
    teacher: TeacherConfig
    seed: int = 42
    runs_dir: str = "runs"
    """Where run folders go: <runs_dir>/<name>/<stage>/."""
    # where the recipe came from (not a YAML key)
    path: Optional[str] = field(default=None, metadata={"internal": True})

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def section(self, name: str) -> dict:
        """A section as plain data (for fingerprints and manifests)."""
        value = getattr(self, name)
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# ------------------------------------------------------------------------------------------------------- loading
def load_recipe(path: str | os.PathLike, overrides: Optional[dict] = None) -> Recipe:
    """Read and validate a recipe YAML file. ``overrides`` are dotted keys, e.g. {"teacher.epochs": 1}."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CompressError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CompressError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    data.setdefault("name", path.stem)
    recipe = from_dict(Recipe, data, file=str(path))
    recipe.path = str(path)
    return recipe


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def from_dict(cls: type, data: Any, *, file: str = "<recipe>", where: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, strictly: unknown keys, missing keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise CompressError(f"{file}: {where or 'recipe'}: expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(fields)
        raise CompressError(f"{file}: {_join(where, unknown[0])}: unknown key (known keys: {known})")
    kwargs = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], file, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise CompressError(f"{file}: {key}: required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(file, where)
    return obj


def _coerce(tp: Any, value: Any, file: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, file, key)
            except CompressError as e:
                errors.append(e)
        raise errors[-1] if len(errors) == 1 else CompressError(
            f"{file}: {key}: expected {_name(tp)}, got {_show(value)}")
    if origin is Literal:
        if value not in args:
            raise CompressError(f"{file}: {key}: expected one of {list(args)}, got {_show(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise CompressError(f"{file}: {key}: expected a list, got {_show(value)}")
        return [_coerce(args[0], v, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise CompressError(f"{file}: {key}: expected a mapping, got {_show(value)}")
        return {_coerce(args[0], k, file, key): _coerce(args[1], v, file, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, file=file, where=key)
    if tp is bool:
        if not isinstance(value, bool):
            raise CompressError(f"{file}: {key}: expected true/false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CompressError(f"{file}: {key}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CompressError(f"{file}: {key}: expected a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise CompressError(f"{file}: {key}: expected a string, got {_show(value)}")
        return value
    raise TypeError(f"config type {tp!r} for {key} is not supported")  # a bug in our dataclasses, not user input


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
