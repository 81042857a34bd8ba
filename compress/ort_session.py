"""An onnxruntime CPU session as every stage runs ONNX files. Light on purpose (onnxruntime, no torch): the bench's
memory probe of an ONNX file (`compress.probe`) imports only this, so its peak RSS is the model's and the runtime's,
not torch's."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from compress.bundle_predict import DISABLED_OPTIMIZERS, first_line
from compress.errors import CompressError

SLOW_FUSIONS = DISABLED_OPTIMIZERS
"""ORT graph transformers whose fused CPU kernel is slower than the nodes it replaces (see compress.export's module
docstring): disabled in our sessions and in the bundle's predict.py (which defines them: it must run standalone)."""


def example_id_range(vocab_size: int, high: int) -> tuple[int, int]:
    """Token ids [low, high) for example and timing inputs: 1000 up to ``high``, within the vocabulary (a model with
    a small one, a domain tokenizer's few hundred tokens, failed its export with 'index out of range in self')."""
    return min(1000, vocab_size // 2), min(high, vocab_size)


def session(path: str | Path, threads: Optional[int] = None, spin: bool = True, stock: bool = False,
            save_optimized: Optional[Path] = None):
    """An ORT CPU session, full graph optimization without `SLOW_FUSIONS`; a missing or unreadable file is a
    `CompressError`. ``spin=False``: idle intra-op threads sleep instead of spinning (better on a CPU shared with other
    work). ``stock=True``: ORT's defaults, every fusion on (how a peer's user runs its model). ``save_optimized``:
    also write the graph ORT runs, after its online fusions, to this path (to inspect it)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CompressError(f"{path}: ONNX file not found")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if save_optimized:
        options.optimized_model_filepath = str(save_optimized)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=[] if stock else list(SLOW_FUSIONS))
    except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/InvalidGraph types
        raise CompressError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None


def to_ort_format(src: str | Path, dst: str | Path) -> Path:
    """The model in ORT format (flatbuffer, loadable by ORT mobile and minimal builds): ORT bakes its graph
    optimisations into the file and does not redo them at load. Basic ones (constant folding, no hardware-specific
    fusion; ORT's own advice for ORT-format files), except for a model with QuantizeLinear/DequantizeLinear nodes (a
    static int8 (QDQ) model; a dynamic one whose embedding table is int8): at the basic level those pairs stay
    unfused, and the .ort then dequantized every weight, the embedding table included, on every run (15.9 ms a run
    against the .onnx's 0.97 for a quickstart static model); the extended level fuses them into the int8 kernels the
    .onnx runs (1.05 ms, same logits: scripts/ort_format_speed.py). `SLOW_FUSIONS` are left out, as in every session
    (a session loading the .ort does not redo or undo its optimisations: the extended level's SkipLayerNormalization
    was baked into those .ort files: quickstart static .ort 1.85 ms a run with it, 1.11 without, 1 thread, AVX2)."""
    import onnx
    import onnxruntime as ort

    try:
        qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear")
                  for n in onnx.load(str(src), load_external_data=False).graph.node)
    except Exception as e:  # protobuf's DecodeError and friends
        raise CompressError(f"{src}: conversion to ORT format failed (not an ONNX model: {first_line(e)})") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if qdq else
                                        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    options.optimized_model_filepath = str(dst)
    options.add_session_config_entry("session.save_model_format", "ORT")
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(SLOW_FUSIONS))
    except Exception as e:  # onnxruntime's own exception types: one line, and no half-written .ort left
        Path(dst).unlink(missing_ok=True)
        raise CompressError(f"{src}: conversion to ORT format failed ({first_line(e)})") from None
    return Path(dst)

