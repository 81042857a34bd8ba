"""Scoring in a distributed run: `evaluate` shares the rows out between the processes and every process gets the
metrics of the whole split, the same as one process computes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import GLUE, tiny_bert_config  # noqa: E402


def _scored(rows: int = 40):
    """A tiny random classifier and SST-2 dev rows, the same in every process."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from compress.config import TaskConfig
    from compress.data import Collator, load_task, tokenize
    from teachers.zoo import resolve

    tok = AutoTokenizer.from_pretrained(resolve("minilm-l6"))
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    data = load_task(TaskConfig(name="sst2", data_dir=str(GLUE / "SST-2"), max_eval_samples=rows, holdout=0.0), 0)
    return model, tokenize(data.dev, tok, 32), Collator({"": tok}), data.spec


def _worker(rank: int, world: int, init: str, out: str) -> None:
    from compress.evaluate import evaluate

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model, ds, collator, spec = _scored()
        seen = []
        model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(len(kwargs["input_ids"])),
                                        with_kwargs=True)
        metrics = evaluate(model, ds, collator, spec, batch_size=8)
        Path(out, f"{rank}.json").write_text(json.dumps({"metrics": metrics, "rows": sum(seen)}))
        dist.barrier()  # both done before either tears its gloo pairs down
    finally:
        dist.destroy_process_group()


def test_evaluate_shares_the_rows_between_processes(tmp_path):
    from compress.evaluate import evaluate

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    model, ds, collator, spec = _scored()
    alone = evaluate(model, ds, collator, spec, batch_size=8)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert [r["rows"] for r in results] == [20, 20]  # each process scored half of the 40 rows
    for r in results:  # every process has the whole split's metrics, as one process scores them
        assert r["metrics"].keys() == alone.keys()
        assert r["metrics"]["accuracy"] == pytest.approx(alone["accuracy"], abs=1e-9)


def _share_worker(rank: int, world: int, init: str, out: str) -> None:
    from compress.evaluate import predict_shared

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model, ds, collator, _ = _scored()
        logits = predict_shared(model, ds.select([0]), collator, batch_size=8)
        Path(out, f"{rank}.json").write_text(json.dumps(logits.tolist()))
        dist.barrier()  # both done before either tears its gloo pairs down (a process aborted there once, in CI)
    finally:
        dist.destroy_process_group()


def test_predict_shared_with_fewer_rows_than_processes(tmp_path):
    """One row, two processes: the second process's share is empty, and every process still gets the row's logits
    (an empty share used to fail in np.concatenate, e.g. the last 2048-row chunk of the prune stage's teacher logits
    holding one row)."""
    from compress.evaluate import predict

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_share_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    model, ds, collator, _ = _scored()
    alone = predict(model, ds.select([0]), collator, batch_size=8)
    for rank in range(2):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got[0] == pytest.approx(alone[0].tolist(), abs=1e-6) and len(got) == 1


def test_predict_on_no_rows():
    from compress.evaluate import predict

    model, ds, collator, _ = _scored()
    logits = predict(model, ds.select([]), collator)
    assert logits.shape == (0, 2)


def test_predict_returns_each_rows_logits_in_row_order_and_leaves_the_mode_as_it_was():
    """`predict` runs length-sorted batches: row i's logits are those of row i scored alone, whatever its length;
    a model in training comes back in training (it is scored in eval mode: no dropout)."""
    from compress.evaluate import predict

    model, ds, collator, _ = _scored(rows=8)
    assert len(set(map(len, ds["input_ids"]))) > 1  # rows of several lengths: the sort moves them
    logits = predict(model, ds, collator, batch_size=4)
    alone = np.concatenate([predict(model, ds.select([i]), collator) for i in range(len(ds))])
    assert np.abs(logits - alone).max() < 1e-5
    model.train()
    again = predict(model, ds, collator, batch_size=4)
    assert model.training and np.abs(again - logits).max() < 1e-5
