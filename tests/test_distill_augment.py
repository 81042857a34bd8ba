"""Data augmentation for distillation: nearest-neighbour word swaps (hand-built and real MiniLM embeddings), the
transfer set's rows on real SST-2 / RTE, the masked hard-label loss, and a tiny student distilled on it."""

import math

import numpy as np
import pytest
import torch
from transformers import AutoModel, BertForSequenceClassification

from conftest import tiny_bert_config
from compress.config import AugmentConfig, StudentConfig, TaskConfig, from_dict
from compress.data import load_task
from compress.distill.augment import augment_rows, neighbour_table
from compress.distill.losses import hard_label_loss
from compress.distill.stage import distill, labelling, logits_key, transfer_folder
from compress.errors import CompressError
from students import build_student


def _embeddings(tokenizer, near: dict[str, list[str]]):
    """Random embeddings where each listed word sits next to ``near[word]``, closest first."""
    torch.manual_seed(0)
    emb = torch.randn(len(tokenizer), 16)
    vocab = tokenizer.get_vocab()
    for word, others in near.items():
        for rank, other in enumerate(others, start=1):
            emb[vocab[other]] = emb[vocab[word]] + 0.01 * rank * torch.randn(16)
    return emb


def test_neighbours_are_the_nearest_whole_words_of_the_table(tokenizer):
    emb = _embeddings(tokenizer, {"good": ["great", "fine", "nice"]})
    table = neighbour_table(["Good", "hilariously", "##s", "[CLS]", "a"], tokenizer, emb, k=3)
    # "Good" is looked up lower-cased (MiniLM lower-cases; no "good" in the list, so only that finds it);
    # "hilariously" is several pieces, "##s" a piece, "[CLS]" a special and "a" one letter: none has candidates
    assert table == {"good": ["great", "fine", "nice"]}


def test_real_minilm_neighbours_are_related_words(minilm_dir, tokenizer):
    emb = AutoModel.from_pretrained(minilm_dir).get_input_embeddings().weight
    table = neighbour_table(["movie", "funny", "boring"], tokenizer, emb, k=5)
    assert "film" in table["movie"] and "hilarious" in table["funny"] and "dull" in table["boring"], table


def _sst2(glue_dir, n):
    return load_task(TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2"), max_train_samples=n,
                                max_eval_samples=16, holdout=0.0), seed=0)


def test_transfer_set_rows_on_real_sst2_and_rte(glue_dir, tokenizer, caplog):
    emb = _embeddings(tokenizer, {})
    data = _sst2(glue_dir, 40)
    cfg = AugmentConfig(copies=3, replace_prob=0.5, neighbours=4, seed=1)
    table = neighbour_table((w for t in data.train["text"] for w in t.split()), tokenizer, emb, 4)
    out, summary = augment_rows(data.train, tokenizer, emb, cfg, table=table)
    n = len(data.train)
    assert summary["rows"] == n and summary["copies"] == len(out) - n and n < len(out) <= 4 * n
    assert out.select(range(n))["text"] == data.train["text"] and set(out["gold"][:n]) == {1.0}
    assert set(out["gold"][n:]) == {0.0}
    assert out["source"][:n] == list(range(n)) and out["source"][n:] == sorted(out["source"][n:])
    # each copy: its original's words, some of those that have candidates swapped for one of their candidates
    for copy, label, i in zip(out["text"][n:], out["label"][n:], out["source"][n:]):
        before, after = data.train["text"][i].split(), copy.split()
        assert len(after) == len(before) and copy != data.train["text"][i]
        assert all(a == b or b in table[a] for a, b in zip(before, after)), (before, after)
        assert label == data.train["label"][i]
    assert summary["examples"][0]["original"] == data.train["text"][out["source"][n]]
    again, _ = augment_rows(data.train, tokenizer, emb, cfg, table=table)
    assert again["text"] == out["text"]  # seeded
    other, _ = augment_rows(data.train, tokenizer, emb, AugmentConfig(copies=3, replace_prob=0.5, neighbours=4,
                                                                      seed=2), table=table)
    assert other["text"] != out["text"]
    # min_words: only rows that long get copies (the originals all stay, in order)
    long_rows = [i for i, t in enumerate(data.train["text"]) if len(t.split()) >= 8]
    assert 0 < len(long_rows) < n
    some, some_summary = augment_rows(data.train, tokenizer, emb, AugmentConfig(copies=3, replace_prob=0.5,
                                                                                neighbours=4, min_words=8), table=table)
    assert some["text"][:n] == data.train["text"] and set(some["source"][n:]) <= set(long_rows)
    assert len(set(some["source"][n:])) > len(long_rows) // 2 and len(some) - n <= 3 * len(long_rows)
    assert some_summary["rows_augmented"] == len(long_rows) and summary["rows_augmented"] == n
    assert some_summary["config"]["min_words"] == 8
    assert some_summary["config"]["embeddings"] == "teacher"  # every setting recorded (whose table was left out)
    exact = len(data.train["text"][0].split())  # a row of exactly min_words words gets copies too
    _, at_least = augment_rows(data.train, tokenizer, emb, AugmentConfig(copies=1, min_words=exact), table=table)
    assert at_least["rows_augmented"] == sum(len(t.split()) >= exact for t in data.train["text"])
    with caplog.at_level("WARNING", logger="compress.distill.augment"):  # a min_words no row reaches: said, not silent
        _, none = augment_rows(data.train, tokenizer, emb, AugmentConfig(copies=3, min_words=1000), table=table)
    assert none["copies"] == 0 and "augment: no copies made (0 of" in caplog.text
    # sentence pairs: both texts are augmented, word counts kept
    rte = load_task(TaskConfig(name="rte", data_dir=str(glue_dir / "RTE"), max_train_samples=8, holdout=0.0))
    pairs, pair_summary = augment_rows(rte.train, tokenizer, emb, AugmentConfig(copies=1, replace_prob=1.0,
                                                                                neighbours=2))
    m = len(rte.train)
    assert len(pairs) == 2 * m
    first = pair_summary["examples"][0]  # both texts shown (the second was left out of metrics.json)
    assert (first["original_pair"], first["copy_pair"]) == (rte.train[0]["text_pair"], pairs[m]["text_pair"])
    for k in range(m):
        for col in ("text", "text_pair"):
            assert len(pairs[m + k][col].split()) == len(rte.train[k][col].split())
            assert pairs[m + k][col] != rte.train[k][col]


def test_hard_label_loss_counts_gold_rows_only():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]])
    labels = torch.tensor([0, 0, 1])
    gold = torch.tensor([1.0, 1.0, 0.0])
    expected = (math.log(2.0) + -math.log(0.75)) / 2  # row 2 (no gold label) is left out of the mean
    assert hard_label_loss(logits, labels, gold).item() == pytest.approx(expected, rel=1e-5)
    assert hard_label_loss(logits, labels, torch.zeros(3)).item() == 0.0  # a batch of copies only
    reg = hard_label_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert reg.item() == pytest.approx(9.0)


def test_tiny_student_distils_on_the_transfer_set_with_one_teacher_pass(glue_dir, tokenizer):
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=4)).eval()
    data = _sst2(glue_dir, 24)
    aug = {"copies": 2, "replace_prob": 0.5, "neighbours": 3}
    specs = [from_dict(StudentConfig, {"name": f"s{seed}", "layers": 2,
                                       "distill": {"augment": aug},
                                       "train": {"epochs": 1, "batch_size": 8, "seed": seed}})
             for seed in (0, 1)]
    students = [build_student(spec, teacher, tokenizer, data.spec) for spec in specs + specs[:1]]  # before the hook
    rows_seen = []
    teacher.register_forward_hook(lambda m, args, kwargs, out: rows_seen.append(kwargs["input_ids"].shape[0]),
                                  with_kwargs=True)
    cache: dict = {}
    first = distill(teacher, tokenizer, students[0], specs[0], data, max_length=32, seed=0, logit_cache=cache)
    total = first.augment["rows"] + first.augment["copies"]
    assert first.augment["rows"] == 24 and 24 < total <= 72
    assert sum(rows_seen) == total  # the teacher labels originals and copies once, ahead of training
    assert first.fits["joint"].steps == math.ceil(total / 8)
    aug_key = next(k for k in cache if k.startswith("train+augment") and not k.endswith(":rows"))
    train_key = logits_key("train", labelling(specs[0].train))
    assert aug_key == logits_key(aug_key.split("@")[0], labelling(specs[0].train))
    assert np.array_equal(cache[train_key], cache[aug_key][:24])  # the originals' logits, for plain students and prune
    second = distill(teacher, tokenizer, students[1], specs[1], data, max_length=32, seed=1, logit_cache=cache)
    assert sum(rows_seen) == total and second.timing["teacher_cache_reused"] is True  # same transfer set, reused
    assert second.augment == first.augment
    # the teacher's logits on the original rows already known (an earlier student, a previous run): only the copies
    # go through the teacher, and the result is the same as one pass over everything
    rows_seen.clear()
    known = {train_key: cache[train_key]}
    third = distill(teacher, tokenizer, students[2], specs[0], data, max_length=32, seed=0, logit_cache=known)
    assert sum(rows_seen) == total - 24 and third.timing["teacher_cache_reused"] == "original rows"
    assert np.abs(known[aug_key] - cache[aug_key]).max() < 1e-5 and third.augment == first.augment


def test_augment_config_is_validated(tmp_path):
    with pytest.raises(CompressError, match=r"distill\.augment: needs kd_weight > 0"):
        from_dict(StudentConfig, {"name": "s", "distill": {"kd_weight": 0.0, "augment": {}}})
    with pytest.raises(CompressError, match=r"augment\.copies: must be >= 1"):
        from_dict(StudentConfig, {"name": "s", "distill": {"augment": {"copies": 0}}})
    with pytest.raises(CompressError, match=r"augment\.replace_prob"):
        from_dict(StudentConfig, {"name": "s", "distill": {"augment": {"replace_prob": 1.5}}})
    with pytest.raises(CompressError, match=r"augment\.synonyms: unknown key"):
        from_dict(StudentConfig, {"name": "s", "distill": {"augment": {"synonyms": 3}}})
    with pytest.raises(CompressError, match=r"augment\.min_words: must be >= 0"):
        from_dict(StudentConfig, {"name": "s", "distill": {"augment": {"min_words": -1}}})
    # the transfer folder of every-row augmentation keeps the digest it had before min_words existed
    assert transfer_folder(AugmentConfig(copies=3), "s") == "transfer/4094e4eaf3c6"
    assert transfer_folder(AugmentConfig(copies=3, min_words=10), "s") != "transfer/4094e4eaf3c6"


def test_teacher_logits_survive_an_interrupted_distillation(glue_dir, tokenizer, tmp_path, monkeypatch):
    import compress.distill.stage as stage

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=2)).eval()
    data = _sst2(glue_dir, 16)
    spec = from_dict(StudentConfig, {"name": "s", "layers": 1, "distill": {"augment": {"copies": 1, "neighbours": 3}},
                                     "train": {"epochs": 1, "batch_size": 8}})
    students = [build_student(spec, teacher, tokenizer, data.spec) for _ in range(3)]  # before the hook
    rows_seen = []
    teacher.register_forward_hook(lambda m, args, kwargs, out: rows_seen.append(kwargs["input_ids"].shape[0]),
                                  with_kwargs=True)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    ckdir = tmp_path / "ck" / "s"
    monkeypatch.setattr(stage, "fit", crash)  # interrupted right after the teacher labelled the transfer set
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, tokenizer, students[0], spec, data, max_length=32, seed=0, checkpoint_dir=ckdir, logit_cache={}, teacher_sha="t" * 64)
    labelled = sum(rows_seen)
    assert labelled > 16 and (ckdir / "teacher_logits" / "teacher_logits.npy").is_file()
    monkeypatch.undo()
    rows_seen.clear()
    cache: dict = {}
    res = distill(teacher, tokenizer, students[1], spec, data, max_length=32, seed=0, checkpoint_dir=ckdir, logit_cache=cache, teacher_sha="t" * 64)
    assert sum(rows_seen) == 0 and res.timing["teacher_cache_reused"] == "checkpoint"  # not labelled twice
    aug_key = next(k for k in cache if k.startswith("train+augment") and not k.endswith(":rows"))
    assert len(cache[aug_key]) == labelled and not ckdir.exists()  # the finished student cleans its checkpoints
    # another teacher's logits in the checkpoint folder are not taken
    rows_seen.clear()
    (ckdir.parent / "o" / "teacher_logits").mkdir(parents=True)
    stage.save_teacher_logits(ckdir.parent / "o" / "teacher_logits", cache[aug_key],
                              cache[aug_key.split("@")[0] + ":rows"][0], 32, "t" * 64, labelling(spec.train))
    distill(teacher, tokenizer, students[2], spec, data, max_length=32, seed=0, checkpoint_dir=ckdir.parent / "o", logit_cache={}, teacher_sha="u" * 64)
    assert sum(rows_seen) == labelled


def test_a_copy_with_no_word_swapped_is_dropped_whatever_the_originals_spacing(glue_dir, tokenizer):
    """SST-2's training rows end with a space ("hide new secretions from the parental units "): a copy rebuilt from
    the original's words with none swapped lost only that space, and was kept as a new row, the same tokens as its
    original (a duplicate the teacher labelled again and the KD term saw twice)."""
    data = _sst2(glue_dir, 20)
    assert all(t.endswith(" ") for t in data.train["text"])  # the real file's rows, as loaded
    emb = _embeddings(tokenizer, {})
    out, summary = augment_rows(data.train, tokenizer, emb, AugmentConfig(copies=2, seed=0), table={"zzzz": ["a"]})
    assert summary["copies"] == 0 and len(out) == len(data.train)
    # a word that is swapped still makes a copy
    table = {w: ["zzzz"] for t in data.train["text"] for w in t.split()}
    out, summary = augment_rows(data.train, tokenizer, emb, AugmentConfig(copies=1, replace_prob=1.0), table=table)
    assert summary["copies"] == len(data.train)


def test_students_that_pick_neighbours_with_their_own_embeddings_get_their_own_copies(glue_dir, tokenizer):
    """`augment.embeddings: student`: each student's embedding table picks its neighbours, but the copies (and the
    teacher's labels, and the transfer folder prune's recovery reads) were cached by the augment setting alone, so
    every student of the stage trained on the first one's copies. Keyed by student now; with the teacher's
    embeddings, students still share one set."""
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=4)).eval()
    data = load_task(TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2"), max_train_samples=24,
                                max_eval_samples=16, holdout=0.0), seed=0)

    def student(name, hidden, embeddings):
        spec = from_dict(StudentConfig, {
            "name": name, "kind": "narrow", "init": "random", "layers": 1, "hidden": hidden, "heads": 2,
            "distill": {"augment": {"copies": 2, "replace_prob": 0.5, "neighbours": 3}},
            "train": {"max_steps": 1, "batch_size": 8, "seed": 0}})
        # set past the validation, which refuses a random student's own embeddings (their neighbours are any
        # words): the stage's keying by student is what this tests, and random tables differ by construction
        spec.distill.augment.embeddings = embeddings
        torch.manual_seed(hidden)
        return spec, build_student(spec, teacher, tokenizer, data.spec)

    def copies(cache, spec, built):
        res = distill(teacher, tokenizer, built, spec, data, max_length=32, seed=0, logit_cache=cache)
        return res.augment["examples"]

    shared = {}
    a, b = copies(shared, *student("a", 32, "student")), copies(shared, *student("b", 64, "student"))
    assert b != a and b == copies({}, *student("b", 64, "student"))  # b's own, as when trained alone
    assert len([k for k in shared if k.endswith(":rows")]) == 2
    assert transfer_folder(AugmentConfig(embeddings="student"), "a") != transfer_folder(
        AugmentConfig(embeddings="student"), "b")
    assert transfer_folder(AugmentConfig(), "a") == transfer_folder(AugmentConfig(), "b")
    by_teacher = {}
    copies(by_teacher, *student("a", 32, "teacher"))
    copies(by_teacher, *student("b", 64, "teacher"))
    assert len([k for k in by_teacher if k.endswith(":rows")]) == 1


def test_a_swapped_capitalised_word_stays_capitalised():
    """A capitalised word swapped for a lower-case neighbour keeps its capital; other words are untouched."""
    import random

    from compress.distill.augment import swap_words

    table = {"good": ["great"], "film": ["movie"]}
    assert swap_words("Good film , truly", table, 1.0, random.Random(0), lower=True) == "Great movie , truly"
    assert swap_words("Good film", table, 0.0, random.Random(0), lower=True) == "Good film"
    assert swap_words("GOOD", {"good": ["UK"]}, 1.0, random.Random(0), lower=True) == "UK"  # already capitalised


def test_students_of_other_augment_settings_do_not_share_a_transfer_set():
    """The logit cache's key of a transfer set names every augment option: two students of one stage that augment
    otherwise (more copies, another swap probability or seed) each get their own copies and teacher's logits, not the
    first one's."""
    from compress.distill.stage import augment_key

    base = AugmentConfig(copies=2)
    others = [AugmentConfig(copies=3), AugmentConfig(copies=2, replace_prob=0.9), AugmentConfig(copies=2, seed=7),
              AugmentConfig(copies=2, neighbours=base.neighbours + 1)]
    keys = {augment_key(a, "s") for a in [base] + others}
    assert len(keys) == 1 + len(others)
    assert augment_key(AugmentConfig(copies=2), "s") == augment_key(base, "t")  # the teacher's embeddings: shared


def test_the_prune_stage_reads_its_source_students_transfer_set_alone(tmp_path):
    """The prune stage's inputs held every student's transfer set: another student's augment seed changed redid the
    prune stage (to a byte-identical model), and with `recover.data: train` it reads none at all (found by an
    augmentation walkthrough)."""
    from compress.config import load_recipe
    from compress.pipeline import _source_files

    path = tmp_path / "r.yaml"
    path.write_text("task: {name: sst2}\nteacher: {}\nstudents:\n"
                    "  - {name: a1, distill: {augment: {copies: 2, seed: 1}}}\n"
                    "  - {name: a2, distill: {augment: {copies: 2, seed: 2}}}\n"
                    "prune: {heads: 0.5, source: a1, recover: {data: transfer}}\n")
    recipe = load_recipe(path)
    own = transfer_folder(recipe.students[0].distill.augment, "a1")
    other = transfer_folder(recipe.students[1].distill.augment, "a2")
    assert own != other

    def reads(rel, r=recipe):
        return _source_files(r, "distill", rel, "prune")

    assert reads(f"{own}/rows.parquet") and reads("a1/model/model.safetensors") and reads("teacher_logits.npy")
    assert not reads(f"{other}/rows.parquet") and not reads("a2/model/model.safetensors")
    on_train = load_recipe(path, {"prune.recover.data": "train"})
    assert not reads(f"{own}/rows.parquet", on_train) and reads("a1/model/model.safetensors", on_train)
