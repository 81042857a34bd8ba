"""Edge bundle: one folder (and the same folder as a ``.tar.gz``) that holds all a device needs to run the model.

    <name>/
      model.onnx        int8 ONNX model (onnxruntime)
      model.ort         the same model in ORT format (onnxruntime mobile / minimal builds), when asked for
      tokenizer.json    the tokenizer (HF `tokenizers`), truncation at the bundle's max length, padding to the longest
                        text of a batch
      labels.json       label names in logit order (null for regression), and the dataset's own labels
      predict.py        standalone runner: onnxruntime + tokenizers + numpy only (source: compress/bundle_predict.py)
      predict.mjs       the same for Node.js and browsers: onnxruntime-web + @huggingface/tokenizers
                        (source: compress/bundle_predict.mjs), pinned in package.json
      index.html        the model in a browser page, through predict.mjs (source: compress/bundle_index.html)
      README.md         model card: task, metrics, latency and its protocol, usage, provenance
      manifest.json     format, sha256 of every other file, model inputs/outputs, max length, task, metrics,
                        latency with protocol, versions

`build` writes the folder and the archive each through a temporary path and a rename. `open_bundle` verifies a
folder, or extracts an archive into a temporary folder first, refusing any member that is not a plain file or
folder inside the destination. `compress predict` and ``predict.py`` verify every sha256 before loading.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import logging
import math
import os
import re
import shutil
import sys
import tarfile
import zlib
from datetime import datetime
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Optional

from compress import bundle_predict
from compress.bundle_predict import FORMAT, MANIFEST, RUNNER, RUNTIME, BundleError, sha256_file
from compress.errors import CompressError
from compress.config import FOLDER_NAME, default_bundle_name, folder_name
from compress.tasks import LABELS_NEEDED, constant_score, good_labels, retention, round_down
from compress.manifest import (file_lock, missing_folders, now_utc, remove_dead, remove_dead_scratch, remove_empty,
                               scratch_dir, versions, write_json)
from compress.ort_session import to_ort_format

log = logging.getLogger(__name__)

PREDICT_SOURCE = Path(bundle_predict.__file__)
PREDICT_JS_SOURCE = PREDICT_SOURCE.with_suffix(".mjs")
PAGE_SOURCE = PREDICT_SOURCE.with_name("bundle_index.html")  # the browser page: predict.mjs behind a text box
JS_RUNTIME = {"onnxruntime-web": "1.31.1", "@huggingface/tokenizers": "0.2.0"}
"""All predict.mjs needs (Node.js or a browser); the versions its parity with predict.py was tested with."""


# ------------------------------------------------------------------------------------------------------ pieces
GLUE_LABEL_NAMES = {
    "sst2": ["negative", "positive"], "cola": ["unacceptable", "acceptable"],
    "mrpc": ["not_equivalent", "equivalent"], "qqp": ["not_duplicate", "duplicate"],
}
"""Readable names for GLUE tasks whose files label classes 0/1 (what a device user sees)."""


def display_labels(task: str, labels: Optional[list[str]]) -> Optional[list[str]]:
    if labels == ["0", "1"] and task in GLUE_LABEL_NAMES:
        return GLUE_LABEL_NAMES[task]
    return labels


def runtime_requirements() -> dict[str, str]:
    """Pinned versions of the packages predict.py needs (the ones the bundle was built and checked with)."""
    return {name: metadata.version(name) for name in RUNTIME}


def pinned_python() -> Optional[str]:
    """The oldest Python that every pinned runtime package supports (the highest ``>=`` of their Requires-Python,
    e.g. "3.11"), or None when none says: predict.py runs on 3.9+, but the card's exact pins may not install there."""
    floors = []
    for name in RUNTIME:
        for part in (metadata.metadata(name).get("Requires-Python") or "").split(","):
            found = re.fullmatch(r"\s*>=\s*(\d+)\.(\d+)(?:\.\d+)*\s*", part)
            if found:
                floors.append((int(found[1]), int(found[2])))
    return "%d.%d" % max(floors) if floors else None


def model_io(onnx_path: Path) -> dict:
    """Input and output names, element types and shapes (symbolic dims as names) of an ONNX model."""
    import onnxruntime as ort

    options = ort.SessionOptions()  # names and shapes only: no graph optimization (none of ORT's fusions) is needed
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise CompressError(f"{onnx_path}: onnxruntime cannot load this model ({str(e).splitlines()[0]})") from None

    def describe(args):
        return [{"name": a.name, "type": a.type, "shape": [d if d is not None else "?" for d in a.shape]}
                for a in args]

    return {"inputs": describe(session.get_inputs()), "outputs": describe(session.get_outputs())}


INT8_OPS = frozenset({"DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger", "QLinearMatMul",
                      "DynamicQuantizeMatMul", "QAttention", "QGemm"})
"""Operators of a model with 8-bit integer weights (QLinear/Integer ops or (Dynamic)QuantizeLinear nodes)."""
INT4_LOOKUP = "GatherBlockQuantized"
"""onnxruntime's lookup of int4 table blocks (`quantize.table_bits: 4`; `bundle_predict.INT4_RUNTIME` and newer)."""


def model_ops(onnx_path: Path) -> set[str]:
    """The operator types of an ONNX model's graph."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise CompressError(f"{onnx_path}: not an ONNX model ({bundle_predict.first_line(e)})") from None
    return {n.op_type for n in model.graph.node}


def long_text(max_length: int) -> str:
    """A text of more than ``max_length`` tokens with any tokenizer: the build's check that inputs are cut there."""
    return " ".join(["word"] * 2 * max_length)


def smoke_test(folder: Path, max_length: int, text_pair: bool) -> None:
    """Run the bundle as a device would, on an input of ``max_length`` tokens: a model whose position table is
    shorter, or whose outputs do not match the label names, is refused here rather than on the device."""
    import onnxruntime as ort

    probe = long_text(max_length)
    ort.set_default_logger_severity(4)  # the failure is said below in one line, not also in ORT's own log
    try:
        runner = bundle_predict.Predictor(folder, threads=1, check=False)
        runner.predict([probe], [probe] if text_pair else None)
    except bundle_predict.ModelRunError as e:  # onnxruntime's own error: the model cannot take max_length tokens
        raise CompressError(f"the model does not run on {max_length} tokens (max_length; is it longer than the "
                            f"model's position table?): {e.reason}") from None
    except BundleError as e:
        raise CompressError(str(e).replace(str(folder), "bundle")) from None
    finally:
        ort.set_default_logger_severity(2)  # ORT's default: warnings


BERT_NORMALIZER_CLASSES = {f"{name}Tokenizer" for name in ("Bert", "ConvBert", "DistilBert", "Electra", "Funnel",
                                                             "LayoutLM", "Lxmert", "MobileBert", "MPNet", "RoFormer",
                                                             "SqueezeBert")}
"""transformers' tokenizer classes (slow names; their fast ones too) whose fast tokenizer sets its
``do_lower_case``/``strip_accents``/``tokenize_chinese_chars`` over tokenizer.json's BertNormalizer."""
BERT_NORMALIZER_DEFAULTS = {"do_lower_case": True, "strip_accents": None, "tokenize_chinese_chars": True}
"""Their defaults for those, which apply where tokenizer_config.json leaves a key out."""


def _model_config_tokenizer_class(folder: Path) -> str:
    """The tokenizer class transformers' AutoTokenizer takes for a folder whose tokenizer_config.json names none:
    the ``config.json`` there names one, or its ``model_type``'s (``bert`` -> BertTokenizer); "" without one."""
    from compress.config import _folder_config

    config = _folder_config(str(folder)) or {}
    if config.get("tokenizer_class"):
        return str(config["tokenizer_class"])
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    return next((name for name in TOKENIZER_MAPPING_NAMES.get(str(config.get("model_type")), ()) if name), "")


def _json_object(path: Path, what: str) -> dict:
    """The JSON object in ``path`` (a ``what``); anything else is one line naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompressError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise CompressError(f"{path}: a folder, not a {what}") from None
    except ValueError as e:  # not JSON (UnicodeDecodeError included)
        raise CompressError(f"{path}: not a {what} ({bundle_predict.first_line(e)})") from None
    if not isinstance(data, dict):
        raise CompressError(f"{path}: not a {what} (a JSON {type(data).__name__}, not an object)")
    return data


def prepare_tokenizer(src: Path, dst: Path, max_length: int, text_pair: bool = False) -> dict:
    """Copy ``tokenizer.json`` with truncation at ``max_length`` (on the side ``tokenizer_config.json``'s
    ``truncation_side`` names, as transformers truncates) and padding to the longest row baked in.

    Returns the tokenizer entry of the manifest (file, pad token and id). The pad token is the one the tokenizer
    already pads with, else the one named in a ``tokenizer_config.json`` beside it, else a usual name in the vocab.
    """
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(src))
    except Exception as e:  # tokenizers raises plain Exceptions
        raise CompressError(f"{src}: not a tokenizers tokenizer.json ({str(e).splitlines()[0]})") from None
    specials = tok.post_processor.num_special_tokens_to_add(text_pair) if tok.post_processor is not None else 0
    if max_length < specials + (2 if text_pair else 1):  # the tokenizers library then stops truncating: the Python
        # runner fed the model every token of a text and predict.mjs none ([CLS] [SEP])
        raise CompressError(f"max_length {max_length}: too short for {src}: its {specials} special tokens leave no "
                            f"room for the text{' and its pair' if text_pair else ''}; give at least "
                            f"{specials + (2 if text_pair else 1)}")
    pad_token = (tok.padding or {}).get("pad_token")
    config = src.with_name("tokenizer_config.json")
    settings = _json_object(config, "tokenizer_config.json") if config.is_file() else {}
    if pad_token is None:
        value = settings.get("pad_token")
        pad_token = value.get("content") if isinstance(value, dict) else value
    if pad_token is None:
        pad_token = next((t for t in ("[PAD]", "<pad>", "<|pad|>") if tok.token_to_id(t) is not None), None)
    if pad_token is None or tok.token_to_id(pad_token) is None:
        raise CompressError(f"{src}: cannot tell the padding token (none set, no tokenizer_config.json pad_token, "
                            f"no [PAD]/<pad> in the vocabulary)")
    pad_id = tok.token_to_id(pad_token)
    # what transformers' Bert-style tokenizers (BERT, MPNet, ...) set over tokenizer.json's BertNormalizer: the
    # tokenizer_config.json values, and for the keys it leaves out, the class's defaults (its tokenizer_class, or
    # config.json's model type's, one of those classes), so the bundle lowercases, strips accents and splits CJK as
    # training did
    names = {"do_lower_case": "lowercase", "strip_accents": "strip_accents", "tokenize_chinese_chars":
             "handle_chinese_chars"}
    state = json.loads(tok.normalizer.__getstate__()) if tok.normalizer is not None else {}
    tokenizer_class = str(settings.get("tokenizer_class") or _model_config_tokenizer_class(src.parent)
                          ).removesuffix("Fast")
    wanted = {**(BERT_NORMALIZER_DEFAULTS if tokenizer_class in BERT_NORMALIZER_CLASSES else {}),
              **{k: settings[k] for k in names if k in settings}}
    if state.get("type") == "BertNormalizer" and wanted:
        from tokenizers.normalizers import BertNormalizer

        state.pop("type")
        state.update({names[k]: value for k, value in wanted.items()})
        tok.normalizer = BertNormalizer(**state)
    inputs = settings.get("model_input_names")
    if isinstance(inputs, list) and "token_type_ids" not in inputs:  # a tokenizer that gives no token types (made
        # one-token-type with a RoBERTa teacher, `modeling.one_token_type`): training fed none (all 0), so the bundle's
        # pair gets no type 1 either, though its model (a BERT student) keeps the input
        tok = _one_token_type(tok, src, text_pair)
    # the side transformers cuts (tokenizer_config.json's truncation_side), so the bundle reads what training read
    side = "left" if settings.get("truncation_side") == "left" else "right"
    tok.enable_truncation(max_length=max_length, direction=side)
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    probe = long_text(max_length)
    ids = len(tok.encode(probe, probe if text_pair else None).ids)
    if ids != max_length:  # what the runners (and smoke_test) rely on: a long input comes out max_length tokens
        raise CompressError(f"{src}: truncation at max_length {max_length} gave {ids} tokens; refusing a tokenizer "
                            f"the runners cannot bound")
    tok.save(str(dst))
    return {"file": dst.name, "pad_token": pad_token, "pad_id": pad_id}


def _one_token_type(tok, src: Path, text_pair: bool):
    """``tok`` with every token type 0: its post-processor's type ids set to 0 (a BertProcessing, which gives a pair's
    second text type 1, as the TemplateProcessing that does the same with type 0; none, as one that adds nothing).
    Refused where a pair still gets another type (a post-processor of another kind)."""
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())

    def zero(node):
        if isinstance(node, dict):
            if node.get("type") == "BertProcessing":
                (sep, sep_id), (cls, cls_id) = node["sep"], node["cls"]
                special = [{"SpecialToken": {"id": cls, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": sep, "type_id": 0}}]
                return {"type": "TemplateProcessing", "single": special,
                        "pair": special + [{"Sequence": {"id": "B", "type_id": 0}},
                                           {"SpecialToken": {"id": sep, "type_id": 0}}],
                        "special_tokens": {t: {"id": t, "ids": [i], "tokens": [t]}
                                           for t, i in ((cls, cls_id), (sep, sep_id))}}
            return {k: 0 if k == "type_id" else zero(v) for k, v in node.items()}
        return [zero(v) for v in node] if isinstance(node, list) else node

    if data.get("post_processor") is None:  # none: the Rust library gives a pair's second text type 1 by itself
        data["post_processor"] = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                                  "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                           {"Sequence": {"id": "B", "type_id": 0}}], "special_tokens": {}}
    data["post_processor"] = zero(data["post_processor"])
    tok = Tokenizer.from_str(json.dumps(data))
    if text_pair and any(tok.encode("a", "b").type_ids):
        raise CompressError(f"{src}: its tokenizer_config.json names no token_type_ids (the model trained on one token "
                            f"type) but its post-processor gives a pair's second text another type, and cannot be "
                            f"rewritten to give type 0")
    return tok


BUILD_PATH_KEYS = ("name_or_path", "_name_or_path", "special_tokens_map_file", "tokenizer_file", "device_map")
"""Keys of a config or tokenizer settings file that hold the build machine's paths (transformers' save_pretrained
leaves them out too)."""


def read_model_config(path: Path) -> dict:
    """A transformers ``config.json`` (``path``, or ``path/config.json`` for a model folder), checked: a JSON object
    with a ``model_type`` (what AutoConfig and Optimum need)."""
    path = Path(path)
    path = path / "config.json" if path.is_dir() else path
    settings = _json_object(path, "transformers config.json")
    if not isinstance(settings.get("model_type"), str) or not settings["model_type"]:
        raise CompressError(f"{path}: no model_type: not a transformers config.json (Optimum and AutoConfig need it)")
    return settings


def transformers_files(settings: dict, tokenizer: Path, dst: Path, labels: Optional[list[str]], max_length: int,
                       pad_token: str) -> list[str]:
    """Write into ``dst`` what 🤗 Optimum's ``ORTModelForSequenceClassification`` and a transformers pipeline read
    beside ``model.onnx``: ``config.json`` (``settings``, the quantized model's config, with ``labels``' names as its
    ``id2label``: the names the runners print; none: a regression) and ``tokenizer_config.json`` (with a
    ``special_tokens_map.json`` when one is beside ``tokenizer``). The tokenizer settings name the class
    ``PreTrainedTokenizerFast``: AutoTokenizer then reads the bundle's ``tokenizer.json`` as the runners do, where a
    model's own class (BertTokenizerFast) re-applies its lower-casing and accent defaults over it; and
    ``model_max_length`` is the bundle's max length, so that ``truncation=True`` cuts where the runners cut (a
    tokenizer.json alone gave no limit: long texts were not cut, and past the model's positions onnxruntime failed).
    The build machine's paths (`BUILD_PATH_KEYS`) are left out. Returns the names written."""
    config = {k: v for k, v in settings.items() if k not in BUILD_PATH_KEYS}
    names = labels if labels is not None else ["LABEL_0"]
    config.update(id2label={str(i): name for i, name in enumerate(names)},
                  label2id={name: i for i, name in enumerate(names)},
                  problem_type="regression" if labels is None else "single_label_classification")
    write_json(dst / "config.json", config)
    written = ["config.json"]
    beside = tokenizer.with_name("tokenizer_config.json")
    data = _json_object(beside, "tokenizer_config.json") if beside.is_file() else {}
    data = {k: v for k, v in data.items() if k not in BUILD_PATH_KEYS + ("max_length",)}  # max_length: the source's
    data.update(tokenizer_class="PreTrainedTokenizerFast", model_max_length=max_length)
    data.setdefault("pad_token", pad_token)
    write_json(dst / "tokenizer_config.json", data)
    written.append("tokenizer_config.json")
    special = tokenizer.with_name("special_tokens_map.json")
    if special.is_file():
        data = _json_object(special, "special_tokens_map.json")
        write_json(dst / special.name, {k: v for k, v in data.items() if k not in BUILD_PATH_KEYS})
        written.append(special.name)
    return written


def defined(x) -> bool:
    """A JSON number that is one: an int or float, not a bool, not nan or infinite (a manifest edited by hand, a
    pearson of constant predictions)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt_metric(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "– (undefined)"  # a retention against a teacher scoring 0 or below, a pearson of constant predictions
    return f"{value:.4f}" if isinstance(value, float) else str(value)


_LATENCY_NAMES = {"p50_ms": "p50 (ms)", "p90_ms": "p90 (ms)", "batch_size": "batch size",
                  "throughput_per_s": "throughput (texts/s: 1000 / mean ms)",
                  "speedup_vs_teacher_onnx_fp32": "speedup vs the teacher's ONNX fp32"}
"""The card's words for the manifest's latency fields (the others shown by their names)."""


def _latency_value(key: str, value) -> str:
    """A latency record's value as the card shows it: ms to the microsecond, as its per-thread table."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if key.startswith("speedup"):
        return f"{round_down(value, 2):.2f}x"
    return f"{value:.3f}" if key.endswith("_ms") else f"{value:.1f}" if isinstance(value, float) else str(value)


_PROTOCOL_NAMES = {"cpu": "CPU", "cores": "cores", "cpu_shared": "CPU shared", "threads": "threads",
                   "inter_op_threads": "inter-op threads", "spin": "while idle", "dev": "inputs",
                   "dev_rows": "dev rows timed", "warmup": "warm-up runs", "order": "order", "timer": "timer",
                   "ort_session": "ONNX Runtime session", "pass": "timed in"}


def _protocol_lines(protocol) -> list[str]:
    """The latency protocol as the card's list, one item a field (known fields first, named in words); a protocol
    of one line of text (a search's) is that line."""
    from compress.report import md_text

    if not isinstance(protocol, dict):
        return [f"- {md_text(str(protocol))}"]

    def value(v) -> str:
        return ", ".join(md_text(str(x)) for x in v) if isinstance(v, list) else md_text(str(v))

    keys = [k for k in _PROTOCOL_NAMES if k in protocol] + sorted(k for k in protocol if k not in _PROTOCOL_NAMES)
    return [f"- {_PROTOCOL_NAMES.get(k, md_text(str(k)))}: {value(protocol[k])}" for k in keys]


def _transformers_lines(manifest: dict) -> list[str]:
    """The model card's lines on loading the bundle with Optimum (when it ships `transformers_files`)."""
    files = manifest.get("transformers_files")
    if not isinstance(files, list) or "config.json" not in files:
        return []
    task = manifest.get("task") or {}
    pair, regression = task.get("text_pair"), task.get("labels") is None
    text = '{"text": "first sentence", "text_pair": "second sentence"}' if pair else '"a gripping, funny film"'
    built = manifest.get("versions") or {}
    install = " ".join(f'"{name}{extra}=={built[name]}"' if built.get(name) else f'"{name}{extra}"'
                       for name, extra in (("optimum-onnx", "[onnxruntime]"), ("transformers", "")))
    return ["### With 🤗 Optimum and transformers pipelines", "",
            f"{', '.join(f'`{f}`' for f in files)} let Optimum's `ORTModelForSequenceClassification` and a "
            f"transformers `pipeline` load this folder (`pip install {install}`, the versions it was built with; "
            "Optimum installs torch too: on Linux, `pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu` first keeps it to the CPU build). Build the session with "
            "`Predictor`, which checks every file's sha256 first and runs onnxruntime as `predict.py` does, as the "
            "figures above were measured: the pipeline then gives "
            "`predict.py`'s scores (`ORTModelForSequenceClassification.from_pretrained('.')` loads it too, unchecked, "
            "with onnxruntime's default optimizations: an int8 model's scores can then move by a few hundredths). "
            f"`truncation=True` cuts inputs at {manifest.get('max_length')} tokens, as the runners do.", "",
            "```python",
            "from optimum.onnxruntime import ORTModelForSequenceClassification",
            "from transformers import AutoConfig, AutoTokenizer, pipeline", "",
            "from predict import Predictor", "",
            "model = ORTModelForSequenceClassification(config=AutoConfig.from_pretrained('.'), "
            "session=Predictor('.').session)",
            "classify = pipeline('text-classification', model=model, tokenizer=AutoTokenizer.from_pretrained('.'), "
            "truncation=True)",
            f"classify({text})", "```", "",
            ("Give each input as a `text`/`text_pair` mapping, as above: the pipeline does not refuse a single text "
             "for this pair model, as `predict.py` does. " if pair else "")
            + ("A regression: `score` is the predicted value (no softmax), `LABEL_0` names the one output. "
               if regression else "")
            + "One input per call, as the scores above were measured; `batch_size=N` pads the inputs of a batch "
            "together, and an int8 dynamic model's scores then move with their batch-mates.", ""]


def model_card(manifest: dict) -> str:
    """README.md of a bundle: what the model does, how well and how fast, how to run it, where it came from."""
    task = manifest["task"]
    req = manifest["requirements"]
    pair = task.get("text_pair")
    example = '"first sentence" "second sentence"' if pair else '"a gripping, funny film"'
    call = "['first sentence'], ['second sentence']" if pair else "['a gripping, funny film']"
    lines_file = ("../pairs.tsv     # a text<TAB>its pair a line (outside the bundle folder: it refuses files it does "
                  "not list)" if pair else "../texts.txt     # plain text, a text a line (outside the bundle folder: "
                  "it refuses files it does not list)")
    from compress.bench import spun
    from compress.report import md_text

    labels = ', labels: ' + ', '.join(md_text(str(x)) for x in task['labels']) if task.get('labels') else ''
    lines = [f"# {md_text(manifest['name'])}", "",
             f"Task **{md_text(task['name'])}** ({'text pair' if pair else 'single text'}"
             f"{', regression' if task.get('labels') is None else labels})."
             f" Int8 ONNX model"
             + (f" (its vocabulary table int4, looked up by onnxruntime's {INT4_LOOKUP}: onnxruntime "
                f"{'.'.join(map(str, bundle_predict.INT4_RUNTIME))} or newer)"
                if (manifest.get("model") or {}).get("int4_tables") else "")
             + f"; inputs truncated to {manifest['max_length']} tokens.", ""]
    lines += ["## Quality", ""]
    metrics = manifest.get("metrics") or {}
    if metrics:
        lines += ["| split | metric | value |", "|---|---|---|"]
        of = metrics.get("retention_metric")
        for split, values in metrics.items():
            if isinstance(values, dict):
                shown = {"teacher_dev": "dev (the teacher's)", "teacher_test": "test (the teacher's)"}.get(split, split)
                lines += [f"| {shown} | {k} | {_fmt_metric(v)} |" for k, v in values.items()]
            elif split in ("retention", "test_retention") and of:
                on = " on test" if split == "test_retention" else ""
                shown = _fmt_metric(values if not isinstance(values, float) or not math.isfinite(values)
                                    else round_down(values, 4))  # 0.98996 is not 0.9900
                lines.append(f"| - | retention{on} ({of} / teacher {of}) | {shown} |")
            elif split not in ("retention_metric", "dev_rows", "dev_subset", "test_rows", "test_subset"):
                lines.append(f"| - | {split} | {_fmt_metric(values)} |")
        if isinstance(metrics.get("dev_rows"), int):
            lines += ["", f"Dev: {metrics['dev_rows']} rows scored"
                      + (", the first of the split only (`task.max_eval_samples`): not comparable with full-dev "
                         "scores." if metrics.get("dev_subset") else " (the whole split).")]
        if isinstance(metrics.get("test_rows"), int):
            lines += ["", f"Test: {metrics['test_rows']} rows of the task's labelled test split scored"
                      + (", its first only (`task.max_eval_samples`)." if metrics.get("test_subset") else
                         " (the whole split).")
                      + " Nothing was chosen on them."]
        one, many = ("pair", "pairs") if pair else ("text", "texts")
        lines += ["", f"Measured one {one} at a time, as `predict.py` runs them. "
                  f"`Predictor.predict({'texts, pairs' if pair else 'texts'}, batch_size=N)` runs N {many} together, "
                  f"faster; an int8 dynamic model's activation scales then cover the whole batch, so a {one}'s scores "
                  f"can change with the {many} batched with it."]
        scoring = (manifest.get("source") or {}).get("int8_scoring")
        if isinstance(scoring, str):  # the guard's tries chosen by the very dev scores above: said beside them
            lines += ["", f"How the int8 scores were taken: {md_text(scoring)}."]
        checked = manifest.get("verified")
        if isinstance(checked, dict):
            lines += ["", f"Checked before shipping: this bundle, run by `predict.py`'s code on its own "
                      f"tokenizer.json, scored {md_text(str(checked.get('metric')))} "
                      f"{_fmt_metric(checked.get('metrics', {}).get(checked.get('metric')))} on the same "
                      f"{checked.get('rows')} dev rows (recorded above: {_fmt_metric(checked.get('recorded'))})."]
    else:
        lines.append("Not measured.")
    lines += ["", "## Latency", ""]
    latency = manifest.get("latency")
    if latency:
        protocol = latency.get("protocol")
        lines += ["| measure | value |", "|---|---|"]
        lines += [f"| {_LATENCY_NAMES.get(k, k)} | {_latency_value(k, v)} |"
                  for k, v in latency.items() if k not in ("protocol", "by_threads") and v is not None]
        lines += ["", "Measured on the build machine, before bundling (speedup: the teacher's ONNX fp32 p50 over "
                  "this model's, same threads)."]
        by_threads = latency.get("by_threads") or {}
        if len(by_threads) > 1:
            lines += ["", "| threads | p50 ms | p90 ms | speedup |", "|---|---|---|---|"]
            for t, r in by_threads.items():
                speedup = r["speedup_vs_teacher_onnx_fp32"]
                lines.append(f"| {t}{' (fastest)' if r.get('fastest') else ''} | {r['p50_ms']:.3f} | "
                             f"{r['p90_ms']:.3f} | {'-' if speedup is None else f'{round_down(speedup, 2):.2f}x'} |")
            fastest = next(t for t, r in by_threads.items() if r.get("fastest"))
            spin = spun(protocol.get("spin")) if isinstance(protocol, dict) else None
            how = {True: " (idle threads spinning, as `predict.py` runs)",
                   False: " (idle threads sleeping; `predict.py` lets them spin, which can be faster at 2+ "
                          "threads)"}.get(spin, "")
            lines += ["", f"Under this protocol{how} it ran fastest at {fastest} thread{'s' if fastest != '1' else ''}"
                      f" (`python predict.py --threads {fastest} ...`); measure on the target device, each thread "
                      "count you may use (`python predict.py --bench 3 --threads N --file ...`, below)."]
        if protocol:
            lines += ["", "Protocol:", "", *_protocol_lines(protocol), "",
                      "`predict.py` keeps onnxruntime's default, idle threads spinning: on a device that runs nothing "
                      "else they answer faster at 2+ threads than sleeping ones, and keep their cores busy between "
                      "texts (power, on a battery)."]
    else:
        lines.append("Not measured for this bundle.")
    memory = manifest.get("memory")
    if isinstance(memory, dict) and defined(memory.get("peak_rss_mb")):
        lines += ["", f"Memory: {memory['peak_rss_mb']:.0f} MiB peak resident on the build machine ("
                  f"{md_text(str(memory.get('measured', 'the model alone in a fresh process')))})."]
    verified = manifest.get("verified")
    shipped = verified.get("memory") if isinstance(verified, dict) else None
    peak = shipped.get("peak_rss_mb") if isinstance(shipped, dict) else None
    if defined(peak):
        alone = memory.get("peak_rss_mb") if isinstance(memory, dict) else None
        below = (" Less than the model alone above, though it loads the tokenizer too: one text at a time needs less "
                 "working memory than the bench's batched shape." if defined(alone) and round(peak) < round(alone)
                 else "")
        lines += ["", f"Memory as shipped: {peak:.0f} MiB peak resident on the build machine, "
                  f"running `predict.py` ({md_text(str(shipped.get('measured', 'in a fresh process')))}).{below}"]
    lines += ["", "## Run it", "", "```sh",
              f"tar xzf {manifest['name']}.tar.gz && cd {manifest['name']}   # the commands below run in this folder",
              "pip install " + " ".join(f"{k}=={v}" for k, v in req.items())
              + (f"   # these versions need Python >= {manifest['requirements_python']}; older: "
                 f"pip install {' '.join(req)}" if manifest.get("requirements_python") else ""),
              f"python predict.py {example}            # label<TAB>score",
              f"python predict.py --json {example}     # all scores as JSON",
              f"python predict.py --file {lines_file}; one result a line (--file -: standard input)",
              f"python predict.py --bench 3 --file {lines_file.split('#')[0].rstrip()}   # p50/p90 ms per text here, "
              "beside the build machine's; peak memory",
              "```", "",
              "`predict.py` checks the sha256 of every file against `manifest.json` before it loads anything and "
              "refuses a bundle with a changed or extra file. That catches a file damaged or swapped on its own; "
              "whoever can edit `manifest.json` can re-hash any file, `predict.py` included, so check a copy from "
              "elsewhere as a whole, with code from outside it, against the manifest's sha256 published apart from "
              "the bundle: `echo \"HEX  manifest.json\" | sha256sum -c` here, or `compress predict "
              "--manifest-sha256 HEX`. From Python:", "", "```python",
              "from predict import Predictor", "",
              f"Predictor('.').predict({call})",
              "```", "", *_transformers_lines(manifest),
              "`model.ort` (when present) is the same model converted to ORT format by the onnxruntime named in "
              "`manifest.json` (its graph optimizations applied then), for onnxruntime mobile/minimal builds; the "
              "runners here load `model.onnx`, and the figures above are its.", "",
              "### In JavaScript (Node.js or a browser)", "",
              "`predict.mjs` runs the same model with onnxruntime-web (WebAssembly) and @huggingface/tokenizers, "
              "pinned in `package.json`; it truncates texts as `predict.py` does and checks the sha256 of the files "
              "it loads (model, tokenizer, labels.json) before creating the model.", "", "```sh",
              "npm install", f"node predict.mjs {example}",
              f"node predict.mjs --json --file {lines_file.split('#')[0].strip()}",
              f"node predict.mjs --bench 3 --file {lines_file.split('#')[0].strip()}   # onnxruntime-web's speed here",
              "```", "", "```js",
              'import { Predictor } from "./predict.mjs";',
              'const model = await Predictor.load("https://example.com/this-bundle/");  // or a folder (Node.js)',
              f"await model.predict({call.replace('[', '').replace(']', '')});", "```", "",
              "In a browser: `npm install`, serve this folder (`python -m http.server 8000`) and open "
              "http://localhost:8000/: `index.html` classifies what you type, on your machine.", "",
              "`npm install` adds `node_modules/` and `package-lock.json`; `predict.py` ignores those two.", "",
              "## Files", "", "sha256 of each (and of this README) in `manifest.json`.", "",
              "| file | bytes | sha256 |", "|---|---|---|"]
    for rel, digest in manifest["files"].items():
        if rel != "README.md":
            lines.append(f"| {rel} | {manifest['sizes'][rel]} | `{digest[:16]}…` |")
    lines += ["", "## Provenance", ""]
    for key, value in (manifest.get("source") or {}).items():  # a run's and a student's names: the user's
        if key != "int8_scoring":  # said under Quality
            lines.append(f"- {key}: {md_text(value if isinstance(value, str) else json.dumps(value))}")
    lines.append(f"- built: {manifest['created']} with compress {manifest['versions'].get('compress')}")
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ building
def build(out_dir: Path, name: str, *, model: Path, tokenizer: Path, task: str, labels: Optional[list[str]],
          text_pair: bool, max_length: int, metrics: Optional[dict] = None, latency: Optional[dict] = None,
          source: Optional[dict] = None, ort_format: bool = True, ort_model: Optional[Path] = None,
          require_int8: bool = True, check: Optional[Callable[[Path], dict]] = None,
          memory: Optional[dict] = None, config: Optional[Path] = None) -> tuple[Path, Path]:
    """Write ``out_dir/name/`` and ``out_dir/name.tar.gz``; returns both paths.

    ``model`` is the ONNX file to ship (int8 unless ``require_int8`` is off), ``tokenizer`` its ``tokenizer.json``,
    ``labels`` the label names in logit order (None: regression), ``latency`` a dict of numbers plus ``protocol``.
    ``ort_model``: an ORT-format copy made elsewhere (else one is converted here when ``ort_format``). ``check``:
    called with the finished bundle's folder before it is published (`check_as_shipped`); what it returns goes into
    the manifest as ``verified``, what it raises stops the build with nothing published. ``memory``: the bench's peak
    RSS of the model (``peak_rss_mb``, ``measured``: how). ``config``: the quantized model's transformers
    ``config.json``, to ship with its tokenizer's settings for Optimum and transformers pipelines
    (`transformers_files`); none: the bundle has no such files.
    """
    model, tokenizer, out_dir = Path(model), Path(tokenizer), Path(out_dir)
    if not model.is_file():
        raise CompressError(f"{model}: model file not found")
    if not tokenizer.is_file():
        raise CompressError(f"{tokenizer}: tokenizer.json not found")
    if name.startswith(".") or not folder_name(name):  # --name of `compress bundle --model`: no recipe checked it
        raise CompressError(f"bundle name {name[:60]!r}: must be a plain folder name ({FOLDER_NAME})")
    if labels is not None and not good_labels(labels):
        raise CompressError(f"labels {labels!r}: {LABELS_NEEDED} (none: regression)")
    hf_config = read_model_config(config) if config is not None else None  # a bad one refused before any work
    ops = model_ops(model)
    if require_int8 and not ops & INT8_OPS:
        raise CompressError(f"{model}: not an int8 model (no quantized operators); bundles ship int8 models")
    if out_dir.exists() and not out_dir.is_dir():
        raise CompressError(f"{out_dir}: exists and is not a folder")
    target = out_dir / name  # a rebuild replaces a bundle of this name; anything else there is the user's
    if (target.exists() or target.is_symlink()) and (target.is_symlink() or not is_bundle_folder(target)):
        raise CompressError(f"{target}: exists and is not a bundle; refusing to replace it (give another name or out "
                            f"folder)")
    archive = out_dir / f"{name}.tar.gz"
    if (archive.exists() or archive.is_symlink()) and (archive.is_symlink() or not is_bundle_archive(archive, name)):
        raise CompressError(f"{archive}: exists and is not this bundle's archive; refusing to replace it (give another "
                            f"name or out folder)")
    made = missing_folders(out_dir)  # the folders this build creates
    out_dir.mkdir(parents=True, exist_ok=True)
    # what a killed build of this bundle (kill -9: no cleanup ran) left: never published, only in the way
    remove_dead(out_dir, ".*", rf"\.{re.escape(name)}\.(?:tmp|old|tar\.gz\.tmp)-(\d+)")
    tmp = out_dir / f".{name}.tmp-{os.getpid()}"
    tmp_tar = out_dir / f".{name}.tar.gz.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            tmp.mkdir()
        except OSError as e:  # an out folder this user cannot write: named as given, not by the build's scratch name
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise OSError(e.errno, e.strerror, str(out_dir)) from None
        shutil.copyfile(model, tmp / "model.onnx")
        io = model_io(tmp / "model.onnx")
        width = (io["outputs"][0]["shape"] or [None])[-1]  # scores a text; a name when symbolic (checked when run)
        if isinstance(width, int) and width != len(labels or [0]):  # --labels or --task of `compress bundle --model`
            raise CompressError(f"{model}: the model gives {width} score{'s' if width != 1 else ''} a text, but " + (
                f"{len(labels)} labels are named ({', '.join(labels)})" if labels else "a regression takes 1"))
        if ort_format and ort_model is not None and Path(ort_model).is_file():
            shutil.copyfile(ort_model, tmp / "model.ort")
        elif ort_format:
            to_ort_format(tmp / "model.onnx", tmp / "model.ort")
        tok_entry = prepare_tokenizer(tokenizer, tmp / "tokenizer.json", max_length, text_pair)
        shown = display_labels(task, labels)
        write_json(tmp / "labels.json", {"labels": shown, "dataset_labels": labels})
        hf_files = (transformers_files(hf_config, tokenizer, tmp, shown, max_length, tok_entry["pad_token"])
                    if hf_config is not None else [])
        shutil.copyfile(PREDICT_SOURCE, tmp / bundle_predict.RUNNER)
        shutil.copyfile(PREDICT_JS_SOURCE, tmp / "predict.mjs")
        shutil.copyfile(PAGE_SOURCE, tmp / "index.html")
        write_json(tmp / "package.json", {"name": name.lower(), "private": True, "type": "module",
                                          "description": "predict.mjs: run this bundle in Node.js or a browser",
                                          "dependencies": JS_RUNTIME})
        manifest = {
            "format": FORMAT,
            "name": name,
            "task": {"name": task, "labels": shown, "dataset_labels": labels, "text_pair": text_pair,
                     "regression": labels is None},
            "max_length": max_length,
            "model": {"file": "model.onnx", "ort_file": "model.ort" if ort_format else None,
                      "int8": bool(ops & INT8_OPS), **({"int4_tables": True} if INT4_LOOKUP in ops else {}), **io,
                      "session": {"disabled_optimizers": list(bundle_predict.DISABLED_OPTIMIZERS)}},
            "tokenizer": tok_entry,
            "labels_file": "labels.json",
            **({"transformers_files": hf_files} if hf_files else {}),
            "metrics": metrics or {},
            "latency": latency,
            **({"memory": memory} if memory else {}),
            "source": source or {},
            "requirements": runtime_requirements(),
            "requirements_python": pinned_python(),
            "requirements_js": JS_RUNTIME,
            "versions": versions(),
            "created": now_utc(),
        }
        _write_manifest(tmp, manifest)
        smoke_test(tmp, max_length, text_pair)
        if check is not None:  # scored as shipped: the card and the manifest then say so
            manifest["verified"] = check(tmp)
            _write_manifest(tmp, manifest)
        # the archive is made before the folder is published, then both are renamed: an interrupted build never
        # leaves the new folder beside the previous build's archive (gzip of a real model takes seconds)
        make_tar(tmp, tmp_tar, arcname=name, mtime=int(datetime.fromisoformat(manifest["created"]).timestamp()))
        # one build publishes into out_dir at a time (two `compress bundle` of one name: the folder and the archive of
        # one build, not a rename race between them)
        with file_lock(out_dir):
            folder = _publish(tmp, out_dir / name, tmp_tar, archive)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp_tar.unlink(missing_ok=True)
        remove_empty(made)  # a failed build leaves no empty folder behind (--out a/b/c left a/b)
        raise
    return folder, archive


def _write_manifest(folder: Path, manifest: dict) -> None:
    """The model card from ``manifest``, then the sha256 and size of every file (the card's included) into it, then
    manifest.json, checked as the device will check it."""
    manifest["files"], manifest["sizes"] = _hashes(folder)
    (folder / "README.md").write_text(model_card(manifest), encoding="utf-8")
    manifest["files"], manifest["sizes"] = _hashes(folder)
    write_json(folder / MANIFEST, manifest)
    bundle_predict.verify(folder)  # what we ship must pass the check the device will run


def _hashes(folder: Path) -> tuple[dict, dict]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    digests = {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}
    sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in files}
    return digests, sizes


def _publish(tmp: Path, folder: Path, tmp_tar: Path, archive: Path) -> Path:
    """Put the new folder and archive in place of the previous build's: the old folder is set aside, the new folder
    and the archive renamed in, and only then the old folder deleted. Interrupted before the archive is in place, the
    new folder goes back to ``tmp`` (the caller removes it) and the old one returns: never the new folder beside the
    previous build's archive (a Ctrl-C while the old folder was being deleted left them so)."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    try:
        if folder.exists():
            folder.rename(old)  # interrupted just after: the old folder comes back below
        tmp.rename(folder)
        os.replace(tmp_tar, archive)
    except BaseException:
        if tmp_tar.exists():  # the archive is still the previous build's (or none): so must the folder be
            if not tmp.exists() and folder.exists():
                folder.rename(tmp)
            if old.exists() and not folder.exists():
                old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)  # interrupted here: both new ones are in place (`remove_dead` takes it)
    return folder


def make_tar(folder: Path, tar_path: Path, arcname: Optional[str] = None, mtime: int = 0) -> None:
    """gzip'd tar of ``folder`` under its own name (or ``arcname``); members sorted, owners normalised, every time
    ``mtime`` (a bundle's: its manifest's ``created``, so `SOURCE_DATE_EPOCH` makes it reproducible; a member dated
    1970 could not be zipped again), the gzip header's time 0 and its file name ``<arcname>.tar`` (not ``tar_path``'s
    temporary name)."""
    arcname = arcname or folder.name

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = mtime
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with open(tar_path, "wb") as raw, \
            gzip.GzipFile(f"{arcname}.tar", "wb", compresslevel=6, fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        tar.add(folder, arcname=arcname, recursive=False, filter=clean)
        for path in sorted(folder.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            tar.add(path, arcname=f"{arcname}/{path.relative_to(folder).as_posix()}", recursive=False,
                    filter=clean)


# ------------------------------------------------------------------------------------------------------ opening
def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract a bundle archive into ``dest``; returns the bundle folder.

    Every member is checked before anything is written: only regular files and folders, relative paths that stay
    inside ``dest`` (no ``..``, no absolute path, no link), all under one top-level folder. A truncated or corrupt
    archive is refused in one line.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            top = _check_members(archive, dest, members)
            _check_listed(archive, tar, members, top, dest)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: the stdlib's own checks as well
                tar.extractall(dest, members=members, filter="data")
            else:  # every member was checked above
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        reason = str(e).splitlines()[0].rstrip(":") or type(e).__name__
        raise CompressError(f"{archive}: not a readable bundle archive, truncated or corrupt ({reason})") from None
    return dest / top


RUNNER_BYTECODE_MAX_BYTES = 4 << 20
"""predict.py's bytecode is tens of KB a file: all of an archive's together may take this much before extraction."""
MANIFEST_MAX_BYTES = 16 << 20
"""A bundle's manifest.json is a few KB; one in an archive larger than this is refused before it is read."""


def _check_listed(archive: Path, tar: tarfile.TarFile, members: list[tarfile.TarInfo], top: str, dest: Path) -> None:
    """Refuse, before anything is written, an archive whose manifest does not list one of its files or gives it
    another size: a small gzip'd member of gigabytes of zeros, unlisted, filled the disk before the check after
    extraction refused it. (The sha256 of what is extracted is checked after, by `bundle_predict.verify`.)"""
    head = next((m for m in members if PurePosixPath(m.name) == PurePosixPath(top, MANIFEST) and m.isfile()), None)
    if head is None:
        raise CompressError(f"{archive}: no {top}/{MANIFEST}: not a bundle archive")
    if head.size > MANIFEST_MAX_BYTES:
        raise CompressError(f"{archive}: {head.name} is {head.size} bytes: not a bundle manifest")
    try:
        manifest = json.loads(tar.extractfile(head).read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CompressError(f"{archive}: {head.name}: not valid JSON ({e})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    sizes = manifest.get("sizes") if isinstance(manifest, dict) and isinstance(manifest.get("sizes"), dict) else {}
    if not isinstance(files, dict) or not files:
        raise CompressError(f"{archive}: {head.name}: 'files' must map every bundle file to its sha256")
    files = {PurePosixPath(k).as_posix(): v for k, v in files.items() if isinstance(k, str)}  # "./a" is "a"
    sizes = {PurePosixPath(k).as_posix(): v for k, v in sizes.items() if isinstance(k, str)}
    seen, bytecode, total = set(), 0, 0
    for m in members:
        rel = PurePosixPath(m.name).relative_to(top)
        if not m.isfile():
            continue
        if rel in seen:  # a second member of one name overwrites the first, checked one (the manifest itself too)
            raise CompressError(f"{archive}: member {m.name!r} comes twice; refusing the archive")
        seen.add(rel)
        total += m.size
        if rel == PurePosixPath(MANIFEST):
            continue
        if rel.parts[0] == "__pycache__" and len(rel.parts) == 2 and bundle_predict.runner_bytecode_name(rel.name):
            bytecode += m.size  # the runner's bytecode (`from predict import Predictor`): judged once extracted
            if bytecode > RUNNER_BYTECODE_MAX_BYTES:
                raise CompressError(f"{archive}: more than {RUNNER_BYTECODE_MAX_BYTES} bytes of {RUNNER} bytecode; "
                                    f"refusing the archive before extracting it")
            continue
        rel = rel.as_posix()
        if rel not in files:
            raise CompressError(f"{archive}: member {m.name!r}: not listed in {MANIFEST}; refusing the archive "
                                f"before extracting it")
        if isinstance(sizes.get(rel), int) and m.size != sizes[rel]:
            raise CompressError(f"{archive}: member {m.name!r} is {m.size} bytes, {MANIFEST} says {sizes[rel]}; "
                                f"refusing the archive before extracting it")
    free = shutil.disk_usage(dest).free  # what the manifest lists can still be large: never more than the disk holds
    if total > free:
        raise CompressError(f"{archive}: its files take {total} bytes, {free} are free in {dest}; refusing the "
                            f"archive before extracting it")


def _check_members(archive: Path, dest: Path, members: list[tarfile.TarInfo]) -> str:
    """The archive's one top-level folder, after refusing any member that is not a plain file or folder inside it."""
    root = dest.resolve()
    tops = set()
    for m in members:
        path = PurePosixPath(m.name)
        if not path.parts and not m.name.startswith("/"):  # "." or "./": made with `tar -C FOLDER .`, escaping nothing
            flat = any(PurePosixPath(n.name).parts[:1] == (MANIFEST,) for n in members)
            raise CompressError(f"{archive}: member {m.name!r}: " + (
                "the files lie at the archive's top, not in one bundle folder" if flat else
                "the archive's paths start with './'") + " (pack the bundle folder by its name: tar czf NAME.tar.gz "
                "-C PARENT NAME)")
        if (path.is_absolute() or ".." in path.parts or m.name.startswith(("/", "\\"))
                or ":" in path.parts[0]) or not (root / m.name).resolve().is_relative_to(root):
            raise CompressError(f"{archive}: member {m.name!r} escapes the extraction folder; refusing the archive")
        if not (m.isfile() or m.isdir()):
            raise CompressError(f"{archive}: member {m.name!r} is a link or special file; refusing the archive")
        if len(path.parts) > 1 and path.parts[1] in bundle_predict.NPM_OUTPUTS:  # verify skips these in a folder
            raise CompressError(f"{archive}: member {m.name!r} is what `npm install` adds, never part of a built "
                                f"bundle (and not verified); refusing the archive")
        tops.add(path.parts[0])
    if len(tops) != 1:
        raise CompressError(f"{archive}: expected one top-level bundle folder, found {sorted(tops) or 'none'}")
    top = tops.pop()
    for m in members:  # "b/." or a lone loose "manifest.json" as a file: the bundle folder itself
        if m.isfile() and PurePosixPath(m.name).parts == (top,):
            raise CompressError(f"{archive}: member {m.name!r} is a file in place of the bundle folder")
    return top


@contextlib.contextmanager
def open_bundle(path: str | os.PathLike, manifest_sha256: Optional[str] = None) -> Iterator[Path]:
    """A verified bundle folder: ``path`` itself, or an archive extracted into a temporary folder (``manifest_sha256``:
    `bundle_predict.verify`'s)."""
    path = Path(path)
    if path.is_dir():
        _refuse_a_folder_of_bundles(path)
        folder_cm = contextlib.nullcontext(path)
    elif path.is_file() and path.suffix.lower() in (".onnx", ".ort"):  # read as an archive: "truncated or corrupt"
        raise CompressError(f"{path}: a model file, not a bundle (a folder or its .tar.gz); make one with `compress "
                            f"bundle --model {path} --tokenizer tokenizer.json --task TASK`")
    elif path.is_file():
        folder_cm = _extracted(path)
    else:
        raise CompressError(f"{path}: " + ("not a bundle folder or archive (neither a folder nor a regular file)"
                                           if path.exists() else "no such bundle folder or archive"))
    with folder_cm as folder:
        try:
            bundle_predict.verify(folder, manifest_sha256)
        except BundleError as e:
            raise CompressError(said(e, path, folder)) from None
        yield folder


def said(e: Exception, bundle: str | os.PathLike, folder: Path) -> str:
    """A bundle's error in the user's terms: the bundle named once, a file of an extracted archive as its member
    (``x.tar.gz: name/labels.json: ...``), not by its temporary folder (removed when the error is read)."""
    text, bundle = str(e), str(bundle)
    if Path(folder) != Path(bundle):
        text = text.replace(str(Path(folder).parent) + os.sep, "")
    return text if text.startswith(bundle) else f"{bundle}: {text}"


def is_bundle_archive(path: Path, name: str) -> bool:
    """Whether ``path`` is a gzip'd tar holding ``name/manifest.json`` (what `make_tar` writes for bundle ``name``)."""
    try:
        with tarfile.open(path, "r:gz") as tar:  # members read until it is found (not the whole model)
            return any(PurePosixPath(m.name) == PurePosixPath(name, MANIFEST) for m in tar)
    except (OSError, tarfile.TarError, EOFError, zlib.error):
        return False


def is_bundle_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding a bundle manifest (``format: compress-bundle/1``)."""
    return path.is_dir() and _is_bundle_manifest(path / MANIFEST)


def _is_bundle_manifest(path: Path) -> bool:
    try:  # utf-8-sig: a manifest re-saved by an editor that writes a BOM is still the bundle's
        manifest = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == bundle_predict.FORMAT


def _refuse_a_folder_of_bundles(path: Path) -> None:
    """``path`` is not a bundle but holds some (the bundle stage's folder, ``search/bundle/``): name them instead of
    reporting its stage manifest as a malformed bundle manifest."""
    if _is_bundle_manifest(path / bundle_predict.MANIFEST):
        return
    inside = sorted(p for p in path.iterdir() if p.is_dir() and _is_bundle_manifest(p / bundle_predict.MANIFEST))
    if inside:
        raise CompressError(f"{path}: not a bundle but a folder of bundles: give "
                            f"{' or '.join(str(p) for p in inside[:3])} (or the .tar.gz beside it)")


@contextlib.contextmanager
def _extracted(archive: Path) -> Iterator[Path]:
    remove_dead_scratch()  # a killed predict's extracted archive (a model's size) is removed by the next one
    with scratch_dir("bundle") as tmp:
        yield safe_extract(archive, Path(tmp))


@contextlib.contextmanager
def loaded(bundle: str | os.PathLike, threads: Optional[int] = None,
           manifest_sha256: Optional[str] = None) -> Iterator[bundle_predict.Predictor]:
    """A verified bundle (folder or archive), loaded; a `BundleError` while it is used is said as a `CompressError`
    naming the bundle as the user gave it."""
    with open_bundle(bundle, manifest_sha256) as folder:
        try:
            yield bundle_predict.Predictor(folder, threads=threads, check=False)
        except BundleError as e:
            raise CompressError(said(e, bundle, folder)) from None


def predict(bundle: str | os.PathLike, texts: list[str], pairs: Optional[list[str]] = None,
            threads: Optional[int] = None, manifest_sha256: Optional[str] = None) -> list[dict]:
    """Verify a bundle (folder or archive), load it and classify ``texts`` (with ``pairs`` for pair tasks)."""
    with loaded(bundle, threads, manifest_sha256) as predictor:
        return predictor.predict(texts, pairs)


def predict_file(bundle: str | os.PathLike, path: str, as_json: bool = False, threads: Optional[int] = None,
                 manifest_sha256: Optional[str] = None) -> int:
    """Verify a bundle and classify every line of ``path`` (``-``: standard input) one at a time, printing one result
    a line as it comes (:func:`compress.bundle_predict.predict_lines`); returns how many lines were classified."""
    with loaded(bundle, threads, manifest_sha256) as predictor:
        return bundle_predict.predict_lines(predictor, path, as_json)


def bench(bundle: str | os.PathLike, rounds: int, text: Optional[str] = None, text_pair: Optional[str] = None,
          path: Optional[str] = None, as_json: bool = False, threads: Optional[int] = None,
          manifest_sha256: Optional[str] = None) -> dict:
    """Verify a bundle and time it on this machine on ``text`` or every line of ``path``, printing the result beside
    the manifest's latency (:func:`compress.bundle_predict.bench_texts`); returns the timings."""
    with loaded(bundle, threads, manifest_sha256) as predictor:
        return bundle_predict.bench_texts(predictor, text, text_pair, path, rounds, as_json)


def score(bundle: str | os.PathLike, task=None, data_dir: Optional[str] = None, split: str = "dev",
          max_rows: Optional[int] = None, threads: Optional[int] = None, manifest_sha256: Optional[str] = None) -> dict:
    """Score a bundle as it ships (its own tokenizer.json and onnxruntime, one text per run) on a labelled split of
    its task's data. ``task``: a recipe's `TaskConfig` (custom tasks, hub datasets, another folder); default: the
    GLUE task the manifest names, from the default GLUE folder; ``data_dir`` replaces its folder. Returns the split,
    row counts, metrics and the manifest's metrics for that split (None where it records none)."""
    import dataclasses

    import numpy as np
    from tqdm.auto import tqdm

    from compress.config import TaskConfig
    from compress.data import load_split
    from compress.evaluate import constant_label
    from compress.metrics import compute_metrics
    from compress.tasks import GLUE_TASKS, task_spec

    if max_rows is not None and not (isinstance(max_rows, int) and max_rows >= 1):  # the CLI's --max-rows checks it
        raise CompressError(f"max_rows: a whole number of rows >= 1 (None: every row), got {max_rows!r}")
    with loaded(bundle, threads, manifest_sha256) as predictor:
        meta = predictor.manifest["task"]
        if not isinstance(meta.get("name"), str):  # a manifest edited by hand: one line, not a traceback
            raise CompressError(f"{bundle}: manifest.json: task.name is {meta.get('name')!r}, not a task's name")
        if task is None and meta["name"] not in GLUE_TASKS:  # a custom task's files and columns are in its recipe
            raise CompressError(f"{bundle}: a bundle of the custom task {meta['name']!r}: give its recipe (--recipe "
                                f"RECIPE.yaml), which says where its data is and how to read it")
        task = task or TaskConfig(name=meta["name"])
        task = dataclasses.replace(task, data_dir=data_dir) if data_dir else task
        if task.name != meta["name"]:
            raise CompressError(f"{bundle}: a bundle of task {meta['name']!r}, not {task.name!r}")
        spec = task_spec(task)
        if meta.get("dataset_labels") != spec.labels:
            raise CompressError(f"{bundle}: its labels {meta.get('dataset_labels')} are not the {task.name} data's "
                                f"{spec.labels}: the scores would be compared with other classes")
        ds = load_split(task, split, spec)
        rows = len(ds) if max_rows is None else min(max_rows, len(ds))
        texts, pairs = ds["text"][:rows], ds["text_pair"][:rows] if spec.text_pair else None
        logits = []
        for i in tqdm(range(rows), desc=f"scoring {split}", unit="row", leave=False):
            try:
                logits.append(predictor.logits([texts[i]], None if pairs is None else [pairs[i]])[0])
            except BundleError as e:
                raise CompressError(f"{bundle}: {split} row {i + 1}: {e}") from None
    stacked = np.stack(logits) if logits else np.zeros((0, spec.num_labels))
    metrics = compute_metrics(spec.metrics, stacked, np.asarray(ds["label"][:rows]))
    constant = constant_label(stacked, spec)
    if constant is not None and predictor.labels:  # named as the bundle names it (positive, not SST-2's 1)
        constant = predictor.labels[int(stacked[0].argmax())]
    recorded = predictor.manifest.get("metrics") if isinstance(predictor.manifest.get("metrics"), dict) else {}
    figures = recorded.get(split)  # a manifest edited by hand: figures that are not numbers are none
    if not (isinstance(figures, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in figures.values())):
        figures = None
    return {"split": split, "rows": rows, "of_rows": len(ds), "metrics": metrics,
            **({"constant_label": constant} if constant is not None else {}),
            "manifest": {"metrics": figures,
                         "rows": recorded.get(f"{split}_rows"), "subset": recorded.get(f"{split}_subset")}}


def check_as_shipped(folder: Path, task, recorded: Optional[dict], metric: str, tolerance: float,
                     recorded_rows: Optional[int] = None, threads: Optional[int] = None) -> dict:
    """Score the bundle in ``folder`` as it ships (`score`: its tokenizer.json and onnxruntime, one text per run) on
    the dev rows the run scored (``task.max_eval_samples``) and compare its ``metric`` with the ``recorded`` one:
    more than ``tolerance`` points (x100) apart, only one of them a number (nan: a pearson of constant predictions;
    none recorded), or another number of rows than ``recorded_rows``, is a CompressError (what ships is not what was
    measured). Returns the manifest's ``verified`` record."""
    result = score(folder, task, split="dev", max_rows=task.max_eval_samples, threads=threads)
    rows, got, want = result["rows"], result["metrics"].get(metric), (recorded or {}).get(metric)
    if recorded_rows is not None and rows != recorded_rows:
        raise CompressError(f"bundle.verify: the dev split has {rows} rows to score now, the run scored "
                            f"{recorded_rows}: the data changed since; rerun the stages that scored it")

    apart = None
    if defined(got) != defined(want):  # one undefined (nan: a pearson of constant predictions) or missing: no match
        raise CompressError(f"bundle.verify: the bundle as shipped scores {metric} {_fmt_metric(got)} on {rows} dev "
                            f"rows, the run recorded {_fmt_metric(want)}: only one of them is a score; its "
                            f"tokenizer.json or runtime does not reproduce the measured model (bundle.verify: false "
                            f"ships it anyway)")
    if defined(got) and defined(want):
        apart = round(100 * abs(got - want), 4)
        if apart > tolerance + 1e-9:
            raise CompressError(f"bundle.verify: the bundle as shipped scores {metric} {got:.4f} on {rows} dev rows, "
                                f"the run recorded {want:.4f}: {apart:.2f} points apart, more than "
                                f"bundle.verify_tolerance ({tolerance:g}); its tokenizer.json or runtime does not "
                                f"reproduce the measured model (bundle.verify: false ships it anyway)")
    print(f"[bundle] verified as shipped: {metric} {_fmt_metric(got)} on {rows} dev rows "
          f"(recorded {_fmt_metric(want)})", flush=True)
    if "constant_label" in result:  # the stage and the report said so of the teacher; this is the model shipped
        log.warning("bundle: the bundle predicts %r for every one of the %d dev rows (a constant model): its %s is "
                    "%s, learnt from no text; train longer or on more rows before shipping it",
                    result["constant_label"], rows, metric, constant_score(metric))
    memory = shipped_memory(folder, task, threads, rows)
    return {"split": "dev", "rows": rows, "metrics": result["metrics"], "metric": metric, "recorded": want,
            "points_apart": apart, "tolerance_points": tolerance, "threads": threads,
            "runner": f"{RUNNER}'s Predictor: the bundle's tokenizer.json and model.onnx, one text per run",
            **({"memory": memory} if memory else {})}


def last_shipped(run_dir: Path) -> Optional[dict]:
    """What the run's last bundle stage shipped, from its manifest: ``chosen`` (the report row), ``rule``, ``paths``
    (the bundle folder first)...; None without one, or one unreadable."""
    try:
        record = json.loads((Path(run_dir) / "bundle" / "manifest.json").read_text(encoding="utf-8")).get("bundle")
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("chosen"), str) else None


MEMORY_ROWS = 256
"""How many dev rows (texts or pairs) `shipped_memory` runs (with one of max_length tokens)."""


def shipped_memory(folder: Path, task, threads: Optional[int] = None, rows: Optional[int] = None) -> Optional[dict]:
    """The bundle's peak resident memory as a device runs it: ``python predict.py --bench 1`` in a fresh process on
    the first `MEMORY_ROWS` dev rows (of the first ``rows``: those the verification scored) and one of max_length
    tokens (its largest input), tokenizer.json and onnxruntime included. ``{"peak_rss_mb", "measured"}``; None, with
    a warning, where the process cannot say or fails: the bundle was verified just before, its scores do
    not depend on this."""
    import subprocess
    import tempfile

    from compress.data import load_split
    from compress.tasks import task_spec

    def warn(why: str) -> None:
        print(f"warning: bundle: the memory of the bundle as shipped was not measured: {why}", file=sys.stderr)

    manifest = bundle_predict.read_manifest(folder)
    spec = task_spec(task)
    ds = load_split(task, "dev", spec)
    first = min(MEMORY_ROWS, len(ds) if rows is None else rows)

    def parts(i: int) -> list[str]:  # a text (and its pair) on one line, as predict.py --file reads them
        return [" ".join(str(t).split()) for t in (ds["text"][i], *([ds["text_pair"][i]] if spec.text_pair else []))]

    texts = ["\t".join(p) for p in map(parts, range(first)) if all(p)]  # a blank side is no line predict.py reads
    probe = long_text(manifest["max_length"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "texts.txt"
        path.write_text("\n".join([*texts, "\t".join([probe] * (2 if spec.text_pair else 1))]) + "\n",
                        encoding="utf-8")
        cmd = [sys.executable, RUNNER, "--bench", "1", "--json", "--file", str(path),
               *(["--threads", str(threads)] if threads else [])]
        try:
            proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, encoding="utf-8",
                                  errors="replace", timeout=600)
        except (subprocess.SubprocessError, OSError) as e:  # a timeout, no interpreter
            warn(f"{RUNNER} --bench: {bundle_predict.first_line(e)}")
            return None
    if proc.returncode != 0:  # its last line is its own error line
        warn(f"{RUNNER} --bench: "
             f"{((proc.stderr or proc.stdout).strip().splitlines() or [f'exit status {proc.returncode}'])[-1][:300]}")
        return None
    try:
        peak = json.loads(proc.stdout).get("peak_rss_mb")
    except (ValueError, AttributeError):
        peak = None
    if not (defined(peak) and peak > 0):
        warn(f"{RUNNER} --bench gave no peak memory (this system does not say)")
        return None
    print(f"[bundle] as shipped: {peak:.0f} MiB peak resident ({RUNNER} --bench 1, {len(texts) + 1} inputs)",
          flush=True)
    return {"peak_rss_mb": peak,
            "measured": f"python {RUNNER} --bench 1{f' --threads {threads}' if threads else ''} in a fresh process "
                        f"on {len(texts)} of the first {first} dev rows (the non-blank ones) and one of max_length "
                        f"({manifest['max_length']}) tokens: tokenizer, model, onnxruntime and the interpreter; "
                        f"shared libraries' pages included"}


# ------------------------------------------------------------------------------------------------------ the stage
def pick(table, how: str = "best_within_drop", max_drop: float = 1.0, threads: Optional[int] = None):
    """The int8 model to ship from a run's report table, and a record of why.

    best_within_drop: the fastest shippable int8 model whose metric is within ``max_drop`` points (x100) of the
    teacher's; when none is, the most accurate one (``within_budget: false``). fastest / most_accurate: as named.
    Speed is p50 latency at ``threads`` (default: the largest benchmarked); without bench numbers, file size.
    """
    candidates = [r for r in table.rows if r.shippable and r.path]
    if not candidates and any(r.kind == "int8" and r.path for r in table.rows):
        raise CompressError(f"{table.folder}: no shippable int8 model: the quantize stage's accuracy guard passed "
                            f"none (why: {Path(table.folder) / 'quantize' / 'quantize.json'}, int8.<mode>.guard)")
    if not candidates:
        raise CompressError(f"{table.folder}: no shippable int8 model (run the quantize stage; a model that fails "
                            f"its accuracy guard is not shippable)")
    threads = threads or table.headline_threads
    timed = all(threads in r.latency for r in candidates)
    if timed:
        by = f"p50 latency at {threads} thread{'s' if threads != 1 else ''}"
        costs = {r.name: r.latency[threads].p50_ms for r in candidates}
    else:  # no bench numbers for some candidate: smaller file first
        by = "file size (latency not measured for every candidate)"
        costs = {r.name: float(r.file_bytes or Path(r.path).stat().st_size) for r in candidates}

    def cost(r) -> float:
        return costs[r.name]

    def metric(r) -> float:  # a nan score (a pearson of constant predictions) is no accuracy: max() kept it first
        return r.metric if r.metric is not None and math.isfinite(r.metric) else -float("inf")

    def drop(r) -> Optional[float]:
        if r.metric is None or table.teacher_metric is None:
            return None
        points = 100.0 * (table.teacher_metric - r.metric)
        return points if math.isfinite(points) else None

    within = [r for r in candidates if drop(r) is not None and drop(r) <= max_drop + 1e-9]
    if how == "fastest":
        chosen = min(candidates, key=lambda r: (cost(r), -metric(r)))
    elif how == "most_accurate" or not within:
        chosen = max(candidates, key=lambda r: (metric(r), -cost(r)))
    else:
        chosen = min(within, key=lambda r: (cost(r), -metric(r)))
    if how == "best_within_drop" and not within:
        log.warning("no int8 model is within %.2f points of the teacher; shipping the most accurate (%s)",
                    max_drop, chosen.name)
    points = f"{max_drop:g} point{'s' if max_drop != 1 else ''}"
    if how == "fastest":
        rule = f"the fastest, by {by}"
    elif how == "most_accurate":
        rule = f"the most accurate by {table.metric_name} (ties: by {by})"
    elif within:
        rule = f"the fastest within {points} of the teacher's {table.metric_name}, by {by}"
    else:
        rule = f"none within {points} of the teacher's {table.metric_name}: the most accurate (ties: by {by})"
    record = {"pick": how, "rule": rule, "by": by, "max_drop": max_drop, "threads": threads,
              "within_budget": chosen in within, "chosen": chosen.name,
              "candidates": [{"name": r.name, "metric": r.metric, "drop_points": None if drop(r) is None
                              else round(drop(r), 4), "cost": cost(r)}
                             for r in candidates]}
    return chosen, record


def _by_threads(table, row) -> dict[str, dict]:
    """p50/p90 and speedup at every benchmarked thread count (JSON keys: the counts), the fastest marked: at batch 1 a
    small int8 model can be fastest on fewer threads than the teacher."""
    out = {}
    for t in sorted(row.latency):
        speedup = table.speedup(row, t)
        out[str(t)] = {"p50_ms": row.latency[t].p50_ms, "p90_ms": row.latency[t].p90_ms,
                       "speedup_vs_teacher_onnx_fp32": None if speedup is None else round_down(speedup, 4)}
    if out:
        fastest = min(out, key=lambda t: out[t]["p50_ms"])
        out[fastest]["fastest"] = True
    return out


def memory_protocol(largest: str = "") -> str:
    """How the bench measures the peak RSS a bundle's manifest carries (`compress.probe.probe_memory`); ``largest``:
    its largest fixed shape in words ("8 x 128 tokens")."""
    return ("the model alone in a fresh process with onnxruntime and numpy, not the tokenizer predict.py loads too: "
            f"loaded, then run on the bench's largest fixed shape{f' ({largest})' if largest else ''} and a few dev "
            "rows; shared libraries' pages included")


def verifier(recipe, recorded: dict, metric: str, rows: Optional[int]) -> Optional[Callable[[Path], dict]]:
    """`build`'s check of a recipe's bundle (``bundle.verify``): `check_as_shipped` against ``recorded`` dev scores
    of ``rows`` rows (None: not recorded); None when the recipe turns it off (no bundle section: the defaults)."""
    from compress.config import BundleConfig

    cfg = recipe.bundle or BundleConfig()
    if not cfg.verify:
        return None
    return lambda folder: check_as_shipped(folder, recipe.task, recorded, metric, cfg.verify_tolerance, rows,
                                           cfg.threads)


def bundle_max_drop(recipe) -> float:
    """The bundle's accuracy-drop budget (points vs the teacher): ``bundle.max_drop``, else ``quantize.max_drop`` when
    the recipe has a quantize section (0 included: it was read as unset, a budget of 1 point), else 1.0."""
    if recipe.bundle.max_drop is not None:
        return recipe.bundle.max_drop
    quantize_cfg = getattr(recipe, "quantize", None)
    return quantize_cfg.max_drop if quantize_cfg is not None else 1.0


def bundle_metrics(dev: dict, teacher_dev: dict, metric: str, dev_rows: Optional[int], dev_subset: bool,
                   test: Optional[dict] = None, teacher_test: Optional[dict] = None,
                   test_rows: Optional[int] = None, test_subset: bool = False) -> dict:
    """A bundle manifest's ``metrics``: the model's dev scores, the teacher's and the retention on ``metric`` (named:
    a task of two, MRPC's f1 and accuracy, names its own), with how many dev rows they were scored on and whether
    only the split's first (``task.max_eval_samples``); a labelled test split's scores (MRPC's) of both, where the
    run scored one, with its row count (the same cap cuts it)."""
    def share(model: dict, teacher: dict) -> Optional[float]:
        value = retention(model[metric], teacher[metric])
        return None if value is None else round_down(value, 6)  # 0.98999996 is no 0.99 (round gave it)

    metrics = {"dev": dev}
    if dev.get(metric) is not None and teacher_dev.get(metric) is not None:
        metrics.update(teacher_dev=dict(teacher_dev), retention=share(dev, teacher_dev), retention_metric=metric)
    if test:
        metrics["test"] = dict(test)
        if teacher_test:
            metrics["teacher_test"] = dict(teacher_test)
            if test.get(metric) is not None and teacher_test.get(metric) is not None:
                metrics["test_retention"] = share(test, teacher_test)
        if test_rows is not None:
            metrics.update(test_rows=test_rows, test_subset=test_subset)
    if dev_rows is not None:
        metrics.update(dev_rows=dev_rows, dev_subset=dev_subset)
    return metrics


def source_config(recipe) -> Optional[Path]:
    """The transformers ``config.json`` of the torch model the run's quantize stage quantized (every int8 model a
    bundle may pick comes from it), in this run folder; None, said, where it is not there (the bundle then has no
    files for Optimum). Not the folder quantize.json recorded, as the bench falls back to: after a move, that path
    may hold another run's model."""
    from compress.quantize import source_in_run

    qdir = recipe.run_dir / "quantize"
    try:
        qrec = json.loads((qdir / "quantize.json").read_text())
        config = source_in_run(recipe, recipe.run_dir, qrec["source"]["model"]) / "config.json"
    except (OSError, ValueError, KeyError, TypeError, CompressError):
        config = None
    if config is None or not config.is_file():
        log.warning("bundle: the quantized model's config.json is not in the run folder (%s): the bundle is built "
                    "without config.json, so Optimum cannot load it; predict.py and predict.mjs run it as usual",
                    config or qdir / "quantize.json")
        return None
    return config


def run(recipe, out: Path, inputs: dict[str, Path]) -> dict:
    """Stage `bundle`: pick the int8 model per ``recipe.bundle`` from the run's artifacts and bundle it."""
    from compress.data import task_spec
    from compress.report import collect

    cfg = recipe.bundle
    max_drop = bundle_max_drop(recipe)
    table = collect(recipe.run_dir, recipe=recipe)
    chosen, choice = pick(table, cfg.pick, max_drop, cfg.threads)
    spec = task_spec(recipe.task)
    name = cfg.name or default_bundle_name(recipe.name, spec.name)
    threads = choice["threads"]
    lat = chosen.latency.get(threads) if threads else None
    latency = None
    if lat is not None:
        by_threads = _by_threads(table, chosen)
        latency = {"p50_ms": lat.p50_ms, "p90_ms": lat.p90_ms, "threads": threads, "batch_size": 1,
                   "throughput_per_s": lat.throughput,
                   "speedup_vs_teacher_onnx_fp32": by_threads[str(threads)]["speedup_vs_teacher_onnx_fp32"],
                   "by_threads": by_threads,
                   "protocol": {**(table.provenance.get("protocol") or {}),
                                **({"pass": table.provenance["dev latency"]}
                                   if table.provenance.get("dev latency") else {})}}
    teacher = next((r for r in table.rows if r.name == "teacher"), None)
    metrics = bundle_metrics(chosen.dev_metrics or {table.metric_name: chosen.metric},  # every metric (MRPC: 2)
                             (teacher and teacher.dev_metrics) or {table.metric_name: table.teacher_metric},
                             table.metric_name, table.dev_rows, table.dev_subset, chosen.test_metrics,
                             teacher and teacher.test_metrics, table.test_rows, table.test_subset)
    source = {"recipe": recipe.path,
              # the run's --set values: the recipe file alone did not train it (a shrunk run read as the full one)
              **({"overrides": dict(recipe.overrides)} if recipe.overrides else {}),
              "run": str(recipe.run_dir), "artifact": chosen.name, "file": chosen.path,
              "pick": f"{cfg.pick}: {choice['rule']}",
              "within_budget": choice["within_budget"], "seed": recipe.seed,
              **({"int8_scoring": table.provenance["int8 accuracy"]} if table.provenance.get("int8 accuracy") else {})}
    bench_cfg = recipe.bench
    largest = (f"{max(bench_cfg.batch_sizes)} x {max(bench_cfg.seq_lengths)} tokens"
               if bench_cfg is not None and bench_cfg.batch_sizes and bench_cfg.seq_lengths else "")
    config = source_config(recipe)
    folder, archive = build(out, name, model=Path(chosen.path), tokenizer=Path(chosen.tokenizer), task=spec.name,
                            labels=spec.labels, text_pair=spec.text_pair is not None,
                            max_length=recipe.task.max_length, metrics=metrics, latency=latency, source=source,
                            ort_format=cfg.ort, ort_model=Path(chosen.ort_path) if chosen.ort_path else None,
                            check=verifier(recipe, metrics["dev"], table.metric_name, table.dev_rows),
                            memory={"peak_rss_mb": chosen.peak_rss_mb, "measured": memory_protocol(largest)}
                            if chosen.peak_rss_mb else None, config=config)
    digest = sha256_file(folder / MANIFEST)
    print(f"[bundle] {chosen.name} ({choice['rule']}) -> "
          f"{folder.name}/ and {archive.name}; manifest.json sha256 {digest} (to publish apart from the bundle; see "
          f"`compress predict --manifest-sha256`)")
    return {"metrics": metrics, "bundle": {"name": name, "paths": [folder.name, archive.name],
                                           "manifest_sha256": digest, **choice}}
