"""Each distillation loss against a computation done by hand."""

import math

import pytest
import torch

from compress.distill.losses import attention_loss, combine, hard_label_loss, hidden_mse, kd_loss, logits_mse


def test_kd_loss_matches_hand_kl_and_scales_by_t_squared():
    # teacher row 0 -> p = (0.75, 0.25) at T=1; student uniform; row 1 identical -> KL 0; batchmean over 2 rows
    teacher = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    kl_row0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(kl_row0 / 2, rel=1e-5)
    # at T=2 the teacher logits 2*ln3 soften to the same (0.75, 0.25); the loss is scaled by T^2 = 4
    teacher2 = torch.tensor([[2 * math.log(3.0), 0.0]])
    assert kd_loss(torch.zeros(1, 2), teacher2, 2.0).item() == pytest.approx(4 * kl_row0, rel=1e-5)
    assert kd_loss(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_gradient_reaches_student_only():
    s = torch.zeros(2, 3, requires_grad=True)
    t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    kd_loss(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert s.grad[0, 0] < 0 and s.grad[1, 2] < 0  # pushes the student towards the teacher's class


def test_logits_mse_and_hard_label_loss():
    assert logits_mse(torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])).item() == pytest.approx(2.5)
    # CE with uniform logits over 2 classes = ln 2
    assert hard_label_loss(torch.zeros(3, 2), torch.tensor([0, 1, 1])).item() == pytest.approx(math.log(2))
    # regression: float labels -> MSE
    assert hard_label_loss(torch.tensor([[1.0], [2.0]]), torch.tensor([0.0, 0.0])).item() == pytest.approx(2.5)


def test_hidden_mse_ignores_padding_and_uses_projection():
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, 2 tokens, width 2)
    t = torch.zeros(1, 2, 2)
    mask = torch.tensor([[1, 0]])  # second token is padding
    assert hidden_mse(s, t, mask).item() == pytest.approx((1 + 4) / 2)
    assert hidden_mse(s, t, torch.ones(1, 2)).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    # projection 2 -> 3 wide: y = 2 * [x0, x1, 0]
    proj = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
    t3 = torch.zeros(1, 2, 3)
    assert hidden_mse(s, t3, mask, projection=proj).item() == pytest.approx((4 + 16) / 3)
    with pytest.raises(ValueError, match="projection"):
        hidden_mse(s, t3, mask)


def test_attention_mse_masks_padding_pairs():
    s = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # (1 batch, 1 head, 2, 2)
    t = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert attention_loss(s, t, torch.ones(1, 2), "mse").item() == pytest.approx((0.25 + 0.25) / 4)
    assert attention_loss(s, t, torch.tensor([[1, 0]]), "mse").item() == pytest.approx(0.25 / 1)


def test_attention_kl_by_hand():
    s = torch.tensor([[[[0.5, 0.5], [0.25, 0.75]]]])
    t = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
    row0 = math.log(2.0)
    row1 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert attention_loss(s, t, torch.ones(1, 2), "kl").item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    assert attention_loss(s, t, torch.tensor([[1, 0]]), "kl").item() == pytest.approx(row0, rel=1e-5)
    assert attention_loss(t, t, torch.ones(1, 2), "kl").item() == pytest.approx(0.0, abs=1e-6)
    # two heads alike: a mean over heads too (the same value), not a sum
    s2, t2 = s.repeat(1, 2, 1, 1), t.repeat(1, 2, 1, 1)
    assert attention_loss(s2, t2, torch.ones(1, 2), "kl").item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_attention_heads_averaged_when_counts_differ():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    student = torch.stack([a, b])[None]  # 2 heads: their mean is 0.5 everywhere
    teacher = torch.full((1, 1, 2, 2), 0.5)
    assert attention_loss(student, teacher, torch.ones(1, 2), "mse").item() == pytest.approx(0.0, abs=1e-7)
    teacher3 = torch.stack([a, a, a])[None]  # 3 heads averaging to a: (0.5-1)^2 or (0.5-0)^2 = 0.25 everywhere
    assert attention_loss(student, teacher3, torch.ones(1, 2), "mse").item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="kind"):
        attention_loss(student, teacher, torch.ones(1, 2), "cosine")


def test_attention_heads_mean_ignores_head_order():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    student, teacher = torch.stack([a, b])[None], torch.stack([b, a])[None]  # the same heads, swapped
    # head by head every entry differs by 1: mean of 1 over 2 heads x 2 x 2 pairs
    assert attention_loss(student, teacher, torch.ones(1, 2), "mse", heads="each").item() == pytest.approx(1.0)
    assert attention_loss(student, teacher, torch.ones(1, 2), "mse", heads="mean").item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="heads"):
        attention_loss(student, teacher, torch.ones(1, 2), "mse", heads="sum")


def test_combine_weights_and_logs():
    total, logs = combine({"kd": (torch.tensor(2.0), 0.5), "ce": (torch.tensor(4.0), 0.25),
                           "hidden": (torch.tensor(9.0), 0.0)})
    assert total.item() == pytest.approx(2.0)
    assert logs == {"kd": 2.0, "ce": 4.0, "hidden": 9.0}
    with pytest.raises(ValueError):
        combine({"kd": (torch.tensor(1.0), 0.0)})


def test_attention_matches_see_the_students_maps_without_dropout():
    """BERT-family self-attention returns its maps after dropout: an attention match turns that dropout off (the
    other dropouts stay), so in training the loss compares real softmax maps (a student layer identical to its
    teacher layer scores 0, not ~2.4 as it did)."""
    from transformers import BertForSequenceClassification

    from compress.distill.objective import Distiller, Match
    from tests.conftest import tiny_bert_config

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0))
    inputs = {"input_ids": torch.randint(5, 100, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    model.eval()
    clean = model(**inputs, output_attentions=True).attentions[0]
    match = Match("attention_t1_s1", 1, 1, "attention", "kl", 1.0, False)
    distiller = Distiller(model, [match], model.config.hidden_size)
    distiller.train()
    out, _ = distiller(attentions=True, **inputs)
    assert torch.allclose(out.attentions[0], clean, atol=1e-6)
    assert attention_loss(out.attentions[0], clean, inputs["attention_mask"], "kl").item() == pytest.approx(0, abs=1e-5)
    assert model.bert.encoder.layer[0].output.dropout.p == 0.0  # (hidden dropout as configured: 0 here)


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_embedding_matches_see_the_students_embeddings_without_dropout(kind):
    """The embeddings' output (hidden state 0) is taken after their dropout: an embedding match (or a hidden one of
    layer 0) compared the teacher's embeddings with randomly zeroed ones (an identical student scored above 0).
    That dropout is off for such a student, back for one without (TinyBERT's prediction step), and the layers'
    own dropout stays; the distill stage of such a student is redone once (its fingerprint's word)."""
    from transformers import BertForSequenceClassification, MPNetConfig, MPNetForSequenceClassification

    from compress.config import DistillConfig, MatchConfig
    from compress.distill.objective import Distiller, Match
    from compress.distill.losses import hidden_mse
    from compress.pipeline import _matches_embeddings
    from tests.conftest import tiny_bert_config

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(hidden_dropout_prob=0.5)) if kind == "bert" else \
        MPNetForSequenceClassification(MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=4, intermediate_size=64,
                                                   hidden_dropout_prob=0.5))
    inputs = {"input_ids": torch.randint(5, 100, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    clean = model.eval()(**inputs, output_hidden_states=True).hidden_states[0]
    distiller = Distiller(model, [Match("embedding_t0_s0", 0, 0, "embedding", "mse", 1.0, False)], 32).train()
    out, _ = distiller(hidden=True, **inputs)
    assert hidden_mse(out.hidden_states[0], clean, inputs["attention_mask"]).item() == pytest.approx(0, abs=1e-10)
    assert not torch.allclose(out.hidden_states[1], model.eval()(**inputs, output_hidden_states=True).hidden_states[1])
    Distiller(model, [Match("hidden_t1_s1", 1, 1, "hidden", "mse", 1.0, False)], 32).train()
    out, _ = distiller(hidden=True, **inputs)
    assert not torch.allclose(out.hidden_states[0], clean)  # a student without one: the configured dropout
    assert [_matches_embeddings(DistillConfig(**kw)) for kw in (
        {"matches": [MatchConfig(0, 0, "embedding")]}, {"matches": [MatchConfig(0, 0, "hidden")]},
        {"layer_map": "uniform", "layer_map_features": ["embedding"]}, {"matches": [MatchConfig(2, 1, "hidden")]},
        {"matches": [MatchConfig(0, 0, "embedding", weight=0.0)]}, {"layer_map": "uniform"})] == [
        True, True, True, False, False, False]


def test_hidden_mse_counts_tokens_exactly_under_bf16():
    """A bf16 student (autocast) must not count the real tokens in bf16: 4001 rounds to 4000 there."""
    s = torch.ones(1, 4096, 2, dtype=torch.bfloat16)
    t = torch.zeros(1, 4096, 2)
    mask = torch.zeros(1, 4096)
    mask[0, :4001] = 1
    assert hidden_mse(s, t, mask).item() == pytest.approx(1.0, rel=1e-7)


def test_the_prediction_step_after_attention_matches_has_its_attention_dropout_back():
    """TinyBERT's two steps: the intermediate step's attention matches turn the student's attention dropout off; the
    prediction step (no attention match) trained on without it for students whose attention always runs the manual
    path (MPNet), while a BERT student (SDPA path) had it back: the configured dropout is restored."""
    from transformers import MPNetConfig, MPNetForSequenceClassification

    from compress.distill.objective import Distiller, Match

    torch.manual_seed(0)
    model = MPNetForSequenceClassification(MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                                       num_attention_heads=4, intermediate_size=64,
                                                       attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0))
    inputs = {"input_ids": torch.randint(5, 100, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    Distiller(model, [Match("attention_t1_s1", 1, 1, "attention", "kl", 1.0, False)], 32)
    assert model.mpnet.encoder.layer[0].attention.attn.dropout.p == 0.0  # step 1: maps without dropout
    prediction = Distiller(model, [], 32).train()
    assert model.mpnet.encoder.layer[0].attention.attn.dropout.p == 0.5
    torch.manual_seed(1)
    a = prediction(**inputs)[0].logits
    torch.manual_seed(2)
    assert not torch.allclose(a, prediction(**inputs)[0].logits)  # dropout draws differ (hidden dropout is 0)
