"""Structured pruning: physical removal of heads and FFN neurons, bookkeeping, kept-index records, exact save/load
(stock and our loader), ONNX parity of non-uniform models, invalid requests, Taylor scores on real SST-2 rows."""

import dataclasses
import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from compress import prune as P
from compress.config import PruneConfig, TaskConfig, from_dict
from compress.data import Collator, load_task, tokenize
from compress.distill.stage import saved_teacher_logits, teacher_digest
from compress.errors import CompressError
from compress.evaluate import evaluate, predict
from compress.manifest import fingerprint, hash_tree
from compress.modeling import load_trained, save
from compress.prune_stage import teacher_logits
from conftest import tiny_bert_config

HEADS, FFN = 4, 64
HIDDEN = 32


def tiny(layers=3, seed=0):
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=layers)).eval()
    for p in model.parameters():  # random init is near-uniform; spread magnitudes so rankings are clear
        p.data.mul_(1 + torch.rand_like(p))
    return model


def batch(seed=1, rows=3, length=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def cfg(**kw):
    return from_dict(PruneConfig, kw, file="test.yaml", where="prune")


@pytest.fixture(scope="module")
def sst2(tokenizer):
    data = load_task(TaskConfig(name="sst2", max_train_samples=96, holdout=0.0, max_eval_samples=64), seed=0)
    return tokenize(data.train, tokenizer, 32), tokenize(data.dev, tokenizer, 32), Collator({"": tokenizer})


def test_heads_removed_like_hf_prune_heads_with_bookkeeping_rewritten():
    model = tiny()
    ref = copy.deepcopy(model)
    x = batch()
    plan = [P.LayerState(0, [0, 2, 3], list(range(FFN))), P.LayerState(1, [1], list(range(FFN))),
            P.LayerState(2, [0, 1, 2, 3], list(range(FFN)))]
    P.apply(model, plan)
    ref.prune_heads({0: [1], 1: [0, 2, 3]})  # transformers' own head removal: the reference
    assert torch.equal(logits(model, x), logits(ref, x))
    for layer, n in zip(model.bert.encoder.layer, (3, 1, 4)):
        sa = layer.attention.self
        assert (sa.num_attention_heads, sa.attention_head_size, sa.all_head_size) == (n, 8, n * 8)
        assert sa.query.out_features == sa.key.out_features == sa.value.out_features == n * 8
        assert layer.attention.output.dense.in_features == n * 8 and layer.attention.output.dense.out_features == 32
    assert model.config.pruned_heads == {0: [1], 1: [0, 2, 3]}
    assert model.config.compress_layer_sizes == [{"heads": 3, "ffn": FFN}, {"heads": 1, "ffn": FFN},
                                                 {"heads": 4, "ffn": FFN}]
    assert model.bert.encoder.layer[1].attention.pruned_heads == {0, 2, 3}
    assert model.bert.embeddings.word_embeddings.weight.shape[1] == 32  # hidden size untouched


def test_global_plan_is_non_uniform_and_kept_indices_match_the_weights():
    model = tiny()
    orig = copy.deepcopy(model)
    scores = P.score(model, "l2")
    P.apply(model, P.plan(model, scores, cfg(heads=0.5, ffn=0.5)))
    prov = P.provenance(model)
    assert sum(len(s.heads) for s in prov.layers) == 6 and sum(len(s.ffn) for s in prov.layers) == 96
    assert len({len(s.ffn) for s in prov.layers}) > 1  # global ranking: layers differ
    # a second step (iterative pruning: ratios of the model before the first) records indices of the unpruned model
    P.apply(model, P.plan(model, P.score(model, "l1"), cfg(heads=0.5, ffn=0.75), base=P.provenance(orig)))
    prov = P.provenance(model)
    assert sum(len(s.ffn) for s in prov.layers) == 48
    for layer, before, state in zip(model.bert.encoder.layer, orig.bert.encoder.layer, prov.layers):
        rows = torch.tensor([h * 8 + j for h in state.heads for j in range(8)])
        for name in ("query", "key", "value"):
            assert torch.equal(getattr(layer.attention.self, name).weight, getattr(before.attention.self, name).weight[rows])
            assert torch.equal(getattr(layer.attention.self, name).bias, getattr(before.attention.self, name).bias[rows])
        assert torch.equal(layer.attention.output.dense.weight, before.attention.output.dense.weight[:, rows])
        ffn = torch.tensor(state.ffn)
        assert torch.equal(layer.intermediate.dense.weight, before.intermediate.dense.weight[ffn])
        assert torch.equal(layer.output.dense.weight, before.output.dense.weight[:, ffn])
        assert torch.equal(layer.output.dense.bias, before.output.dense.bias)
    table = P.layer_table(model, 16)
    assert [r["params"] for r in table] == [P.layer_cost(32, r["heads"], 8, r["ffn"], 16)[0] for r in table]


def test_a_non_uniform_prune_writes_the_widest_ffn_as_intermediate_size():
    """`write_config`: with per-layer FFN widths, config.intermediate_size is the widest kept layer's (what
    `compress.config.model_widths` reads from a pruned folder), each layer's own width and head count in
    compress_layer_sizes."""
    model = tiny()
    P.apply(model, P.plan(model, P.score(model, "l2"), cfg(heads=0.5, ffn=0.5)))
    widths = [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer]
    assert len(set(widths)) > 1
    assert model.config.intermediate_size == max(widths)
    assert [s["ffn"] for s in model.config.compress_layer_sizes] == widths
    assert [s["heads"] for s in model.config.compress_layer_sizes] == \
        [layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer]


def test_per_layer_scope_keeps_each_layers_best_and_overrides():
    model = tiny()
    scores = P.score(model, "l1")
    plan = P.plan(model, scores, cfg(heads=0.5, ffn=0.25, scope="per_layer", layers={"layer.2": {"ffn": 0.5}}))
    assert [len(s.heads) for s in plan] == [2, 2, 2] and [len(s.ffn) for s in plan] == [48, 48, 32]
    for s, h in zip(plan, scores.heads):
        assert s.heads == sorted(torch.topk(h, 2).indices.tolist())


def test_per_layer_scope_refuses_a_ratio_only_where_global_does():
    """4 heads at 0.9 round to 0 heads a layer: `per_layer` refused it ("removes every head") while `global` took
    it (3 layers ask for round(1.2) = 1 head); both now keep each layer's best head, and both refuse 0.99."""
    model = tiny()
    scores = P.score(model, "l1")
    for scope in ("global", "per_layer"):
        plan = P.plan(model, scores, cfg(heads=0.9, ffn=0.25, scope=scope))
        assert [s.heads for s in plan] == [[int(torch.argmax(h))] for h in scores.heads], scope
        with pytest.raises(CompressError, match=r"prune\.heads: this target removes every head"):
            P.plan(model, scores, cfg(heads=0.99, ffn=0.25, scope=scope))


def test_uniform_prune_reloads_exactly_with_stock_from_pretrained_and_exports(tmp_path, tokenizer, sst2):
    from compress.export import check_parity, export_onnx, onnx_predict, session

    model = tiny()
    P.prune(model, cfg(heads=0.25, ffn=0.5, scope="per_layer", importance="l2"))
    assert P.uniform_ffn(model.config) and model.config.intermediate_size == 32
    P.save_pruned(model, tokenizer, tmp_path / "m")
    x = batch()
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    ours, _ = P.load_pruned(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    for reloaded in (stock, ours):
        assert (logits(reloaded, x) - logits(model, x)).abs().max() <= 1e-5
        assert P.provenance(reloaded) == P.provenance(model)
    _, dev, collator = sst2
    export_onnx(stock, tmp_path / "m.onnx")
    parity = check_parity(predict(model, dev, collator), onnx_predict(session(tmp_path / "m.onnx"), dev, collator),
                          atol=1e-4)
    assert parity.rows == 64 and parity.argmax_agreement == 1.0


def test_non_uniform_prune_reloads_with_our_loader_and_exports_to_onnx(tmp_path, tokenizer, sst2):
    from compress.export import check_parity, export_onnx, onnx_predict, session

    model = tiny()
    P.prune(model, cfg(heads=0.5, ffn=0.5, importance="l2"))
    sizes = [(s["heads"], s["ffn"]) for s in model.config.compress_layer_sizes]
    assert len({f for _, f in sizes}) > 1 and len({h for h, _ in sizes}) > 1
    save(model, tokenizer, tmp_path / "m")
    with pytest.raises(RuntimeError, match="size mismatch"):  # transformers cannot express per-layer FFN widths
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    _, dev, collator = sst2
    reference = predict(model, dev, collator)
    for reloaded, _ in (P.load_pruned(tmp_path / "m"), load_trained(tmp_path / "m")):
        assert np.abs(predict(reloaded, dev, collator) - reference).max() <= 1e-5
    export_onnx(model, tmp_path / "m.onnx")
    parity = check_parity(reference, onnx_predict(session(tmp_path / "m.onnx"), dev, collator), atol=1e-4)
    assert parity.rows == 64 and parity.argmax_agreement == 1.0


def test_a_budget_with_drop_empty_layers_reaches_the_one_head_one_neuron_model():
    """Globally ranked with drop_empty_layers, the smallest model keeps one head and one FFN neuron in all; the budget
    search stopped at ratios keeping one of each in the largest layer (two at least in all) and refused budgets the
    ratios meet, saying a smallest model twice the real one's."""
    model = tiny(layers=4)
    scores, hidden = P.score(model, "l1"), model.config.hidden_size
    full = P.encoder_cost(P.provenance(model), hidden, 32)[1]
    smallest = P.plan(model, scores, cfg(heads=1 - 1 / 16, ffn=1 - 1 / 256, drop_empty_layers=True), seq_len=32)
    kept = [s for s in smallest if s is not None]
    assert sum(len(s.heads) for s in kept) <= 2 and len(kept) < 4
    floor = P.encoder_cost(P.provenance(model), hidden, 32, kept)[1] / full
    budget = round(floor + 0.01, 2)
    planned = [s for s in P.plan(model, scores, cfg(keep_macs=budget, drop_empty_layers=True), seq_len=32) if s]
    assert P.encoder_cost(P.provenance(model), hidden, 32, planned)[1] / full <= budget  # it was refused, "keeps 0.07"
    with pytest.raises(CompressError, match="keep_macs: 0.01 cannot be met") as e:
        P.plan(model, scores, cfg(keep_macs=0.01, drop_empty_layers=True), seq_len=32)
    assert float(str(e.value).split("keeps ")[1].split()[0]) <= round(floor, 3)
    # per_layer scope: every layer that rounds to none keeps its best unit (as before)
    per_layer = P.plan(model, scores, cfg(keep_macs=0.3, scope="per_layer", drop_empty_layers=True), seq_len=32)
    assert all(s is not None and s.heads and s.ffn for s in per_layer)


def test_per_layer_scope_with_drop_empty_layers_refuses_only_what_global_refuses():
    """drop_empty_layers lets a layer go; it must not refuse what it would take without it: per_layer at 0.9 of 4
    heads (0 a layer) with drop_empty_layers said "this target removes every head of every layer", while global,
    and per_layer without drop_empty_layers, keep each layer's best head (likewise for FFN neurons)."""
    model = tiny()
    scores = P.score(model, "l1")
    for kw in (dict(heads=0.9, ffn=0.25), dict(heads=0.25, ffn=0.995), dict(heads=0.9, ffn=0.995)):
        plan = P.plan(model, scores, cfg(**kw, scope="per_layer", drop_empty_layers=True))
        assert plan == P.plan(model, scores, cfg(**kw, scope="per_layer")), kw
        if kw["heads"] == 0.9:
            assert [s.heads for s in plan] == [[int(torch.argmax(h))] for h in scores.heads]
        if kw["ffn"] == 0.995:
            assert [s.ffn for s in plan] == [[int(torch.argmax(f))] for f in scores.ffn]
        P.plan(model, scores, cfg(**kw, drop_empty_layers=True))  # global takes it too
    for scope in ("global", "per_layer"):  # both still refuse a ratio that keeps nothing at all
        with pytest.raises(CompressError, match=r"prune\.heads: this target removes every head"):
            P.plan(model, scores, cfg(heads=0.99, ffn=0.25, scope=scope, drop_empty_layers=True))


def test_empty_layer_is_dropped_and_model_reloads(tmp_path, tokenizer):
    model = tiny()
    x = batch()
    scores = P.score(model, "l2")
    scores.heads[1] = torch.zeros(HEADS)  # layer 1 is worth nothing: the global ranking takes all of it
    scores.ffn[1] = torch.zeros(FFN)
    plan = P.plan(model, scores, cfg(heads=0.4, ffn=0.4, drop_empty_layers=True))
    assert plan[1] is None
    P.apply(model, plan)
    assert len(model.bert.encoder.layer) == model.config.num_hidden_layers == 2
    assert [s.source for s in P.provenance(model).layers] == [0, 2]
    save(model, tokenizer, tmp_path / "m")
    reloaded, _ = load_trained(tmp_path / "m")
    assert (logits(reloaded, x) - logits(model, x)).abs().max() <= 1e-5


def test_a_layer_left_without_heads_but_with_neurons_keeps_its_best_head():
    """drop_empty_layers: a layer the global ranking empties of heads, not of FFN neurons, stays, with the one head
    it scored best (no zero-width attention), and vice versa: its best neuron."""
    model = tiny()
    scores = P.score(model, "l2")
    scores.heads[1] = torch.tensor([0.0, 0.0, 1e-6, 0.0])  # below every other layer's heads: none kept by rank
    scores.ffn[2] = torch.zeros(FFN)
    scores.ffn[2][37] = 1e-6
    plan = P.plan(model, scores, cfg(heads=0.4, ffn=0.4, drop_empty_layers=True))
    assert plan[1].heads == [2] and len(plan[1].ffn) > 1
    assert plan[2].ffn == [37] and len(plan[2].heads) > 1


def test_l1_and_l2_rank_by_their_norms_and_a_head_is_scored_by_its_mean_channel():
    """Magnitude importance is the norm its name says (a neuron of one large weight: first by l2, last by l1 against
    one of many small weights), and a head's score is the mean of its channels' (one strong channel does not outrank
    a uniformly moderate head)."""
    model = tiny(layers=1)
    layer = model.bert.encoder.layer[0]
    attn = layer.attention
    with torch.no_grad():
        layer.intermediate.dense.weight[:2].zero_()  # neurons 0 and 1: only what is set below
        layer.intermediate.dense.bias[:2].zero_()
        layer.output.dense.weight[:, :2].zero_()
        layer.intermediate.dense.weight[0, 0] = 10.0  # neuron 0: l1 10, l2 100
        layer.intermediate.dense.weight[1, :] = 0.5   # neuron 1: l1 16, l2 8
        head = HIDDEN // HEADS
        for lin in (attn.self.query, attn.self.key, attn.self.value):
            lin.weight[:2 * head].zero_()
            lin.bias[:2 * head].zero_()
        attn.output.dense.weight[:, :2 * head].zero_()
        attn.self.query.weight[0, 0] = 4.0 * HIDDEN  # head 0: one channel of 4 x hidden (mean hidden / 2)
        attn.self.query.weight[head:2 * head, :] = 1.0  # head 1: every channel hidden
    l1, l2 = P.score(model, "l1"), P.score(model, "l2")
    assert l1.ffn[0][1] > l1.ffn[0][0] and l2.ffn[0][0] > l2.ffn[0][1]
    assert l1.heads[0][1] > l1.heads[0][0]


def test_parameter_budget_is_met():
    model = tiny()
    full = sum(p.numel() for p in model.bert.encoder.parameters())
    P.prune(model, cfg(keep_params=0.5, importance="l1"), seq_len=32)
    kept = sum(p.numel() for p in model.bert.encoder.parameters())
    assert 0.49 * full < kept <= 0.5 * full  # the search lands next to the budget (0.4986), not well under it
    # a step part of the way (iterative pruning, step 1 of 2): half of what is removed at the end
    model = tiny()
    layers = P.plan(model, P.score(model, "l1"), cfg(keep_params=0.5, importance="l1"), fraction=0.5, seq_len=32)
    cost = P.encoder_cost(P.provenance(model), model.config.hidden_size, 32, layers)[0]
    assert 0.74 * full < cost <= 0.75 * full


def test_invalid_requests_say_why():
    for bad, why in (({"heads": 1.0}, "ratio in \\[0, 1\\)"), ({"ffn": -0.1}, "ratio in \\[0, 1\\)"),
                     ({}, "nothing to prune"), ({"heads": 0.5, "keep_params": 0.5}, "not both"),
                     ({"layers": {"attn.3": {"heads": 0.5}}}, "unknown layer name"),
                     ({"layers": {"layer.1": {"heads": 1.0}}}, "layers.layer.1.heads"),
                     # two names of one layer: the last one silently won
                     ({"heads": 0.25, "layers": {"layer.0": {"heads": 0.5}, "encoder.layer.0": {"heads": 0.0}}},
                      r"layers\.encoder\.layer\.0: layer 0 is given already, as layer\.0$")):
        with pytest.raises(CompressError, match=why):
            cfg(**bad)
    model = tiny()
    scores = P.score(model, "l1")
    with pytest.raises(CompressError, match="every head of every layer"):
        P.plan(model, scores, cfg(heads=0.97))
    with pytest.raises(CompressError, match=r"prune.layers.layer.7: unknown layer \(the model has layer.0 .. layer.2\)"):
        P.plan(model, scores, cfg(layers={"layer.7": {"heads": 0.5}}))
    # a layer an earlier pruning dropped (its record numbers layers as the unpruned model): the override was ignored
    dropped = dataclasses.replace(P.provenance(model), layers=[layer for layer in P.provenance(model).layers
                                                               if layer.source != 1])
    with pytest.raises(CompressError, match=r"prune.layers.layer.1: that layer was dropped by an earlier pruning \(the "
                                            r"model keeps layer.0, layer.2, numbered as in the unpruned model\)"):
        P.layer_index("layer.1", dropped)
    assert P.layer_index("bert.encoder.layer.2", dropped) == 2
    with pytest.raises(CompressError, match="keep_params: 0.01 cannot be met"):
        P.plan(model, scores, cfg(keep_params=0.01))
    with pytest.raises(CompressError, match="taylor needs calibration batches"):
        P.score(model, "taylor")


def test_taylor_scores_on_sst2_rows_find_a_dead_head(sst2):
    train, _, collator = sst2
    model = tiny(layers=2)
    attn = model.bert.encoder.layer[0].attention
    with torch.no_grad():  # head 2 of layer 0 outputs nothing: its value rows are zero
        attn.self.value.weight[16:24] = 0
        attn.self.value.bias[16:24] = 0
    batches = [collator([train[i] for i in range(j, j + 16)]) for j in range(0, 48, 16)]
    taylor = P.score(model, "taylor", batches)
    assert int(torch.argmin(taylor.heads[0])) == 2 and float(taylor.heads[0][2]) == 0.0
    assert all(bool((h[h != 0] > 0).all()) for h in taylor.heads) and taylor.ffn[1].shape == (FFN,)
    summed = [P.score(model, "taylor", [b]) for b in batches]  # accumulated over batches, batch by batch
    assert torch.allclose(taylor.ffn[0], sum(s.ffn[0] for s in summed), rtol=1e-4)
    before = predict(model, train, collator)
    P.prune(model, cfg(layers={"layer.0": {"heads": 0.25}}), scores=taylor)
    assert P.provenance(model).layers[0].heads == [0, 1, 3]
    assert np.abs(predict(model, train, collator) - before).max() <= 1e-5  # removing the dead head changes nothing


def test_prune_stage_iterative_with_recovery(tiny_bert_dir, tmp_path, monkeypatch):
    import json

    import compress.prune_stage as stage

    from compress.config import load_recipe
    from compress.pipeline import run_pipeline

    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
name: tiny
runs_dir: {tmp_path / 'runs'}
task: {{name: sst2, max_length: 32, max_train_samples: 160, max_eval_samples: 64, holdout: 0.1}}
teacher: {{model: {tiny_bert_dir}, max_steps: 3, lr: 1.0e-3, batch_size: 32}}
prune:
  heads: 0.5
  ffn: 0.5
  steps: 2
  calibration_batches: 2
  calibration_batch_size: 16
  recover: {{max_steps: 3, batch_size: 32, lr: 1.0e-4, teacher: teacher}}
""")
    asked = []  # the model is scored, cut and labelled on the process's device: a GPU's, if any
    monkeypatch.setattr(stage, "process_device", lambda: asked.append(True) or torch.device("cpu"))
    read, objective = [], stage.recovery_objective

    def recording(*args):
        inner = objective(*args)
        return lambda model, batch: read.extend(batch["index"].tolist()) or inner(model, batch)

    monkeypatch.setattr(stage, "recovery_objective", recording)
    scored, real_evaluate = [], stage.evaluate
    monkeypatch.setattr(stage, "evaluate",
                        lambda m, ds, *a, **k: scored.append(len(ds)) or real_evaluate(m, ds, *a, **k))
    done = run_pipeline(load_recipe(path))
    assert asked
    # the teacher labelled the rows the two recoveries read (3 steps of 32 each), no more (and no fewer: a row
    # without logits stops recovery)
    pruning = json.loads((tmp_path / "runs" / "tiny" / "prune" / "pruning.json").read_text())
    assert pruning["recovery_labelled"] == len(set(read)) < pruning["recovery_rows"] == 160
    manifest = done["prune"]
    folder = tmp_path / "runs" / "tiny" / "prune"
    assert manifest["source"] == "teacher" and manifest["params"] < done["teacher"]["params"]
    steps = manifest["pruning"]["steps"]
    assert [s["step"] for s in steps] == [1, 2] and all(s["recovery"]["steps"] == 3 for s in steps)
    assert sum(layer["heads"] for layer in steps[0]["layers"]) == 6 and sum(l["heads"] for l in steps[1]["layers"]) == 4
    assert {"dev_pruned", "dev_recovered"} <= set(steps[1]) and "accuracy" in manifest["metrics"]["dev_before"]
    rows = json.loads((folder / "layers.json").read_text())["layers"]
    assert [r["heads_before"] for r in rows] == [4, 4] and sum(r["heads_after"] for r in rows) == 4
    assert sum(r["ffn_after"] for r in rows) == 64 and "| total | 8 -> 4 | 128 -> 64 |" in (folder / "layers.md").read_text()
    record = json.loads((folder / "pruning.json").read_text())["provenance"]
    assert [len(s["heads"]) for s in record["layers"]] == [r["heads_after"] for r in rows]
    assert "model/model.safetensors" in manifest["outputs"] and manifest["pruning"]["speedup_macs"] > 1.5
    model, tok = load_trained(folder / "model")
    assert P.provenance(model).to_dict() == record
    # dev scored before pruning and after each cut and recovery; the held-out rows by each recovery's fit only: the
    # final scores are the last step's, which a fresh scoring of the saved model gives to the digit
    loaded = load_recipe(path)
    data = load_task(loaded.task, seed=loaded.seed)
    assert scored.count(64) == 5 and scored.count(len(data.holdout)) == 2 and len(data.holdout) > 64
    fresh = {split: evaluate(model, tokenize(getattr(data, split), tok, 32), Collator({"": tok}), data.spec)
             for split in ("dev", "holdout")}
    assert manifest["metrics"]["dev"] == fresh["dev"] == steps[-1]["dev_recovered"]
    assert manifest["metrics"]["holdout"] == fresh["holdout"] == steps[-1]["recovery"]["holdout"]


def test_prune_stage_interrupted_in_step_2_resumes_after_step_1(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    """A run stopped (Ctrl-C, crash, kill -9) during the second step's recovery retrained the first step too; it
    now starts after the newest finished step and ends where an uninterrupted run does."""
    from safetensors.torch import load_file

    import compress.prune_stage as PS
    from compress.config import load_recipe
    from compress.pipeline import run_pipeline

    def recipe(runs):
        path = tmp_path / f"{runs}.yaml"
        path.write_text(f"""
name: tiny
runs_dir: {tmp_path / runs}
task: {{name: sst2, max_length: 32, max_train_samples: 160, max_eval_samples: 64, holdout: 0.1}}
teacher: {{model: {tiny_bert_dir}, max_steps: 3, lr: 1.0e-3, batch_size: 32}}
prune: {{heads: 0.5, ffn: 0.5, steps: 2, calibration_batches: 2, calibration_batch_size: 16,
         recover: {{max_steps: 4, batch_size: 32, lr: 1.0e-3, teacher: teacher}}}}
""")
        return load_recipe(path)

    clean = run_pipeline(recipe("clean"))["prune"]
    calls = []
    real_fit = PS.fit

    def fit(*args, **kwargs):
        calls.append(kwargs["desc"])
        if kwargs["desc"].startswith("prune step 2/2") and len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(PS, "fit", fit)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(recipe("cut"))
    assert (tmp_path / "cut" / "tiny" / ".checkpoints" / "prune" / "done-step-1" / "history.json").is_file()
    resumed = run_pipeline(recipe("cut"))["prune"]
    assert calls == ["prune step 1/2 recovery", "prune step 2/2 recovery", "prune step 2/2 recovery"]
    def untimed(steps):
        return [{**s, "recovery": {k: v for k, v in s["recovery"].items() if k != "train_s"}} for s in steps]

    assert resumed["metrics"] == clean["metrics"]
    assert untimed(resumed["pruning"]["steps"]) == untimed(clean["pruning"]["steps"])
    a = load_file(tmp_path / "cut" / "tiny" / "prune" / "model" / "model.safetensors")
    b = load_file(tmp_path / "clean" / "tiny" / "prune" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert not (tmp_path / "cut" / "tiny" / ".checkpoints").exists()  # finished: nothing left to resume
    # the finished step's model read back short (a traceback on every rerun): skipped, said, pruned from step 1
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(recipe("cut"), force=("prune",))
    saved = tmp_path / "cut" / "tiny" / ".checkpoints" / "prune" / "done-step-1"
    (saved / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes()[:100])
    capsys.readouterr()
    again = run_pipeline(recipe("cut"), force=("prune",))["prune"]
    assert f"[prune] skipping the damaged {saved} (" in capsys.readouterr().out
    assert calls == ["prune step 1/2 recovery", "prune step 2/2 recovery"] + ["prune step 1/2 recovery",
                                                                              "prune step 2/2 recovery"]
    assert untimed(again["pruning"]["steps"]) == untimed(clean["pruning"]["steps"])


def test_prune_stage_takes_the_distilled_student_and_the_original_teacher_teaches(tiny_bert_dir, tmp_path,
                                                                                   monkeypatch):
    import json

    from compress.distill.stage import labelling
    import compress.distill.stage as distill_stage
    from compress.config import load_recipe
    from compress.pipeline import run_pipeline

    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
name: tiny
runs_dir: {tmp_path / 'runs'}
task: {{name: sst2, max_length: 32, max_train_samples: 128, max_eval_samples: 32, holdout: 0.1}}
teacher: {{model: {tiny_bert_dir}, max_steps: 2, batch_size: 32}}
students:
  - {{name: half, kind: layer_drop, layers: 1, train: {{max_steps: 2, batch_size: 32}}}}
prune:
  ffn: 0.5
  importance: l2
  recover: {{max_steps: 2, batch_size: 32, teacher: teacher}}
""")
    scored, real_evaluate = [], distill_stage.evaluate
    monkeypatch.setattr(distill_stage, "evaluate",
                        lambda m, ds, *a, **k: scored.append(len(ds)) or real_evaluate(m, ds, *a, **k))
    done = run_pipeline(load_recipe(path))
    manifest = done["prune"]
    assert manifest["source"] == "half" and "distill/half/model/model.safetensors" in manifest["inputs"]
    # the distill stage took the student's held-out scores from its fit (which scored them once, at the end), and
    # they are what scoring the saved student gives
    data = load_task(load_recipe(path).task, seed=load_recipe(path).seed)
    assert scored.count(len(data.holdout)) == 1 and len(data.holdout) not in (32, 128)
    student, s_tok = load_trained(tmp_path / "runs" / "tiny" / "distill" / "half" / "model")
    fresh = evaluate(student, tokenize(data.holdout, s_tok, 32), Collator({"": s_tok}), data.spec)
    assert done["distill"]["students"]["half"]["metrics"]["holdout"] == fresh
    assert [(r["heads_after"], r["ffn_after"]) for r in manifest["pruning"]["layers"]] == [(4, 32)]
    assert manifest["pruning"]["steps"][0]["recovery"]["steps"] == 2
    model, _ = load_trained(tmp_path / "runs" / "tiny" / "prune" / "model")
    assert model.config.num_hidden_layers == 1 and model.config.intermediate_size == 32
    # the teacher's logits on the training rows come from the distill stage's pass, not a second one
    assert manifest["pruning"]["recovery_logits"] == "distill stage"
    recipe = load_recipe(path)
    data = load_task(recipe.task, seed=recipe.seed)
    distill_dir = tmp_path / "runs" / "tiny" / "distill"
    teacher_dir = tmp_path / "runs" / "tiny" / "teacher"
    digest = teacher_digest(teacher_dir)  # from the teacher stage's manifest; hashing the files gives the same
    assert digest == fingerprint(hash_tree(teacher_dir / "model"))
    saved = saved_teacher_logits(distill_dir, data.train, 32, digest)
    teacher, t_tok = load_trained(teacher_dir / "model")
    assert saved.shape == (len(data.train), 2) and done["distill"]["teacher_logits"] == "computed"
    assert np.abs(teacher_logits(teacher, t_tok, data.train, 32).numpy() - saved).max() < 1e-4
    assert saved_teacher_logits(distill_dir, data.train.select(range(10)), 32, digest) is None  # other rows
    assert saved_teacher_logits(distill_dir, data.train, 64, digest) is None  # other max_length
    assert saved_teacher_logits(distill_dir, data.train, 32, "0" * 64) is None  # another teacher
    # labelled at the student's precision, in batches of 64 at least: logits labelled otherwise are not served to a
    # student that labels so (a file of before the record is taken as it is)
    meta_path = distill_dir / "teacher_logits.json"
    how = json.loads(meta_path.read_text())["labelling"]
    assert how == labelling(recipe.students[0].train) == {"precision": "fp32", "batch_size": 64}
    assert np.array_equal(saved_teacher_logits(distill_dir, data.train, 32, digest, how), saved)
    assert saved_teacher_logits(distill_dir, data.train, 32, digest, {**how, "batch_size": 128}) is None
    meta = meta_path.read_text()
    meta_path.write_text(json.dumps({k: v for k, v in json.loads(meta).items() if k != "labelling"}))
    assert np.array_equal(saved_teacher_logits(distill_dir, data.train, 32, digest, {**how, "batch_size": 128}), saved)
    # a torn or foreign record, a torn array a record of before (no sha256) vouched for: labelled again (each was a
    # traceback on every rerun, --force distill included)
    for torn in ('{"rows": 6', "[1, 2]"):
        meta_path.write_text(torn)
        assert saved_teacher_logits(distill_dir, data.train, 32, digest) is None
    meta_path.write_text(json.dumps({k: v for k, v in json.loads(meta).items() if k != "sha256"}))
    npy_bytes = (distill_dir / "teacher_logits.npy").read_bytes()
    (distill_dir / "teacher_logits.npy").write_bytes(npy_bytes[:100])
    assert saved_teacher_logits(distill_dir, data.train, 32, digest) is None
    (distill_dir / "teacher_logits.npy").write_bytes(npy_bytes)
    meta_path.write_text(meta)
    # an edited logits file (zeros, a partial write by hand) is not taken as the teacher's: it was reused, the student
    # trained on it, and its digest recorded as a good output
    npy = distill_dir / "teacher_logits.npy"
    original = npy.read_bytes()
    np.save(npy, np.zeros_like(saved))
    assert saved_teacher_logits(distill_dir, data.train, 32, digest) is None
    # ... and the prune stage, finding none to reuse, has the teacher (2 layers; not the 1-layer student it prunes)
    # label the rows its recovery reads, the logits the distill stage had saved for them: the same pruned model
    import compress.prune_stage as PS

    labelled, real_labels = [], PS.teacher_logits
    monkeypatch.setattr(PS, "teacher_logits", lambda m, t, rows, *a, **k: labelled.append(
        (m.config.num_hidden_layers, len(rows))) or real_labels(m, t, rows, *a, **k))
    relabel = PS.run(recipe, tmp_path / "relabel", {"teacher": teacher_dir, "distill": distill_dir},
                     forced=True)  # not the published prune folder's model: pruned again
    assert relabel["pruning"]["recovery_logits"] == "computed" and [n for n, _ in labelled] == [2]
    record = json.loads((tmp_path / "relabel" / "pruning.json").read_text())
    assert record["recovery_labelled"] == labelled[0][1] <= record["recovery_rows"] == len(data.train)
    assert relabel["metrics"] == manifest["metrics"]
    ours, first = (load_trained(folder)[0].state_dict() for folder in (tmp_path / "relabel" / "model",
                                                                       tmp_path / "runs" / "tiny" / "prune" / "model"))
    assert max(float((ours[k] - first[k]).abs().max()) for k in first) < 1e-4
    npy.write_bytes(original)
    # a changed student reruns the stage; the unchanged teacher's logits come from the previous run, not a new pass
    path.write_text(path.read_text().replace("layers: 1, train: {max_steps: 2", "layers: 1, train: {max_steps: 3"))
    again = run_pipeline(load_recipe(path))["distill"]
    assert again["fingerprint"] != done["distill"]["fingerprint"] and again["teacher_logits"] == "previous distill run"
    assert again["timing"]["half"]["teacher_cache_reused"] is True
    assert np.array_equal(saved_teacher_logits(distill_dir, data.train, 32, digest), saved)
    # the student now at the other precision: the previous run's logits are not its, the teacher labels again
    other = "bf16"
    path.write_text(path.read_text().replace("train: {max_steps: 3", f"train: {{precision: {other}, max_steps: 3"))
    relabelled = run_pipeline(load_recipe(path))["distill"]
    assert relabelled["teacher_logits"] == "computed" and "teacher_cache_reused" not in relabelled["timing"]["half"]
    assert relabelled["timing"]["half"]["teacher_logits_precision"] == other
    assert json.loads(meta_path.read_text())["labelling"] == {"precision": other, "batch_size": 64}
    # pruning the teacher itself: its logits on the training rows are the same ones, not a second pass
    path.write_text(path.read_text().replace("prune:\n", "prune:\n  source: teacher\n"))
    pruned_teacher = run_pipeline(load_recipe(path))["prune"]
    assert pruned_teacher["source"] == "teacher" and pruned_teacher["pruning"]["recovery_logits"] == "distill stage"


def test_prune_recovery_trains_on_the_students_transfer_set(tiny_bert_dir, tmp_path, capsys):
    from datasets import Dataset

    from compress.config import load_recipe
    from compress.distill.stage import load_transfer_set
    from compress.pipeline import run_pipeline

    path = tmp_path / "tiny.yaml"
    recipe_text = f"""
name: tiny
runs_dir: {tmp_path / 'runs'}
task: {{name: sst2, max_length: 32, max_train_samples: 64, max_eval_samples: 32, holdout: 0.1}}
teacher: {{model: {tiny_bert_dir}, max_steps: 2, batch_size: 32}}
students:
  - {{name: aug, kind: layer_drop, layers: 1, distill: {{augment: {{copies: 1, neighbours: 3}}}},
      train: {{max_steps: 2, batch_size: 32}}}}
prune:
  ffn: 0.5
  importance: taylor
  calibration_batches: 1
  calibration_batch_size: 8
  recover: {{max_steps: 2, batch_size: 32, teacher: teacher, data: transfer}}
"""
    path.write_text(recipe_text)
    done = run_pipeline(load_recipe(path))
    run = tmp_path / "runs" / "tiny"
    student = done["distill"]["students"]["aug"]
    folder = run / "distill" / student["transfer_set"]
    rows = Dataset.from_parquet(str(folder / "rows.parquet"))
    n_train = student["augment"]["rows"]
    assert len(rows) == n_train + student["augment"]["copies"] > n_train
    assert rows["gold"] == [1.0] * n_train + [0.0] * (len(rows) - n_train)
    # the saved logits are the teacher's on those rows, and the originals' serve plain students too
    digest = teacher_digest(run / "teacher")
    _, saved = load_transfer_set(folder, 32, digest)
    teacher, t_tok = load_trained(run / "teacher" / "model")
    assert np.abs(teacher_logits(teacher, t_tok, rows, 32).numpy() - saved).max() < 1e-4
    recipe = load_recipe(path)
    train = load_task(recipe.task, seed=recipe.seed).train
    assert np.array_equal(saved_teacher_logits(run / "distill", train, 32, digest), saved[:n_train])
    assert load_transfer_set(folder, 32, "0" * 64) is None  # another teacher's logits are not served
    # recovery trained on all of them with the saved logits; Taylor scores stay on the labelled rows
    pruning = done["prune"]["pruning"]
    assert pruning["recovery_logits"] == "distill stage" and pruning["recovery_rows"] == len(rows)
    # a distill rerun (the student changed) reuses the transfer set's logits: the teacher labels nothing
    path.write_text(recipe_text.replace("train: {max_steps: 2, batch_size: 32}}", "train: {max_steps: 3, batch_size: 32}}"))
    again = run_pipeline(load_recipe(path))["distill"]
    assert again["timing"]["aug"]["teacher_cache_reused"] == "previous distill run"
    assert again["teacher_logits"] == "previous distill run"
    assert np.array_equal(load_transfer_set(run / "distill" / student["transfer_set"], 32, digest)[1], saved)
    # another student added: the unchanged one is copied from the previous distill folder with its transfer set, but
    # not once that transfer set was edited since (its rows are what it trained on): then it trains again
    two = (recipe_text.replace("train: {max_steps: 2, batch_size: 32}}", "train: {max_steps: 3, batch_size: 32}}")
           .replace("prune:\n", "  - {name: b, kind: layer_drop, layers: 1, train: {max_steps: 1}}\nprune:\n"))
    for steps, edit_rows, reused in ((1, False, True), (2, True, False)):
        path.write_text(two.replace("train: {max_steps: 1}", f"train: {{max_steps: {steps}}}"))
        if edit_rows:
            rows.select(range(len(rows) - 1)).to_parquet(str(folder / "rows.parquet"))
        capsys.readouterr()
        run_pipeline(load_recipe(path), until="distill")
        out = capsys.readouterr().out
        assert ("[distill] aug: unchanged since the previous distill run, not trained again" in out) == reused, out
        assert "[distill] b: dev " in out
    assert len(Dataset.from_parquet(str(folder / "rows.parquet"))) == len(rows)  # made again, whole
    # a student distilled without copies has no transfer set to recover on: one line naming the field, at validation
    path.write_text(recipe_text.replace("distill: {augment: {copies: 1, neighbours: 3}},", ""))
    with pytest.raises(CompressError, match=r"prune\.recover\.data: transfer: student 'aug' has no distill\.augment"):
        load_recipe(path)


def test_bf16_predict_is_close_to_fp32(tokenizer):
    from datasets import Dataset

    model = tiny(layers=2)
    texts = ["a gorgeous , witty , seductive movie .", "it 's a bad sign .", "the acting is flat", "charming"] * 4
    ds = tokenize(Dataset.from_dict({"text": texts}), tokenizer, 16)
    collator = Collator({"": tokenizer})
    fp32, bf16 = predict(model, ds, collator), predict(model, ds, collator, precision="bf16")
    assert bf16.dtype == np.float32 and not np.array_equal(fp32, bf16)  # it ran in bf16 ...
    assert np.abs(fp32 - bf16).max() < 0.05 * np.abs(fp32).max()  # ... close to fp32


def tiny_mpnet(layers=3, seed=0):
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(seed)
    model = MPNetForSequenceClassification(MPNetConfig(vocab_size=30527, hidden_size=32, num_hidden_layers=layers,
                                                       num_attention_heads=HEADS, intermediate_size=FFN)).eval()
    for p in model.parameters():
        p.data.mul_(1 + torch.rand_like(p))
    return model


def mpnet_batch():
    x = batch()
    return {"input_ids": x["input_ids"] % 190 + 5, "attention_mask": x["attention_mask"]}


def test_mpnet_heads_and_neurons_are_removed_with_each_layer_keeping_its_position_bias_heads(tmp_path, tokenizer):
    """MPNet's relative-position bias (one row per original head, shared by every layer) must not couple layers in
    torch-pruning's graph, and each pruned layer must add only its kept heads' bias: the pruned model computes what
    the unpruned one computes with those heads masked and those neurons zeroed, also after save/load and in ONNX."""
    import onnxruntime as ort

    from compress.export import export_onnx

    model = tiny_mpnet()
    x = mpnet_batch()
    ref = copy.deepcopy(model)
    keep_ffn = [n for n in range(FFN) if n % 3]
    with torch.no_grad():  # the reference: removed neurons contribute nothing
        out = ref.mpnet.encoder.layer[2].output.dense
        out.weight[:, [n for n in range(FFN) if n not in keep_ffn]] = 0
    head_mask = torch.ones(3, HEADS)
    head_mask[0, 1] = 0
    head_mask[1, [0, 2, 3]] = 0
    expected = ref(**x, head_mask=head_mask).logits.detach()

    dg = P.dependency_graph(model)  # a layer's head group stays within that layer
    q = model.mpnet.encoder.layer[0].attention.attn.q
    group = dg.get_pruning_group(q, P.tp.prune_linear_out_channels, list(range(8)))
    touched = {id(dep.target.module) for dep, _ in group}
    assert {n for n, m in model.named_modules() if id(m) in touched and n} == {
        f"mpnet.encoder.layer.0.attention.attn.{n}" for n in "qkvo"}

    plan = [P.LayerState(0, [0, 2, 3], list(range(FFN))), P.LayerState(1, [1], list(range(FFN))),
            P.LayerState(2, list(range(HEADS)), keep_ffn)]
    P.apply(model, plan)
    assert (logits(model, x) - expected).abs().max() <= 1e-5
    attn = model.mpnet.encoder.layer[1].attention.attn
    assert attn.q.out_features == attn.all_head_size == attn.o.in_features == 8 and attn.num_attention_heads == 1
    assert model.mpnet.encoder.relative_attention_bias.weight.shape == (32, HEADS)  # shared bias: all heads kept
    assert model.config.pruned_heads == {0: [1], 1: [0, 2, 3]}

    scores = P.score(model, "l2")  # a pruned MPNet can be scored and pruned again
    assert [len(h) for h in scores.heads] == [3, 1, 4]
    save(model, tokenizer, tmp_path / "m")
    reloaded, _ = load_trained(tmp_path / "m")
    assert (logits(reloaded, x) - expected).abs().max() <= 1e-5
    P.apply(reloaded, [P.LayerState(0, [2], list(range(FFN))), P.LayerState(1, [1], list(range(FFN))),
                       P.LayerState(2, [0, 3], keep_ffn)])
    head_mask[0, [0, 3]] = 0
    head_mask[2, [1, 2]] = 0
    assert (logits(reloaded, x) - ref(**x, head_mask=head_mask).logits.detach()).abs().max() <= 1e-5

    export_onnx(model, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    onnx_logits = sess.run(None, {n: x[n].numpy() for n in names})[0]
    assert np.abs(onnx_logits - expected.numpy()).max() <= 1e-4


def _prune_worker(rank: int, world: int, init: str, out: str) -> None:
    """One process of a 2-process (gloo) prune step whose model's weights differ by process (stand-in for GPU
    kernels that sum gradients in another order): it writes which heads and neurons each layer kept."""
    import json
    from pathlib import Path

    import torch.distributed as dist

    from compress.prune_stage import prune_with_recovery

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        data = load_task(TaskConfig(name="sst2", max_train_samples=8, holdout=0.0, max_eval_samples=8), seed=0)
        from teachers.zoo import resolve
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(resolve("minilm-l6"))
        dev = tokenize(data.dev, tok, 32)
        model = tiny(layers=2, seed=rank)
        model, _ = prune_with_recovery(model, cfg(heads=0.5, ffn=0.5, importance="l1"), train=dev, holdout=dev, dev=dev,
                                       collator=Collator({"": tok}), spec=data.spec, logits=None, seed=0,
                                       seq_len=32)
        kept = [[s.heads, s.ffn] for s in P.provenance(model).layers]
        Path(out, f"{rank}.json").write_text(json.dumps(kept))
    finally:
        dist.destroy_process_group()


def test_every_process_of_a_distributed_prune_cuts_what_the_main_process_chose(tmp_path):
    """Each process scores its own copy; the units cut are the main process's choice everywhere (they were each
    process's own: models of different shapes, and DDP recovery then fails or trains apart)."""
    import json

    import torch.multiprocessing as mp

    mp.spawn(_prune_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2, join=True)
    main, other = (json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2))
    alone = tiny(layers=2, seed=0)
    P.prune(alone, cfg(heads=0.5, ffn=0.5, importance="l1"), seq_len=32)
    assert main == other == [[s.heads, s.ffn] for s in P.provenance(alone).layers]
    own = tiny(layers=2, seed=1)  # what process 1 would have cut alone: not the same units
    P.prune(own, cfg(heads=0.5, ffn=0.5, importance="l1"), seq_len=32)
    assert [[s.heads, s.ffn] for s in P.provenance(own).layers] != main


def test_a_recovery_with_no_loss_is_refused_when_read():
    """recover with kd_weight 0 and hard_label_weight 0 trained every step on a zero loss (AdamW's weight decay alone
    moved the weights), silently. Refused when the recipe is read; recover: null is how to prune without recovery."""
    with pytest.raises(CompressError, match=r"prune\.recover: kd_weight and hard_label_weight are both 0.*recover: null"):
        from_dict(PruneConfig, {"heads": 0.5, "recover": {"kd_weight": 0.0, "hard_label_weight": 0.0}}, where="prune")
    assert from_dict(PruneConfig, {"heads": 0.5, "recover": {"kd_weight": 0.0}}, where="prune").recover.kd_weight == 0
    assert from_dict(PruneConfig, {"heads": 0.5, "recover": None}, where="prune").recover is None


def test_a_resumed_prune_scores_and_cuts_on_the_process_device(tmp_path, tokenizer, monkeypatch):
    """The model of the newest finished step is loaded (on the CPU) and must go to the process's device before the
    next step scores, cuts and measures it (it stayed on the CPU: on GPU machines the resumed steps ran there)."""
    import compress.prune_stage as PS

    model = tiny(layers=2)
    P.prune(model, cfg(heads=0.25, importance="l1"))
    PS._save_finished_step(model, tokenizer, [{"step": 1}], tmp_path / "done-step-1")
    seen = []

    def score(m, method, batches=None):
        seen.append(next(m.parameters()).device.type)
        raise KeyboardInterrupt  # enough: where the step scores

    monkeypatch.setattr(PS, "process_device", lambda: torch.device("meta"))
    monkeypatch.setattr(PS.P, "score", score)
    with pytest.raises(KeyboardInterrupt):
        PS.prune_with_recovery(P.load_pruned(tmp_path / "done-step-1")[0], cfg(heads=0.5, steps=2, importance="l1"),
                               train=None, holdout=None, dev=None, collator=None, spec=None,
                               logits=torch.zeros(4, 2), seed=0, seq_len=32, checkpoint_root=tmp_path,
                               tokenizer=tokenizer)
    assert seen == ["meta"]


def test_per_layer_overrides_are_reached_in_steps_like_the_global_ratios():
    """An iterative schedule takes ``k/steps`` of the way to every ratio of the target, a layer's override included
    (an override was cut in full at step 1, the rest of the model in steps)."""
    model = tiny()
    scores = P.score(model, "l1")
    for scope in ("global", "per_layer"):
        target = cfg(heads=0.5, ffn=0.5, scope=scope, steps=2, layers={"layer.0": {"heads": 0.5, "ffn": 0.75}})
        half = P.plan(model, scores, target, fraction=0.5)
        assert (len(half[0].heads), len(half[0].ffn)) == (3, 40)  # 4 x (1 - 0.25), 64 x (1 - 0.375)
        full = P.plan(model, scores, target, fraction=1.0)
        assert (len(full[0].heads), len(full[0].ffn)) == (2, 16)


def test_scoring_and_cutting_leave_the_model_in_the_mode_it_was_in(sst2):
    """torch-pruning's tracing switches the model to eval mode and leaves it there: a model in training scored or cut
    came back in eval mode (dropout off), though `score` means to put the mode back."""
    train, _, collator = sst2
    model = tiny(layers=2).train()
    P.score(model, "l1")
    assert model.training
    P.score(model, "taylor", [collator([train[i] for i in range(8)])])
    assert model.training
    P.prune(model, cfg(heads=0.5, importance="l2"))
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    P.score(model, "taylor", [collator([train[i] for i in range(8)])])
    assert not model.training


def test_plan_takes_a_pruning_record_as_well_as_a_model():
    """`plan` is pure: given the record (`Provenance`) instead of the model it plans the same (it failed with an
    AttributeError on ``Provenance.config`` whatever the target)."""
    model = tiny()
    scores = P.score(model, "l1")
    prov = P.provenance(model)
    assert P.plan(prov, scores, cfg(heads=0.5, ffn=0.25)) == P.plan(model, scores, cfg(heads=0.5, ffn=0.25))
    assert P.plan(prov, scores, cfg(keep_macs=0.5), hidden=32) == P.plan(model, scores, cfg(keep_macs=0.5))
    with pytest.raises(CompressError, match="needs the hidden size"):
        P.plan(prov, scores, cfg(keep_macs=0.5))


def test_prune_without_recovery_records_no_recovery_rows(tiny_bert_dir, tmp_path):
    """``recover: null``: nothing was trained, and pruning.json says so as the manifest does (it recorded every
    training row as recovery rows)."""
    import json
    import shutil

    import compress.prune_stage as PS
    from compress.config import load_recipe

    shutil.copytree(tiny_bert_dir, tmp_path / "teacher" / "model")
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
name: tiny
runs_dir: {tmp_path / 'runs'}
task: {{name: sst2, max_length: 32, max_train_samples: 32, max_eval_samples: 16, holdout: 0.0}}
teacher: {{model: {tiny_bert_dir}, max_steps: 1}}
prune: {{heads: 0.25, importance: l1, recover: null}}
""")
    (tmp_path / "out").mkdir()
    done = PS.run(load_recipe(path), tmp_path / "out", {"teacher": tmp_path / "teacher"})
    record = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert done["pruning"]["recovery_rows"] == record["recovery_rows"] == 0 and record["recovery_logits"] is None


def test_a_plan_refused_by_apply_leaves_the_model_as_it_was():
    """A plan with one bad layer is refused before anything is cut (the layers before it were cut and the error
    left a model whose weights no longer matched its bookkeeping)."""
    model = tiny()
    x = batch()
    before = logits(model, x)
    bad = [P.LayerState(0, [0, 1], list(range(FFN))), P.LayerState(1, [2], list(range(32))),
           P.LayerState(2, [], list(range(FFN)))]
    with pytest.raises(CompressError, match="layer 2: a plan may only remove"):
        P.apply(model, bad)
    assert torch.equal(logits(model, x), before) and P.provenance(model) == P.provenance(tiny())
    with pytest.raises(CompressError, match="drops every layer"):
        P.apply(model, [None, None, None])
    assert torch.equal(logits(model, x), before)


def test_a_plan_in_any_order_is_recorded_in_the_weights_order():
    """torch-pruning keeps the remaining rows in their original order; the record (and MPNet's per-layer position
    bias rows taken from it) must too, whatever order or repeats the plan lists (the plan's order was recorded: the
    bias of head 3 was added to head 0's scores, and a repeated head broke the record's check after the cut)."""
    model, x = tiny_mpnet(), mpnet_batch()
    ref = copy.deepcopy(model)
    P.apply(model, [P.LayerState(0, [3, 0, 3], list(range(FFN))[::-1]), P.LayerState(1, [1], list(range(FFN))),
                    P.LayerState(2, list(range(HEADS)), list(range(FFN)))])
    head_mask = torch.ones(3, HEADS)
    head_mask[0, [1, 2]] = 0
    head_mask[1, [0, 2, 3]] = 0
    assert P.provenance(model).layers[0].heads == [0, 3] and P.provenance(model).layers[0].ffn == list(range(FFN))
    assert (logits(model, x) - ref(**x, head_mask=head_mask).logits.detach()).abs().max() <= 1e-6


def test_a_step_resumed_mid_recovery_cuts_the_units_its_checkpoint_was_trained_with(tmp_path, monkeypatch, capsys):
    """A rerun after a crash in a step's recovery scored the model again and cut what it ranked now; the recovery
    checkpoint it then resumed from holds weights of the units the first run cut. Scores that rank otherwise (GPU
    kernels, another thread count: near-ties) made the checkpoint fail to load or, with the same counts per layer,
    load onto other units under a record naming the wrong ones. The step's scores are kept beside its checkpoints."""
    import types

    import compress.prune_stage as PS

    def fit(*args, **kwargs):
        raise KeyboardInterrupt  # the crash, during the step's recovery

    def run(model):
        with pytest.raises(KeyboardInterrupt):
            PS.prune_with_recovery(model, cfg(heads=0.5, ffn=0.5, importance="l1",
                                              recover={"max_steps": 4, "checkpoint_every": 1}),
                                   train=None, holdout=[], dev=None, collator=None,
                                   spec=types.SimpleNamespace(is_regression=False), logits=torch.zeros(4, 2), seed=0,
                                   seq_len=32, checkpoint_root=tmp_path)
        return [[s.heads, s.ffn] for s in P.provenance(model).layers]

    monkeypatch.setattr(PS, "fit", fit)
    monkeypatch.setattr(PS, "evaluate", lambda *a, **k: {})
    first = run(tiny(layers=2))
    assert (tmp_path / "step-1.scores.pt").is_file()
    real_score = P.score
    monkeypatch.setattr(PS.P, "score", lambda *a, **k: P.Scores(*[[-t for t in ts] for ts in
                                                                    (lambda s: (s.heads, s.ffn))(real_score(*a, **k))]))
    assert run(tiny(layers=2)) == first
    (tmp_path / "step-1.scores.pt").unlink()  # what the rerun ranks now: other units
    assert run(tiny(layers=2)) != first
    # scores read back short (a traceback on every rerun): dropped with the step's recovery checkpoints, scored anew
    (tmp_path / "step-1.scores.pt").write_bytes(b"\0" * 40)
    (tmp_path / "step-1" / "step-00000002").mkdir(parents=True)  # trained on the units those scores cut
    monkeypatch.setattr(PS.P, "score", real_score)
    capsys.readouterr()
    assert run(tiny(layers=2)) == first
    assert f"[prune] skipping the damaged {tmp_path / 'step-1.scores.pt'} (" in capsys.readouterr().out
    assert not (tmp_path / "step-1").exists()


def test_a_resumed_recovery_says_so_in_the_step_record(monkeypatch):
    """A step's recovery resumed from a checkpoint trained (and timed) only its resumed part: the record says from
    which step, as the teacher's and each student's do."""
    import types

    import compress.prune_stage as PS
    from compress.train import FitResult

    monkeypatch.setattr(PS, "fit", lambda *a, **k: FitResult(steps=8, best_metric=None, best_step=None,
                                                             resumed_from=3))
    monkeypatch.setattr(PS, "evaluate", lambda *a, **k: {})
    _, history = PS.prune_with_recovery(tiny(layers=2), cfg(heads=0.5, importance="l1"), train=None, holdout=[],
                                        dev=None, collator=None, spec=types.SimpleNamespace(is_regression=False),
                                        logits=torch.zeros(4, 2), seed=0, seq_len=32)
    assert history[0]["recovery"]["resumed_from"] == 3


def test_a_mac_budget_on_a_model_of_few_heads_prunes_the_ffn_past_the_heads_limit():
    """The budget's search stopped both ratios where one head per layer is left: with 2 heads that kept 26% of the
    FFN, so keep_macs 0.3 "could not be met" though 1 head and 15% of the FFN per layer meets it (random narrow
    students have hidden//64 heads: 2 at hidden 128). ELECTRA's embeddings_project runs on every token, not one."""
    from transformers import ElectraConfig, ElectraForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=2, hidden_size=128,
                                                           num_attention_heads=2, intermediate_size=512)).eval()
    before = P.model_macs(model, 128)
    P.prune(model, cfg(importance="l1", keep_macs=0.3), seq_len=128)
    heads = [s["heads"] for s in model.config.compress_layer_sizes]
    enc = sum(P.layer_cost(128, s["heads"], 64, s["ffn"], 128)[1] for s in model.config.compress_layer_sizes)
    full = 2 * P.layer_cost(128, 2, 64, 512, 128)[1]
    assert heads == [1, 1] and enc <= 0.3 * full + 1 and P.model_macs(model, 128) < before
    electra = ElectraForSequenceClassification(ElectraConfig(vocab_size=1000, embedding_size=16, hidden_size=32,
                                                             num_hidden_layers=2, num_attention_heads=4,
                                                             intermediate_size=64)).eval()
    counted = []
    hooks = [m.register_forward_hook(lambda m, i, o: counted.append(i[0].shape[:-1].numel() * m.in_features
                                                                   * m.out_features))
             for m in electra.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        electra(input_ids=torch.randint(5, 900, (1, 128)))
    for h in hooks:
        h.remove()
    attention = 2 * 2 * 128 * 128 * 32  # scores and weighted values, per layer
    assert P.model_macs(electra, 128) == sum(counted) + attention


def test_recovery_stops_on_a_row_the_teacher_did_not_label():
    """Recovery's teacher labels only the rows `recovery_rows` lists (nan elsewhere): a batch reading another row must
    stop with the rows named, not train on nan targets."""
    from compress.config import RecoverConfig
    from compress.prune_stage import recovery_objective, spread

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def forward(self, input_ids, **_):
            return type("Out", (), {"logits": self.w.expand(len(input_ids), 2)})()

    given = torch.tensor([[1.0, -1.0], [0.5, 0.0], [-2.0, 2.0]])
    logits = spread(given, [0, 2, 4], 6)
    assert torch.equal(logits[[0, 2, 4]], given) and torch.isnan(logits[[1, 3, 5]]).all()
    objective = recovery_objective(logits, RecoverConfig(), regression=False)
    batch = {"input_ids": torch.zeros(3, 4, dtype=torch.long), "labels": torch.tensor([0, 1, 0])}
    loss, logs = objective(Head(), {**batch, "index": torch.tensor([0, 2, 4])})
    assert torch.isfinite(loss) and logs["kd"] > 0
    with pytest.raises(CompressError, match=r"training rows \[1, 5\] have no teacher logits"):
        objective(Head(), {**batch, "index": torch.tensor([1, 2, 5])})


@pytest.mark.parametrize("student, source", [
    (None, "the teacher"),
    ("{name: half, kind: layer_drop, layers: 1}", "student 'half'"),
    ("{name: slim, kind: narrow, layers: 2, hidden: 16, heads: 2, ffn: 24}", "student 'slim'"),
])
def test_a_budget_below_the_sources_smallest_model_is_found_from_the_recipe_as_the_stage_finds_it(
        tiny_bert_dir, tmp_path, student, source):
    from compress.config import load_recipe
    from compress.modeling import load_for_task
    from compress.prune_stage import plan_problem
    from compress.tasks import task_spec
    from students import build_student

    path = tmp_path / "tiny.yaml"
    path.write_text(f"task: {{name: sst2, max_length: 32}}\nteacher: {{model: {tiny_bert_dir}}}\n"
                    + (f"students:\n  - {student}\n" if student else "") + "prune: {keep_macs: 0.5}\n")
    recipe = load_recipe(path)
    teacher, tok = load_for_task(str(tiny_bert_dir), task_spec(recipe.task))
    model = teacher if student is None else \
        build_student(recipe.students[0], teacher, tok, task_spec(recipe.task)).model
    # the floor of the real (weighted) model, as the prune stage computes it
    with pytest.raises(CompressError, match=r"keep_macs: 0\.01 cannot be met") as stage:
        P.plan(model, P.score(model, "l1"), PruneConfig(keep_macs=0.01), seq_len=32)
    floor = float(str(stage.value).rsplit("keeps ", 1)[1].split()[0])
    assert 0.01 < floor < 0.5
    for budget in (0.01, round(floor - 0.002, 3)):
        problem = plan_problem(load_recipe(path, {"prune.keep_macs": budget}))
        assert problem and problem.startswith(f"{path}: prune.keep_macs: {budget} cannot be met: the smallest model "
                                              f"this allows keeps {floor:.3f} of the encoder's macs"), problem
        assert f"(the shape of {source}, found before any stage ran)" in problem
    assert plan_problem(load_recipe(path, {"prune.keep_macs": round(floor + 0.002, 3)})) is None
    assert plan_problem(recipe) is None


def test_a_budget_the_prune_source_cannot_meet_stops_the_run_before_the_teacher_trains(tiny_bert_dir, tmp_path):
    from compress.config import load_recipe
    from compress.pipeline import run_pipeline

    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
name: tiny
runs_dir: {tmp_path / 'runs'}
task: {{name: sst2, max_length: 32, max_train_samples: 64, max_eval_samples: 16}}
teacher: {{model: {tiny_bert_dir}, max_steps: 1, batch_size: 32}}
students:
  - {{name: half, kind: layer_drop, layers: 1, train: {{max_steps: 1, batch_size: 32}}}}
prune: {{keep_params: 0.05}}
""")
    with pytest.raises(CompressError, match=r"prune\.keep_params: 0\.05 cannot be met: .* of the encoder's params "
                                            r"\(the shape of student 'half', found before any stage ran\)"):
        run_pipeline(load_recipe(path))
    run = tmp_path / "runs" / "tiny"
    assert not run.exists() or not [p.name for p in run.iterdir() if not p.name.startswith(".")]  # no stage ran
    # ratios too: a per-layer ratio that leaves the layers no head (a layer the student lacks: refused on loading)
    for prune, message in (("{heads: 0.9, scope: per_layer}", r"prune\.heads: this target removes every head"),):
        path.write_text(path.read_text().rsplit("prune:", 1)[0] + f"prune: {prune}\n")
        with pytest.raises(CompressError, match=message + r".* \(the shape of student 'half', found before any stage"):
            run_pipeline(load_recipe(path))
        assert not run.exists() or not [p.name for p in run.iterdir() if not p.name.startswith(".")]


def test_each_step_draws_its_own_calibration_batches_and_recovers_under_its_own_seed(sst2, monkeypatch):
    """Every pruning step scores on its own draw of exactly ``calibration_batches`` batches, and recovers under its
    own seed: the run's seed + the step (0-based), or ``recover.seed`` for every step when it is set."""
    import types

    import compress.prune_stage as PS
    from compress.train import FitResult

    train, _, collator = sst2
    c = cfg(heads=0.5, steps=2, calibration_batches=2, calibration_batch_size=8)
    first, second = (PS.calibration_batches(train, collator, c, 0, step) for step in (0, 1))
    assert len(first) == len(second) == 2
    assert [b["input_ids"].tolist() for b in first] != [b["input_ids"].tolist() for b in second]
    again = PS.calibration_batches(train, collator, c, 0, 1)
    assert [b["input_ids"].tolist() for b in again] == [b["input_ids"].tolist() for b in second]
    seeds = []
    monkeypatch.setattr(PS, "fit", lambda *a, **k: seeds.append(k["seed"]) or FitResult(steps=1, best_metric=None,
                                                                                          best_step=None))
    monkeypatch.setattr(PS, "evaluate", lambda *a, **k: {})
    for recover, want in (({"max_steps": 1}, [5, 6, 7]), ({"max_steps": 1, "seed": 11}, [11, 11, 11])):
        seeds.clear()
        PS.prune_with_recovery(tiny(layers=2), cfg(heads=0.5, importance="l1", steps=3, recover=recover), train=None,
                               holdout=[], dev=None, collator=None, spec=types.SimpleNamespace(is_regression=False),
                               logits=torch.zeros(4, 2), seed=5, seq_len=32)
        assert seeds == want


def test_the_recovery_loss_weighs_kd_at_its_temperature_and_the_gold_labels_as_configured():
    """Recovery's loss is kd_weight x KD at ``temperature`` (scaled by T^2) + hard_label_weight x cross-entropy."""
    from compress.config import RecoverConfig
    from compress.distill.losses import hard_label_loss, kd_loss
    from compress.prune_stage import recovery_objective

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([0.3, -0.2]))

        def forward(self, input_ids, **_):
            return type("Out", (), {"logits": self.w.expand(len(input_ids), 2)})()

    teacher = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "labels": labels, "index": torch.tensor([0, 1])}
    student = torch.tensor([0.3, -0.2]).expand(2, 2)
    for kd_w, hard_w, t in ((1.0, 0.0, 3.0), (0.0, 1.0, 2.0), (0.7, 0.2, 2.0)):
        objective = recovery_objective(teacher, RecoverConfig(kd_weight=kd_w, hard_label_weight=hard_w,
                                                              temperature=t), regression=False)
        loss, logs = objective(Head(), batch)
        kd, hard = float(kd_loss(student, teacher, t)), float(hard_label_loss(student, labels))
        assert logs["kd"] == pytest.approx(kd, rel=1e-6) and logs["hard"] == pytest.approx(hard, rel=1e-6)
        assert loss.item() == pytest.approx(kd_w * kd + hard_w * hard, rel=1e-6)


def test_ratios_and_budgets_count_the_units_of_the_model_pruned_not_of_its_unpruned_ancestor(capsys):
    """A model pruned before (a pruned teacher, a student of one) keeps the record of its unpruned ancestor: heads 0.5
    was taken of the ancestor's 12 heads, so a source left with 1, 3 and 2 of them (6) kept 6 and lost nothing, and a
    MAC budget was a fraction of the ancestor's MACs (found by a walkthrough on a student of a pruned teacher).
    Iterative steps still count the units the stage started from."""
    import types

    import compress.prune_stage as PS

    model = tiny()
    P.apply(model, [P.LayerState(0, [0], list(range(64))), P.LayerState(1, [0, 1, 2], list(range(32))),
                    P.LayerState(2, [1, 3], list(range(48)))])
    assert P.provenance(model).num_heads == 4  # the ancestor's, as recorded
    source = copy.deepcopy(model)
    scores = P.score(model, "l1")
    kept = P.plan(model, scores, cfg(heads=0.5, ffn=0.5))
    assert sum(len(s.heads) for s in kept) == 3 and sum(len(s.ffn) for s in kept) == 72  # of 6 and 144
    per_layer = P.plan(model, scores, cfg(heads=0.5, ffn=0.5, scope="per_layer"))
    assert [len(s.ffn) for s in per_layer] == [32, 16, 24]
    macs = P.encoder_cost(P.provenance(model), HIDDEN, 32)[1]
    budget = P.plan(model, scores, cfg(keep_macs=0.5), seq_len=32)
    assert 0.4 * macs < P.encoder_cost(P.provenance(model), HIDDEN, 32, budget)[1] <= 0.5 * macs
    capsys.readouterr()

    evaluate = PS.evaluate
    PS.evaluate = lambda *a, **k: {}
    try:
        pruned, history = PS.prune_with_recovery(source, cfg(heads=0.5, ffn=0.5, importance="l1", steps=2,
                                                              recover=None),
                                                 train=None, holdout=[], dev=None, collator=None,
                                                 spec=types.SimpleNamespace(is_regression=False), logits=None, seed=0,
                                                 seq_len=32)
    finally:
        PS.evaluate = evaluate
    assert [sum(s["heads"] for s in r["layers"]) for r in history] == [4, 3]  # 6 x 3/4 rounded, then 6 x 1/2
    assert [sum(s["ffn"] for s in r["layers"]) for r in history] == [108, 72]


def test_a_ratio_the_one_unit_a_layer_floor_exceeds_is_said_when_asked(capsys):
    """heads 0.9 of 3 layers of 4 heads asks to keep 1 head; every layer keeps one, so 3 are kept (75% removed, not
    90%): the stage's check says so (it said nothing). Per-layer rounding up is no such case, nor a ratio met."""
    model = tiny()
    scores = P.score(model, "l1")
    P.plan(model, scores, cfg(heads=0.9), warn=True)
    assert capsys.readouterr().out.strip() == ("[prune] prune.heads: the ratios ask to keep 1 of 12 heads; every "
                                               "layer keeps at least one (drop_empty_layers: false), so 3 are kept")
    P.plan(model, scores, cfg(heads=0.9))
    P.plan(model, scores, cfg(heads=0.45, ffn=0.5, scope="per_layer"), warn=True)
    P.plan(model, scores, cfg(heads=0.5, ffn=0.9), warn=True)
    assert capsys.readouterr().out == ""
