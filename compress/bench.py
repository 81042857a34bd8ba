"""Stage `bench` and `compress bench`: one latency protocol for every artifact of the run and for the peers.

Artifacts: the quantize stage's ONNX fp32 (plain and fused) and int8 models. Peers, same model, same run: torch eager
fp32, torch dynamic int8 (``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``), and Optimum's
``ORTQuantizer`` with its AVX-512 VNNI dynamic preset (``AutoQuantizationConfig.avx512_vnni(is_static=False)``, u8
activations x s8 weights, as our int8 models; on a CPU without VNNI it runs through ORT's AVX2/AVX-512 kernels, and
Optimum's own preset for AVX2, ``avx2``, would take u8 weights).

Protocol (recorded in the JSON beside the numbers). All artifacts are loaded in one fresh process and timed in turn:
by default (``order: series``) each runs its series back to back (warm caches, as a serving model and ORT's own
benchmarks run), the artifacts taking turns in a rotating order ``rounds`` times so load from other jobs on a shared
CPU spreads over all of them; ``order: interleaved`` alternates artifacts run by run (each run then starts with another
model's weights in cache). For each thread count (torch ``set_num_threads``; ORT ``intra_op_num_threads`` with one
inter-op thread, sequential execution):
  - ``dev``: real dev sentences one at a time (batch 1, unpadded, the first ``dev_rows`` rows), one timed run each;
  - ``b{B}xs{S}``: fixed shapes, random token ids, full attention mask, ``warmup`` untimed runs, then timed runs
    until ``repeats`` runs or ``max_seconds`` of timed runs (at least ``min_runs``): in series, each artifact's own
    (its share each round: a slower artifact gets fewer runs), interleaved, the slowest artifact's (all get as many).
Latency p50/p90/p99/mean (ms, ``time.perf_counter`` around one forward), throughput (sequences/s from the mean),
achieved GOP/s (exact forward FLOPs of the fp32 model at that shape, ``torch.utils.flop_counter``, per p50 second;
int8 executes the same operations) against the machine's measured GEMM peak (ORT MatMulInteger u8 x s8 and MatMul fp32,
1024 x 1024 x 1024, same threads). Also: file size, parameter count, task metric on all of dev, and the peak RSS of
each artifact alone in a fresh process (``isolate``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from compress.config import BenchConfig, Recipe
from compress.errors import CompressError
from compress.tasks import round_down
# not compress.export: the memory probe of an ONNX file imports no torch
from compress.ort_session import SLOW_FUSIONS, example_id_range
from compress.probe import OnnxRunner, dev_feeds, fixed_inputs, make_runner, probe_memory  # noqa: F401
from compress.manifest import cpu_model, read_json, scores, scratch_dir, usable_cores, versions, write_json

log = logging.getLogger(__name__)

PEERS = ("torch_fp32", "torch_dynamic_int8", "optimum_avx512_vnni")


# ------------------------------------------------------------------------------------------------ timing
def percentiles(times_s: list[float]) -> dict:
    t = np.asarray(times_s) * 1000.0
    return {"p50_ms": round(float(np.percentile(t, 50)), 4), "p90_ms": round(float(np.percentile(t, 90)), 4),
            "p99_ms": round(float(np.percentile(t, 99)), 4), "mean_ms": round(float(t.mean()), 4), "runs": len(t)}


def time_fixed(fn, warmup: int, repeats: int, max_seconds: float, min_runs: int) -> list[float]:
    """Call ``fn()`` ``warmup`` times untimed, then time it until ``repeats`` runs or ``max_seconds`` spent."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeats and (len(times) < min_runs or sum(times) < max_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------------------------ runners
class TorchRunner:
    def __init__(self, model, threads: int):
        import inspect

        import torch

        torch.set_num_threads(threads)
        self.model = model.eval()
        params = inspect.signature(model.forward).parameters
        self.names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in params]

    def __call__(self, feeds: dict[str, np.ndarray]):
        import torch

        with torch.inference_mode():
            return self.model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()


def load_torch(kind: str, folder: str):
    """The torch peers: eager fp32, or dynamic int8 Linear layers (fbgemm, per tensor)."""
    import torch

    from compress.modeling import load_trained

    model, _ = load_trained(folder)
    model.eval()
    if kind == "torch_dynamic_int8":
        import warnings

        with warnings.catch_warnings():  # torch.ao's move to torchao is announced on every call: not this run's news
            warnings.filterwarnings("ignore", message=r".*(deprecated|torchao|pytorch/ao).*")
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model


# ------------------------------------------------------------------------------------------------ measuring
TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


def first_rows(dev, n: Optional[int]):
    """The first ``n`` rows of ``dev`` (a `datasets.Dataset` or a list of row dicts); all of them for ``n`` None/0."""
    if not n:
        return dev
    return dev[:n] if isinstance(dev, list) else dev.select(range(min(n, len(dev))))


def token_rows(dev, n: Optional[int]) -> list[dict]:
    """The first ``n`` rows' token columns as lists: what a timing or memory worker is given in its spec (JSON), so
    that it imports no `datasets` (~0.9 s of every fresh process here), as a user's process would not."""
    return [{k: r[k] for k in TOKEN_COLUMNS if k in r} for r in first_rows(dev, n)]


def _share(total: int, parts: int, k: int) -> int:
    """Part ``k`` of ``total`` split over ``parts`` as evenly as whole numbers go (the parts sum to ``total``: a
    rounded-up share per round timed 21 runs for ``repeats: 20`` over 3 rounds, 3 for ``repeats: 1``)."""
    return total // parts + (k < total % parts)


def _rotated(names: list[str], i: int) -> list[str]:
    return names[i % len(names):] + names[: i % len(names)]


def measure(artifacts: dict[str, dict], dev, cfg: BenchConfig, flops: dict[str, int],
            vocab_size: Optional[int] = None) -> dict:
    """Latencies of every artifact, all loaded in this process. ``cfg.order``:

    - ``series`` (default): each artifact runs its whole series back to back (warm-up, then every dev sentence, or
      the timed runs of a fixed shape), as a user's model serving requests does and as ORT's and Optimum's
      benchmarks time; artifacts take turns in a rotating order, ``cfg.rounds`` times, so load from other jobs on
      a shared CPU spreads over all of them.
    - ``interleaved``: each timed run of one artifact is followed by one run of every other (the order rotating).
      Evens out a noisy shared CPU best, but every run then starts with caches holding another model's weights: a
      fixed cold-cache cost per run that shrinks the gap between small, fast models (one quickstart run's int8
      student, 1 thread: 0.61 ms series, 0.92 ms interleaved; torch dynamic int8 2.29 -> 2.83 ms).

    ``dev``: the tokenized dev rows (a dataset, or `token_rows`), or several tokenizations of the same rows by name,
    each artifact reading the one its ``"dev_set"`` entry names (models of different tokenizers timed in one pass: the
    report's teacher reference beside the bench's artifacts). Returns name -> list of result rows."""
    from tqdm.auto import tqdm

    models = {k: load_torch(k, a["model_dir"]) for k, a in ((a["kind"], a) for a in artifacts.values())
              if k.startswith("torch")}
    names = list(artifacts)
    results: dict[str, list] = {n: [] for n in names}
    devs = {key: first_rows(d, cfg.dev_rows) for key, d in (dev.items() if isinstance(dev, dict) else [("", dev)])}
    if len({len(d) for d in devs.values()}) > 1:
        raise CompressError(f"bench: dev tokenizations of different lengths: {({k: len(d) for k, d in devs.items()})}")
    rows_of = {n: devs[artifacts[n].get("dev_set", next(iter(devs)))] for n in names}
    rows = next(iter(devs.values()))
    shapes = [(b, s) for b in cfg.batch_sizes for s in cfg.seq_lengths]
    series = cfg.order == "series"
    rounds = cfg.rounds if series else 1
    progress = tqdm(total=len(cfg.threads) * (1 + len(shapes)), desc=f"bench ({cfg.order})", leave=False)
    for threads in cfg.threads:
        runners = {n: make_runner(artifacts[n], threads, models, cfg.spin) for n in names}
        # real dev sentences, batch 1, one timed run per sentence, artifact and round
        feeds = {n: dev_feeds(rows_of[n], r.names) for n, r in runners.items()}
        times: dict[str, list[float]] = {n: [] for n in names}
        if series:
            for k in range(rounds):
                for n in _rotated(names, k):
                    for f in feeds[n][: cfg.warmup]:
                        runners[n](f)
                    for f in feeds[n]:
                        t0 = time.perf_counter()
                        runners[n](f)
                        times[n].append(time.perf_counter() - t0)
        else:
            for n, r in runners.items():
                for f in feeds[n][: cfg.warmup]:
                    r(f)
            for i in range(len(rows)):
                for n in _rotated(names, i):
                    t0 = time.perf_counter()
                    runners[n](feeds[n][i])
                    times[n].append(time.perf_counter() - t0)
        for n in names:
            tokens = float(np.mean([len(r["input_ids"]) for r in rows_of[n]]))
            p = percentiles(times[n])
            results[n].append({"input": "dev", "threads": threads, "batch": 1, "seq": f"real (mean {tokens:.1f})",
                               **p, "throughput_seq_s": round(1000.0 / p["mean_ms"], 2)})
        progress.update()
        for batch, seq in shapes:
            feeds = {n: fixed_inputs(r.names, batch, seq, vocab_size=vocab_size) for n, r in runners.items()}
            times = {n: [] for n in names}
            if series:  # repeats, min_runs and max_seconds split over the rounds (repeats: at most, in all)
                for k in range(rounds):
                    repeats, min_runs = _share(cfg.repeats, rounds, k), _share(cfg.min_runs, rounds, k)
                    if not repeats:
                        continue
                    for n in _rotated(names, k):
                        times[n] += time_fixed(functools.partial(runners[n], feeds[n]), cfg.warmup, repeats,
                                               cfg.max_seconds / rounds, min_runs)
            else:
                for n, r in runners.items():
                    for _ in range(cfg.warmup):
                        r(feeds[n])
                for i in range(cfg.repeats):
                    for n in _rotated(names, i):
                        t0 = time.perf_counter()
                        runners[n](feeds[n])
                        times[n].append(time.perf_counter() - t0)
                    if i + 1 >= cfg.min_runs and max(sum(t) for t in times.values()) >= cfg.max_seconds:
                        break
            for n in names:
                p = percentiles(times[n])
                row = {"input": f"b{batch}xs{seq}", "threads": threads, "batch": batch, "seq": seq, **p,
                       "throughput_seq_s": round(batch * 1000.0 / p["mean_ms"], 2)}
                if flops.get(row["input"]):
                    row["gop_s"] = float(f"{flops[row['input']] / 1e9 / (p['p50_ms'] / 1000.0):.4g}")
                results[n].append(row)
            progress.update()
        del runners
    progress.close()
    return results


def measure_in_fresh_process(artifacts: dict[str, dict], dev, cfg: BenchConfig, flops: dict,
                             peak: bool = True, vocab_size: Optional[int] = None) -> dict:
    """``measure`` in a fresh process, where the OpenMP wait policy of torch (read when torch loads) can
    follow ``cfg.spin``: PASSIVE unless spinning is asked for. ``peak``: also measure the machine's GEMM peak
    (``machine_peak`` of the result)."""
    with scratch_dir("bench") as tmp:
        tmp = Path(tmp)
        devs = {key: token_rows(d, cfg.dev_rows) for key, d in (dev.items() if isinstance(dev, dict) else [("", dev)])}
        spec = {"artifacts": artifacts, "dev": devs, "cfg": asdict(cfg),
                "flops": flops, "peak": peak, "vocab_size": vocab_size}
        return _worker(spec, tmp, "timing", omp_env(cfg.spin), f"timing of {', '.join(artifacts)}", quiet=False)


def evaluate_artifact(art: dict, dev, collator, metric_names: list[str], threads: int, models: dict,
                      spin: bool = True) -> dict:
    """Task metrics on all of dev. Quantized models score one text at a time, as they are shipped (their dynamic
    activation scales depend on the whole batch: ``compress.export.SHIPPED_BATCH``); torch fp32, batch-independent,
    in length-sorted batches of 64. ``spin``: ``bench.spin`` (an ONNX file's session spins its idle threads only when
    asked to, as the timing's do)."""
    from compress.export import SHIPPED_BATCH
    from compress.metrics import compute_metrics

    if art["kind"].startswith("torch"):
        from compress.evaluate import predict

        batch = 64 if art["kind"] == "torch_fp32" else SHIPPED_BATCH
        logits = predict(models[art["kind"]], dev, collator, batch_size=batch)
    else:
        from compress.export import onnx_predict

        logits = onnx_predict(OnnxRunner(Path(art["path"]), threads, spin, stock=art.get("stock", False)).sess, dev,
                              collator, SHIPPED_BATCH)
    return compute_metrics(metric_names, logits, np.asarray(dev["label"]))


def probe_job(name: str, art: dict, cfg: BenchConfig, rows: list, vocab: Optional[int], shapes: list) -> dict:
    """What `probe_memory` is given for one artifact: its file, a few dev rows, the largest fixed shape, and the
    timing's thread count, spin setting and session kind (the probe's session was built spinning whatever
    ``bench.spin`` said; a peer's, timed with ORT's stock settings, with ours)."""
    return {"name": name, "kind": art["kind"], "path": art.get("path"), "model_dir": art.get("model_dir"),
            "dev_rows": rows, "threads": cfg.threads, "vocab_size": vocab, "spin": cfg.spin,
            "stock": art.get("stock", False),
            "largest": max(shapes, key=lambda x: x[0] * x[1]) if shapes else None}


def run_isolated(spec: dict, workdir: Path) -> dict:
    """`compress.probe.probe_memory` in a fresh Python process (its own peak RSS, no allocator state from the
    others; an ONNX file's imports no more than a user's process would)."""
    env = {"OMP_NUM_THREADS": str(max(spec["threads"])), **omp_env(spec.get("spin", True))}
    return _worker(spec, workdir, spec["name"], env, f"{spec['name']} ({spec.get('path') or spec.get('model_dir')})",
                   module="compress.probe")


def _worker(spec: dict, workdir: Path, stem: str, env: dict, what: str, quiet: bool = True,
            module: str = "compress.bench") -> dict:
    """Run ``python -m <module> SPEC OUT`` and read its result; a failure is one `CompressError` line.
    ``quiet=False`` lets the worker's progress bar through to this terminal."""
    spec_path, out_path = workdir / f"{stem}.spec.json", workdir / f"{stem}.out.json"
    spec_path.write_text(json.dumps(spec))
    pipe = subprocess.PIPE if quiet else None
    # the same compress as this process: -P keeps the working directory (a checkout that happens to sit in the
    # folder the command was started from) off sys.path, and this process's package root goes first on it (run from a
    # source folder that is not the installed copy, -P alone imported the installed one)
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    # SIGTERM / SIGHUP (unwound as exceptions by the CLI) deferred while the worker starts: one raised inside Popen
    # left the worker running, and reading a settings file its parent's cleanup had just deleted (a traceback after
    # "terminated"); raised once it exists, the worker is stopped with it
    deferred = _defer_signals()
    try:
        proc = subprocess.Popen([sys.executable, "-P", "-m", module, str(spec_path), str(out_path)],
                                env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path, **env},
                                text=True, stdout=pipe, stderr=pipe, preexec_fn=_die_with_parent)
    except BaseException:
        _undefer_signals(deferred)
        raise
    with proc:
        try:
            _undefer_signals(deferred)
            stdout, stderr = proc.communicate()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    result = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if proc.returncode != 0 or "error" in result or not result:
        tail = result.get("error") or " | ".join((stderr or stdout or "").strip().splitlines()[-3:])
        raise CompressError(f"bench of {what} failed: {tail or f'exit status {proc.returncode}'}")
    return result


def _defer_signals() -> tuple[dict, list]:
    """SIGTERM and SIGHUP, where a Python handler takes them (the CLI's, which raises), only noted until
    `_undefer_signals`: (the handlers replaced, the signals noted). A signal mask would not do: a process-directed
    signal goes to another thread that does not block it (torch's, onnxruntime's), and Python runs its handler in the
    main thread all the same. In the main thread only (the one Python runs handlers in)."""
    import signal
    import threading

    handlers: dict = {}
    noted: list = []
    if threading.current_thread() is not threading.main_thread():
        return handlers, noted
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        handler = signal.getsignal(signum) if signum is not None else None
        if callable(handler):
            handlers[signum] = handler
            signal.signal(signum, lambda number, frame: noted.append(number))
    return handlers, noted


def _undefer_signals(deferred: tuple[dict, list]) -> None:
    """The handlers `_defer_signals` replaced back; a signal noted meanwhile is handled now (the CLI's raises)."""
    import signal

    handlers, noted = deferred
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    for signum in noted[:1]:
        handlers[signum](signum, None)


def _die_with_parent() -> None:
    """In the worker, before exec (Linux): SIGTERM when the parent dies, so a killed run (kill -9) leaves no timing
    worker loading the CPU under the next run's timings. Ctrl-C, which reaches the whole process group, is ignored
    in it (Python keeps an inherited SIG_IGN): a worker still importing numpy printed its KeyboardInterrupt traceback
    above the parent's one-line "interrupted"; the parent (`_worker`) kills it as it unwinds."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker ends when its timing does
        pass


def _worker_main(spec: dict) -> dict:
    cfg = BenchConfig(**spec["cfg"])
    dev = spec["dev"]
    if not spec.get("peak", True):
        return {"results": measure(spec["artifacts"], dev, cfg, spec["flops"], spec.get("vocab_size"))}
    before = {str(t): gemm_peak(t, spin=cfg.spin) for t in cfg.threads}
    results = measure(spec["artifacts"], dev, cfg, spec["flops"], spec.get("vocab_size"))
    after = {str(t): gemm_peak(t, spin=cfg.spin) for t in cfg.threads}  # the best of before and after
    return {"results": results,
            "machine_peak": {t: {k: max(v, after[t][k]) for k, v in before[t].items()} for t in before}}


# ------------------------------------------------------------------------------------------------ machine peak
def gemm_peak(threads: int, n: int = 1024, runs: int = 20, spin: bool = True) -> dict:
    """Measured GEMM throughput of this machine through ORT (the kernels our models use): u8 x s8 -> s32
    MatMulInteger and fp32 MatMul, n x n x n, best of ``runs``, in GOP/s (2 ops per multiply-add)."""
    import onnx
    from onnx import TensorProto, helper

    from compress.ort_session import session

    out = {}
    rng = np.random.default_rng(0)
    with scratch_dir("gemm") as tmp:
        for name, op, a_type, b in (
                ("int8", "MatMulInteger", TensorProto.UINT8, rng.integers(-127, 127, (n, n), dtype=np.int8)),
                ("fp32", "MatMul", TensorProto.FLOAT, rng.standard_normal((n, n), dtype=np.float32))):
            b_init = onnx.numpy_helper.from_array(b, "B")
            graph = helper.make_graph([helper.make_node(op, ["A", "B"], ["Y"])], name,
                                      [helper.make_tensor_value_info("A", a_type, [n, n])],
                                      [helper.make_tensor_value_info("Y", TensorProto.INT32 if name == "int8"
                                                                     else TensorProto.FLOAT, [n, n])], [b_init])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(model, path)
            sess = session(path, threads=threads, spin=spin)
            a = (rng.integers(0, 255, (n, n), dtype=np.uint8) if name == "int8"
                 else rng.standard_normal((n, n), dtype=np.float32))
            times = time_fixed(lambda: sess.run(None, {"A": a}), 1, runs, 10.0, runs)
            out[f"{name}_gemm_gop_s"] = round(2 * n ** 3 / min(times) / 1e9, 1)
    return out


def forward_flops(model_dir: str, shapes: list[tuple[int, int]]) -> dict[str, int]:
    """Exact forward FLOPs of the fp32 model at each (batch, seq) (matmuls, attention; torch's flop counter). The
    counter has no formula for the CPU kernel of scaled_dot_product_attention (BERT's default attention): its two
    matmuls a layer went uncounted (GOP/s read low), counted now with torch's own attention formula."""
    import torch
    from torch.utils import flop_counter
    from torch.utils.flop_counter import FlopCounterMode

    from compress.modeling import load_trained

    def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:  # shapes (the counter's wrapper)
        return flop_counter.sdpa_flop_count(query, key, value)

    cpu_kernel = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {cpu_kernel: cpu_sdpa} if cpu_kernel is not None else {}
    model, _ = load_trained(model_dir)
    model.eval()
    out = {}
    for batch, seq in shapes:
        ids = torch.randint(*example_id_range(model.config.vocab_size, 2000), (batch, seq))
        with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        out[f"b{batch}xs{seq}"] = int(counter.get_total_flops())
    return out


# ------------------------------------------------------------------------------------------------ peers
def optimum_peer(fp32_onnx: Path, out_dir: Path) -> Path:
    """Optimum's int8 for VNNI CPUs: ORTQuantizer + AutoQuantizationConfig.avx512_vnni(is_static=False) (u8 x s8,
    as ours), whatever this CPU is: the same peer on every host."""
    import shutil

    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    work = out_dir / "optimum"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(fp32_onnx, work / "model.onnx")
    quantizer = ORTQuantizer.from_pretrained(work, file_name="model.onnx")
    quantizer.quantize(AutoQuantizationConfig.avx512_vnni(is_static=False), save_dir=work)
    (work / "model.onnx").unlink()
    return work / "model_quantized.onnx"


# ------------------------------------------------------------------------------------------------ the stage
GOMP_SPINS = 300_000
"""How long torch's idle OpenMP threads spin under ``spin: true`` (libgomp's GOMP_SPINCOUNT, its default without a
wait policy: well under a millisecond here) before they sleep, as onnxruntime's spinning threads do. With
OMP_WAIT_POLICY=ACTIVE alone libgomp spins 30 billion times: after a torch peer's turn its threads kept both cores
busy through the ONNX models' turns in the same timing process (1.0 CPU-second per idle second, 0.0 with this)."""


def omp_env(spin: bool) -> dict[str, str]:
    """The OpenMP environment of a timing (or memory-probe) process for ``BenchConfig.spin``."""
    return {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": str(GOMP_SPINS)} if spin else {"OMP_WAIT_POLICY": "PASSIVE"}


def spin_protocol(spin: bool) -> str:
    """The latency protocol's words for ``BenchConfig.spin`` (the bench's, the search's)."""
    return (f"idle threads spin (OMP_WAIT_POLICY=ACTIVE, GOMP_SPINCOUNT={GOMP_SPINS}, ORT allow_spinning=1)" if spin
            else "idle threads sleep (OMP_WAIT_POLICY=PASSIVE, ORT allow_spinning=0)")


def spun(spin) -> Optional[bool]:
    """Whether a protocol's ``spin`` (`spin_protocol`'s words, or a bool) says idle threads spun; None: it does not
    say (a search's protocol line, a record without the field)."""
    if isinstance(spin, bool):
        return spin
    words = spin if isinstance(spin, str) else ""
    return True if words.startswith("idle threads spin") else False if words.startswith("idle threads sleep") else None


def dev_protocol(cfg: BenchConfig, dev_rows: int) -> str:
    """The protocol's words for the dev series of a split of ``dev_rows`` rows (the bench's, the report's own pass):
    the rows `measure` times, ``bench.dev_rows`` capped by the split (the report's said "first 200" of WNLI's 71)."""
    timed = min(cfg.dev_rows or dev_rows, dev_rows)
    return f"first {timed} dev rows, batch 1, unpadded, one timed run each" + (
        " per round" if cfg.order == "series" else "")


def source_folder(recipe: Recipe, qdir: Path, qrec: dict) -> str:
    """The torch model that quantize.json says was quantized, in this run folder (``qdir``'s parent): a run folder
    copied or moved since quantize ran (``--runs-dir``, a renamed folder) still finds it, where the folder path
    quantize.json recorded points at the old place. That recorded path is kept when the run folder no longer has
    the model."""
    from compress.quantize import source_in_run

    try:
        return str(source_in_run(recipe, qdir.parent, qrec["source"]["model"]))
    except CompressError:
        return qrec["source"]["folder"]


def run(recipe: Recipe, out: Path, inputs: dict[str, Path]) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    from compress.data import load_task, tokenize
    from compress.modeling import check_length

    cfg: BenchConfig = recipe.bench
    qdir = inputs["quantize"]
    qrec = read_json(qdir / "quantize.json")
    model_dir = source_folder(recipe, qdir, qrec)
    config = AutoConfig.from_pretrained(model_dir)
    for length in cfg.seq_lengths:
        check_length(config, length, f"{recipe.path}: bench.seq_lengths", "the benchmarked model")
    tokenizer = AutoTokenizer.from_pretrained(qdir / "tokenizer")
    data = load_task(recipe.task, seed=recipe.seed)
    dev = tokenize(data.dev, tokenizer, recipe.task.max_length)
    shapes = [(b, s) for b in cfg.batch_sizes for s in cfg.seq_lengths]
    return bench(qdir, qrec, model_dir, dev, data.spec, cfg, out, shapes)


def bench(qdir: Path, qrec: dict, model_dir: str, dev, spec, cfg: BenchConfig, out: Path,
          shapes: list[tuple[int, int]]) -> dict:
    """Measure every artifact and peer; write ``bench.json`` into ``out``; return the manifest fields."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from compress.data import Collator

    from compress.modeling import count_params, load_trained

    # absolute paths in bench.json (a relative runs_dir made them relative to the working directory, which the report
    # cannot tell from the paths of files this stage made, recorded relative to its own folder)
    out, qdir, model_dir = Path(out).resolve(), Path(qdir).resolve(), str(Path(model_dir).resolve())
    over = [t for t in cfg.threads if t > usable_cores()]
    if over:
        log.warning("bench.threads %s: more than this machine's %s cores; those timings measure oversubscription",
                    over, usable_cores())
    model = load_trained(model_dir)[0]
    params, vocab = count_params(model), model.config.vocab_size  # vocab: timing inputs' ids stay within it
    del model
    artifacts: dict[str, dict] = {}
    if "torch_fp32" in cfg.peers:
        artifacts["torch_fp32"] = {"kind": "torch_fp32", "model_dir": model_dir, "peer": True}
    if "torch_dynamic_int8" in cfg.peers:
        artifacts["torch_dynamic_int8"] = {"kind": "torch_dynamic_int8", "model_dir": model_dir, "peer": True}
    artifacts["onnx_fp32"] = {"kind": "onnx", "path": str(qdir / qrec["fp32"]["file"])}
    if "fp32_opt" in qrec:
        artifacts["onnx_fp32_opt"] = {"kind": "onnx", "path": str(qdir / qrec["fp32_opt"]["file"])}
    for mode, entry in qrec["int8"].items():
        artifacts[f"int8_{mode}"] = {"kind": "onnx", "path": str(qdir / entry["file"]), "ours": True,
                                     "shippable": entry["shippable"]}
    if "optimum_avx512_vnni" in cfg.peers:
        path = optimum_peer(qdir / qrec["fp32"]["file"], out / "peers")
        artifacts["optimum_avx512_vnni"] = {"kind": "onnx", "path": str(path), "peer": True, "stock": True}

    protocol = {"cpu": cpu_model(), "cores": usable_cores(), "platform": platform.platform(),
                "versions": versions(), "threads": cfg.threads, "inter_op_threads": 1,
                "shapes": [f"b{b}xs{s}" for b, s in shapes], **asdict(cfg),
                "order": (f"series: all artifacts in one fresh process, each timed back to back (warm), taking turns "
                          f"in a rotating order, {cfg.rounds} rounds" if cfg.order == "series" else
                          "interleaved: all artifacts in one fresh process, timed round-robin (rotating order) run "
                          "by run, in one round (rounds unused)"),
                "spin": spin_protocol(cfg.spin),
                "ort_session": f"ORT_ENABLE_ALL; our ONNX artifacts without {', '.join(SLOW_FUSIONS)} (slow CPU "
                               "kernel, see compress.export); the Optimum peer with ORT's defaults, as its users run it",
                "dev": dev_protocol(cfg, len(dev)),
                "timer": "time.perf_counter around one forward; warm-up runs excluded",
                "accuracy": "all dev rows, first thread count; ONNX and torch int8 one row at a time (batch 1, as "
                            "shipped: int8 dynamic activation scales depend on the batch), torch fp32 in length-sorted "
                            "batches",
                "rss": "MiB (2^20 bytes), VmHWM of a fresh process per artifact: load, 8 dev rows, the largest fixed "
                       "shape; includes the Python interpreter and what that process imports: onnxruntime and numpy "
                       "for ONNX files (compress.probe), torch and transformers for the torch peers; and the shared "
                       "libraries' file pages it maps, which vary with the page cache (rss_anon_end_mb / "
                       "rss_file_end_mb: the two parts at the end of the probe)" if cfg.isolate
                       else "not measured (isolate: false)",
                "gemm_peak": "ORT MatMulInteger u8 x s8 / MatMul fp32, 1024^3, best of 20 runs before and after the "
                             "timing, same process and thread settings",
                "cpu_shared": "the CPU may be shared with other jobs: compare ratios measured in the same run"}
    flops = forward_flops(model_dir, shapes)
    models = {a["kind"]: load_torch(a["kind"], model_dir) for a in artifacts.values() if a["kind"].startswith("torch")}
    collator = Collator({"": AutoTokenizer.from_pretrained(qdir / "tokenizer")}, regression=spec.is_regression)
    # dev metrics already measured by the quantize stage on the same rows (torch fp32: the parity run, where the
    # record keeps them apart from model.onnx's own fp32 metrics; int8: the same files and runtime, one row at a time)
    # are reused; the others are evaluated here (int8 of a quantize record older than batch-1 scoring too: its numbers
    # were taken in batches of 32)
    from compress.export import SHIPPED_BATCH

    known = {"torch_fp32": scores(qrec["fp32"]["torch_metrics"])} if "torch_metrics" in qrec["fp32"] else {}
    if qrec.get("scored_batch") == SHIPPED_BATCH:
        known.update({f"int8_{m}": scores(e["metrics"]) for m, e in qrec["int8"].items()})
    for name, art in tqdm(list(artifacts.items()), desc="bench accuracy", leave=False):
        if name in known and len(dev) == qrec["fp32"]["parity"]["rows"]:
            art["metrics"], art["metrics_from"] = known[name], "quantize stage"
        else:
            art["metrics"] = evaluate_artifact(art, dev, collator, spec.metrics, cfg.threads[0], models, cfg.spin)
    if "torch_dynamic_int8" in models:  # its size: the int8 state_dict torch.save writes, not the fp32 source's files
        import io

        import torch

        buffer = io.BytesIO()
        torch.save(models["torch_dynamic_int8"].state_dict(), buffer)
        artifacts["torch_dynamic_int8"]["size_bytes"] = buffer.tell()
    del models
    timed = measure_in_fresh_process(artifacts, dev, cfg, flops, vocab_size=vocab)
    for name, rows in timed["results"].items():
        artifacts[name]["results"] = rows
    peak = timed["machine_peak"]
    probe_rows = token_rows(dev, 8)
    with scratch_dir("bench") as tmp:
        tmp = Path(tmp)
        for name, art in artifacts.items():
            if cfg.isolate:
                art.update(run_isolated(probe_job(name, art, cfg, probe_rows, vocab, shapes), tmp))
            file = Path(art["path"]) if "path" in art else None
            if "size_bytes" not in art:
                art["size_bytes"] = (file.stat().st_size if file else
                                     sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")))
            art["params"] = params
            art["file"] = str(file) if file else model_dir
            print(f"[bench] {name}: {_line(art)}")
    for art in artifacts.values():  # files this stage made (the Optimum peer) are recorded relative to its folder:
        for key in ("path", "file"):  # `out` is a temporary folder, renamed into place once the stage is done
            if art.get(key) and Path(art[key]).is_relative_to(out):
                art[key] = Path(art[key]).relative_to(out).as_posix()
    ours = best_int8(artifacts)
    record = {"protocol": protocol, "machine_peak": peak, "flops": flops, "artifacts": artifacts, "ours": ours,
              "ratios": ratios(artifacts, ours) if ours else {}}
    record["run_dir"] = str(out.parent)  # the other artifacts' paths are under it (compress.report.bench_record
    #                                       rebases them; relative ones are under the bench stage's folder)
    write_json(out / "bench.json", record)
    print(format_ratios(record))
    metrics = {name: a.get("metrics") for name, a in artifacts.items()}
    return {"metrics": {"dev": artifacts[ours]["metrics"] if ours else artifacts["onnx_fp32"]["metrics"],
                        **{f"{k}_dev": v for k, v in metrics.items()}},
            "params": params, "bench": record}


def best_int8(artifacts: dict) -> Optional[str]:
    """Our int8 model to compare: the fastest shippable one (dev p50 at the first thread count)."""
    ours = [n for n, a in artifacts.items() if a.get("ours") and a.get("shippable")]
    if not ours:
        return None
    return min(ours, key=lambda n: _dev(artifacts[n])["p50_ms"])


def _dev(art: dict, threads: Optional[int] = None) -> dict:
    return next(r for r in art["results"] if r["input"] == "dev" and (threads is None or r["threads"] == threads))


def ratios(artifacts: dict, ours: str) -> dict:
    """Per peer: peer latency / our latency (> 1: ours is faster) for each input and thread count, and the metric
    difference in points (ours - peer)."""
    mine = artifacts[ours]
    out = {}
    for name, art in artifacts.items():
        if name == ours or not (art.get("peer") or name.startswith("onnx_fp32")):
            continue
        speed = {}
        for r in mine["results"]:
            peer = next((p for p in art["results"] if p["input"] == r["input"] and p["threads"] == r["threads"]), None)
            if peer:
                speed[f"{r['input']}@{r['threads']}t"] = round_down(peer["p50_ms"] / r["p50_ms"], 4)  # 3.9996 is no 4
        first = next(iter(mine["metrics"]))
        out[name] = {"speedup_p50": speed,
                     "metric_delta_points": round(100 * (mine["metrics"][first] - art["metrics"][first]), 3),
                     "metric": first}
    return out


def format_ratios(record: dict) -> str:
    ours = record["ours"]
    if not ours:
        return "[bench] no shippable int8 model: no ratios"
    if not record["ratios"]:
        return f"[bench] ours = {ours}; nothing to compare it with (bench.peers is empty)"
    metric = next(iter(record["ratios"].values()))["metric"]
    lines = [f"[bench] ours = {ours}; speed-up = peer p50 / our p50 (>1: ours faster); {metric} delta = ours - peer"]
    for peer, r in record["ratios"].items():
        sp = "  ".join(f"{k} {round_down(v, 2):.2f}x" for k, v in r["speedup_p50"].items())
        lines.append(f"  vs {peer:22s} {r['metric']} {r['metric_delta_points']:+.2f} pt | {sp}")
    mine = record["artifacts"][ours]
    for r in mine["results"]:
        if "gop_s" in r:
            peak = record["machine_peak"][str(r["threads"])]["int8_gemm_gop_s"]
            lines.append(f"  {ours} {r['input']}@{r['threads']}t: {r['gop_s']:.1f} GOP/s = "
                         f"{100 * r['gop_s'] / peak:.0f}% of the measured int8 GEMM peak {peak:.0f} GOP/s")
    return "\n".join(lines)


def _line(art: dict) -> str:
    dev = ", ".join(f"{r['threads']}t p50 {r['p50_ms']:.2f} ms" for r in art["results"] if r["input"] == "dev")
    metric = ", ".join(f"{k}={v:.4f}" for k, v in (art.get("metrics") or {}).items())
    rss = f"; peak RSS {art['peak_rss_mb']:.0f} MiB" if "peak_rss_mb" in art else ""
    return f"{metric}; dev batch 1: {dev}{rss}; {art['size_bytes'] / 1e6:.1f} MB"


if __name__ == "__main__":  # worker: python -m compress.bench SPEC.json OUT.json
    logging.basicConfig(level=logging.WARNING)
    try:
        result = _worker_main(json.loads(Path(sys.argv[1]).read_text()))
    except CompressError as e:
        write_json(Path(sys.argv[2]), {"error": str(e)})
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent says "interrupted", once
        sys.exit(130)
    write_json(Path(sys.argv[2]), result)
