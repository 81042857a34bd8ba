"""Student builders (model surgery only) on tiny random BERT / MPNet / RoBERTa, and impossible specs."""

import pytest
import torch
from transformers import (BertForSequenceClassification, MPNetConfig, MPNetForSequenceClassification,
                          RobertaConfig, RobertaForSequenceClassification)

from compress.config import Recipe, StudentConfig, from_dict
from compress.data import GLUE_TASKS
from compress.errors import CompressError
from students import build_student, encoder_layers, pick_layers
from conftest import tiny_bert_config

SST2 = GLUE_TASKS["sst2"]
SMALL = dict(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, num_labels=2)


def _tiny(kind):
    torch.manual_seed(0)
    if kind == "bert":
        return BertForSequenceClassification(tiny_bert_config(**SMALL))
    if kind == "mpnet":
        return MPNetForSequenceClassification(MPNetConfig(**SMALL))
    return RobertaForSequenceClassification(RobertaConfig(**SMALL))


def test_a_random_narrow_students_defaults_are_bert_proportions(tokenizer):
    """Without heads or ffn, a random narrow student has one head per 64 hidden units (at least one) and an FFN four
    times its width, as BERT's own sizes are."""
    from students.narrow import random_bert

    for hidden, heads in ((128, 2), (32, 1), (768, 12)):
        c = random_bert(StudentConfig(name="s", kind="narrow", layers=1, hidden=hidden), tokenizer, SST2).config
        assert (c.num_attention_heads, c.intermediate_size, c.hidden_size) == (heads, 4 * hidden, hidden), hidden


def test_pick_layers_evenly_spaced_and_ends_with_last():
    assert pick_layers(6, 3) == [2, 4, 6]
    assert pick_layers(12, 6) == [2, 4, 6, 8, 10, 12]
    assert pick_layers(12, 4) == [3, 6, 9, 12]
    assert pick_layers(6, 6) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("kind", ["bert", "mpnet", "roberta"])
def test_layer_drop_copies_chosen_layers_embeddings_and_head(kind, tokenizer):
    teacher = _tiny(kind).eval()
    student = build_student(StudentConfig(name="s"), teacher, tokenizer, SST2)  # default: every other layer
    assert student.info["kept_layers"] == [2, 4]
    assert student.model.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    s_layers, t_layers = encoder_layers(student.model)[1], encoder_layers(teacher)[1]
    assert len(s_layers) == 2
    for s_layer, t_index in zip(s_layers, [2, 4]):
        for (name, p), (_, q) in zip(s_layer.named_parameters(), t_layers[t_index - 1].named_parameters()):
            assert torch.equal(p, q), name
            assert p.data_ptr() != q.data_ptr()  # a copy: training the student leaves the teacher alone
    s_sd, t_sd = student.model.state_dict(), teacher.state_dict()
    non_layer = [k for k in t_sd if ".layer." not in k]
    assert non_layer and all(torch.equal(s_sd[k], t_sd[k]) for k in non_layer)  # embeddings, pooler, head
    # the student runs and yields one hidden state per kept layer (+ embeddings) and its attention maps
    out = student.model.eval()(input_ids=torch.randint(5, 100, (2, 9)), output_hidden_states=True,
                               output_attentions=True)
    assert out.logits.shape == (2, 2) and len(out.hidden_states) == 3 and out.attentions[0].shape == (2, 4, 9, 9)
    assert student.info["params"] < student.info["teacher_params"]


def test_layer_drop_explicit_layers_match_teacher_when_all_kept(tokenizer):
    teacher = _tiny("bert").eval()
    same = build_student(StudentConfig(name="s", keep_layers=[1, 2, 3, 4]), teacher, tokenizer, SST2).model.eval()
    ids = torch.randint(5, 100, (3, 11))
    assert torch.allclose(same(input_ids=ids).logits, teacher(input_ids=ids).logits)
    three = build_student(StudentConfig(name="s", layers=3), teacher, tokenizer, SST2)
    assert three.info["kept_layers"] == [1, 3, 4] and three.model.config.num_hidden_layers == 3


def test_narrow_random_student_has_the_asked_shape(tokenizer):
    teacher = _tiny("bert")
    spec = StudentConfig(name="tiny", kind="narrow", layers=2, hidden=48, heads=3, ffn=96)
    s = build_student(spec, teacher, tokenizer, SST2)
    c = s.model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (2, 48, 3, 96)
    assert c.vocab_size == len(tokenizer) and s.tokenizer is tokenizer and c.num_labels == 2


def test_narrow_from_minilm_checkpoint_truncates_bottom_layers(tokenizer, minilm_dir):
    from transformers import AutoModel
    spec = StudentConfig(name="m4", kind="narrow", layers=4, init=str(minilm_dir))
    s = build_student(spec, _tiny("bert"), tokenizer, SST2)
    assert s.info["kept_layers"] == [1, 2, 3, 4] and s.model.config.num_hidden_layers == 4
    assert s.model.config.hidden_size == 384 and len(s.tokenizer) == 30522
    base = AutoModel.from_pretrained(minilm_dir)
    assert torch.equal(s.model.bert.encoder.layer[3].output.dense.weight, base.encoder.layer[3].output.dense.weight)
    assert torch.equal(s.model.bert.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("spec, why", [
    (dict(kind="layer_drop", layers=6), "only 4 layers"),
    (dict(kind="layer_drop", keep_layers=[1, 5]), "layer 5 does not exist"),
    (dict(kind="layer_drop", keep_layers=[3, 1]), "increasing order"),
    (dict(kind="layer_drop", layers=2, hidden=16), "hidden 16: a layer-drop student keeps the teacher's hidden \\(32\\)"),
    (dict(kind="narrow", layers=2, hidden=40, heads=3), "not divisible by heads"),
    (dict(kind="narrow", layers=2, hidden=48, heads=4, vocab_size=50000), "tokenizer of its own"),
    (dict(kind="narrow", layers=8, init="minilm-l6"), "has only 6 layers"),
    (dict(kind="narrow", layers=4, hidden=312, init="minilm-l6"),  # (validation: the zoo checkpoint's shape is known)
     r"students\[0\]\.hidden: 312, but checkpoint 'minilm-l6' has hidden 384; its layers are copied whole"),
    # asked for and silently not given: a layer-drop student is the teacher's shape, with its tokenizer
    (dict(kind="layer_drop", layers=2, heads=2), "heads 2: a layer-drop student keeps the teacher's heads \\(4\\)"),
    (dict(kind="layer_drop", layers=2, ffn=32), "ffn 32: a layer-drop student keeps the teacher's ffn \\(64\\)"),
    (dict(kind="layer_drop", layers=2, tokenizer="minilm-l6"), "tokenizer: a layer-drop student uses the teacher's"),
    (dict(kind="layer_drop", layers=2, vocab_size=120), "vocab_size: a layer-drop student uses the teacher's"),
    (dict(kind="narrow", layers=4, vocab_size=1000, init="minilm-l6"),
     r"students\[0\]\.vocab_size: 1000, but checkpoint 'minilm-l6' has vocab_size 30522"),
])
def test_impossible_specs_say_why(spec, why, tokenizer):
    with pytest.raises(CompressError, match=why):
        # config validation catches what it can; the builders catch what needs the teacher (a hub id's shape is
        # known once it loads: here the tiny teacher stands for it)
        cfg = from_dict(Recipe, {"name": "x", "task": {"name": "sst2"}, "teacher": {"model": "org/tiny-teacher"},
                                 "students": [{"name": "s", **spec}]}, file="r.yaml").students[0]
        build_student(cfg, _tiny("bert"), tokenizer, SST2)


def test_recipe_rejects_bad_student_keys():
    with pytest.raises(CompressError, match=r"r.yaml: students\[0\].distill.matches\[0\].feature"):
        from_dict(Recipe, {"name": "x", "task": {"name": "sst2"}, "teacher": {}, "students": [
            {"name": "s", "distill": {"matches": [{"teacher_layer": 1, "student_layer": 1, "feature": "ffn"}]}}]},
            file="r.yaml")
    with pytest.raises(CompressError, match="kl is for attention"):
        from_dict(Recipe, {"name": "x", "task": {"name": "sst2"}, "teacher": {}, "students": [
            {"name": "s", "distill": {"matches": [{"teacher_layer": 1, "student_layer": 1, "loss": "kl"}]}}]},
            file="r.yaml")


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_layer_drop_of_a_pruned_teacher_keeps_the_kept_layers_pruning_config(kind, tokenizer, tmp_path):
    """A teacher with heads removed (HF's ``pruned_heads``, our ``compress_layer_sizes``/``compress_pruning``):
    the per-layer config fields follow the kept layers, so the saved student reloads and computes as built."""
    from transformers import AutoModelForSequenceClassification

    from compress import prune as P
    from compress.modeling import load_trained, save

    teacher = _tiny(kind).eval()
    plan = [P.LayerState(0, [0, 1, 2, 3], list(range(64))), P.LayerState(1, [1, 3], list(range(64))),
            P.LayerState(2, [0, 1, 2, 3], list(range(64))), P.LayerState(3, [2], list(range(0, 64, 2)))]
    P.apply(teacher, plan)  # layer 2 (1-based) keeps 2 heads, layer 4 one head and half its FFN
    student = build_student(StudentConfig(name="s", keep_layers=[2, 4]), teacher, tokenizer, SST2).model.eval()
    c = student.config
    assert {int(k): sorted(v) for k, v in c.pruned_heads.items()} == {0: [0, 2], 1: [0, 1, 3]}
    assert c.compress_layer_sizes == [{"heads": 2, "ffn": 64}, {"heads": 1, "ffn": 32}]
    assert [x["source"] for x in c.compress_pruning["layers"]] == [0, 1] and c.compress_pruning["num_layers"] == 2
    assert c.intermediate_size == 64  # the kept layers' widest FFN (layer 4 kept 32)
    ids = torch.randint(5, 100, (2, 9))
    with torch.no_grad():
        expected = student(input_ids=ids).logits
    save(student, tokenizer, tmp_path / "s")
    reloaded, _ = load_trained(tmp_path / "s")
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(input_ids=ids).logits, expected)
    if kind == "mpnet":  # transformers' prune_heads leaves MPNet's shared position bias whole: no forward
        return
    # HF's own field alone (a hub model whose heads transformers pruned): stock from_pretrained rebuilds it
    teacher = _tiny(kind).eval()
    teacher.prune_heads({1: [0, 2], 3: [1]})
    student = build_student(StudentConfig(name="s", keep_layers=[2, 4]), teacher, tokenizer, SST2).model.eval()
    save(student, tokenizer, tmp_path / "hf")
    with torch.no_grad():
        expected = student(input_ids=ids).logits
        assert torch.equal(AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()(
            input_ids=ids).logits, expected)


def test_layer_drop_keeping_equally_pruned_layers_of_a_non_uniform_teacher_reloads(tokenizer, tmp_path):
    """Teacher FFN widths 64, 32, 64, 32; the kept layers 2 and 4 are both 32 wide: a uniform student, rebuilt by
    stock from_pretrained from intermediate_size, which must be theirs (32), not the teacher's widest (64)."""
    from transformers import AutoModelForSequenceClassification

    from compress import prune as P
    from compress.modeling import load_trained, save

    teacher = _tiny("bert").eval()
    half = list(range(0, 64, 2))
    P.apply(teacher, [P.LayerState(i, [0, 1, 2, 3], half if i % 2 else list(range(64))) for i in range(4)])
    assert teacher.config.intermediate_size == 64
    student = build_student(StudentConfig(name="s", keep_layers=[2, 4]), teacher, tokenizer, SST2).model.eval()
    assert student.config.intermediate_size == 32
    save(student, tokenizer, tmp_path / "s")
    ids = torch.randint(5, 100, (2, 9))
    with torch.no_grad():
        expected = student(input_ids=ids).logits
        for reloaded in (load_trained(tmp_path / "s")[0], AutoModelForSequenceClassification.from_pretrained(
                tmp_path / "s")):
            assert torch.equal(reloaded.eval()(input_ids=ids).logits, expected)


def test_a_random_narrow_student_takes_as_many_tokens_as_its_teacher(tokenizer):
    """task.max_length is checked against the teacher's position table only: a random student of a teacher with more
    than 512 positions had 512 and failed in its first batch of a longer max_length (after the teacher trained)."""
    teacher = BertForSequenceClassification(tiny_bert_config(**{**SMALL, "max_position_embeddings": 1024}))
    spec = StudentConfig(name="tiny", kind="narrow", layers=1, hidden=32, heads=2)
    student = build_student(spec, teacher, tokenizer, SST2).model.eval()
    assert student.config.max_position_embeddings == 1024
    with torch.no_grad():
        assert student(input_ids=torch.randint(5, 100, (1, 600))).logits.shape == (1, 2)
    usual = build_student(spec, _tiny("bert"), tokenizer, SST2).model  # a teacher of 512 or fewer: 512, as before
    assert usual.config.max_position_embeddings == 512


def test_a_layer_drop_student_of_a_pruned_teacher_is_pruned_by_its_own_layers(tokenizer):
    """Pruning ratios count the units of the model as it was before pruning. A layer-drop student of an unpruned
    teacher is a 2-layer model; of a teacher with a head pruned it was recorded as the teacher's 4 layers, 2 of them
    dropped: heads 0.5 (global) then kept 8 of the 4-layer teacher's 16 heads, all 7 the student has (nothing cut),
    and prune.layers named the teacher's layers."""
    from compress import prune as P
    from compress.config import PruneConfig

    target = from_dict(PruneConfig, {"heads": 0.5, "ffn": 0.0, "importance": "l1", "recover": None}, where="prune")
    kept = {}
    for pruned in (False, True):
        teacher = _tiny("bert").eval()
        if pruned:
            P.apply(teacher, [P.LayerState(i, [0, 1, 2] if i == 3 else [0, 1, 2, 3], list(range(64)))
                              for i in range(4)])
        built = build_student(StudentConfig(name="s", keep_layers=[2, 4]), teacher, tokenizer, SST2)
        student = built.model
        assert P.provenance(student).num_layers == 2
        # its metrics give the heads its layers have, not config.json's count of the unpruned teacher's (4)
        assert (built.info["heads"], built.info["ffn"]) == (([4, 3], 64) if pruned else (4, 64))
        if pruned:  # and `heads: 4` is refused naming its layers' counts, as `compress validate` names them
            from students.layer_drop import layer_drop_student

            with pytest.raises(CompressError, match=r"^heads 4: a layer-drop student keeps the teacher's heads "
                                                    r"\(\[4, 4, 4, 3\]\)"):
                layer_drop_student(teacher, heads=4)
        P.prune(student, target)
        kept[pruned] = sum(len(s.heads) for s in P.provenance(student).layers)
    assert kept == {False: 4, True: 4}


def test_a_student_the_distill_stage_cannot_build_stops_the_run_before_the_teacher_trains(tiny_bert_dir, tmp_path):
    """A random narrow student whose vocab_size is not its tokenizer's, a checkpoint student given a tokenizer larger
    than its embedding table: `compress validate` said ok and the distill stage refused them after the teacher had
    trained (found by a review of the recipes). Now before any stage, in the stage's words; the random draws of the
    check leave the run's random state as it was."""
    from compress.config import load_recipe
    from compress.distill.stage import student_problems
    from compress.pipeline import run_pipeline

    path = tmp_path / "tiny.yaml"
    path.write_text(f"name: tiny\nruns_dir: {tmp_path / 'runs'}\ntask: {{name: sst2, max_length: 32}}\n"
                    f"teacher: {{model: {tiny_bert_dir}, max_steps: 1}}\n"
                    "students:\n  - {name: ok, kind: layer_drop, layers: 1}\n"
                    "  - {name: small, kind: narrow, layers: 1, hidden: 16, heads: 2, vocab_size: 1000}\n")
    recipe = load_recipe(path)
    state = torch.get_rng_state()
    assert student_problems(recipe) == [f"{path}: students[1] (small): student small: vocab_size 1000 does not match "
                                        f"its tokenizer's 30522 tokens; give the student a tokenizer of its own "
                                        f"(tokenizer: <zoo name or folder>) or drop vocab_size"]
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(CompressError, match=r"students\[1\] \(small\): student small: vocab_size 1000"):
        run_pipeline(recipe)
    assert not (tmp_path / "runs" / "tiny" / "teacher").exists()
    assert student_problems(load_recipe(path, {"students.1.vocab_size": 30522})) == []


def test_a_student_as_deep_as_its_teacher_or_checkpoint_keeps_every_layer(tokenizer, minilm_dir):
    """Edges of depth: ``layers`` equal to the teacher's keeps all its layers (the student is the teacher's copy), a
    one-layer teacher's default student keeps its one layer (half of 1 rounds to 0), and a checkpoint student of the
    checkpoint's own depth keeps all of them."""
    teacher = _tiny("bert").eval()
    whole = build_student(StudentConfig(name="s", layers=4), teacher, tokenizer, SST2)
    assert whole.info["kept_layers"] == [1, 2, 3, 4] and whole.model.config.num_hidden_layers == 4
    torch.manual_seed(0)
    one = BertForSequenceClassification(tiny_bert_config(**{**SMALL, "num_hidden_layers": 1}))
    alone = build_student(StudentConfig(name="s"), one, tokenizer, SST2)
    assert alone.info["kept_layers"] == [1] and alone.model.config.num_hidden_layers == 1
    six = build_student(StudentConfig(name="m6", kind="narrow", layers=6, init=str(minilm_dir)), teacher, tokenizer,
                        SST2)
    assert six.info["kept_layers"] == [1, 2, 3, 4, 5, 6] and six.model.config.num_hidden_layers == 6


def test_a_checkpoint_student_takes_a_tokenizer_of_exactly_its_vocabulary(tokenizer, minilm_dir):
    """``tokenizer:`` beside ``init:`` is refused only when it has more tokens than the checkpoint embeds; one of
    exactly its vocabulary (the checkpoint's own tokenizer, named) is taken."""
    spec = StudentConfig(name="m2", kind="narrow", layers=2, init=str(minilm_dir), tokenizer=str(minilm_dir))
    s = build_student(spec, _tiny("bert"), tokenizer, SST2)
    assert len(s.tokenizer) == s.model.config.vocab_size == 30522 and s.info["kept_layers"] == [1, 2]


def test_a_students_record_gives_its_own_shape_not_its_teachers(tokenizer):
    """``Student.info`` (the distill stage's record of each student) says the student's depth and widths."""
    teacher = _tiny("bert")
    narrow = build_student(StudentConfig(name="n", kind="narrow", layers=2, hidden=48, heads=3, ffn=96), teacher,
                           tokenizer, SST2).info
    assert {k: narrow[k] for k in ("kind", "layers", "hidden", "heads", "ffn")} == \
        {"kind": "narrow", "layers": 2, "hidden": 48, "heads": 3, "ffn": 96}
    dropped = build_student(StudentConfig(name="d", layers=1), teacher, tokenizer, SST2).info
    assert (dropped["kind"], dropped["layers"], dropped["kept_layers"], dropped["hidden"]) == ("layer_drop", 1, [4], 32)
