"""Teacher fine-tuning on a real SST-2 slice with a tiny random BERT, and the pipeline runner around it."""

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.config import TaskConfig, TrainConfig, load_recipe
from compress.data import GLUE_TASKS, Collator, load_task, tokenize
from compress.errors import CompressError
from compress.evaluate import predict
from compress.modeling import load_for_task, load_trained, save
from compress.pipeline import run_pipeline
from compress.train import fit, rows_read
from teachers.zoo import sha256_file


def test_tiny_bert_learns_sst2_slice_and_reloads(tiny_bert_dir, tmp_path):
    data = load_task(TaskConfig(name="sst2", max_train_samples=800, holdout=0.002), seed=0)
    model, tok = load_for_task(str(tiny_bert_dir), data.spec)
    train = tokenize(data.train, tok, 48)
    dev = tokenize(data.dev.select(range(200)), tok, 48)
    collator = Collator({"": tok})
    losses = []

    def objective(m, batch):
        out = m(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")})
        losses.append(out.loss.item())
        return out.loss, {}

    result = fit(model, train, collator, TrainConfig(epochs=3, lr=3e-3, batch_size=32, warmup_ratio=0.0),
                 seed=0, objective=objective)
    assert result.steps == 75 and result.tokens_per_s > 0
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.05
    save(model, tok, tmp_path / "saved")
    reloaded, _ = load_trained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    assert np.allclose(predict(model, dev, collator), predict(reloaded, dev, collator), atol=1e-6)


def test_a_folder_with_a_head_of_another_size_gets_a_fresh_one(tiny_bert_dir, caplog):
    """A saved classifier (2 labels) as the model of a 3-label or a regression task: a new head of the task's size
    (it was a state_dict size-mismatch traceback from transformers), said in a warning (transformers' own note is
    silenced there: its trained head was dropped without a word)."""
    import logging

    from compress.data import GLUE_TASKS
    from compress.tasks import TaskSpec

    three = TaskSpec("x", "", "text", None, "label", ["a", "b", "c"], ["accuracy"])
    loading = {}
    with caplog.at_level(logging.WARNING, logger="compress.modeling"):
        model, _ = load_for_task(str(tiny_bert_dir), three, loading=loading)
    assert loading == {"new_head": True}
    assert model.classifier.out_features == 3 and model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert f"{tiny_bert_dir}: its classification head has another number of outputs than the task's 3" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="compress.modeling"):
        model, _ = load_for_task(str(tiny_bert_dir), GLUE_TASKS["stsb"])
        assert model.classifier.out_features == 1 and model.config.problem_type == "regression"
        assert "the task's 1" in caplog.text
        caplog.clear()
        load_for_task(str(tiny_bert_dir), GLUE_TASKS["sst2"])  # the same size: kept, nothing said
    assert caplog.text == ""


def test_a_folder_whose_tokenizer_cannot_load_is_one_line(tiny_bert_dir):
    """tokenizer_config.json without its vocabulary: a TypeError traceback ("stat: path should be string...") from
    transformers; a student with a tokenizer of its own does not load its init folder's."""
    from compress.data import GLUE_TASKS

    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        (tiny_bert_dir / name).unlink(missing_ok=True)
    with pytest.raises(CompressError, match=rf"^model '{tiny_bert_dir}': cannot load its tokenizer \(TypeError: .*\); "
                                            r"save the tokenizer with the model$"):
        load_for_task(str(tiny_bert_dir), GLUE_TASKS["sst2"])
    model, tok = load_for_task(str(tiny_bert_dir), GLUE_TASKS["sst2"], tokenizer=False)
    assert tok is None and model.num_labels == 2


def test_a_folders_tokenizer_of_another_vocabulary_is_refused_or_warned_of(tiny_bert_dir, tokenizer, caplog):
    """A folder's own tokenizer was never checked against its embeddings: one with more tokens than the model embeds
    (MPNet's tokenizer on MiniLM's weights) trained silently until a text hit an id past the table (an IndexError
    traceback); one padding with another id than config.json's (MiniLM's tokenizer on MPNet's weights) trained on
    shifted ids without a word."""
    from compress.data import GLUE_TASKS

    config = json.loads((tiny_bert_dir / "config.json").read_text())
    (tiny_bert_dir / "config.json").write_text(json.dumps({**config, "pad_token_id": 1}))
    with caplog.at_level("WARNING"):
        load_for_task(str(tiny_bert_dir), GLUE_TASKS["sst2"])
    assert [r.getMessage() for r in caplog.records if "pads with id" in r.getMessage()] == [
        f"model '{tiny_bert_dir}': its tokenizer pads with id 0 but config.json's pad_token_id is 1: a tokenizer of "
        f"another vocabulary? (MPNet's ids are BERT's shifted by 4; the model would learn from ids it was not trained "
        f"on)"]
    (tiny_bert_dir / "config.json").write_text(json.dumps({**config, "vocab_size": len(tokenizer) - 5}))
    want = (rf"^model '{tiny_bert_dir}': its tokenizer has {len(tokenizer)} tokens but config.json's vocab_size is "
            rf"{len(tokenizer) - 5}: a tokenizer of another model \(its ids past the embeddings\)$")
    with pytest.raises(CompressError, match=want):
        load_for_task(str(tiny_bert_dir), GLUE_TASKS["sst2"])
    # a checkpoint student given a tokenizer of its own: the same check
    from compress.config import StudentConfig, from_dict
    from students.narrow import from_checkpoint

    from transformers import BertForSequenceClassification

    from conftest import tiny_bert_config

    small = tiny_bert_dir.parent / "small-vocab"
    BertForSequenceClassification(tiny_bert_config(vocab_size=len(tokenizer) - 5)).save_pretrained(small)
    spec = from_dict(StudentConfig, {"name": "s", "kind": "narrow", "init": str(small), "tokenizer": "minilm-l6"})
    with pytest.raises(CompressError, match=rf"^student s: checkpoint '{small}' with tokenizer 'minilm-l6': "
                                            rf"its tokenizer has {len(tokenizer)} tokens but config.json's"):
        from_checkpoint(spec, GLUE_TASKS["sst2"])


def test_a_tokenizer_that_needs_its_repositorys_code_or_a_folder_without_config_is_one_line(tmp_path, tiny_bert_dir):
    """A tokenizer_config.json naming its own class (auto_map): a ValueError traceback from a student's tokenizer
    and "save the tokenizer with the model" from a model's; a folder without config.json read "cannot load its
    config.json (Unrecognized model in <folder>.)"; a path with ". " in it was cut there."""
    from compress.data import GLUE_TASKS
    from compress.modeling import load_error
    from students.narrow import _tokenizer

    custom = tmp_path / "custom"
    shutil.copytree(tiny_bert_dir, custom)
    config = json.loads((custom / "tokenizer_config.json").read_text())
    (custom / "tokenizer_config.json").write_text(json.dumps(
        {**config, "tokenizer_class": "CustomTok", "auto_map": {"AutoTokenizer": ["t.CustomTok", None]}}))
    never = "it needs its repository's own code (trust_remote_code), which compress never runs"
    with pytest.raises(CompressError) as e:
        _tokenizer(str(custom))
    assert str(e.value) == f"tokenizer {str(custom)!r}: cannot load ({never})"
    with pytest.raises(CompressError) as e:
        load_for_task(str(custom), GLUE_TASKS["sst2"])
    assert str(e.value) == f"model {str(custom)!r}: cannot load its tokenizer ({never})"
    (custom / "config.json").unlink()
    with pytest.raises(CompressError, match=rf"^model '{custom}': no config.json in {custom}$"):
        load_for_task(str(custom), GLUE_TASKS["sst2"])
    (custom / "config.json").write_text("[1, 2]")  # a hub model's: validation cannot read it first
    with pytest.raises(CompressError, match=rf"^model '{custom}': cannot load its config.json \(list indices must"):
        load_for_task(str(custom), GLUE_TASKS["sst2"])
    assert load_error(ValueError("Unrecognized model in /m/v1. final. Should have a `model_type` key.\nMore")) == \
        "Unrecognized model in /m/v1. final"


@pytest.mark.parametrize("cfg, grouped", [
    (dict(epochs=1, batch_size=8, max_steps=5), True),  # stops inside the first epoch: a part of the rows
    (dict(epochs=1, batch_size=8, max_steps=2, grad_accum=3), False),  # 6 batches of 8, not grouped by length
    (dict(epochs=1, batch_size=8, max_steps=4, grad_accum=3), True),  # 3 steps an epoch: the 4th in the 2nd epoch
    (dict(epochs=3, batch_size=16, max_steps=6), True),  # 4 batches an epoch: the 2nd epoch reads a part of its own
    (dict(epochs=2.5, batch_size=16, grad_accum=3), True),  # partial accumulation groups at each epoch's end
])
def test_rows_read_are_the_rows_fit_trains_on(tiny_bert_dir, cfg, grouped):
    """Work done per row ahead of training (prune recovery's teacher logits) covers `rows_read` only: these must be
    exactly the rows `fit` reads, or recovery would look up rows nobody labelled."""
    data = load_task(TaskConfig(name="sst2", max_train_samples=64, holdout=0.0), seed=0)
    model, tok = load_for_task(str(tiny_bert_dir), data.spec)
    train = tokenize(data.train, tok, 32)
    train = train.add_column("index", list(range(len(train))))
    seen = []

    def objective(m, batch):
        seen.extend(batch["index"].tolist())
        return m(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss, {}

    config = TrainConfig(lr=1e-4, precision="fp32", **cfg)
    fit(model, train, Collator({"": tok}), config, seed=3, objective=objective, group_by_length=grouped)
    read = rows_read(train, config, seed=3, group_by_length=grouped)
    assert read == sorted(set(seen)) and len(read) == len(set(read))
    assert (len(read) < len(train)) == (cfg.get("max_steps", 99) * cfg["batch_size"] * cfg.get("grad_accum", 1) < 64)
    # two processes deal out each epoch's batches in turn: twice the batches for the same steps (the DDP pipeline
    # test runs recovery on them, where a row missed would stop it)
    two = rows_read(train, config, seed=3, group_by_length=grouped, processes=2)
    assert set(read) <= set(two) and (len(two) > len(read) or len(read) == len(train))


def test_nan_loss_stops_with_a_clear_message(tiny_bert_dir):
    data = load_task(TaskConfig(name="sst2", max_train_samples=64, holdout=0.0), seed=0)
    model, tok = load_for_task(str(tiny_bert_dir), data.spec)
    train = tokenize(data.train, tok, 32)

    def objective(m, batch):
        return m(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss * float("nan"), {}

    with pytest.raises(CompressError, match="loss became nan at step 0"):
        fit(model, train, Collator({"": tok}), TrainConfig(epochs=1, batch_size=16), seed=0, objective=objective)

    # a finite loss whose gradient is nan (sqrt at 0: loss 0, gradient 0/0) made every weight nan with no word, under
    # clipping and without it; the gradient norm is checked before the step now, whatever max_grad_norm is
    def nan_gradient(m, batch):
        w = m.classifier.weight
        return m(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss * 0.0 + \
            torch.sqrt(((w - w.detach()) ** 2).sum()), {}

    for max_norm in (1.0, 0.0):
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with pytest.raises(CompressError, match=r"the gradient norm became nan at step 0, batch 0 \(lower the"):
            fit(model, train, Collator({"": tok}), TrainConfig(epochs=1, batch_size=16, max_grad_norm=max_norm),
                seed=0, objective=nan_gradient)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # no step was taken


def test_tokens_per_second_count_training_not_scoring_and_a_half_saved_checkpoint_is_none(tiny_bert_dir, tmp_path):
    """tokens/s (bar, log, metrics.json) divided by a time that held the held-out scoring and the checkpoint saves;
    a step-N.tmp a kill -9 left mid-save counted as one of the two newest checkpoints kept (a rerun saving at other
    steps deleted good ones and kept it)."""
    import time as clock
    from pathlib import Path

    from compress import train as T

    data = load_task(TaskConfig(name="sst2", max_train_samples=64, holdout=0.0), seed=0)
    model, tok = load_for_task(str(tiny_bert_dir), data.spec)
    train = tokenize(data.train, tok, 32)
    slow = lambda m: (clock.sleep(1.5), {"accuracy": 0.5})[1]  # noqa: E731
    scored = fit(model, train, Collator({"": tok}), TrainConfig(epochs=1, batch_size=16, eval_every=1), seed=0,
                 evaluate=slow)
    # the training time tokens/s implies leaves out the 4 x 1.5 s of scoring (no comparison of two timed runs: a busy
    # machine slows one more than the other)
    tokens = sum(len(ids) for ids in train["input_ids"])
    assert scored.tokens == tokens  # the rows' own tokens: not the padding of each batch to its longest row
    assert scored.wall_s > 6 and tokens / scored.tokens_per_s < scored.wall_s - 5.5, (tokens, scored)
    folder = tmp_path / "ck"
    (folder / "step-00000003.tmp").mkdir(parents=True)  # a save killed at step 3 of an earlier run
    seen = []
    real = T.shutil.rmtree
    T.shutil.rmtree = lambda p, **kw: (seen.append(Path(p).name), real(p, **kw))
    try:
        fit(model, train, Collator({"": tok}), TrainConfig(epochs=1, batch_size=8, checkpoint_every=2), seed=0,
            checkpoint_dir=folder)
    finally:
        T.shutil.rmtree = real
    assert seen[0] == "step-00000003.tmp", seen  # it went first; step-2 (a good one) went when step 4 was saved


def test_a_damaged_checkpoint_is_skipped_and_the_resume_says_where_it_starts(tiny_bert_dir, tmp_path, capsys,
                                                                              monkeypatch):
    """A checkpoint file read back short (a disk, a copy): a truncated model or trainer.json gave a traceback on every
    rerun; a truncated RNG state resumed silently with other dropout draws (Accelerate logs it at info level only),
    so the weights were no longer those of an unbroken run. The damaged checkpoint is now skipped, said in one line,
    and the run resumes from the one before, to the same weights; a resume says at which step it starts."""
    data = load_task(TaskConfig(name="sst2", max_train_samples=64, holdout=0.0), seed=0)
    cfg = TrainConfig(epochs=1, batch_size=8, checkpoint_every=2)

    def train(folder):
        model, tok = load_for_task(str(tiny_bert_dir), data.spec)
        result = fit(model, tokenize(data.train, tok, 32), Collator({"": tok}), cfg, seed=0, checkpoint_dir=folder)
        return result, {k: v.clone() for k, v in model.state_dict().items()}

    from compress import train as T

    folder = tmp_path / "ck"
    folder.mkdir()  # (the pipeline makes it, stamped)
    real = T.shutil.rmtree  # a finished run removes its checkpoints: kept here as a killed run's would be
    monkeypatch.setattr(T.shutil, "rmtree", lambda p, **kw: None if Path(p) == folder else real(p, **kw))
    first, weights = train(folder)
    # the two newest kept (none saved at the end)
    assert first.steps == 8 and sorted(p.name for p in folder.iterdir()) == ["step-00000004", "step-00000006"]
    meta = json.loads((folder / "step-00000006" / "trainer.json").read_text())
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= set(meta["files"])
    rng = folder / "step-00000006" / "random_states_0.pkl"
    rng.write_bytes(rng.read_bytes()[:40])
    capsys.readouterr()
    resumed, again = train(folder)
    out = capsys.readouterr().out
    assert f"skipping the damaged checkpoint {folder / 'step-00000006'} (random_states_0.pkl is not as saved" in out
    assert f"[train] resuming at step 4/8 ({folder / 'step-00000004'})" in out
    assert resumed.resumed_from == 4 and all(torch.equal(weights[k], again[k]) for k in weights)
    for step in ("step-00000004", "step-00000006"):  # nothing usable left: trained from the start, said
        (folder / step / "trainer.json").write_text("{half")
    fresh, again = train(folder)
    assert "trainer.json unreadable" in capsys.readouterr().out and fresh.resumed_from is None
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    # files as saved, yet not loadable (a checkpoint of before the sha256 were recorded, cut short): one line
    newest = sorted(folder.glob("step-*"))[-1]
    meta = json.loads((newest / "trainer.json").read_text())
    (newest / "trainer.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "files"}))
    (newest / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(CompressError, match=rf"^{re.escape(str(newest))}: cannot resume from this checkpoint .*; "
                                            rf"delete {re.escape(str(folder))} to train this stage from the start$"):
        train(folder)


def test_gradients_are_clipped_the_best_state_is_kept_and_an_inf_loss_stops(tiny_bert_dir, monkeypatch):
    """Every optimizer step clips at max_grad_norm (0: not at all, inf); the weights kept at the end are those of the
    best held-out score, not the last; a loss of inf stops the run at once, named (not later, as a gradient)."""
    from accelerate import Accelerator

    from compress.train import classification_objective

    data = load_task(TaskConfig(name="sst2", max_train_samples=32, holdout=0.0), seed=0)
    norms, real = [], Accelerator.clip_grad_norm_
    monkeypatch.setattr(Accelerator, "clip_grad_norm_",
                        lambda self, params, max_norm, *a, **k: norms.append(max_norm) or real(self, params, max_norm))
    for max_norm, clipped_at in ((1.0, 1.0), (0.0, float("inf"))):
        model, tok = load_for_task(str(tiny_bert_dir), data.spec)
        train = tokenize(data.train, tok, 32)
        snapshots, scores = [], iter([0.5, 0.9, 0.1, 0.2])  # 4 steps, scored after each: the second is the best

        def score(m):
            snapshots.append({k: v.detach().clone() for k, v in m.state_dict().items()})
            return {"accuracy": next(scores)}

        norms.clear()
        result = fit(model, train, Collator({"": tok}), TrainConfig(epochs=1, batch_size=8, eval_every=1,
                                                                    max_grad_norm=max_norm), seed=0, evaluate=score)
        assert norms == [clipped_at] * 4 and result.best_step == 2 and len(snapshots) == 4
        final = model.state_dict()
        assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
        assert not all(torch.equal(final[k], snapshots[3][k]) for k in final)
    with pytest.raises(CompressError, match=r"^train: loss became inf at step 0, batch 0"):
        fit(model, train, Collator({"": tok}), TrainConfig(epochs=1, batch_size=8), seed=0,
            objective=lambda m, b: (classification_objective(m, b)[0] * float("inf"), {}))


def test_max_grad_norm_zero_means_no_clipping_and_heads_follow_the_seed(tiny_bert_dir, minilm_dir):
    """max_grad_norm: 0 trains unclipped (it clipped every gradient to 0: nothing changed); the new head's init is
    the same whatever consumed the global RNG before (the stages seed before building a model)."""
    from compress.train import set_seed

    data = load_task(TaskConfig(name="sst2", max_train_samples=64, holdout=0.0), seed=0)
    model, tok = load_for_task(str(tiny_bert_dir), data.spec)
    before = model.classifier.weight.detach().clone()
    fit(model, tokenize(data.train, tok, 32), Collator({"": tok}),
        TrainConfig(epochs=1, batch_size=32, max_grad_norm=0.0, warmup_ratio=0.0), seed=0)
    assert not torch.equal(model.classifier.weight.cpu(), before.cpu())  # (fit leaves it where it trained)
    heads = []
    for noise in (1, 1000):  # MiniLM has no task head: a new one is drawn
        torch.rand(noise)
        set_seed(7)
        heads.append(load_for_task(str(minilm_dir), data.spec)[0].classifier.weight.detach())
    assert torch.equal(*heads)
    assert not torch.equal(load_for_task(str(minilm_dir), data.spec)[0].classifier.weight, heads[0])  # unseeded


def test_fits_with_different_precisions_in_one_process(tiny_bert_dir):
    """A bf16 stage then an fp32 one (a bf16 teacher, an fp32 recovery) in one process: Accelerate's global state
    must follow, and each fit records what ran."""
    data = load_task(TaskConfig(name="sst2", max_train_samples=64, holdout=0.0), seed=0)
    model, tok = load_for_task(str(tiny_bert_dir), data.spec)
    train = tokenize(data.train, tok, 32)
    runs = [fit(model, train, Collator({"": tok}), TrainConfig(epochs=1, batch_size=32, precision=p), seed=0)
            for p in ("bf16", "fp32", "bf16")]
    assert [r.precision for r in runs] == ["bf16", "fp32", "bf16"] and all(r.steps == 2 for r in runs)


def _recipe(tmp_path, model_dir, epochs=1, extra=""):
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
name: tiny
runs_dir: {tmp_path / 'runs'}
task: {{name: sst2, max_length: 32, max_train_samples: 200, max_eval_samples: 100, holdout: 0.001}}
teacher: {{model: {model_dir}, epochs: {epochs}, lr: 1.0e-3, batch_size: 32}}
{extra}""")
    return path


def test_a_one_token_type_model_with_a_wordpiece_tokenizer_takes_text_pairs(tmp_path, tokenizer, tiny_bert_dir):
    """A RoBERTa of one token type shipped with a BERT WordPiece tokenizer (klue/roberta's kind): the tokenizer gave a
    text pair's second segment type 1, past the model's one-row table, and the teacher of a pair task (RTE) stopped
    with an IndexError traceback. The tokenizer now gives no token_type_ids for it (saved so), and its ONNX export
    takes two inputs."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from compress.export import input_names

    torch.manual_seed(0)
    model = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=80, type_vocab_size=1, pad_token_id=0))
    folder = tmp_path / "roberta-wordpiece"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert "token_type_ids" in tokenizer("a", "b")  # the shipped tokenizer's own output: type 1 for "b"
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\nruns_dir: {tmp_path / 'runs'}\n"
                    "task: {name: rte, max_length: 32, max_train_samples: 64, max_eval_samples: 32, holdout: 0.001}\n"
                    f"teacher: {{model: {folder}, epochs: 1, batch_size: 16}}\n")
    done = run_pipeline(load_recipe(path))
    assert 0 <= done["teacher"]["metrics"]["dev"]["accuracy"] <= 1
    trained, saved = load_trained(tmp_path / "runs" / "r" / "teacher" / "model")
    assert "token_type_ids" not in saved("a", "b") and input_names(trained) == ("input_ids", "attention_mask")
    bert, bert_tok = load_for_task(str(tiny_bert_dir), GLUE_TASKS["rte"])  # two token types: kept
    assert "token_type_ids" in bert_tok("a", "b") and "token_type_ids" in input_names(bert)


def test_pipeline_manifest_skip_and_force(tiny_bert_dir, tmp_path, capsys, monkeypatch):
    import teachers.finetune

    scored = []
    real = teachers.finetune.evaluate
    monkeypatch.setattr(teachers.finetune, "evaluate", lambda *a, **k: scored.append(k.get("desc")) or real(*a, **k))
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir))
    done = run_pipeline(recipe)
    assert scored.count("teacher: scoring dev") == 1 and "teacher: scoring holdout" not in scored  # fit's scores kept
    folder = tmp_path / "runs" / "tiny" / "teacher"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest == done["teacher"]
    assert set(manifest["metrics"]["dev"]) == {"accuracy"} and 0 <= manifest["metrics"]["dev"]["accuracy"] <= 1
    assert "model/model.safetensors" in manifest["outputs"] and manifest["params"] > 0
    assert any(k.endswith("SST-2/train.tsv") for k in manifest["inputs"])
    assert manifest["env"]["versions"]["torch"].startswith("2.13") and manifest["env"]["host"]["cpu"]
    from compress.manifest import INT8_BF16_FEATURES, cpu_flags  # the int8/bf16 kernels this host runs, said

    present = [f for f in INT8_BF16_FEATURES if f in cpu_flags()]
    assert manifest["env"]["host"]["cpu_features"] == ("+".join(present) or "none of avx2/avx512f/avx512_vnni")
    assert manifest["config"]["teacher"]["epochs"] == 1.0 and manifest["timing"]["wall_s"] > 0
    assert not list(folder.parent.glob(".teacher.tmp-*"))
    # the held-out scores are those fit took of the weights it kept (not scored a second time): what scoring the
    # saved model gives, to the digit
    from compress.evaluate import evaluate

    model, tok = load_trained(folder / "model")
    data = load_task(recipe.task, seed=recipe.seed)
    held = evaluate(model, tokenize(data.holdout, tok, 32), Collator({"": tok}), data.spec)
    best = [r for r in manifest["train"]["history"] if r["step"] == manifest["train"]["best_step"]]
    assert len(data.holdout) == 67 and manifest["metrics"]["holdout"] == held == {"accuracy": best[-1]["accuracy"]}
    created = manifest["created"]
    # unchanged -> reused
    capsys.readouterr()
    again = run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir)))
    assert again["teacher"]["created"] == created and "up to date" in capsys.readouterr().out
    # a command with nothing to do answers without importing torch (with transformers, datasets and accelerate: ~5 s
    # of a second `make pipeline` or a `make report` after the run), says the same, and still removes what a killed
    # run left
    import subprocess
    import sys

    dead = folder.parent / ".teacher.tmp-999999999"
    dead.mkdir()
    script = ("import sys; from compress.cli import main; code = main(['run', sys.argv[1]]); "
              "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", script, str(_recipe(tmp_path, tiny_bert_dir))], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [f"[teacher] up to date ({folder})", f"run folder: {folder.parent}",
                                        "torch not imported"]
    assert not dead.exists() and json.loads((folder / "manifest.json").read_text())["created"] == created
    # a tampered output is not trusted (redone: said, and a new manifest; `created` has whole seconds, the same for a
    # stage redone within the second)
    (folder / "metrics.json").write_text("{}")
    inode = (folder / "manifest.json").stat().st_ino
    capsys.readouterr()
    run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir)))
    assert f"[teacher] running -> {folder}" in capsys.readouterr().out
    assert (folder / "manifest.json").stat().st_ino != inode
    # an unreadable manifest (a crash mid-write, an editor) means "not done": redone, not a traceback
    for junk in ("{bad", "[]"):
        (folder / "manifest.json").write_text(junk)
        capsys.readouterr()
        run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir)))
        assert "(its manifest.json is unreadable)" in capsys.readouterr().out
    # forced
    capsys.readouterr()
    forced = run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir)), force=("teacher",))
    assert f"[teacher] running -> {folder} (forced)" in capsys.readouterr().out
    # trained again, the same model: its metrics.json differs only in how the run went (train_s, tokens/s), and the
    # stages after it read the same inputs (a changed train_s redid every one of them, the report's timing included)
    from compress.pipeline import STAGES, _inputs

    quantize = next(s for s in STAGES if s.name == "quantize")
    later = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra="quantize: {}\n"))
    assert forced["teacher"]["outputs"]["model/model.safetensors"] == manifest["outputs"]["model/model.safetensors"]
    assert set(forced["teacher"]["records"]) == {"metrics.json"}
    assert _inputs(later, quantize, {"teacher": forced["teacher"]}) == _inputs(later, quantize, {"teacher": manifest})
    assert "teacher/metrics.json" in _inputs(later, quantize, {"teacher": manifest})
    from compress.pipeline import explain  # --force all: every stage, in the plan and in the run

    assert explain(load_recipe(_recipe(tmp_path, tiny_bert_dir)), force=("all",))[0] == ("teacher", True,
                                                                                         "forced (--force)")
    run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir)), force=("all",))
    assert f"[teacher] running -> {folder} (forced)" in capsys.readouterr().out
    assert forced["teacher"]["fingerprint"] == manifest["fingerprint"]
    # changed config -> redone with a new fingerprint, and the log says why
    capsys.readouterr()
    changed = run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir, epochs=2)))
    assert changed["teacher"]["fingerprint"] != manifest["fingerprint"]
    assert f"[teacher] running -> {folder} (changed: teacher.epochs: 1.0 -> 2.0)" in capsys.readouterr().out


def test_records_read_by_later_stages_leave_out_how_the_run_went(tmp_path):
    """A student's metrics of a first run ("teacher_logits_precision") and of a forced one (the cached logits reused:
    "teacher_cache_reused"), and a pruned model kept from the previous run (no intermediate dev scores) against one
    trained again, are the same records to the stages after them: they redid prune, the report's timing and the
    bundle for the same model. A score is not."""
    from compress.manifest import record_digests, sha256_file

    first = {"metrics": {"dev": {"accuracy": 0.8}}, "timing": {"train_s": 2.1, "teacher_logits_precision": "fp32"},
             "train": {"joint": {"steps": 3, "tokens_per_s": 400.0, "resumed_from": None}},
             "steps": [{"step": 1, "dev_pruned": {"accuracy": 0.7}, "dev_recovered": {"accuracy": 0.75}}]}
    forced = {**first, "timing": {"train_s": 2.4, "teacher_cache_reused": True}, "kept_from_previous_run": True,
              "steps": [{"step": 1}]}
    scored = {**first, "metrics": {"dev": {"accuracy": 0.81}}}
    digests = []
    for i, data in enumerate((first, forced, scored)):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "metrics.json").write_text(json.dumps(data))
        digest = sha256_file(tmp_path / str(i) / "metrics.json")
        digests.append(record_digests(tmp_path / str(i), {"metrics.json": digest})["metrics.json"])
    assert digests[0] == digests[1] != digests[2]


def test_dry_run_says_which_stages_would_run_and_why(tiny_bert_dir, tmp_path, capsys):
    from compress.cli import main
    from compress.pipeline import explain

    def recipe(**kw):
        return load_recipe(_recipe(tmp_path, tiny_bert_dir, extra="quantize: {max_drop: 1.0}\n", **kw))

    assert explain(recipe()) == [("teacher", True, "not run yet"), ("quantize", True, "after teacher (reads its outputs)")]
    run_pipeline(recipe(), until="teacher")
    assert explain(recipe()) == [("teacher", False, "up to date"), ("quantize", True, "not run yet")]
    # the seed the run's gives it, set: the same teacher (it was trained again, and every stage after it redone)
    written = _recipe(tmp_path, tiny_bert_dir, extra="quantize: {max_drop: 1.0}\n")
    assert explain(load_recipe(written, {"teacher.seed": 42}))[0] == ("teacher", False, "up to date")
    assert explain(load_recipe(written, {"teacher.seed": 43}))[0] == ("teacher", True,
                                                                      "changed: teacher.seed: null -> 43")
    assert explain(recipe(epochs=2))[0] == ("teacher", True, "changed: teacher.epochs: 1.0 -> 2.0")
    path = _recipe(tmp_path, tiny_bert_dir, extra="quantize: {max_drop: 1.0}\n")  # lr left out: its default said
    path.write_text(path.read_text().replace(" lr: 1.0e-3,", ""))
    assert explain(load_recipe(path))[0] == ("teacher", True, "changed: teacher.lr: 0.001 -> 5e-05")
    assert explain(recipe(), force=("teacher",))[0] == ("teacher", True, "forced (--force)")
    # a copied data folder named in the recipe holds the same inputs (same bytes): up to date; an edited copy names
    # the files
    import shutil

    from conftest import GLUE

    src, copy = GLUE / "SST-2", tmp_path / "SST-2-copy"
    copy.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        shutil.copyfile(src / name, copy / name)
    moved = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra="quantize: {max_drop: 1.0}\n"),
                        {"task.data_dir": str(copy)})
    assert explain(moved)[0] == ("teacher", False, "up to date")
    with open(copy / "dev.tsv", "a") as f:
        f.write("an extra row\t1\n")
    why = explain(moved)[0][2]
    assert why.startswith("changed: task.data_dir: null -> ") and why.endswith(
        f"; new input {copy / 'dev.tsv'}; input {src / 'train.tsv'} now read from "
                        f"{copy / 'train.tsv'} (same content); input {src / 'dev.tsv'} no longer read; its trained "
                        "model is kept and scored again")  # the same train bytes: trained as before
    with pytest.raises(CompressError, match="--force teachr: unknown stage"):
        explain(recipe(), force=("teachr",))
    folder = tmp_path / "runs" / "tiny" / "teacher"
    manifest = (folder / "manifest.json").read_text()
    (folder / "metrics.json").write_text("{}")
    assert explain(recipe())[0] == ("teacher", True, "its outputs were edited since they were written")
    capsys.readouterr()
    assert main(["run", str(_recipe(tmp_path, tiny_bert_dir, epochs=3)), "--dry-run", "--set", "seed=7"]) == 0
    out = capsys.readouterr().out
    assert "[teacher] would run: changed: teacher.epochs: 1.0 -> 3.0; seed: 42 -> 7" in out and "nothing run" in out
    assert (folder / "manifest.json").read_text() == manifest and (folder / "metrics.json").read_text() == "{}"
    assert sorted(p.name for p in folder.parent.iterdir()) == [".lock", "teacher"]  # a dry run writes nothing
    # a data file the run would read is missing: --dry-run says so as a warning (the plan is still shown)
    missing = tmp_path / "SST-2-gone"
    assert main(["run", str(_recipe(tmp_path, tiny_bert_dir, epochs=3)), "--dry-run", "--set",
                 f"task.data_dir={missing}"]) == 0
    out, err = capsys.readouterr()
    assert "[teacher] would run: changed: " in out and "nothing run" in out
    assert f"warning: {tmp_path / 'tiny.yaml'}: task: {missing / 'train.tsv'}: file not found" in err, err
    # a stage the recipe does not configure: refused in one line, before anything runs
    assert main(["run", str(_recipe(tmp_path, tiny_bert_dir, epochs=3)), "--dry-run", "--stage", "prune"]) == 2
    said = capsys.readouterr().err
    assert said == f"error: {tmp_path / 'tiny.yaml'}: stage 'prune' is not configured in this recipe\n"


def test_settings_given_their_defaults_values_are_the_stages_fingerprints_of_them_unset(tmp_path, tiny_bert_dir):
    """A student's or a one-step recovery's seed equal to the run's, and the default bundle name, read as unset in
    every stage's fingerprint (they redid those stages, and every one after, for the same models); a seed of
    another value, or a two-step recovery's seed (its second step's default is the run's + 1), does not."""
    from compress.pipeline import STAGES, _as_read, _config, student_key

    extra = ("students: [{name: s, kind: layer_drop, layers: 1}]\nprune: {heads: 0.5, recover: {max_steps: 2}}\n"
             "quantize: {}\nbundle: {}\n")
    path = _recipe(tmp_path, tiny_bert_dir, extra=extra)

    def configs(**sets):
        r = load_recipe(path, sets)
        return [_config(_as_read(r), s) for s in STAGES], student_key(r, 0, {"outputs": {}})

    plain = configs()
    assert configs(**{"teacher.seed": 42, "students.0.train.seed": 42, "prune.recover.seed": 42,
                      "bundle.name": "tiny-sst2-int8"}) == plain
    for sets, base in (({"students.0.train.seed": 7}, {}), ({"prune.recover.seed": 42}, {"prune.steps": 2}),
                       ({"bundle.name": "mine"}, {})):
        before, changed = configs(**base), configs(**base, **sets)
        assert changed[0] != before[0] and (changed[1] != before[1]) == ("students.0.train.seed" in sets), sets


def test_dry_run_reasons_name_a_student_added_or_removed_and_the_edited_file_first():
    """A student added read "students: [{"name": "s1", ... -> [{"name": "s1", ..." (both cut to 40 characters); an
    edited tokenizer file was hidden in "+4 more" behind files read elsewhere with the same content."""
    from compress.pipeline import _changes, _input_changes

    s1, s2 = {"name": "s1", "layers": 1}, {"name": "s2", "layers": 2}
    assert _changes({"students": [s1]}, {"students": [s1, s2]}) == ["students: 's2' added"]
    assert _changes({"students": [s1, s2]}, {"students": [{**s2, "layers": 3}]}) == [
        "students: 's1' removed", "students.0.layers: 2 -> 3"]
    assert _changes({"students": [s1, s2]}, {"students": [s2, s1]}) == ["students: order s1, s2 -> s2, s1"]
    assert _changes({"students": [s1]}, {"students": [{**s1, "layers": 2}]}) == ["students.0.layers: 1 -> 2"]
    before = {"a/vocab.txt": "1", "a/config.json": "2", "a/tokenizer_config.json": "3"}
    now = {"b/vocab.txt": "1", "b/config.json": "2", "b/tokenizer_config.json": "4"}
    assert _input_changes(before, now, sorted(set(before) | set(now))) == [
        "new input b/tokenizer_config.json", "input a/config.json now read from b/config.json (same content)",
        "input a/vocab.txt now read from b/vocab.txt (same content)", "input a/tokenizer_config.json no longer read"]


def test_failed_stage_leaves_nothing_behind(tmp_path, tiny_bert_dir, monkeypatch):
    """A stage that fails after writing into its working folder leaves neither it nor a stage folder; a run also
    clears a killed run's working folder and a dead process's scratch (not a live one's)."""
    import os
    import tempfile

    import teachers.finetune

    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir))
    orphan = tmp_path / "runs" / "tiny" / ".teacher.tmp-999999999"  # left by a killed run (no such process)
    orphan.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-tmp"))  # scratch of a killed quantize stage
    dead, live = (tmp_path / "system-tmp" / f"compress-quantize-{pid}-x1" for pid in (999999999, os.getpid()))
    for folder in (dead, live):
        (folder / "static-src.onnx").parent.mkdir(parents=True)
    working = []

    def fails_midway(recipe, out, inputs, forced=False):
        (out / "model.safetensors").write_bytes(b"half-written")
        working.append(out)
        raise CompressError("boom: the stage failed after writing")

    monkeypatch.setattr(teachers.finetune, "run", fails_midway)
    with pytest.raises(CompressError, match="boom"):
        run_pipeline(recipe)
    run_dir = tmp_path / "runs" / "tiny"
    assert working and working[0].parent == run_dir and working[0].name.startswith(".teacher.tmp-")
    assert not (run_dir / "teacher").exists() and not list(run_dir.glob(".teacher*"))
    assert not dead.exists() and live.is_dir()  # a running process's scratch is its own
    with pytest.raises(CompressError, match="no-such-model"):  # refused before any stage: no stage folder either
        run_pipeline(load_recipe(_recipe(tmp_path, tmp_path / "no-such-model")))
    assert not (run_dir / "teacher").exists() and not list(run_dir.glob(".teacher*"))
    with pytest.raises(CompressError, match="unknown stage 'distil'"):
        run_pipeline(recipe, until="distil")


def test_a_run_that_fails_before_any_stage_wrote_leaves_no_run_folder(tmp_path, tiny_bert_dir, capsys):
    """A model whose position table is shorter than task.max_length is refused, naming the field, before training;
    a report.compare entry that is not a run folder stops the run before the teacher trains; neither leaves an empty
    run folder, nor an empty runs folder made for it. A runs_dir that is a file is one line of error."""
    from compress.cli import main

    runs = tmp_path / "runs"
    with pytest.raises(CompressError, match=r"tiny\.yaml: task\.max_length: 256 tokens exceed the 128 positions of "
                                            r"teacher\.model '.*' \(max_position_embeddings\); use at most 128"):
        run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir), {"task.max_length": 256}))
    assert not runs.exists()
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=f"report: {{compare: [{tmp_path / 'nope'}]}}\n"))
    with pytest.raises(CompressError, match=r"report\.compare\[0\]: '.*nope' is not a run folder"):
        run_pipeline(recipe)
    assert not runs.exists()  # nor the runs folder the run made for it (it was left empty)
    (runs / "other").mkdir(parents=True)  # another run's: kept
    with pytest.raises(CompressError, match=r"report\.compare\[0\]: '.*nope' is not a run folder"):
        run_pipeline(recipe)
    assert sorted(p.name for p in runs.iterdir()) == ["other"]
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    assert main(["run", str(_recipe(tmp_path, tiny_bert_dir)), "--runs-dir", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'file' / 'tiny'}: Not a directory"
    # --dry-run said "would run" without a word of it
    assert main(["run", str(_recipe(tmp_path, tiny_bert_dir)), "--runs-dir", str(tmp_path / "file"), "--dry-run"]) == 0
    assert capsys.readouterr().err == (f"warning: {tmp_path / 'tiny.yaml'}: runs_dir: {tmp_path / 'file'} is a file, "
                                       f"not a folder (the run folder is {tmp_path / 'file' / 'tiny'})\n")


def test_a_run_folder_in_use_stops_a_second_run_at_once(tmp_path, tiny_bert_dir):
    """Two runs on one run folder: the second stops with the first's pid before any stage starts; once the first
    process is gone (killed even), its lock is gone too."""
    import subprocess
    import sys

    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir))
    run_dir = recipe.run_dir
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom compress.pipeline import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(120)\n", str(run_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CompressError, match=rf"{run_dir}: in use by another compress run \(pid {holder.pid}\)"):
            run_pipeline(recipe)
        assert not (run_dir / "teacher").exists() and not list(run_dir.glob(".teacher*"))
        # forced (`compress bench` forces its stage) alike, and at once: before torch is imported (9.5 s it took)
        script = ("import sys; from compress.cli import main; code = main(['run', sys.argv[1], '--force', 'teacher']); "
                  "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(code)")
        proc = subprocess.run([sys.executable, "-c", script, str(_recipe(tmp_path, tiny_bert_dir))],
                              capture_output=True, text=True)
        assert (proc.returncode, proc.stdout) == (2, "torch not imported\n"), proc.stderr
        assert f"in use by another compress run (pid {holder.pid})" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    assert run_pipeline(recipe)["teacher"]["metrics"]["dev"]["accuracy"] >= 0  # the killed holder left no lock


def test_a_run_refused_by_the_lock_leaves_the_holders_new_folder_alone(tmp_path, tiny_bert_dir, monkeypatch):
    """Two runs started together on a run folder that did not exist: the one refused by the lock (it had seen no
    folder, seconds before, while torch loaded) deleted the folder the other had just made, its .lock with it, so a
    third run took the folder beside the holder."""
    import subprocess
    import sys

    from compress import pipeline

    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir))
    run_dir = recipe.run_dir
    real_lock, holders = pipeline.run_lock, []

    def another_run_got_there_first(folder, take=True):
        code = ("import sys, time\nfrom pathlib import Path\nfrom compress.pipeline import run_lock\n"
                "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(120)\n")
        holders.append(subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True))
        assert holders[0].stdout.readline().strip() == "held"
        return real_lock(folder, take)

    monkeypatch.setattr(pipeline, "run_lock", another_run_got_there_first)
    try:
        with pytest.raises(CompressError, match="in use by another compress run"):
            run_pipeline(recipe)
        assert (run_dir / ".lock").read_text().strip() == str(holders[0].pid)
        with pytest.raises(CompressError, match=rf"in use by another compress run \(pid {holders[0].pid}\)"):
            with real_lock(run_dir):
                pass
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_cli_one_line_error(tmp_path, capsys):
    from compress.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("task: {name: sst2}\nteacher: {batch: 3}\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "teacher.batch: unknown key" in err and str(bad) in err


def test_checkpoints_of_another_config_are_discarded_and_a_done_stage_drops_its_own(tmp_path, tiny_bert_dir, capsys):
    """A checkpoint folder stamped with another fingerprint (an interrupted run of an earlier config) is not resumed
    from; once the stage is done its checkpoints go."""
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir), {"teacher.checkpoint_every": 2})
    stale = recipe.run_dir / ".checkpoints" / "teacher"
    (stale / "step-00000004").mkdir(parents=True)
    (stale / "step-00000004" / "trainer.json").write_text("{not a checkpoint of this config")
    (stale / "FINGERPRINT").write_text("an-earlier-config\n")
    run_pipeline(recipe)
    said = f"[teacher] discarding the checkpoints of an earlier config, input, process count or compress version ({stale})"
    assert said in capsys.readouterr().out
    assert not (recipe.run_dir / ".checkpoints").exists()


def test_a_reused_stage_drops_the_checkpoints_of_an_interrupted_forced_run(tmp_path, tiny_bert_dir, capsys):
    """Ctrl-C during `--force teacher` left its checkpoints (model and optimizer state: gigabytes for bert-large);
    the next plain run reused the stage's earlier outputs and left them, for good. Now a reused stage drops the
    checkpoints of its own fingerprint; those of another config (one the user may come back to) are kept."""
    from compress import pipeline

    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir), {"teacher.checkpoint_every": 2})
    run_pipeline(recipe)
    fp = pipeline._fingerprint(recipe, pipeline.plan(recipe)[0], {})[0]
    ckpt = recipe.run_dir / ".checkpoints" / "teacher"
    for stamp, kept in ((pipeline.checkpoint_stamp(fp, 1), False), ("another-config processes=1 checkpoints=2", True)):
        (ckpt / "step-00000002").mkdir(parents=True)
        (ckpt / "FINGERPRINT").write_text(stamp + "\n")
        capsys.readouterr()
        run_pipeline(recipe)
        assert "[teacher] up to date" in capsys.readouterr().out
        assert (ckpt / "step-00000002").is_dir() == kept, stamp
    assert (ckpt / "FINGERPRINT").read_text().startswith("another-config")


def test_checkpoints_of_an_earlier_checkpoint_revision_are_discarded(tmp_path, tiny_bert_dir, capsys):
    """A checkpoint of this very config written before `CHECKPOINT_REVISION` was raised (its stamp: fingerprint and
    process count only) is not resumed from: what it holds may no longer load (a distiller's projections)."""
    from compress import pipeline

    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir), {"teacher.checkpoint_every": 2})
    fp = pipeline._fingerprint(recipe, pipeline.plan(recipe)[0], {})[0]
    assert pipeline.checkpoint_stamp(fp, 1) != f"{fp} processes=1"
    stale = recipe.run_dir / ".checkpoints" / "teacher"
    (stale / "step-00000004").mkdir(parents=True)
    (stale / "step-00000004" / "trainer.json").write_text("{written by an earlier version")
    (stale / "FINGERPRINT").write_text(f"{fp} processes=1\n")
    run_pipeline(recipe)
    assert f"discarding the checkpoints of an earlier config, input, process count or compress version ({stale})" \
        in capsys.readouterr().out


def test_a_stamp_without_checkpoints_is_not_reported_as_discarded(tmp_path, capsys):
    """kill -9 during a stage that never checkpoints (quantize, bench, report...) leaves its stamp alone; the next run
    of another config said it was "discarding the checkpoints" of a stage that has none."""
    from compress.pipeline import _claim_checkpoints

    stale = tmp_path / ".checkpoints" / "quantize"
    stale.mkdir(parents=True)
    (stale / "FINGERPRINT").write_text("an-earlier-config\n")
    _claim_checkpoints(tmp_path, "quantize", "this-config")
    assert capsys.readouterr().out == "" and (stale / "FINGERPRINT").read_text() == "this-config\n"


def test_sigterm_unwinds_like_ctrl_c(tmp_path, tiny_bert_dir):
    """`kill` / a scheduler's SIGTERM mid-training: one line, exit 143, no temporary stage folder left."""
    import signal
    import subprocess
    import sys
    import time

    path = _recipe(tmp_path, tiny_bert_dir, epochs=200)
    proc = subprocess.Popen([sys.executable, "-m", "compress", "run", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    run_dir = tmp_path / "runs" / "tiny"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(run_dir.glob(".teacher.tmp-*")):
        time.sleep(0.1)
    time.sleep(3)  # into the training loop
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.rstrip().endswith("terminated"), err[-2000:]
    assert not list(run_dir.glob(".teacher.tmp-*")) and not (run_dir / "teacher").exists()
    assert "%|" not in err, err[-2000:]  # TQDM_DISABLE=1: no training bar either (its disable=False overrode it)


def test_a_teacher_already_fine_tuned_is_kept_as_it_is(tiny_bert_dir, tmp_path, tokenizer, caplog, monkeypatch,
                                                        capsys):
    """``teacher.finetune: false``: the folder's trained head is kept, the stage trains nothing and scores the model as
    given; a head that cannot be the task's is refused in one line."""
    from safetensors.torch import load_file
    from transformers import BertForSequenceClassification, BertModel

    from compress.data import GLUE_TASKS
    from conftest import tiny_bert_config

    import teachers.finetune

    asked = []  # scored where training would have put it (a GPU's, if any), not on the CPU
    monkeypatch.setattr(teachers.finetune, "process_device", lambda: asked.append(True) or torch.device("cpu"))
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir), {"teacher.finetune": False})
    done = run_pipeline(recipe)["teacher"]
    assert asked and done["train"]["steps"] == 0 and done["train"]["finetuned"] is False
    # its training settings are unused: changing them redoes nothing (the teacher and every stage after it were redone)
    unused = {"teacher.finetune": False, "teacher.lr": 1e-3, "teacher.precision": "bf16", "teacher.seed": 7}
    capsys.readouterr()
    assert run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir), unused))["teacher"]["created"] == done["created"]
    assert "[teacher] up to date" in capsys.readouterr().out  # (`created` alone: the same for a redo within the second)
    saved = load_file(tmp_path / "runs" / "tiny" / "teacher" / "model" / "model.safetensors")
    given = load_file(tiny_bert_dir / "model.safetensors")
    assert saved.keys() == given.keys() and all(torch.equal(saved[k], given[k]) for k in given)  # not trained
    model, tok = load_trained(tiny_bert_dir)
    data = load_task(recipe.task, seed=recipe.seed)
    logits = predict(model, tokenize(data.dev, tok, 32), Collator({"": tok}))
    assert done["metrics"]["dev"]["accuracy"] == pytest.approx(float((logits.argmax(1) == np.array(data.dev["label"]))
                                                                     .mean()))
    assert json.loads((tmp_path / "runs" / "tiny" / "teacher" / "model" / "config.json").read_text())["id2label"] == \
        {"0": "0", "1": "1"}  # the task's label names

    def folder(name, model, **labels):
        path = tmp_path / name
        if labels:
            model.config.id2label = labels["id2label"]
            model.config.label2id = {v: k for k, v in labels["id2label"].items()}
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return str(path)

    sst2 = GLUE_TASKS["sst2"]
    three = folder("three", BertForSequenceClassification(tiny_bert_config(num_labels=3)))
    with pytest.raises(CompressError, match=r"its head has 3 output\(s\), the task needs 2 labels"):
        load_for_task(three, sst2, keep_head=True)
    # the task's labels in another order: the head's outputs are put in the task's order, kept or fine-tuned
    original = BertForSequenceClassification(tiny_bert_config()).eval()
    with torch.no_grad():  # a bias of its own (HF starts it at 0): reordered with the weights
        original.classifier.bias.copy_(torch.tensor([0.5, -0.5]))
    swapped = folder("swapped", original, id2label={0: "1", 1: "0"})
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    expected = original(input_ids=ids).logits[:, [1, 0]]
    for keep in (True, False):
        model, _ = load_for_task(swapped, sst2, keep_head=keep)
        assert torch.allclose(model.eval()(input_ids=ids).logits, expected, atol=1e-6)
        assert model.config.id2label == {0: "0", 1: "1"}
    bare = folder("bare", BertModel(tiny_bert_config()))
    with pytest.raises(CompressError, match=r"no trained classification head \(config\.json's architectures: "
                                            r"BertModel\); fine-tune it here"):
        load_for_task(bare, sst2, keep_head=True)
    # a bare encoder on a task of another label count (what a hub id gets, no recipe validation before torch): the
    # head is missing, not of another size (config.json's default num_labels is 2)
    with pytest.raises(CompressError, match=r"no trained classification head \(config\.json's architectures: "
                                            r"BertModel\)"):
        load_for_task(bare, dataclasses.replace(sst2, labels=["a", "b", "c"]), keep_head=True)
    unnamed = folder("unnamed", BertModel(tiny_bert_config()))
    config = json.loads((tmp_path / "unnamed" / "config.json").read_text())
    (tmp_path / "unnamed" / "config.json").write_text(json.dumps({**config, "architectures": None}))
    with pytest.raises(CompressError, match=r"no trained classification head \(classifier\.bias, classifier\.weight"):
        load_for_task(unnamed, sst2, keep_head=True)  # no architectures named: the weights tell
    named = folder("named", BertForSequenceClassification(tiny_bert_config()), id2label={0: "NEGATIVE", 1: "POSITIVE"})
    with caplog.at_level("WARNING"):
        model, _ = load_for_task(named, sst2, keep_head=True)
    assert "head labels ['NEGATIVE', 'POSITIVE'] taken as the task's ['0', '1']" in caplog.text
    assert model.config.id2label == {0: "0", 1: "1"}
    # a local folder is checked by the recipe's validation already (before torch): one line naming file and field
    (tmp_path / "b").mkdir()
    with pytest.raises(CompressError) as e:
        load_recipe(_recipe(tmp_path / "b", three), {"teacher.finetune": False})
    assert str(e.value).startswith(f"{tmp_path / 'b' / 'tiny.yaml'}: teacher.model: {three!r} (finetune: false): "
                                   f"its head has 3 output(s)")
    for fine in (named, swapped):  # other names: a warning at load; another order: reordered at load
        load_recipe(_recipe(tmp_path / "b", fine), {"teacher.finetune": False})


def test_validation_refuses_a_teacher_kept_as_is_without_a_trained_head(tiny_bert_dir, tmp_path):
    """``teacher.finetune: false`` on a zoo model or a folder of a bare encoder (config.json's architectures without a
    ...ForSequenceClassification) is refused by the recipe's validation, before torch, as docs/zoo.md says: not only
    once the teacher stage has loaded it; what the validation cannot see (no architectures named) by the stage."""
    bare = tmp_path / "bare"
    shutil.copytree(tiny_bert_dir, bare)
    config = json.loads((bare / "config.json").read_text())
    config["architectures"] = ["BertModel"]
    (bare / "config.json").write_text(json.dumps(config))
    (tmp_path / "b").mkdir()
    recipe = _recipe(tmp_path / "b", bare)
    with pytest.raises(CompressError) as e:
        load_recipe(recipe, {"teacher.finetune": False})
    assert str(e.value) == (f"{recipe}: teacher.model: {str(bare)!r} (finetune: false): it has no trained "
                            f"classification head (config.json's architectures: BertModel); fine-tune it here "
                            f"instead (finetune: true)")
    with pytest.raises(CompressError, match=r"teacher\.model: 'minilm-l6' \(finetune: false\): a zoo model is a "
                                            r"pretrained encoder without a trained classification head"):
        load_recipe(_recipe(tmp_path / "b", "minilm-l6"), {"teacher.finetune": False})
    # no architectures named (what the validation reads): the teacher stage finds the head's weights missing, and
    # stops there, naming the field, instead of scoring and saving a head initialised at random
    from safetensors.torch import load_file, save_file

    config["architectures"] = None
    (bare / "config.json").write_text(json.dumps(config))
    weights = load_file(bare / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")}, bare / "model.safetensors",
              metadata={"format": "pt"})
    recipe = _recipe(tmp_path / "b", bare)
    with pytest.raises(CompressError) as e:
        run_pipeline(load_recipe(recipe, {"teacher.finetune": False}))
    assert str(e.value).startswith(f"{recipe}: teacher.model: model {str(bare)!r} (teacher.finetune: false): it has "
                                   f"no trained classification head (classifier.bias, classifier.weight would be new")
    assert not (tmp_path / "b" / "runs" / "tiny" / "teacher").exists()
    recipe = _recipe(tmp_path / "b", bare)
    for key, value in (("id2label", ["a", "b"]), ("num_labels", "two"), ("architectures", 3)):  # hand-broken
        (bare / "config.json").write_text(json.dumps({**config, "architectures": None, key: value}))
        with pytest.raises(CompressError, match=r"\(finetune: false\): config\.json: architectures, id2label or "
                                                r"num_labels malformed"):
            load_recipe(recipe, {"teacher.finetune": False})
    (bare / "config.json").write_text(json.dumps(config))
    load_recipe(recipe)  # fine-tuned here: a bare encoder is what the stage starts from
    load_recipe(_recipe(tmp_path / "b", tiny_bert_dir), {"teacher.finetune": False})  # a classifier: kept as is


def test_a_constant_target_on_the_test_split_is_one_warning_line_not_scipy_noise(tmp_path, tokenizer, caplog):
    """A regression task whose labelled test file holds one value: pearson and spearmanr are undefined there. scipy
    printed its ConstantInputWarning (with its source line) about six times; the teacher stage now says it once, and
    so do the distill and prune stages for their models (recorded as nan silently before)."""
    import warnings

    from transformers import BertForSequenceClassification

    from conftest import tiny_bert_config

    folder = tmp_path / "reg"
    BertForSequenceClassification(tiny_bert_config(num_labels=1)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    words = ["a fine film", "dull and long", "great fun", "not good", "moving", "a mess"]
    for split, score in (("train", None), ("dev", None), ("test", 2.5)):
        rows = [{"text": w, "score": score if score is not None else float(i % 5)} for i, w in enumerate(words * 4)]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "reg.yaml"
    path.write_text(f"name: reg\nruns_dir: {tmp_path / 'runs'}\n"
                    f"task: {{name: myreg, files: {{train: {tmp_path / 'train.jsonl'}, dev: {tmp_path / 'dev.jsonl'}, "
                    f"test: {tmp_path / 'test.jsonl'}}}, text_column: text, label_column: score, regression: true, "
                    f"max_length: 16, holdout: 0.0}}\nteacher: {{model: {folder}, finetune: false}}\n"
                    f"students: [{{name: s, kind: narrow, init: random, hidden: 32, heads: 2, ffn: 64, layers: 1, "
                    f"train: {{max_steps: 1}}}}]\nprune: {{heads: 0.5, recover: null}}\n")
    with warnings.catch_warnings(record=True) as seen, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        done = run_pipeline(load_recipe(path))
    assert not [w for w in seen if "constant" in str(w.message).lower()], [str(w.message) for w in seen]
    for scores, who in ((done["teacher"]["metrics"], "teacher"),
                        (done["distill"]["metrics"]["students"]["s"], "distill: student s"),
                        (done["prune"]["metrics"], "prune: the pruned model")):
        assert all(np.isnan(v) for v in scores["test"].values()), scores
        assert f"{who}: its pearson and spearmanr on the labelled test split are undefined" in caplog.text


def test_a_teacher_that_predicts_one_label_is_warned_of_in_the_stage_and_the_report(tmp_path, tokenizer, caplog):
    """A teacher predicting one label for every dev row (here a head biased to label '1') scores that label's share,
    and every retention against it reads high: the stage warns and records it, the report says so in its note and
    warnings. A teacher predicting both labels records nothing."""
    from transformers import BertForSequenceClassification

    from compress.report import collect, note, report_warnings
    from conftest import tiny_bert_config

    model = BertForSequenceClassification(tiny_bert_config())
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([-5.0, 5.0]))
    folder = tmp_path / "constant"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    recipe = load_recipe(_recipe(tmp_path, folder), {"teacher.finetune": False})
    with caplog.at_level("WARNING"):
        done = run_pipeline(recipe)["teacher"]
    assert "teacher: predicts '1' for every one of the 100 dev rows (a constant model)" in caplog.text
    assert done["train"]["dev_constant_label"] == "1"
    table = collect(tmp_path / "runs" / "tiny")
    assert table.teacher_constant == "1"
    assert note(table).startswith("Warning: the teacher predicts '1' for every dev row (a constant model)")
    assert any("the teacher predicts '1' for every dev row" in w for w in report_warnings([table], None))

    from compress.data import GLUE_TASKS
    from compress.evaluate import constant_label

    sst2 = GLUE_TASKS["sst2"]
    assert constant_label(np.array([[0.0, 1.0], [1.0, 0.0]]), sst2) is None
    assert constant_label(np.array([[0.0, 1.0]]), sst2) is None  # one row says nothing
    assert constant_label(np.array([[2.0, 1.0], [3.0, 1.0]]), sst2) == "0"


def test_a_nan_first_evaluation_does_not_hold_the_best_checkpoint(tiny_bert_dir):
    """Pearson of a model still predicting a constant is nan, and ``value > nan`` is never true: the first state would
    stay the best one for good. A number beats a nan."""
    data = load_task(TaskConfig(name="sst2", max_train_samples=96, holdout=0.002), seed=0)
    model, tok = load_for_task(str(tiny_bert_dir), data.spec)
    scores = iter([float("nan"), 0.3, 0.2])
    result = fit(model, tokenize(data.train, tok, 32), Collator({"": tok}),
                 TrainConfig(epochs=3, batch_size=32, eval_every=None), seed=0,
                 evaluate=lambda m: {"pearson": next(scores)})
    assert [h["pearson"] for h in result.history][1:] == [0.3, 0.2]
    assert result.best_metric == 0.3 and result.best_step == 6
    # every score nan (a one-row held-out slice of a regression task): the first evaluation's weights were restored
    # after all the training; nothing is selected now, the final weights stay, with a warning
    model, tok = load_for_task(str(tiny_bert_dir), data.spec)
    trained = []
    result = fit(model, tokenize(data.train, tok, 32), Collator({"": tok}),
                 TrainConfig(epochs=3, batch_size=32, eval_every=None), seed=0,
                 evaluate=lambda m: trained.append({k: v.clone() for k, v in m.state_dict().items()})
                 or {"pearson": float("nan")})
    assert result.best_step is None and len(trained) == 3
    final = model.state_dict()
    assert all(torch.equal(final[k], trained[-1][k]) for k in final)
    assert not all(torch.equal(final[k], trained[0][k]) for k in final)


def test_a_local_teacher_folder_whose_files_change_redoes_the_teacher(tiny_bert_dir, tmp_path, capsys):
    """The files of a local model folder (``teacher.model``) are inputs like the task's data files: new weights in the
    same folder redo the teacher stage instead of reusing a model fine-tuned from the old ones."""
    from transformers import BertForSequenceClassification

    from compress.pipeline import explain
    from conftest import tiny_bert_config

    run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir)), until="teacher")
    folder = tmp_path / "runs" / "tiny" / "teacher"
    first = json.loads((folder / "manifest.json").read_text())
    assert f"{tiny_bert_dir}/model.safetensors" in first["inputs"]
    assert explain(load_recipe(_recipe(tmp_path, tiny_bert_dir))) == [("teacher", False, "up to date")]
    torch.manual_seed(1)  # other weights, same folder and recipe
    BertForSequenceClassification(tiny_bert_config()).save_pretrained(tiny_bert_dir)
    assert explain(load_recipe(_recipe(tmp_path, tiny_bert_dir))) == [
        ("teacher", True, f"changed: input {tiny_bert_dir}/model.safetensors changed")]
    capsys.readouterr()
    again = run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir)))["teacher"]
    assert again["fingerprint"] != first["fingerprint"] and "[teacher] running" in capsys.readouterr().out
    # a student's init or tokenizer folder is the distill stage's input the same way (zoo names, random: not folders)
    from compress.pipeline import STAGES, _folders

    students = (f"students: [{{name: a, kind: narrow, init: {tiny_bert_dir}, layers: 1}}, "
                f"{{name: b, kind: narrow, init: minilm-l6, layers: 1, tokenizer: {tiny_bert_dir}}}, "
                f"{{name: c, kind: narrow, layers: 1, hidden: 32}}]\n")
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=students))
    assert [_folders(recipe, s.models) for s in STAGES[:3]] == [[str(tiny_bert_dir)], [str(tiny_bert_dir)], []]


def test_a_bf16_fit_leaves_the_model_computing_in_fp32(tiny_bert_dir):
    """Accelerate wraps a bf16 model's forward in autocast at prepare: after fit the model must be back to its own
    forward (a GPU run's precision auto is bf16: the teacher's dev metrics, the prune stage's next Taylor scores and
    its dev metrics were all computed in bf16 while recorded as fp32)."""
    data = load_task(TaskConfig(name="sst2", max_train_samples=32, holdout=0.0, max_eval_samples=16), seed=0)
    model, tok = load_for_task(str(tiny_bert_dir), data.spec)
    collator = Collator({"": tok})
    fit(model, tokenize(data.train, tok, 32), collator, TrainConfig(epochs=1, batch_size=32, precision="bf16"), seed=0)
    assert "forward" not in model.__dict__ and "_original_forward" not in model.__dict__
    seen = []
    hook = model.classifier.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    predict(model, tokenize(data.dev, tok, 32), collator)
    hook.remove()
    assert seen and set(seen) == {torch.float32}
    again = fit(model, tokenize(data.train, tok, 32), collator, TrainConfig(epochs=1, batch_size=32, precision="bf16"),
                seed=0)  # a second bf16 fit (the next pruning step's recovery) wraps and unwraps again
    assert again.steps == 1 and "forward" not in model.__dict__


def test_a_folder_whose_encoder_weights_do_not_fit_its_config_is_refused_not_reinitialised(tiny_bert_dir, tmp_path):
    """Only the task head may be replaced for being of another shape: encoder weights that transformers cannot place
    (here a config.json that says another FFN width than the weights have) were silently re-initialised at random
    (finetune) or a state_dict traceback (finetune: false)."""
    from compress.data import GLUE_TASKS

    shutil.copytree(tiny_bert_dir, tmp_path / "edited")
    config = json.loads((tmp_path / "edited" / "config.json").read_text())
    (tmp_path / "edited" / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    for keep_head in (False, True):
        with pytest.raises(CompressError, match=r"^model '.*edited': its weights do not fit its config.json "
                                                r"\(bert\.encoder\.layer\.\d\.intermediate\.dense\."):
            load_for_task(str(tmp_path / "edited"), GLUE_TASKS["sst2"], keep_head=keep_head)


def test_a_three_label_head_in_a_rotated_order_is_put_in_the_tasks_order(tmp_path, tokenizer):
    """`head_order` gives, for each task label, the head output that scores it: a rotation of three labels (where a
    permutation and its inverse differ) is applied that way round, bias included, kept or fine-tuned, and in a folder
    pruned to per-layer FFN widths (`_per_layer_widths`) as well."""
    import copy

    from transformers import BertForSequenceClassification

    from compress import prune as P
    from compress.config import PruneConfig, from_dict
    from conftest import tiny_bert_config

    task = dataclasses.replace(GLUE_TASKS["sst2"], labels=["a", "b", "c"])
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    torch.manual_seed(0)
    original = BertForSequenceClassification(tiny_bert_config(num_labels=3)).eval()
    with torch.no_grad():
        original.classifier.bias.copy_(torch.tensor([0.5, -0.5, 0.25]))
    for name in ("whole", "pruned"):
        model = original
        if name == "pruned":
            model = copy.deepcopy(original)
            P.prune(model, from_dict(PruneConfig, {"heads": 0.5, "ffn": 0.5, "importance": "l2"}, file="t.yaml",
                                     where="prune"))
            assert len({s["ffn"] for s in model.config.compress_layer_sizes}) > 1
        model.config.id2label = {0: "b", 1: "c", 2: "a"}  # head output 2 scores task label "a", 0 "b", 1 "c"
        model.config.label2id = {v: k for k, v in model.config.id2label.items()}
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        with torch.no_grad():
            expected = model.eval()(input_ids=ids).logits[:, [2, 0, 1]]
        for keep in (True, False):
            loaded, _ = load_for_task(str(tmp_path / name), task, keep_head=keep)
            with torch.no_grad():
                assert torch.allclose(loaded.eval()(input_ids=ids).logits, expected, atol=1e-6), (name, keep)
            assert loaded.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_a_bare_encoder_loaded_for_a_task_reports_its_head_as_new(tmp_path, tokenizer):
    """``loading["new_head"]``: a folder with no classifier weights at all (a bare encoder, as the zoo's are) gets a
    new head, as much as one whose head has another label count; a folder with the task's head keeps it."""
    from transformers import BertForSequenceClassification, BertModel

    from conftest import tiny_bert_config

    for name, model, new in (("bare", BertModel(tiny_bert_config()), True),
                             ("headed", BertForSequenceClassification(tiny_bert_config()), False)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        loading = {}
        load_for_task(str(tmp_path / name), GLUE_TASKS["sst2"], loading=loading)
        assert loading == {"new_head": new}, name


def test_a_folder_pruned_to_per_layer_widths_loads_for_the_task(tiny_bert_dir, tmp_path):
    """A model pruned to per-layer FFN widths (a prune stage's output) as a teacher (finetune: false, or fine-tuned
    again) or a student init: stock from_pretrained cannot rebuild its shapes, and it was refused; it loads as
    `load_trained` does, computing as saved, and a task of another label count gets a new head on the same encoder."""
    from compress import prune as P
    from compress.config import PruneConfig, from_dict
    from compress.data import GLUE_TASKS

    model, tok = load_trained(tiny_bert_dir)
    P.prune(model, from_dict(PruneConfig, {"heads": 0.5, "ffn": 0.5, "importance": "l2"}, file="t.yaml",
                             where="prune"))
    assert len({s["ffn"] for s in model.config.compress_layer_sizes}) > 1
    save(model, tok, tmp_path / "pruned")
    ids = torch.randint(1000, 5000, (2, 9))
    with torch.no_grad():
        expected = model.eval()(input_ids=ids)
    for keep_head in (False, True):
        loaded, _ = load_for_task(str(tmp_path / "pruned"), GLUE_TASKS["sst2"], keep_head=keep_head)
        assert not loaded.training  # as from_pretrained returns the other folders
        with torch.no_grad():
            assert torch.equal(loaded(input_ids=ids).logits, expected.logits)
        assert loaded.config.id2label == {0: "0", 1: "1"}
    loading = {}
    three, _ = load_for_task(str(tmp_path / "pruned"), GLUE_TASKS["mnli"], loading=loading)
    assert loading == {"new_head": True}  # what a narrow student of it with no logit loss is refused on
    loading = {}
    load_for_task(str(tmp_path / "pruned"), GLUE_TASKS["sst2"], loading=loading)
    assert loading == {"new_head": False}
    with torch.no_grad():
        out = three.eval()(input_ids=ids, output_hidden_states=True)
        ref = model(input_ids=ids, output_hidden_states=True)
    assert out.logits.shape == (2, 3) and three.config.num_labels == 3
    assert torch.equal(out.hidden_states[-1], ref.hidden_states[-1])  # the pruned encoder, kept whole
    with pytest.raises(CompressError, match=r"its head has 2 output\(s\), the task needs 3 labels"):
        load_for_task(str(tmp_path / "pruned"), GLUE_TASKS["mnli"], keep_head=True)


def test_a_head_pruned_mpnet_folder_loads_for_the_task_computing_as_saved(tmp_path, tokenizer):
    """A uniformly pruned MPNet (stock from_pretrained rebuilds its shapes) as a teacher or student init: each layer
    adds only its kept heads' position bias, as `load_trained` does; it failed in its first forward."""
    from transformers import MPNetConfig, MPNetForSequenceClassification

    from compress import prune as P
    from compress.config import PruneConfig, from_dict
    from compress.data import GLUE_TASKS

    torch.manual_seed(0)
    model = MPNetForSequenceClassification(MPNetConfig(vocab_size=30527, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=64)).eval()
    P.prune(model, from_dict(PruneConfig, {"heads": 0.5, "ffn": 0.5, "scope": "per_layer", "importance": "l2"},
                             file="t.yaml", where="prune"))
    save(model, tokenizer, tmp_path / "pruned")
    ids = torch.randint(1000, 5000, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    for keep_head in (False, True):
        loaded, _ = load_for_task(str(tmp_path / "pruned"), GLUE_TASKS["sst2"], keep_head=keep_head)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(input_ids=ids).logits, expected)  # its 2-label head kept either way


def test_fractional_epochs_count_steps_without_float_noise(tiny_bert_dir):
    """2.2 epochs of 25 steps are 55 steps; 2.2 * 25 is 55.00000000000001 in floats, and its ceiling trained a 56th."""
    data = load_task(TaskConfig(name="sst2", max_train_samples=100, holdout=0.0), seed=0)
    model, tok = load_for_task(str(tiny_bert_dir), data.spec)
    result = fit(model, tokenize(data.train, tok, 16), Collator({"": tok}),
                 TrainConfig(epochs=2.2, batch_size=4), seed=0)
    assert result.steps == 55


def _late_rng_worker(rank: int, port: int, folder: str) -> None:
    """A fit under 2 gloo processes, checkpointing at step 2 and stopped in step 3 (so its checkpoints stay), where
    the second process writes its RNG state (``random_states_1.pkl``) 3 s late, as a loaded machine may have it."""
    import sys
    import time
    from pathlib import Path

    import torch.distributed as dist
    from transformers import AutoTokenizer, BertForSequenceClassification

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import tiny_bert_config
    from teachers.zoo import resolve

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "ACCELERATE_USE_CPU": "1"})
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    # as on a one-GPU host (`accelerate launch --cpu` there): torch names CUDA as the accelerator, and a gloo barrier
    # told device index 1 (Accelerate's wait_for_everyone) failed with "CUDA error: invalid device ordinal"
    torch._C._get_accelerator = lambda: torch.device("cuda")
    try:
        if rank == 1:
            real = torch.save

            def late(obj, f, *args, **kwargs):
                if Path(str(f)).name.startswith("random_states"):
                    time.sleep(3)
                return real(obj, f, *args, **kwargs)

            torch.save = late
        tok = AutoTokenizer.from_pretrained(resolve("minilm-l6"))
        data = load_task(TaskConfig(name="sst2", max_train_samples=32, holdout=0.0), seed=0)
        torch.manual_seed(0)
        model = BertForSequenceClassification(tiny_bert_config())
        calls = []

        def objective(m, batch):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return m(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}).loss, {}

        with pytest.raises(KeyboardInterrupt):
            fit(model, tokenize(data.train, tok, 16), Collator({"": tok}),
                TrainConfig(epochs=1, batch_size=4, checkpoint_every=2), seed=0, objective=objective,
                checkpoint_dir=Path(folder) / "ck")
    finally:
        dist.destroy_process_group()


def test_a_checkpoint_is_complete_before_it_is_named_done(tmp_path):
    """Every process writes its own RNG state into the checkpoint's temporary folder; the main process renamed the
    folder as soon as its own part was written, so a later process wrote into a folder gone (FileNotFoundError), or
    into a new temporary one, leaving a checkpoint without its RNG state (resumed with other dropout draws: Accelerate
    says only "Could not load random states", at info level)."""
    import torch.multiprocessing as mp

    mp.spawn(_late_rng_worker, args=(29537, str(tmp_path)), nprocs=2, join=True)
    done = sorted((tmp_path / "ck").iterdir())
    assert [p.name for p in done] == ["step-00000002"]
    assert {"random_states_0.pkl", "random_states_1.pkl", "trainer.json"} <= {p.name for p in done[0].iterdir()}


def test_a_resumed_teacher_says_so_in_its_record(tiny_bert_dir, tmp_path, monkeypatch):
    """A teacher resumed from a checkpoint: its train_s and tokens/s cover the resumed part only; its record says from
    which step (as each student's does), instead of reading as a whole run's."""
    import teachers.finetune
    from compress.train import FitResult

    monkeypatch.setattr(teachers.finetune, "fit", lambda *a, **k: FitResult(steps=7, best_metric=None, best_step=None,
                                                                            resumed_from=4))
    done = run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir)))["teacher"]
    assert done["train"]["resumed_from"] == 4
    record = json.loads((tmp_path / "runs" / "tiny" / "teacher" / "metrics.json").read_text())
    assert record["train"]["resumed_from"] == 4


def test_an_epoch_end_that_eval_every_just_scored_is_not_scored_twice(tiny_bert_dir):
    """eval_every dividing an epoch's last step scored the held-out slice twice at that step (two history entries,
    twice the time)."""
    data = load_task(TaskConfig(name="sst2", max_train_samples=100, holdout=0.0), seed=0)
    model, tok = load_for_task(str(tiny_bert_dir), data.spec)
    result = fit(model, tokenize(data.train, tok, 16), Collator({"": tok}),
                 TrainConfig(epochs=2, batch_size=4, eval_every=5), seed=0, evaluate=lambda m: {"accuracy": 0.5})
    steps = [h["step"] for h in result.history]
    assert steps == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]


def test_held_out_evaluation_leaves_the_training_draws_alone(tiny_bert_dir):
    """A held-out evaluation (its DataLoader drew a base seed from the global torch RNG) shifted every later dropout
    mask: turning ``eval_every`` on or off changed the trained weights. With an evaluation whose score keeps rising
    (so the final state is kept), the weights are those of a run without evaluation, bit for bit."""
    from compress.evaluate import evaluate

    data = load_task(TaskConfig(name="sst2", max_train_samples=96, holdout=0.1, max_eval_samples=16), seed=0)
    states = []
    for with_eval in (False, True):
        model, tok = load_for_task(str(tiny_bert_dir), data.spec)
        collator = Collator({"": tok})
        held = tokenize(data.holdout, tok, 32)
        step = iter(range(100))

        def score(m):
            evaluate(m, held, collator, data.spec, desc=None)  # the real evaluation, its score replaced
            return {"accuracy": float(next(step))}

        fit(model, tokenize(data.train, tok, 32), collator, TrainConfig(epochs=2, batch_size=16, eval_every=2),
            seed=0, evaluate=score if with_eval else None)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_held_out_selection_in_a_bf16_fit_scores_in_fp32(tiny_bert_dir):
    """Accelerate's bf16 forward stays on the model during fit: the held-out scores that pick the best state were
    bf16 numbers while the stage's metrics are fp32. Selection now scores with the model's own forward."""
    data = load_task(TaskConfig(name="sst2", max_train_samples=32, holdout=0.0, max_eval_samples=16), seed=0)
    model, tok = load_for_task(str(tiny_bert_dir), data.spec)
    collator = Collator({"": tok})
    dev = tokenize(data.dev, tok, 32)
    seen = []

    def score(m):
        hook = m.classifier.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
        try:
            return {"accuracy": float((predict(m, dev, collator).argmax(-1) == np.asarray(dev["label"])).mean())}
        finally:
            hook.remove()

    fit(model, tokenize(data.train, tok, 32), collator,
        TrainConfig(epochs=2, batch_size=16, eval_every=1, precision="bf16"), seed=0, evaluate=score)
    assert seen and set(seen) == {torch.float32}


def test_a_compared_runs_leftover_stage_folders_are_not_report_inputs(tmp_path, tiny_bert_dir):
    """The report stage's inputs are the stage manifests of its report.compare runs: the glob also took the hidden
    `.<stage>.tmp-PID` / `.<stage>.old-PID` folders of a run killed (or working) there, so the report was redone when
    that run's next start removed them, and a folder renamed away between the glob and the hash was a traceback."""
    from compress import pipeline

    other = tmp_path / "other"
    (other / "teacher").mkdir(parents=True)
    (other / "teacher" / "manifest.json").write_text("{}")
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=f"report: {{compare: [{other}]}}\n"))
    report = next(s for s in pipeline.STAGES if s.name == "report")
    _, before = pipeline._fingerprint(recipe, report, {"teacher": {"outputs": {}}})
    (other / ".teacher.old-999999999").mkdir()
    (other / ".teacher.old-999999999" / "manifest.json").write_text('{"stage": "teacher"}')
    _, after = pipeline._fingerprint(recipe, report, {"teacher": {"outputs": {}}})
    assert after == before and str(other / "teacher" / "manifest.json") in after


def test_a_hidden_file_a_file_browser_leaves_in_a_stage_folder_does_not_redo_the_stage(tmp_path):
    """Opening a run folder in macOS Finder leaves .DS_Store files in it: the stage (hours of teacher training) was
    redone as "its outputs were edited". Hidden files it did not write are not its outputs; an output edited, a
    visible file added or a recorded hidden file changed still redo it."""
    from compress.manifest import hash_tree, write_json
    from compress.pipeline import STAGES, _reuse

    folder = tmp_path / "teacher"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text("{}")
    (folder / ".kept").write_text("written by the stage")
    write_json(folder / "manifest.json", {"fingerprint": "fp", "outputs": hash_tree(folder)})
    for junk in (folder / ".DS_Store", folder / "model" / ".DS_Store", folder / "._config.json"):
        junk.write_text("finder")
    assert _reuse(None, STAGES[0], folder, "fp", {})[1] is None
    (folder / ".kept").write_text("edited")
    assert _reuse(None, STAGES[0], folder, "fp", {})[1] == "its outputs were edited since they were written"
    (folder / ".kept").write_text("written by the stage")
    (folder / "notes.txt").write_text("a visible file")
    assert _reuse(None, STAGES[0], folder, "fp", {})[1] == "its outputs were edited since they were written"


def test_a_model_folders_hidden_files_are_not_inputs(tmp_path, tiny_bert_dir):
    """A teacher folder cloned with git (`git clone https://huggingface.co/...`): every file of .git/ was an input
    (its packs hashed on every run), and a `git status` (it rewrites .git/index) or a .DS_Store redid the teacher.
    from_pretrained reads none of them; the files it reads still are inputs."""
    from compress import pipeline

    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir))
    _, before = pipeline._fingerprint(recipe, pipeline.STAGES[0], {})
    (tiny_bert_dir / ".git").mkdir()
    (tiny_bert_dir / ".git" / "index").write_bytes(b"DIRC")
    (tiny_bert_dir / ".DS_Store").write_bytes(b"finder")
    _, after = pipeline._fingerprint(recipe, pipeline.STAGES[0], {})
    assert after == before and str(tiny_bert_dir / "config.json") in after


def test_a_search_after_the_report_redoes_the_report(tmp_path, tiny_bert_dir):
    """The report writes a line on `compress search`'s results (search/search.json), which was not among its inputs:
    after a search (or a second one with another budget) `compress run` kept the report without it. The search record
    of this run and of each compared run is an input when there."""
    from compress import pipeline

    other = tmp_path / "other"
    (other / "teacher").mkdir(parents=True)
    (other / "teacher" / "manifest.json").write_text("{}")
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=f"report: {{compare: [{other}]}}\n"))
    report = next(s for s in pipeline.STAGES if s.name == "report")
    seen = []
    for run in (recipe.run_dir, other, recipe.run_dir):
        (run / "search").mkdir(parents=True, exist_ok=True)
        (run / "search" / "search.json").write_text(json.dumps({"message": f"best within {len(seen)} ms"}))
        seen.append(pipeline._fingerprint(recipe, report, {"teacher": {"outputs": {}}}))
    assert len({fp for fp, _ in seen}) == 3
    assert {str(recipe.run_dir / "search" / "search.json"), str(other / "search" / "search.json")} <= set(seen[-1][1])
    teacher = pipeline.STAGES[0]  # the stages that do not read it are not redone
    assert str(recipe.run_dir / "search" / "search.json") not in pipeline._fingerprint(recipe, teacher, {})[1]


def test_a_model_card_or_a_checkpoint_subfolder_is_not_an_input_and_old_fingerprints_still_hold(tmp_path,
                                                                                                  tiny_bert_dir):
    """A README.md or LICENSE written into the teacher's model folder, or a Trainer's checkpoint-500/ left in it,
    redid the teacher and every stage after it: from_pretrained reads none of them. A stage recorded by the earlier
    code, which hashed them, is still reused (its outputs are the same)."""
    from compress import pipeline

    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir))
    teacher = pipeline.STAGES[0]
    fp, before = pipeline._fingerprint(recipe, teacher, {})
    (tiny_bert_dir / "README.md").write_text("# my model card")
    (tiny_bert_dir / "checkpoint-500").mkdir()
    (tiny_bert_dir / "checkpoint-500" / "optimizer.pt").write_bytes(b"state")
    # nor what a cloned hub repository holds beside the model: licence, images, exports, sentence-transformers files
    for name in ("LICENSE", "NOTICE.txt", "card.png", "train_script.py", "model.onnx", "modules.json",
                 "sentence_bert_config.json", "config_sentence_transformers.json"):
        (tiny_bert_dir / name).write_text("not read by from_pretrained")
    assert pipeline._fingerprint(recipe, teacher, {}) == (fp, before)
    (tiny_bert_dir / "vocab.txt").write_text((tiny_bert_dir / "vocab.txt").read_text() + "newword\n")
    assert pipeline._fingerprint(recipe, teacher, {})[0] != fp  # what loading reads still counts

    folder = tmp_path / "made-before"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "w.bin").write_bytes(b"weights")
    earlier = pipeline._earlier_inputs(recipe, teacher, {}, pipeline._inputs(recipe, teacher, {}))
    assert str(tiny_bert_dir / "README.md") in earlier and str(tiny_bert_dir / "LICENSE") in earlier
    old = pipeline._stage_fingerprint(recipe, teacher, earlier, pipeline._config(recipe, teacher))
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": old, "inputs": earlier,
                                                      "outputs": {"model/w.bin": sha256_file(folder / "model" / "w.bin")}}))
    fp, inputs = pipeline._fingerprint(recipe, teacher, {})
    assert pipeline._reuse(recipe, teacher, folder, fp, inputs, {})[1] is None
    # and a manifest of the code of 2026-12-04..06 (every top-level file but hidden ones and *.md: the LICENSE, the
    # .onnx, the .py were inputs; README.md and checkpoint-500/ were not): matches too
    real_rule = pipeline.model_file
    pipeline.model_file = lambda rel: len(Path(rel).parts) == 1 and not rel.startswith(".") \
        and not rel.lower().endswith(".md")
    try:
        middle_fp, middle = pipeline._fingerprint(recipe, teacher, {})
    finally:
        pipeline.model_file = real_rule
    assert str(tiny_bert_dir / "LICENSE") in middle and str(tiny_bert_dir / "README.md") not in middle
    assert middle_fp != fp and middle_fp not in (old, pipeline._stage_fingerprint(recipe, teacher, earlier,
                                                                                   pipeline._config(recipe, teacher)))
    outputs = {"model/w.bin": sha256_file(folder / "model" / "w.bin")}
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": middle_fp, "inputs": middle, "outputs": outputs}))
    assert pipeline._reuse(recipe, teacher, folder, fp, inputs, {})[1] is None
    # a hand-edited manifest whose inputs are not a mapping: redone, and why said (a TypeError traceback before)
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": "x", "inputs": None, "outputs": {}}))
    why = pipeline._reuse(recipe, teacher, folder, fp, inputs, {})[1]
    # every input reads as new; which one is named first depends on where the data and tmp folders sort
    assert why.startswith("changed: ") and "; new input /" in why, why


def test_the_same_data_under_another_path_is_not_a_change_but_other_bytes_are(tmp_path, tiny_bert_dir,
                                                                               monkeypatch):
    """Inputs are keyed by path: the GLUE folder reached by another spelling (GLUE_DIR=/work/x/../shared/...), through
    a link, or moved (a run folder copied to another machine), redid every stage ("now read from ... (same content)"),
    hours for the SST-2 recipe. The same bytes under the recorded paths' names are the same inputs; an edited file is
    still a change."""
    from compress import pipeline

    first = tmp_path / "glue"
    (first / "SST-2").mkdir(parents=True)
    (first / "SST-2" / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    (first / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nfine\t1\nmeh\t0\n")
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir))
    teacher = pipeline.STAGES[0]

    def reuse(glue_dir):
        monkeypatch.setenv("GLUE_DIR", str(glue_dir))
        fp, inputs = pipeline._fingerprint(recipe, teacher, {})
        return fp, pipeline._reuse(recipe, teacher, folder, fp, inputs, {})[1]

    monkeypatch.setenv("GLUE_DIR", str(first))
    fp, inputs = pipeline._fingerprint(recipe, teacher, {})
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": fp, "inputs": inputs, "outputs": {},
                                                      "config": pipeline._config(recipe, teacher), "seed": recipe.seed}))
    (tmp_path / "linked").symlink_to(first)
    (tmp_path / "x").mkdir()
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    for other in (tmp_path / "linked", tmp_path / "x" / ".." / "glue", moved):
        other_fp, why = reuse(other)
        assert other_fp != fp and why is None, other
    swapped = tmp_path / "swapped"  # train and dev traded contents: the same bytes, not the same inputs
    (swapped / "SST-2").mkdir(parents=True)
    for a, b in (("train.tsv", "dev.tsv"), ("dev.tsv", "train.tsv")):
        shutil.copy(first / "SST-2" / a, swapped / "SST-2" / b)
    assert reuse(swapped)[1].startswith("changed: ")
    (moved / "SST-2" / "train.tsv").write_text("sentence\tlabel\ngood\t1\nawful\t0\n")
    why = reuse(moved)[1]
    assert why.startswith("changed: ") and "moved/SST-2/train.tsv" in why, why


def test_a_default_source_among_reordered_students_is_part_of_the_stage(tmp_path, tiny_bert_dir):
    """Prune (and quantize, without a prune stage) take the first student by default: reordered students whose
    distill outputs came out the same (byte-identical models, metrics.json in the same key order) reused the stage
    made from the other one. An explicit source, or a single student, keeps its fingerprint as before."""
    from compress import pipeline

    stages = {s.name: s for s in pipeline.STAGES}
    done = {name: {"outputs": {"a/model.safetensors": "1" * 8, "b/model.safetensors": "2" * 8}}
            for name in ("teacher", "distill")}

    def recipe(order: str, extra: str):
        students = ", ".join(f"{{name: {n}, kind: narrow, init: random, hidden: 32, heads: 2, ffn: 64, layers: 1}}"
                             for n in order)
        return load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=f"students: [{students}]\n{extra}"))

    def fingerprint(order: str, extra: str, stage: str) -> str:
        return pipeline._fingerprint(recipe(order, extra), stages[stage], done)[0]

    for extra, stage in (("prune: {heads: 0.5}\n", "prune"), ("quantize: {modes: [dynamic]}\n", "quantize")):
        assert fingerprint("ab", extra, stage) != fingerprint("ba", extra, stage)
        made = recipe("ab", extra)
        fp, inputs = pipeline._fingerprint(made, stages[stage], done)
        old = {"config": pipeline._config(made, stages[stage]), "seed": made.seed, "inputs": inputs,
               "source": "a" if stage == "prune" else {"model": "a"}}
        assert pipeline._what_changed(recipe("ba", extra), stages[stage], old, inputs) == \
            "changed: default source (the first student): a -> b"
        # a stage recorded before the name was in its fingerprint is reused where it recorded this same source
        folder = tmp_path / f"before-{stage}"
        folder.mkdir()
        (folder / "w.bin").write_bytes(b"weights")
        earlier = pipeline._stage_fingerprint(made, stages[stage], inputs, pipeline._result_config(old["config"]),
                                              unnamed_source=True)
        assert earlier != fp
        (folder / "manifest.json").write_text(json.dumps({**old, "fingerprint": earlier,
                                                          "outputs": {"w.bin": sha256_file(folder / "w.bin")}}))
        assert pipeline._reuse(made, stages[stage], folder, fp, inputs, done)[1] is None
        now_b = recipe("ba", extra)
        why = pipeline._reuse(now_b, stages[stage], folder, pipeline._fingerprint(now_b, stages[stage], done)[0],
                              inputs, done)[1]
        assert why == "changed: default source (the first student): a -> b", why
    # no default among several students: the fingerprints of before (no variant word), whatever the order
    for extra in ("prune: {heads: 0.5, source: b}\n", "quantize: {source: a}\n", "quantize: {source: teacher}\n",
                  "prune: {heads: 0.5, source: a}\nquantize: {}\n"):  # quantize takes the pruned model
        ab, ba = recipe("ab", extra), recipe("ba", extra)
        assert pipeline._prune_variant(ab) is pipeline._quantize_variant(ba) is None, extra
    single = "students: [{name: a, kind: narrow, init: random, hidden: 32, heads: 2, ffn: 64, layers: 1}]\n"
    one = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=single + "prune: {heads: 0.5}\nquantize: {}\n"))
    assert pipeline._prune_variant(one) is None and pipeline._quantize_variant(one) is None  # nothing to tell apart


def test_the_default_source_named_and_unread_static_settings_keep_the_stages_fingerprint(tmp_path, tiny_bert_dir):
    """``prune.source`` / ``quantize.source`` set to the model the stage takes anyway, or ``quantize.calibration`` (and
    the other static-only settings) changed in a dynamic-only run, redid the stage and every one after it for the same
    model (`compress.pipeline._as_read`). A stage fingerprinted from the recipe as written before is still reused."""
    from compress import pipeline

    stages = {s.name: s for s in pipeline.STAGES}
    done = {name: {"outputs": {"a/model.safetensors": "1" * 8, "b/model.safetensors": "2" * 8,
                               "model/model.safetensors": "3" * 8}} for name in ("teacher", "distill", "prune")}

    def student(n):
        return f"{{name: {n}, kind: narrow, init: random, hidden: 32, heads: 2, ffn: 64, layers: 1}}"

    def fp(extra: str, stage: str) -> str:
        recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=extra))
        ran = {"teacher": True, "distill": bool(recipe.students),
               "prune": recipe.prune is not None and stage != "prune"}
        return pipeline._fingerprint(recipe, stages[stage], {k: v for k, v in done.items() if ran[k]})[0]

    one, two = f"students: [{student('a')}]\n", f"students: [{student('a')}, {student('b')}]\n"
    same = [  # (recipe naming the default, the same recipe leaving it out, stage)
        (one + "prune: {heads: 0.5, source: a}\n", one + "prune: {heads: 0.5}\n", "prune"),
        (two + "prune: {heads: 0.5, source: a}\n", two + "prune: {heads: 0.5}\n", "prune"),
        ("prune: {heads: 0.5, source: teacher}\n", "prune: {heads: 0.5}\n", "prune"),
        (one + "prune: {heads: 0.5}\nquantize: {source: prune}\n", one + "prune: {heads: 0.5}\nquantize: {}\n",
         "quantize"),
        (two + "quantize: {source: a}\n", two + "quantize: {}\n", "quantize"),
        ("quantize: {source: teacher}\n", "quantize: {}\n", "quantize"),
        ("quantize: {modes: [dynamic], calibration: {method: entropy, samples: 7}, format: qoperator}\n",
         "quantize: {modes: [dynamic]}\n", "quantize"),
    ]
    for named, unnamed, stage in same:
        assert fp(named, stage) == fp(unnamed, stage), named
    other = [  # what the stage reads: still its own fingerprint
        (two + "prune: {heads: 0.5, source: b}\n", two + "prune: {heads: 0.5}\n", "prune"),
        (one + "prune: {heads: 0.5}\nquantize: {source: a}\n", one + "prune: {heads: 0.5}\nquantize: {}\n",
         "quantize"),
        ("quantize: {calibration: {samples: 7}}\n", "quantize: {}\n", "quantize"),  # static reads it
    ]
    for changed, unchanged, stage in other:
        assert fp(changed, stage) != fp(unchanged, stage), changed
    # a stage fingerprinted from the recipe as written (before): reused, not redone
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=one + "prune: {heads: 0.5, source: a}\n"))
    now, inputs = pipeline._fingerprint(recipe, stages["prune"], done)
    before = pipeline._stage_fingerprint(recipe, stages["prune"], inputs,
                                         pipeline._result_config(pipeline._config(recipe, stages["prune"])))
    assert before != now
    folder = tmp_path / "prune-before"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": before, "inputs": inputs, "outputs": {},
                                                      "config": pipeline._config(recipe, stages["prune"]),
                                                      "seed": recipe.seed, "source": "a"}))
    assert pipeline._reuse(recipe, stages["prune"], folder, now, inputs, done) == (json.loads(
        (folder / "manifest.json").read_text()), None)
    # an interrupted run's checkpoints stamped so resume (restamped), those of another config are discarded
    assert pipeline._as_written_fingerprint(recipe, stages["prune"], inputs) == before
    run_dir = tmp_path / "run"
    for stamp, kept in ((before, True), ("other", False)):
        ck = run_dir / ".checkpoints" / "prune"
        ck.mkdir(parents=True, exist_ok=True)
        (ck / "FINGERPRINT").write_text(pipeline.checkpoint_stamp(stamp, 1) + "\n")
        (ck / "step-10").mkdir(exist_ok=True)
        pipeline._claim_checkpoints(run_dir, "prune", pipeline.checkpoint_stamp(now, 1),
                                    (pipeline.checkpoint_stamp(before, 1),))
        assert (ck / "step-10").is_dir() is kept
        assert (ck / "FINGERPRINT").read_text() == pipeline.checkpoint_stamp(now, 1) + "\n"
    unnamed = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=one + "prune: {heads: 0.5}\n"))
    assert pipeline._as_written_fingerprint(unnamed, stages["prune"], inputs) is None  # nothing respelled


def test_a_quantize_stage_of_a_task_with_a_labelled_test_split_is_redone_once_for_its_test_scores(tmp_path, glue_dir,
                                                                                                    capsys):
    """The quantize stage scores its ONNX models on MRPC's labelled test split since 2026-12-05; a run folder made
    before kept its quantize.json (and bundle) without test scores while `compress run` called them up to date. Such a
    task's quantize stage has a fingerprint of its own (redone once, seconds); SST-2's, and MRPC from GLUE's own
    download (an unlabelled test.tsv), keep theirs, and the check prints no note."""
    from compress import pipeline
    from conftest import unlabelled_mrpc

    def recipe(task: str):
        path = tmp_path / "r.yaml"
        path.write_text(f"name: r\nruns_dir: {tmp_path / 'runs'}\ntask: {task}\nteacher: {{}}\nquantize: {{}}\n")
        return load_recipe(path)

    mrpc = recipe(f"{{name: mrpc, data_dir: {glue_dir / 'MRPC'}}}")
    assert pipeline._quantize_variant(mrpc) == "test-split"
    report = next(s for s in pipeline.STAGES if s.name == "report")  # a run without a quantize stage: its report
    assert report.variant(mrpc) == "test-split" and report.variant(recipe("{name: sst2}")) is None
    quantize = next(s for s in pipeline.STAGES if s.name == "quantize")
    before = {"config": pipeline._config(mrpc, quantize), "seed": mrpc.seed, "inputs": {},
              "metrics": {"dev": {"f1": 0.8}}}
    assert pipeline._what_changed(mrpc, quantize, before, {}) == "changed: the labelled test split is scored now"
    assert pipeline._quantize_variant(recipe("{name: sst2}")) is None
    glue = unlabelled_mrpc(glue_dir, tmp_path / "glue-mrpc")
    capsys.readouterr()
    assert pipeline._quantize_variant(recipe(f"{{name: mrpc, data_dir: {glue}}}")) is None
    assert capsys.readouterr().err == ""


def test_quantizing_the_teacher_is_not_redone_for_a_new_pruning(tmp_path, tiny_bert_dir):
    """`quantize.source: teacher`: every upstream stage's outputs were the quantize stage's inputs, so a new prune
    setting (or student) re-exported, re-quantized and re-guarded the unchanged teacher, then the bench, report and
    bundle. The stage reads its source's stage (and the teacher's); a quantize stage recorded by the earlier code is
    still reused."""
    from compress import pipeline

    extra = ("students: [{name: s, kind: narrow, init: random, hidden: 32, heads: 2, ffn: 64, layers: 1}]\n"
             "prune: {heads: 0.5}\nquantize: {source: teacher}\n")
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=extra))
    quantize = next(s for s in pipeline.STAGES if s.name == "quantize")
    done = {name: {"outputs": {"model/model.safetensors": name * 8}} for name in ("teacher", "distill", "prune")}
    fp, inputs = pipeline._fingerprint(recipe, quantize, done)
    assert {k.split("/")[0] for k in inputs if "/" in k and not k.startswith("/")} == {"teacher"}
    assert pipeline._fingerprint(recipe, quantize, {**done, "prune": {"outputs": {"x": "new"}},
                                                    "distill": {"outputs": {"y": "new"}}})[0] == fp
    assert pipeline._fingerprint(recipe, quantize, {**done, "teacher": {"outputs": {"x": "new"}}})[0] != fp
    for source, reads in ((None, {"teacher", "prune"}), ("s", {"teacher", "distill"})):
        other = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=extra), {"quantize.source": source})
        keys = pipeline._fingerprint(other, quantize, done)[1]
        assert {k.split("/")[0] for k in keys if "/" in k and not k.startswith("/")} == reads
    folder = tmp_path / "quantize"
    folder.mkdir()
    earlier = pipeline._earlier_inputs(recipe, quantize, done, inputs)
    assert {"distill/model/model.safetensors", "prune/model/model.safetensors"} <= set(earlier)
    old = pipeline._stage_fingerprint(recipe, quantize, earlier, pipeline._result_config(pipeline._config(recipe,
                                                                                                       quantize)))
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": old, "inputs": earlier, "outputs": {}}))
    assert pipeline._reuse(recipe, quantize, folder, fp, inputs, done)[1] is None
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": [old], "inputs": earlier, "outputs": {}}))
    assert pipeline._reuse(recipe, quantize, folder, fp, inputs, done)[1].startswith("changed")  # not a TypeError

    # --dry-run says so too: with distill and prune to run, the quantize stage of the teacher is up to date
    teacher = pipeline.STAGES[0]
    (recipe.run_dir / "teacher").mkdir(parents=True)
    made = {"fingerprint": pipeline._fingerprint(recipe, teacher, {})[0], "outputs": {}}
    (recipe.run_dir / "teacher" / "manifest.json").write_text(json.dumps(made))
    (recipe.run_dir / "quantize").mkdir()
    (recipe.run_dir / "quantize" / "manifest.json").write_text(json.dumps({
        "fingerprint": pipeline._fingerprint(recipe, quantize, {"teacher": made})[0], "outputs": {}}))
    plan = {name: (runs, why) for name, runs, why in pipeline.explain(recipe, until="quantize")}
    assert plan["prune"] == (True, "after distill (reads its outputs)") and plan["quantize"] == (False, "up to date")
    # a renamed upstream output of the same bytes is another output, not a moved file
    assert pipeline._same_content_keys({"distill/s/model/w.new": "ab", "/d/train.tsv": "cd"},
                                       {"distill/s/model/w": "ab", "/old/train.tsv": "cd"}) == {
        "distill/s/model/w.new": "ab", "/old/train.tsv": "cd"}


def test_a_model_folder_with_lfs_pointers_or_truncated_weights_is_one_line(tiny_bert_dir, tmp_path, monkeypatch):
    """A hub repository cloned without git-lfs holds pointer files in place of the weights: validation refused
    nothing and loading ended in a SafetensorError traceback. Validation names the pointer; a truncated weights file
    is one line when the model loads."""
    from compress.data import GLUE_TASKS

    lfs = tmp_path / "lfs"
    shutil.copytree(tiny_bert_dir, lfs)
    (lfs / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: {{name: sst2}}\nteacher: {{model: {lfs}}}\n")
    with pytest.raises(CompressError, match=r"teacher\.model: .*model\.safetensors is a git-lfs pointer, not the "
                                            r"weights .* run `git lfs pull`"):
        load_recipe(recipe)
    with pytest.raises(CompressError, match=r"git-lfs pointer"):
        load_for_task(str(lfs), GLUE_TASKS["sst2"])
    cut = tmp_path / "cut"
    shutil.copytree(tiny_bert_dir, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    for keep_head in (False, True):
        with pytest.raises(CompressError, match=r"^model '.*cut': cannot read its weights \(\w+"):
            load_for_task(str(cut), GLUE_TASKS["sst2"], keep_head=keep_head)
    # a zoo model's cache damaged after it was verified: the folder is named, and what to do
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    shutil.copytree(cut, tmp_path / "cache" / "zoo" / "minilm-l6")
    (tmp_path / "cache" / "zoo" / "minilm-l6" / ".verified").write_text("")  # trusted as it is (a carried cache)
    with pytest.raises(CompressError, match=rf"^model 'minilm-l6': cannot read its weights in "
                                            rf"{re.escape(str(tmp_path / 'cache' / 'zoo' / 'minilm-l6'))} \(\w+.*\); "
                                            rf"delete that folder and it is fetched and verified again$"):
        load_for_task("minilm-l6", GLUE_TASKS["sst2"])


def test_a_per_layer_width_folder_with_truncated_weights_is_one_line_when_it_loads(tiny_bert_dir, tmp_path):
    """Unreadable (truncated) weights are one CompressError line from load_for_task (ceec75b), but the per-layer-width
    path (`_per_layer_widths`, through `load_pruned`) raised the raw SafetensorError traceback."""
    from compress import prune as P
    from compress.config import PruneConfig, from_dict
    from compress.data import GLUE_TASKS

    model, tok = load_trained(tiny_bert_dir)
    P.prune(model, from_dict(PruneConfig, {"heads": 0.5, "ffn": 0.5, "importance": "l2"}, file="t.yaml",
                             where="prune"))
    assert len({s["ffn"] for s in model.config.compress_layer_sizes}) > 1
    save(model, tok, tmp_path / "pruned")
    weights = tmp_path / "pruned" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    for keep_head in (False, True):
        with pytest.raises(CompressError, match=r"^model '.*pruned': cannot read its weights \("):
            load_for_task(str(tmp_path / "pruned"), GLUE_TASKS["sst2"], keep_head=keep_head)


def test_turning_checkpoints_on_trains_the_same_weights_and_redoes_no_stage(tiny_bert_dir, tmp_path, capsys,
                                                                            monkeypatch):
    """checkpoint_every changes how a stage runs, not what it makes: a fit saving checkpoints trains the same weights
    bit for bit (dropout on), and a recipe that turns them on reuses its done stages (it redid them)."""
    from accelerate import Accelerator

    saved, save = [], Accelerator.save_state
    monkeypatch.setattr(Accelerator, "save_state", lambda self, d, *a, **k: saved.append(d) or save(self, d, *a, **k))
    data = load_task(TaskConfig(name="sst2", max_train_samples=48, holdout=0.0), seed=0)
    weights = []
    for every in (None, 2):
        model, tok = load_for_task(str(tiny_bert_dir), data.spec)
        fit(model, tokenize(data.train, tok, 16), Collator({"": tok}),
            TrainConfig(epochs=1, batch_size=8, checkpoint_every=every), seed=0,
            checkpoint_dir=tmp_path / f"ck-{every}")
        weights.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    assert len(saved) == 2  # steps 2 and 4 of 6
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    done = run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir)))["teacher"]
    capsys.readouterr()
    again = run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir), {"teacher.checkpoint_every": 3}))["teacher"]
    assert again["created"] == done["created"] and "[teacher] up to date" in capsys.readouterr().out
    # a stage made before (its fingerprint held checkpoint_every's value) is not redone for the change either
    from compress import pipeline

    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir), {"teacher.checkpoint_every": 3})
    path = tmp_path / "runs" / "tiny" / "teacher" / "manifest.json"
    manifest = json.loads(path.read_text())
    stage = next(s for s in pipeline.STAGES if s.name == "teacher")
    old = pipeline._stage_fingerprint(recipe, stage, manifest["inputs"], pipeline._config(recipe, stage))
    assert old != manifest["fingerprint"]
    path.write_text(json.dumps({**manifest, "fingerprint": old}))
    capsys.readouterr()
    assert run_pipeline(recipe)["teacher"]["created"] == done["created"]
    assert "[teacher] up to date" in capsys.readouterr().out


def test_a_per_layer_width_mpnet_gets_a_new_head_as_from_pretrained_gives_one(tmp_path, tokenizer):
    """A per-layer-width MPNet folder for a task of another label count: only the head's weights of another shape are
    new (out_proj), its dense layer kept, as from_pretrained does for every other folder (the whole head was
    replaced); a caller asking for no tokenizer loads a folder that has none (one was loaded, and required)."""
    from transformers import MPNetConfig, MPNetForSequenceClassification

    from compress import prune as P
    from compress.config import PruneConfig, from_dict
    from compress.data import GLUE_TASKS

    torch.manual_seed(0)
    model = MPNetForSequenceClassification(MPNetConfig(vocab_size=30527, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=64)).eval()
    P.prune(model, from_dict(PruneConfig, {"heads": 0.5, "ffn": 0.5, "importance": "l2"}, file="t.yaml",
                             where="prune"))
    assert len({s["ffn"] for s in model.config.compress_layer_sizes}) > 1
    save(model, tokenizer, tmp_path / "pruned")
    for name in os.listdir(tmp_path / "pruned"):
        if not name.startswith(("model", "config")):
            os.remove(tmp_path / "pruned" / name)  # weights and config only: a student's init with its own tokenizer
    three, none = load_for_task(str(tmp_path / "pruned"), GLUE_TASKS["mnli"], tokenizer=False)
    assert none is None and three.config.num_labels == 3 and three.classifier.out_proj.weight.shape[0] == 3
    assert torch.equal(three.classifier.dense.weight, model.classifier.dense.weight)


def test_a_distill_stage_of_students_with_their_own_augmentation_neighbours_is_redone(tmp_path, tiny_bert_dir):
    """Students of one augment setting that pick neighbours with their own embeddings get their own copies since
    2026-12-04 (they trained on the first one's): such a stage is redone, no other (another setting, the teacher's
    embeddings, or one such student: it always had its own copies)."""
    from compress import pipeline

    distill = next(s for s in pipeline.STAGES if s.name == "distill")
    done = {"teacher": {"outputs": {"model/model.safetensors": "aa"}}}

    def recipe(*augments):
        # students of a checkpoint (a random one's own embeddings are refused for neighbours)
        students = "".join(f"  - {{name: s{i}, kind: narrow, init: {tiny_bert_dir}, layers: 1"
                           f"{f', distill: {{augment: {a}}}' if a else ''}}}\n" for i, a in enumerate(augments))
        return load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=f"students:\n{students}"))

    own = "{copies: 1, embeddings: student}"
    for augments, variant in (((own, own), "augment-per-student"), ((own, None), None), ((own,), None),
                              ((own, "{copies: 2, embeddings: student}"), None),
                              (("{copies: 1}", "{copies: 1}"), None)):
        r = recipe(*augments)
        assert pipeline._distill_variant(r) == variant, augments
        fp, inputs = pipeline._fingerprint(r, distill, done)
        plain = dataclasses.replace(distill, variant=None)
        assert (fp != pipeline._stage_fingerprint(r, plain, inputs, pipeline._result_config(
            pipeline._config(r, plain)))) == (variant is not None)


def test_the_same_data_and_model_under_another_spelling_in_the_recipe_are_not_a_change(tmp_path, tiny_bert_dir,
                                                                                        monkeypatch):
    """Inputs of the same bytes under other paths were accepted, but the recipe's own spelling was config: naming the
    default GLUE folder (``task.data_dir``), ``./tinybert`` for ``tinybert``, an absolute path, a copied model folder,
    each redid the teacher and every stage after it. The local paths are compared by what they hold (the inputs);
    another folder's bytes, or a zoo name for a folder, are still a change."""
    from compress import pipeline
    from compress.tasks import task_spec, data_dir

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_bert_dir, tmp_path / "tinybert")
    teacher = pipeline.STAGES[0]
    recipe = load_recipe(_recipe(tmp_path, "tinybert"))
    fp, inputs = pipeline._fingerprint(recipe, teacher, {})
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": fp, "inputs": inputs, "outputs": {},
                                                      "config": pipeline._config(recipe, teacher)}))

    def why(**settings):
        other = load_recipe(_recipe(tmp_path, "tinybert"), settings)
        other_fp, other_inputs = pipeline._fingerprint(other, teacher, {})
        return other_fp != fp, pipeline._reuse(other, teacher, folder, other_fp, other_inputs, {})[1]

    glue = str(data_dir(recipe.task, task_spec(recipe.task)))
    shutil.copytree(tmp_path / "tinybert", tmp_path / "copy")
    for settings in ({"task.data_dir": glue}, {"teacher.model": "./tinybert"},
                     {"teacher.model": str(tmp_path / "tinybert")}, {"teacher.model": "copy"},
                     {"teacher.model": "copy", "task.data_dir": glue}):
        assert why(**settings) == (True, None), settings
    assert why(**{"teacher.model": "minilm-l6"})[1].startswith("changed: ")
    (tmp_path / "copy" / "config.json").write_text((tmp_path / "copy" / "config.json").read_text() + "\n")
    changed, reason = why(**{"teacher.model": "copy"})
    assert changed and reason.startswith("changed: "), reason
    assert why(**{"task.max_length": 16})[1].startswith("changed: ")  # any other setting still is
    # a manifest of before `model_file` (every file of the folder an input, its README too): spellings accepted alike
    (tmp_path / "tinybert" / "README.md").write_text("a model card")
    recipe = load_recipe(_recipe(tmp_path, "./tinybert"))
    fp, inputs = pipeline._fingerprint(recipe, teacher, {})
    earlier = pipeline._earlier_inputs(recipe, teacher, {}, inputs)
    assert "tinybert/README.md" in earlier
    old = pipeline._stage_fingerprint(recipe, teacher, earlier, pipeline._result_config(pipeline._config(recipe,
                                                                                                       teacher)))
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": old, "inputs": earlier, "outputs": {},
                                                      "config": pipeline._config(recipe, teacher)}))
    for spelling in ("tinybert", str(tmp_path / "tinybert")):
        assert why(**{"teacher.model": spelling})[1] is None, spelling
    # the default GLUE folder spelled another way
    assert why(**{"task.data_dir": os.path.relpath(glue, tmp_path)}) == (True, None)

    # a custom task's files: the same bytes elsewhere are the same inputs; train and dev traded are not (a recipe fixed
    # after it had them the wrong way round reused the teacher trained on dev)
    for name, rows in (("a.tsv", "text\tlabel\ngood\t1\nbad\t0\n"), ("b.tsv", "text\tlabel\nfine\t1\nmeh\t0\n")):
        (tmp_path / name).write_text(rows)
    custom = tmp_path / "custom.yaml"

    def custom_recipe(train, dev):
        custom.write_text(f"name: c\nruns_dir: runs\ntask: {{name: mine, files: {{train: {train}, dev: {dev}}}, "
                          f"labels: ['0', '1'], max_length: 32}}\nteacher: {{model: tinybert}}\n")
        return load_recipe(custom)

    recorded = custom_recipe("a.tsv", "b.tsv")
    fp, inputs = pipeline._fingerprint(recorded, teacher, {})
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": fp, "inputs": inputs, "outputs": {},
                                                      "config": pipeline._config(recorded, teacher)}))
    shutil.copytree(tmp_path, tmp_path / "elsewhere", ignore=lambda d, names: [n for n in names if n not in
                                                                                 ("a.tsv", "b.tsv")])
    for train, dev, reused in (("./a.tsv", "b.tsv", True), (str(tmp_path / "elsewhere" / "a.tsv"),
                                                           str(tmp_path / "elsewhere" / "b.tsv"), True),
                               ("b.tsv", "a.tsv", False)):
        other = custom_recipe(train, dev)
        other_fp, other_inputs = pipeline._fingerprint(other, teacher, {})
        assert (pipeline._reuse(other, teacher, folder, other_fp, other_inputs, {})[1] is None) == reused, train


def test_a_respelled_or_copied_teacher_folder_does_not_redo_the_stages_after_the_teacher(tmp_path, tiny_bert_dir,
                                                                                            monkeypatch):
    """distill and prune read the teacher stage's outputs, never ``teacher.model``; yet the teacher section was in
    their fingerprints as config, so ``./tinybert`` for ``tinybert`` or a copied folder (the teacher stage reused, its
    inputs the same bytes) redid the distillation and the pruning. Changed teacher outputs are still a change."""
    from compress import pipeline

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_bert_dir, tmp_path / "tinybert")
    shutil.copytree(tiny_bert_dir, tmp_path / "copy")
    extra = ("students: [{name: s, kind: layer_drop, layers: 1}]\n"
             "prune: {keep_macs: 0.5, steps: 1}\n")
    recipe = load_recipe(_recipe(tmp_path, "tinybert", extra=extra))
    upstream = {"teacher": {"outputs": {"model/model.safetensors": "a" * 64}},
                "distill": {"outputs": {"s/model/model.safetensors": "b" * 64}}}
    for stage in (s for s in pipeline.STAGES if s.name in ("distill", "prune")):
        fp, inputs = pipeline._fingerprint(recipe, stage, upstream)
        folder = tmp_path / stage.name
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"fingerprint": fp, "inputs": inputs, "outputs": {},
                                                          "config": pipeline._config(recipe, stage), "seed": 42}))

        def why(outputs=upstream, **settings):
            other = load_recipe(_recipe(tmp_path, "tinybert", extra=extra), settings)
            other_fp, other_inputs = pipeline._fingerprint(other, stage, outputs)
            return other_fp != fp, pipeline._reuse(other, stage, folder, other_fp, other_inputs, outputs)[1]

        for spelling in ("./tinybert", str(tmp_path / "tinybert"), "copy"):
            assert why(**{"teacher.model": spelling}) == (True, None), (stage.name, spelling)
        retrained = {**upstream, "teacher": {"outputs": {"model/model.safetensors": "c" * 64}}}
        assert why(retrained)[1] == "changed: teacher outputs changed", stage.name
        assert why(**{"task.max_length": 16})[1].startswith("changed: task.max_length"), stage.name


def test_gradient_accumulation_gives_a_short_last_group_its_mean_loss_gradient(tokenizer):
    """Accelerate divides every loss by grad_accum and steps at the end of each epoch however many batches its last
    group holds: a group of 1 batch of 3 stepped on a third of its gradient (README: the effective batch is
    batch_size x grad_accum). 7 batches, grad_accum 3: groups of 3, 3 and 1; the last step gets that batch's full
    mean-loss gradient."""
    import random

    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    from compress.config import TrainConfig

    r = random.Random(0)
    words = "the a movie film good bad great awful plot actor fun boring".split()
    rows = {"text": [" ".join(r.choice(words) for _ in range(r.randint(1, 12))) for _ in range(50)],
            "label": [r.randint(0, 1) for _ in range(50)]}
    ds = tokenize(Dataset.from_dict(rows), tokenizer, 32)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    params = [p for p in model.parameters() if p.requires_grad]
    params = [p for p in params if p.ndim >= 2] + [p for p in params if p.ndim < 2]  # fit's decay / no-decay groups
    applied, wanted, calls = [], [], []

    def objective(m, batch):
        calls.append(1)
        out = m(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")})
        if len(calls) == 7:  # the last group: this batch alone
            wanted.append(torch.cat([g.flatten() for g in torch.autograd.grad(out.loss, params, retain_graph=True)]))
        return out.loss, {}

    step = torch.optim.AdamW.step

    def recording(self, *a, **k):
        applied.append(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]]).clone())
        return step(self, *a, **k)

    torch.optim.AdamW.step = recording
    try:
        fit(model, ds, Collator({"": tokenizer}), TrainConfig(epochs=1, batch_size=8, grad_accum=3, max_grad_norm=0,
                                                              lr=1e-3, warmup_ratio=0.0),
            seed=0, objective=objective, group_by_length=False)
    finally:
        torch.optim.AdamW.step = step
    assert len(applied) == 3
    last = wanted[-1]
    assert float(applied[-1] @ last / (last @ last)) == pytest.approx(1.0, abs=1e-4)


def test_the_bar_shows_each_steps_own_mean_loss_and_its_terms(tokenizer, monkeypatch):
    """The progress bar's loss is the step's: its micro-batches' mean (as weighted for the gradient), with each term
    of a several-term objective, set before the bar moves. It showed the step before's loss, of one micro-batch."""
    import random

    import compress.train as T
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    from compress.config import TrainConfig

    r = random.Random(0)
    words = "the a movie film good bad great awful plot actor fun boring".split()
    ds = tokenize(Dataset.from_dict({"text": [" ".join(r.choice(words) for _ in range(r.randint(1, 12)))
                                              for _ in range(28)], "label": [r.randint(0, 1) for _ in range(28)]}),
                  tokenizer, 32)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64))
    losses, shown = [], []

    def objective(m, batch):
        loss = m(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}).loss
        losses.append((len(batch["labels"]), loss.item()))
        return loss, {"ce": loss.item(), "twice": 2 * loss.item()}

    class Bar:
        def __init__(self, *a, **k):
            pass

        def set_postfix(self, **k):
            shown.append(dict(k, at=len(losses)))

        def update(self, n):
            shown.append("update")

        def close(self):
            pass

    monkeypatch.setattr(T, "tqdm", Bar)
    fit(model, ds, Collator({"": tokenizer}), TrainConfig(epochs=1, batch_size=8, grad_accum=2, lr=1e-3),
        seed=0, objective=objective, group_by_length=False)
    # 28 rows: batches of 8, 8, 8, 4; steps of (8, 8) and (8, 4) rows, each a row-weighted mean
    assert [s if s == "update" else s["at"] for s in shown] == [2, "update", 4, "update"]
    for post, group in zip(shown[::2], (losses[:2], losses[2:])):
        mean = sum(n * loss for n, loss in group) / sum(n for n, _ in group)
        assert float(post["loss"]) == pytest.approx(mean, abs=1e-4)
        assert float(post["ce"]) == pytest.approx(mean, abs=1e-4) and float(post["twice"]) == pytest.approx(2 * mean,
                                                                                                          abs=2e-4)


@pytest.mark.parametrize("rows", [22, 23])
def test_gradient_accumulation_weighs_every_row_alike_with_a_short_last_batch(tokenizer, rows):
    """Batches of 3 accumulated by 3 train as batches of 9 do, where the epoch's last batch is short too (22 or 23
    rows: groups of 3+3+3, 3+3+3 and 3+1 or 3+2 rows): each batch's loss was scaled alike, so the short batch's rows
    counted two or three times as much as the others in its group (weights 4-5e-3 apart; float noise is ~5e-6)."""
    import random

    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    from compress.config import TrainConfig

    r = random.Random(0)
    words = "the a movie film good bad great awful plot actor fun boring".split()
    ds = tokenize(Dataset.from_dict({"text": [" ".join(r.choice(words) for _ in range(r.randint(1, 12)))
                                              for _ in range(rows)],
                                     "label": [r.randint(0, 1) for _ in range(rows)]}), tokenizer, 32)
    trained = []
    for batch_size, grad_accum in ((9, 1), (3, 3)):
        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0))
        fit(model, ds, Collator({"": tokenizer}), TrainConfig(epochs=1, batch_size=batch_size, grad_accum=grad_accum,
                                                              max_grad_norm=0, lr=1e-2, warmup_ratio=0.0),
            seed=0, group_by_length=False)
        trained.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert float((trained[0] - trained[1]).abs().max()) < 1e-4


def test_stages_trained_with_gradient_accumulation_are_redone_and_no_other(tmp_path, tiny_bert_dir):
    """The short-last-group fix (2026-12-05) changes what a stage trained with grad_accum > 1 makes: those stages are
    redone (a fingerprint variant), every other run folder's stage is kept."""
    from compress import pipeline

    student = "students: [{name: s, kind: layer_drop, layers: 1, train: {grad_accum: %d}}]\n"
    for teacher, students, recover, want in ((1, 1, 1, (None, None, None)),
                                             (2, 1, 1, ("grad-accum-rows", None, None)),
                                             (1, 4, 1, (None, "grad-accum-rows", None)),
                                             (1, 1, 3, (None, None, "grad-accum-rows"))):
        extra = (student % students) + f"prune: {{heads: 0.5, recover: {{grad_accum: {recover}}}}}\n"
        path = _recipe(tmp_path, tiny_bert_dir, extra=extra)
        r = load_recipe(path, {"teacher.grad_accum": teacher})
        assert (pipeline._teacher_variant(r), pipeline._distill_variant(r), pipeline._prune_variant(r)) == want
    # a teacher kept as it is trains nothing
    assert pipeline._teacher_variant(load_recipe(path, {"teacher.grad_accum": 2, "teacher.finetune": False})) is None


def test_the_warmup_is_the_ratio_as_written_and_only_stages_whose_count_moved_are_redone(tmp_path, tiny_bert_dir,
                                                                                          tokenizer, monkeypatch):
    """``int(0.35 * 180)`` is 62 (the float product is 62.999...): the warm-up was one step short of the ratio as
    written for a few ratios. It is rounded on the decimal ratio now, and the stages of the ratios whose count could
    move (a fingerprint word) are redone; those of the usual ratios (0.06, 0.1, 0.2) keep their fingerprints."""
    from compress import pipeline

    assert TrainConfig(warmup_ratio=0.35).warmup_steps(180) == 63 and int(0.35 * 180) == 62
    for ratio in (0.0, 0.06, 0.1, 0.2, 0.35, 0.5, 0.999):
        for total in (1, 7, 180, 7672, 100_000):
            exact = TrainConfig(warmup_ratio=ratio).warmup_steps(total)
            assert exact == int(round(ratio * total, 6)) and 0 <= exact <= total  # never above the ratio as written
    assert not any(pipeline._float_warmup_differs(r) for r in (0.0, 0.05, 0.06, 0.1, 0.2, 0.25, 0.3))
    student = "students: [{name: s, kind: layer_drop, layers: 1, train: {warmup_ratio: %s}}]\n"
    for teacher, students, recover, want in ((0.1, 0.06, 0.2, (None, None, None)),
                                             (0.35, 0.06, 0.2, ("warmup-exact", None, None)),
                                             (0.1, 0.29, 0.2, (None, "warmup-exact", None)),
                                             (0.1, 0.06, 0.41, (None, None, "warmup-exact"))):
        extra = (student % students) + f"prune: {{heads: 0.5, recover: {{warmup_ratio: {recover}}}}}\n"
        r = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=extra), {"teacher.warmup_ratio": teacher})
        assert (pipeline._teacher_variant(r), pipeline._distill_variant(r), pipeline._prune_variant(r)) == want
    both = load_recipe(_recipe(tmp_path, tiny_bert_dir), {"teacher.warmup_ratio": 0.35, "teacher.grad_accum": 2})
    assert pipeline._teacher_variant(both) == "grad-accum-rows+warmup-exact"
    # what `fit` gives the schedule: 180 steps (20 rows, batch 1, 9 epochs) at 0.35 warm up for 63
    import compress.train
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    asked = []

    def schedule(optimizer, warmup, total):
        asked.append((warmup, total))
        raise KeyboardInterrupt  # nothing to train: the schedule is what is looked at

    monkeypatch.setattr(compress.train, "get_linear_schedule_with_warmup", schedule)
    ds = tokenize(Dataset.from_dict({"text": ["good film"] * 10 + ["bad plot"] * 10, "label": [1] * 10 + [0] * 10}),
                  tokenizer, 16)
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16,
                                                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(KeyboardInterrupt):
        fit(model, ds, Collator({"": tokenizer}), TrainConfig(epochs=9, batch_size=1, warmup_ratio=0.35), seed=0,
            group_by_length=False)
    assert asked == [(63, 180)]


@pytest.mark.parametrize("recipe_file, folder", [("quickstart.yaml", "quickstart-h200"), ("mrpc.yaml", "mrpc")])
def test_fingerprints_recorded_by_earlier_code_still_come_out_the_same(recipe_file, folder):
    """The fingerprints of real run folders made by earlier code (the manifests kept in docs/results, 2026-12-04 and
    -05), recomputed from their recorded config and inputs with today's code and recipe: a change to what a
    fingerprint hashes redoes every stage of every existing run folder, which the tests that build an "earlier"
    fingerprint with today's functions cannot see. Such a change must be meant (and then these manifests re-recorded,
    or `_accepted_fingerprints` taught the old form)."""
    from pathlib import Path

    from compress import pipeline

    root = Path(__file__).resolve().parent.parent
    recipe = load_recipe(root / "pipelines" / recipe_file)
    stages = {s.name: s for s in pipeline.STAGES}
    manifests = sorted((root / "docs" / "results" / folder).glob("*.manifest.json"))
    assert len(manifests) >= 5
    for path in manifests:
        m = json.loads(path.read_text())
        assert m["seed"] == recipe.seed
        # a report made before it named the bundle's pick (no "ships"): as `_accepted_fingerprints` takes it
        before_pick = m["stage"] == "report" and "ships" not in m
        assert pipeline._stage_fingerprint(recipe, stages[m["stage"]], m["inputs"], m["config"],
                                           before_pick=before_pick) == m["fingerprint"], path.name


def test_an_upstream_file_no_longer_read_is_the_reason_said(tmp_path, tiny_bert_dir):
    """`report.measure: false` leaves the bundle no report/latency.json to read: the bundle is redone (right), and said
    "stage code revision or compress version changed" (wrong: no code changed)."""
    from compress import pipeline

    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra="quantize: {}\nbundle: {}\n"))
    bundle = next(s for s in pipeline.STAGES if s.name == "bundle")
    inputs = {"quantize/int8_dynamic.onnx": "a" * 64}
    old = {"config": pipeline._config(recipe, bundle), "seed": recipe.seed,
           "inputs": {**inputs, "report/latency.json": "b" * 64}}
    assert pipeline._what_changed(recipe, bundle, old, inputs) == "changed: input report/latency.json no longer read"
    assert pipeline._what_changed(recipe, bundle, {**old, "inputs": inputs}, inputs) == \
        "changed: stage code revision or compress version changed"


def test_changing_one_student_retrains_it_alone_and_redoes_nothing_of_the_others(tmp_path, tiny_bert_dir, capsys,
                                                                                  monkeypatch):
    """A recipe of two students where one changed: the distill stage retrained both (hours on SST-2), and the prune
    and quantize stages of the other one (their source) were redone, as they read every distill output, timings in
    metrics.json included. Now the unchanged student is copied from the previous distill folder (its key, its files as
    hashed), and prune/quantize read their source's files only. A student whose own setting, or whose files, changed
    is trained again."""
    students = ("students: [{name: s, kind: layer_drop, layers: 1, train: {max_steps: 3, batch_size: 8}}, "
                "{name: t, kind: layer_drop, layers: 1, train: {max_steps: 2, batch_size: 8}}]\n"
                "prune: {keep_macs: 0.5, steps: 1, source: s, recover: {max_steps: 2, batch_size: 8}}\n"
                "quantize: {modes: [dynamic], max_drop: 100}\n")

    def run(**settings):
        capsys.readouterr()
        done = run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=students), settings), until="quantize")
        return done, capsys.readouterr().out

    first, _ = run()
    distill = tmp_path / "runs" / "tiny" / "distill"
    s_model = (distill / "s" / "model" / "model.safetensors").read_bytes()
    assert set(first["distill"]["student_keys"]) == {"s", "t"}
    import compress.pipeline

    checked = []  # the teacher, judged up to date before torch was imported, is not hashed again when distill runs
    real = compress.pipeline.outputs_intact
    monkeypatch.setattr(compress.pipeline, "outputs_intact", lambda folder, *a: checked.append(Path(folder).name)
                        or real(folder, *a))
    second, out = run(**{"students.1.train.max_steps": 3})
    assert checked.count("teacher") == 1 and "[teacher] up to date" in out
    assert "[distill] s: unchanged since the previous distill run, not trained again" in out
    assert "[distill] t: dev " in out and "[distill] running" in out  # t trained
    assert (distill / "s" / "model" / "model.safetensors").read_bytes() == s_model
    assert second["distill"]["student_keys"]["s"] == first["distill"]["student_keys"]["s"]
    assert second["distill"]["student_keys"]["t"] != first["distill"]["student_keys"]["t"]
    for stage in ("prune", "quantize"):
        assert f"[{stage}] up to date" in out and second[stage]["created"] == first[stage]["created"], out
    # s's own setting changed: trained again (and the stages of its model redone)
    _, out = run(**{"students.1.train.max_steps": 3, "students.0.train.max_steps": 4})
    assert "[distill] s: unchanged" not in out and "[prune] running" in out
    # s's files edited in the published folder since the stage wrote them: not copied, trained again
    (distill / "s" / "metrics.json").write_text("{}")
    _, out = run(**{"students.1.train.max_steps": 2, "students.0.train.max_steps": 4})
    assert "[distill] s: unchanged" not in out
    assert json.loads((distill / "s" / "metrics.json").read_text())["metrics"]["dev"]
    # --force distill trains every student again, none copied
    capsys.readouterr()
    run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=students), {"students.0.train.max_steps": 4}),
                 until="distill", force=("distill",))
    out = capsys.readouterr().out
    assert "[distill] s: dev " in out and "[distill] t: dev " in out and "unchanged" not in out, out
    # a quantize stage recorded before it read its source's files only (every distill output an input) is kept
    from compress import pipeline

    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=students.replace("prune: {", "#")),
                         {"students.0.train.max_steps": 4})
    quantize, folder = next(s for s in pipeline.STAGES if s.name == "quantize"), tmp_path / "old-quantize"
    done = {"teacher": {"outputs": {"model/model.safetensors": "1" * 64}},
            "distill": {"outputs": {"s/model/model.safetensors": "2" * 64, "t/model/model.safetensors": "3" * 64,
                                    "t/metrics.json": "4" * 64}}}
    fp, inputs = pipeline._fingerprint(recipe, quantize, done)
    assert "distill/s/model/model.safetensors" in inputs and "distill/t/metrics.json" not in inputs
    every = pipeline._inputs(recipe, quantize, done, every_file=True)
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": pipeline._stage_fingerprint(
        recipe, quantize, every, pipeline._result_config(pipeline._config(recipe, quantize))), "inputs": every,
        "outputs": {}, "config": pipeline._config(recipe, quantize), "seed": recipe.seed}))
    assert pipeline._reuse(recipe, quantize, folder, fp, inputs, done)[1] is None


def _quick_teacher(monkeypatch, marker: str):
    """Replace the teacher stage's work with writing one file (``marker`` its text): the pipeline around it is what
    is looked at."""
    import teachers.finetune

    def quick(recipe, out, inputs, forced=False):
        (out / "model.bin").write_text(marker)
        return {"metrics": {"dev": {"accuracy": 0.5}}}

    monkeypatch.setattr(teachers.finetune, "run", quick)


def test_a_stage_whose_manifest_cannot_be_written_leaves_the_previous_stage_folder_in_place(tmp_path, tiny_bert_dir,
                                                                                            monkeypatch):
    """The working folder is renamed into place only once its manifest is written: a manifest write that fails (a full
    disk, a Ctrl-C) leaves the stage folder of the previous run whole, and no working folder."""
    from compress import pipeline

    _quick_teacher(monkeypatch, "first")
    run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir)))
    folder = tmp_path / "runs" / "tiny" / "teacher"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert (folder / "model.bin").read_text() == "first" and "manifest.json" in before
    _quick_teacher(monkeypatch, "second")

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "write_json", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir)), force=("teacher",))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not list(folder.parent.glob(".teacher.*"))


def test_a_deleted_output_redoes_the_stage(tmp_path):
    """An output file the manifest lists that is gone (deleted by hand, a partial copy of the run folder) is not an
    intact stage: as edited, it is redone."""
    from compress.manifest import hash_tree, write_json
    from compress.pipeline import STAGES, _reuse

    folder = tmp_path / "teacher"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text("{}")
    (folder / "model" / "model.safetensors").write_bytes(b"weights")
    write_json(folder / "manifest.json", {"fingerprint": "fp", "outputs": hash_tree(folder)})
    assert _reuse(None, STAGES[0], folder, "fp", {})[1] is None
    (folder / "model" / "model.safetensors").unlink()
    assert _reuse(None, STAGES[0], folder, "fp", {})[1] == "its outputs were edited since they were written"


def test_a_killed_runs_old_stage_folder_is_removed_and_a_live_ones_kept(tmp_path):
    """A run killed between moving the previous stage folder aside (``.<stage>.old-PID``) and deleting it left a
    model-sized folder nothing reads: the next run removes it, as it does a ``.<stage>.tmp-PID``; a running process's
    own are left alone."""
    from compress.pipeline import _remove_orphans

    dead = [tmp_path / ".teacher.old-999999999", tmp_path / ".distill.tmp-999999999"]
    live = [tmp_path / f".teacher.old-{os.getpid()}", tmp_path / f".distill.tmp-{os.getpid()}"]
    for folder in dead + live:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
    _remove_orphans(tmp_path)
    assert [p.exists() for p in dead] == [False, False] and [p.exists() for p in live] == [True, True]


def test_every_training_setting_but_checkpoint_every_is_part_of_the_teachers_fingerprint(tmp_path, tiny_bert_dir):
    """Each setting that changes what training makes (eval_every picks the steps whose held-out score chooses the
    kept weights) redoes the stage; checkpoint_every only says how it runs."""
    from compress import pipeline

    path = _recipe(tmp_path, tiny_bert_dir)
    teacher = pipeline.STAGES[0]

    def fp(**settings):
        return pipeline._fingerprint(load_recipe(path, {f"teacher.{k}": v for k, v in settings.items()}), teacher,
                                     {})[0]

    base = fp()
    assert fp(checkpoint_every=5) == base
    changed = {"epochs": 2, "lr": 1.0e-4, "batch_size": 8, "grad_accum": 2, "warmup_ratio": 0.2, "weight_decay": 0.0,
               "max_grad_norm": 0.5, "max_steps": 5, "eval_every": 3, "precision": "bf16", "seed": 3}
    assert set(changed) | {"checkpoint_every"} == {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in changed.items():
        assert fp(**{key: value}) != base, key


def test_max_steps_caps_the_epochs_budget_and_never_raises_it():
    """``max_steps`` is a cap: above what ``epochs`` give, the epochs' steps are taken (no extra epochs); below, it
    stops early. A short last accumulation group is a step too."""
    from compress.train import step_budget

    assert step_budget(7, 1, TrainConfig(epochs=1, batch_size=8, max_steps=100)) == 7
    assert step_budget(7, 1, TrainConfig(epochs=2, batch_size=8, grad_accum=3, max_steps=100)) == 6
    assert step_budget(7, 1, TrainConfig(epochs=2, batch_size=8, max_steps=5)) == 5
    assert step_budget(7, 2, TrainConfig(epochs=1, batch_size=8, max_steps=100)) == 4


def _fit_sst2_rows(model_dir, cfg: TrainConfig, folder, stop_at=None, **kw):
    """``fit`` of the tiny model on 64 SST-2 training rows, checkpointed in ``folder``; with ``stop_at``, a Ctrl-C in
    that call of the objective (None then). (result, its final weights)."""
    from compress.train import classification_objective

    data = load_task(TaskConfig(name="sst2", max_train_samples=64, holdout=0.0), seed=0)
    model, tok = load_for_task(str(model_dir), data.spec)
    calls = []

    def objective(m, batch):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return classification_objective(m, batch)

    try:
        result = fit(model, tokenize(data.train, tok, 32), Collator({"": tok}), cfg, seed=0, objective=objective,
                     checkpoint_dir=folder, **kw)
    except KeyboardInterrupt:
        return None
    return result, {k: v.clone() for k, v in model.state_dict().items()}


def test_a_run_resumed_twice_ends_with_the_weights_of_an_unbroken_run(tiny_bert_dir, tmp_path):
    """A checkpoint saved by a resumed run records its place in the epoch counted from the epoch's start (the
    batches the resume skipped included): resumed from it, the run reads each batch once and ends where an unbroken
    run does."""
    cfg = TrainConfig(epochs=1, batch_size=8, checkpoint_every=2)
    _, clean = _fit_sst2_rows(tiny_bert_dir, cfg, tmp_path / "clean")
    folder = tmp_path / "ck"
    assert _fit_sst2_rows(tiny_bert_dir, cfg, folder, stop_at=3) is None  # step 2 saved, stopped in step 3
    # resumed at step 2: step 4 saved (its batch 4 of 8), stopped in step 5
    assert _fit_sst2_rows(tiny_bert_dir, cfg, folder, stop_at=3) is None
    result, weights = _fit_sst2_rows(tiny_bert_dir, cfg, folder)
    assert result.resumed_from == 4 and result.steps == 8
    assert all(torch.equal(clean[k], weights[k]) for k in clean)


def test_a_resumed_run_restores_the_best_state_saved_before_the_interruption(tiny_bert_dir, tmp_path):
    """The best held-out state reached before an interruption travels in the checkpoint: a resumed run whose later
    evaluations all score lower ends with that state (not its last one), its step and score recorded."""
    cfg = TrainConfig(epochs=1, batch_size=8, max_steps=4, eval_every=1, checkpoint_every=2)
    snapshots, scores = [], iter([0.9, 0.5, 0.1, 0.2])

    def score(m):
        snapshots.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return {"accuracy": next(scores)}

    # steps 1 (0.9, the best) and 2 (0.5) scored, step 2 saved, stopped in step 3
    assert _fit_sst2_rows(tiny_bert_dir, cfg, tmp_path / "ck", stop_at=3, evaluate=score) is None
    result, final = _fit_sst2_rows(tiny_bert_dir, cfg, tmp_path / "ck", evaluate=score)
    assert result.resumed_from == 2 and result.steps == 4 and len(snapshots) == 4
    assert (result.best_step, result.best_metric) == (1, 0.9)
    assert all(torch.equal(final[k], snapshots[0][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[-1][k]) for k in final)


def test_a_tie_with_the_best_held_out_score_keeps_the_earlier_state(tiny_bert_dir):
    """A later evaluation that only equals the best score does not replace the state kept: the first state to reach
    the best score is the one restored (and the step recorded)."""
    data = load_task(TaskConfig(name="sst2", max_train_samples=32, holdout=0.0), seed=0)
    model, tok = load_for_task(str(tiny_bert_dir), data.spec)
    snapshots, scores = [], iter([0.5, 0.9, 0.9, 0.1])

    def score(m):
        snapshots.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return {"accuracy": next(scores)}

    result = fit(model, tokenize(data.train, tok, 32), Collator({"": tok}),
                 TrainConfig(epochs=1, batch_size=8, eval_every=1), seed=0, evaluate=score)
    assert result.best_step == 2 and result.best_metric == 0.9 and len(snapshots) == 4
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)


def test_under_ddp_a_short_last_accumulation_group_is_weighed_up_to_its_batches():
    """Under DDP (rows None: even batches) each batch of a last group of fewer than ``grad_accum`` batches is weighed
    by grad_accum / its group's batches, so the step takes the group's mean-loss gradient (one process: by rows)."""
    from compress.train import _accumulation_weight

    assert [_accumulation_weight(b, 7, 3, 8, None) for b in range(7)] == [1.0] * 6 + [3.0]
    assert [_accumulation_weight(b, 8, 3, 8, None) for b in (6, 7)] == [1.5, 1.5]
    # one process, 50 rows in batches of 8 (the last of 2): the last group is that batch alone
    assert _accumulation_weight(6, 7, 3, 8, 50) == pytest.approx(3.0)
    assert _accumulation_weight(4, 7, 3, 8, 50) == pytest.approx(1.0)


def test_a_run_redone_for_its_dev_rows_alone_keeps_the_trained_models_and_scores_them_again(tmp_path, tiny_bert_dir,
                                                                                            capsys, monkeypatch):
    """Another ``task.max_eval_samples`` (or an edited dev file) redid the teacher, every student and the pruning,
    training included (hours on SST-2), though training never reads dev. Now their models are kept from the previous
    run (the same bytes: the stages after them see the same files) and scored again on the new rows; a changed
    training setting, or --force teacher, trains again."""
    import compress.distill.stage
    import compress.prune_stage
    import teachers.finetune
    from compress.evaluate import evaluate

    trained = []
    for module in (teachers.finetune, compress.distill.stage, compress.prune_stage):
        monkeypatch.setattr(module, "fit", lambda *a, _real=module.fit, **k: trained.append(k.get("desc")) or
                            _real(*a, **k))
    students = ("students: [{name: s, kind: layer_drop, layers: 1, train: {max_steps: 3, batch_size: 8}}]\n"
                "prune: {keep_macs: 0.5, steps: 2, recover: {max_steps: 2, batch_size: 8}}\n")

    def run(settings=None, force=()):
        trained.clear()
        capsys.readouterr()
        done = run_pipeline(load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=students), settings), until="prune",
                            force=force)
        return done, capsys.readouterr().out

    first, _ = run()
    assert len(trained) == 4  # the teacher, the student, two recovery steps
    assert all("dev_recovered" in step for step in first["prune"]["pruning"]["steps"])
    run_dir = tmp_path / "runs" / "tiny"
    files = {p: p.read_bytes() for p in sorted(run_dir.glob("*/*/model/*")) + sorted(run_dir.glob("*/model/*"))}
    from compress.pipeline import explain

    assert explain(load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=students), {"task.max_eval_samples": 40}),
                   until="prune") == [
        ("teacher", True, "changed: task.max_eval_samples: 100 -> 40; its trained model is kept and scored again"),
        ("distill", True, "after teacher (reads its outputs)"),
        ("prune", True, "after teacher, distill (reads their outputs)")]
    second, out = run({"task.max_eval_samples": 40})
    assert trained == [] and "(changed: task.max_eval_samples: 100 -> 40)" in out, out
    assert f"[teacher] trained as in {run_dir / 'teacher'} (only what it is scored on changed)" in out
    assert ("[distill] s: trained as in the previous distill run (only what it is scored on changed): its model is "
            "kept and scored again (--force distill trains it again)\n" in out)
    assert f"[prune] pruned and recovered as in {run_dir / 'prune'} (only what it is scored on changed)" in out
    assert {p: p.read_bytes() for p in files} == files  # the same model files, the same bytes
    assert second["teacher"]["training_key"] == first["teacher"]["training_key"]
    assert second["distill"]["training_keys"] == first["distill"]["training_keys"]
    assert second["distill"]["student_keys"] != first["distill"]["student_keys"]
    data = load_task(load_recipe(_recipe(tmp_path, tiny_bert_dir), {"task.max_eval_samples": 40}).task, seed=42)
    for folder, metrics in ((run_dir / "teacher", second["teacher"]["metrics"]),
                            (run_dir / "distill" / "s", second["distill"]["students"]["s"]["metrics"]),
                            (run_dir / "prune", second["prune"]["metrics"])):
        model, tok = load_trained(folder / "model")
        assert metrics["dev"] == evaluate(model, tokenize(data.dev, tok, 32), Collator({"": tok}), data.spec)
    # the pruned model's source scored on the same rows; the steps' dev scores (of models not kept) left out
    assert second["prune"]["metrics"]["dev_before"] == second["distill"]["students"]["s"]["metrics"]["dev"]
    assert second["prune"]["metrics"]["holdout"] == first["prune"]["metrics"]["holdout"]
    steps = second["prune"]["pruning"]["steps"]
    assert [s["macs"] for s in steps] == [s["macs"] for s in first["prune"]["pruning"]["steps"]]
    assert not any("dev_recovered" in s or "dev_pruned" in s for s in steps)
    assert json.loads((run_dir / "prune" / "pruning.json").read_text())["kept_from_previous_run"] is True
    assert second["prune"]["pruning"]["speedup_macs"] == first["prune"]["pruning"]["speedup_macs"]
    t_dev, s_dev = second["teacher"]["metrics"]["dev"]["accuracy"], second["distill"]["students"]["s"]["metrics"]
    assert s_dev["retention"] == pytest.approx(s_dev["dev"]["accuracy"] / t_dev, abs=1e-4)
    assert second["teacher"]["train"]["dev_rows"] == 40 and first["teacher"]["train"]["dev_rows"] == 100
    kept = {k: second["teacher"]["train"][k] for k in teachers.finetune.TRAINED}
    assert kept == {k: first["teacher"]["train"][k] for k in teachers.finetune.TRAINED} and kept["steps"] > 0
    assert second["teacher"]["train"]["kept_from_previous_run"] is True and second["teacher"]["timing"]["train_s"] == 0
    assert second["teacher"]["train"]["train_s"] == first["teacher"]["train"]["train_s"] > 0  # what it cost to train
    assert json.loads((run_dir / "distill" / "s" / "metrics.json").read_text())["metrics"] == s_dev
    # up to date now; a training setting changed, or --force teacher: trained again
    assert trained == [] and "[teacher] up to date" in run({"task.max_eval_samples": 40})[1]
    _, out = run({"task.max_eval_samples": 40}, force=("teacher",))
    assert trained[0] == f"teacher {tiny_bert_dir}" and "trained as in" not in out.split("[distill]")[0]
    _, out = run({"task.max_eval_samples": 40, "teacher.lr": 5.0e-4})
    assert trained[0] == f"teacher {tiny_bert_dir}" and "as in" not in out
    lr = {"teacher.lr": 5.0e-4}  # the prune stage's own: kept again, --force prune recovers again
    _, out = run({"task.max_eval_samples": 30, **lr})
    assert trained == [] and "[prune] pruned and recovered as in" in out
    _, out = run({"task.max_eval_samples": 30, **lr}, force=("prune",))
    assert trained == ["prune step 1/2 recovery", "prune step 2/2 recovery"] and "as in" not in out
    # a kept model must be as written: an edited teacher weight file is trained again, not scored again (and a dry
    # run says so, though the changed dev rows are what it names first)
    weights = run_dir / "teacher" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert explain(load_recipe(_recipe(tmp_path, tiny_bert_dir, extra=students), {"task.max_eval_samples": 20, **lr}),
                   until="teacher")[0][2].endswith("; its outputs were edited since they were written: trained again")
    _, out = run({"task.max_eval_samples": 20, **lr})
    assert trained[0] == f"teacher {tiny_bert_dir}" and "[teacher] trained as in" not in out


def test_naming_the_working_folder_or_a_copy_of_the_data_as_data_dir_is_no_change(tmp_path, tiny_bert_dir,
                                                                                  monkeypatch, glue_dir):
    """A CI integrator's walkthrough: a custom task read from the working folder, then `--set task.data_dir=.` (or the
    folder spelt absolute, or a copy of the files elsewhere) redid all seven stages, re-timing the models and
    rebuilding the bundle: the recorded inputs were spelt `train.csv`, the new ones `./train.csv`-rooted, and never
    matched. The same bytes under the folder named are no change; other bytes are."""
    import csv

    from compress.pipeline import explain

    monkeypatch.chdir(tmp_path)
    lines = (glue_dir / "SST-2" / "train.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
    for name, part in (("train.csv", lines[:64]), ("dev.csv", lines[64:96])):
        with open(name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("review", "sentiment"), *(line.split("\t") for line in part)])
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\nruns_dir: {tmp_path / 'runs'}\n"
                    "task: {name: mine, files: {train: train.csv, dev: dev.csv}, text_column: review, "
                    "label_column: sentiment, labels: ['0', '1'], max_length: 32, holdout: 0.1}\n"
                    f"teacher: {{model: {tiny_bert_dir}, max_steps: 2, batch_size: 8}}\n")
    run_pipeline(load_recipe(path))
    (tmp_path / "copy").mkdir()
    for name in ("train.csv", "dev.csv"):
        shutil.copy(name, tmp_path / "copy" / name)
    for folder in (".", str(tmp_path), "copy", str(tmp_path / "copy")):
        assert explain(load_recipe(path, {"task.data_dir": folder}))[0] == ("teacher", False, "up to date"), folder
    with open(tmp_path / "copy" / "dev.csv", "a", encoding="utf-8") as f:
        f.write("an extra row,1\n")
    assert explain(load_recipe(path, {"task.data_dir": "copy"}))[0][1] is True
