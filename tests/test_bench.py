"""Benchmark: the JSON record (protocol beside the numbers, every artifact and peer, ratios), timing helpers, errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from compress.bench import bench, format_ratios, percentiles, probe_memory, run_isolated, time_fixed
from compress.config import BenchConfig, QuantizeConfig, TaskConfig, from_dict
from compress.data import Collator, load_split, tokenize
from compress.errors import CompressError
from compress.manifest import write_json
from compress.modeling import load_trained
from compress.quantize import quantize_model
from conftest import flip_first_onnx_scores

ROOT = Path(__file__).resolve().parent.parent


class FakeRunner:
    """An ONNX runner that runs nothing (`compress.bench.make_runner`'s stand-in): ``seen(name, feeds)``, if given,
    is told of each call."""
    names = ["input_ids", "attention_mask"]

    def __init__(self, name: str = "", seen=None):
        self.name, self.seen = name, seen

    def __call__(self, feeds):
        if self.seen is not None:
            self.seen(self.name, feeds)


@pytest.fixture(scope="module")
def dev(tokenizer, glue_dir):
    return tokenize(load_split(TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2")), "dev").select(range(48)),
                    tokenizer, 64)


def test_bench_record_schema(tmp_path, tiny_bert_dir, dev, monkeypatch):
    from compress.data import GLUE_TASKS

    # the timing worker reads its dev rows from its spec: importing `datasets` there (as it did to read them from
    # disk) cost ~0.9 s of every fresh process; here an import of it fails in the worker
    (tmp_path / "shadow" / "datasets").mkdir(parents=True)
    (tmp_path / "shadow" / "datasets" / "__init__.py").write_text("raise ImportError('datasets in the worker')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "shadow"))

    model, tokenizer = load_trained(tiny_bert_dir)
    qdir = tmp_path / "quantize"
    qdir.mkdir()
    collator = Collator({"": tokenizer})
    rec = quantize_model(model, dev, np.asarray(dev["label"]), ["accuracy"], collator,
                         QuantizeConfig(modes=["dynamic"], max_drop=100.0), qdir, calib_rows=dev, sens_rows=dev)
    rec["source"] = {"model": "teacher", "folder": str(tiny_bert_dir)}
    write_json(qdir / "quantize.json", rec)
    tokenizer.save_pretrained(qdir / "tokenizer")
    cfg = BenchConfig(threads=[1, 2], batch_sizes=[2], seq_lengths=[16], dev_rows=6, warmup=1, repeats=4,
                      max_seconds=0.2, min_runs=3, isolate=False)  # in-process: fast; isolation is tested below
    out = tmp_path / "bench"
    out.mkdir()
    result = bench(qdir, rec, str(tiny_bert_dir), dev, GLUE_TASKS["sst2"], cfg, out, [(2, 16)])

    saved = json.loads((out / "bench.json").read_text())
    assert saved == json.loads(json.dumps(result["bench"], default=str))
    protocol = saved["protocol"]
    assert protocol["cpu"] and protocol["threads"] == [1, 2] and protocol["shapes"] == ["b2xs16"]
    assert protocol["versions"]["onnxruntime"] and protocol["warmup"] == 1 and protocol["dev_rows"] == 6
    assert "PASSIVE" in protocol["spin"] and protocol["order"].startswith("series") and protocol["rounds"] == 3
    assert set(saved["artifacts"]) == {"torch_fp32", "torch_dynamic_int8", "onnx_fp32", "onnx_fp32_opt",
                                       "int8_dynamic", "optimum_avx512_vnni"}
    assert saved["artifacts"]["optimum_avx512_vnni"]["stock"] and "SkipLayerNormFusion" in protocol["ort_session"]
    assert saved["flops"]["b2xs16"] > 0
    for t in ("1", "2"):
        assert saved["machine_peak"][t]["int8_gemm_gop_s"] > 0 and saved["machine_peak"][t]["fp32_gemm_gop_s"] > 0
    for name, art in saved["artifacts"].items():
        assert 0.0 <= art["metrics"]["accuracy"] <= 1.0, name
        assert art["size_bytes"] > 0 and art["params"] > 0 and "peak_rss_mb" not in art, name  # isolate=False
        inputs = {(r["input"], r["threads"]) for r in art["results"]}
        assert inputs == {("dev", 1), ("dev", 2), ("b2xs16", 1), ("b2xs16", 2)}, name
        for r in art["results"]:
            assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"], (name, r)
            assert r["throughput_seq_s"] > 0
            # series, 3 rounds: each dev row once per round; fixed shapes: ceil(4/3) runs at most per round
            assert r["runs"] == 18 if r["input"] == "dev" else 3 <= r["runs"] <= 6
            if r["input"] == "b2xs16":
                assert r["batch"] == 2 and r["seq"] == 16 and r["gop_s"] > 0
    # torch and ONNX fp32 score the same; int8 sizes are smaller than fp32's
    arts = saved["artifacts"]
    assert arts["onnx_fp32"]["metrics"] == arts["torch_fp32"]["metrics"]
    assert arts["int8_dynamic"]["size_bytes"] < 0.5 * arts["onnx_fp32"]["size_bytes"]
    assert arts["torch_dynamic_int8"]["size_bytes"] < arts["torch_fp32"]["size_bytes"]  # its int8 state_dict
    # the peer the stage made lives in its (temporary, then renamed) folder: recorded relative to it, found after
    assert arts["optimum_avx512_vnni"]["path"] == "peers/optimum/model_quantized.onnx"
    from compress.report import bench_record

    assert Path(bench_record(tmp_path)["artifacts"]["optimum_avx512_vnni"]["path"]).is_file()
    assert saved["ours"] == "int8_dynamic"
    assert set(saved["ratios"]) == {"torch_fp32", "torch_dynamic_int8", "onnx_fp32", "onnx_fp32_opt",
                                    "optimum_avx512_vnni"}
    for r in saved["ratios"].values():
        assert set(r["speedup_p50"]) == {"dev@1t", "dev@2t", "b2xs16@1t", "b2xs16@2t"}
        assert all(v > 0 for v in r["speedup_p50"].values()) and r["metric"] == "accuracy"
    text = format_ratios(saved)
    assert "vs optimum_avx512_vnni" in text and "GOP/s" in text
    # no shippable int8 model, or no peer: one line that says which
    assert format_ratios({**saved, "ours": None}) == "[bench] no shippable int8 model: no ratios"
    assert format_ratios({**saved, "ratios": {}}) == ("[bench] ours = int8_dynamic; nothing to compare it with "
                                                      "(bench.peers is empty)")
    assert result["metrics"]["dev"] == arts["int8_dynamic"]["metrics"]


@pytest.mark.parametrize("order", ["series", "interleaved"])
def test_measure_orders(monkeypatch, dev, order):
    """series: each artifact's runs back to back (warm-up first), artifacts taking turns in a rotating order per
    round; interleaved: one run of each artifact after another. Checked on the sequence of calls."""
    import compress.bench as B

    calls = []
    seen = lambda name, feeds: calls.append((name, int(feeds["input_ids"].shape[1])))  # noqa: E731
    monkeypatch.setattr(B, "make_runner", lambda art, threads, models, spin: FakeRunner(art["name"], seen))
    arts = {n: {"kind": "onnx", "name": n} for n in ("a", "b")}
    cfg = BenchConfig(threads=[1], batch_sizes=[], seq_lengths=[], dev_rows=3, warmup=1, order=order, rounds=2)
    results = B.measure(arts, dev, cfg, {})
    lengths = [len(dev[i]["input_ids"]) for i in range(3)]
    if order == "series":
        expected = [(n, s) for n in ("a", "b", "b", "a") for s in [lengths[0]] + lengths]
        assert [r["runs"] for r in results["a"]] == [6]
    else:
        expected = [("a", lengths[0]), ("b", lengths[0]), ("a", lengths[0]), ("b", lengths[0]),
                    ("b", lengths[1]), ("a", lengths[1]), ("a", lengths[2]), ("b", lengths[2])]
        assert [r["runs"] for r in results["a"]] == [3]
    assert calls == expected


def test_interleaved_fixed_shapes_take_turns_and_stop_after_min_runs_past_max_seconds(monkeypatch, dev):
    """order: interleaved at a fixed shape: each artifact's warm-up runs, then one run of each in a rotating order,
    ``repeats`` rounds at most; once every artifact has ``min_runs`` and one has spent ``max_seconds``, it stops."""
    import compress.bench as B

    calls = []
    seen = lambda name, feeds: calls.append((name, tuple(feeds["input_ids"].shape)))  # noqa: E731
    monkeypatch.setattr(B, "make_runner", lambda art, threads, models, spin: FakeRunner(art["name"], seen))
    arts = {n: {"kind": "onnx", "name": n} for n in ("a", "b")}
    for max_seconds, runs in ((60.0, 3), (0.0, 2)):
        calls.clear()
        cfg = BenchConfig(threads=[1], batch_sizes=[2], seq_lengths=[8], dev_rows=1, warmup=1, repeats=3,
                          min_runs=2, max_seconds=max_seconds, order="interleaved")
        results = B.measure(arts, dev, cfg, {})
        fixed = [name for name, shape in calls if shape == (2, 8)]
        assert fixed == ["a", "b"] + ["a", "b", "b", "a", "a", "b"][:2 * runs], max_seconds
        assert [r["runs"] for r in results["a"] if r["input"] == "b2xs8"] == [runs]


def test_series_rounds_time_repeats_at_most_in_all(monkeypatch, dev):
    """`repeats` is "timed runs per fixed shape, at most", and `min_runs` promised `repeats: 2` times 2: split over the
    series' rounds each was rounded up per round (3 rounds: 21 runs for repeats 20, 3 for repeats 2 and for 1)."""
    import compress.bench as B

    monkeypatch.setattr(B, "make_runner", lambda art, threads, models, spin: FakeRunner())
    arts = {n: {"kind": "onnx", "name": n} for n in ("a", "b")}
    for repeats, min_runs in ((2, 1), (20, 3), (5, 5), (1, 1)):
        cfg = BenchConfig(threads=[1], batch_sizes=[1], seq_lengths=[8], dev_rows=2, warmup=0, repeats=repeats,
                          min_runs=min_runs, rounds=3)
        results = B.measure(arts, dev, cfg, {})
        assert [r["runs"] for r in results["a"] if r["input"] == "b1xs8"] == [repeats]
    assert [B._share(7, 3, k) for k in range(3)] == [3, 2, 2]


def test_timing_helpers():
    calls = []
    times = time_fixed(lambda: calls.append(1), warmup=2, repeats=5, max_seconds=10.0, min_runs=3)
    assert len(times) == 5 and len(calls) == 7  # warm-up runs are not timed
    import time

    slow = time_fixed(lambda: time.sleep(0.02), warmup=0, repeats=100, max_seconds=0.05, min_runs=2)
    assert 2 <= len(slow) <= 4  # stops after max_seconds of timed runs
    p = percentiles([0.001, 0.002, 0.003, 0.004])
    assert p["p50_ms"] == pytest.approx(2.5) and p["runs"] == 4 and p["p99_ms"] <= 4.0
    assert (p["p90_ms"], p["p99_ms"], p["mean_ms"]) == pytest.approx((3.7, 3.97, 2.5))  # linear interpolation


def test_sessions_and_torch_run_on_the_thread_counts_asked(tmp_path):
    """The protocol's thread settings reach the runtimes: ORT's intra-op count, one inter-op thread, sequential
    execution, idle threads sleeping when spin is off; torch's intra-op count."""
    import onnx
    import torch
    from onnx import TensorProto, helper

    from compress.bench import TorchRunner
    from compress.ort_session import session

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    import onnxruntime as ort

    for threads, spin in ((2, False), (1, True)):
        options = session(tmp_path / "m.onnx", threads=threads, spin=spin).get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (threads, 1)
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # unset: ORT's default, spinning
            spinning = None
        assert spinning == (None if spin else "0")
    before = torch.get_num_threads()
    try:
        TorchRunner(torch.nn.Linear(2, 2), 1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_bench_worker_imports_the_compress_of_the_process_that_starts_it(tmp_path):
    """Run from a source folder that is not the installed copy (a second checkout, a `pip install .`), the worker
    (`python -P -m compress.bench`) imported the installed compress: the timings and memory were measured by other
    code than the one running. A copy of the package whose worker says where it lives is the one the worker runs."""
    import subprocess
    import sys

    src = tmp_path / "checkout"
    for package in ("compress", "teachers", "students"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    bench = src / "compress" / "bench.py"
    bench.write_text(bench.read_text().replace('def _worker_main(spec: dict) -> dict:\n',
                                               'def _worker_main(spec: dict) -> dict:\n    return {"file": __file__}\n'))
    code = ("import sys, pathlib; sys.path.insert(0, sys.argv[1]); from compress.bench import _worker; "
            "print(_worker({'mode': 'where'}, pathlib.Path(sys.argv[2]), 'w', {}, 'where')['file'])")
    out = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(src / "compress" / "bench.py")


def test_isolated_memory_probe_and_missing_or_corrupt_onnx(tmp_path, tiny_bert_dir, dev, monkeypatch):
    from compress.export import export_onnx

    rows = [{k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in r} for r in dev.select(range(8))]
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    spec = {"kind": "onnx", "dev_rows": rows, "threads": [1, 2], "largest": [4, 32], "model_dir": None}
    good = export_onnx(load_trained(tiny_bert_dir)[0], tmp_path / "good.onnx")
    out = run_isolated({**spec, "name": "good", "path": str(good)}, tmp_path)  # a fresh process: its own RSS
    assert out["peak_rss_mb"] >= out["rss_before_load_mb"] > 0 and out["load_s"] >= 0
    # an ONNX file's probe imports onnxruntime, not torch: its peak is far below a torch process's baseline (the
    # largest fixed shape's token ids imported torch with compress.export: 484 MB for this tiny model, 70 without)
    assert out["rss_before_load_mb"] < 150 and out["peak_rss_mb"] < 250, out
    # its two parts at the end: anonymous memory (model, arena) and the shared libraries' file pages, which vary with
    # the page cache (a just-installed .venv's read 13.5 MiB more than an older one's for the same int8 model)
    assert out["rss_anon_end_mb"] > 0 and out["rss_file_end_mb"] > 0
    assert out["rss_anon_end_mb"] + out["rss_file_end_mb"] <= out["peak_rss_mb"] + 1.0, out
    stale = tmp_path / "elsewhere"
    (stale / "compress").mkdir(parents=True)
    (stale / "compress" / "__init__.py").write_text("raise ImportError('an old checkout in the working directory')\n")
    monkeypatch.chdir(stale)  # the worker imports the compress this process runs, not the one in its cwd
    assert run_isolated({**spec, "name": "good", "path": str(good)}, tmp_path)["peak_rss_mb"] > 0
    torch_out = probe_memory({**spec, "kind": "torch_dynamic_int8", "model_dir": str(tiny_bert_dir), "path": None})
    assert torch_out["peak_rss_mb"] > 0
    with pytest.raises(CompressError, match="missing.onnx: ONNX file not found"):
        probe_memory({**spec, "name": "x", "path": str(tmp_path / "missing.onnx")})
    with pytest.raises(CompressError, match="bench of bad .*bad.onnx: not a loadable ONNX model"):
        run_isolated({**spec, "name": "bad", "path": str(tmp_path / "bad.onnx")}, tmp_path)


def test_an_onnx_files_memory_probe_imports_what_a_users_process_would(tmp_path, tiny_bert_dir, dev):
    """The probe ran as ``python -m compress.bench``: its peak RSS counted compress's recipe, manifest and data code,
    yaml and psutil (~7 MiB, ~7% of the quickstart's int8 model's figure) besides onnxruntime and numpy."""
    import subprocess
    import sys

    from compress.export import export_onnx

    rows = [{k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in r}
            for r in dev.select(range(4))]
    good = export_onnx(load_trained(tiny_bert_dir)[0], tmp_path / "good.onnx")
    spec = {"kind": "onnx", "path": str(good), "dev_rows": rows, "threads": [1], "largest": [2, 16], "model_dir": None}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = ("import json, sys\n"
            "from compress.probe import probe_memory\n"
            "out = probe_memory(json.load(open(sys.argv[1])))\n"
            "print(json.dumps([out, sorted(m for m in sys.modules if m.split('.')[0] in "
            "('compress', 'teachers', 'yaml', 'psutil', 'torch', 'transformers', 'datasets', 'tokenizers'))]))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "spec.json")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out, imported = json.loads(done.stdout)
    assert out["peak_rss_mb"] >= out["rss_before_load_mb"] > 0
    assert imported == ["compress", "compress.bundle_predict", "compress.errors", "compress.ort_session",
                        "compress.probe"], imported


def test_bench_config_errors():
    with pytest.raises(CompressError, match="bench.threads: values must be >= 1"):
        from_dict(BenchConfig, {"threads": [0]}, file="r.yaml", where="bench")
    with pytest.raises(CompressError, match=r"bench.peers\[0\]: expected one of"):
        from_dict(BenchConfig, {"peers": ["tensorrt"]}, file="r.yaml", where="bench")
    with pytest.raises(CompressError, match="bench.rounds: must be >= 1"):
        from_dict(BenchConfig, {"rounds": 0}, file="r.yaml", where="bench")
    with pytest.raises(CompressError, match="bench.order: expected one of"):
        from_dict(BenchConfig, {"order": "random"}, file="r.yaml", where="bench")


def test_source_folder_follows_a_copied_run_folder(tmp_path, glue_dir):
    """A run folder copied to another --runs-dir: quantize.json still records the old run's model folder; the bench
    times the copy's own model (the old place may be gone), and keeps the recorded path when the copy lacks it."""
    from compress.bench import source_folder
    from compress.config import Recipe, from_dict

    recipe = from_dict(Recipe, {
        "name": "q", "runs_dir": str(tmp_path / "runs"),
        "task": {"name": "sst2", "data_dir": str(glue_dir / "SST-2"), "max_length": 32},
        "teacher": {"model": "minilm-l6"},
        "students": [{"name": "s1", "kind": "narrow", "init": "minilm-l6", "layers": 2}], "quantize": {}},
        file="recipe.yaml")
    run_dir = tmp_path / "copy" / "q"
    for folder in ("teacher/model", "distill/s1/model", "prune/model"):
        (run_dir / folder).mkdir(parents=True)
        (run_dir / folder / "config.json").write_text("{}")
    (run_dir / "quantize").mkdir()
    old = tmp_path / "runs" / "q"
    for model, folder in (("prune", "prune/model"), ("s1", "distill/s1/model"), ("teacher", "teacher/model")):
        qrec = {"source": {"model": model, "folder": str(old / folder)}}
        assert source_folder(recipe, run_dir / "quantize", qrec) == str(run_dir / folder)
    (run_dir / "prune" / "model" / "config.json").unlink()
    qrec = {"source": {"model": "prune", "folder": str(old / "prune/model")}}
    assert source_folder(recipe, run_dir / "quantize", qrec) == str(old / "prune/model")


def test_lengths_beyond_the_position_table_are_refused_by_name():
    """bench.seq_lengths (and task.max_length) past a model's positions: one line naming the field, not a tensor-size
    error mid-measurement. MPNet/RoBERTa skip pad_token_id + 1 rows of their table (514 -> 512 tokens)."""
    from transformers import BertConfig, MPNetConfig

    from compress.modeling import check_length, max_positions

    assert max_positions(BertConfig(max_position_embeddings=128)) == 128
    assert max_positions(MPNetConfig(max_position_embeddings=514)) == 512
    check_length(MPNetConfig(max_position_embeddings=514), 512, "r.yaml: bench.seq_lengths", "the model")
    with pytest.raises(CompressError, match=r"r\.yaml: bench\.seq_lengths: 513 tokens exceed the benchmarked model's "
                                            r"512 positions"):
        check_length(MPNetConfig(max_position_embeddings=514), 513, "r.yaml: bench.seq_lengths",
                     "the benchmarked model")


def test_ctrl_c_does_not_reach_a_timing_worker_its_parent_ends_it():
    """Ctrl-C reaches the whole process group: a worker still importing numpy printed a 40-line KeyboardInterrupt
    traceback above the parent's one-line "interrupted". The worker ignores SIGINT (its parent, unwinding, kills it)."""
    import signal
    import subprocess
    import sys

    from compress.bench import _die_with_parent

    worker = subprocess.Popen([sys.executable, "-c", "import signal, time; print(signal.getsignal(signal.SIGINT) == "
                               "signal.SIG_IGN, flush=True); time.sleep(0.5); print('still here')"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
    assert worker.stdout.readline().strip() == "True"
    worker.send_signal(signal.SIGINT)
    out, err = worker.communicate(timeout=30)
    assert (worker.returncode, out.strip(), err) == (0, "still here", "")


def test_a_sigterm_while_the_worker_starts_stops_the_worker(tmp_path, monkeypatch):
    """SIGTERM raised (as the CLI unwinds it) inside Popen, as the worker was starting, left the worker running, and
    reading a settings file its parent's cleanup had just deleted: a traceback after "terminated". The signal is now
    noted by its Python handler while the worker starts and raised once the worker exists, the worker stopped with
    it. (A signal mask on the starting thread failed in CI: the kernel then gives the process-directed signal to
    another thread, torch's or onnxruntime's, whose delivery can come after the main thread is already waiting on the
    worker, and the worker ran on; unmasked, the main thread takes it, as here with another thread running.)"""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from compress import bench as B

    class Stop(BaseException):
        pass

    def stop(signum, frame):
        raise Stop

    real, started = subprocess.Popen, []

    other = threading.Thread(target=time.sleep, args=(5,), daemon=True)  # as torch's and onnxruntime's threads
    other.start()

    def popen(args, **kwargs):  # a worker that would run a while, and `kill -TERM <run>` arriving as it starts
        started.append(real([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs))
        os.kill(os.getpid(), signal.SIGTERM)
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stop):
            B._worker({"mode": "timing"}, tmp_path, "w", {}, "a test")
        assert signal.getsignal(signal.SIGTERM) is stop  # the handler put back after the worker started
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert started[0].wait(timeout=70) == -signal.SIGKILL  # stopped as the signal came, not left to run its minute


def test_a_timing_worker_dies_with_its_parent(tmp_path):
    """kill -9 of a run must not leave its timing worker loading the CPU under the next run's timings."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = ("import subprocess, sys, time; from compress.bench import _die_with_parent; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], preexec_fn=_die_with_parent); "
            "print(p.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()

    def running() -> bool:
        try:
            return Path(f"/proc/{child}/status").read_text().split("State:")[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False

    deadline = time.time() + 10
    while running() and time.time() < deadline:
        time.sleep(0.1)
    assert not running()


def test_the_torch_fp32_row_gets_the_torch_models_metrics_not_the_onnx_files(tmp_path, tiny_bert_dir, dev,
                                                                             monkeypatch):
    """The bench reuses the quantize stage's dev metrics where they are the same model's: quantize.json's
    ``fp32.metrics`` are model.onnx's own (since the record names that file), so they are not the torch model's, which
    may differ on near-ties within the parity tolerance; the torch_fp32 row took them as its own."""
    from compress.data import GLUE_TASKS
    from compress.evaluate import predict
    from compress.metrics import compute_metrics
    import compress.bench as B
    import compress.quantize as Q

    model, tokenizer = load_trained(tiny_bert_dir)
    qdir = tmp_path / "quantize"
    qdir.mkdir()
    collator = Collator({"": tokenizer})
    labels = np.asarray(dev["label"])
    real = flip_first_onnx_scores(monkeypatch)
    rec = quantize_model(model, dev, labels, ["accuracy"], collator,
                         QuantizeConfig(modes=["dynamic"], max_drop=100.0, optimize=False, ort_format=False,
                                        parity_atol=1.0e3, parity_min_agreement=0.1), qdir,
                         calib_rows=dev, sens_rows=dev.select(range(4)))
    monkeypatch.setattr(Q, "onnx_predict", real)
    rec["source"] = {"model": "teacher", "folder": str(tiny_bert_dir)}
    tokenizer.save_pretrained(qdir / "tokenizer")
    torch_metrics = compute_metrics(["accuracy"], predict(model, dev, collator), labels)
    assert rec["fp32"]["metrics"] != torch_metrics

    class Scored(Exception):
        pass

    def stop(artifacts, *args, **kwargs):  # the dev metrics are set before timing starts: no timing needed here
        raise Scored(artifacts)

    monkeypatch.setattr(B, "measure_in_fresh_process", stop)
    cfg = BenchConfig(threads=[1], batch_sizes=[], seq_lengths=[], dev_rows=2, peers=["torch_fp32"], isolate=False)
    with pytest.raises(Scored) as e:
        bench(qdir, rec, str(tiny_bert_dir), dev, GLUE_TASKS["sst2"], cfg, tmp_path / "bench", [])
    arts = e.value.args[0]
    assert arts["torch_fp32"]["metrics"] == torch_metrics


def test_bench_stage_revision_redoes_run_folders_whose_torch_row_took_the_onnx_metrics(tmp_path, glue_dir,
                                                                                       monkeypatch):
    """The bench stage's outputs changed meaning with the same inputs and config (its torch_fp32 row's dev metrics
    were model.onnx's, reused from quantize.json's fp32.metrics; they are now the torch model's): its fingerprint
    carries a revision, so a run folder's finished bench stage is redone, not reused with the onnx numbers."""
    import compress.pipeline as pl
    from compress.config import Recipe

    recipe = from_dict(Recipe, {
        "name": "b", "runs_dir": str(tmp_path / "runs"),
        "task": {"name": "sst2", "data_dir": str(glue_dir / "SST-2"), "max_length": 32},
        "teacher": {"model": "minilm-l6"}, "quantize": {"modes": ["dynamic"]}, "bench": {}}, file="recipe.yaml")
    payloads = []
    monkeypatch.setattr(pl, "fingerprint", lambda payload: payloads.append(payload) or f"fp{len(payloads)}")
    stages = {s.name: s for s in pl.STAGES}
    pl._fingerprint(recipe, stages["bench"], {"quantize": {"outputs": {"quantize.json": "ab"}}})
    assert payloads[0].get("revision") == stages["bench"].revision == 2


@pytest.mark.parametrize("spin", [False, True])
def test_the_memory_probe_runs_with_the_benchs_spin_setting(spin, tmp_path, monkeypatch):
    """The peak-RSS probe's job carried no spin setting, so its ORT session always spun (and torch's OMP threads
    waited actively) whatever ``bench.spin`` said; it follows the setting now, in the session and the environment."""
    from compress import bench as B

    job = B.probe_job("onnx_fp32", {"kind": "onnx", "path": "m.onnx"}, BenchConfig(threads=[2], spin=spin),
                      [{"input_ids": [101, 102]}], 30522, [(1, 32), (8, 128)])
    assert job["spin"] is spin and job["largest"] == (8, 128) and job["threads"] == [2]
    seen = {}
    monkeypatch.setattr(B, "_worker", lambda spec, workdir, stem, env, what, module: seen.update(env, module=module)
                        or {})
    B.run_isolated(job, tmp_path)
    assert seen["OMP_WAIT_POLICY"] == ("ACTIVE" if spin else "PASSIVE") and seen["module"] == "compress.probe"


def test_torchs_idle_threads_stop_spinning_soon_under_spin(tmp_path):
    """``spin: true`` set OMP_WAIT_POLICY=ACTIVE alone: libgomp then spins 30 billion times, so after a torch peer's
    forward its threads kept both cores busy through the ONNX models' turns of the same timing process. With the
    bounded spin count of `compress.bench.omp_env` an idle second costs next to no CPU time."""
    import os
    import subprocess
    import sys

    from compress import bench as B

    script = ("import resource, time, torch\n"
              "torch.set_num_threads(2)\n"
              "x = torch.randn(512, 512)\n"
              "for _ in range(20):\n"
              "    x @ x\n"
              "before = resource.getrusage(resource.RUSAGE_SELF)\n"
              "time.sleep(1.0)\n"
              "after = resource.getrusage(resource.RUSAGE_SELF)\n"
              "print(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "2", **B.omp_env(True)}
    idle = float(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert idle < 0.2, f"{idle:.2f} CPU-seconds in one idle second"
    assert B.omp_env(False) == {"OMP_WAIT_POLICY": "PASSIVE"} and "GOMP_SPINCOUNT=300000" in B.spin_protocol(True)


def test_a_peers_memory_is_probed_in_the_session_it_is_timed_in(monkeypatch):
    """The Optimum peer is timed in a session with ORT's stock settings (every fusion on), but its peak RSS was probed
    in one with ours (SkipLayerNormalization off): the memory of another graph than the one timed."""
    from compress import bench as B, probe

    opened = []
    monkeypatch.setattr(probe, "OnnxRunner", lambda path, threads, spin, stock=False: opened.append(stock) or None)
    for stock in (True, False):
        art = {"kind": "onnx", "path": "m.onnx", **({"peer": True, "stock": True} if stock else {})}
        job = B.probe_job("optimum_avx512_vnni" if stock else "int8_dynamic", art, BenchConfig(), [], 30522, [])
        assert job["stock"] is stock
        B.make_runner(job, 1, {}, False)
        B.make_runner(art, 1, {}, False)
    assert opened == [True, True, False, False]


def test_artifacts_of_different_tokenizers_are_timed_in_one_pass_each_on_its_own_ids(monkeypatch, dev):
    """`measure` took one tokenization of dev for every artifact, so the report timed a teacher of another tokenizer
    (MPNet's, beside BERT-vocabulary students) in a pass of its own. Several tokenizations of the same rows: each
    artifact reads the one its ``dev_set`` names, in one pass; tokenizations of other row counts are refused."""
    import compress.bench as B

    seen = {}
    first = lambda name, feeds: seen.setdefault(name, []).append(int(feeds["input_ids"][0, 0]))  # noqa: E731
    monkeypatch.setattr(B, "make_runner", lambda art, threads, models, spin: FakeRunner(art["name"], first))
    shifted = dev.map(lambda r: {"input_ids": [i + 4 for i in r["input_ids"]] + [0]})  # MPNet's ids: BERT's + 4
    arts = {"student": {"kind": "onnx", "name": "student", "dev_set": "bert"},
            "teacher": {"kind": "onnx", "name": "teacher", "dev_set": "mpnet"}}
    cfg = BenchConfig(threads=[1], batch_sizes=[], seq_lengths=[], dev_rows=3, warmup=0, rounds=1)
    results = B.measure(arts, {"bert": dev, "mpnet": shifted}, cfg, {})
    assert seen["student"] == [dev[i]["input_ids"][0] for i in range(3)]
    assert seen["teacher"] == [dev[i]["input_ids"][0] + 4 for i in range(3)]
    mean = sum(len(dev[i]["input_ids"]) for i in range(3)) / 3
    assert results["student"][0]["seq"] == f"real (mean {mean:.1f})"
    assert results["teacher"][0]["seq"] == f"real (mean {mean + 1:.1f})"
    with pytest.raises(CompressError, match="dev tokenizations of different lengths"):
        B.measure(arts, {"bert": dev, "mpnet": shifted.select(range(2))}, BenchConfig(dev_rows=0), {})


def test_the_machine_a_latency_was_timed_on_is_compared_on_what_manifests_record(monkeypatch):
    """A stage manifest's env (host, versions) against this machine: a changed CPU, core count or onnxruntime is
    named; keys an older manifest lacks are not counted as changed; no env at all says nothing."""
    import os

    import compress.manifest as m

    now = m.timing_machine()
    assert set(now) == set(m.TIMING_KEYS) and now["cores"] == len(os.sched_getaffinity(0))
    env = {"host": {"cpu": now["cpu"], "cores": now["cores"], "torch_threads": 1, "platform": "x"},
           "versions": {"onnxruntime": now["onnxruntime"], "torch": now["torch"]}}
    assert m.other_machine(env) is None and m.other_machine(None) is None and m.other_machine({}) is None
    assert m.other_machine({"host": "laptop", "versions": ["x"]}) is None  # a hand-edited env: a TypeError before
    env["host"]["cores"] = now["cores"] + 14
    env["versions"]["onnxruntime"] = "1.0.0"
    assert m.other_machine(env) == (f"cores: {now['cores'] + 14} -> {now['cores']}; "
                                    f"onnxruntime: 1.0.0 -> {now['onnxruntime']}")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two cores to pin a process to one")
def test_a_process_pinned_to_fewer_cores_is_another_machine_for_latencies():
    """Cores are those the process may run on (taskset, a container's cpuset), not the machine's: a run pinned to one
    core reused the bench and report latencies timed on two, and recorded "cores: 2" beside its own timings."""
    import subprocess
    import sys

    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "from compress.manifest import host, other_machine, timing_machine\n"
            "print(host()['cores'], timing_machine()['cores'], other_machine({'host': {'cores': 2}}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "1", "cores:", "2", "->", "1"]


def test_the_memory_probe_runs_the_largest_thread_count_spin_and_shape_and_reports_the_high_water_mark(monkeypatch):
    """The peak-RSS probe opens its runner with the most threads the bench times (the biggest arena), with the bench's
    spin setting, runs every dev row and then the largest fixed shape, and reports /proc's high-water mark (VmHWM),
    not the RSS at the end."""
    from compress import probe

    opened, fed = [], []

    class Runner:
        names = ["input_ids", "attention_mask", "token_type_ids"]

        def __call__(self, feeds):
            fed.append(feeds["input_ids"].shape)

    monkeypatch.setattr(probe, "make_runner", lambda spec, threads, models, spin: opened.append((threads, spin))
                        or Runner())
    mb = {"VmRSS": 100.0, "VmHWM": 300.0, "RssAnon": 150.0, "RssFile": 50.0}
    monkeypatch.setattr(probe, "_status_mb", lambda field, fallback=True: mb[field])
    rows = [{"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "token_type_ids": [0, 0, 0]},
            {"input_ids": [101, 102], "attention_mask": [1, 1]}]
    out = probe.probe_memory({"kind": "onnx", "path": "m.onnx", "dev_rows": rows, "threads": [1, 4, 2],
                              "largest": [3, 16], "spin": False, "vocab_size": 30522})
    assert opened == [(4, False)]
    assert fed == [(1, 3), (1, 2), (3, 16)]
    assert out["peak_rss_mb"] == 300.0 and out["rss_before_load_mb"] == 100.0
    assert (out["rss_anon_end_mb"], out["rss_file_end_mb"]) == (150.0, 50.0)


def test_status_mb_without_proc_reads_the_peak_as_predict_py_does(monkeypatch):
    """Without /proc the peak is `bundle_predict.peak_rss_mb`'s (getrusage in each system's unit: the probe read
    macOS's bytes as KiB, 1024x too much; tested with it)."""
    from compress import bundle_predict, probe

    monkeypatch.setattr(probe.Path, "read_text", lambda self, *a, **k: (_ for _ in ()).throw(OSError("no /proc")))
    monkeypatch.setattr(bundle_predict, "peak_rss_mb", lambda: 300.0)
    assert probe._status_mb("VmHWM") == 300.0
    assert probe._status_mb("RssAnon", fallback=False) is None


def test_every_artifact_peers_included_is_timed_at_each_thread_count_and_throughput_counts_sequences(monkeypatch,
                                                                                                     dev):
    """Each thread count's runners, peers' too, are made with that count; a fixed shape's throughput is sequences/s
    (batch x runs/s), not batches/s."""
    import compress.bench as B

    made = []

    def make(art, threads, models, spin):
        made.append((art["name"], threads))
        return FakeRunner()

    monkeypatch.setattr(B, "make_runner", make)
    arts = {"ours": {"kind": "onnx", "name": "ours", "ours": True},
            "peer": {"kind": "onnx", "name": "peer", "peer": True}}
    cfg = BenchConfig(threads=[1, 2], batch_sizes=[4], seq_lengths=[8], dev_rows=2, warmup=0, repeats=3, min_runs=3,
                      rounds=1)
    results = B.measure(arts, dev, cfg, {})
    assert sorted(made) == [("ours", 1), ("ours", 2), ("peer", 1), ("peer", 2)]
    for rows in results.values():
        assert sorted(r["threads"] for r in rows) == [1, 1, 2, 2]
        fixed = [r for r in rows if r["input"] == "b4xs8"]
        assert fixed and all(r["throughput_seq_s"] == round(4 * 1000.0 / r["mean_ms"], 2) for r in fixed)


def test_ours_is_the_fastest_shippable_int8_and_speedups_pair_rows_of_the_same_thread_count():
    from compress.bench import best_int8, ratios

    def art(p50s, **extra):  # p50s: threads -> dev p50
        return {"metrics": {"accuracy": 0.9}, **extra,
                "results": [{"input": "dev", "threads": t, "p50_ms": v} for t, v in p50s.items()]}

    arts = {"int8_slow": art({1: 4.0, 2: 2.0}, ours=True, shippable=True),
            "int8_fast": art({1: 2.0, 2: 1.0}, ours=True, shippable=True),
            "int8_faster_unshippable": art({1: 1.0, 2: 0.5}, ours=True, shippable=False),
            "onnx_fp32": art({1: 8.0, 2: 6.0})}
    assert best_int8(arts) == "int8_fast"
    speed = ratios(arts, "int8_fast")["onnx_fp32"]["speedup_p50"]
    assert speed == {"dev@1t": 4.0, "dev@2t": 6.0}


@pytest.mark.parametrize("spin", [False, True])
def test_the_accuracy_pass_opens_onnx_sessions_with_the_benchs_spin_setting(spin, monkeypatch):
    """bench.spin: false (idle threads sleep) held for the timing and memory processes, but the accuracy pass in the
    stage's own process opened every ONNX session spinning."""
    import compress.export
    import compress.ort_session
    from compress.bench import evaluate_artifact

    seen = []

    class Sess:
        def get_inputs(self):
            return []

    def session(path, threads=None, spin=True, stock=False):
        seen.append(spin)
        return Sess()

    monkeypatch.setattr(compress.ort_session, "session", session)
    monkeypatch.setattr(compress.export, "onnx_predict", lambda *a, **k: np.zeros((2, 2), dtype=np.float32))
    dev = {"label": [0, 0]}
    assert evaluate_artifact({"kind": "onnx", "path": "m.onnx"}, dev, None, ["accuracy"], 2, {}, spin)
    assert seen == [spin]


def test_forward_flops_count_the_attention_matmuls(tiny_bert_dir):
    """torch's flop counter has no formula for the CPU kernel of scaled_dot_product_attention, BERT's default
    attention: its two matmuls went uncounted and GOP/s was low. The count is now the one of the same model with eager
    attention, whose matmuls the counter sees."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForSequenceClassification

    from compress.bench import forward_flops

    eager = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, attn_implementation="eager").eval()
    ids = torch.ones((2, 16), dtype=torch.long)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        eager(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert {str(k) for k in counter.get_flop_counts()["Global"]} == {"aten.addmm", "aten.bmm"}
    assert forward_flops(str(tiny_bert_dir), [(2, 16), (1, 8)])["b2xs16"] == counter.get_total_flops()
