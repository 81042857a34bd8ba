"""Stage `report` and ``compress report RUN...``: what each artifact of a run costs and keeps, in one table per run.

For every artifact (teacher, students, pruned models, their ONNX fp32 and int8 variants) a row gives parameters,
file size, the task metric (mean ± std over seeds when several ran), retention vs the teacher, latency p50/p90 at
each benchmarked thread count (batch 1, real dev sentences one at a time), speedup vs the teacher's ONNX fp32 model
and throughput. Written as ``report.md`` and a self-contained ``report.html`` (the plot embedded as base64), with
``pareto.png``: metric vs latency (log x) per run, the Pareto frontier drawn and points labelled; several runs are
overlaid. Provenance (recipe, seeds, protocol, versions, the teacher stage's host) goes under each table.

Numbers are read from the run folders' stage manifests and the bench stage's JSON (`collect`). The stage adds one
measurement (`measure_missing`): models the bench did not time as ONNX — always the teacher's ONNX fp32, the
speedup reference, unless the teacher was the quantized model — are exported and timed in one pass with
the bench's artifacts (the bench's own timing loop), so every speedup comes from one set of runs; that pass is kept
in ``report/latency.json``. ``compress report RUN...`` re-measures nothing. Rendering (`markdown`, `html`,
`compress.pareto.pareto_plot`) works on plain `Row`/`RunTable` objects.
"""

from __future__ import annotations

import base64
import html as html_lib
import logging
import math
import numbers
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Optional, Sequence

from compress.bundle_predict import sha256_file
from compress.errors import CompressError
from compress.pareto import pareto_plot
from compress.tasks import constant_score, retention, round_down

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ data
@dataclass
class Latency:
    """Latency of one artifact at one thread count (batch 1, dev sentences one at a time)."""

    p50_ms: float
    p90_ms: float
    throughput: Optional[float] = None
    """Sentences per second, one at a time (dev series: 1000 / mean latency at batch 1)."""
    shapes: dict[str, float] = field(default_factory=dict)
    """Sequences per second at each of the bench's fixed shapes (batched), by shape (e.g. b8xs32)."""
    timed: Optional[tuple[int, int]] = None
    """Merged seeds (`merge_seeds`): how many of how many seed runs timed it, when not all."""

    @property
    def peak_shape(self) -> Optional[str]:
        """The fixed shape of the most sequences per second (the first of equals)."""
        return max(self.shapes, key=self.shapes.__getitem__, default=None)

    @property
    def peak_throughput(self) -> Optional[float]:
        return self.shapes[self.peak_shape] if self.shapes else None


@dataclass
class Row:
    """One artifact of a run."""

    name: str
    """Label in the table and on the plot, e.g. ``student tiny · int8 dynamic``."""
    kind: str
    """teacher | student | pruned | int8 (what the model is)."""
    fmt: str
    """torch | onnx fp32 | onnx int8 (dynamic/static)."""
    params: Optional[int] = None
    file_bytes: Optional[int] = None
    metric: Optional[float] = None
    """Task metric on dev (mean over seeds)."""
    metric_std: Optional[float] = None
    seeds: int = 1
    """How many seeds' runs scored it (a nan or missing score is left out of the mean)..."""
    runs: int = 1
    """... of how many merged runs that have it."""
    latency: dict[int, Latency] = field(default_factory=dict)
    """threads -> latency."""
    reference: bool = False
    """The teacher's ONNX fp32 model: what speedup is measured against."""
    shippable: bool = False
    """An int8 ONNX model that a bundle can ship (passed the quantize stage's accuracy guard)."""
    refused: Optional[str] = None
    """Why the quantize stage's accuracy guard did not pass an int8 model of ours (its ``guard`` reason): said under
    the table (the row only lacked the "(shippable)" tag)."""
    path: Optional[str] = None
    """The model file (ONNX) or folder (torch)."""
    ort_path: Optional[str] = None
    """ORT-format copy of an ONNX model, when one was made."""
    tokenizer: Optional[str] = None
    """Its tokenizer.json."""
    dev_metrics: Optional[dict] = None
    """Every dev metric its stage recorded (MRPC: f1 and accuracy), for the bundle's manifest."""
    test_metrics: Optional[dict] = None
    """Its metrics on a labelled test split (MRPC's), where its stage scored one: for the bundle's manifest."""
    peak_rss_mb: Optional[float] = None
    """Peak resident memory (MiB) of the artifact alone in a fresh process, as the bench measured it (load, the
    largest fixed shape, a few dev rows); merged seeds: the largest."""
    per_seed: Optional[dict] = None
    """Merged seeds (`merge_seeds`): ``{"retention": r, "speedup": {threads: x}}``, each the mean over the seed runs
    that measured both of its numbers of that run's own ratio (a seed's int8 time over another seed's teacher time is
    no speedup anyone measured)."""


@dataclass
class RunTable:
    run: str
    """Run name (recipe name)."""
    folder: str
    metric_name: str
    rows: list[Row]
    teacher_metric: Optional[float] = None
    provenance: dict = field(default_factory=dict)
    """recipe, seeds, protocol (with the latencies' cpu and cores), versions, the teacher stage's host (shown under
    the table)."""
    threads_override: Optional[int] = None
    """Headline thread count chosen by the user (report.threads)."""
    other_metrics: list[str] = field(default_factory=list)
    """The task's other dev metrics, each a column after ``metric_name`` (MRPC: accuracy beside f1, as GLUE reports
    it); retention and the plot use ``metric_name``."""
    pair: bool = False
    """A text-pair task (MRPC, RTE): latency and throughput are per dev pair, not per sentence."""
    teacher_constant: Optional[str] = None
    """The label the teacher predicts for every dev row, when it does (a constant model: retention means little)."""
    configs: dict = field(default_factory=dict)
    """Each stage's config less every seed, as a digest (`_config_digests`): runs of one name merge as seeds only
    where the stages both ran have the same."""
    dev_rows: Optional[int] = None
    """How many dev rows every metric was scored on (the teacher stage's count)."""
    dev_subset: bool = False
    """Whether those are only the first rows of the dev split (``task.max_eval_samples``): not full-dev scores."""
    ships: Optional[tuple[str, str]] = None
    """The row the bundle stage ships (or shipped) and why: (row name, sentence), `bundle_pick`."""
    test_rows: Optional[int] = None
    """How many rows of a labelled test split (MRPC's) were scored, where one was (the same cap cuts it)..."""
    test_subset: bool = False
    """... and whether only its first."""

    def same_settings(self, other: "RunTable") -> bool:
        """Whether the stages both runs ran had the same configs but for seeds (a stage one run lacks, one that
        failed, is no difference)."""
        return all(other.configs[stage] == digest for stage, digest in self.configs.items() if stage in other.configs)

    @property
    def unit(self) -> str:
        """What one timed input is: "pair" or "sentence"."""
        return "pair" if self.pair else "sentence"

    @property
    def tested(self) -> bool:
        """Whether any row was scored on a labelled test split (MRPC's): the table gets a test column."""
        return any(r.test_metrics for r in self.rows)

    @property
    def threads(self) -> list[int]:
        return sorted({t for r in self.rows for t in r.latency})

    @property
    def headline_threads(self) -> Optional[int]:
        """The thread count that speedup, throughput and the plot use: the user's, else the largest benchmarked."""
        if self.threads_override is not None:
            return self.threads_override
        return max(self.threads) if self.threads else None

    def reference_row(self) -> Optional[Row]:
        return next((r for r in self.rows if r.reference), None)

    def retention(self, row: Row) -> Optional[float]:
        if row.per_seed is not None:
            return row.per_seed.get("retention")
        return retention(row.metric, self.teacher_metric)

    def speedup(self, row: Row, threads: Optional[int] = None) -> Optional[float]:
        threads = threads or self.headline_threads
        if row.per_seed is not None:
            return row.per_seed["speedup"].get(threads)
        ref = self.reference_row()
        if ref is None or threads not in ref.latency or threads not in row.latency:
            return None
        if ref.latency[threads].p50_ms <= 0 or row.latency[threads].p50_ms <= 0:  # no timing gives 0 ms: no ratio
            return None
        return ref.latency[threads].p50_ms / row.latency[threads].p50_ms


def pooled_rate(rates: Sequence[float]) -> Optional[float]:
    """Seed runs' throughputs (sequences/s) as one: all their sequences over all their time, i.e. the harmonic mean
    of the rates, each seed having timed as many sequences (the dev series: the same dev rows and rounds in runs
    that merge; a fixed shape, where ``repeats`` rather than ``max_seconds`` ended its series). It equals the rate
    of the merged mean latency; the arithmetic mean of the rates gave a fast seed's rate the weight of its few
    seconds (1 and 9 ms a sentence: 556/s where 2 sentences took 10 ms, 200/s). None without rates."""
    if not rates:
        return None
    return statistics.harmonic_mean(rates) if all(r > 0 for r in rates) else 0.0


def mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float], int]:
    """Mean, sample std (None for one value) and count of the finite values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


# ------------------------------------------------------------------------------------------------------ collect
def _read(path: Path, checked: bool = True) -> Optional[dict]:
    """A stage record (None when absent), its fields checked against `SHAPES` unless ``checked`` is off (a record
    read only to compare its outputs, or one that its own stage, still to run, is about to replace)."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise CompressError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise CompressError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CompressError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if checked:
        _check_shape(path, data, SHAPES.get(Path(path).name, ()))
    return data


_NUMBER = (int, float)  # a metric's value (merged seeds' {mean, std, n} records exist in memory only)
_SPLITS = [("metrics", dict), ("metrics.dev", dict), ("metrics.test", dict), ("metrics.dev.*", _NUMBER),
           ("metrics.test.*", _NUMBER)]
SHAPES: dict[str, list[tuple[str, tuple | type]]] = {
    "manifest.json": [("stage", str), ("seed", int), ("created", str), ("recipe_path", str), ("config", dict),
                      ("config.task", dict), ("env", dict), ("env.versions", dict), ("env.host", dict),
                      ("train", dict), ("inputs", dict), ("outputs", dict), ("inputs.*", str), ("outputs.*", str),
                      ("params", (int, dict)), ("params.*", int), ("students", (dict, list)), *_SPLITS,
                      ("students.*.metrics", dict), ("students.*.params", int)],
    "metrics.json": _SPLITS,
    "quantize.json": [("source", dict), ("fp32", dict), ("int8", dict), ("int8.*", dict), ("fp32.file", str),
                      ("fp32.metrics", dict), ("fp32.metrics.*", _NUMBER), ("int8.*.file", str),
                      ("int8.*.ort_file", str), ("int8.*.metrics", dict), ("int8.*.metrics.*", _NUMBER),
                      ("int8.*.tries", list), ("rows", dict), ("guard", dict)],
    "bench.json": [("protocol", dict), ("protocol.versions", dict), ("run_dir", str), ("artifacts.*.path", str),
                   ("artifacts.*.file", str), ("artifacts.*.model_dir", str), ("artifacts.*.metrics", dict),
                   ("artifacts.*.metrics.*", _NUMBER), ("artifacts.*.results", list), ("artifacts.*.params", int),
                   ("artifacts.*.size_bytes", int)],
}
"""The fields of each stage record the report reads, with the JSON types their stages write ("*": every key of an
object). A hand-edited or foreign record of another shape (`"seed": "42"`, `"protocol": 5`, a score as text) is one
line naming the file and the field, where it stopped `compress report` with a traceback or left a score blank."""


def _check_shape(path: Path, data: dict, spec) -> None:
    import json

    from compress.rows import _json_kind

    for key, kinds in spec:
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        for where, value in _values_at(data, key.split(".")):
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                said = "a number" if kinds == _NUMBER else " or ".join("an integer" if k is int else _json_kind(k())
                                                                       for k in kinds)
                shown = json.dumps(value)
                shown = shown if len(shown) <= 40 else shown[:37] + "..."
                raise CompressError(f"{path}: {where}: expected {said}, got {_json_kind(value)} {shown}; rerun the "
                                    f"stage that wrote it")


def _values_at(data, parts: list[str], prefix: str = ""):
    """(dotted name, value) of each value of ``data`` at the path ``parts`` ("*": every key of an object there)."""
    if not parts:
        yield prefix, data
        return
    if not isinstance(data, dict):  # the shape above said so first, or another kind of value is allowed there
        return
    keys = list(data) if parts[0] == "*" else [parts[0]] if parts[0] in data else []
    for key in keys:
        yield from _values_at(data[key], parts[1:], f"{prefix}.{key}" if prefix else str(key))


def _dev(metrics: Optional[dict]) -> dict:
    """The dev metrics of a manifest's ``metrics`` (``{"dev": {...}}`` or a flat dict)."""
    if not isinstance(metrics, dict):
        return {}
    dev = metrics.get("dev", metrics)
    return dev if isinstance(dev, dict) else {}


def _test(metrics: Optional[dict]) -> Optional[dict]:
    """The test-split metrics of a manifest's ``metrics`` (``{"dev": ..., "test": {...}}``), None without."""
    test = metrics.get("test") if isinstance(metrics, dict) else None
    return test if isinstance(test, dict) and test else None


def _metric_value(metrics: Optional[dict], name: str):
    """(mean, std, n) of metric ``name``: the dev value (a number, or a ``{mean, std, n}`` record of merged seeds)."""
    value = _dev(metrics).get(name)
    if isinstance(value, dict):
        return value.get("mean"), value.get("std"), int(value.get("n", 1))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # a hand-edited record's text: unscored
        return None, None, 0
    return float(value), None, 1


def _size(path: Path) -> Optional[int]:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():  # a torch model folder: its weights
        return sum(p.stat().st_size for p in path.glob("*.safetensors")) or None
    return None


def _torch_row(name: str, kind: str, folder: Path, manifest: dict, metric: str, entry: Optional[dict] = None) -> Row:
    entry = manifest if entry is None else entry
    mean, std, n = _metric_value(entry.get("metrics"), metric)
    return Row(name, kind, "torch", params=entry.get("params"), file_bytes=_size(folder), metric=mean,
               metric_std=std, seeds=max(n, 1), path=str(folder), tokenizer=str(folder / "tokenizer.json"),
               dev_metrics=_dev(entry.get("metrics")) or None, test_metrics=_test(entry.get("metrics")))


def _student_rows(run_dir: Path, metric: str) -> list[Row]:
    """Students of the distill stage: one per ``distill/<name>/`` model folder, metrics from the stage manifest
    (``students`` as a list or a mapping) or the student's own metrics.json."""
    folder = run_dir / "distill"
    manifest = _read(folder / "manifest.json")
    if manifest is None:
        return []
    entries = manifest.get("students") or {}
    if isinstance(entries, list):
        entries = {e.get("name", str(i)) if isinstance(e, dict) else str(i): e for i, e in enumerate(entries)}
    rows = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        model = sub / "model" if (sub / "model" / "config.json").is_file() else sub
        if not (model / "config.json").is_file():
            if sub.name in entries:  # a student the stage recorded whose model is gone: its row left out, said
                print(f"warning: report: {sub / 'model'}: no model (config.json) for student {sub.name!r}, whose "
                      f"scores the distill stage recorded: its torch row is left out", file=sys.stderr)
            continue
        entry = entries.get(sub.name)
        entry = dict(entry if isinstance(entry, dict) and entry else _read(sub / "metrics.json") or {})
        params = manifest.get("params")
        if entry.get("params") is None and isinstance(params, dict):  # the stage records params per student
            entry["params"] = params.get(sub.name)
        rows.append(_torch_row(f"student {sub.name}", "student", model, manifest, metric, entry))
    return rows


def source_label(source: Optional[str]) -> str:
    """Table name of the model the quantize/bench stages worked on (their ``source.model``)."""
    if source in (None, "teacher"):
        return "teacher"
    return "pruned" if source == "prune" else f"student {source}"


def bench_source(qrec: dict, bench: dict) -> str:
    """Table name of the model the bench timed: the quantize stage's source, or (a run without a quantize stage) the
    model folder its torch fp32 artifact loaded (…/teacher/model, …/prune/model, …/distill/<name>/model)."""
    source = (qrec.get("source") or {}).get("model")
    model_dir = (((bench.get("artifacts") or {}).get("torch_fp32") or {}).get("model_dir") or "").rstrip("/")
    parts = PurePath(model_dir).parts
    if source is not None or len(parts) < 2 or parts[-1] != "model":
        return source_label(source)
    if parts[-2] == "prune":
        return "pruned"
    return f"student {parts[-2]}" if len(parts) >= 3 and parts[-3] == "distill" else "teacher"


def _kind(label: str) -> str:
    first = label.split()[0]
    return first if first in ("teacher", "pruned", "student") else "student"


def _int8_scoring(qrec: dict) -> Optional[str]:
    """How the quantize stage scored its int8 models (None: no int8 models)."""
    if not qrec.get("int8"):
        return None
    if qrec.get("scored_batch") == 1:
        guard = (qrec.get("guard") or {}).get("rows")
        if guard:
            return f"dev texts one at a time, as shipped; the guard's budget judged on the {guard}"
        tries = {m: len(e.get("tries") or []) for m, e in qrec["int8"].items()}
        chosen = ", ".join(f"{m} {n}" for m, n in tries.items() if n > 1)
        return "dev texts one at a time, as shipped" + (
            f"; the accuracy guard picked the nodes kept fp32 by these same dev scores (tries: {chosen}), so those "
            f"figures are selected on dev (quantize.guard_rows: holdout judges on held-out rows)" if chosen else "")
    return ("dev texts in batches of 32: this quantize stage predates one-at-a-time scoring, and an int8 dynamic "
            "model's score depends on the batch (up to ~0.7 points); rerun the quantize stage")


def _quantize_rows(run_dir: Path, metric: str, params: Optional[int]) -> list[Row]:
    """ONNX fp32 and int8 models of the quantize stage (quantize.json)."""
    folder = run_dir / "quantize"
    record = _read(folder / "quantize.json")
    if record is None:
        return []
    label = source_label((record.get("source") or {}).get("model"))
    tokenizer = folder / "tokenizer" / "tokenizer.json"
    rows = []
    fp32 = record.get("fp32") or {}
    if fp32.get("file"):
        mean, _, _ = _metric_value(fp32.get("metrics"), metric)
        rows.append(Row(f"{label} · onnx fp32", _kind(label), "onnx fp32", params, _size(folder / fp32["file"]),
                        mean, path=str(folder / fp32["file"]), tokenizer=str(tokenizer),
                        dev_metrics=_dev(fp32.get("metrics")) or None,
                        test_metrics=_test({"test": fp32.get("test_metrics")})))
    for mode, entry in (record.get("int8") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise CompressError(f"{folder / 'quantize.json'}: int8.{mode}: no model file recorded; rerun the quantize "
                                f"stage")
        mean, _, _ = _metric_value(entry.get("metrics"), metric)
        ort_file = entry.get("ort_file")
        rows.append(Row(f"{label} · int8 {mode}", "int8", f"onnx int8 {mode}", params,
                        _size(folder / entry["file"]), mean, shippable=bool(entry.get("shippable")),
                        refused=None if entry.get("shippable") else str(entry.get("guard") or "no reason recorded"),
                        path=str(folder / entry["file"]), ort_path=str(folder / ort_file) if ort_file else None,
                        tokenizer=str(tokenizer), dev_metrics=_dev(entry.get("metrics")) or None,
                        test_metrics=_test({"test": entry.get("test_metrics")})))
    return rows


# bench artifact name -> (row name suffix, format); "" suffix: the torch row of the source model itself
BENCH_NAMES = {
    "torch_fp32": ("", "torch"),
    "torch_dynamic_int8": (" · torch int8 dynamic (peer)", "torch int8 dynamic"),
    "onnx_fp32": (" · onnx fp32", "onnx fp32"),
    "onnx_fp32_opt": (" · onnx fp32 fused", "onnx fp32 fused"),
    "optimum_avx512_vnni": (" · optimum int8 (peer)", "onnx int8 optimum"),
}


def _latencies(results: Optional[list], where: str = "bench record") -> dict[int, Latency]:
    """threads -> latency of the ``dev`` series (real dev sentences, batch 1) of a bench record; a malformed result
    row is one `CompressError` line naming ``where`` (file and artifact) and the row."""
    out = {}
    i = None
    try:
        for i, r in enumerate(results or []):
            if r.get("input") == "dev" and r.get("batch", 1) == 1:
                tput = r.get("throughput_seq_s")
                out[int(r["threads"])] = Latency(float(r["p50_ms"]), float(r["p90_ms"]),
                                                 float(tput) if tput is not None else
                                                 1000.0 / float(r["mean_ms"]) if float(r["mean_ms"]) > 0 else None)
        for i, r in enumerate(results or []):  # batched fixed shapes: each one's throughput, by thread count
            lat = out.get(int(r.get("threads", 0)))
            if r.get("input") != "dev" and lat is not None and r.get("throughput_seq_s") is not None:
                lat.shapes[str(r["input"])] = float(r["throughput_seq_s"])
    except KeyError as e:
        raise CompressError(f"{where}[{i}]: no {e.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError):
        raise CompressError(f"{where}[{i}]: threads, p50_ms, p90_ms, mean_ms and throughput_seq_s must be numbers, "
                            f"in a list of result objects") from None
    return out


def attach_bench(record: dict, rows: list[Row], metric: str, label: str, source: str = "bench record") -> None:
    """Put a bench record's artifacts (``{"artifacts": {name: {results, metrics, size_bytes, params, ...}}}``, the
    schema of compress/bench.py) onto the rows of model ``label``: latency (and the bench's full-dev metric) for the
    rows that exist, new rows for what only the bench made (fused fp32, peers)."""
    by_name = {r.name: r for r in rows}
    for name, art in (record.get("artifacts") or {}).items():
        if name.startswith("int8_"):
            row_name, fmt = f"{label} · int8 {name[5:]}", f"onnx int8 {name[5:]}"
        elif name == "teacher_onnx_fp32":  # the reference, should the bench time it beside a student's artifacts
            row_name, fmt = "teacher · onnx fp32", "onnx fp32"
        elif name in BENCH_NAMES:
            suffix, fmt = BENCH_NAMES[name]
            row_name = label + suffix
        else:
            row_name, fmt = f"{label} · {name}", "onnx" if art.get("kind") == "onnx" else str(art.get("kind"))
        if art.get("graph") == "fused":  # the report's own export (speedup reference) with ORT's fusions applied
            fmt = "onnx fp32 fused"
        row = by_name.get(row_name)
        if row is None:
            row = Row(row_name, "int8" if "int8" in fmt else _kind(row_name), fmt,
                      path=art.get("file") or art.get("path"))
            rows.append(row)
            by_name[row_name] = row
        elif art.get("graph") == "fused":
            row.fmt = fmt
        for threads, lat in _latencies(art.get("results"), f"{source}: artifacts.{name}.results").items():
            old = row.latency.get(threads)
            if old is not None and not lat.shapes:  # a dev-only pass keeps the fixed-shape numbers
                lat.shapes = old.shapes
            row.latency[threads] = lat
        mean, _, _ = _metric_value(art.get("metrics"), metric)
        if row.metric is None:  # a row only the bench made (it scores all of dev with the very file it times)
            row.metric = mean
        if row.dev_metrics is None:  # its other metrics too (MRPC: accuracy)
            row.dev_metrics = _dev(art.get("metrics")) or None
        row.params = row.params or art.get("params")
        row.file_bytes = row.file_bytes or art.get("size_bytes")
        rss = art.get("peak_rss_mb")
        if isinstance(rss, (int, float)) and not isinstance(rss, bool) and math.isfinite(rss) and rss > 0:
            row.peak_rss_mb = row.peak_rss_mb or float(rss)  # the bench's (a re-timing pass does not measure it)
        if "shippable" in art and "(peer)" not in row_name:
            row.shippable = bool(art["shippable"]) and fmt.startswith("onnx int8")


def _bench_protocol(protocol: Optional[dict]) -> Optional[dict]:
    """The parts of the bench protocol a reader of the table needs (``spin``: whether idle threads spun, which moves
    a sub-millisecond model's 2-thread latency by a third; ``ort_session``: the ORT graph settings)."""
    if not protocol:
        return None
    keys = ("dev", "order", "threads", "inter_op_threads", "dev_rows", "warmup", "timer", "spin", "ort_session",
            "cpu", "cores", "cpu_shared")
    return {k: protocol[k] for k in keys if k in protocol}


def bench_record(run_dir: Path) -> dict:
    """The run folder's bench.json with its artifacts' paths (``path``, ``file``, ``model_dir``) under ``run_dir``: the
    bench recorded them under the run folder it ran in (``run_dir`` in the record; older records: the folder above
    the quantize stage's files), and a run folder copied or moved since must not read, or fail on, the old place."""
    bench = _read(run_dir / "bench" / "bench.json") or {}
    arts = bench.get("artifacts") or {}
    if not isinstance(arts, dict) or any(not isinstance(a, dict) for a in arts.values()):
        raise CompressError(f"{run_dir / 'bench' / 'bench.json'}: artifacts: expected a mapping of name -> record, "
                            f"got {type(arts).__name__}" + ("" if not isinstance(arts, dict) else " of " + ", ".join(
                                sorted({type(a).__name__ for a in arts.values() if not isinstance(a, dict)}))))
    old = bench.get("run_dir") or next((str(Path(a["path"]).parent.parent) for a in arts.values()
                                        if a.get("path") and Path(a["path"]).parent.name == "quantize"), None)
    # records before 2026-12-03 (afternoon) of a run with a relative runs_dir hold paths relative to the working
    # directory the bench ran in, run_dir included ("runs/quickstart/quantize/..."): under the run folder
    cwd_relative = old is not None and not Path(old).is_absolute()
    for art in arts.values():
        for key in ("path", "file", "model_dir"):
            value = art.get(key)
            if not value:
                continue
            if not Path(value).is_absolute() and cwd_relative and Path(value).is_relative_to(old):
                art[key] = str(Path(run_dir) / Path(value).relative_to(old))
            elif not Path(value).is_absolute() and key != "model_dir":
                # a file the bench stage made itself (the Optimum peer): relative to its folder
                art[key] = str(Path(run_dir) / "bench" / value)
            elif key != "model_dir":  # records before 2026-12-03 named the bench's temporary folder (.bench.tmp-<pid>)
                art[key] = str(Path(*("bench" if re.fullmatch(r"\.bench\.tmp-\d+", p) else p
                                       for p in Path(value).parts)))
    if cwd_relative:
        return bench
    if not old or Path(old).resolve() == Path(run_dir).resolve():
        return bench

    def rebase(path):
        try:
            return str(Path(run_dir) / Path(path).relative_to(old)) if path else path
        except ValueError:  # not under the run folder (a model the recipe points at): as recorded
            return path

    for art in arts.values():
        for key in ("path", "file", "model_dir"):
            if art.get(key):
                art[key] = rebase(art[key])
    return bench


MEASURED = "latency.json"
"""What the report stage measured itself (ONNX fp32 of the models the bench stage did not run), in its folder."""


def _redone_since(run_dir: Path, manifest: Optional[dict], what: str) -> bool:
    """Whether a stage that the stage of ``manifest`` read was redone since (its outputs now differ from those the
    manifest lists among its inputs as ``<stage>/<file>``); warns that ``what`` is left out. `compress report RUN`
    after the quantize stage was redone by hand showed the old latencies (and a model since deleted, as shippable)."""
    from compress.manifest import content_outputs
    from compress.pipeline import stage_names

    recorded = (manifest or {}).get("inputs") or {}
    for stage in stage_names():
        read = {k[len(stage) + 1:]: v for k, v in recorded.items() if k.startswith(f"{stage}/")}
        if not read:  # a stage it did not read
            continue
        now = _read(run_dir / stage / "manifest.json", checked=False)  # its outputs compared, nothing else read
        if read != ((content_outputs(now) if now else None) or {}):
            how = "was redone since it was measured" if now is not None else "is missing (its folder or manifest)"
            print(f"warning: {run_dir / what}: the {stage} stage {how}: its latencies are left out (rerun the "
                  f"stages after {stage}: compress run RECIPE)", file=sys.stderr)
            return True
    return False


def collect(run_dir: str | Path, recipe=None, extra: Optional[dict] = None) -> RunTable:
    """A run folder's artifacts as a table: stage manifests for metrics and sizes; latency from the bench stage's
    bench.json and the report stage's own measurements (``extra``, else ``report/latency.json``). With ``recipe``,
    only the stages it configures are read (a stage folder left from an earlier version of the recipe is not)."""
    run_dir = Path(run_dir)
    if recipe is not None:
        from compress.pipeline import plan

        stages = {s.name for s in plan(recipe)}
    else:
        from compress.pipeline import stage_names

        # the stage folders there (not one being written, .<stage>.tmp-PID, nor set aside, .old-PID, nor another)
        stages = {name for name in stage_names() if (run_dir / name).is_dir()} if run_dir.is_dir() else set()

    def read(stage: str, name: str = "manifest.json") -> Optional[dict]:
        return _read(run_dir / stage / name) if stage in stages else None

    teacher = _read(run_dir / "teacher" / "manifest.json")
    if teacher is None and not run_dir.is_dir():
        raise CompressError(f"{run_dir}: no such run folder" if not run_dir.exists() else f"{run_dir}: not a folder "
                            f"(a run folder is runs/<recipe name>/)")
    if teacher is None:
        raise CompressError(f"{run_dir}: not a run folder (no teacher/manifest.json; run `compress run RECIPE`)")
    metric = next(iter(_dev(teacher.get("metrics"))), "accuracy")
    rows = [_torch_row("teacher", "teacher", run_dir / "teacher" / "model", teacher, metric)]
    if "distill" in stages:
        rows += _student_rows(run_dir, metric)
    prune = read("prune")
    if prune is not None:
        rows.append(_torch_row("pruned", "pruned", run_dir / "prune" / "model", prune, metric))
    quantize = read("quantize") or {}
    if "quantize" in stages:
        rows += _quantize_rows(run_dir, metric, quantize.get("params"))
    qrec = read("quantize", "quantize.json") or {}
    bench = bench_record(run_dir) if "bench" in stages else {}
    if bench and _redone_since(run_dir, read("bench"), "bench/bench.json"):
        bench = {}  # an int8 file of the same name made again, or gone: the record's latencies are not its
    benched = bench_source(qrec, bench)
    attach_bench(bench, rows, metric, benched, str(run_dir / "bench" / "bench.json"))
    measured = extra if extra is not None else (read("report", MEASURED) or {})
    if extra is None and measured and _redone_since(run_dir, read("report"), f"report/{MEASURED}"):
        measured = {}
    where = "the report stage's measurements" if extra is not None else str(run_dir / "report" / MEASURED)
    for label, record in (measured.get("models") or {}).items():
        attach_bench(record, rows, metric, label, f"{where}: models.{label}")
    # the report's own pass re-timed the bench's artifacts beside them: one set of dev latencies
    attach_bench(measured.get("bench") or {}, rows, metric, benched, f"{where}: bench")
    _mark_reference(rows)
    rows.sort(key=lambda r: _ORDER.get(r.kind, 9))  # teacher, students, pruned, int8 (stable within a kind)
    # the stages that made and measured the models (the report's own manifest, and the bundle made from it, would be
    # the previous report's while the report stage runs)
    manifests = _manifests(run_dir, stages - {"report", "bundle"})
    seeds = sorted({m.get("seed") for m in manifests if m.get("seed") is not None})
    env = teacher.get("env") or {}
    task = (teacher.get("config") or {}).get("task") if isinstance(teacher.get("config"), dict) else None
    task = task.get("name") if isinstance(task, dict) and isinstance(task.get("name"), str) else None
    provenance = {"recipe": (recipe.path if recipe is not None else None) or teacher.get("recipe_path"),
                  **({"task": task} if task else {}),
                  "seeds": seeds, "protocol": _bench_protocol(bench.get("protocol") or measured.get("protocol")),
                  "dev latency": (measured.get("protocol") or {}).get("order") or (
                      "report stage's own timing pass" if measured.get("models") or (measured.get("bench") or {})
                      .get("artifacts") else None),
                  "int8 accuracy": _int8_scoring(qrec),
                  # where the teacher trained; the latencies' machine is the protocol's cpu and cores
                  "versions": env.get("versions"), "teacher stage host": env.get("host"),
                  # the latency's own environment, when the bench ran under other versions than the teacher stage
                  "bench versions": (None if (bench.get("protocol") or {}).get("versions") == env.get("versions")
                                     else (bench.get("protocol") or {}).get("versions")),
                  "stages": ", ".join(f"{m['stage']} ({m.get('created', '?')})" for m in manifests)}
    dev_rows, subset = split_scope(teacher)
    if dev_rows is not None:
        provenance["dev rows scored"] = (f"{dev_rows}, the first of the split only (task.max_eval_samples): not "
                                         f"comparable with full-dev scores" if subset else f"{dev_rows} (all)")
    test_rows, test_subset = split_scope(teacher, "test", (qrec.get("rows") or {}).get("test"))
    if test_rows is not None:
        provenance["test rows scored"] = (f"{test_rows}, the first of the labelled test split only "
                                          f"(task.max_eval_samples)" if test_subset
                                          else f"{test_rows} (all of the labelled test split)")
    teacher_metric = next(r.metric for r in rows if r.name == "teacher")
    # runs/<recipe name>; reused stages keep theirs (resolved: `compress report .` gave a table without a name)
    name = recipe.name if recipe is not None else run_dir.resolve().name
    return RunTable(name, str(run_dir), metric, rows, configs=_config_digests(manifests),
                    teacher_metric=teacher_metric, provenance=provenance, pair=_is_pair(teacher, recipe),
                    teacher_constant=(teacher.get("train") or {}).get("dev_constant_label"),
                    other_metrics=[m for m in _dev(teacher.get("metrics")) if m != metric],
                    dev_rows=dev_rows, dev_subset=subset, test_rows=test_rows, test_subset=test_subset)


def split_scope(teacher: dict, split: str = "dev", scored: Optional[int] = None) -> tuple[Optional[int], bool]:
    """How many rows of ``split`` ("dev", or "test": a labelled test split, MRPC's) a run's metrics were scored on
    (its teacher stage's manifest: ``<split>_rows``), and whether only the split's first ones (``task.max_eval_samples``
    below ``<split>_split_rows``; a manifest of before that: the cap reached). A teacher stage of before ``test_rows``
    (2026-12-05) that has test scores: ``scored``, the rows the quantize stage scored (the same cap cuts both)."""
    train = teacher.get("train") or {}
    rows, size = train.get(f"{split}_rows"), train.get(f"{split}_split_rows")
    if split == "test" and not isinstance(rows, int) and _test(teacher.get("metrics")):
        rows = scored
    if not isinstance(rows, int):
        return None, False
    if isinstance(size, int):
        return rows, rows < size
    cap = ((teacher.get("config") or {}).get("task") or {}).get("max_eval_samples")
    return rows, isinstance(cap, int) and rows >= cap


def _is_pair(teacher: dict, recipe=None) -> bool:
    """Whether the run's task reads text pairs: its recipe's task, else the one the teacher stage recorded."""
    from compress.config import TaskConfig
    from compress.tasks import task_spec

    try:
        if recipe is not None:
            return task_spec(recipe.task).text_pair is not None
        cfg = ((teacher.get("config") or {}).get("task") or {})
        if cfg.get("text_pair_column") is not None:
            return True
        return task_spec(TaskConfig(name=cfg["name"])).text_pair is not None
    except (CompressError, KeyError, TypeError):  # an old or custom manifest: no pair column known
        return False


_ORDER = {"teacher": 0, "student": 1, "pruned": 2, "int8": 3}


def _config_digests(manifests: Sequence[dict]) -> dict[str, str]:
    """What the models of a run were made and measured with: each stage's config, every ``seed`` left out (runs that
    differ in it are seeds of one experiment, `merge_seeds`), and the data by content, not by the paths the recipe
    spelled it with (a run whose bench was made with the same files spelled absolute was not merged), as a digest."""
    def unseeded(value, key: str = ""):
        if isinstance(value, dict):
            return {k: unseeded(v, k) for k, v in value.items()
                    if k != "seed" and not (key == "task" and k in ("data_dir", "files"))}
        return [unseeded(v) for v in value] if isinstance(value, list) else value

    from compress.manifest import fingerprint

    data = _data_digests(next((m for m in manifests if m.get("stage") == "teacher"), {}))
    return {m["stage"]: fingerprint({"config": unseeded(m.get("config")), "data": data}) for m in manifests}


def _manifests(run_dir: Path, stages: set[str]) -> list[dict]:
    """The manifests of the run's ``stages`` (a folder of a stage the table leaves out, or being written as
    .<stage>.tmp-PID, or set aside as .old-PID, is not read)."""
    manifests = (_read(run_dir / stage / "manifest.json") for stage in sorted(stages))
    return [m for m in manifests if m and m.get("stage") in stages]


def _mark_reference(rows: Sequence[Row]) -> None:
    """The speedup reference, one row: the teacher's fastest exact fp32 graph, the quantize stage's fused one when it
    quantized the teacher (kept only when its logits matched) and it was timed, as the report's own export of it is
    fused when exact; else the teacher's plain ONNX export."""
    reference = next((r.name for r in rows if r.name == "teacher · onnx fp32 fused" and r.latency),
                     "teacher · onnx fp32")
    for row in rows:
        row.reference = row.name == reference


def _timed_on(table: RunTable) -> Optional[str]:
    """The CPU, core count and onnxruntime version a run's latencies were timed with, from its protocol and the
    bench's versions (the teacher stage's when the bench ran under the same); None when it records no CPU."""
    protocol = table.provenance.get("protocol") or {}
    versions = table.provenance.get("bench versions") or table.provenance.get("versions") or {}
    ort = versions.get("onnxruntime") if isinstance(versions, dict) else None
    return (f"{protocol['cpu']} x{protocol.get('cores', '?')}" + (f" with onnxruntime {ort}" if ort else "")
            if protocol.get("cpu") else None)


def _seed_speedups(group: Sequence[RunTable], name: str, reference: str, threads: int) -> list[float]:
    """Each seed run's own speedup of row ``name`` over its own time of ``reference`` (the merged table's), where it
    timed both: one seed's fused teacher graph is no reference for another seed's rows."""
    out = []
    for t in group:
        mine = next((r.latency.get(threads) for r in t.rows if r.name == name), None)
        ref = next((r.latency.get(threads) for r in t.rows if r.name == reference), None)
        if mine is not None and ref is not None and mine.p50_ms > 0 and ref.p50_ms > 0:
            out.append(ref.p50_ms / mine.p50_ms)
    return out


def merge_seeds(tables: Sequence[RunTable]) -> list[RunTable]:
    """Runs of the same recipe that differ only in seed (``compress run R --set seed=43 --runs-dir runs-s43``) become
    one table: per artifact (matched by name), the metric's mean ± std over the seeds, the mean latency and the pooled
    throughput (`pooled_rate`); its retention and speedup are the means of each seed run's own (`Row.per_seed`).
    Runs timed on other machines stay apart (a warning says so): a mean of two machines' latencies is neither's."""
    groups: list[list[RunTable]] = []

    def one_machine(runs: Sequence[RunTable]) -> bool:
        return len({_timed_on(o) for o in runs} - {None}) <= 1

    for t in tables:  # the same name and the same configs but for the seeds (other settings: apart, named by folder)
        alike = [g for g in groups if g[0].run == t.run and all(t.same_settings(o) for o in g)]
        group = next((g for g in alike if one_machine([*g, t])), None)
        if group is None and alike:
            other = next(o for o in alike[0] if _timed_on(o) not in (None, _timed_on(t)))
            print(f"warning: report: {t.folder} was timed on {_timed_on(t)}, {other.folder} on {_timed_on(other)}: "
                  f"kept apart, not merged as seeds", file=sys.stderr)
        if group is None:
            groups.append([t])
        else:
            group.append(t)
    out = []
    for group in groups:
        name = group[0].run
        seen: dict[tuple, RunTable] = {}
        apart = []  # the same seed twice (a copied run folder): the first merges, the other stays apart, after it
        for t in list(group):
            seeds = tuple(t.provenance.get("seeds") or ())
            if seeds in seen:
                print(f"warning: report: {t.folder} has the seed(s) {list(seeds)} of {seen[seeds].folder}: kept "
                      f"apart, not merged as another seed", file=sys.stderr)
                group.remove(t)
                apart.append(t)
            else:
                seen[seeds] = t
        if len(group) == 1:
            out += group + apart
            continue
        constant = [t for t in group if t.teacher_constant is not None]
        if constant and len(constant) < len(group):  # "the teacher" of the merged table is not constant
            for t in constant:
                print(f"warning: report: the teacher of {t.folder} (seed(s) {t.provenance.get('seeds')}) predicts "
                      f"{t.teacher_constant!r} for every dev row (a constant model): that seed's retentions mean "
                      f"little", file=sys.stderr)
        first = group[0]
        rows = []
        firsts: dict[str, Row] = {}  # every artifact of any seed's run: one a run lacks (a stage it did not run) is
        for t in group:  #              averaged over the runs that have it
            for r in t.rows:
                firsts.setdefault(r.name, r)
        for row in firsts.values():
            pairs = [(t, r) for t in group for r in t.rows if r.name == row.name]
            same = [r for _, r in pairs]
            mean, std, n = mean_std([r.metric for r in same])
            latency = {}
            for threads in sorted({t for r in same for t in r.latency}):  # any seed's: the first may have no bench
                lats = [r.latency[threads] for r in same if threads in r.latency]
                tput = [x.throughput for x in lats if x.throughput is not None]
                shapes: dict[str, list[float]] = {}  # each fixed shape's seq/s over the seeds that timed it
                for x in lats:
                    for s, v in x.shapes.items():
                        shapes.setdefault(s, []).append(v)
                most = max((len(v) for v in shapes.values()), default=0)  # the shapes most seeds timed
                latency[threads] = Latency(statistics.fmean(x.p50_ms for x in lats),
                                           statistics.fmean(x.p90_ms for x in lats),
                                           pooled_rate(tput),
                                           {s: pooled_rate(v) for s, v in shapes.items() if len(v) == most},
                                           (len(lats), len(group)) if len(lats) < len(group) else None)
            kept = [x for x in (t.retention(r) for t, r in pairs) if x is not None]
            names = (first.metric_name, *first.other_metrics)
            rows.append(Row(row.name, row.kind, row.fmt, row.params, row.file_bytes, mean, std, max(n, 1), len(group),
                            latency, row.reference, row.shippable and all(r.shippable for r in same),
                            # by keyword: positionally, the path landed in `refused` (every merged row read "NOT
                            # shippable", its path as the guard's reason) and the tokenizer was lost
                            refused=next((r.refused for r in same if r.refused and not r.shippable), None),
                            path=row.path, ort_path=row.ort_path, tokenizer=row.tokenizer,
                            peak_rss_mb=max((r.peak_rss_mb for r in same if r.peak_rss_mb), default=None),
                            dev_metrics=_merged([r.dev_metrics for r in same], names),
                            test_metrics=_merged([r.test_metrics for r in same], names),
                            per_seed={"retention": statistics.fmean(kept) if kept else None, "speedup": {}}))
        _mark_reference(rows)  # seeds whose runs chose other references (one timed the fused graph) gave two
        reference = next((r.name for r in rows if r.reference), None)  # none timed: no speedup
        for row in rows if reference is not None else []:
            for threads in row.latency:
                ratios = _seed_speedups(group, row.name, reference, threads)
                if ratios:
                    row.per_seed["speedup"][threads] = statistics.fmean(ratios)
        rows.sort(key=lambda r: _ORDER.get(r.kind, 9))
        teacher = next(r for r in rows if r.name == "teacher")
        provenance = dict(first.provenance)
        timed = next((t for t in group if t.provenance.get("protocol")), first)  # the first seed may have no bench
        provenance.update({k: timed.provenance.get(k) for k in ("protocol", "dev latency", "bench versions")})
        provenance["seeds"] = sorted({s for t in group for s in (t.provenance.get("seeds") or [])})
        provenance["runs"] = [t.folder for t in group]
        out.append(RunTable(name, ", ".join(t.folder for t in group), first.metric_name, rows, teacher.metric,
                            provenance, pair=first.pair, other_metrics=list(first.other_metrics),
                            teacher_constant=(group[0].teacher_constant if len(constant) == len(group) else None),
                            dev_rows=next((t.dev_rows for t in group if t.dev_rows is not None), None),
                            dev_subset=any(t.dev_subset for t in group),
                            test_rows=next((t.test_rows for t in group if t.test_rows is not None), None),
                            test_subset=any(t.test_subset for t in group)))
        out += apart
    return out


def _merged(records: list[Optional[dict]], names: Sequence[str]) -> Optional[dict]:
    """Seeds' metric records (a row's dev or test metrics) as one: ``{name: {mean, std, n}}`` of each metric some seed
    scored; None where none did."""
    out = {}
    for name in names:
        mean, std, n = mean_std([_metric_value(r, name)[0] for r in records])
        if mean is not None:
            out[name] = {"mean": mean, "std": std, "n": n}
    return out or None


# ------------------------------------------------------------------------------------------------------ table
def _mb(n: Optional[int]) -> str:
    return "–" if n is None else f"{n / 1e6:.1f} MB"


def _params(n: Optional[int]) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _metric(row: Row) -> str:
    if row.metric is None or not math.isfinite(row.metric):  # undefined (nan) as a missing score: "–" either way
        return "–"
    text = f"{row.metric:.4f}"
    of = f" of {row.runs}" if row.runs > row.seeds else ""  # a seed that scored nan (or lacks the row) is not in it
    if row.metric_std is not None:
        text += f" ± {row.metric_std:.4f} (sample std, n={row.seeds}{of})"
    elif of:
        text += f" (n={row.seeds}{of}: the others unscored or without it)"
    return text


def _other_metric(row: Row, name: str, split: str = "dev") -> str:
    """A row's other dev metric (``RunTable.other_metrics``), or one on the labelled test split (``split="test"``),
    as the main one is shown."""
    mean, std, n = _metric_value(row.test_metrics if split == "test" else row.dev_metrics, name)
    if mean is None or not math.isfinite(mean):
        return "–"
    of = f" of {row.runs}" if row.runs > n else ""  # merged seeds of which only some scored it (as `_metric`)
    if std is not None:
        return f"{mean:.4f} ± {std:.4f} (sample std, n={n}{of})"
    return f"{mean:.4f}" + (f" (n={n}{of}: the others unscored or without it)" if of else "")


def _num(x: Optional[float], fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def table_cells(table: RunTable) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a run's table, as text (shared by Markdown and HTML)."""
    threads = table.threads
    head_t = table.headline_threads
    tested = table.tested
    rss = any(r.peak_rss_mb for r in table.rows)
    header = ["artifact", "format", "params", "file", *(["peak RSS"] if rss else []), f"{table.metric_name} (dev)",
              *(f"{m} (dev)" for m in table.other_metrics), "retention",
              *([f"{table.metric_name} (test)"] if tested else [])]
    for t in threads:
        header += [f"p50 ms ({t}t)", f"p90 ms ({t}t)"]
    peak = any(r.latency.get(head_t) and r.latency[head_t].peak_throughput for r in table.rows) if head_t else False
    per_s = "pairs/s" if table.pair else "sent/s"
    header += [f"speedup ({head_t}t)" if head_t else "speedup", f"{per_s} ({head_t}t)" if head_t else per_s]
    if peak:
        header.append(f"best fixed-shape seq/s ({head_t}t)")
    body = []
    for r in table.rows:
        retention = table.retention(r)
        cells = [r.name + (" (reference)" if r.reference else ""), r.fmt, _params(r.params), _mb(r.file_bytes),
                 *([_num(r.peak_rss_mb, ".0f") + (" MiB" if r.peak_rss_mb else "")] if rss else []), _metric(r),
                 *(_other_metric(r, m) for m in table.other_metrics),
                 "–" if retention is None else f"{100 * round_down(retention, 3):.1f}%",
                 *([_other_metric(r, table.metric_name, "test")] if tested else [])]
        for t in threads:
            lat = r.latency.get(t)
            of = f" (n={lat.timed[0]} of {lat.timed[1]})" if lat and lat.timed else ""  # seeds that timed it
            cells += [_num(lat and lat.p50_ms, ".2f") + of, _num(lat and lat.p90_ms, ".2f")]
        speed = table.speedup(r)
        lat = r.latency.get(head_t) if head_t else None
        cells += ["–" if speed is None else f"{round_down(speed, 1):.1f}×", _num(lat and lat.throughput, ".0f")]
        if peak:
            cells.append(f"{lat.peak_throughput:.0f} ({lat.peak_shape})" if lat and lat.peak_throughput else "–")
        body.append(cells)
    return header, body


def _provenance_lines(table: RunTable) -> list[tuple[str, str]]:
    out = []
    for key, value in table.provenance.items():
        if value is None or value == [] or value == {}:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        out.append((key, str(value)))
    search = _search_summary(table.folder)
    if search:
        out.append(("latency-budget search", search))
    return out


def _search_summary(folder: str) -> Optional[str]:
    """One line from ``compress search``'s results in the run folder, when a search ran."""
    try:
        record = _read(Path(folder) / "search" / "search.json")
    except (OSError, CompressError):  # merged seed folders ("a, b"), an unreadable file: no line
        return None
    if not record or "message" not in record:
        return None
    threads = f" (p50 at {record['threads']} thread(s))" if record.get("threads") else ""  # the tables hold several
    return (f"{record['message']}{threads}; Pareto front: {', '.join(record.get('front') or []) or 'empty'} "
            f"(table and plot: search/search.md)")


NOTE = ("Params: parameter count. File: size on disk in MB of 10^6 bytes (torch: its safetensors weights; the torch "
        "int8 peer: its state_dict as torch.save writes it; ONNX: the .onnx file). Peak RSS (MiB of 2^20 bytes): the "
        "most resident memory of a fresh "
        "process that loads the artifact alone and runs the bench's largest fixed shape and a few dev rows (ONNX: "
        "onnxruntime and numpy, not the tokenizer a device's runner loads too; torch: torch and transformers), shared "
        "libraries' pages included. "
        "Shippable: an int8 model that passed the quantize stage's accuracy guard, one a bundle may ship; (peer): "
        "the same model compressed by another library, for comparison. "
        "Retention: metric / teacher metric. Speedup: teacher ONNX fp32 p50 (the ORT-fused graph when its logits "
        "match the plain export's: format 'onnx fp32 fused') / artifact p50 at the same thread count. "
        "p50/p90 and sent/s: real dev sentences one at a time (batch 1), sent/s being 1000 / the mean ms (slow runs "
        "lower it: it can rank two models otherwise than their p50s); fixed-shape seq/s: the best of the bench's "
        "fixed shapes (written as, e.g., b8xs32: batches of 8 sequences of 32 tokens). Retention and speedup are "
        "rounded down (a 98.96% reads 98.9%, 3.998x reads 3.9x: no cell shows a target met that the measurement "
        "misses).")


def note(table: RunTable) -> str:
    """The note under a run's table; a pair task's latency is per dev pair (both texts in one input)."""
    text = NOTE
    if any(r.per_seed is not None for r in table.rows):
        text += (" Seeds merged: metric and latency are means over the seed runs, throughputs their pooled rate "
                 "(sequences over the seeds' total time); retention and speedup the mean of "
                 "each seed run's own ratio (over the seeds that measured both numbers), not the ratio of the means.")
    if table.other_metrics:
        text = text.replace("Retention: metric / teacher metric.",
                            f"Retention: {table.metric_name} / teacher {table.metric_name}; "
                            f"{', '.join(table.other_metrics)} (dev): the task's other metric"
                            f"{'s' if len(table.other_metrics) > 1 else ''} on the same dev rows.")
    if table.tested:
        rows = f"{table.test_rows}{' first' if table.test_subset else ''} rows" if table.test_rows else "its rows"
        text += (f" {table.metric_name} (test): on the task's labelled test split ({rows}), scored by the stages "
                 f"that made a model (not by the bench's or the report's own timing passes, nor by a stage run before "
                 f"it was: –; an undefined score, nan, reads – too); nothing is chosen on it.")
    if any(r.latency for r in table.rows):  # the report stage's own pass re-timed every model beside the reference
        own = table.provenance.get("dev latency")
        text += (" Sources: p50/p90, throughput and speedup from " + (
            "the report stage's own timing pass (the bench's models and the ones it did not time, in one fresh "
            "process: report/latency.json)" if own else "the bench stage (bench/bench.json)") +
            "; fixed-shape seq/s and peak RSS from the bench stage (the models it timed); dev scores from the stage "
            "that made each model (a model only the bench made: the bench's own score).")
    refused = [r for r in table.rows if r.refused and not r.shippable]
    if refused:
        text += " Not shippable (the quantize stage's accuracy guard, quantize.max_drop): " + "; ".join(
            f"{r.name}: {r.refused}" for r in refused) + "."
    if table.pair:
        text = text.replace("p50/p90 and sent/s: real dev sentences one at a time",
                            "p50/p90 and pairs/s: real dev pairs (both texts in one input) one at a time"
                            ).replace("sent/s being", "pairs/s being")
    if table.teacher_constant is not None:
        text = (f"Warning: the teacher predicts {table.teacher_constant!r} for every dev row (a constant model), so "
                f"its {table.metric_name} is {constant_score(table.metric_name)} and retention against it means "
                f"little. " + text)
    elif table.teacher_metric is not None and not math.isfinite(table.teacher_metric):
        text = (f"Warning: the teacher's {table.metric_name} is undefined (nan: constant predictions, or under 2 dev "
                f"rows), so no retention is measured against it. " + text)
    return text


def md_text(text: str) -> str:
    """Text as Markdown shows it literally in a table cell, a heading or a list: a run, student or label name may hold
    ``|``, ``<``, ``*``, ``_``, ``[``, ``~``, ``&``, ``#`` or a backtick (a ``<b>`` in a name was raw HTML in report.md;
    a ``|`` split the cell); an underscore inside a word (``batch_size``) stays as it is, as Markdown reads it. Line
    breaks (a task or label name may hold one) are one space: a newline split a table row or a bold span."""
    text = re.sub(r"\s*[\r\n]+\s*", " ", text)
    text = re.sub(r"([\\`*\[\]<>|~&#])", r"\\\1", text)
    return re.sub(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])", r"\\_", text)


def md_code(text: str) -> str:
    """``text`` as a Markdown code span, however many backticks it holds."""
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if "`" in text else f"`{text}`"


def markdown(tables: Sequence[RunTable], plot: Optional[str] = None) -> str:
    lines = ["# Compression report", ""]
    if plot:
        lines += [f"![metric vs latency]({plot})", ""]
    for table in tables:
        header, body = table_cells(table)
        lines += [f"## {md_text(table.run)}", "", f"Run folder: {md_code(table.folder)}.", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
        for row, cells in zip(table.rows, body):  # no colours here: the int8 models a bundle may ship are named
            lines.append("| " + " | ".join(md_text(c) for c in _tagged(row, cells, table.ships)) + " |")
        if table.ships:
            lines += ["", f"**The model to ship:** {md_text(table.ships[1])}"]
        lines += ["", md_text(note(table)), "", "**Provenance**", ""]  # a constant teacher's label name in it
        lines += [f"- {k}: {md_text(v)}" for k, v in _provenance_lines(table)]
        lines.append("")
    return "\n".join(lines)


def _tagged(row: Row, cells: list[str], ships: Optional[tuple[str, str]] = None) -> list[str]:
    """A row's cells with its artifact tagged "(shippable)" or "(NOT shippable)": in words, not only in colour; the
    one a bundle ships (``ships``, `bundle_pick`) "(shippable; the bundle's pick)"."""
    tag = " (NOT shippable)" if row.refused and not row.shippable else ""
    if row.shippable:
        tag = " (shippable; the bundle's pick)" if ships and ships[0] == row.name else " (shippable)"
    return [cells[0] + tag, *cells[1:]]


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;font-size:13px}td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}tr.ref{background:#fff8e0}tr.ship{background:#eef8ee}dl{font-size:13px}
dt{font-weight:600;float:left;clear:left;width:9em}dd{margin-left:10em}img{max-width:100%}"""


def html(tables: Sequence[RunTable], png: Optional[bytes] = None) -> str:
    """One self-contained page: no external file, the plot inlined as a base64 PNG."""
    e = html_lib.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Compression report</title>",
             f"<style>{_CSS}</style></head><body><h1>Compression report</h1>"]
    if png:
        parts.append(f"<img alt='metric vs latency' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    for table in tables:
        header, body = table_cells(table)
        parts.append(f"<h2>{e(table.run)}</h2><p>Run folder: <code>{e(table.folder)}</code></p><table><tr>")
        parts += [f"<th>{e(h)}</th>" for h in header]
        parts.append("</tr>")
        for row, cells in zip(table.rows, body):
            cls = "ref" if row.reference else "ship" if row.shippable else ""
            tagged = _tagged(row, cells, table.ships)
            parts.append(f"<tr class='{cls}'>" + "".join(
                f"<td{' class=n' if i >= 2 else ''}>{e(c)}</td>" for i, c in enumerate(tagged)) + "</tr>")
        parts.append("</table>" + (f"<p><b>The model to ship:</b> {e(table.ships[1])}</p>" if table.ships else ""))
        parts.append(f"<p>{e(note(table))} Highlighted as well: reference (yellow), shippable int8 (green).</p>")
        parts.append("<h3>Provenance</h3><dl>")
        parts += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _provenance_lines(table)]
        parts.append("</dl>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(tables: Sequence[RunTable], out: Path) -> dict[str, Path]:
    """report.md, report.html and pareto.png into ``out``; returns what was written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CompressError(f"{out}: exists and is not a folder (the report's output folder)")
    out.mkdir(parents=True, exist_ok=True)
    if not tables:
        raise CompressError("report: no runs to report")
    from compress.manifest import file_lock

    with file_lock(out):  # two reports into one folder: each writes its three files in turn, not interleaved
        return _write(tables, out)


def _write(tables: Sequence[RunTable], out: Path) -> dict[str, Path]:
    from compress.manifest import write_atomic

    for name in ("pareto.png", "report.md", "report.html"):  # checked before any is written: all three, or none
        if (out / name).exists() and not (out / name).is_file():
            raise CompressError(f"{out / name}: exists and is not a file; the report writes its {name} there")
    written = {}
    png_path = pareto_plot(tables, out / "pareto.png")
    png = png_path.read_bytes() if png_path else None
    if png_path:
        written["png"] = png_path
    else:  # an earlier report's plot would sit beside a report that has none
        (out / "pareto.png").unlink(missing_ok=True)
    for name, text in (("report.md", markdown(tables, "pareto.png" if png else None)), ("report.html", html(tables, png))):
        write_atomic(out / name, lambda tmp: tmp.write_text(text, encoding="utf-8"))  # no half file left on error
        written[name.split(".")[1]] = out / name
    return written


# ------------------------------------------------------------------------------------------------------ the stage
def measure_missing(recipe, table: RunTable, workdir: Path) -> dict:
    """Latency of the models the bench stage did not time as ONNX (the teacher's ONNX fp32, the speedup reference,
    unless the teacher was the quantized model), timed fairly against the bench's own artifacts.

    Each missing torch model is exported to ONNX fp32 in ``workdir`` (ORT's transformer fusions applied when they
    keep its logits, `compress.export.fused_if_exact`: the same graph optimisation as our own fp32 and int8 models, so speedups are
    not flattered by a slower reference) and scored on all of dev; then it is timed in
    ONE pass with every artifact of the bench record (the bench's `measure` under the recipe's bench settings: one
    process, the artifacts taking turns, real dev sentences at batch 1, each thread count of the recipe's bench
    section), so the speedups in the table come from one set of runs even on a shared CPU. Models are grouped by
    tokenizer: each artifact reads its own tokenizer's ids of the same dev sentences (an MPNet teacher beside BERT-
    vocabulary students). Returns ``{"protocol", "models": {label: record}, "bench": record}``;
    ``{}`` when nothing is missing."""
    from dataclasses import asdict, replace

    from transformers import AutoTokenizer

    from compress.bench import dev_protocol, evaluate_artifact, measure_in_fresh_process
    from compress.config import BenchConfig
    from compress.manifest import cpu_model, usable_cores
    from compress.data import Collator, load_task, tokenize
    from compress.export import export_onnx, fused_if_exact
    from compress.modeling import count_params, load_trained

    timed = {r.name for r in table.rows if r.latency}
    todo = [r for r in table.rows if r.fmt == "torch" and r.path and f"{r.name} · onnx fp32" not in timed]
    if not todo:
        return {}
    cfg = replace(getattr(recipe, "bench", None) or BenchConfig(), batch_sizes=[], seq_lengths=[])
    data = load_task(recipe.task, seed=recipe.seed)
    bench = bench_record(recipe.run_dir)
    bench_arts = {n: dict(a) for n, a in (bench.get("artifacts") or {}).items()
                  if (a.get("path") and Path(a["path"]).is_file()) or a.get("kind", "").startswith("torch")}
    gone = sorted(set(bench.get("artifacts") or {}) - set(bench_arts))
    if gone:  # their table rows keep the bench stage's pass: another set of runs than the speedup reference's
        print(f"warning: report: {', '.join(gone)}: file gone since the bench stage, not re-timed with the reference; "
              f"their latency is the bench pass's (rerun the bench stage: --force bench)", file=sys.stderr)
    qtok = recipe.run_dir / "quantize" / "tokenizer" / "tokenizer.json"
    groups: dict[str, dict] = {}  # tokenizer sha256 -> {"folder", "artifacts"}
    if bench_arts and qtok.is_file():
        groups[sha256_file(qtok)] = {"folder": qtok.parent, "artifacts": {f"bench:{n}": a for n, a in
                                                                          bench_arts.items()}}
    out = {"models": {}, "bench": {"artifacts": {}}}
    for row in todo:
        model, tokenizer = load_trained(row.path)
        slug = row.name.replace(" ", "_")
        dev = tokenize(data.dev, tokenizer, recipe.task.max_length)
        collator = Collator({"": tokenizer}, regression=data.spec.is_regression)
        path = fused_if_exact(export_onnx(model, workdir / f"{slug}.onnx"), model.config.model_type,
                               dev.select(range(min(64, len(dev)))), collator)
        key = sha256_file(Path(row.path) / "tokenizer.json") if (Path(row.path) / "tokenizer.json").is_file() \
            else slug
        group = groups.setdefault(key, {"folder": Path(row.path), "artifacts": {}})
        art = {"kind": "onnx", "path": str(path), "size_bytes": path.stat().st_size, "params": count_params(model),
               "file": None, "graph": "fused" if path.stem.endswith("_fused") else "plain"}
        art["metrics"] = evaluate_artifact(art, dev, collator, data.spec.metrics, cfg.threads[0], {}, cfg.spin)
        group["artifacts"][f"model:{row.name}"] = art
        del model
    # one pass for every group, each artifact fed its own tokenizer's ids of the same dev rows (a pass per group timed
    # a teacher of another tokenizer, MPNet's, alone: its speedups compared two sets of runs)
    devs = {key: tokenize(data.dev, AutoTokenizer.from_pretrained(group["folder"]), recipe.task.max_length)
            for key, group in groups.items()}
    arts = {name: {**art, "dev_set": key} for key, group in groups.items() for name, art in group["artifacts"].items()}
    timed = measure_in_fresh_process(arts, devs, cfg, {}, peak=False)  # as the bench stage times: torch's OpenMP
    for name, results in timed["results"].items():  # wait policy follows bench.spin
        kind, _, label = name.partition(":")
        if kind == "model":
            art = {k: v for k, v in arts[name].items() if k != "dev_set"}
            # the export lived in the scratch folder, deleted after this pass: no path to record
            exported = {**art, "path": None, "exported": Path(art["path"]).name, "results": results}
            out["models"][label] = {"artifacts": {"onnx_fp32": exported}}
            lat = ", ".join(f"{r['threads']}t p50 {r['p50_ms']:.2f} ms" for r in results)
            print(f"[report] {label} · onnx fp32: {lat}")
        else:
            out["bench"]["artifacts"][label] = {"results": results}
    out["protocol"] = {
        "dev": dev_protocol(cfg, len(data.dev)),  # the rows timed: a split smaller than bench.dev_rows, all of it
        "order": f"report stage: the models the bench did not time (exported to ONNX fp32) and every bench artifact, "
                 f"in one fresh process, order {cfg.order} (compress.bench.measure_in_fresh_process)",
        "onnx_fp32": "torch.onnx export; ORT transformer fusions kept when the logits match the plain export "
                     "within 1e-3 on 64 dev rows (artifact 'graph': fused | plain)",
        "threads": cfg.threads, "inter_op_threads": 1, "dev_rows": cfg.dev_rows, "warmup": cfg.warmup,
        "cpu": cpu_model(), "cores": usable_cores(), "settings": asdict(cfg)}
    return out


def report_runs(run_dirs: Sequence[str | Path], out: str | Path, recipe=None, threads: Optional[int] = None,
                extra: Optional[dict] = None) -> dict[str, Path]:
    """Tables of several run folders into ``out`` (the first with ``recipe``'s provenance and ``extra``
    measurements)."""
    return write(report_tables(run_dirs, recipe, threads, extra), Path(out))


def report_tables(run_dirs: Sequence[str | Path], recipe=None, threads: Optional[int] = None,
                  extra: Optional[dict] = None) -> list[RunTable]:
    """`report_runs`'s tables, each with what its bundle ships (`bundle_pick`) and the headline ``threads``; what
    makes them read wrong is warned of."""
    seen, unique = set(), []
    for d in run_dirs:  # a folder given twice (or a compare entry naming the run itself): one table
        if Path(d).resolve() not in seen:
            seen.add(Path(d).resolve())
            unique.append(d)
    run_dirs = unique
    tables = merge_seeds([collect(d, recipe=recipe if i == 0 else None, extra=extra if i == 0 else None)
                          for i, d in enumerate(run_dirs)])
    for i, table in enumerate(tables):  # before threads_override: the bundle stage picks on the table as collected
        table.ships = bundle_pick(table, recipe if i == 0 and Path(table.folder) == Path(run_dirs[0]) else None)
    names = [t.run for t in tables]
    for table in tables:
        table.threads_override = threads
        if names.count(table.run) > 1:  # runs of one recipe kept apart (same seed): headings and legend name the folder
            table.run = f"{table.run} ({table.folder})"
    for warning in report_warnings(tables, threads):
        print(f"warning: report: {warning}", file=sys.stderr)
    return tables


def bundle_pick(table: RunTable, recipe=None) -> Optional[tuple[str, str]]:
    """Which row of ``table`` a bundle ships, and why, so that the report says which model to ship: with the run's
    ``recipe`` (its bundle section), the bundle stage's own pick (`compress.bundle.pick`) on this table, the one it
    will read; without one (`compress report RUN`), what the run's last bundle stage shipped, when that row is still
    in the table. None when the run bundles nothing, nothing is shippable, or seeds were merged (means are no model)."""
    from compress.bundle import bundle_max_drop, last_shipped, pick

    if any(row.runs > 1 for row in table.rows):  # seeds merged: a mean is no model
        return None
    if recipe is not None:
        if recipe.bundle is None:
            return None
        try:
            chosen, choice = pick(table, recipe.bundle.pick, bundle_max_drop(recipe), recipe.bundle.threads)
        except CompressError:  # no shippable int8 model: the table says why
            return None
        return chosen.name, f"The bundle stage ships {chosen.name}: {choice['rule']} (bundle.pick {choice['pick']})."
    shipped = last_shipped(Path(table.folder))  # unreadable: no line, as before any bundle
    if shipped is None or not any(r.name == shipped["chosen"] for r in table.rows):
        return None
    rule = f": {shipped['rule']}" if isinstance(shipped.get("rule"), str) else ""
    where = Path(table.folder) / "bundle"
    return shipped["chosen"], f"The run's bundle stage shipped {shipped['chosen']}{rule} ({where})."


def report_warnings(tables: Sequence[RunTable], threads: Optional[int]) -> list[str]:
    """What makes a report read wrong though nothing failed: a headline thread count a run never benchmarked (its
    speedup and plot columns stay empty), runs of different metrics on one plot axis, a run with no latency at all,
    runs scored on different dev (or labelled test) rows by a cap."""
    out = []
    for t in tables:
        if threads is not None and t.threads and threads not in t.threads:
            out.append(f"threads {threads}: run {t.run} was benchmarked at {', '.join(map(str, t.threads))} threads "
                       f"only; its speedup, throughput and plot columns stay empty")
        if not t.threads:
            out.append(f"run {t.run} has no latency (no bench stage, report.measure off, or its latencies left out "
                       f"as stale): it is not on the plot")
        elif not (t.reference_row() and t.reference_row().latency):
            out.append(f"run {t.run}: the speedup reference (teacher · onnx fp32) has no timing (never timed, or its "
                       f"timing left out as stale: a stage was redone since the report stage timed it), so the "
                       f"speedup column stays empty; the recipe's report stage times it unless report.measure is "
                       f"false (compress run RECIPE --stage report)")
        if t.teacher_constant is not None:
            out.append(f"run {t.run}: the teacher predicts {t.teacher_constant!r} for every dev row (a constant "
                       f"model): retention against it means little")
    tasks = [(t.run, t.provenance["task"]) for t in tables if t.provenance.get("task")]
    if len({k for _, k in tasks}) > 1:
        out.append("the runs are of different tasks (" + "; ".join(f"{r}: {k}" for r, k in tasks)
                   + "): their metrics, on one axis, do not compare")
    metrics = {t.metric_name for t in tables}
    if len(metrics) > 1:
        out.append(f"the runs report different metrics ({', '.join(f'{t.run}: {t.metric_name}' for t in tables)}), "
                   f"drawn on one axis")
    timed = [t for t in tables if t.threads]
    if threads is None and len({t.headline_threads for t in timed}) > 1:
        common = set.intersection(*(set(t.threads) for t in timed))
        out.append("the runs are plotted and compared at different thread counts ("
                   + ", ".join(f"{t.run}: {t.headline_threads}" for t in timed) + "), on one latency axis; "
                   + (f"give --threads {max(common)} (report.threads) to draw all at one" if common else
                      "no thread count was benchmarked by all of them"))
    for split in ("dev", "test"):
        # runs of other tasks have other splits: said only where a cap cut one of them
        scope = [(t.run, *_split_rows(t, split)) for t in tables if _split_rows(t, split)[0] is not None]
        if len({(n, subset) for _, n, subset in scope}) > 1 and any(subset for *_, subset in scope):
            words = "; ".join(f"{r}: {n} ({'first rows only' if subset else 'all'})" for r, n, subset in scope)
            out.append(f"the runs were scored on different {split} rows ({words}): their {split} metrics"
                       + (" and retentions" if split == "dev" else "") + " do not compare (task.max_eval_samples)")
    machines = {t.run: _timed_on(t) for t in timed if _timed_on(t)}
    if len(set(machines.values())) > 1:
        out.append("the runs were timed on different machines (" + "; ".join(f"{r}: {m}" for r, m in machines.items())
                   + "): their latencies, drawn on one axis, compare the machines as much as the models")
    return out


def _split_rows(table: RunTable, split: str) -> tuple[Optional[int], bool]:
    """How many rows of ``split`` (dev, or a labelled test split where the run's metrics have one) a run scored and
    whether only the split's first."""
    if split == "dev":
        return table.dev_rows, table.dev_subset
    return (table.test_rows, table.test_subset) if table.tested else (None, False)


def _measure_key(recipe, paths: bool = False) -> str:
    """What the report stage's own timing pass (`measure_missing`) depends on: the outputs of this run's stages before
    it (their manifests' hashes), the bench settings, the task, its data by content (the teacher stage's input
    hashes), the seed and this package's version; not the report's display settings (``threads``, ``compare``), nor
    the paths the recipe spells the data with (``paths``: the key as before 2026-12-07, the task's paths in it, still
    accepted: the same files spelled absolute re-timed every model and rebuilt the bundle)."""
    from compress import __version__
    from compress.manifest import content_outputs, fingerprint
    from compress.pipeline import plan

    manifests = {s.name: _read(recipe.run_dir / s.name / "manifest.json", checked=False) or {}
                 for s in plan(recipe) if s.name not in ("report", "bundle")}
    task, data = recipe.section("task"), {}
    if not paths:
        task = {k: v for k, v in task.items() if k not in ("data_dir", "files")}
        data = {"data": _data_digests(manifests.get("teacher") or {})}
    return fingerprint({"outputs": {name: content_outputs(m) for name, m in manifests.items()},
                        "bench": recipe.section("bench") if recipe.bench is not None else None,
                        "task": task, **data, "seed": recipe.seed, "compress": __version__})


def _data_digests(teacher: dict) -> list[str]:
    """The sha256 of what the teacher stage read (the task's data files, a local model folder's files), whatever the
    paths they were read from."""
    inputs = teacher.get("inputs")
    return sorted(v for v in inputs.values() if isinstance(v, str)) if isinstance(inputs, dict) else []


def kept_measurement(recipe, key: Optional[str] = None) -> Optional[dict]:
    """The previous report stage's own timings (report/latency.json) when they still stand: measured with the same key
    (``key``, else `_measure_key`), on this machine (`compress.manifest.other_machine`), and the file as that stage
    wrote it (its manifest's sha256: an edited file is timed again; one that does not read back, or its manifest,
    too: not an error on every rerun)."""
    from compress.manifest import other_machine

    folder = recipe.run_dir / "report"
    try:
        previous = _read(folder / MEASURED)
        manifest = _read(folder / "manifest.json", checked=False) or {}  # this stage's own, about to be replaced
    except CompressError:
        return None
    outputs, env = manifest.get("outputs"), manifest.get("env")
    recorded = outputs.get(MEASURED) if isinstance(outputs, dict) else None
    if not (isinstance(previous, dict) and (previous.get("key") == (key or _measure_key(recipe))
                                            or previous.get("key") == _measure_key(recipe, paths=True)) and recorded
            and sha256_file(folder / MEASURED) == recorded
            and not other_machine(env if isinstance(env, dict) else None)):
        return None
    return previous


def run(recipe, out: Path, inputs: dict[str, Path], forced: bool = False) -> dict:
    """Stage `report`: measure what the bench did not (teacher ONNX fp32...), then this run's table (plus
    ``report.compare`` runs) as report.md, report.html and pareto.png. The measurements of the previous report stage
    are kept when they still stand (`kept_measurement`), unless the stage is ``forced`` (--force report)."""
    from compress.manifest import scratch_dir, write_json

    cfg = recipe.report
    measured = {}
    if cfg.measure:
        key = _measure_key(recipe)
        previous = None if forced else kept_measurement(recipe, key)
        if previous is not None:  # report.threads, report.compare: re-timing the same models gave other latencies,
            measured = previous   # and the bundle (it reads them) was redone
            print("[report] latencies of the previous report pass kept: the models and settings it timed are "
                  "unchanged (--force report times them again)")
        else:
            with scratch_dir("report") as tmp:
                measured = measure_missing(recipe, collect(recipe.run_dir, recipe=recipe, extra={}), Path(tmp))
            measured = {**measured, "key": key}
        write_json(out / MEASURED, measured)
    tables = report_tables([recipe.run_dir, *cfg.compare], recipe=recipe, threads=cfg.threads, extra=measured)
    written = write(tables, out)
    print("[report] wrote " + ", ".join(p.name for p in written.values()))
    return {"report": {k: p.name for k, p in written.items()}, "compare": list(cfg.compare),
            "measured": sorted(measured.get("models", {})),
            "ships": tables[0].ships[0] if tables[0].ships else None,  # (its presence: a report naming the pick)
            "pick": pick_settings(recipe)}


def pick_settings(recipe) -> Optional[dict]:
    """The bundle section's settings that choose the model the report names (`bundle_pick`), recorded in the report
    stage's manifest so that a rerun can say which of them changed; None without a bundle section."""
    cfg = recipe.bundle
    return None if cfg is None else {"pick": cfg.pick, "max_drop": cfg.max_drop, "threads": cfg.threads}
