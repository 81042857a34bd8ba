"""ONNX export of a sequence classifier, ORT graph fusions, and the parity check against torch.

Any `AutoModelForSequenceClassification` (BERT, MPNet, MiniLM, and pruned models whose layers have different head
counts or FFN widths) goes through ``torch.onnx.export`` (TorchScript exporter) with dynamic batch and sequence axes.
One exporter for every model: Optimum's exporter builds its ONNX config from ``config.json``, which cannot describe a
model pruned non-uniformly, and for the models it can describe it calls the same ``torch.onnx.export`` underneath.
ORT's transformer optimizer then fuses the graph (Attention, BiasGelu, EmbedLayerNormalization) for BERT-like models,
the eager and the SDPA attention alike.

One fusion is left out on purpose: ``SkipLayerNormalization`` (residual Add + LayerNormalization). onnxruntime 1.32's
CPU kernel for it costs ~2 us per 384-wide row against ~0.3 us for the Add and LayerNormalization kernels it replaces
(`python scripts/bench_kernels.py skiplayernorm`: 70 vs 20 us at 25 x 384, 2,049 vs 295 us at 8 x 128 x 384, one
thread). The optimizer is told not to build it and every session this package opens disables ORT's online
``SkipLayerNormFusion`` (`SLOW_FUSIONS`); the bundle's predict.py does the same.

`check_parity` runs the exported graph on real dev rows and compares its logits with the torch model's; a mismatch
beyond tolerance is a `CompressError` that carries the numbers.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from compress.ort_session import SLOW_FUSIONS, example_id_range, session  # noqa: F401  (callers import them here too)
from compress.data import Collator, eval_loader
from compress.errors import CompressError

log = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17


class _Logits(torch.nn.Module):
    """``model(**inputs).logits`` with positional inputs, as the exporter traces it."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors):
        return self.model(**dict(zip(self.names, tensors))).logits


def input_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The ONNX inputs: those of input_ids / attention_mask / token_type_ids that the model takes (MPNet, and models of
    one token type, RoBERTa's, take two: their tokenizers give no token_type_ids, `modeling.one_token_type`)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    names = [n for n in MODEL_INPUTS if n in params]
    if (getattr(model.config, "type_vocab_size", None) or 0) <= 1 and "token_type_ids" in names:
        names.remove("token_type_ids")
    return tuple(names)


def example_inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tracing inputs of `export_onnx`: batch 2, sequence 8, with padding in one row (no dimension is 1, so none
    is specialised away), on the device of ``model``'s weights (a model trained on a GPU and exported there failed
    with "Expected all tensors to be on the same device")."""
    device = next(model.parameters()).device
    ids = torch.randint(*example_id_range(model.config.vocab_size, 2000), (2, 8))  # within a small vocabulary too
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(2, 8, dtype=torch.long)}
    return {name: t.to(device) for name, t in example.items()}


def export_onnx(model: torch.nn.Module, path: str | Path, opset: int = OPSET) -> Path:
    """Write ``model`` (eval mode, fp32) to ``path`` with dynamic batch and sequence axes; the model's train/eval mode
    is restored afterwards, its dtype is not (``model.float()`` converts it in place)."""
    path = Path(path)
    names = input_names(model)
    was_training = model.training
    wrapper = _Logits(model.float(), names).eval()  # eval() on the wrapper: torch.onnx.export keeps its mode
    model.eval()
    example = example_inputs(model)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer warnings
            torch.onnx.export(wrapper, tuple(example[n] for n in names), str(tmp), dynamo=False,
                              input_names=list(names), output_names=["logits"], dynamic_axes=axes,
                              opset_version=opset, do_constant_folding=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return path


def _quiet_ort_transformers() -> None:
    """ORT's transformer optimizer logs under its modules' bare names too ("fusion_attention": it puts its folder on
    sys.path), and warns "Input hidden size (256) is not same as weight matrix dimension of q,k,v (384)" for every
    pruned layer: there the attention's inner width is meant to differ from the model's, and the fusion is checked for
    exactness by `fused_if_exact` anyway. Only its errors reach the run's log. The modules' folders are compared as
    strings: resolving the path of every loaded module (~4,000) took 0.16 s of each optimization
    (`python scripts/bench_ort_quiet.py e919f04 HEAD`)."""
    import onnxruntime.transformers.optimizer as optimizer

    folder = os.path.dirname(optimizer.__file__)
    folders = {folder, os.path.realpath(folder)}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if name.startswith("onnxruntime.transformers") or (isinstance(file, str) and os.path.dirname(file) in folders):
            logging.getLogger(name).setLevel(logging.ERROR)


def optimize_onnx(src: str | Path, dst: str | Path, model_type: str = "bert") -> dict[str, int]:
    """ORT transformer fusions (EmbedLayerNormalization, Attention, BiasGelu; LayerNormalization kept, not
    SkipLayerNormalization, see `SLOW_FUSIONS`) into ``dst``.

    ``num_heads=0, hidden_size=0`` lets the optimizer read head counts from each layer's weights, so pruned models with
    different head counts per layer fuse too. Returns the fused operator counts (all zero: nothing fused): how many
    of each operator the optimizer added (its own statistics count those the export already has too: the
    LayerNormalization of every opset-17 export)."""
    from collections import Counter

    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    kind = model_type if model_type in ("bert", "bart", "gpt2", "t5") else "bert"
    _quiet_ort_transformers()
    options = FusionOptions(kind)
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
    optimized = optimize_model(str(src), model_type=kind, num_heads=0, hidden_size=0, opt_level=0,
                               optimization_options=options)
    before = Counter(n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node)
    stats = {k: v - before[k] for k, v in optimized.get_fused_operator_statistics().items() if v > before[k]}
    tmp = Path(dst).with_name(f".{Path(dst).name}.tmp-{os.getpid()}")
    optimized.save_model_to_file(str(tmp))
    os.replace(tmp, dst)
    return stats


# ------------------------------------------------------------------------------------------------ running ONNX
SHIPPED_BATCH = 1
"""Batch size at which ONNX models are scored (task metrics, the int8 guard's sensitivity): the bundle predicts one
text at a time, and an int8 *dynamic* model computes its activation scales over its whole input (every row of the
batch, padding included), so the logits it gives a text depend on the texts batched with it. Scored by 32
length-sorted rows, the MPNet-base teacher's int8 dynamic model read 93.81 on SST-2 dev; one sentence at a time, as
it is used, 93.23 (a MiniLM-L4 student's: 90.71 vs 90.25). fp32 and static int8 models give the same logits either
way: for them batch 1 costs time only."""


def onnx_predict(sess, ds, collator: Collator, batch_size: int = 32) -> np.ndarray:
    """Logits of an ORT session for every row of tokenized ``ds``, in row order. ``batch_size`` > 1 (length-sorted,
    padded batches) is faster; use :data:`SHIPPED_BATCH` for any number that describes a shipped int8 model."""
    names = [i.name for i in sess.get_inputs()]
    if batch_size == 1:  # one row per run, unpadded: no loader (its per-batch overhead was ~40% of a small model's)
        cols = {n: list(ds[n]) for n in names if n in ds.column_names}
        ids = cols["input_ids"] if "input_ids" in cols else list(ds["input_ids"])
        rows = [sess.run(["logits"], {n: np.asarray([cols[n][i] if n in cols else [0] * len(ids[i])], dtype=np.int64)
                                      for n in names})[0] for i in range(len(ids))]
        return np.concatenate(rows) if rows else np.zeros((0, 1), dtype=np.float32)
    loader, order = eval_loader(ds, collator, batch_size)
    chunks = []
    for batch in loader:
        ids = batch["input_ids"].numpy().astype(np.int64)
        feed = {n: batch[n].numpy().astype(np.int64) if n in batch else np.zeros_like(ids) for n in names}
        chunks.append(sess.run(["logits"], feed)[0])
    logits = np.concatenate(chunks)
    out = np.empty_like(logits)
    out[order] = logits
    return out


def score_shipped(path: Path, ds, collator: Collator, metric_names, labels) -> dict[str, float]:
    """Task metrics of the ONNX file at ``path`` on tokenized ``ds``, one text at a time, as a bundle runs it."""
    from compress.metrics import compute_metrics

    return compute_metrics(metric_names, onnx_predict(session(path), ds, collator, SHIPPED_BATCH), labels)


@dataclass
class Parity:
    rows: int
    max_abs_diff: float
    argmax_agreement: float
    atol: float
    min_agreement: float

    def as_dict(self) -> dict:
        return asdict(self)


def check_parity(torch_logits: np.ndarray, onnx_logits: np.ndarray, *, atol: float = 1e-3,
                 min_agreement: float = 0.999, what: str = "ONNX fp32") -> Parity:
    """Compare logits row by row; beyond ``atol`` or below ``min_agreement`` argmax agreement -> CompressError."""
    if torch_logits.shape != onnx_logits.shape:
        raise CompressError(f"{what}: output shape {onnx_logits.shape} differs from torch {torch_logits.shape}")
    diff = float(np.abs(torch_logits - onnx_logits).max()) if torch_logits.size else 0.0
    if torch_logits.shape[-1] > 1:
        agree = float((torch_logits.argmax(-1) == onnx_logits.argmax(-1)).mean())
    else:  # regression: no argmax
        agree = 1.0
    parity = Parity(len(torch_logits), diff, agree, atol, min_agreement)
    if not np.isfinite(diff) or diff > atol or agree < min_agreement:
        raise CompressError(f"{what} parity check failed on {parity.rows} dev rows: max |dlogit| = {diff:.3g} "
                            f"(tolerance {atol:g}: quantize.parity_atol), argmax agreement = {agree:.4f} (required "
                            f"{min_agreement:g}: quantize.parity_min_agreement)")
    return parity


def optimize_checked(src: str | Path, dst: str | Path, model_type: str, ref_logits: np.ndarray, rows,
                     collator: Collator, *, atol: float = 1e-3,
                     min_agreement: float = 0.999) -> tuple[dict[str, int], Optional[Parity]]:
    """`optimize_onnx` into ``dst``, then the fused graph's logits on ``rows`` checked against ``ref_logits``
    (`check_parity`). Nothing fused: ``dst`` is removed and ``({}, None)`` returned. A fusion that changed the
    logits: ``dst`` is removed and `CompressError` raised. Else ``(fused operator counts, parity)``."""
    dst = Path(dst)
    fused = optimize_onnx(src, dst, model_type)
    if not fused:
        dst.unlink(missing_ok=True)
        return {}, None
    try:
        parity = check_parity(ref_logits, onnx_predict(session(dst), rows, collator), atol=atol,
                              min_agreement=min_agreement, what=f"ORT-fused graph ({dst.name})")
    except CompressError:
        dst.unlink(missing_ok=True)
        raise
    return fused, parity


def fused_if_exact(plain: Path, model_type: str, rows, collator: Collator) -> Path:
    """The ORT-fused copy of the exported model ``plain`` (``<stem>_fused.onnx``, the plain file then removed) when
    fusions matched and its logits equal the plain export's on ``rows`` (`optimize_checked`; a fusion that changed
    the math fails it), else ``plain``: a speedup reference should be the fastest exact fp32 graph."""
    fused = plain.with_name(plain.stem + "_fused.onnx")
    try:
        done, _ = optimize_checked(plain, fused, model_type, onnx_predict(session(plain, 1), rows, collator), rows,
                                   collator)
    except CompressError as e:
        log.info("%s: keeping the plain export as the fp32 reference (%s)", plain.name, e)
        return plain
    if not done:
        return plain
    plain.unlink()
    return fused
