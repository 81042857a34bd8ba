"""Recipe YAML -> typed, validated config.

Every section of a recipe is a dataclass below. `load_recipe` reads the YAML and builds them with `from_dict`, which
rejects unknown keys and wrong types with one error that names the file and the dotted key
(e.g. ``pipelines/x.yaml: teacher.lr: expected a number, got 'fast'``).

Later stages add their own sections here: one dataclass per section, documented field by field, with defaults that
run offline.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import sys
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Optional, Union

import yaml

from compress.bundle_predict import MAX_THREADS, first_line
from compress.errors import CompressError


MAX_SEED = 2**31 - 1
"""Seeds go to numpy (at most 2**32 - 1, never negative) and to the seeded shuffle, some plus a step offset."""


MAX_INT = 2**63 - 1
"""The largest integer any recipe field takes, what C code takes as a 64-bit integer (islice, numpy: 1e20 stopped a
run with their OverflowError or ValueError traceback); fields with a tighter bound (a seed, threads) check it."""


def check_threads(threads: Optional[int], where: str) -> None:
    """A thread count from 1 to `MAX_THREADS` (1024): a typo's 100000 started that many threads and hung the machine.
    ``where``: what the error starts with (``FILE: bench.threads[0]``, ``--threads``)."""
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise CompressError(f"{where}: must be from 1 to {MAX_THREADS}, got {threads}")


def check_seed(seed: Optional[int], file: str, key: str) -> None:
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise CompressError(f"{file}: {key}: must be from 0 to {MAX_SEED}, got {seed}")


# --------------------------------------------------------------------------------------------------------- sections
CUSTOM_TASK_KEYS = ("text_column", "text_pair_column", "label_column", "labels", "regression", "metrics")
"""`TaskConfig` keys that describe a custom task's files: a GLUE task (without ``files``/``hub_dataset``) has its
own."""


@dataclass
class TaskConfig:
    """What to learn and from which files."""

    name: str
    """GLUE task (sst2, mrpc, rte, cola, stsb, qnli, mnli, qqp, wnli) or any name for a custom task."""
    data_dir: Optional[str] = field(default=None, metadata={"path": True})
    """GLUE-format folder. Default: ``$GLUE_DIR/<Task>`` or ``shared/data/glue/<Task>`` beside the repository folder
    (``../shared`` from it) for GLUE tasks; ``./glue/<Task>`` for a package installed without this checkout. Custom
    task: the folder ``files`` are read from (default: the folder
    compress runs in)."""
    max_length: int = 128
    """Tokens per row after truncation (special tokens included)."""
    max_train_samples: Optional[int] = None
    """Use only the first N training rows (after a seeded shuffle, of the rows left once ``holdout`` is taken).
    None: all."""
    max_eval_samples: Optional[int] = None
    """Use only the first N dev rows (and of a labelled test split, MRPC's). None: all."""
    holdout: float = 0.05
    """Fraction of the whole training file (before ``max_train_samples``) held out for checkpoint selection (dev is
    reported, never used to select); 0: none held out."""
    holdout_max: int = 2000
    """Upper bound on the held-out rows."""
    group_by_length: bool = True
    """Length-grouped batches (rows of similar length together): far less padding."""
    # -- custom tasks (refused for GLUE names: `CUSTOM_TASK_KEYS`) --
    files: Optional[dict[str, str]] = field(default=None, metadata={"path": True})
    """Custom task: split -> file (.tsv, .csv, .jsonl, or .json holding an array of row objects; UTF-8), e.g.
    {train: a.tsv, dev: b.tsv}."""
    text_column: str = "text"
    """Custom task: the column (header name, or JSON key) holding the text."""
    text_pair_column: Optional[str] = None
    """Custom task: the column of the second text of a pair task (None: single texts)."""
    label_column: str = "label"
    """Custom task: the column holding the label name (or the real-valued target with ``regression: true``)."""
    labels: Optional[list[str]] = None
    """Custom task: label names in index order. None with ``regression: true`` for a real-valued target."""
    regression: bool = False
    """Custom task: a real-valued target (one output; metrics pearson, spearmanr) instead of ``labels``."""
    hub_dataset: Optional[str] = None
    """Custom task read with ``datasets.load_dataset`` from the hub: ``path`` or ``path:config``, e.g. ``glue:sst2``
    (needs the network; not used offline)."""
    metrics: Optional[list[str]] = None
    """Custom task: metric names (accuracy, f1, matthews_correlation, pearson, spearmanr); first one selects."""

    def validate(self, file: str, where: str) -> None:
        if self.max_length < 8:
            raise CompressError(f"{file}: {where}.max_length: must be >= 8, got {self.max_length}")
        if not 0.0 <= self.holdout < 0.5:
            raise CompressError(f"{file}: {where}.holdout: must be in [0, 0.5), got {self.holdout}")
        if self.holdout_max < 1:
            raise CompressError(f"{file}: {where}.holdout_max: must be >= 1, got {self.holdout_max}")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise CompressError(f"{file}: {where}.{key}: must be >= 1, got {value}")
        from compress.tasks import GLUE_TASKS, task_spec  # a GLUE name, or a custom task's files and labels

        if self.text_pair_column is not None and self.text_pair_column == self.text_column:
            raise CompressError(f"{file}: {where}.text_pair_column: {self.text_pair_column!r} is text_column too; a "
                                f"pair's second text needs a column of its own")
        for key in ("text_column", "text_pair_column"):  # the label fed to the model as its input
            if getattr(self, key) is not None and getattr(self, key) == self.label_column:
                raise CompressError(f"{file}: {where}.{key}: {getattr(self, key)!r} is label_column too; the text "
                                    f"needs a column of its own")
        if self.metrics is not None and len(set(self.metrics)) != len(self.metrics):
            raise CompressError(f"{file}: {where}.metrics: each metric once, got {self.metrics}")
        unknown = [split for split in self.files or {} if split not in ("train", "dev", "test")]
        if unknown:  # a run reads these three only
            raise CompressError(f"{file}: {where}.files.{unknown[0]}: unknown split (splits: train, dev, test)")
        if self.hub_dataset and (self.files or self.data_dir):
            raise CompressError(f"{file}: {where}.{'files' if self.files else 'data_dir'}: not read with "
                                f"hub_dataset (the run reads {self.hub_dataset!r}); keep one of the two")
        from compress.rows import SUFFIXES

        for split, path in (self.files or {}).items():
            if Path(path).suffix.lower() not in SUFFIXES:
                raise CompressError(f"{file}: {where}.files.{split}: {path!r} is not one of the file types read "
                                    f"({', '.join(SUFFIXES)}); rename it to say which")

        if self.name in GLUE_TASKS and not self.files and not self.hub_dataset:
            given = [f.name for f in dataclasses.fields(self) if f.name in CUSTOM_TASK_KEYS
                     and getattr(self, f.name) != f.default]
            if given:  # never read (GLUE's columns, labels, metrics): a change of one redid every stage
                raise CompressError(f"{file}: {where}.{given[0]}: {', '.join(CUSTOM_TASK_KEYS)} are for custom tasks; "
                                    f"GLUE task {self.name!r} has its own")

        try:
            task_spec(self)
        except CompressError as e:
            raise CompressError(f"{file}: {e}") from None


@dataclass
class TrainConfig:
    """Optimisation settings shared by teacher fine-tuning and student distillation."""

    epochs: float = 3.0
    """Passes over the training rows (fractions allowed); see ``max_steps``."""
    lr: float = 5.0e-5
    """Peak learning rate of AdamW (linear warm-up, then linear decay to 0)."""
    batch_size: int = 32
    """Rows per batch, per process."""
    grad_accum: int = 1
    """Gradient accumulation steps: the effective batch is batch_size x grad_accum x processes."""
    warmup_ratio: float = 0.1
    """Fraction of the optimizer steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0: no clipping."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (overrides epochs when smaller)."""
    eval_every: Optional[int] = None
    """Also evaluate on the held-out slice every N optimizer steps (always at each epoch end)."""
    checkpoint_every: Optional[int] = None
    """Save a resumable checkpoint every N optimizer steps (None: none; a killed stage starts over)."""
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """bf16: autocast (AVX-512 BF16 / AMX on CPU, tensor cores on GPU). auto: bf16 where the hardware runs it natively
    (a bf16-capable CUDA GPU, a CPU with avx512_bf16 or amx_bf16), else fp32: on CPUs without it bf16 is emulated
    and slow. Measured on this 2-core CPU: bf16 1.43x the tokens/s of fp32 at equal accuracy (docs/training.md).
    A student's (or a pruning recovery's) teacher computes its cached logits in the same precision: 2.0-2.15x faster for
    MPNet-base on that CPU, logits within 0.04 of fp32's."""
    seed: Optional[int] = None
    """None: the recipe's seed. Seeds the new head's init, batch order and dropout; the train/holdout split always
    follows the recipe's seed (one split for every stage)."""

    def validate(self, file: str, where: str) -> None:
        positive = {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size, "grad_accum": self.grad_accum}
        for key, value in positive.items():
            if value <= 0:
                raise CompressError(f"{file}: {where}.{key}: must be > 0, got {value}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise CompressError(f"{file}: {where}.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise CompressError(f"{file}: {where}: weight_decay and max_grad_norm must be >= 0, got "
                                f"{self.weight_decay} and {self.max_grad_norm}")
        for key in ("max_steps", "eval_every", "checkpoint_every"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise CompressError(f"{file}: {where}.{key}: must be >= 1, got {value}")
        check_seed(self.seed, file, f"{where}.seed")

    def warmup_steps(self, total: int) -> int:
        """``warmup_ratio`` of ``total`` optimizer steps, rounded down on the ratio as written: 0.35 of 180 steps is
        63 (the float product, 62.99..., gave 62 before 2026-12-06: `compress.pipeline._inexact_warmup`)."""
        ratio = Fraction(repr(self.warmup_ratio))
        return ratio.numerator * total // ratio.denominator


@dataclass
class TeacherConfig(TrainConfig):
    """The model to fine-tune on the task."""

    model: str = field(default="minilm-l6", metadata={"path": True})
    """Zoo name (minilm-l6, mpnet-base), a local folder, or a hub id (online only)."""
    finetune: bool = field(default=True, metadata={"omit_default": True})
    """False: ``model`` is a classifier already fine-tuned on this task; the stage keeps its trained head, scores and
    saves it, and trains nothing (the training settings are unused). Its head must have the task's label count;
    label names equal to the task's in another order are put in the task's order, other names (NEGATIVE/POSITIVE for
    0/1) are taken by position with a warning."""

    def validate(self, file: str, where: str) -> None:
        super().validate(file, where)
        check_model_name(self.model, file, f"{where}.model")


ENCODER_TYPES = ("bert", "electra", "mpnet", "roberta")
"""Model types (config.json ``model_type``) every stage handles: distill's layer surgery and matches, prune's
head/FFN layout, ONNX export and ORT's fusions, the bundle's tokenizer. MiniLM models are ``bert``. Others (ALBERT's
shared layers, DeBERTa's attention, DistilBERT's layout, decoders) would fail part-way through a run."""


def unsupported_type(model_type: Optional[str], position_embedding_type: Optional[str] = None) -> Optional[str]:
    """The one-line reason a model type (or, of a supported type, its config's ``position_embedding_type``) is
    refused, or None when every stage handles it."""
    if model_type not in ENCODER_TYPES:
        return (f"model type {model_type!r} is not supported (supported encoders: {', '.join(ENCODER_TYPES)}; MiniLM "
                f"models are bert)")
    if position_embedding_type not in (None, "absolute"):  # prune's head surgery emptied the distance embedding
        return (f"position_embedding_type {position_embedding_type!r} is not supported (absolute position embeddings "
                f"only)")
    return None


OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer"}
"""Model types whose position ids start after the padding index (pad_token_id + 1): two table rows unused."""


def position_limit(fields: dict) -> Optional[int]:
    """How many tokens a model of config.json ``fields`` takes: its position table, less the rows RoBERTa-style models
    skip; None if unbounded (relative positions, or no table given)."""
    table = fields.get("max_position_embeddings")
    if not isinstance(table, int) or (fields.get("position_embedding_type") or "absolute") != "absolute":
        return None
    return table - (fields.get("pad_token_id") or 0) - 1 if fields.get("model_type") in OFFSET_POSITIONS else table


def _folder_config(name: str) -> Optional[dict]:
    """A local model folder's config.json as a dict, read without torch; None for a hub id, a zoo name or a folder
    without a readable one (refused elsewhere)."""
    try:
        with open(os.path.join(name, "config.json"), encoding="utf-8") as f:
            fields = json.load(f)
    except (OSError, ValueError):
        return None
    return fields if isinstance(fields, dict) else None


def model_positions(name: str) -> Optional[int]:
    """`position_limit` of a zoo model or a local model folder; None for a hub id (checked when the model loads) or a
    folder without a readable config.json."""
    from teachers.zoo import ZOO

    if name in ZOO:
        return ZOO[name].positions
    fields = _folder_config(name)
    return position_limit(fields) if fields is not None else None


def model_shape(name: str) -> Optional[tuple[int, int]]:
    """(layers, hidden width) of a zoo model or a local model folder; None for a hub id or a folder whose config.json
    does not give both."""
    from teachers.zoo import ZOO

    if name in ZOO:
        return ZOO[name].layers, ZOO[name].hidden
    fields = _folder_config(name) or {}
    shape = (fields.get("num_hidden_layers"), fields.get("hidden_size"))
    return shape if all(isinstance(v, int) and v > 0 for v in shape) else None


def layer_widths(config) -> dict:
    """``heads`` and ``ffn`` of a model's layers: one number where every layer has the same, else one a layer (a
    student of a pruned teacher: config.json's ``num_attention_heads`` and ``intermediate_size`` are its unpruned
    ancestor's count and its widest layer's). ``config``: a transformers config, or its config.json's fields as
    attributes (`model_widths`)."""
    sizes = getattr(config, "compress_layer_sizes", None)
    pruned = {int(k): len(v) for k, v in (getattr(config, "pruned_heads", None) or {}).items()}
    if sizes:
        heads, ffn = [s["heads"] for s in sizes], [s["ffn"] for s in sizes]
    else:
        heads = [config.num_attention_heads - pruned.get(i, 0) for i in range(config.num_hidden_layers)]
        ffn = [getattr(config, "intermediate_size", None)] * config.num_hidden_layers
    return {k: v[0] if len(set(v)) == 1 else v for k, v in (("heads", heads), ("ffn", ffn))}


def model_widths(name: str) -> dict[str, int]:
    """``hidden``, ``heads``, ``ffn`` and ``vocab_size`` of a zoo model or a local model folder (those its config.json
    gives); empty for a hub id."""
    from teachers.zoo import ZOO

    if name in ZOO:
        z = ZOO[name]
        return {"hidden": z.hidden, "heads": z.heads, "ffn": z.ffn, "vocab_size": z.vocab}
    fields = _folder_config(name) or {}
    keys = {"hidden": "hidden_size", "heads": "num_attention_heads", "ffn": "intermediate_size",
            "vocab_size": "vocab_size"}
    widths = {k: fields[f] for k, f in keys.items() if isinstance(fields.get(f), int) and fields[f] > 0}
    if fields.get("compress_layer_sizes") or fields.get("pruned_heads"):  # pruned: its layers' own counts
        try:
            widths.update((k, v) for k, v in layer_widths(types.SimpleNamespace(**fields)).items() if v is not None)
        except (AttributeError, KeyError, TypeError, ValueError):  # a config.json edited by hand: the stage says
            pass
    return widths


def head_order(names: list[str], labels: Optional[list[str]]) -> Optional[list[int]]:
    """Where a trained head's outputs named ``names`` (config.json's id2label) are the task's ``labels`` in another
    order (case aside): for each task label, the head output that scores it. None otherwise (same order, other names,
    transformers' LABEL_i placeholders, regression)."""
    if labels is None or len(names) != len(labels):
        return None
    low, task = [n.lower() for n in names], [str(x).lower() for x in labels]
    if low == task or sorted(low) != sorted(task) or len(set(low)) != len(low):
        return None
    return [low.index(t) for t in task]


def headless(architectures) -> Optional[str]:
    """The refusal for keeping the head of a model whose config.json's ``architectures`` names no
    ...ForSequenceClassification (a bare encoder: its classifier would be new weights); None when it names one or
    none at all (the weights tell, as they load)."""
    architectures = [str(a) for a in architectures or []]
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        return (f"it has no trained classification head (config.json's architectures: {', '.join(architectures)}); "
                f"fine-tune it here instead (finetune: true)")
    return None


def head_mismatch(num_labels: int, names: list[str],
                  labels: Optional[list[str]]) -> tuple[Optional[str], Optional[str]]:
    """(refusal, warning) for keeping a fine-tuned head of ``num_labels`` outputs named ``names`` (config.json's
    id2label) on a task of ``labels`` (None: regression), as ``teacher.finetune: false`` does: the count must match;
    the task's names in another order are put in the task's order (`head_order`, no warning); other names
    (transformers' LABEL_i placeholders aside) are taken by position, with a warning."""
    want = 1 if labels is None else len(labels)
    if num_labels != want:
        what = "a regression head (1 output)" if labels is None else f"{want} labels {labels}"
        return (f"its head has {num_labels} output(s), the task needs {what}; fine-tune it here instead "
                f"(finetune: true)"), None
    if labels is None or all(re.fullmatch(r"LABEL_\d+", n) for n in names) or head_order(names, labels):
        return None, None
    low, task = [n.lower() for n in names], [str(x).lower() for x in labels]
    return None, (f"head labels {names} taken as the task's {labels}, in this order" if low != task else None)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")
"""A folder with none of these has no tokenizer: transformers fails on it with a TypeError deep in its loader."""


def lfs_pointer(folder: str) -> Optional[str]:
    """The first weights file of ``folder`` that is a git-lfs pointer (a few lines of text a clone without git-lfs
    leaves in place of the weights), else None."""
    for f in sorted(Path(folder).glob("*")):
        if f.suffix in (".safetensors", ".bin") and f.is_file() and f.stat().st_size < 1024:
            with open(f, "rb") as fh:
                if fh.read(40).startswith(b"version https://git-lfs"):
                    return str(f)
    return None


SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings")
"""The sizes in a model's config.json that build its layers: positive integers, or the folder is refused."""


def check_model_name(name: str, file: str, where: str, kind: str = "model", tokenizer: bool = True) -> None:
    """Refuse, at validation rather than when the stage that loads it starts (after the teacher's training, and after
    the hub's retries), a model name that is a near miss of a zoo name: not in the zoo, not a folder, no org/ part
    as hub ids have (legacy ids like bert-base-uncased are not near misses). ``tokenizer``: a model folder must hold
    its tokenizer too (false where the recipe names another: a student's ``tokenizer``)."""
    from difflib import get_close_matches

    from teachers.zoo import ZOO

    if name in ZOO:
        return
    if os.path.isdir(name):  # a saved model (or, for kind "tokenizer", a saved tokenizer)
        wanted = ("config.json",) if kind == "model" else TOKENIZER_FILES  # config.json alone is no tokenizer
        if not any(os.path.isfile(os.path.join(name, f)) for f in wanted):
            raise CompressError(f"{file}: {where}: folder {name!r} holds no {' or '.join(wanted)} (not a saved "
                                f"{kind})")
        if kind == "model":
            try:
                with open(os.path.join(name, "config.json"), encoding="utf-8") as f:
                    fields = json.load(f)
                model_type = fields.get("model_type")
            except (OSError, ValueError, AttributeError) as e:
                raise CompressError(f"{file}: {where}: {os.path.join(name, 'config.json')}: unreadable ({e})") from None
            reason = unsupported_type(model_type, fields.get("position_embedding_type"))
            if reason:
                raise CompressError(f"{file}: {where}: {name!r}: {reason}")
            for key in SIZE_FIELDS:  # "six": transformers failed on it as "cannot read its weights (TypeError ...)"
                value = fields.get(key)
                if value is not None and (type(value) is not int or value < 1):
                    raise CompressError(f"{file}: {where}: {os.path.join(name, 'config.json')}: {key}: expected a "
                                        f"positive integer, got {value!r}")
            pointer = lfs_pointer(name)
            if pointer:
                raise CompressError(f"{file}: {where}: {pointer} is a git-lfs pointer, not the weights (the folder "
                                    f"was cloned without git-lfs): run `git lfs pull` in {name!r}")
            if tokenizer and not any(os.path.isfile(os.path.join(name, f)) for f in TOKENIZER_FILES):
                raise CompressError(f"{file}: {where}: folder {name!r} holds no tokenizer (none of "
                                    f"{', '.join(TOKENIZER_FILES)}); save the model's tokenizer there too")
        fast = os.path.join(name, "tokenizer.json")
        if (tokenizer or kind != "model") and os.path.isfile(fast):  # not JSON: the run failed on it, at distill
            try:
                with open(fast, encoding="utf-8") as f:
                    json.load(f)
            except (OSError, ValueError) as e:
                raise CompressError(f"{file}: {where}: {fast}: unreadable ({first_line(e)})") from None
        return
    if os.path.exists(name):
        raise CompressError(f"{file}: {where}: {name!r} is a file; give a model folder, a zoo name or a hub id")
    if "/" in name:
        return
    close = get_close_matches(name.lower(), list(ZOO), n=1, cutoff=0.8)
    if close:
        raise CompressError(f"{file}: {where}: {name!r} is not a zoo model (did you mean {close[0]!r}?) nor a folder "
                            f"(zoo: {', '.join(ZOO)}; hub ids look like org/name)")


@dataclass
class MatchConfig:
    """One intermediate-layer match (TextBrewer style): which teacher feature the student imitates, and how.

    Layers count from 1 (the output of layer i); layer 0 is the embedding output. ``feature: embedding`` ignores the
    layer numbers. Position-wise losses are used only on rows whose two tokenizations align position by position."""

    teacher_layer: int
    """The teacher's layer whose output (or attention maps) the student imitates: 1..depth, 0 the embeddings."""
    student_layer: int
    """The student's layer that imitates it: 1..depth, 0 the embeddings."""
    feature: Literal["hidden", "attention", "embedding"] = "hidden"
    """What is compared: the layer's hidden states, its attention probabilities, or the embedding output."""
    loss: Literal["mse", "kl"] = "mse"
    """hidden/embedding: mse. attention: mse on attention probabilities, or kl (teacher || student) per query row."""
    weight: float = 1.0
    """0 leaves the match out of training (and turns off the ``layer_map`` match of the same layers and feature)."""
    projection: Literal["auto", "linear", "none"] = "auto"
    """hidden/embedding: a learned linear map student width -> teacher width ("auto": only when widths differ)."""
    heads: Literal["each", "mean"] = "each"
    """attention: compare head by head ("each", when the head counts are equal; else averaged) or the head-averaged
    maps ("mean": for a student pretrained apart from the teacher, whose head i does not mirror the teacher's)."""

    def validate(self, file: str, where: str) -> None:
        if self.teacher_layer < 0 or self.student_layer < 0:
            raise CompressError(f"{file}: {where}: layers count from 1 (0 = embeddings), got "
                                f"teacher_layer={self.teacher_layer}, student_layer={self.student_layer}")
        if self.feature != "attention" and self.loss == "kl":
            raise CompressError(f"{file}: {where}.loss: kl is for attention maps; {self.feature} uses mse")
        if self.feature == "attention" and (self.teacher_layer == 0 or self.student_layer == 0):
            raise CompressError(f"{file}: {where}: attention maps exist for layers >= 1, not the embeddings (0)")
        if self.weight < 0:
            raise CompressError(f"{file}: {where}.weight: must be >= 0, got {self.weight}")
        if self.feature != "attention" and self.heads != "each":
            raise CompressError(f"{file}: {where}.heads: only for attention matches, not {self.feature}")
        if self.feature == "attention" and self.projection != "auto":
            raise CompressError(f"{file}: {where}.projection: only for hidden and embedding matches (attention maps "
                                f"are compared as they are), not attention")


@dataclass
class AugmentConfig:
    """TinyBERT-style data augmentation for distillation: a transfer set of training sentences whose words are
    swapped for their nearest neighbours in an input-embedding table, labelled by the teacher's logits only.

    Offline, without a masked-LM head or GloVe: a word that is one whole-word token of the vocabulary is replaced,
    with probability ``replace_prob``, by one of its ``neighbours`` nearest whole-word tokens (cosine similarity of the
    input embeddings of ``embeddings``'s model); other words stay. The copies' gold labels are never used (a swap may
    flip the sentiment): only the KD term sees them. TinyBERT's setting: 20 copies, p 0.4, 15 neighbours."""

    copies: int = 4
    """Augmented sentences per training sentence (a copy identical to its original is dropped)."""
    replace_prob: float = 0.4
    """Probability that each eligible word is replaced."""
    neighbours: int = 15
    """Candidates per word: its K nearest whole-word tokens."""
    embeddings: Literal["teacher", "student"] = "teacher"
    """Whose input-embedding table (and vocabulary) defines the neighbours."""
    min_words: int = field(default=0, metadata={"omit_default": True})
    """Only rows with at least this many words (all text columns together) get copies; the others train once, as
    they are. SST-2's training rows are mostly short phrases (median 7 words) and its dev rows whole sentences
    (median 19): the copies can go where the test distribution is."""
    seed: int = 0
    """Seed of the swaps (not the student's seed: students that differ only by seed share one transfer set and one
    pass of the teacher over it)."""

    def validate(self, file: str, where: str) -> None:
        if self.copies < 1:
            raise CompressError(f"{file}: {where}.copies: must be >= 1, got {self.copies}")
        if not 0.0 < self.replace_prob <= 1.0:
            raise CompressError(f"{file}: {where}.replace_prob: a probability in (0, 1] is needed, got "
                                f"{self.replace_prob}")
        if self.neighbours < 1:
            raise CompressError(f"{file}: {where}.neighbours: must be >= 1, got {self.neighbours}")
        if self.min_words < 0:
            raise CompressError(f"{file}: {where}.min_words: must be >= 0, got {self.min_words}")
        check_seed(self.seed, file, f"{where}.seed")


@dataclass
class DistillConfig:
    """How a student learns from the teacher: logit KD mixed with the gold labels, plus intermediate matches."""

    temperature: float = 2.0
    """Softmax temperature of the logit KD (the loss is scaled by T^2)."""
    kd_weight: float = 1.0
    """Weight of KL(teacher || student) at T (MSE on logits for regression tasks)."""
    hard_label_weight: float = 0.5
    """Weight of the cross-entropy with the gold labels (0: pure distillation)."""
    matches: list[MatchConfig] = field(default_factory=list)
    """Explicit intermediate matches (teacher layer, student layer, feature, loss, weight, projection)."""
    layer_map: Optional[Literal["uniform", "last"]] = None
    """Generate matches for you: "uniform" pairs student layer i with teacher layer i*T/S (TinyBERT), "last" pairs
    the last layers only. Added to ``matches``. The pairs follow the depths only: they are the layers a layer-drop
    student copies by default; with other ``keep_layers`` each student layer learns from another teacher layer than
    the one it was copied from (write explicit ``matches`` to pair them otherwise)."""
    layer_map_features: list[Literal["hidden", "attention", "embedding"]] = field(
        default_factory=lambda: ["hidden", "attention"])
    """Features the generated matches use (attention with loss kl, hidden/embedding with mse), each of weight
    ``layer_map_weight``."""
    attention_heads: Literal["each", "mean"] = "each"
    """``heads`` of the generated attention matches (see MatchConfig.heads)."""
    layer_map_weight: float = 1.0
    """Weight of each generated match; 0: none is generated (pipelines/kd-cross-family.yaml: 0.1 hurt a pretrained
    student of another family less than 1)."""
    two_step: bool = False
    """TinyBERT's task distillation: intermediate matches first (no logit loss), then the logit losses alone (the
    whole student trains on them, as in TinyBERT)."""
    intermediate_max_steps: Optional[int] = None
    """two_step: optimizer steps of the intermediate step, exactly (more or fewer than ``train``'s epochs and
    max_steps give: TinyBERT trains it longer); default: the same budget as the prediction step."""
    cache_teacher_logits: bool = True
    """Compute the teacher's logits once, ahead of training (logit-only KD then never reruns the teacher)."""
    augment: Optional[AugmentConfig] = None
    """Train on the training rows plus augmented copies labelled by the teacher (`AugmentConfig`); null: off."""

    def validate(self, file: str, where: str) -> None:
        if self.temperature <= 0:
            raise CompressError(f"{file}: {where}.temperature: must be > 0, got {self.temperature}")
        for key in ("kd_weight", "hard_label_weight"):
            if getattr(self, key) < 0:
                raise CompressError(f"{file}: {where}.{key}: must be >= 0, got {getattr(self, key)}")
        has_matches = self.has_matches()
        if self.two_step and not has_matches:
            raise CompressError(f"{file}: {where}.two_step: needs intermediate matches of weight > 0 (matches or "
                                f"layer_map)")
        if self.kd_weight == 0 and self.hard_label_weight == 0 and (self.two_step or not has_matches):
            raise CompressError(f"{file}: {where}: kd_weight and hard_label_weight are both 0, so the prediction "
                                f"layer has no loss{' in its two_step prediction step' if self.two_step else ''}; "
                                f"give one of them a weight > 0")
        if self.layer_map_weight < 0:
            raise CompressError(f"{file}: {where}.layer_map_weight: must be >= 0, got {self.layer_map_weight}")
        defaults = DistillConfig()
        if self.layer_map is None:  # settings of the generated matches, with nothing generating them: ignored
            for key in ("layer_map_features", "layer_map_weight", "attention_heads"):
                if getattr(self, key) != getattr(defaults, key):
                    raise CompressError(f"{file}: {where}.{key}: shapes the matches layer_map generates, and "
                                        f"layer_map is not set (explicit matches take their own "
                                        f"{'heads' if key == 'attention_heads' else 'feature and weight'})")
        elif not self.layer_map_features:
            raise CompressError(f"{file}: {where}.layer_map_features: empty, so layer_map generates no match; list "
                                f"features (hidden, attention, embedding) or leave layer_map out")
        elif self.attention_heads != defaults.attention_heads and "attention" not in self.layer_map_features:
            raise CompressError(f"{file}: {where}.attention_heads: for generated attention matches, and "
                                f"layer_map_features has no attention")
        if self.intermediate_max_steps is not None and self.intermediate_max_steps < 1:
            raise CompressError(f"{file}: {where}.intermediate_max_steps: must be >= 1")
        if self.intermediate_max_steps is not None and not self.two_step:
            raise CompressError(f"{file}: {where}.intermediate_max_steps: sets two_step's intermediate step; set "
                                f"two_step: true (or leave it out)")
        if self.augment is not None and self.kd_weight == 0:
            raise CompressError(f"{file}: {where}.augment: needs kd_weight > 0 (augmented rows are labelled by the "
                                f"teacher's logits only)")

    def has_matches(self) -> bool:
        """Whether intermediate matches of weight > 0 are asked for (listed, or made by ``layer_map``)."""
        return any(m.weight > 0 for m in self.matches) or (
            self.layer_map is not None and self.layer_map_weight > 0 and bool(self.layer_map_features))

    def caches_transfer_logits(self) -> bool:
        """Whether distilling with this config saves its transfer set (the augmented rows and the teacher's logits on
        them, `compress.distill.stage`): a logit-only step (two_step's second, or no matches) caching the logits."""
        return (self.augment is not None and self.cache_teacher_logits and self.kd_weight > 0
                and (self.two_step or not self.has_matches()))


TRANSFER = "transfer"
DISTILL_FILES = ("manifest.json", "metrics.json", "teacher_logits.json", "teacher_logits.npy", TRANSFER)
"""What the distill stage writes at its top level (`compress.distill.stage`), beside one folder per student."""


def transfer_folder(augment: AugmentConfig, student: str) -> str:
    """Where a distill stage keeps the transfer set of one augment setting: ``transfer/<digest of the setting>``
    (`plain`: an option added later, like ``min_words``, leaves the digest as it was while at its default); with
    ``embeddings: student``, of the setting and the student's name (its copies are its own, `augment_key`)."""
    from compress.manifest import fingerprint

    setting = plain(augment) if augment.embeddings != "student" else {"augment": plain(augment), "student": student}
    return f"{TRANSFER}/{fingerprint(setting)[:12]}"


@dataclass
class StudentConfig:
    """One student: its architecture (model surgery on the teacher or a narrow BERT), distillation and training."""

    name: str
    """Folder name under the distill stage: <run>/distill/<name>/model."""
    kind: Literal["layer_drop", "narrow"] = "layer_drop"
    """layer_drop (DistilBERT): the teacher's width, a subset of its layers, weights copied from the teacher.
    narrow (TinyBERT): a smaller BERT (layers/hidden/heads/ffn), random or from a checkpoint (``init``)."""
    layers: Optional[int] = None
    """Number of layers. layer_drop default: half the teacher's (every other layer); narrow: required unless init."""
    keep_layers: Optional[list[int]] = None
    """Which layers (1-based) to keep from the teacher (layer_drop) or the init checkpoint (narrow). Default:
    layer_drop, ``layers`` evenly spaced and always including the last; narrow, the checkpoint's bottom ``layers``."""
    hidden: Optional[int] = None
    """narrow: hidden width (must divide by heads). layer_drop: must equal the teacher's, if given."""
    heads: Optional[int] = None
    """narrow + random: attention heads (default hidden // 64, at least 1)."""
    ffn: Optional[int] = None
    """narrow: feed-forward width (default 4 x hidden)."""
    init: str = field(default="random", metadata={"path": True})
    """narrow: "random", or a checkpoint (zoo name such as minilm-l6, or a folder) truncated to ``layers``."""
    tokenizer: Optional[str] = field(default=None, metadata={"path": True})
    """narrow: the student's own tokenizer (zoo name/folder). Default: the init checkpoint's, else the teacher's."""
    vocab_size: Optional[int] = None
    """narrow + random: vocabulary size (must match the tokenizer used); a checkpoint student keeps its own (another
    is refused), a layer-drop student the teacher's (any is refused)."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Losses: logit KD, gold labels, intermediate matches, augmentation (`DistillConfig`)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation of this student (`TrainConfig`; its ``seed`` defaults to the recipe's)."""

    def validate(self, file: str, where: str) -> None:
        if not self.name or self.name.startswith(".") or not folder_name(self.name):
            raise CompressError(f"{file}: {where}.name: a plain folder name is needed ({FOLDER_NAME}), got "
                                f"{_show(self.name)}")
        if self.name in DISTILL_FILES:
            raise CompressError(f"{file}: {where}.name: {self.name!r} is a file the distill stage writes beside the "
                                f"students' folders; choose another name")
        if self.name in ("teacher", "prune"):  # prune.source / quantize.source would read that stage's model instead
            raise CompressError(f"{file}: {where}.name: {self.name!r} names a stage's model in prune.source and "
                                f"quantize.source; choose another name")
        for key in ("layers", "hidden", "heads", "ffn", "vocab_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise CompressError(f"{file}: {where}.{key}: must be >= 1, got {value}")
        if self.hidden is not None and self.heads is not None and self.hidden % self.heads:
            raise CompressError(f"{file}: {where}: hidden {self.hidden} is not divisible by heads {self.heads} "
                                f"(each head gets hidden/heads dimensions)")
        if self.keep_layers is not None:
            if not self.keep_layers or min(self.keep_layers) < 1:
                raise CompressError(f"{file}: {where}.keep_layers: a non-empty list of layers counted from 1")
            if len(set(self.keep_layers)) != len(self.keep_layers):
                raise CompressError(f"{file}: {where}.keep_layers: each layer can be kept once, got {self.keep_layers}")
            if sorted(self.keep_layers) != self.keep_layers:
                raise CompressError(f"{file}: {where}.keep_layers: list the layers in increasing order, got "
                                    f"{self.keep_layers}")
            if self.layers is not None and self.layers != len(self.keep_layers):
                raise CompressError(f"{file}: {where}: layers={self.layers} but keep_layers lists "
                                    f"{len(self.keep_layers)}")
        if self.kind == "layer_drop" and self.init != "random":
            raise CompressError(f"{file}: {where}.init: layer_drop students always start from the teacher's weights")
        if self.kind == "narrow" and self.init == "random" and self.keep_layers is not None:
            raise CompressError(f"{file}: {where}.keep_layers: picks layers of a checkpoint (init) or of the teacher "
                                f"(layer_drop); a random narrow student has none to pick: give layers")
        for key in ("tokenizer", "vocab_size"):
            if self.kind == "layer_drop" and getattr(self, key) is not None:
                raise CompressError(f"{file}: {where}.{key}: a layer-drop student uses the teacher's tokenizer and "
                                    f"embeddings; use kind: narrow for a tokenizer of its own")
        if self.init != "random":
            check_model_name(self.init, file, f"{where}.init", tokenizer=self.tokenizer is None)
        if self.tokenizer is not None:
            check_model_name(self.tokenizer, file, f"{where}.tokenizer", kind="tokenizer")
        if self.kind == "narrow" and self.init == "random" and self.layers is None and self.keep_layers is None:
            raise CompressError(f"{file}: {where}.layers: a narrow student with random init needs layers")
        if self.kind == "narrow" and self.init == "random":  # refused by the distill stage, after the teacher trained
            if self.hidden is None:
                raise CompressError(f"{file}: {where}.hidden: a narrow student with random init needs hidden (its "
                                    f"width)")
            if self.heads is None and self.hidden % max(1, self.hidden // 64):
                raise CompressError(f"{file}: {where}: hidden {self.hidden} is not divisible by the default heads "
                                    f"{max(1, self.hidden // 64)} (hidden // 64): give heads")
            augment = self.distill.augment
            if augment is not None and augment.embeddings == "student":  # neighbours of random vectors: any words
                raise CompressError(f"{file}: {where}.distill.augment.embeddings: student, but a random student's "
                                    f"embeddings are random (its copies would swap in unrelated words); use "
                                    f"embeddings: teacher")
        from teachers.zoo import ZOO

        if (self.kind == "narrow" and (self.init == "random" or self.init in ZOO)  # no task head in them
                and self.distill.kd_weight == 0 and self.distill.hard_label_weight == 0):
            # intermediate matches alone train a layer-drop student, whose prediction layer is the teacher's
            raise CompressError(f"{file}: {where}.distill: kd_weight and hard_label_weight are both 0, and a narrow "
                                f"student's prediction layer starts untrained from {self.init!r}: nothing would train "
                                f"it; give one of them a weight > 0")


@dataclass
class LayerPruneConfig:
    """Per-layer override of the pruning ratios: that layer is ranked on its own for the kinds set here."""

    heads: Optional[float] = None
    """Fraction of this layer's attention heads to remove (None: the layer follows ``prune.heads``)."""
    ffn: Optional[float] = None
    """Fraction of this layer's FFN neurons to remove (None: the layer follows ``prune.ffn``)."""

    def validate(self, file: str, where: str) -> None:
        for key in ("heads", "ffn"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value < 1.0:
                raise CompressError(f"{file}: {where}.{key}: a ratio in [0, 1) is needed, got {value}")


@dataclass
class RecoverConfig(TrainConfig):
    """Distillation recovery after each pruning step: logit KD from a teacher plus the gold labels."""

    teacher: Literal["unpruned", "teacher"] = "unpruned"
    """Who teaches: "unpruned" (the model before pruning: the distilled student, or the teacher when there is no
    distill stage) or "teacher" (the original fine-tuned teacher of the teacher stage)."""
    temperature: float = 2.0
    """Softmax temperature of the logit KD (the loss is scaled by T^2)."""
    kd_weight: float = 1.0
    """Weight of KL(teacher || student) at T (MSE on logits for regression tasks)."""
    hard_label_weight: float = 0.5
    """Weight of the cross-entropy with the gold labels."""
    seed: Optional[int] = None
    """None: the recipe's seed + the step (0-based), so each step's recovery draws other batches; a number: that seed
    for every step. Seeds batch order and dropout; the train/holdout split follows the recipe's seed."""
    data: Literal["train", "transfer"] = "train"
    """What recovery trains on: "train" (the training rows) or "transfer" (the transfer set the pruned student was
    distilled on: the training rows and their augmented copies, `students[].distill.augment`; the copies have no gold
    label: only the KD term sees them). Its KD targets come from ``teacher``: with "teacher", the teacher's logits the
    distill stage saved with the set (the teacher labels it again only where they do not match); with "unpruned" (the
    default), the unpruned model labels the set."""

    def validate(self, file: str, where: str) -> None:
        super().validate(file, where)
        if self.temperature <= 0:
            raise CompressError(f"{file}: {where}.temperature: must be > 0, got {self.temperature}")
        for key in ("kd_weight", "hard_label_weight"):
            if getattr(self, key) < 0:
                raise CompressError(f"{file}: {where}.{key}: must be >= 0, got {getattr(self, key)}")
        if self.kd_weight == 0 and self.hard_label_weight == 0:
            raise CompressError(f"{file}: {where}: kd_weight and hard_label_weight are both 0, so recovery has no loss "
                                f"(only weight decay would move the weights); give one a weight > 0, or set "
                                f"recover: null for no recovery")


@dataclass
class PruneConfig:
    """Structured pruning (stage `prune`): remove attention heads and FFN neurons, then recover by distillation.

    The target is a ratio per kind (``heads``, ``ffn``) or a budget (``keep_params`` or ``keep_macs``), reached in
    ``steps`` equal steps, each followed by ``recover``. The hidden size never changes. Ratios and budgets count the
    source as the stage receives it: a source pruned before (a pruned teacher, a student of one) loses its own heads
    and neurons in that proportion. Every layer keeps one head and one FFN neuron at least (unless
    ``drop_empty_layers``): a ratio that floor exceeds is said when the stage starts."""

    heads: float = 0.0
    """Fraction of all attention heads to remove, in [0, 1)."""
    ffn: float = 0.0
    """Fraction of all FFN (intermediate) neurons to remove, in [0, 1)."""
    scope: Literal["global", "per_layer"] = "global"
    """global: heads (and neurons) are ranked across layers, so layers end up with different sizes; per_layer: every
    layer loses the same fraction."""
    layers: Optional[dict[str, LayerPruneConfig]] = None
    """Per-layer overrides, by layer name in the unpruned model: {layer.0: {heads: 0.5}, layer.5: {ffn: 0.25}}."""
    keep_params: Optional[float] = None
    """Budget instead of ratios: keep this fraction of the encoder layers' parameters (one ratio for both kinds,
    the smallest that fits, found by bisection). Excludes heads/ffn/keep_macs. A budget below the source's smallest
    model (one head and one FFN neuron per layer) is refused when the run starts, before the teacher trains (as are
    ratios that would remove every head or neuron)."""
    keep_macs: Optional[float] = None
    """Budget instead of ratios: keep this fraction of the encoder layers' MACs at the task's max_length."""
    importance: Literal["l1", "l2", "taylor"] = "taylor"
    """l1/l2: weight magnitude of the coupled rows/columns; taylor: |weight x gradient| over calibration batches."""
    calibration_batches: int = 16
    """Taylor: number of batches of task training rows whose gradients score the heads and neurons."""
    calibration_batch_size: int = 32
    """Taylor: rows per calibration batch."""
    steps: int = 1
    """Iterative pruning: reach the target in this many equal steps, each followed by recovery."""
    drop_empty_layers: bool = False
    """Let the global ranking remove all heads and all FFN neurons of a layer, and then drop that layer."""
    source: Optional[str] = None
    """Model to prune: "teacher" or a student name (stage distill). Default: the first student when the recipe has
    students, otherwise the teacher."""
    recover: Optional[RecoverConfig] = field(default_factory=lambda: RecoverConfig(epochs=1.0, lr=1.0e-4))
    """Distillation after each step; null: no recovery (prune only). Left out: ``epochs: 1, lr: 1.0e-4`` and the other
    defaults; a ``recover:`` mapping starts from `TrainConfig`'s defaults (epochs 3, lr 5e-5) for what it leaves out.
    ``--set prune.recover.KEY=V`` on a recipe without ``recover:`` changes KEY of the left-out defaults (1 epoch at
    1e-4), as a value set on the command line changes that value only."""

    def validate(self, file: str, where: str) -> None:
        for key in ("heads", "ffn"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise CompressError(f"{file}: {where}.{key}: a ratio in [0, 1) is needed (1 would remove every "
                                    f"one), got {value}")
        budgets = [k for k in ("keep_params", "keep_macs") if getattr(self, k) is not None]
        for key in budgets:
            value = getattr(self, key)
            if not 0.0 < value <= 1.0:
                raise CompressError(f"{file}: {where}.{key}: a fraction in (0, 1] is needed, got {value}")
        if len(budgets) > 1 or (budgets and (self.heads or self.ffn)):
            raise CompressError(f"{file}: {where}: give either ratios (heads/ffn) or one budget (keep_params or "
                                f"keep_macs), not both")
        overrides = any((o.heads or 0) > 0 or (o.ffn or 0) > 0 for o in (self.layers or {}).values())
        if not any(getattr(self, k) < 1.0 for k in budgets) and not self.heads and not self.ffn and not overrides:
            raise CompressError(f"{file}: {where}: nothing to prune (set heads, ffn, a layers override above 0, or "
                                f"keep_params or keep_macs below 1)")
        seen: dict[int, str] = {}
        for name in self.layers or {}:
            if not re.fullmatch(r"(?:[\w.]*\.)?layer\.\d+", name):
                raise CompressError(f"{file}: {where}.layers.{name}: unknown layer name (use layer.N, N from 0)")
            index = int(name.rsplit(".", 1)[1])  # layer.0 and encoder.layer.0 are one layer: the last one won
            if index in seen:
                raise CompressError(f"{file}: {where}.layers.{name}: layer {index} is given already, as "
                                    f"{seen[index]}")
            seen[index] = name
        for key in ("steps", "calibration_batches", "calibration_batch_size"):
            if getattr(self, key) < 1:
                raise CompressError(f"{file}: {where}.{key}: must be >= 1, got {getattr(self, key)}")


@dataclass
class CalibrationConfig:
    """Static int8: how activation ranges are measured (task training rows, one unpadded row per run, ranges and
    histograms merged row by row: memory does not grow with ``samples``)."""

    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    """minmax: observed min/max; entropy: KL-optimal clipping; percentile: clip at ``percentile`` of |x|."""
    samples: int = 128
    """Training rows run through the model to collect ranges."""
    percentile: float = 99.999
    """For method percentile."""

    def validate(self, file: str, where: str) -> None:
        if self.samples < 1:
            raise CompressError(f"{file}: {where}.samples: must be >= 1, got {self.samples}")
        if not 90.0 <= self.percentile <= 100.0:
            raise CompressError(f"{file}: {where}.percentile: must be in [90, 100], got {self.percentile}")
        if self.method != "percentile" and self.percentile != CalibrationConfig.percentile:  # read by nothing else:
            raise CompressError(f"{file}: {where}.percentile: read with method: percentile only (method is "  # it
                                f"{self.method!r}); leave it out, or set method: percentile")  # redid quantize


@dataclass
class QuantizeConfig:
    """Stage `quantize`: ONNX fp32 export with a parity check, then accuracy-guarded int8 (onnxruntime)."""

    source: Optional[str] = None
    """Model to quantize: "teacher", "prune", or a student name (stage distill). Default: the newest model of the run
    (pruned, else the first student, else the teacher)."""
    modes: list[Literal["dynamic", "static"]] = field(default_factory=lambda: ["dynamic", "static"])
    """dynamic: int8 weights, activation ranges computed per run; static: activation ranges from calibration."""
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    """Static int8: how activation ranges are measured (`CalibrationConfig`)."""
    per_channel: bool = True
    """One weight scale per output channel instead of per tensor (Optimum's default too). Costs no time in ORT's
    int8 matmuls; per tensor, the quickstart student's dynamic int8 lost 1.26 points of SST-2 dev, per channel 0.57."""
    reduce_range: bool = field(default=False, metadata={"omit_default": True})
    """Quantize weights to 7 bits (-64..64) instead of 8 (ORT's ``reduce_range``, for x86 CPUs without AVX-512 VNNI,
    whose u8 x s8 instruction sums pairs into saturating 16 bits; 7-bit weights cannot saturate it). Not a clear gain
    where measured (AVX2 host, SST-2 dev one text at a time, `python scripts/bench_kernels.py int8 DIR...` on two
    quantize folders, one with ``--set quantize.reduce_range=true``): the quickstart's pruned student dynamic 83.49 both
    ways, static 83.94 with every node int8 against 83.60 with 2 nodes kept fp32 without; its MiniLM-L6 teacher
    dynamic 87.84 vs 87.50, static 87.39 vs 87.84 (mean |p - p_fp32| 0.042 vs 0.012); same speed. The accuracy guard
    judges it as any int8 model."""
    activation_type: Literal["quint8", "qint8"] = "quint8"
    """Static activations; quint8 (u8 x s8 products) is the fast path of x86 VNNI kernels (qint8 ran 2-4x slower)."""
    weight_type: Literal["qint8", "quint8"] = "qint8"
    """int8 type of the weights: qint8 (signed; with quint8 activations, the VNNI fast path) or quint8."""
    format: Literal["qdq", "qoperator"] = "qdq"
    """Static int8 graph form: QuantizeLinear/DequantizeLinear pairs (fused by ORT at load) or QLinear* operators."""
    optimize: bool = True
    """Also write the ORT-fused fp32 graph (EmbedLayerNorm, Attention, BiasGelu; not SkipLayerNorm, whose CPU kernel is
    slow: compress.export); dynamic int8 quantizes that one (Attention -> QAttention), static int8 is always calibrated
    on the plain export. Measured on the quickstart's
    pruned student, batch 1 dev rows, per-channel int8 (`python scripts/bench_kernels.py graphs QUANTIZE_DIR`): int8 of
    the fused graph 0.66 / 0.69 ms (1 / 2 threads) against 0.72 / 0.82 ms for int8 of the plain graph. Off: quantize
    the plain exported graph (ORT fuses what it can at load)."""
    max_drop: float = 1.0
    """Accuracy guard: largest allowed drop of the task's first metric (points, i.e. x100) of int8 vs fp32 on dev (or
    on the held-out rows: ``guard_rows``); beyond it the most sensitive nodes are kept fp32 until within budget."""
    guard_prefer: Literal["speed", "size"] = "speed"
    """What the guard spends first. speed: keep the embedding lookups fp32 before any matmul (no compute; the tables
    are then stored as int8 rows with a per-row scale when that stays within budget, else the file keeps fp32
    tables); size: every node ranked by sensitivity alone (an fp32 matmul costs time)."""
    guard_rows: Literal["dev", "holdout"] = field(default="dev", metadata={"omit_default": True})
    """Rows whose metric the guard's budget judges. dev: the rows the report shows; the guard stops at the first
    exclusion set within budget, and an int8 dynamic model's dev score is noisy (+-0.5 points on MPNet-base), so a
    guarded model's dev score can be flattered by a few tenths. holdout: the task's held-out training rows
    (task.holdout), dev then only measured once for the model chosen; wants many rows (one of 2,000 is 0.05 points)."""
    table_bits: Literal[8, 4] = field(default=8, metadata={"omit_default": True})
    """Bits of the embedding tables. 8: a table the guard keeps out of the int8 quantizer (``guard_prefer: speed``)
    is stored as int8 rows with one scale a row, gathered by each lookup before it dequantizes them
    (`compress.embed_rows`); the others are the quantizer's (int8, one scale a table). 4: the vocabulary table (4,096
    rows or more; position and token-type tables stay int8 rows) as int4 in blocks of 32 values with a scale each
    (onnxruntime's GatherBlockQuantized, >= 1.22; onnxruntime-web >= 1.22 too), about 0.6 of the int8 bytes, whether
    the guard kept it fp32 or not; kept only if the model stays within ``max_drop``, else the int8 forms above (each
    try recorded in ``quantize.json``)."""
    sensitivity_rows: int = 128
    """Held-out training rows on which each node's quantization error is measured (label-free; dev is not used)."""
    parity_atol: float = 1.0e-3
    """Export parity: largest allowed |logit difference| of ONNX fp32 vs torch on dev."""
    parity_min_agreement: float = 0.999
    """Export parity: smallest allowed fraction of dev rows with the same argmax."""
    ort_format: bool = True
    """Also write each int8 model in ORT format (.ort) for mobile runtimes."""

    def validate(self, file: str, where: str) -> None:
        if not self.modes:
            raise CompressError(f"{file}: {where}.modes: give at least one of dynamic, static")
        if len(set(self.modes)) != len(self.modes):
            raise CompressError(f"{file}: {where}.modes: each mode once, got {self.modes}")
        if self.max_drop < 0:
            raise CompressError(f"{file}: {where}.max_drop: must be >= 0 points, got {self.max_drop}")
        if self.sensitivity_rows < 1:
            raise CompressError(f"{file}: {where}.sensitivity_rows: must be >= 1, got {self.sensitivity_rows}")
        if self.parity_atol <= 0 or not 0 < self.parity_min_agreement <= 1:
            raise CompressError(f"{file}: {where}: parity_atol must be > 0 and parity_min_agreement in (0, 1]")
        if "static" in self.modes and self.activation_type == "qint8" and self.weight_type == "quint8":
            raise CompressError(f"{file}: {where}.activation_type: qint8 activations need qint8 weights (onnxruntime "
                                f"has no s8 x u8 kernels), got weight_type quint8")


@dataclass
class BenchConfig:
    """Stage `bench`: latency of every artifact (torch, ONNX fp32, int8) and of the peers under one protocol."""

    threads: list[int] = field(default_factory=lambda: [1, 2])
    """Thread counts (torch set_num_threads / ORT intra-op threads; one inter-op thread)."""
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    """Batch sizes of the fixed shapes (with ``seq_lengths``)."""
    seq_lengths: list[int] = field(default_factory=lambda: [32, 128])
    """Fixed shapes: every batch size x every sequence length (random ids, full mask). Empty lists: dev only."""
    dev_rows: Optional[int] = 200
    """Real dev sentences timed one at a time (batch 1, unpadded); None: all of dev."""
    warmup: int = 2
    """Untimed runs before each timed series."""
    repeats: int = 20
    """Timed runs per fixed shape, at most."""
    min_runs: int = 3
    """Timed runs per fixed shape, at least (even past max_seconds; ``repeats`` caps it: ``repeats: 2`` times 2)."""
    max_seconds: float = 1.0
    """Stop timing a fixed shape after this many seconds of timed runs (keeps the default bench short)."""
    peers: list[Literal["torch_fp32", "torch_dynamic_int8", "optimum_avx512_vnni"]] = field(
        default_factory=lambda: ["torch_fp32", "torch_dynamic_int8", "optimum_avx512_vnni"])
    """Alternatives measured beside our int8 on the same model."""
    order: Literal["series", "interleaved"] = "series"
    """series: each artifact timed back to back (warm caches, how a serving model runs), artifacts taking turns
    ``rounds`` times; interleaved: artifacts alternate run by run (evens out a noisy shared CPU, but every run starts
    with another model's weights in cache)."""
    rounds: int = 3
    """series: turns each artifact takes (dev rows are timed once per round; fixed shapes split repeats and
    max_seconds over the rounds)."""
    spin: bool = False
    """Let idle worker threads spin a while before they sleep (torch OMP_WAIT_POLICY=ACTIVE with a bounded
    GOMP_SPINCOUNT: `compress.bench.GOMP_SPINS`; ORT allow_spinning): lowest latency on a dedicated CPU; on a shared
    one a descheduled spinning thread made torch's 2-thread runs ~7x slower here. Off: both sleep."""
    isolate: bool = True
    """Measure each artifact's peak RSS in a fresh process (its own, no state from the others); false: no memory
    figures (one process's high-water mark is not any artifact's: the report and manifest say "not measured")."""

    def validate(self, file: str, where: str) -> None:
        if self.rounds < 1:
            raise CompressError(f"{file}: {where}.rounds: must be >= 1, got {self.rounds}")
        for key in ("threads", "batch_sizes", "seq_lengths"):
            bad = [v for v in getattr(self, key) if v < 1]
            if bad:
                raise CompressError(f"{file}: {where}.{key}: values must be >= 1, got {bad[0]}")
        if not self.threads:
            raise CompressError(f"{file}: {where}.threads: give at least one thread count")
        for i, threads in enumerate(self.threads):
            check_threads(threads, f"{file}: {where}.threads[{i}]")
        for key in ("threads", "batch_sizes", "seq_lengths"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise CompressError(f"{file}: {where}.{key}: each value once, got {values}")
        for key in ("dev_rows", "repeats", "min_runs"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise CompressError(f"{file}: {where}.{key}: must be >= 1, got {value}")
        if self.warmup < 0:
            raise CompressError(f"{file}: {where}.warmup: must be >= 0, got {self.warmup}")
        if self.max_seconds <= 0:
            raise CompressError(f"{file}: {where}.max_seconds: must be > 0, got {self.max_seconds}")


@dataclass
class ReportConfig:
    """Stage `report`: one table per run (params, size, metric, retention, latency, speedup), Pareto plot, HTML."""

    compare: list[str] = field(default_factory=list, metadata={"path": True})
    """Other run folders (e.g. runs/sst2) tabulated after this run and overlaid on the Pareto plot."""
    threads: Optional[int] = None
    """Thread count whose latency gives speedup, throughput and the plot's x axis. None: the largest benchmarked."""
    measure: bool = True
    """Time the ONNX fp32 export of every model the bench stage did not run (the teacher's is the speedup
    reference) in one pass with every bench artifact, re-timed beside it (the bench protocol's dev series, the
    recipe's bench settings), so all speedups come from one set of runs. False: only stored numbers are reported."""

    def validate(self, file: str, where: str) -> None:
        check_threads(self.threads, f"{file}: {where}.threads")


@dataclass
class BundleConfig:
    """Stage `bundle`: the int8 model to ship, as a folder and a .tar.gz with a standalone predict.py."""

    pick: Literal["best_within_drop", "fastest", "most_accurate"] = "best_within_drop"
    """Which int8 model: the fastest whose metric is within ``max_drop`` points of the teacher's
    (best_within_drop), the fastest of all (fastest), or the most accurate (most_accurate)."""
    max_drop: Optional[float] = None
    """Accuracy-drop budget in metric points x 100 vs the teacher (1.0 = one point). None: quantize.max_drop when
    the recipe has one, else 1.0. When no int8 model is within it, the most accurate is shipped and the manifest
    says so (``within_budget: false``)."""
    threads: Optional[int] = None
    """Thread count (one of ``bench.threads``) whose bench latency ranks the int8 models for ``pick`` and goes into
    the bundle manifest. None: the largest."""
    name: Optional[str] = None
    """Bundle folder name. None: <recipe name>-<task>-int8, or <recipe name>-int8 when the recipe's name already holds
    the task's (rte -> rte-int8, sst2-cpu -> sst2-cpu-int8)."""
    ort: bool = True
    """Also ship the model in ORT format (model.ort) for onnxruntime mobile and minimal builds."""
    verify: bool = field(default=True, metadata={"omit_default": True})
    """Before the bundle is published, score it as it ships (predict.py's runner: its tokenizer.json and
    onnxruntime, one text per run) on the dev rows the run scored, and fail when its metric is more than
    ``verify_tolerance`` points from the one the run recorded (the report's and the manifest's): a tokenizer or
    runtime that does not reproduce the measured model is caught before a device gets it. The manifest's
    ``verified`` holds the scores. Costs a pass over dev: ~2 s for a 4-layer student, ~15 s for a 12-layer model."""
    verify_tolerance: float = field(default=0.5, metadata={"omit_default": True})
    """How far (metric points x 100) the bundle's own dev score may be from the recorded one. The same model and
    runtime give the same scores; thread counts can flip a borderline text of an int8 dynamic model. (Both added after
    run folders existed: at their defaults they stay out of the bundle stage's fingerprint, which kept its bundles.)"""

    def validate(self, file: str, where: str) -> None:
        if self.max_drop is not None and self.max_drop < 0:
            raise CompressError(f"{file}: {where}.max_drop: must be >= 0, got {self.max_drop}")
        if self.verify_tolerance < 0:
            raise CompressError(f"{file}: {where}.verify_tolerance: must be >= 0, got {self.verify_tolerance}")
        check_threads(self.threads, f"{file}: {where}.threads")
        if self.name is not None and (self.name.startswith(".") or not folder_name(self.name)):
            raise CompressError(f"{file}: {where}.name: a plain folder name is needed ({FOLDER_NAME}), got "
                                f"{_show(self.name)}")
        if self.name == "manifest.json":  # the bundle folder goes beside the stage's manifest
            raise CompressError(f"{file}: {where}.name: 'manifest.json' is the file the bundle stage writes beside the "
                                f"bundle; choose another name")


@dataclass
class SearchConfig:
    """``compress search``: the most accurate int8 model within a latency budget on this machine, and the Pareto
    front. Candidates: layer-drop students of the run's teacher (depth), structured pruning of their heads and FFN
    neurons (width), int8 mode; each is distilled briefly, quantized and timed under the bench protocol."""

    budget_ms: Optional[float] = None
    """p50 latency budget per sentence (batch 1, real dev sentences), in ms. ``--budget-ms`` overrides it."""
    time_limit_min: float = 15.0
    """No new candidate starts after this many minutes (a started one finishes). ``--time-limit-min`` overrides."""
    threads: int = 1
    """ORT intra-op threads for the timing (the target device's cores)."""
    depths: Optional[list[int]] = None
    """Student depths (layers kept from the teacher, evenly spaced). None: 1 .. the teacher's depth."""
    keep_macs: list[float] = field(default_factory=lambda: [1.0, 0.5])
    """Width: fraction of each student's encoder MACs kept by pruning heads and FFN neurons (1.0: not pruned)."""
    modes: list[Literal["dynamic", "static"]] = field(default_factory=lambda: ["dynamic", "static"])
    """int8 modes tried for every model, quantized as the recipe's `quantize:` section says (per channel, weight
    types, calibration method...; the defaults without one), with no accuracy guard (every node int8)."""
    train_steps: int = 100
    """Distillation steps per student (logit KD from the teacher + 0.5 x cross-entropy): ~1 min on 2 CPU cores."""
    recover_steps: int = 50
    """Further steps (same objective) of every student of a depth, pruned or not, from that depth's distilled one."""
    batch_size: int = 32
    """Training rows per step (the training slice is the first max(train_steps, recover_steps) x batch_size rows)."""
    lr: float = 1.0e-4
    """Peak learning rate of the distillation and recovery steps (10% linear warm-up, then linear decay)."""
    calibration_samples: int = 128
    """Training rows for static int8 ranges (instead of `quantize.calibration.samples`)."""
    dev_rows: int = 100
    """Dev sentences timed one at a time per candidate (the accuracy is measured on all of dev, or its first
    ``task.max_eval_samples`` rows)."""
    skip_margin: float = 3.0
    """Skip a candidate whose estimated latency (teacher fp32 x MACs fraction, divided by the largest speedup over
    that estimate a measured candidate of its mode has shown) exceeds budget x skip_margin, or one at least as large
    as an already measured candidate of the same mode that was over budget x 1.1."""

    def validate(self, file: str, where: str) -> None:
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise CompressError(f"{file}: {where}.budget_ms: must be > 0 ms, got {self.budget_ms}")
        if self.time_limit_min < 0:
            raise CompressError(f"{file}: {where}.time_limit_min: must be >= 0, got {self.time_limit_min}")
        for key in ("train_steps", "recover_steps", "batch_size", "calibration_samples", "dev_rows"):
            if getattr(self, key) < 1:
                raise CompressError(f"{file}: {where}.{key}: must be >= 1, got {getattr(self, key)}")
        check_threads(self.threads, f"{file}: {where}.threads")
        if self.depths is not None and (not self.depths or min(self.depths) < 1):
            raise CompressError(f"{file}: {where}.depths: a non-empty list of layer counts >= 1, got {self.depths}")
        if not self.keep_macs or any(not 0.0 < k <= 1.0 for k in self.keep_macs):
            raise CompressError(f"{file}: {where}.keep_macs: fractions in (0, 1], got {self.keep_macs}")
        if not self.modes:
            raise CompressError(f"{file}: {where}.modes: give at least one of dynamic, static")
        for key in ("depths", "keep_macs", "modes"):
            values = getattr(self, key) or []
            twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
            if twice is not None:
                raise CompressError(f"{file}: {where}.{key}: {twice!r} is listed twice")
        ids = {}  # compress.search.ModelSpec.id writes a kept fraction with 6 significant digits
        for k in self.keep_macs:
            other = ids.setdefault(f"k{k * 100:g}", k)
            if other != k:
                raise CompressError(f"{file}: {where}.keep_macs: {other!r} and {k!r} would be one candidate "
                                    f"(k{k * 100:g}); give fractions that differ within 6 significant digits")
        if self.lr <= 0:
            raise CompressError(f"{file}: {where}.lr: must be > 0, got {self.lr:g}")
        if self.skip_margin < 1:
            raise CompressError(f"{file}: {where}.skip_margin: must be >= 1, got {self.skip_margin:g}")


def search_settings(recipe: "Recipe", cfg: Optional[SearchConfig] = None, budget_ms: Optional[float] = None,
                    time_limit_min: Optional[float] = None, threads: Optional[int] = None) -> SearchConfig:
    """The search's settings (the recipe's section, or ``cfg``, with the command line's overrides), checked with the
    run folder's teacher before anything heavy is imported: a wrong command fails in a second, not after torch loads."""
    cfg = dataclasses.replace(cfg or recipe.search or SearchConfig())
    for key, value in (("budget_ms", budget_ms), ("time_limit_min", time_limit_min), ("threads", threads)):
        if value is not None:
            setattr(cfg, key, value)
    if cfg.budget_ms is None:
        raise CompressError(f"{recipe.path}: no latency budget: give --budget-ms X (make search BUDGET_MS=X; or search.budget_ms)")
    if not (cfg.budget_ms > 0 and math.isfinite(cfg.budget_ms)):
        raise CompressError(f"--budget-ms: must be a finite number > 0 ms, got {cfg.budget_ms:g}")
    if not (cfg.time_limit_min >= 0 and math.isfinite(cfg.time_limit_min)):
        raise CompressError(f"--time-limit-min: must be a finite number >= 0, got {cfg.time_limit_min:g}")
    check_threads(cfg.threads, "--threads")
    teacher_dir = recipe.run_dir / "teacher" / "model"
    runs_dir = "" if recipe.runs_dir == "runs" else f" --runs-dir {shlex.quote(recipe.runs_dir)}"  # the one searched
    sets = "".join(f" --set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in recipe.overrides.items())  # as given
    train_it = f"run `compress run {shlex.quote(str(recipe.path))} --stage teacher{runs_dir}{sets}` first"
    if not (teacher_dir / "config.json").is_file():
        raise CompressError(f"{teacher_dir}: no fine-tuned teacher; {train_it}")
    from compress.pipeline import explain  # torch-free: the recipe's teacher against the one in the run folder

    redo, why = explain(recipe, "teacher")[0][1:]
    if redo and why.startswith("changed"):  # (a teacher put there by hand, without a manifest, is searched as it is)
        raise CompressError(f"{teacher_dir}: not the recipe's teacher ({why}); {train_it}")
    try:
        depth = json.loads((teacher_dir / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"]
    except (ValueError, KeyError, TypeError):
        raise CompressError(f"{teacher_dir / 'config.json'}: not a model config (no num_hidden_layers); rerun the "
                            f"teacher stage") from None
    deeper = [d for d in (cfg.depths or []) if d > depth]
    if deeper:
        raise CompressError(f"{recipe.path}: search.depths: {deeper[0]} layers, but the teacher has {depth}")
    return cfg


def newest_source(recipe: "Recipe", stages) -> str:
    """The newest model among the run's ``stages`` (names, or a mapping keyed by them): "prune", else the first
    student's name (stage distill), else "teacher" (the quantize stage's default source)."""
    students = [s.name for s in (getattr(recipe, "students", None) or [])]
    return "prune" if "prune" in stages else (students[0] if students and "distill" in stages else "teacher")


@dataclass
class Recipe:
    name: str
    """Run folder name: <runs_dir>/<name>. Default: the recipe file's name without .yaml."""
    task: TaskConfig
    """What to learn and from which files (`TaskConfig`)."""
    teacher: TeacherConfig
    """The model fine-tuned on the task (stage `teacher`; `TeacherConfig`)."""
    students: Optional[list[StudentConfig]] = None
    """Students distilled from the teacher (stage `distill`)."""
    prune: Optional[PruneConfig] = None
    """Structured pruning of the student (or the teacher) with distillation recovery (stage `prune`)."""
    report: Optional[ReportConfig] = None
    """Tables, Pareto plot and HTML page of the run's artifacts (stage `report`)."""
    bundle: Optional[BundleConfig] = None
    """Edge bundle of the picked int8 model (stage `bundle`)."""
    quantize: Optional[QuantizeConfig] = None
    """ONNX export with parity check and accuracy-guarded int8 of the newest model (stage `quantize`)."""
    bench: Optional[BenchConfig] = None
    """Latency/throughput/RSS of every artifact and of the peers under one recorded protocol (stage `bench`)."""
    search: Optional[SearchConfig] = None
    """Latency-budget search settings (``compress search``; not a pipeline stage)."""
    seed: int = 42
    """Seeds the train/held-out split of every stage, and each training section whose own ``seed`` is unset."""
    runs_dir: str = field(default="runs", metadata={"path": True})
    """Where run folders go: <runs_dir>/<name>/<stage>/."""
    # where the recipe came from (not a YAML key)
    path: Optional[str] = field(default=None, metadata={"internal": True})
    overrides: dict = field(default_factory=dict, metadata={"internal": True})
    """The command line's ``--set`` pairs it was loaded with (dotted key -> value), for commands that say what to
    run."""

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def validate(self, file: str, where: str) -> None:
        """What spans sections: the run folder's name, student names, which model prune and quantize read."""
        check_seed(self.seed, file, "seed")
        if not folder_name(self.name):
            raise CompressError(f"{file}: name: a plain folder name is needed (runs go to <runs_dir>/<name>; "
                                f"{FOLDER_NAME}), got {_show(self.name)}")
        students = [s.name for s in self.students or []]
        if self.students == []:
            raise CompressError(f"{file}: students: the list is empty (leave the section out for no students)")
        dup = next((n for n in students if students.count(n) > 1), None)
        if dup:
            raise CompressError(f"{file}: students: the name {dup!r} is used twice")
        if self.prune is not None and self.prune.source not in (None, "teacher", *students):
            raise CompressError(f"{file}: prune.source: {self.prune.source!r} is neither teacher nor a student "
                                f"({', '.join(students) or 'no students'})")
        if self.prune is not None and self.prune.recover is not None and self.prune.recover.data == "transfer":
            self._check_transfer_recovery(file)
        if self.quantize is not None and self.quantize.guard_rows == "holdout" and self.task.holdout == 0:
            raise CompressError(f"{file}: quantize.guard_rows: holdout, but task.holdout is 0 (no held-out rows); set "
                                f"task.holdout > 0 or guard_rows: dev")
        for section in ("report", "bundle"):  # a count not benchmarked: no latency to read (bundle: picked by size)
            threads = getattr(getattr(self, section), "threads", None)
            if threads is not None and self.bench is not None and threads not in self.bench.threads:
                raise CompressError(f"{file}: {section}.threads: {threads} is not one of bench.threads "
                                    f"{self.bench.threads}")
        if self.report is not None and self.report.threads is not None and self.bench is None and self.report.measure:
            timed = BenchConfig().threads  # the report times at the bench defaults
            if self.report.threads not in timed:
                raise CompressError(f"{file}: report.threads: {self.report.threads} is not one of the thread counts "
                                    f"the report times without a bench section {timed}; add bench.threads")
        if self.bundle is not None and self.bundle.name is None:
            check_bundle_name(self, file)
        if not self.teacher.finetune:
            self._check_finetuned_head(file)
        sources = ("teacher", *(["prune"] if self.prune is not None else []), *students)
        if self.quantize is not None and self.quantize.source not in (None, *sources):
            raise CompressError(f"{file}: quantize.source: {self.quantize.source!r} is not one of this recipe's "
                                f"models ({', '.join(sources)})")
        self._check_positions(file)
        depths = self._check_student_depths(file)
        deeper = [d for d in (self.search.depths or []) if depths["teacher"] and d > depths["teacher"]] \
            if self.search is not None else []
        if deeper:  # `compress search` refuses it too (a hub teacher's depth is known once it has trained)
            raise CompressError(f"{file}: search.depths: {deeper[0]} layers, but the teacher has {depths['teacher']}")
        if self.prune is not None and self.prune.layers:
            self._check_prune_layers(file, self._prune_source(), depths.get(self._prune_source()))

    def _prune_source(self) -> str:
        """The model the prune stage prunes: ``prune.source``, else the first student, else the teacher."""
        return self.prune.source or (self.students[0].name if self.students else "teacher")

    def _check_transfer_recovery(self, file: str) -> None:
        """``prune.recover.data: transfer`` where the pruned model is a student distilled on a transfer set whose
        teacher logits the distill stage saves (`DistillConfig.caches_transfer_logits`, by it or by another student of
        the same augment setting), with a KD term to learn the copies from: not once the teacher and students have
        trained."""
        where = f"{file}: prune.recover.data: transfer"
        if self.prune.recover.kd_weight == 0:
            raise CompressError(f"{where}: needs prune.recover.kd_weight > 0 (the augmented copies have no gold label: "
                                f"only the KD term learns from them)")
        source = self._prune_source()
        if source == "teacher":
            raise CompressError(f"{where}: needs a distilled student as prune.source (got 'teacher')")
        augment = next(s for s in self.students if s.name == source).distill.augment
        if augment is None:
            raise CompressError(f"{where}: student {source!r} has no distill.augment, so no transfer set; set one")
        # students of one augment setting share its transfer set, unless each picks its own neighbours
        sharing = [s for s in self.students if s.distill.augment == augment
                   and (augment.embeddings != "student" or s.name == source)]
        if not any(s.distill.caches_transfer_logits() for s in sharing):
            raise CompressError(f"{where}: the transfer set of student {source!r} gets no saved teacher logits: it "
                                f"needs a logit-only step (distill.two_step, or no intermediate matches) with "
                                f"cache_teacher_logits: true")

    def _check_positions(self, file: str) -> None:
        """``task.max_length`` within the position table of the teacher and of each student checkpoint (zoo name or
        folder), and ``bench.seq_lengths`` within that of the model the bench times (`_benched_checkpoint`), before
        torch: not once the teacher has trained (a hub model's is checked as it loads)."""
        models = [("teacher.model", self.teacher.model)] + [
            (f"students[{i}].init", s.init) for i, s in enumerate(self.students or []) if s.init != "random"]
        for where, name in models:
            limit = model_positions(name)
            if limit is not None and self.task.max_length > limit:
                raise CompressError(f"{file}: task.max_length: {self.task.max_length} tokens exceed the {limit} "
                                    f"positions of {where} {name!r} (max_position_embeddings); use at most {limit}")
        benched = self._benched_checkpoint() if self.bench is not None and self.quantize is not None else None
        if benched is None:
            return
        where, name = benched
        if name == "random":  # built with max(512, the teacher's) positions (`students.build.build_student`)
            from teachers.zoo import ZOO

            teacher = self.teacher.model
            known = teacher in ZOO or _folder_config(teacher) is not None  # a hub teacher's is known once it loads
            limit = max(512, model_positions(teacher) or 0) if known else None
            what = f"{where}, a random student (max(512, the teacher's positions))"
        else:
            limit, what = model_positions(name), f"{where} {name!r}: max_position_embeddings"
        longest = max(self.bench.seq_lengths, default=0)
        if limit is not None and longest > limit:  # the bench stage refused it, after every model had trained
            raise CompressError(f"{file}: bench.seq_lengths: {longest} tokens exceed the {limit} positions of the "
                                f"model the bench times ({what}); use at most {limit}")

    def _benched_checkpoint(self) -> Optional[tuple[str, str]]:
        """(field, name) of the checkpoint whose position table the model the bench stage times has (the quantize
        source, `newest_source`; a pruned model keeps its source's); ``(students[i], "random")`` for a student of
        random init."""
        students = self.students or []
        source = self.quantize.source or newest_source(self, ("distill",) * bool(students) + ("prune",) * bool(
            self.prune))
        if source == "prune":
            source = self._prune_source()
        student = next((s for s in students if s.name == source), None)
        if student is None or student.kind == "layer_drop":
            return "teacher.model", self.teacher.model
        index = students.index(student)
        return (f"students[{index}]", "random") if student.init == "random" else (f"students[{index}].init",
                                                                                  student.init)

    def _check_prune_layers(self, file: str, source: str, depth: Optional[int]) -> None:
        """``prune.layers`` names layers of the model pruned (``source``, of ``depth`` layers; None: not known here, a
        hub model's), before torch: not once the teacher and students have trained and been scored."""
        for name in self.prune.layers if depth is not None else ():
            if int(name.rsplit(".", 1)[1]) >= depth:
                raise CompressError(f"{file}: prune.layers.{name}: no such layer: the model pruned ({source}) has "
                                    f"{depth} layers (layer.0 to layer.{depth - 1})")

    def _check_student_depths(self, file: str) -> dict[str, Optional[int]]:
        """Each student's depth against the model it copies layers from, and its distillation matches against both
        depths (`compress.distill.matches.resolve_matches`, as the distill stage will), before torch: not once the
        teacher has trained. A hub model's shape is unknown here: what depends on it is checked when it loads.
        Returns the depth of the teacher and of each student, by name (None where unknown)."""
        from types import SimpleNamespace

        from compress.distill.matches import resolve_matches

        teacher = model_shape(self.teacher.model)
        depths = {"teacher": teacher[0] if teacher else None}
        for i, s in enumerate(self.students or []):
            where = f"students[{i}]"
            if s.kind == "narrow" and s.init == "random":
                shape = (s.layers or len(s.keep_layers or []), s.hidden)
            else:  # its layers are copied from the teacher (layer_drop) or its init checkpoint
                copied = self.teacher.model if s.kind == "layer_drop" else s.init
                source = teacher if s.kind == "layer_drop" else model_shape(s.init)
                what = "the teacher" if s.kind == "layer_drop" else f"checkpoint {s.init!r}"
                self._check_copied_widths(file, where, s, model_widths(copied), what)
                shape = None if source is None else self._copied_shape(file, where, s, source, what)
            depths[s.name] = shape[0] if shape else None
            if shape is None and teacher is None:
                continue
            # an unknown side is taken as deep as any layer named, and as wide as the other (no projection refusal)
            big = 10 ** 9
            t_cfg = SimpleNamespace(num_hidden_layers=teacher[0] if teacher else big,
                                    hidden_size=teacher[1] if teacher else shape[1])
            s_cfg = SimpleNamespace(num_hidden_layers=shape[0] if shape else big,
                                    hidden_size=shape[1] if shape else t_cfg.hidden_size)
            if s.distill.layer_map is not None and (teacher is None or shape is None):
                continue  # the generated pairs depend on both depths
            try:
                resolve_matches(s.distill, t_cfg, s_cfg, where=f"{where}.distill")
            except CompressError as e:
                raise CompressError(f"{file}: {e}") from None
        return depths

    @staticmethod
    def _check_copied_widths(file: str, where: str, s: "StudentConfig", widths: dict[str, int], what: str) -> None:
        """A student whose layers are copied whole keeps their widths: a ``hidden``/``heads``/``ffn`` (narrow from a
        checkpoint: ``vocab_size`` too) other than the source's refused, as the distill stage would refuse it."""
        for key, have in widths.items():
            want = getattr(s, key)
            if want is not None and want != have:
                other = "kind: narrow" if s.kind == "layer_drop" else "init: random"
                raise CompressError(f"{file}: {where}.{key}: {want}, but {what} has {key} {have}; its layers are "
                                    f"copied whole (leave {key} out, or use {other} for another shape)")

    @staticmethod
    def _copied_shape(file: str, where: str, s: "StudentConfig", source: tuple[int, int], what: str) -> tuple[int, int]:
        """(layers, width) of a student whose layers are copied from ``source`` (layers, width), as
        `students.layer_drop.layer_drop_student` (default: half, at least 1) and `students.narrow.from_checkpoint`
        (default: all) build it; layers the source lacks refused."""
        total = source[0]
        if s.keep_layers is not None and max(s.keep_layers) > total:
            raise CompressError(f"{file}: {where}.keep_layers: layer {max(s.keep_layers)} does not exist: {what} has "
                                f"{total} layers (counted from 1)")
        if s.layers is not None and s.layers > total:
            raise CompressError(f"{file}: {where}.layers: {s.layers}, but {what} has only {total} layers")
        default = max(1, total // 2) if s.kind == "layer_drop" else total
        return (len(s.keep_layers) if s.keep_layers else s.layers or default), source[1]

    def _check_finetuned_head(self, file: str) -> None:
        """``teacher.finetune: false`` with a zoo model or a local folder: it has a classification head (a zoo model
        has none; a folder's config.json names its architecture) that fits the task (`head_mismatch`), before torch."""
        from compress.tasks import task_spec
        from teachers.zoo import ZOO

        where = f"{file}: teacher.model: {self.teacher.model!r} (finetune: false)"
        if self.teacher.model in ZOO:
            raise CompressError(f"{where}: a zoo model is a pretrained encoder without a trained classification head; "
                                f"fine-tune it here instead (finetune: true)")
        if not os.path.isfile(os.path.join(self.teacher.model, "config.json")):
            return  # a hub id: its head is checked as the teacher stage loads it
        with open(os.path.join(self.teacher.model, "config.json"), encoding="utf-8") as f:
            fields = json.load(f)  # readable JSON object: check_model_name saw it
        try:
            architectures = list(fields.get("architectures") or [])
            id2label = {str(k): v for k, v in (fields.get("id2label") or {}).items()}
            count = len(id2label) or int(fields.get("num_labels", 2))
        except (AttributeError, TypeError, ValueError) as e:
            raise CompressError(f"{where}: config.json: architectures, id2label or num_labels malformed ({e})") from None
        no_head = headless(architectures)
        if no_head:
            raise CompressError(f"{where}: {no_head}")
        names = [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(count)]
        problem, _ = head_mismatch(count, names, task_spec(self.task).labels)
        if problem:
            raise CompressError(f"{where}: {problem}")

    def section(self, name: str) -> dict:
        """A section as plain data (for fingerprints and manifests)."""
        return plain(getattr(self, name))


def plain(value: Any) -> Any:
    """``value`` (a config dataclass, or lists/dicts of them) as plain data, like ``dataclasses.asdict``, except that
    a field marked ``omit_default`` is left out while it holds its default: an option added after run folders exist
    then leaves their fingerprints, and so their stages, valid until a recipe sets it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get("omit_default") and getattr(value, f.name) == f.default)}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------------------------- loading
def _recipe_hint(path: Path) -> str:
    """For a recipe path that does not exist: the same name with .yaml when that exists, else the recipes of its
    folder (`pipelines/quickstart` for `pipelines/quickstart.yaml`; a misspelt name)."""
    for suffix in (".yaml", ".yml"):
        if path.with_name(path.name + suffix).is_file():
            return f" (did you mean {path.with_name(path.name + suffix)}?)"
    try:
        names = sorted(p.name for p in path.parent.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    except OSError:
        return ""
    if not names:
        return ""
    return f" (recipes in {path.parent}: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''})"


def load_recipe(path: str | os.PathLike, overrides: Optional[dict] = None) -> Recipe:
    """Read and validate a recipe YAML file. ``overrides`` are dotted keys, e.g. {"teacher.epochs": 1}."""
    path = Path(path)
    if overrides is not None and not isinstance(overrides, dict):  # a list of "k=v" strings, as on the command line
        raise CompressError(f"overrides: a dict of dotted keys to values, e.g. {{'teacher.epochs': 1}}, got "
                            f"{type(overrides).__name__}")
    if not path.is_file():
        raise CompressError(f"{path}: " + ("a folder, not a recipe file" if path.is_dir() else "not a regular file (a "
                                           "recipe is read from a file)" if path.exists() else
                                           "recipe file not found" + _recipe_hint(path)))
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_StrictLoader)
    except _DuplicateKey as e:
        where = _key_path(text, e.line, e.column) or str(e.key)
        raise CompressError(f"{path}: {where}: given twice (line {e.line + 1}, column {e.column + 1})") from None
    except UnicodeDecodeError as e:
        raise CompressError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    except (yaml.YAMLError, ValueError) as e:  # ValueError: an int of over 4300 digits, a bad date
        raise CompressError(f"{path}: not valid YAML: {yaml_error(e)}") from None
    if data is None:  # empty, or comments only
        raise CompressError(f"{path}: the recipe is empty (task: and teacher: at least; see pipelines/quickstart.yaml)")
    if not isinstance(data, dict):
        raise CompressError(f"{path}: a recipe is a mapping of sections, got "
                            f"{'int' if isinstance(data, _YamlInt) else type(data).__name__}")
    # a section given whole (--set 'prune={...}') goes in first, whatever its place: the keys set inside it add to it
    whole = frozenset(k for k in overrides or {} if "." not in k and "[" not in k)
    for key in _empty_sections(text):
        if key not in whole:
            raise CompressError(f"{path}: {key}: an empty section (" + ("list one student at least" if key == "students"
                                else f"write `{key}: {{}}` for its defaults") + f"; `{key}: null` turns it off)")
    applied: list[str] = []
    for dotted, value in sorted((overrides or {}).items(), key=lambda kv: kv[0] not in whole):
        _set_dotted(data, dotted, value, whole, tuple(applied))
        applied.append(dotted)
    data.setdefault("name", path.stem)
    try:
        recipe = from_dict(Recipe, data, file=str(path))
    except CompressError as e:  # a value given on the command line is not the file's: say so
        raise CompressError(_blame_override(str(e), str(path), overrides or {})) from None
    recipe.path = str(path)
    recipe.overrides = dict(overrides or {})
    return recipe


def _blame_override(message: str, file: str, overrides: dict) -> str:
    """``message`` (`from_dict`'s "FILE: KEY: ...") saying the value came from the command line when KEY, or a section
    above it, was set with --set (the file does not hold it)."""
    prefix = f"{file}: "
    if not message.startswith(prefix):
        return message
    rest = message[len(prefix):]
    dotted = _dotted(rest.split(": ", 1)[0])
    # the most specific override holding KEY (--set prune={...} --set prune.recover.lr=0 blames the second)
    for given in sorted(overrides, key=lambda g: -len(_dotted(g).split("."))):
        if dotted == _dotted(given) or dotted.startswith(_dotted(given) + "."):
            return f"{message} (a value given with --set {given})"
    below = [given for given in overrides if _dotted(given).startswith(dotted + ".")]
    if below:  # a refusal of a whole section ("prune: nothing to prune") that holds values from the command line
        return f"{message} (the section holds {'a value' if len(below) == 1 else 'values'} given with " \
               f"{', '.join(f'--set {g}' for g in below)})"
    return message


class _DuplicateKey(Exception):
    def __init__(self, key, line: int, column: int):
        super().__init__(f"{key}: given twice (line {line + 1}, column {column + 1})")
        self.key, self.line, self.column = key, line, column


def _key_path(text: str, line: int, column: int) -> Optional[str]:
    """The dotted path (``students[0].train.epochs``) of the mapping key written at ``line``/``column`` (0-based) of
    the YAML ``text``, walked in document order (an anchored mapping is named where it is written, not where an
    alias or a merge reaches it); None where it is not found."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    todo, seen = [(root, "")], set()
    while todo:
        node, path = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            below = []
            for key, value in node.value:
                here = f"{path}.{key.value}" if path else str(key.value)
                if (key.start_mark.line, key.start_mark.column) == (line, column):
                    return here
                below.append((value, here))
            todo += reversed(below)  # popped first to last
        elif isinstance(node, yaml.SequenceNode):
            todo += reversed([(item, f"{path}[{i}]") for i, item in enumerate(node.value)])
    return None


def yaml_value(text: str) -> Any:
    """A value given on the command line (``--set KEY=VALUE``), read as recipe files are: a key given twice in one of
    its mappings is an error (``_DuplicateKey``), not the last one kept silently."""
    return yaml.load(text, Loader=_StrictLoader)


def _empty_sections(text: str) -> list[str]:
    """The stage sections written with nothing after them (``quantize:``, its keys commented out): YAML reads them as
    null, which turns the stage off without a word; ``prune: null`` (``~``, ``!!null``) says so on purpose and is not
    one (an empty plain scalar starts where it ends)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        return []
    return [k.value for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value in _STAGE_SECTIONS
            and isinstance(v, yaml.ScalarNode) and v.tag == "tag:yaml.org,2002:null"
            and v.start_mark.index == v.end_mark.index]


class _StrictLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML keeps the last one silently: a
    second `teacher:` section replaced the first). Keys brought in by a merge (``<<: *anchor``) may be overridden."""

    def flatten_mapping(self, node):
        # checked here, the first time a mapping is flattened: flattening puts the merged pairs into node.value in
        # place, and a mapping an anchor names may be flattened by a later one that merges it (`<<: *a`) before it
        # is itself built; its merged keys beside its own overrides are no key given twice
        checked = self.__dict__.setdefault("_checked_mappings", set())  # ids: the loader holds every node alive
        if id(node) not in checked:
            checked.add(id(node))
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, typing.Hashable):
                    continue  # refused by the constructor itself
                if key in seen:
                    mark = key_node.start_mark
                    raise _DuplicateKey(key, mark.line, mark.column)
                seen.add(key)
        super().flatten_mapping(node)


class _YamlInt(int):
    """A YAML integer that remembers how it was written (``007``, ``0x1F``, ``1_000``, ``1:30``): a name given as one
    keeps that text (str() of the number made runs/7 of ``name: 007``)."""

    text: str = ""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value = _YamlInt(yaml.SafeLoader.construct_yaml_int(loader, node))
    value.text = str(node.value)
    return value


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _construct_timestamp(loader: yaml.SafeLoader, node: yaml.ScalarNode):
    """A YAML date, or one line naming the value and where it is when it is none (``seed: 2024-02-30`` said only
    "day is out of range for month")."""
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError as e:
        raise yaml.constructor.ConstructorError(None, None, f"{node.value!r} is no date ({e})",
                                                node.start_mark) from None


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def yaml_error(e: yaml.YAMLError | ValueError) -> str:
    """A YAML parse error on one line: what went wrong and where (line and column, 1-based). A ValueError: an integer
    of more than 4300 digits (Python's int-from-string limit; its hint at sys.set_int_max_str_digits left out)."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0].split("; use sys.")[0]
    return f"{what} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else what


_STAGE_SECTIONS = ("students", "prune", "quantize", "bench", "report", "bundle")
"""Recipe sections whose presence runs a stage: a ``--set`` into one the recipe lacks would add the stage with every
other setting at its default (``search``, the settings of `compress search`, is no stage: its keys may be set)."""


def _field_at(keys: list[str]) -> tuple[Any, Any]:
    """(type, dataclass field) of the recipe field at ``keys`` (list entries by index); (None, None) when no field of
    a dataclass is there (a mapping's key, an unknown name: the recipe's check names it)."""
    tp: Any = Recipe
    field_ = None
    for k in keys:
        tp = _unwrap(tp)
        if typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
            continue
        if not dataclasses.is_dataclass(tp):
            return None, None
        field_ = next((f for f in dataclasses.fields(tp) if f.name == k), None)
        if field_ is None:
            return None, None
        tp = typing.get_type_hints(tp)[k]
    return tp, field_


def _default_section(keys: list[str]) -> dict:
    """What a sub-section missing from the recipe (``prune.recover`` for ``--set prune.recover.temperature=3``) holds
    when left out: its field's default where that differs from a bare mapping's (recovery: 1 epoch at lr 1e-4, not
    `TrainConfig`'s 3 at 5e-5), else an empty mapping."""
    _, field_ = _field_at(keys)
    if field_ is None or field_.default_factory is dataclasses.MISSING:
        return {}
    default = field_.default_factory()
    if not dataclasses.is_dataclass(default):
        return {}
    bare = type(default)()
    return {f.name: getattr(default, f.name) for f in dataclasses.fields(default)
            if not f.metadata.get("internal") and getattr(default, f.name) != getattr(bare, f.name)}


def _unwrap(tp: Any) -> Any:
    """``Optional[X]`` -> ``X``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def _dotted(key: str) -> str:
    """``students[0].train`` as ``students.0.train``: the two spellings of a list entry --set takes (``students[x]``
    too, so that it is refused as the index it is meant to be, not as an unknown section)."""
    return re.sub(r"\[([^\[\]]*)\]", r".\1", key)


def _set_dotted(data: dict, dotted: str, value: Any, sections: frozenset = frozenset(),
                earlier: tuple[str, ...] = ()) -> None:
    """``teacher.epochs``; list entries by index: ``students.0.train.epochs`` or ``students[0].train.epochs``; a
    layer name, dots and all, under ``prune.layers``: ``prune.layers.layer.3.heads``. ``earlier``: the --set keys
    already applied (a section they set null is said to be theirs, not the recipe's)."""
    keys = _dotted(dotted).split(".")
    joined = re.fullmatch(r"(prune\.layers\.)((?:[\w.]*\.)?layer\.\d+)((?:\.[^.]*)*)", ".".join(keys))
    if joined:  # the layer name is one key
        keys = ["prune", "layers", joined.group(2), *joined.group(3).split(".")[1:]]
    node: Any = data
    for i, k in enumerate(keys):
        parent = ".".join(keys[:i]) or "recipe"
        if isinstance(node, list):
            if not node:  # "use an index from 0 to -1"
                raise CompressError(f"--set {dotted}: {parent} is an empty list: set the whole list, e.g. "
                                    f"--set '{parent}=[...]'")
            if not k.isdigit() or int(k) >= len(node):
                raise CompressError(f"--set {dotted}: {parent} is a list of {len(node)} entries: "
                                    f"use an index from 0 to {len(node) - 1}")
            k = int(k)
        elif not k:
            raise CompressError(f"--set {dotted}: empty key part (keys look like teacher.epochs or students.0.name)")
        elif not isinstance(node, dict):
            raise CompressError(f"--set {dotted}: {parent} is not a section (its value is {_show(node)})")
        if i == len(keys) - 1:
            node[k] = value
        else:
            if i == 0 and node.get(k) is None and k in _STAGE_SECTIONS and k not in sections:
                # absent, or null: that stage does not run
                raise CompressError(f"--set {dotted}: the recipe has no {k} section (that stage does not run); add "
                                    f"it to the recipe, or set the whole section: --set '{k}={{...}}'")
            absent = i > 0 and isinstance(node, dict) and k not in node
            tp_, field_ = _field_at(keys[:i + 1]) if absent else (None, None)
            # left out, and off when left out: a section (augment), not a list or mapping left empty (search.depths)
            off = field_ is not None and field_.default is None and dataclasses.is_dataclass(_unwrap(tp_))
            if i > 0 and isinstance(node, dict) and (k in node and node[k] is None or off):  # recover/augment: null
                here = ".".join(map(str, keys[:i + 1]))
                by = next((f"by --set {g}" for g in reversed(earlier)
                           if here == _dotted(g) or here.startswith(_dotted(g) + ".")), "in the recipe")
                raise CompressError(f"--set {dotted}: {here} is {'left out' if off else 'null'} (off) {by}; "
                                    f"set the whole of it to turn it on: --set '{here}={{...}}'")
            if isinstance(node, dict) and node.get(k) is None:
                if typing.get_origin(_unwrap(_field_at(keys[:i + 1])[0])) is list:  # not a mapping of key "0"
                    where = ".".join(map(str, keys[:i + 1]))
                    raise CompressError(f"--set {dotted}: {where} is not in the recipe (a list): set the whole list, "
                                        f"e.g. --set '{where}=[...]'")
                node[k] = _default_section(keys[:i + 1])
            node = node[k]


def from_dict(cls: type, data: Any, *, file: str = "<recipe>", where: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, strictly: unknown keys, missing keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise CompressError(f"{file}: {where or 'recipe'}: expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys may be numbers or booleans
    if unknown:
        from difflib import get_close_matches

        known = ", ".join(fields)
        close = get_close_matches(str(unknown[0]), list(fields), n=1, cutoff=0.7)  # label_colum, epoks
        guess = f"did you mean {close[0]!r}? " if close else ""
        raise CompressError(f"{file}: {_join(where, unknown[0])}: unknown key ({guess}known keys: {known})")
    kwargs = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], file, key)
            if f.metadata.get("path"):  # ~/x: the home folder's, as the shell has it (YAML leaves the ~)
                kwargs[name] = _expand_home(kwargs[name])
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
    raw, written = value, (value.text if isinstance(value, _YamlInt) else None)  # a plain int from here on, its
    if written is not None:  # text kept (``raw`` for the options of a Union)
        value = int(value)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, raw, file, key)
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
        if written is not None and ":" in written:  # YAML 1.1's base 60: max_steps: 1:30 was 90
            raise CompressError(f"{file}: {key}: {written} is a YAML 1.1 base-60 number ({value}); write the number")
        if abs(value) > MAX_INT:  # 1e20 went on to an OverflowError or islice's ValueError traceback mid-run
            raise CompressError(f"{file}: {key}: expected an integer from {-MAX_INT} to {MAX_INT}, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
            value = float(value)  # YAML 1.2's 2e-5: PyYAML (YAML 1.1) reads it as a string, wanting 2.0e-5
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CompressError(f"{file}: {key}: expected a number, got {_show(value)}")
        if isinstance(value, int) and abs(value) > sys.float_info.max:  # math.isfinite: OverflowError
            raise CompressError(f"{file}: {key}: expected a number within a float's range, got {_show(value)}")
        if not math.isfinite(value):
            raise CompressError(f"{file}: {key}: expected a finite number, got {_show(value)}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1: unquoted no/yes/on/off/true/false
            raise CompressError(f"{file}: {key}: expected a string, got the YAML boolean {str(value).lower()} "
                                f"(unquoted no/yes/on/off/true/false are booleans: quote it, e.g. 'no')")
        if isinstance(value, int):  # a label or name written as a number (labels: [0, 1]): its text as written
            return written if written is not None else str(value)
        if not isinstance(value, str):
            raise CompressError(f"{file}: {key}: expected a string, got {_show(value)}")
        return value
    raise TypeError(f"config type {tp!r} for {key} is not supported")  # a bug in our dataclasses, not user input


def _expand_home(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.expanduser(value) if value.startswith("~") else value
    if isinstance(value, list):
        return [_expand_home(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand_home(v) for k, v in value.items()}
    return value


FOLDER_NAME = "no path separator, no control character, not blank, at most 200 bytes"


def default_bundle_name(recipe_name: str, task: str) -> str:
    """<recipe>-<task>-int8, the task left out when the recipe's name already says it (mrpc -> mrpc-int8, sst2-cpu ->
    sst2-cpu-int8, quickstart -> quickstart-sst2-int8)."""
    said = task.lower() in recipe_name.lower().replace("_", "-").split("-")
    return f"{recipe_name}-int8" if said else f"{recipe_name}-{task}-int8"


def check_bundle_name(recipe: "Recipe", file: str, settable: bool = True) -> None:
    """A bundle named after the recipe and its task (no ``bundle.name``; a search's always) needs a task name that can
    go into a folder's name: "my reviews/v2" passed validation and stopped the run at its last stage."""
    if not folder_name(default_bundle_name(recipe.name, recipe.task.name)):
        raise CompressError(f"{file}: task.name: {_show(recipe.task.name)} goes into the bundle's name "
                            f"(<recipe>-<task>-int8), a plain folder name ({FOLDER_NAME}): rename the task"
                            + (" or set bundle.name" if settable else ""))


def folder_name(name: str) -> bool:
    """Whether ``name`` (a run's, a student's, a bundle's) can name one folder everywhere: a 300-character name passed
    validation and crashed the run ("File name too long"), a NUL byte ("embedded null byte"); 200 bytes leave room for
    a bundle's ``-<task>-int8.tar.gz``."""
    return (PurePosixPath(name).name == name and name not in ("", ".", "..") and "\\" not in name
            and bool(name.strip()) and not any(ord(c) < 32 or ord(c) == 127 for c in name)
            and len(name.encode()) <= 200)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
