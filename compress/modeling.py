"""Loading and saving task models (any `AutoModelForSequenceClassification`) with their tokenizers."""

from __future__ import annotations

import copy
import logging
import os
import re
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from transformers import logging as hf_logging

from compress import hub
from compress.bundle_predict import first_line
from compress.config import head_mismatch, head_order, headless, lfs_pointer, position_limit, unsupported_type
from compress.tasks import TaskSpec
from compress.errors import CompressError
from teachers.zoo import resolve

log = logging.getLogger(__name__)


def task_kwargs(spec: TaskSpec) -> dict:
    """Config fields that make a model fit a task: label count and names, regression or classification."""
    if spec.is_regression:
        return {"num_labels": 1, "problem_type": "regression"}
    return {"num_labels": spec.num_labels, "problem_type": "single_label_classification",
            "id2label": dict(enumerate(spec.labels)), "label2id": {n: i for i, n in enumerate(spec.labels)}}


def remote_code(e: BaseException) -> bool:
    """transformers' refusal of a model or tokenizer that needs its repository's own code."""
    return "trust_remote_code" in str(e)


def load_error(e: BaseException) -> str:
    """transformers' reason for not loading, in one line: its first sentence (a path's ". " is no sentence end)."""
    if remote_code(e):
        return "it needs its repository's own code (trust_remote_code), which compress never runs"
    return re.split(r"\.\s+(?=[A-Z])", first_line(e))[0]


def load_tokenizer(source: str, offline: dict, failed: str, hint: str):
    """``AutoTokenizer.from_pretrained(source)`` with its failures in one line, after ``failed`` (e.g. "model 'x':
    cannot load its tokenizer"); ``hint``: what to do where the folder holds no tokenizer files (transformers then
    raises TypeError deep in its loader: "stat: path should be string...")."""
    try:
        return AutoTokenizer.from_pretrained(source, **offline)
    except OSError as e:
        raise CompressError(f"{failed} ({str(e).splitlines()[0]})") from None
    except (TypeError, ValueError, AttributeError) as e:
        if remote_code(e):
            raise CompressError(f"{failed} ({load_error(e)})") from None
        raise CompressError(f"{failed} ({type(e).__name__}: {first_line(e)}); {hint}") from None
    except Exception as e:  # the tokenizers library's own (a tokenizer.json that is not JSON): a bare Exception
        raise CompressError(f"{failed} ({type(e).__name__}: {first_line(e)})") from None


def one_token_type(tokenizer, config) -> None:
    """A model of one token type (``type_vocab_size: 1``, RoBERTa's) reads no token_type_ids: ``tokenizer`` (changed in
    place, and so saved with the model) stops giving them. A RoBERTa checkpoint that ships a BERT WordPiece tokenizer
    (klue/roberta's kind) gave a text pair's second segment type 1, past its one-row table: an IndexError traceback
    in the teacher's first step of a pair task. The ONNX export then has no such input either (`export.input_names`)."""
    if tokenizer is None or (getattr(config, "type_vocab_size", None) or 0) > 1 \
            or "token_type_ids" not in tokenizer.model_input_names:
        return
    names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
    tokenizer.model_input_names = names
    tokenizer.init_kwargs["model_input_names"] = names  # what save_pretrained writes to tokenizer_config.json


def check_vocab(tokenizer, config, what: str) -> None:
    """A tokenizer of another vocabulary than the model's embeddings: refused where it has more tokens than the model
    embeds (their ids past the table: an IndexError traceback at the first such text), warned of where its padding id
    is not config.json's ``pad_token_id`` (MPNet's ids are BERT's shifted by 4: a model trained on the other's ids,
    silently). A folder's own tokenizer was never checked (the teacher's, a student's ``init``)."""
    if tokenizer is None:
        return
    if len(tokenizer) > config.vocab_size:
        raise CompressError(f"{what}: its tokenizer has {len(tokenizer)} tokens but config.json's vocab_size is "
                            f"{config.vocab_size}: a tokenizer of another model (its ids past the embeddings)")
    pad, want = tokenizer.pad_token_id, getattr(config, "pad_token_id", None)
    if pad is not None and want is not None and pad != want:
        log.warning("%s: its tokenizer pads with id %d but config.json's pad_token_id is %d: a tokenizer of another "
                    "vocabulary? (MPNet's ids are BERT's shifted by 4; the model would learn from ids it was not "
                    "trained on)", what, pad, want)


def load_for_task(model: str, spec: TaskSpec, tokenizer: bool = True, keep_head: bool = False,
                  loading: Optional[dict] = None):
    """A pretrained encoder (zoo name, folder or hub id) with a head for ``spec``, and its tokenizer (None when
    not asked for: a student with a tokenizer of its own). A head of the task's label count is kept as the start of
    training, its outputs put in the task's label order where its config names the task's labels in another order;
    a head of another count is replaced. ``keep_head``: the model is already fine-tuned on the task
    (`finetuned_head`): its own trained head is kept, not replaced. ``loading``: filled with ``new_head``, whether
    the prediction layer was initialised anew (none of the task's shape in the checkpoint)."""
    hub.check(model, f"model {model!r}")
    source, offline = resolve(model), hub.load_kwargs(model)
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise CompressError(f"model {model!r}: no config.json in {source}")
    try:
        config = AutoConfig.from_pretrained(source, **offline)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # a model_type unknown here, repository
        # code (ValueError, KeyError); a config.json of a JSON list (TypeError, AttributeError)
        raise CompressError(f"model {model!r}: cannot load its config.json ({load_error(e)})") from None
    tokenizer = (load_tokenizer(source, offline, f"model {model!r}: cannot load its tokenizer",
                                "save the tokenizer with the model") if tokenizer else None)
    # a hub model: known only once its config is here
    reason = unsupported_type(config.model_type, getattr(config, "position_embedding_type", None))
    if reason:
        raise CompressError(f"model {model!r}: {reason}")
    one_token_type(tokenizer, config)
    check_vocab(tokenizer, config, f"model {model!r}")
    if getattr(config, "compress_layer_sizes", None) and os.path.isdir(source):
        from compress.prune import uniform_ffn

        if not uniform_ffn(config):  # stock from_pretrained cannot rebuild per-layer FFN widths
            return _per_layer_widths(model, source, config, spec, keep_head, loading), tokenizer
    if keep_head:  # its own trained head, or refused
        if loading is not None:
            loading["new_head"] = False
        return finetuned_head(model, source, config, spec, offline), tokenizer
    order = head_order(_head_names(config), spec.labels)  # a trained head of the task's labels in another order
    for key, value in task_kwargs(spec).items():
        setattr(config, key, value)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights are newly initialized" is expected: the head is new
    try:  # a folder with a head for another label count (or regression) gets a fresh one, not a size-mismatch error
        model_obj, info = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, **offline, ignore_mismatched_sizes=True, output_loading_info=True)
    except CompressError:
        raise
    except Exception as e:  # a truncated or git-lfs pointer weights file: SafetensorError, UnpicklingError...
        raise CompressError(_unreadable(model, source, e)) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    mismatched = info.get("mismatched_keys") or []
    misfits = [k for k in mismatched if k.split(".")[0] != "classifier"]
    if misfits:  # ignore_mismatched_sizes is for the head: an encoder weight would be re-initialised at random
        raise CompressError(_misfit(model, misfits))
    replaced = [k for k in mismatched if k not in misfits]
    if loading is not None:
        missing = [k for k in info.get("missing_keys") or [] if k.split(".")[0] in ("classifier", "pre_classifier")]
        loading["new_head"] = bool(missing or replaced)
    if replaced:  # the silenced "newly initialized" note, where it matters: a trained head is dropped
        log.warning("%s: its classification head has another number of outputs than the task's %d: %s "
                    "initialised anew (the trained weights are not used)", model, task_kwargs(spec)["num_labels"],
                    ", ".join(replaced))
    _select_bias_heads(model_obj)
    if order:
        _reorder_head(model_obj, order, f"model {model!r}")
    return model_obj, tokenizer


def _per_layer_widths(model: str, source: str, config, spec: TaskSpec, keep_head: bool,
                      loading: Optional[dict] = None):
    """A folder pruned to per-layer FFN widths (a prune stage's output) for the task ``spec``, loaded as
    `load_trained` does (`compress.prune.load_pruned`: every saved weight, strictly), then fitted to the task as
    `load_for_task` fits any model: ``keep_head`` as `finetuned_head` (its head must fit the task), else its head kept
    when it has the task's label count, a new one of the task's size otherwise."""
    from compress.prune import load_pruned_model

    names = _head_names(config)
    problem, warning = head_mismatch(config.num_labels, names, spec.labels)
    where = f"model {model!r}" + (" (teacher.finetune: false)" if keep_head else "")
    if keep_head and problem:
        raise CompressError(f"{where}: {problem}")
    if loading is not None:
        loading["new_head"] = bool(problem)
    if keep_head and warning:
        log.warning("%s: %s", where, warning)
    try:
        model_obj = load_pruned_model(source)  # (the caller loads the tokenizer it is asked for)
    except CompressError:
        raise
    except Exception as e:  # a truncated weights file: SafetensorError, as from_pretrained's path catches it
        raise CompressError(_unreadable(model, source, e)) from None
    order = head_order(names, spec.labels)
    if order:
        _reorder_head(model_obj, order, where)
    if problem:  # another label count (or regression): a new head, as from_pretrained gives any other model: its
        # weights of another shape are new, the others kept (an MPNet head's dense layer; a BERT head is one linear)
        fresh_config = copy.deepcopy(model_obj.config)
        for key, value in task_kwargs(spec).items():
            setattr(fresh_config, key, value)
        head = AutoModelForSequenceClassification.from_config(fresh_config).classifier
        new = head.state_dict()
        head.load_state_dict({k: v for k, v in model_obj.classifier.state_dict().items()
                              if k in new and new[k].shape == v.shape}, strict=False)
        model_obj.classifier = head
    for key, value in task_kwargs(spec).items():
        setattr(model_obj.config, key, value)
    return model_obj.eval()  # as from_pretrained returns every other model


def _select_bias_heads(model_obj) -> None:
    """A head-pruned MPNet adds only its kept heads' position bias (`compress.prune.select_bias_heads`, as
    `load_trained` does); transformers' loading leaves the bias whole and the first forward fails."""
    if getattr(model_obj.config, "pruned_heads", None) or getattr(model_obj.config, "compress_pruning", None):
        from compress.prune import select_bias_heads

        select_bias_heads(model_obj)


def _unreadable(model: str, source: str, e: Exception) -> str:
    """The one-line refusal of a model whose weights cannot be read (``e`` from from_pretrained)."""
    pointer = lfs_pointer(source) if os.path.isdir(source) else None
    if pointer:
        return (f"model {model!r}: {pointer} is a git-lfs pointer, not the weights (the folder was cloned without "
                f"git-lfs): run `git lfs pull` there")
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    from teachers.zoo import ZOO

    if model in ZOO:  # its cache was verified when fetched, and damaged since (a full disk, an edit)
        return (f"model {model!r}: cannot read its weights in {source} ({type(e).__name__}: {first}); delete that "
                f"folder and it is fetched and verified again")
    return f"model {model!r}: cannot read its weights ({type(e).__name__}: {first})"


def _misfit(model: str, keys: list[str]) -> str:
    """The one-line refusal of a model whose encoder weights have other shapes than its config.json gives."""
    return (f"model {model!r}: its weights do not fit its config.json ({', '.join(keys[:2])}"
            f"{' ...' if len(keys) > 2 else ''} of another shape)")


def _head_names(config) -> list[str]:
    """The label names of a model's head as its config.json has them (LABEL_i where it names none)."""
    return [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]


def _reorder_head(model_obj, order: list[int], where: str) -> None:
    """Put the outputs of ``model_obj``'s classifier in the task's label order (`head_order`): its output layer's rows
    are permuted, so the model scores as it did, each label under the task's index."""
    count = len(order)
    outputs = [m for name, m in model_obj.named_modules() if name.split(".")[0] == "classifier"
               and isinstance(m, torch.nn.Linear) and m.out_features == count]
    if len(outputs) != 1:
        raise CompressError(f"{where}: its head's labels are the task's in another order, and its output layer was "
                            f"not found to reorder them; list task.labels in the head's order")
    index = torch.tensor(order)
    with torch.no_grad():
        outputs[0].weight.copy_(outputs[0].weight[index])
        if outputs[0].bias is not None:
            outputs[0].bias.copy_(outputs[0].bias[index])
    log.info("%s: its head's outputs put in the task's label order (head output %s for each label)", where, order)


def finetuned_head(model: str, source: str, config, spec: TaskSpec, offline: dict):
    """The classifier of ``model`` as fine-tuned, head included, for the task ``spec`` (``teacher.finetune: false``).
    Refused in one line: a head that does not fit the task (`head_mismatch`), or none (its weights would be new);
    the task's label names in another order are put in the task's order (`_reorder_head`); other label names are taken
    by position with a warning. The returned model carries the task's label names."""
    where = f"model {model!r} (teacher.finetune: false)"
    names = _head_names(config)
    problem, warning = head_mismatch(config.num_labels, names, spec.labels)
    problem = headless(getattr(config, "architectures", None)) or problem  # a bare encoder: no head, not "2 outputs"
    if problem:
        raise CompressError(f"{where}: {problem}")
    if warning:
        log.warning("%s: %s", where, warning)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model_obj, info = AutoModelForSequenceClassification.from_pretrained(  # misfits listed, not a traceback
            source, config=config, **offline, output_loading_info=True, ignore_mismatched_sizes=True)
    except CompressError:
        raise
    except Exception as e:
        raise CompressError(_unreadable(model, source, e)) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if info.get("mismatched_keys"):  # the head's size was checked above: an encoder weight
        raise CompressError(_misfit(model, list(info["mismatched_keys"])))
    new = sorted(info.get("missing_keys") or [])
    if new:
        raise CompressError(f"{where}: it has no trained classification head ({', '.join(new[:3])} would be new "
                            f"weights); fine-tune it here instead (finetune: true)")
    _select_bias_heads(model_obj)
    order = head_order(names, spec.labels)
    if order:
        _reorder_head(model_obj, order, where)
    for key, value in task_kwargs(spec).items():  # the task's label names and problem type, as a fine-tuned head has
        setattr(model_obj.config, key, value)
    return model_obj


def max_positions(config) -> int | None:
    """How many tokens a model takes: its position table, less the rows RoBERTa-style models skip; None if unbounded."""
    return position_limit(config.to_dict())


def check_length(config, length: int, where: str, what: str) -> None:
    """Refuse ``length`` tokens (``where`` names the recipe field) beyond the model's position table at once, not as
    a tensor-size error in the middle of training or timing."""
    limit = max_positions(config)
    if limit is not None and length > limit:
        raise CompressError(f"{where}: {length} tokens exceed {what}'s {limit} positions "
                            f"(max_position_embeddings); use at most {limit}")


def load_trained(folder: str | Path):
    """A model saved by one of our stages (save_pretrained folder) and its tokenizer."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CompressError(f"{folder}: not a saved model folder (no config.json)")
    try:
        if "compress_layer_sizes" in (folder / "config.json").read_text(encoding="utf-8"):
            from compress.prune import load_pruned  # pruned: per-layer FFN widths, MPNet's per-layer position heads

            return load_pruned(folder)
        return AutoModelForSequenceClassification.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    except CompressError:
        raise
    except Exception as e:  # a truncated safetensors, a config.json that is not JSON, missing tokenizer files...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompressError(f"{folder}: cannot load the saved model ({type(e).__name__}: {first[:200]}); rerun the "
                            f"stage that wrote it") from None


def save(model, tokenizer, folder: str | Path) -> None:
    """safetensors weights, config and tokenizer; never pickle."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def save_atomic(model, tokenizer, folder: Path, records: dict[str, object]) -> None:
    """`save` plus JSON ``records`` (file name -> content) into ``folder``, written aside (``.<name>.tmp-<pid>``, which
    `compress.manifest.remove_dead` recognises) and renamed: a reader never sees a half-written folder."""
    import os
    import shutil

    from compress.manifest import write_json

    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, tokenizer, tmp)
    for name, content in records.items():
        write_json(tmp / name, content)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def freeze_head(model: torch.nn.Module) -> list[str]:
    """Stop training a classifier's prediction layer and pooler (everything outside its base model, and the base
    model's pooler): a student trained on intermediate matches alone keeps its trained head as it is. Returns their
    names."""
    base = model.base_model
    inside = {id(p) for p in base.parameters()}
    pooler = getattr(base, "pooler", None)
    pooled = {id(p) for p in pooler.parameters()} if isinstance(pooler, torch.nn.Module) else set()
    names = []
    for name, p in model.named_parameters():
        if id(p) not in inside or id(p) in pooled:
            p.requires_grad_(False)
            names.append(name)
    return names


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
