"""Distillation behaviour: token alignment on real SST-2/RTE rows, a tiny student learning from a tiny teacher,
different tokenizers, NaN stop, kill -9 + resume, and 2-process DDP against 1 process at twice the batch."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import BertForSequenceClassification, MPNetConfig, MPNetForSequenceClassification, MPNetTokenizer

from conftest import tiny_bert_config
from compress.config import StudentConfig, TaskConfig, from_dict
from compress.data import Collator, load_task, tokenize
from compress.distill.align import aligned_rows, id_map, same_tokenizer
from compress.distill.objective import Distiller, KDObjective, resolve_matches
from compress.distill.stage import KDCollator, distill, labelling, logits_key
from compress.errors import CompressError
from compress.evaluate import evaluate
from compress.train import best_scores
from students import build_student

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def shifted_tokenizer(tmp_path_factory, minilm_dir):
    """An MPNet-style tokenizer over MiniLM's WordPieces: <s>, <pad>, </s>, <unk> first (every id shifted by 4),
    <mask> last, and MPNet's specials (<s> A </s>, pairs joined by </s></s>)."""
    folder = tmp_path_factory.mktemp("mpnet-like")
    words = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (folder / "vocab.txt").write_text("\n".join(["<s>", "<pad>", "</s>", "<unk>"] + words + ["<mask>"]) + "\n",
                                      encoding="utf-8")
    return MPNetTokenizer(str(folder / "vocab.txt"), do_lower_case=True)


def _batches(ds, collator, size):
    return [collator([ds[i] for i in range(s, min(s + size, len(ds)))]) for s in range(0, len(ds), size)]


def test_tokenizers_of_one_vocabulary_that_tokenize_differently_are_not_the_same(minilm_dir, tokenizer, tmp_path):
    """The vocabulary, specials and class alone called a copy that keeps accents (ids differ on "café"), or one made
    one-token-type (no token_type_ids for a pair), the same: the teacher then labelled the student's inputs, and
    those logits were cached for other students. A saved and reloaded copy stays the same."""
    from transformers import AutoTokenizer

    from compress.modeling import one_token_type

    accents = AutoTokenizer.from_pretrained(minilm_dir, strip_accents=False)
    assert accents("café")["input_ids"] != tokenizer("café")["input_ids"]
    one_type = AutoTokenizer.from_pretrained(minilm_dir)
    one_token_type(one_type, SimpleNamespace(type_vocab_size=1))
    assert not same_tokenizer(tokenizer, accents) and not same_tokenizer(tokenizer, one_type)
    tokenizer.save_pretrained(tmp_path / "copy")
    assert same_tokenizer(tokenizer, AutoTokenizer.from_pretrained(tmp_path / "copy"))
    # judged on what they give, not their files: a slow copy saved again, one of another model_max_length, a
    # tokenizer.json converted from vocab.txt (another post-processor kind, the same ids)
    slow = AutoTokenizer.from_pretrained(minilm_dir, use_fast=False)
    slow.save_pretrained(tmp_path / "slow")
    assert same_tokenizer(slow, AutoTokenizer.from_pretrained(tmp_path / "slow", use_fast=False))
    assert same_tokenizer(slow, AutoTokenizer.from_pretrained(minilm_dir, use_fast=False, model_max_length=128))
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    assert same_tokenizer(tokenizer, AutoTokenizer.from_pretrained(tmp_path))


def test_alignment_of_minilm_and_shifted_ids_on_real_rows(glue_dir, tokenizer, shifted_tokenizer):
    assert not same_tokenizer(tokenizer, shifted_tokenizer) and same_tokenizer(tokenizer, tokenizer)
    table = id_map(shifted_tokenizer, tokenizer)
    assert table[shifted_tokenizer.cls_token_id] == tokenizer.cls_token_id
    assert table[shifted_tokenizer.sep_token_id] == tokenizer.sep_token_id
    assert table[shifted_tokenizer.convert_tokens_to_ids("movie")] == tokenizer.convert_tokens_to_ids("movie")
    # single sentences (SST-2): same WordPieces, ids shifted, different specials -> every row aligns
    sst = load_task(TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2"), max_train_samples=200, holdout=0.0))
    ds = tokenize(tokenize(sst.train, tokenizer, 64), shifted_tokenizer, 64, prefix="t_")
    assert ds[0]["input_ids"][1:-1] != ds[0]["t_input_ids"][1:-1]  # really different ids
    collator = Collator({"": tokenizer, "t_": shifted_tokenizer})
    rows = torch.cat([aligned_rows(b["input_ids"], b["attention_mask"], b["t_input_ids"], b["t_attention_mask"],
                                   table) for b in _batches(ds, collator, 16)])
    assert rows.all(), f"{int((~rows).sum())} of 200 SST-2 rows did not align"
    # a shifted copy of the student ids (an off-by-one tokenization) does not align anywhere
    b = _batches(ds, collator, 16)[0]
    assert not aligned_rows(b["input_ids"], b["attention_mask"], b["t_input_ids"] + 1, b["t_attention_mask"],
                            table).any()
    # sentence pairs (RTE): MPNet joins them with </s></s>, BERT with one [SEP] -> no row aligns
    rte = load_task(TaskConfig(name="rte", data_dir=str(glue_dir / "RTE"), max_train_samples=32, holdout=0.0))
    pairs = tokenize(tokenize(rte.train, tokenizer, 128), shifted_tokenizer, 128, prefix="t_")
    pb = collator([pairs[i] for i in range(len(pairs))])
    assert not aligned_rows(pb["input_ids"], pb["attention_mask"], pb["t_input_ids"], pb["t_attention_mask"],
                            table).any()
    # the same tokens at every real student position, but the teacher's row goes on one token longer: not aligned
    ids, mask = torch.tensor([[1, 2, 3, 0], [1, 2, 3, 0]]), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    t_ids, t_mask = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert aligned_rows(ids, mask, t_ids, t_mask, torch.arange(8)).tolist() == [False, True]


def _tiny_teacher(**kw):
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(num_hidden_layers=4, **kw))


def _sst2(glue_dir, n=128, holdout=0.0, dev=32):
    return load_task(TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2"), max_train_samples=n,
                                max_eval_samples=dev, holdout=holdout), seed=0)


def test_tiny_student_distils_and_loss_goes_down(glue_dir, tokenizer):
    teacher = _tiny_teacher().eval()
    with torch.no_grad():
        teacher.classifier.weight.mul_(100.0)  # a confident teacher: its soft labels are worth learning
    data = _sst2(glue_dir, n=96)
    spec = from_dict(StudentConfig, {"name": "s", "kind": "narrow", "layers": 2, "hidden": 16, "heads": 2, "ffn": 32,
                                     "distill": {"layer_map": "uniform",
                                                 "layer_map_features": ["embedding", "hidden", "attention"]},
                                     "train": {"epochs": 4, "batch_size": 16, "lr": 3e-3, "warmup_ratio": 0.0}})
    student = build_student(spec, teacher, tokenizer, data.spec)
    matches = resolve_matches(spec.distill, teacher.config, student.model.config)
    assert [m.key for m in matches] == ["embedding_t0_s0", "hidden_t2_s1", "hidden_t4_s2", "attention_t2_s1",
                                        "attention_t4_s2"]
    assert all(m.project for m in matches if m.feature != "attention")  # 16 -> 32 wide
    ds = tokenize(data.train, tokenizer, 32)
    batch = KDCollator(Collator({"": tokenizer}))([ds[i] for i in range(32)])

    def logs_now():  # the logit and attention terms on a fixed batch (they need no trained projection)
        d = Distiller(student.model, matches, 32).eval()
        on = {k: v.to(student.model.device) if torch.is_tensor(v) else v for k, v in batch.items()}  # (a GPU's)
        with torch.no_grad():
            return KDObjective(teacher, spec.distill, matches, False)(d, on)[1]

    before = logs_now()
    res = distill(teacher, tokenizer, student, spec, data, max_length=32, seed=0)
    assert res.fits["joint"].steps == 24 and res.same_tokenizer and res.align.misaligned_rows == 0
    after = logs_now()
    assert after["kd"] < 0.8 * before["kd"], (before, after)
    assert after["attention_t4_s2"] < before["attention_t4_s2"], (before, after)
    assert not any(p.requires_grad for p in teacher.parameters())
    # asking for attention maps is intended: transformers' "falling back to the manual attention" notice is dropped
    import logging

    log = logging.getLogger(type(student.model).__module__)
    record = lambda msg: logging.LogRecord(log.name, logging.WARNING, "", 0, msg, None, None)  # noqa: E731
    assert not log.filter(record("BertSdpaSelfAttention is used but ... Falling back to the manual attention "
                                 "implementation, but specifying the manual implementation will be required"))
    assert log.filter(record("any other warning"))


def test_different_tokenizers_align_sst2_and_count_rte_pairs(glue_dir, tokenizer, shifted_tokenizer, caplog):
    torch.manual_seed(0)
    teacher = MPNetForSequenceClassification(MPNetConfig(vocab_size=len(shifted_tokenizer), hidden_size=32,
                                                         num_hidden_layers=2, num_attention_heads=4,
                                                         intermediate_size=64, max_position_embeddings=160,
                                                         num_labels=2)).eval()
    spec = from_dict(StudentConfig, {"name": "s", "kind": "narrow", "layers": 1, "hidden": 32, "heads": 4, "ffn": 64,
                                     "distill": {"layer_map": "last"}, "train": {"max_steps": 3, "batch_size": 8}})
    data = _sst2(glue_dir, n=24)
    student = build_student(spec, teacher, tokenizer, data.spec)  # a BERT student with MiniLM's tokenizer
    res = distill(teacher, shifted_tokenizer, student, spec, data, max_length=32, seed=0)
    assert not res.same_tokenizer and res.align.batches == 3 and res.align.misaligned_batches == 0
    rte = load_task(TaskConfig(name="rte", data_dir=str(glue_dir / "RTE"), max_train_samples=24, holdout=0.0), seed=0)
    assert "align" not in caplog.text
    res = distill(teacher, shifted_tokenizer, build_student(spec, teacher, tokenizer, rte.spec), spec, rte,
                  max_length=128, seed=0)
    # every pair row is misaligned: counted, position-wise losses skipped, logit KD still trained, and said so
    assert res.align.batches == 3 and res.align.misaligned_batches == 3 and res.align.misaligned_rows == 24
    assert res.fits["joint"].steps == 3
    assert ("s: no training row's tokenizations align between teacher and student (24 rows; sentence pairs, joined "
            "differently" in caplog.text and "(hidden_t2_s1, attention_t2_s1) taught nothing" in caplog.text)
    # and before the training time is spent (it was said only after), from a probe of the rows as training sees them
    said = [r.getMessage() for r in caplog.records if "align" in r.getMessage()]
    assert len(said) == 2 and said[0].startswith(
        "s: none of the first 24 training rows' tokenizations align between teacher and student (sentence pairs, "
        "joined differently: MPNet with </s></s>, BERT with one [SEP]): the position-wise matches (hidden_t2_s1, "
        "attention_t2_s1) will teach nothing"), said


def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(glue_dir, tokenizer, tmp_path):
    teacher = _tiny_teacher()
    calls = {"n": 0}

    def poison(module, args, output):  # the teacher goes bad on its 6th batch
        calls["n"] += 1
        if calls["n"] >= 6:
            output.logits.fill_(float("nan"))
        return output

    spec = from_dict(StudentConfig, {"name": "s", "layers": 2, "distill": {"layer_map": "last"},
                                     "train": {"max_steps": 10, "batch_size": 8, "checkpoint_every": 2}})
    data = _sst2(glue_dir, n=80)
    student = build_student(spec, teacher, tokenizer, data.spec)
    teacher.register_forward_hook(poison)  # after the copy: the student stays healthy
    with pytest.raises(CompressError, match=r"loss became nan at step 5.*; last good checkpoint \S*joint/step-00000004 "
                                            r"\(lower"):
        distill(teacher, tokenizer, student, spec, data, max_length=32, seed=0, checkpoint_dir=tmp_path / "ck")
    kept = sorted(p.name for p in (tmp_path / "ck" / "joint").glob("step-*"))
    assert kept[-1] == "step-00000004"
    # bad before the first save: no folder is named as a checkpoint (the pipeline then removes the empty one)
    calls["n"] = 6
    student = build_student(spec, _tiny_teacher(), tokenizer, data.spec)
    with pytest.raises(CompressError, match=r"loss became nan at step 0, batch 0; no checkpoint saved yet \(lower"):
        distill(teacher, tokenizer, student, spec, data, max_length=32, seed=0, checkpoint_dir=tmp_path / "ck2")


def _recipe(tmp_path, teacher_dir, runs):
    recipe = {"name": "resume", "seed": 0, "runs_dir": str(runs),
              "task": {"name": "sst2", "data_dir": str(ROOT.parent / "shared" / "data" / "glue" / "SST-2"),
                       "max_length": 32, "max_train_samples": 480, "max_eval_samples": 64, "holdout": 0.05,
                       "holdout_max": 64},
              "teacher": {"model": str(teacher_dir), "max_steps": 2, "batch_size": 16},
              "students": [{"name": "s", "kind": "narrow", "layers": 2, "hidden": 32, "heads": 2, "ffn": 64,
                            "distill": {"layer_map": "uniform"},
                            "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 5,
                                      "eval_every": 20}}]}
    path = tmp_path / f"{runs.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _start(recipe):
    return subprocess.Popen([str(BIN / "compress"), "run", str(recipe), "--stage", "distill"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_resumed_distillation_counts_the_alignment_of_every_batch(glue_dir, tokenizer, tmp_path, monkeypatch):
    """The counts of batches / rows whose tokenizations align (metrics.json `alignment`, and the warning when none
    does) lived in memory only: a run resumed after a crash counted the batches after its checkpoint, and one whose
    intermediate step was done (two_step's marker) counted none. They are kept in the checkpoint and the marker now,
    and a resumed run reports what an uninterrupted one does."""
    data = _sst2(glue_dir, n=64)
    original = KDObjective.__call__
    # two_step: 8 intermediate steps, then the prediction's; a crash after 9 calls leaves only the intermediate
    # step's marker (no prediction checkpoint yet), after 11 a prediction checkpoint too
    for two_step, crash_after in ((False, 5), (True, 9), (True, 11)):
        spec = from_dict(StudentConfig, {"name": "s", "layers": 2, "distill": {"layer_map": "last",
                                                                            "two_step": two_step},
                                         "train": {"max_steps": 8, "batch_size": 8, "checkpoint_every": 2}})

        def run(folder, crash=None):
            calls = []

            def counted(self, model, batch):
                calls.append(1)
                if crash is not None and len(calls) > crash:
                    raise KeyboardInterrupt("a crash")
                return original(self, model, batch)

            monkeypatch.setattr(KDObjective, "__call__", counted)
            teacher = _tiny_teacher().eval()
            student = build_student(spec, teacher, tokenizer, data.spec)
            return distill(teacher, tokenizer, student, spec, data, max_length=32, seed=0, checkpoint_dir=folder)

        clean = run(tmp_path / f"clean-{crash_after}")
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / f"killed-{crash_after}", crash=crash_after)
        resumed = run(tmp_path / f"killed-{crash_after}")
        last = resumed.fits["prediction" if two_step else "joint"]
        assert (last.resumed_from is None) == (crash_after == 9)
        if two_step:  # the intermediate step finished before the crash: its record comes back from its marker (it
            # was left out of metrics.json)
            was, now = clean.fits["intermediate"], resumed.fits["intermediate"]
            assert (now.steps, now.history, now.best_step, now.precision) == (was.steps, was.history, was.best_step,
                                                                            was.precision) and now.steps == 8
        assert resumed.align.as_dict() == clean.align.as_dict() and clean.align.batches == 8 and \
            clean.align.rows == 64, (two_step, resumed.align, clean.align)


def test_kill_9_then_rerun_resumes_to_the_same_result(tiny_bert_dir, tmp_path):
    killed, clean = _recipe(tmp_path, tiny_bert_dir, tmp_path / "killed"), _recipe(tmp_path, tiny_bert_dir,
                                                                                    tmp_path / "clean")
    proc = _start(killed)
    ck = tmp_path / "killed" / "resume" / ".checkpoints" / "distill" / "s" / "joint"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any((p / "trainer.json").is_file() for p in ck.glob("step-*")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "resume" / "distill").exists()
    reference = _start(clean)  # uninterrupted, same seed (runs while the killed one resumes: 2 cores)
    resumed = _start(killed)
    out_r, out_c = resumed.communicate(timeout=300)[0].decode(), reference.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, out_r[-3000:]
    assert reference.returncode == 0, out_c[-3000:]
    metrics_r = yaml.safe_load((tmp_path / "killed" / "resume" / "distill" / "s" / "metrics.json").read_text())
    metrics_c = yaml.safe_load((tmp_path / "clean" / "resume" / "distill" / "s" / "metrics.json").read_text())
    assert metrics_r["train"]["joint"]["resumed_from"] >= 5
    assert metrics_c["train"]["joint"]["resumed_from"] is None
    assert metrics_r["metrics"] == metrics_c["metrics"]
    assert metrics_r["train"]["joint"]["history"] == metrics_c["train"]["joint"]["history"]
    w_r = load_file(tmp_path / "killed" / "resume" / "distill" / "s" / "model" / "model.safetensors")
    w_c = load_file(tmp_path / "clean" / "resume" / "distill" / "s" / "model" / "model.safetensors")
    assert max(float((w_r[k] - w_c[k]).abs().max()) for k in w_c) < 1e-6  # dropout included: same RNG draws
    assert not ck.parent.exists()  # finished: checkpoints removed


@pytest.mark.parametrize("augment", [False, True])
def test_a_run_stopped_in_the_second_student_does_not_train_the_first_again(tiny_bert_dir, tmp_path, monkeypatch,
                                                                            augment):
    """Two students; the stage is stopped (Ctrl-C here; a crash or kill -9 leaves the same) while the second trains.
    The rerun restores the finished first student instead of training it again and ends as an uninterrupted run.
    With augmented copies, the second student trains on the first's transfer set: neither made nor labelled again."""
    import compress.distill.stage as DS
    from compress.config import load_recipe
    from compress.pipeline import run_pipeline

    def recipe(runs):
        path = _recipe(tmp_path, tiny_bert_dir, tmp_path / runs)
        r = yaml.safe_load(path.read_text())
        first = r["students"][0]
        r["students"] = [{**first, "train": {**first["train"], "epochs": 1, "checkpoint_every": None}},
                         {**first, "name": "t", "layers": 1, "train": {**first["train"], "checkpoint_every": None}}]
        for student in r["students"]:  # logit KD only: the teacher's logits are computed once, for both students
            student["distill"] = {"augment": {"copies": 1}} if augment else {}
        path.write_text(yaml.safe_dump(r))
        return load_recipe(path)

    clean = run_pipeline(recipe("clean"), until="distill")["distill"]
    calls, real = [], DS.distill

    def distill(teacher, tok, student, spec, *args, **kwargs):
        calls.append(spec.name)
        if calls == ["s", "t"]:
            raise KeyboardInterrupt
        return real(teacher, tok, student, spec, *args, **kwargs)

    monkeypatch.setattr(DS, "distill", distill)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(recipe("cut"), until="distill")
    assert (tmp_path / "cut" / "resume" / ".checkpoints" / "distill" / "s.done" / "done.json").is_file()
    made, real_augment = [], DS.augment_rows
    monkeypatch.setattr(DS, "augment_rows", lambda *a, **k: made.append(1) or real_augment(*a, **k))
    resumed = run_pipeline(recipe("cut"), until="distill")["distill"]
    assert calls == ["s", "t", "t"]  # the first student was not trained again
    assert made == []  # the copies came back with the first student
    assert resumed["metrics"] == clean["metrics"] and resumed["params"] == clean["params"]
    assert resumed["teacher_logits"] == clean["teacher_logits"] == "computed"  # kept for prune, also after the stop
    # the teacher labelled the rows for the first student only, also across the stop
    reused = [m["timing"]["t"].get("teacher_cache_reused") for m in (resumed, clean)]
    assert reused == [True, True]
    for name in ("s", "t"):
        w_r = load_file(tmp_path / "cut" / "resume" / "distill" / name / "model" / "model.safetensors")
        w_c = load_file(tmp_path / "clean" / "resume" / "distill" / name / "model" / "model.safetensors")
        assert max(float((w_r[k] - w_c[k]).abs().max()) for k in w_c) < 1e-6, name
    assert not (tmp_path / "cut" / "resume" / ".checkpoints").exists()


def test_ddp_two_cpu_processes_match_one_process_at_twice_the_batch(tmp_path):
    """torchrun, 2 CPU processes (gloo), 4 rows each, vs 1 process with 8 rows: the same 4 optimizer steps."""
    worker = ROOT / "tests" / "distill_ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    one = subprocess.run([sys.executable, str(worker), "8", str(tmp_path / "one.safetensors")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29517", str(worker), "4",
                          str(tmp_path / "two.safetensors")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    init = load_file(tmp_path / "one.safetensors.init")
    assert all(torch.equal(init[k], v) for k, v in load_file(tmp_path / "two.safetensors.init").items())
    moved = sum(float((a[k] - init[k]).pow(2).sum()) for k in a) ** 0.5
    diff = sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5
    # the same steps on the same rows: the two runs agree to float noise, far below what training moved
    assert moved > 1e-2 and diff < 1e-3 * moved, (diff, moved)


@pytest.mark.slow  # three torchrun launches, about a minute: `make test` stays under 15 minutes (`make test-slow`)
def test_ddp_two_processes_stopped_mid_training_resume_to_the_same_weights(tmp_path):
    """torchrun, 2 CPU processes, a checkpoint every step: both processes stopped at batch 3 (after step 2's
    checkpoint); the rerun resumes there (said once, by the main process) and ends with the weights of a run that was
    never stopped (each process skips the batches it trained, the optimizer and schedule resume)."""
    worker = ROOT / "tests" / "distill_ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}

    def launch(out, port, *extra):
        return subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port), str(worker),
                               "4", str(tmp_path / out), "", *map(str, extra)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    clean = launch("clean.safetensors", 29520, tmp_path / "ck-clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    stopped = launch("resumed.safetensors", 29521, tmp_path / "ck", 3)
    assert stopped.returncode != 0 and "crash at batch 3" in stopped.stderr
    assert not (tmp_path / "resumed.safetensors").exists()
    resumed = launch("resumed.safetensors", 29522, tmp_path / "ck")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resuming at step 2/4") == 1, resumed.stdout[-2000:]
    a, b = load_file(tmp_path / "clean.safetensors"), load_file(tmp_path / "resumed.safetensors")
    init = load_file(tmp_path / "clean.safetensors.init")
    assert sum(float((a[k] - init[k]).abs().max()) for k in a) > 1e-2  # it trained
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_ddp_trains_a_student_on_matches_alone_and_leaves_what_they_do_not_reach(tmp_path):
    """kd_weight and hard_label_weight 0, attention matches alone, 2 CPU processes: the head and the last layer's FFN
    got no gradient, and DDP stopped at the second step ("Expected to have finished reduction in the prior
    iteration"); a weight-0 term reaching them instead had AdamW decay them. Now they stay as they were."""
    worker = ROOT / "tests" / "distill_ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    two = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29518", str(worker), "4",
                          str(tmp_path / "two.safetensors"), "alone"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    init, done = load_file(tmp_path / "two.safetensors.init"), load_file(tmp_path / "two.safetensors")
    kept = [k for k in init if "classifier" in k or "pooler" in k or ".layer.1.output.dense" in k]
    assert kept and all(torch.equal(init[k], done[k]) for k in kept)
    assert not torch.equal(init["bert.encoder.layer.1.attention.self.query.weight"],
                           done["bert.encoder.layer.1.attention.self.query.weight"])
    # TinyBERT's first step has no logit loss either: the head gets no gradient there (a weight-0 term had AdamW
    # decay it), and DDP expects that
    two = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29519", str(worker), "4",
                          str(tmp_path / "steps.safetensors"), "two_step"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]


def test_logit_only_kd_runs_the_teacher_once_per_row_ahead_of_training(glue_dir, tokenizer):
    teacher = _tiny_teacher()
    data = _sst2(glue_dir, n=48)
    spec = from_dict(StudentConfig, {"name": "s", "layers": 2, "train": {"epochs": 3, "batch_size": 8}})
    student = build_student(spec, teacher, tokenizer, data.spec)
    rows_seen = []
    teacher.register_forward_hook(lambda m, args, kwargs, out: rows_seen.append(kwargs["input_ids"].shape[0]),
                                  with_kwargs=True)
    res = distill(teacher, tokenizer, student, spec, data, max_length=32, seed=0)
    assert res.fits["joint"].steps == 18  # 3 epochs x 6 batches
    assert sum(rows_seen) == 48  # one cached pass; no teacher forward during the 3 epochs
    assert res.timing["teacher_cache_s"] > 0


def test_students_of_one_stage_share_the_cached_teacher_logits(glue_dir, tokenizer):
    """The teacher runs once over the training rows for all logit-KD students of a stage (a shared cache)."""
    teacher = _tiny_teacher()
    data = _sst2(glue_dir, n=48)
    specs = [from_dict(StudentConfig, {"name": n, "layers": k, "train": {"epochs": 1, "batch_size": 8}})
             for n, k in (("a", 2), ("b", 1))]
    students = [build_student(spec, teacher, tokenizer, data.spec) for spec in specs]  # copies: before the hook
    rows_seen = []
    teacher.register_forward_hook(lambda m, args, kwargs, out: rows_seen.append(kwargs["input_ids"].shape[0]),
                                  with_kwargs=True)
    cache: dict = {}
    results = [distill(teacher, tokenizer, student, spec, data, max_length=32, seed=0, logit_cache=cache)
               for spec, student in zip(specs, students)]
    assert sum(rows_seen) == 48  # one pass for both students
    assert cache[logits_key("train", labelling(specs[0].train))].shape == (48, 2)
    assert results[1].timing["teacher_cache_reused"] is True and "teacher_cache_reused" not in results[0].timing


def test_an_augmented_student_whose_augmentation_made_no_copy_trains_on_the_known_logits(glue_dir, tokenizer):
    """Augmentation that makes no copy (no row has min_words words), after a plain student labelled the training rows:
    the teacher was asked to label an empty slice of copies, an IndexError that ended the whole distill stage (found
    by an augmentation walkthrough). Now the known logits are the transfer set's, and it trains on them."""
    teacher = _tiny_teacher()
    data = _sst2(glue_dir, n=24)
    specs = [from_dict(StudentConfig, {"name": "plain", "layers": 1, "train": {"max_steps": 2, "batch_size": 8}}),
             from_dict(StudentConfig, {"name": "aug", "layers": 1, "train": {"max_steps": 2, "batch_size": 8},
                                       "distill": {"augment": {"copies": 2, "min_words": 1000}}})]
    students = [build_student(spec, teacher, tokenizer, data.spec) for spec in specs]
    cache: dict = {}
    results = [distill(teacher, tokenizer, student, spec, data, max_length=32, seed=0, logit_cache=cache)
               for spec, student in zip(specs, students)]
    assert results[1].augment["copies"] == 0 and results[1].timing["teacher_cache_reused"] == "original rows"
    assert results[1].fits["joint"].steps == 2


def test_a_student_labelling_otherwise_is_not_served_another_students_teacher_logits(glue_dir, tokenizer):
    """Each student trains on the teacher's logits labelled as it labels them (its precision; batches of 64 at least):
    a student at another precision gets its own pass, not the first student's logits (they differ in the last bits,
    and a rerun of that student alone would train on its own)."""
    teacher = _tiny_teacher()
    data = _sst2(glue_dir, n=48)
    specs = [from_dict(StudentConfig, {"name": n, "layers": 1, "train": {"epochs": 1, "batch_size": b,
                                                                         "precision": p}})
             for n, p, b in (("a", "fp32", 8), ("b", "bf16", 8), ("c", "bf16", 16), ("d", "bf16", 128))]
    students = [build_student(spec, teacher, tokenizer, data.spec) for spec in specs]  # copies: before the hook
    batches = []
    teacher.register_forward_hook(lambda m, args, kwargs, out: batches.append(kwargs["input_ids"].shape[0]),
                                  with_kwargs=True)
    cache: dict = {}
    results, labelled = [], []
    for spec, student in zip(specs, students):
        batches.clear()
        results.append(distill(teacher, tokenizer, student, spec, data, max_length=32, seed=0, logit_cache=cache))
        labelled.append(sum(batches))
    # a (fp32) and b (bf16) each label the 48 rows; c labels as b does (batches of 64: 48 rows in one); d in 128s
    assert labelled == [48, 48, 0, 48]
    assert [r.timing.get("teacher_cache_reused") for r in results] == [None, None, True, None]
    assert [r.timing.get("teacher_logits_precision") for r in results] == ["fp32", "bf16", None, "bf16"]
    fp32, bf16 = (cache[logits_key("train", labelling(s.train))] for s in specs[:2])
    assert not np.array_equal(fp32, bf16) and np.abs(fp32 - bf16).max() < 0.1
    assert sorted(cache) == sorted(logits_key("train", h) for h in ({"precision": "fp32", "batch_size": 64},
                                                                   {"precision": "bf16", "batch_size": 64},
                                                                   {"precision": "bf16", "batch_size": 128}))


def test_tinybert_two_step_intermediate_then_prediction(glue_dir, tokenizer):
    teacher = _tiny_teacher()
    data = _sst2(glue_dir, n=48, holdout=0.0005)  # 34 held-out rows
    spec = from_dict(StudentConfig, {"name": "s", "kind": "narrow", "layers": 2, "hidden": 16, "heads": 2, "ffn": 32,
                                     "distill": {"layer_map": "uniform", "two_step": True,
                                                 "intermediate_max_steps": 3},
                                     "train": {"max_steps": 4, "batch_size": 8}})
    res = distill(teacher, tokenizer, build_student(spec, teacher, tokenizer, data.spec), spec, data,
                  max_length=32, seed=0)
    assert list(res.fits) == ["intermediate", "prediction"]
    assert res.fits["intermediate"].steps == 3 and res.fits["prediction"].steps == 4
    assert res.fits["intermediate"].history == []  # step 1 trains no head: nothing to select on
    assert res.fits["prediction"].history and res.timing["teacher_cache_s"] > 0  # step 2: cached logits
    # the stage records the held-out scores the prediction step's fit took of the weights it kept: a fresh scoring
    # of the student gives them to the digit
    fresh = evaluate(res.model, tokenize(data.holdout, tokenizer, 32), Collator({"": tokenizer}), data.spec)
    assert res.holdout == fresh == best_scores(res.fits["prediction"]) and len(data.holdout) == 34
    # more intermediate steps than the epochs give the prediction step: exactly that many (it trained 6, a cap)
    longer = from_dict(StudentConfig, {**dataclasses.asdict(spec), "train": {"epochs": 1, "batch_size": 8},
                                       "distill": {"layer_map": "uniform", "two_step": True,
                                                   "intermediate_max_steps": 9}})
    res = distill(teacher, tokenizer, build_student(longer, teacher, tokenizer, data.spec), longer, data,
                  max_length=32, seed=0)
    assert res.fits["intermediate"].steps == 9 and res.fits["prediction"].steps == 6  # 48 training rows, batch 8


def test_generated_matches_take_weight_and_head_mode():
    from transformers import BertConfig

    from compress.config import DistillConfig, MatchConfig

    teacher, student = BertConfig(num_hidden_layers=4, hidden_size=32), BertConfig(num_hidden_layers=2, hidden_size=16)
    cfg = from_dict(DistillConfig, {"layer_map": "uniform", "layer_map_features": ["hidden", "attention"],
                                    "layer_map_weight": 0.1, "attention_heads": "mean"})
    matches = resolve_matches(cfg, teacher, student)
    assert {m.weight for m in matches} == {0.1}
    assert {m.heads for m in matches if m.feature == "attention"} == {"mean"}
    assert {m.heads for m in matches if m.feature == "hidden"} == {"each"}
    with pytest.raises(CompressError, match=r"layer_map_weight: must be >= 0, got -1\.0"):
        negative = {"layer_map": "uniform", "layer_map_weight": -1.0}  # with layer_map: not the "not set" refusal
        from_dict(DistillConfig, negative).validate("r.yaml", "students[0].distill")
    with pytest.raises(CompressError, match=r"matches\[0\]\.heads: only for attention"):
        MatchConfig(2, 1, "hidden", heads="mean").validate("r.yaml", "matches[0]")
    # one pair twice among the explicit matches is refused (the second was dropped silently); a generated match of
    # a pair an explicit one covers gives way to it
    twice = from_dict(DistillConfig, {"matches": [{"teacher_layer": 2, "student_layer": 1, "feature": "attention",
                                                   "loss": "kl"},
                                                  {"teacher_layer": 2, "student_layer": 1, "feature": "attention",
                                                   "loss": "mse", "weight": 3.0}]})
    with pytest.raises(CompressError, match=r"matches\[1\]: a second attention match of teacher layer 2 and student"):
        resolve_matches(twice, teacher, student)
    own = from_dict(DistillConfig, {"matches": [{"teacher_layer": 2, "student_layer": 1, "feature": "hidden",
                                                 "weight": 5.0}], "layer_map": "uniform"})
    assert [m.weight for m in resolve_matches(own, teacher, student) if m.key == "hidden_t2_s1"] == [5.0]
    # a config built in code (not validated as a recipe is): an attention match of layer 0 would have read the last
    # layer's map (index -1), a negative layer any other
    for t, s, feature, first in ((0, 1, "attention", 1), (2, 0, "attention", 1), (-1, 1, "hidden", 0)):
        made = DistillConfig(matches=[MatchConfig(t, s, feature)])
        with pytest.raises(CompressError, match=rf"^distill\.matches\[0\]: a {feature} match of teacher layer {t} "
                                                rf"and student layer {s}: its layers start at {first}$"):
            resolve_matches(made, teacher, student)
    # hidden states 0 are the embeddings' output: a hidden 0/0 match is the embedding match (both were computed,
    # the loss counted twice); it covers the generated one, and one of each among the explicit matches is refused
    zero = from_dict(DistillConfig, {"layer_map": "uniform", "layer_map_features": ["embedding"],
                                     "matches": [{"teacher_layer": 0, "student_layer": 0, "feature": "hidden",
                                                  "weight": 2.0}]})
    assert [(m.key, m.weight) for m in resolve_matches(zero, teacher, student)] == [("hidden_t0_s0", 2.0)]  # its
    # key names its projection in checkpoints: kept
    both = from_dict(DistillConfig, {"matches": [{"teacher_layer": 0, "student_layer": 0, "feature": "hidden"},
                                                 {"teacher_layer": 0, "student_layer": 0, "feature": "embedding"}]})
    with pytest.raises(CompressError, match=r"matches\[1\]: a second embedding match of teacher layer 0"):
        resolve_matches(both, teacher, student)


def test_settings_of_generated_matches_without_a_layer_map_are_refused():
    """layer_map_features, layer_map_weight and attention_heads shape the matches layer_map generates: without
    layer_map (or with no feature listed, or no attention for attention_heads) they were accepted and ignored."""
    from compress.config import DistillConfig

    match = {"teacher_layer": 2, "student_layer": 1, "feature": "attention", "loss": "kl"}
    for settings, said in (({"layer_map_weight": 0.1}, "layer_map_weight: shapes the matches layer_map generates"),
                           ({"layer_map_features": ["embedding"]}, "layer_map_features: shapes"),
                           ({"attention_heads": "mean", "matches": [match]}, r"attention_heads: shapes .*own heads"),
                           ({"layer_map": "uniform", "layer_map_features": []}, "layer_map_features: empty"),
                           ({"layer_map": "last", "layer_map_features": ["hidden"], "attention_heads": "mean"},
                            "attention_heads: for generated attention matches")):
        with pytest.raises(CompressError, match=rf"^r\.yaml: students\[0\]\.distill\.{said}"):
            from_dict(DistillConfig, settings, file="r.yaml", where="students[0].distill")
    from_dict(DistillConfig, {"layer_map": "uniform", "attention_heads": "mean", "layer_map_weight": 0.1})


def test_a_batch_where_no_row_aligns_reaches_only_what_the_matches_reach():
    """Two_step's first step (no logit loss) on a batch of a cross-family teacher where no row aligns: the zero term
    went through the logits, so the head and the layers no match reaches got zero gradients (AdamW decayed them by
    lr x weight decay each such batch, though they are to be left as they are). Now exactly the parameters an aligned
    batch trains get a (zero) gradient, as DDP needs: the same set either way."""
    from compress.config import DistillConfig, MatchConfig

    torch.manual_seed(0)
    config = tiny_bert_config(num_hidden_layers=2)
    teacher = BertForSequenceClassification(config).eval()
    cfg = DistillConfig(two_step=True, matches=[MatchConfig(1, 1, "hidden", weight=1.0),
                                                MatchConfig(1, 1, "attention", weight=1.0)])
    matches = resolve_matches(cfg, config, config)
    d = Distiller(BertForSequenceClassification(config), matches, config.hidden_size)
    ids = torch.randint(5, 90, (4, 8))
    mask = torch.ones_like(ids)
    got = {}
    for name, t_ids in (("aligned", ids), ("misaligned", (ids + 1) % 90)):
        objective = KDObjective(teacher, cfg, matches, False, teacher_prefix="t_", table=torch.arange(100),
                                logits=False, intermediate=True)
        batch = {"input_ids": ids, "attention_mask": mask, "t_input_ids": t_ids, "t_attention_mask": mask,
                 "labels": torch.zeros(4, dtype=torch.long)}
        d.zero_grad(set_to_none=True)
        loss, logs = objective(d, batch)
        loss.backward()
        got[name] = {n: p.grad for n, p in d.named_parameters() if p.grad is not None}
        assert not any(n.startswith(("student.classifier", "student.bert.pooler", "student.bert.encoder.layer.1."))
                       for n in got[name]), (name, sorted(got[name]))
    assert set(got["aligned"]) == set(got["misaligned"]) and got["aligned"]
    assert all(float(g.abs().sum()) == 0.0 for g in got["misaligned"].values()) and loss.item() == 0.0
    assert set(logs) == {"intermediate_skipped"}


def test_each_match_compares_the_teacher_layer_it_names(glue_dir, tokenizer):
    """Every generated match's term is its loss between the student layer and the teacher layer its key names (layer
    0 = embeddings, i = layer i's output; attention maps of layer i at index i - 1), computed here by hand; a term
    read from another teacher layer (e.g. the last for every match) passed the other tests."""
    from compress.distill.losses import attention_loss, hidden_mse

    torch.manual_seed(0)
    teacher = _tiny_teacher().eval()
    with torch.no_grad():  # layers unlike each other (a random tiny model's are near alike): a shift, sharper maps
        for i, layer in enumerate(teacher.bert.encoder.layer):
            layer.output.LayerNorm.bias.add_(float(i))
            layer.attention.self.query.weight.mul_(4.0 * (i + 1))
    data = _sst2(glue_dir, n=16)
    spec = from_dict(StudentConfig, {"name": "s", "kind": "narrow", "layers": 2, "hidden": 16, "heads": 2, "ffn": 32,
                                     "distill": {"layer_map": "uniform",
                                                 "layer_map_features": ["embedding", "hidden", "attention"]}})
    student = build_student(spec, teacher, tokenizer, data.spec)
    matches = resolve_matches(spec.distill, teacher.config, student.model.config)
    d = Distiller(student.model, matches, 32).eval()
    ds = tokenize(data.train, tokenizer, 32)
    batch = KDCollator(Collator({"": tokenizer}))([ds[i] for i in range(8)])
    with torch.no_grad():
        logs = KDObjective(teacher, spec.distill, matches, False)(d, batch)[1]
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        t = teacher(**inputs, output_hidden_states=True, output_attentions=True)
        s, projected = d(hidden=True, attentions=True, **inputs)
    mask = batch["attention_mask"]
    width = int(mask.sum(1).max())
    by_key = {m.key: m for m in matches}
    want = {
        "embedding_t0_s0": hidden_mse(projected["embedding_t0_s0"], t.hidden_states[0], mask),
        "hidden_t2_s1": hidden_mse(projected["hidden_t2_s1"], t.hidden_states[2], mask),
        "hidden_t4_s2": hidden_mse(projected["hidden_t4_s2"], t.hidden_states[4], mask),
        "attention_t2_s1": attention_loss(s.attentions[0], t.attentions[1], mask, by_key["attention_t2_s1"].loss,
                                          by_key["attention_t2_s1"].heads),
        "attention_t4_s2": attention_loss(s.attentions[1], t.attentions[3], mask, by_key["attention_t4_s2"].loss,
                                          by_key["attention_t4_s2"].heads),
    }
    # what the layer-2 matches would read from the last teacher layer instead: a term far from the right one
    last = {"hidden_t2_s1": hidden_mse(projected["hidden_t2_s1"], t.hidden_states[4], mask),
            "attention_t2_s1": attention_loss(s.attentions[0], t.attentions[3], mask, by_key["attention_t2_s1"].loss,
                                              by_key["attention_t2_s1"].heads)}
    assert width == mask.shape[1] and set(want) == set(by_key)
    for key, value in want.items():
        assert float(logs[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), key
        assert key not in last or float(last[key]) != pytest.approx(float(value), rel=1e-3), key


def test_a_zero_weight_match_is_left_out_and_every_trained_parameter_gets_a_gradient(glue_dir, tokenizer):
    """A match of weight 0 was computed and dropped from the loss, so its projection got no gradient: under DDP the
    gradient reduction waited for it forever. It is left out now (an explicit one also turns the layer_map match of
    its pair off), and every parameter the distiller trains gets a gradient."""
    from compress.config import DistillConfig

    teacher = _tiny_teacher().eval()
    data = _sst2(glue_dir, n=16)
    spec = from_dict(StudentConfig, {
        "name": "s", "kind": "narrow", "layers": 2, "hidden": 16, "heads": 2, "ffn": 32,
        "distill": {"layer_map": "uniform", "layer_map_features": ["hidden"],
                    "matches": [{"teacher_layer": 4, "student_layer": 2, "weight": 0.0},
                                {"teacher_layer": 0, "student_layer": 0, "feature": "embedding", "weight": 0.0}]}})
    student = build_student(spec, teacher, tokenizer, data.spec)
    matches = resolve_matches(spec.distill, teacher.config, student.model.config)
    assert [m.key for m in matches] == ["hidden_t2_s1"]
    d = Distiller(student.model, matches, 32)
    assert list(d.projections) == ["hidden_t2_s1"]
    ds = tokenize(data.train, tokenizer, 32)
    batch = KDCollator(Collator({"": tokenizer}))([ds[i] for i in range(8)])
    loss, logs = KDObjective(teacher, spec.distill, matches, False)(d, batch)
    loss.backward()
    assert set(logs) == {"kd", "hard", "hidden_t2_s1"}
    assert [n for n, p in d.named_parameters() if p.requires_grad and p.grad is None] == []
    # intermediate matches alone (a layer-drop student keeps the teacher's head): the head got no gradient, and DDP
    # stopped at the second step waiting for it ("did not receive grad for rank 1"); it is frozen now, so neither
    # DDP nor AdamW's weight decay touches it
    alone = from_dict(StudentConfig, {"name": "s", "layers": 2, "train": {"max_steps": 2, "batch_size": 8},
                                      "distill": {"kd_weight": 0.0, "hard_label_weight": 0.0, "layer_map": "uniform",
                                                  "layer_map_features": ["hidden"]}})
    student = build_student(alone, teacher, tokenizer, data.spec)
    head = {n: p.detach().clone() for n, p in student.model.named_parameters() if "classifier" in n or "pooler" in n}
    encoder = {n: p.detach().clone() for n, p in student.model.named_parameters() if "encoder" in n}
    distill(teacher, tokenizer, student, alone, data, max_length=32, seed=0)
    now = dict(student.model.named_parameters())
    assert head and all(torch.equal(now[n], v) for n, v in head.items())
    assert any(not torch.equal(now[n], v) for n, v in encoder.items())
    # attention matches alone leave the last layer's FFN out of every loss: a weight-0 term reaching it (for DDP)
    # had AdamW decay it; it stays as it was (DDP looks for such parameters: test_ddp_..._matches_alone)
    alone.distill.layer_map_features = ["attention"]
    student = build_student(alone, teacher, tokenizer, data.spec)
    before = {n: p.detach().clone() for n, p in student.model.named_parameters()}
    distill(teacher, tokenizer, student, alone, data, max_length=32, seed=0)
    now = dict(student.model.named_parameters())
    last = [n for n in before if ".layer.1.output.dense" in n or ".layer.1.intermediate" in n]
    assert last and all(torch.equal(now[n], before[n]) for n in last)
    assert not torch.equal(now["bert.encoder.layer.1.attention.self.query.weight"],
                           before["bert.encoder.layer.1.attention.self.query.weight"])
    # a narrow student from a checkpoint without a trained head (by folder, not a zoo name): nothing would train it
    from teachers.zoo import resolve

    headless = from_dict(StudentConfig, {"name": "s", "kind": "narrow", "init": str(resolve("minilm-l6")),
                                         "layers": 1, "distill": dataclasses.asdict(alone.distill)})
    with pytest.raises(CompressError, match=r"student s: distill\.kd_weight and hard_label_weight are both 0, and "):
        build_student(headless, teacher, tokenizer, data.spec)
    # layer_map_weight 0 generates nothing; two_step then has nothing to train its first step on
    off = from_dict(DistillConfig, {"layer_map": "uniform", "layer_map_weight": 0.0})
    assert resolve_matches(off, teacher.config, student.model.config) == []
    with pytest.raises(CompressError, match=r"two_step: needs intermediate matches of weight > 0"):
        from_dict(DistillConfig, {"layer_map": "uniform", "layer_map_weight": 0.0, "two_step": True})
    with pytest.raises(CompressError, match=r"two_step: needs intermediate matches of weight > 0"):
        from_dict(DistillConfig, {"layer_map": "uniform", "layer_map_features": [], "two_step": True})
    # every generated match turned off by an explicit weight 0: known only against the models' depths
    every = from_dict(DistillConfig, {"layer_map": "last", "layer_map_features": ["hidden"], "two_step": True,
                                      "matches": [{"teacher_layer": 4, "student_layer": 2, "weight": 0.0}]})
    with pytest.raises(CompressError, match=r"students\[0\]\.distill\.two_step: every intermediate match has "
                                            r"weight 0"):
        resolve_matches(every, teacher.config, student.model.config, where="students[0].distill")
    # no logit loss either, and explicit weight-0 matches turn every generated one off: nothing would train
    silent = from_dict(DistillConfig, {"layer_map": "last", "layer_map_features": ["hidden"], "kd_weight": 0.0,
                                       "hard_label_weight": 0.0,
                                       "matches": [{"teacher_layer": 4, "student_layer": 2, "weight": 0.0}]})
    with pytest.raises(CompressError, match=r"distill: kd_weight and hard_label_weight are both 0 and every "
                                            r"intermediate match has weight 0"):
        resolve_matches(silent, teacher.config, student.model.config)


def test_a_student_deeper_than_its_teacher_maps_to_teacher_layers_from_1():
    """uniform layer_map, 4 student layers on a 2-layer teacher: student layer 1 learns from teacher layer 1, never
    layer 0 (the embeddings; as an attention index, -1 read the teacher's last layer)."""
    from transformers import BertConfig

    from compress.config import DistillConfig

    cfg = from_dict(DistillConfig, {"layer_map": "uniform", "layer_map_features": ["hidden", "attention"]})
    matches = resolve_matches(cfg, BertConfig(num_hidden_layers=2, hidden_size=32),
                              BertConfig(num_hidden_layers=4, hidden_size=32))
    pairs = sorted({(m.student_layer, m.teacher_layer) for m in matches})
    assert pairs == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_a_process_other_than_the_main_one_leaves_the_shared_checkpoints_alone(glue_dir, tokenizer, tmp_path,
                                                                              monkeypatch):
    """Under DDP every process runs `distill`, and the checkpoint folder is shared: the main process writes the
    step markers there (`main_process_writes`), so only it may remove the folder afterwards. Another process removing
    it raced the main one's marker write (its rename failing on a folder just deleted)."""
    import compress.distill.stage as stage
    from compress.train import FitResult

    monkeypatch.setattr(stage, "fit", lambda *a, **k: FitResult(steps=0, best_metric=None, best_step=None))
    monkeypatch.setattr(stage, "main_process_writes", lambda write: None)  # as on a process that is not the main one
    teacher = _tiny_teacher()
    data = _sst2(glue_dir, n=16)
    spec = from_dict(StudentConfig, {"name": "s", "kind": "narrow", "layers": 2, "hidden": 16, "heads": 2, "ffn": 32,
                                     "distill": {"layer_map": "uniform", "two_step": True},
                                     "train": {"max_steps": 1, "batch_size": 8}})
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    (ckdir / "written-by-the-main-process").write_text("")
    distill(teacher, tokenizer, build_student(spec, teacher, tokenizer, data.spec), spec, data, max_length=16,
            seed=0, checkpoint_dir=ckdir)
    assert (ckdir / "written-by-the-main-process").is_file()


def test_bench_distill_naive_loop_runs_where_the_teacher_was_left(tokenizer, monkeypatch):
    """`compress.distill.bench`: on a GPU `ours` (distill) leaves the teacher on the process's device, and the next
    mode's naive loop copied its student from it there while feeding it CPU batches ("Expected all tensors to be on
    the same device"). Simulated with the meta device standing for the GPU."""
    from transformers import BertForSequenceClassification

    from compress.distill import bench as B
    from tests.conftest import tiny_bert_config

    data = load_task(TaskConfig(name="sst2", max_train_samples=8, holdout=0.0, max_eval_samples=8), seed=0)
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config()).to("meta")
    monkeypatch.setattr(B, "process_device", lambda: torch.device("meta"), raising=False)
    seen = []

    class Checked(B.KDObjective):  # meta tensors cannot be read (the real loss logs floats): check, return a stand-in
        def __call__(self, model, batch):
            seen.append({v.device.type for v in batch.values()} | {p.device.type for p in model.parameters()})
            return sum(p.sum() for p in model.parameters()) * 0.0, {}

    monkeypatch.setattr(B, "KDObjective", Checked)
    B.naive(teacher, tokenizer, data, B._spec("logits", 1, 4, 1), 16)
    assert seen and all(s == {"meta"} for s in seen)


def test_no_logit_loss_and_nothing_else_to_train_on_is_refused_up_front():
    """kd_weight 0 and hard_label_weight 0 left the prediction step (two_step), or a student without matches, with
    every loss term at weight 0: `combine` raised a bare ValueError at its first batch, after the teacher (and the
    intermediate step) had trained. The recipe is refused when read; intermediate matches alone still train."""
    with pytest.raises(CompressError, match=r"distill: kd_weight and hard_label_weight are both 0"):
        from_dict(StudentConfig, {"name": "s", "distill": {"kd_weight": 0.0, "hard_label_weight": 0.0}})
    with pytest.raises(CompressError, match=r"distill: kd_weight and hard_label_weight are both 0"):
        from_dict(StudentConfig, {"name": "s", "distill": {"kd_weight": 0.0, "hard_label_weight": 0.0,
                                                           "layer_map": "uniform", "two_step": True}})
    spec = from_dict(StudentConfig, {"name": "s", "distill": {"kd_weight": 0.0, "hard_label_weight": 0.0,
                                                              "layer_map": "uniform"}})
    assert spec.distill.layer_map == "uniform"
    # a narrow student's prediction layer is new: intermediate matches alone leave it as it started, random
    with pytest.raises(CompressError, match=r"distill: kd_weight and hard_label_weight are both 0, and a narrow "):
        from_dict(StudentConfig, {"name": "s", "kind": "narrow", "init": "minilm-l6",
                                  "distill": {"kd_weight": 0.0, "hard_label_weight": 0.0, "layer_map": "uniform"}})


def test_a_logit_cache_flag_the_student_never_reads_leaves_its_fingerprint_as_it_was(tmp_path):
    """``cache_teacher_logits: false`` on a student whose intermediate matches train with the logits in one step (the
    teacher runs on every batch), or without logit KD, is not read: it redid the distillation and every stage after
    it. Where it is read (logit KD alone, or TinyBERT's two steps) it still counts."""
    from compress import pipeline
    from compress.config import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("task: {name: sst2}\nteacher: {}\nstudents:\n"
                    "  - {name: s, layers: 2, distill: {layer_map: uniform}}\n"
                    "  - {name: t, layers: 2, distill: {kd_weight: 0.0}}\n  - {name: u, layers: 2}\n")
    distill_stage = next(s for s in pipeline.STAGES if s.name == "distill")

    def config(**sets):
        return pipeline._result_config(pipeline._config(load_recipe(path, sets), distill_stage))

    base = config()
    assert config(**{"students[0].distill.cache_teacher_logits": False}) == base
    assert config(**{"students[1].distill.cache_teacher_logits": False}) == base
    assert config(**{"students[2].distill.cache_teacher_logits": False}) != base  # logit KD alone: it is read
    two_step = config(**{"students[0].distill.two_step": True})
    off = {"students[0].distill.two_step": True, "students[0].distill.cache_teacher_logits": False}
    assert config(**off) != two_step
    # a layer_map of weight 0 makes no match: logit KD alone, which reads the flag; so may a layer_map whose pairs
    # explicit matches of weight 0 remove (which pairs it makes, the models' depths say): the flag counts
    for none in ({"students[0].distill.layer_map_weight": 0.0},
                 {"students[0].distill.layer_map": "last", "students[0].distill.layer_map_features": ["hidden"],
                  "students[0].distill.matches": [{"teacher_layer": 6, "student_layer": 2, "feature": "hidden",
                                                   "weight": 0.0}]}):
        assert config(**none, **{"students[0].distill.cache_teacher_logits": False}) != config(**none), none


def test_a_regression_student_learns_the_teachers_outputs_by_mse():
    """A regression task's logit KD is the squared error to the teacher's outputs (no temperature, no softmax of a
    single output): the KD term is computed here by hand."""
    import torch.nn.functional as F

    from compress.config import DistillConfig

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(num_labels=1)).eval()
    student = BertForSequenceClassification(tiny_bert_config(num_labels=1, num_hidden_layers=1)).eval()
    ids = torch.randint(5, 100, (4, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": torch.tensor([0.5, 1.0, 4.0, 2.5]), "teacher_logits": torch.tensor([[3.0], [-1.0], [2.0], [0.0]])}
    d = Distiller(student, [], 32).eval()
    with torch.no_grad():
        _, logs = KDObjective(teacher, DistillConfig(), [], True)(d, batch)
        mine = student(input_ids=ids, attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"])
    want = F.mse_loss(mine.logits, batch["teacher_logits"])
    assert float(logs["kd"]) == pytest.approx(float(want), rel=1e-5) and float(want) > 0.1
    assert float(logs["hard"]) == pytest.approx(float(F.mse_loss(mine.logits.view(-1), batch["labels"])), rel=1e-5)


def test_the_logit_objective_weighs_kd_and_hard_labels_apart_at_the_configured_temperature():
    """The loss is kd_weight x KD (at distill.temperature, scaled by T^2) + hard_label_weight x cross-entropy: weights
    and temperature of the recipe, not the defaults (kd_weight 1.0, hard_label_weight 0.5, temperature 2)."""
    import torch.nn.functional as F

    from compress.config import DistillConfig
    from compress.distill.losses import kd_loss

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config()).eval()
    student = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1)).eval()
    ids = torch.randint(5, 100, (4, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": torch.tensor([0, 1, 1, 0]),
             "teacher_logits": torch.tensor([[3.0, -1.0], [-2.0, 2.5], [0.5, 0.0], [-4.0, 1.0]])}
    cfg = DistillConfig(temperature=4.0, kd_weight=0.3, hard_label_weight=0.9)
    d = Distiller(student, [], 32).eval()
    with torch.no_grad():
        loss, logs = KDObjective(teacher, cfg, [], False)(d, batch)
        mine = student(input_ids=ids, attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"]).logits
    kd = kd_loss(mine, batch["teacher_logits"], 4.0)
    hard = F.cross_entropy(mine, batch["labels"])
    assert abs(float(kd) - float(kd_loss(mine, batch["teacher_logits"], 2.0))) > 1e-3  # the temperature shows
    assert float(logs["kd"]) == pytest.approx(float(kd), rel=1e-5)
    assert float(logs["hard"]) == pytest.approx(float(hard), rel=1e-5)
    assert float(loss) == pytest.approx(0.3 * float(kd) + 0.9 * float(hard), rel=1e-5)
    # augmented copies (gold 0) carry their original's label: the hard-label term is over the gold rows alone, the
    # KD term over every row
    with torch.no_grad():
        _, logs = KDObjective(teacher, cfg, [], False)(d, {**batch, "gold": torch.tensor([1.0, 1.0, 0.0, 0.0])})
    assert float(logs["hard"]) == pytest.approx(float(F.cross_entropy(mine[:2], batch["labels"][:2])), rel=1e-5)
    assert float(logs["kd"]) == pytest.approx(float(kd), rel=1e-5)


def test_a_plain_teacher_token_that_is_a_special_of_the_student_has_no_counterpart(tokenizer, shifted_tokenizer):
    """The MPNet-like vocabulary holds "[CLS]", "[SEP]"... as plain WordPieces: they are not the BERT student's
    specials (those are matched by role, from <s>, </s>...), so they map to -1."""
    table = id_map(shifted_tokenizer, tokenizer)
    for name in ("[CLS]", "[SEP]", "[PAD]", "[MASK]"):
        tid = shifted_tokenizer.convert_tokens_to_ids(name)
        assert tid != shifted_tokenizer.unk_token_id and table[tid] == -1, name
    assert table[shifted_tokenizer.pad_token_id] == tokenizer.pad_token_id


def test_a_misaligned_row_is_left_out_of_the_position_wise_losses_of_a_partly_aligned_batch():
    """Of a batch where one row aligns and one does not, the intermediate losses are those of the aligned row alone."""
    from compress.config import DistillConfig, MatchConfig

    torch.manual_seed(0)
    config = tiny_bert_config(num_hidden_layers=2)
    teacher = BertForSequenceClassification(config).eval()
    cfg = DistillConfig(matches=[MatchConfig(1, 1, "hidden", weight=1.0), MatchConfig(2, 2, "attention", weight=1.0)])
    matches = resolve_matches(cfg, config, config)
    d = Distiller(BertForSequenceClassification(config), matches, config.hidden_size).eval()
    ids = torch.randint(5, 90, (2, 8))
    t_ids = torch.stack([ids[0], (ids[1] + 1) % 90])  # row 1: other tokens on the teacher's side
    mask = torch.ones_like(ids)

    def logs(rows):
        objective = KDObjective(teacher, cfg, matches, False, teacher_prefix="t_", table=torch.arange(100),
                                logits=False, intermediate=True)
        batch = {"input_ids": ids[rows], "attention_mask": mask[rows], "t_input_ids": t_ids[rows],
                 "t_attention_mask": mask[rows], "labels": torch.zeros(len(rows), dtype=torch.long)}
        with torch.no_grad():
            out = objective(d, batch)[1]
        return out, objective.stats

    both, stats = logs([0, 1])
    alone, _ = logs([0])
    assert stats.misaligned_rows == 1 and stats.rows == 2
    assert set(both) == {m.key for m in matches}
    for key in both:
        assert both[key] == pytest.approx(alone[key], rel=1e-5), key


def test_tokenizers_that_join_sentence_pairs_otherwise_are_not_the_same(minilm_dir, tokenizer):
    """Same class, vocabulary and specials, the same inputs for every single text, but pairs joined by two [SEP]s (as
    MPNet joins them): the teacher's logits on pair rows are of other inputs, so not the same tokenizer."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(minilm_dir)
    cls, sep = other.cls_token_id, other.sep_token_id
    other.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    assert dict(other("a movie")) == dict(tokenizer("a movie"))
    assert dict(other("a movie", "a film")) != dict(tokenizer("a movie", "a film"))
    assert not same_tokenizer(tokenizer, other)


def test_each_students_metrics_record_its_alignment_counts(tiny_bert_dir, tmp_path):
    """metrics.json of a student with position-wise matches carries its alignment counts (every batch, every row),
    and so does the stage's summary of it."""
    import json

    import compress.distill.stage as DS
    from compress.config import load_recipe

    path = _recipe(tmp_path, tiny_bert_dir, tmp_path / "runs")
    r = yaml.safe_load(path.read_text())
    r["task"].update(max_train_samples=48, max_eval_samples=16)
    r["students"][0].update(layers=1, distill={"layer_map": "last"},
                            train={"max_steps": 2, "batch_size": 8, "eval_every": None, "checkpoint_every": None})
    path.write_text(yaml.safe_dump(r))
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_bert_dir, teacher / "model")
    out = tmp_path / "out"
    out.mkdir()
    summary = DS.run(load_recipe(path), out, {"teacher": teacher})
    metrics = json.loads((out / "s" / "metrics.json").read_text())
    assert metrics["alignment"] == {"batches": 2, "misaligned_batches": 0, "rows": 16, "misaligned_rows": 0}
    assert summary["students"]["s"]["alignment"] == metrics["alignment"] and metrics["same_tokenizer"] is True


def test_bench_distill_keeps_each_loops_fastest_repeat_and_speedup_is_naive_over_ours(monkeypatch, tmp_path, capsys):
    """`compress.distill.bench.main` with the loops stubbed: the fastest of --repeats per loop, tokens/s from it, and
    speedup = naive time / our time (> 1: ours faster). Without the quickstart's teacher it says what it timed
    instead (it fell back to MiniLM-L6 with a fresh head without a word)."""
    import itertools
    import types

    from compress.distill import bench as B

    rows = list(range(10))
    monkeypatch.setattr(B, "load_task", lambda cfg, seed: types.SimpleNamespace(train=rows, spec=None))
    monkeypatch.setattr(B, "load_for_task", lambda name, spec: ("teacher", "tok"))
    monkeypatch.setattr(B, "tokenize", lambda train, tok, n: {"length": [10] * len(train)})
    naive_times, our_times = itertools.cycle([2.0, 3.0]), itertools.cycle([1.0, 1.5])
    monkeypatch.setattr(B, "naive", lambda *a: next(naive_times))
    monkeypatch.setattr(B, "ours", lambda *a: next(our_times))
    res = B.main(["--teacher", str(tmp_path / "none"), "--repeats", "2", "--epochs", "1",
                  "--out", str(tmp_path / "r.json")])
    assert f"teacher: MiniLM-L6 with a fresh head ({tmp_path / 'none'} holds no model" in capsys.readouterr().out
    for mode in B.MODES:
        r = res["modes"][mode]
        assert (r["naive_s"], r["ours_s"], r["speedup"]) == (2.0, 1.0, 2.0)
        assert (r["ours_tokens_per_s"], r["naive_tokens_per_s"]) == (100.0, 50.0)
