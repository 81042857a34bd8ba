"""The whole pipeline under torchrun with 2 CPU processes (what `accelerate launch --multi_gpu` does on GPUs): every
stage completes, the stages that do not train run once (on the main process), the run prints one copy of its output,
and a run folder in use stops every process with one line."""

from __future__ import annotations

import fcntl
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _recipe(tmp_path: Path, model: Path, glue_dir: Path) -> Path:
    recipe = {
        "name": "tiny", "seed": 0, "runs_dir": str(tmp_path / "runs"),
        "task": {"name": "sst2", "data_dir": str(glue_dir / "SST-2"), "max_length": 32, "max_train_samples": 160,
                 "max_eval_samples": 48, "holdout": 0.1},
        "teacher": {"model": str(model), "max_steps": 3, "batch_size": 8, "precision": "fp32"},
        "students": [{"name": "s", "kind": "layer_drop", "layers": 1,
                      "train": {"max_steps": 3, "batch_size": 8, "precision": "fp32", "checkpoint_every": 1}}],
        # two steps with resumable checkpoints: every process reaches the finished-step snapshot (written once)
        "prune": {"keep_macs": 0.5, "steps": 2, "calibration_batches": 2, "calibration_batch_size": 8,
                  "recover": {"max_steps": 2, "batch_size": 8, "precision": "fp32", "checkpoint_every": 1}},
        "quantize": {"modes": ["dynamic"], "calibration": {"samples": 8}, "max_drop": 50.0, "sensitivity_rows": 8},
        "bench": {"threads": [1], "batch_sizes": [1], "seq_lengths": [32], "dev_rows": 4, "max_seconds": 0.05,
                  "repeats": 2, "rounds": 1, "peers": []},
        "report": {}, "bundle": {"pick": "fastest"}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _torchrun(recipe: Path, port: int, timeout: int = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port), "-m",
                           "compress", "run", str(recipe)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_pipeline_under_two_processes(tmp_path, tiny_bert_dir, glue_dir):
    recipe = _recipe(tmp_path, tiny_bert_dir, glue_dir)
    run = _torchrun(recipe, 29531)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = run.stdout
    for stage in ("teacher", "distill", "prune", "quantize", "bench", "report", "bundle"):
        assert out.count(f"[{stage}] running ->") == 1 and out.count(f"[{stage}] done in") == 1, stage
        assert (tmp_path / "runs" / "tiny" / stage / "manifest.json").is_file(), stage
    assert out.count("[bench] onnx_fp32:") == 1  # timed once, by the main process alone
    # the bundle scored as it ships (bundle.verify), once, on the quantize stage's 48 dev rows: the record's score
    assert out.count("[bundle] verified as shipped: accuracy") == 1
    shipped = json.loads((tmp_path / "runs" / "tiny" / "bundle" / "tiny-sst2-int8" / "manifest.json").read_text())
    record = json.loads((tmp_path / "runs" / "tiny" / "quantize" / "quantize.json").read_text())
    assert shipped["verified"]["rows"] == 48 and shipped["verified"]["points_apart"] == 0.0
    assert shipped["verified"]["metrics"] == record["int8"]["dynamic"]["metrics"]
    manifests = {stage: json.loads((tmp_path / "runs" / "tiny" / stage / "manifest.json").read_text())
                 for stage in ("teacher", "distill", "prune", "quantize")}
    assert [m.get("processes") for m in manifests.values()] == [2, 2, 2, None]  # who trained it, on record
    assert out.count("run folder:") == 1
    folder = tmp_path / "runs" / "tiny"
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name or p.name == ".checkpoints"]
    # the teacher labelled the training rows once between the two processes (half each), in row order
    assert "teacher logits (160 rows), process 1 of 2" in run.stderr
    assert "teacher logits (160 rows), process 2 of 2" in run.stderr
    # progress bars once, the main process's: the recovery's logits and datasets' own bars were drawn by both (2 and
    # 25 bars started here; counted by their first 0% line, drawn once a bar, where a 100% line may come twice)
    started = {bar: len(re.findall(rf"{bar}: +0%", run.stderr)) for bar in ("recovery teacher logits", "tokenizing")}
    assert started == {"recovery teacher logits": 1, "tokenizing": 16}, started
    from compress.config import load_recipe
    from compress.data import Collator, load_task, tokenize
    from compress.evaluate import predict
    from compress.modeling import load_trained

    loaded = load_recipe(recipe)
    teacher, tok = load_trained(folder / "teacher" / "model")
    rows = tokenize(load_task(loaded.task, seed=loaded.seed).train, tok, 32)
    assert len(rows) == 160
    expected = predict(teacher, rows, Collator({"": tok}))
    assert np.allclose(np.load(folder / "distill" / "teacher_logits.npy"), expected, atol=1e-4)
    # prune recovery (2 steps x 2 x 8 rows on each process) labelled the rows both processes read: a row missed stops it
    pruning = json.loads((folder / "prune" / "pruning.json").read_text())
    assert pruning["recovery_logits"] == "computed" and 32 <= pruning["recovery_labelled"] <= 64 < 160

    # the run folder held by another job: every process stops, one line says why
    (tmp_path / "held").mkdir()
    held = _recipe(tmp_path / "held", tiny_bert_dir, glue_dir)
    (tmp_path / "held" / "runs" / "tiny").mkdir(parents=True)
    with open(tmp_path / "held" / "runs" / "tiny" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        refused = _torchrun(held, 29532, timeout=180)
    assert refused.returncode != 0
    errors = [line for line in (refused.stdout + refused.stderr).splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "in use by another compress run" in errors[0], refused.stderr[-3000:]
    assert "[teacher] running" not in refused.stdout and "[rank1]" not in refused.stderr


def _lone_stage_run(rank: int, port: int, timeout_s: int, stage: str, folder: str):
    """One of 2 processes (gloo, a process group timing out after ``timeout_s``) running a pipeline of one stage that
    does not train, `stage` (a function of this module); returns run_pipeline's result."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "ACCELERATE_USE_CPU": "1"})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    torch._C._get_accelerator = lambda: torch.device("cuda")  # as on a GPU host (see test_teacher's _late_rng_worker)
    import compress.pipeline as pipeline
    from compress.config import load_recipe

    pipeline.plan = lambda recipe, until=None: [pipeline.Stage("lone", f"{__name__}:{stage}", ("task",))]
    return pipeline.run_pipeline(load_recipe(Path(folder) / "wait.yaml"))


def _write_recipe(tmp_path: Path, glue_dir: Path) -> None:
    (tmp_path / "wait.yaml").write_text(yaml.safe_dump({
        "name": "wait", "runs_dir": str(tmp_path / "runs"), "teacher": {"model": "random"},
        "task": {"name": "sst2", "data_dir": str(glue_dir / "SST-2"), "max_train_samples": 16}}))


def _slow_stage(recipe, out: Path, inputs: dict) -> dict:
    """A stage that does not train and outlasts the process group's timeout (see the test below)."""
    import time

    time.sleep(8)
    (out / "done.txt").write_text("ok")
    return {"metrics": {}}


def _wait_worker(rank: int, port: int, folder: str) -> None:
    """A process group whose timeout (4 s) is shorter than the main process's lone stage (8 s), as NCCL's 10 minutes
    are shorter than a base-size model's bench."""
    import torch.distributed as dist

    try:
        done = _lone_stage_run(rank, port, 4, "_slow_stage", folder)
        Path(folder, f"{rank}.json").write_text(json.dumps(sorted(done)))
    finally:
        dist.destroy_process_group()


def test_other_processes_outwait_a_lone_stage_longer_than_the_process_group_timeout(tmp_path, glue_dir):
    """The other processes wait for a stage the main process runs alone in a barrier of their own (24 h): the process
    group's timeout, which ended them before, stays for the training collectives."""
    import torch.multiprocessing as mp

    _write_recipe(tmp_path, glue_dir)
    mp.spawn(_wait_worker, args=(29533, str(tmp_path)), nprocs=2, join=True)
    assert [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)] == [["lone"], ["lone"]]
    assert (tmp_path / "runs" / "wait" / "lone" / "done.txt").read_text() == "ok"


def _signalling_stage(recipe, out: Path, inputs: dict) -> dict:
    """The main process's lone stage: Ctrl-C to the waiting process once it waits, then 8 s of work."""
    import signal
    import time

    folder = Path(recipe.path).parent
    time.sleep(1)
    (folder / "sent.txt").write_text(str(time.time()))
    os.kill(int((folder / "1.pid").read_text()), signal.SIGINT)
    time.sleep(8)
    return {"metrics": {}}


def _interrupted_worker(rank: int, port: int, folder: str) -> None:
    import signal
    import time

    # Ctrl-C raises, as in a terminal: a suite started in the background by a shell without job control (`make test
    # &` in a script, nohup) hands SIGINT down ignored, and this process then rightly went on to the end
    signal.signal(signal.SIGINT, signal.default_int_handler)
    Path(folder, f"{rank}.pid").write_text(str(os.getpid()))
    try:
        _lone_stage_run(rank, port, 60, "_signalling_stage", folder)
        outcome = "done"
    except BaseException as e:
        outcome = type(e).__name__
    Path(folder, f"{rank}.json").write_text(json.dumps([outcome, time.time()]))
    os._exit(0)


def test_a_waiting_process_answers_ctrl_c_at_once(tmp_path, glue_dir):
    """A process waiting in gloo's barrier for the main process's lone stage (bench, report: minutes) runs no Python
    signal handler: it ignored Ctrl-C and SIGTERM until that stage ended. The barrier is polled now."""
    import torch.multiprocessing as mp

    _write_recipe(tmp_path, glue_dir)
    mp.spawn(_interrupted_worker, args=(29537, str(tmp_path)), nprocs=2, join=True)
    outcome, at = json.loads((tmp_path / "1.json").read_text())
    assert outcome == "KeyboardInterrupt" and at - float((tmp_path / "sent.txt").read_text()) < 5
    assert json.loads((tmp_path / "0.json").read_text())[0] == "CompressError"  # its peer gone at the next barrier


def _failing_stage(recipe, out: Path, inputs: dict) -> dict:
    from compress.errors import CompressError

    raise CompressError("the lone stage failed")


def _fail_worker(rank: int, port: int, folder: str) -> None:
    try:
        _lone_stage_run(rank, port, 60, "_failing_stage", folder)
    except BaseException as e:
        Path(folder, f"{rank}.err").write_text(f"{type(e).__name__}: {e}")
    os._exit(0)  # the main process leaves on its error without tearing the group down, as `compress.cli` does


def test_a_lone_stage_failing_on_the_main_process_stops_the_others_with_a_compress_error(tmp_path, glue_dir):
    """The waiting processes meet gloo's "Connection closed by peer" when the main process leaves on an error in a
    stage it runs alone; it surfaces as a CompressError (one line, said by the main process), not a [rank1]
    traceback."""
    import torch.multiprocessing as mp

    _write_recipe(tmp_path, glue_dir)
    mp.spawn(_fail_worker, args=(29535, str(tmp_path)), nprocs=2, join=True)
    errors = [(tmp_path / f"{r}.err").read_text() for r in range(2)]
    assert errors[0] == "CompressError: the lone stage failed"
    assert errors[1].startswith("CompressError: another process of this run stopped"), errors[1]


def test_accelerate_launch_cpu_on_a_gpu_host_trains_on_the_cpu(monkeypatch):
    """`accelerate launch --cpu` (ACCELERATE_USE_CPU=1) on a GPU host, as seen on an H200: the run's process state was
    made for the GPU (PartialState reads no such variable) and fit's Accelerator, told "cpu" by it, refused to start
    ("AcceleratorState has already been initialized and cannot be changed"). Precision `auto` asks the CPU then."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from compress import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU host
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    AcceleratorState._reset_state(True)  # this process's state, made by earlier tests: made anew here
    try:
        assert train.process_device() == torch.device("cpu")
        assert Accelerator().device == torch.device("cpu")  # fit's
        monkeypatch.setattr("compress.manifest.cpu_flags", lambda: set())
        assert train.resolve_precision("auto") == "fp32"  # this CPU has no bf16 units: the GPU's are not asked
    finally:
        AcceleratorState._reset_state(True)
