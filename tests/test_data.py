"""Data loaders on the real GLUE files, and every error a user can cause."""

import dataclasses
import shutil

import numpy as np
import pytest

from compress.config import TaskConfig, from_dict
from compress.data import Collator, eval_loader, load_split, load_task, row_lengths, tokenize, train_loader
from compress.errors import CompressError
from conftest import unlabelled_mrpc


@pytest.mark.parametrize("task,counts", [
    ("sst2", {"train": 67349, "dev": 872}),
    ("mrpc", {"train": 3668, "dev": 408, "test": 1725}),
    ("rte", {"train": 2490, "dev": 277}),
])
def test_real_glue_row_counts(glue_dir, task, counts):
    cfg = TaskConfig(name=task)
    for split, n in counts.items():
        assert len(load_split(cfg, split)) == n


def test_labels_bom_and_quotes(glue_dir):
    rte = load_split(TaskConfig(name="rte"), "dev")
    assert set(rte["label"]) == {0, 1} and rte.column_names == ["text", "text_pair", "label"]
    # RTE dev row 0 is not_entailment (index 1 of [entailment, not_entailment])
    assert rte[0]["label"] == 1 and rte[0]["text_pair"] == "Christopher Reeve had an accident."
    # MRPC starts with a byte-order mark: the label column is still found as 'Quality'
    mrpc = load_split(TaskConfig(name="mrpc"), "dev")
    assert mrpc[0]["label"] == 1
    # a bare double quote inside a field is text, not CSV quoting
    assert mrpc[0]["text_pair"].startswith('" The foodservice pie business')
    assert sum(1 for t in mrpc["text"] if '"' in t) > 5
    sst = load_split(TaskConfig(name="sst2"), "dev")
    assert sum(sst["label"]) == 444  # 444 positive / 428 negative in SST-2 dev


def test_holdout_is_disjoint_and_seeded(glue_dir, capfd):
    cfg = TaskConfig(name="rte", holdout=0.1)
    a, b = load_task(cfg, seed=1), load_task(cfg, seed=1)
    # the slices' copies print no bar (two "Flattening the indices" lines in every stage's log) and leave the bars on
    import datasets

    assert "Flattening" not in capfd.readouterr().err and datasets.is_progress_bar_enabled()
    assert len(a.holdout) == 249 and len(a.train) == 2490 - 249
    assert a.holdout["text"] == b.holdout["text"]
    assert set(load_task(cfg, seed=2).holdout["text"]) != set(a.holdout["text"])  # the recipe's seed draws it
    pairs = lambda ds: set(zip(ds["text"], ds["text_pair"]))  # noqa: E731
    assert not pairs(a.holdout) & pairs(a.train)  # RTE pairs are unique: the slices are disjoint
    c = load_task(TaskConfig(name="sst2", max_train_samples=100, max_eval_samples=50), seed=1)
    assert len(c.train) == 100 and len(c.dev) == 50 and c.test is None
    assert len(load_task(TaskConfig(name="mrpc"), seed=1).test) == 1725
    small = load_task(TaskConfig(name="mrpc", max_eval_samples=40), seed=1)  # caps MRPC's labelled test split too
    assert len(small.dev) == 40 and len(small.test) == 40


def test_a_capped_training_slice_is_the_whole_ones_first_rows(glue_dir):
    """The cap selects from the shuffled order (an indices mapping; only the kept rows are copied): the same rows, in
    the same order, as the first rows of the uncapped slice, and the same held-out rows."""
    whole = load_task(TaskConfig(name="sst2", holdout=0.01), seed=3)
    capped = load_task(TaskConfig(name="sst2", holdout=0.01, max_train_samples=50), seed=3)
    assert capped.train["text"] == whole.train["text"][:50] and capped.holdout["text"] == whole.holdout["text"]
    assert len(whole.train) + len(whole.holdout) == 67349


def test_a_split_read_again_in_one_process_follows_its_file(tmp_path):
    """Every stage reads the task again: a file unchanged is read once per process, a file changed (in place, or
    replaced by a rename as editors save) is read again."""
    cfg = TaskConfig(name="sst2", data_dir=str(tmp_path))
    _write(tmp_path / "train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    first = load_split(cfg, "train")
    assert load_split(cfg, "train") is first and first["text"] == ["good", "bad"]
    _write(tmp_path / "train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\nfine\t1\n")
    assert load_split(cfg, "train")["text"] == ["good", "bad", "fine"]
    _write(tmp_path / "new.tsv", "sentence\tlabel\nnice\t1\nugly\t0\nfine\t1\n")  # the same size
    (tmp_path / "new.tsv").replace(tmp_path / "train.tsv")
    assert load_split(cfg, "train")["text"] == ["nice", "ugly", "fine"]
    (tmp_path / "train.tsv").unlink()
    with pytest.raises(CompressError, match="train.tsv: file not found"):
        load_split(cfg, "train")


def _write(path, text, bom=False):
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def test_error_missing_file(tmp_path, monkeypatch):
    with pytest.raises(CompressError, match=r"SST-2/dev\.tsv: file not found$"):  # the recipe named the folder
        load_split(TaskConfig(name="sst2", data_dir=str(tmp_path / "SST-2")), "dev")
    # the GLUE folder looked for where the recipe does not name one: says where it looked and what to set (an
    # installed package's default, ./glue, is no folder the user chose)
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    with pytest.raises(CompressError) as e:
        load_split(TaskConfig(name="sst2"), "dev")
    assert str(e.value) == (f"{tmp_path / 'SST-2' / 'dev.tsv'}: file not found (looked in GLUE_DIR: set GLUE_DIR to "
                            f"the folder holding SST-2/, or task.data_dir to the SST-2 folder)")
    monkeypatch.setenv("GLUE_DIR", "")  # empty: unset (it read ./SST-2 while the message named the default)
    monkeypatch.setattr("compress.tasks.DEFAULT_GLUE_DIR", tmp_path / "nowhere")
    with pytest.raises(CompressError, match=rf"^{tmp_path / 'nowhere' / 'SST-2'}/dev\.tsv: file not found \(looked in "
                                            rf"the default {tmp_path / 'nowhere'}: set GLUE_DIR"):
        load_split(TaskConfig(name="sst2"), "dev")


def test_the_default_glue_folder_is_the_checkouts_neighbour_or_the_working_folders(tmp_path, monkeypatch):
    """Installed as a package (no pyproject.toml beside it), ../shared/data/glue resolved into the virtualenv's lib/
    folder; it is ./glue there, and the checkout's neighbour in a source checkout (this one)."""
    import importlib.util
    import sys
    from pathlib import Path

    import compress.tasks as tasks

    root = Path(tasks.__file__).resolve().parent.parent
    assert (root / "pyproject.toml").is_file() and tasks.DEFAULT_GLUE_DIR == root.parent / "shared" / "data" / "glue"
    installed = tmp_path / "site-packages" / "compress"  # the same module where a wheel puts it
    installed.mkdir(parents=True)
    shutil.copy(tasks.__file__, installed / "tasks.py")
    spec = importlib.util.spec_from_file_location("installed_tasks", installed / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "installed_tasks", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.DEFAULT_GLUE_DIR == Path("glue")


def test_error_missing_column(tmp_path):
    _write(tmp_path / "dev.tsv", "text\tlabel\nok\t1\n")
    with pytest.raises(CompressError) as e:
        load_split(TaskConfig(name="sst2", data_dir=str(tmp_path)), "dev")
    assert "dev.tsv: column 'sentence' not found" in str(e.value)


def test_error_empty_split(tmp_path):
    _write(tmp_path / "dev.tsv", "sentence\tlabel\n\n\n")
    with pytest.raises(CompressError, match=r"dev\.tsv: split 'dev' has no rows"):
        load_split(TaskConfig(name="sst2", data_dir=str(tmp_path)), "dev")
    _write(tmp_path / "train.tsv", "")
    with pytest.raises(CompressError, match=r"train\.tsv: file is empty"):
        load_split(TaskConfig(name="sst2", data_dir=str(tmp_path)), "train")


def test_error_label_outside_set(tmp_path):
    _write(tmp_path / "dev.tsv", "sentence\tlabel\ngood\t1\nbad\t2\n")
    with pytest.raises(CompressError) as e:
        load_split(TaskConfig(name="sst2", data_dir=str(tmp_path)), "dev")
    assert "dev.tsv:3: column 'label': label '2' is not one of ['0', '1']" in str(e.value)


def test_short_row_is_an_error(tmp_path):
    _write(tmp_path / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\n")
    with pytest.raises(CompressError, match=r"dev\.tsv:2: expected 4 tab-separated fields, got 3"):
        load_split(TaskConfig(name="rte", data_dir=str(tmp_path)), "dev")


def test_cola_headerless_and_stsb_regression(tmp_path):
    cola = tmp_path / "CoLA"
    cola.mkdir()
    _write(cola / "dev.tsv", "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
                             "gj04\t0\t*\tThe more we study verbs, the crazier they get get.\n", bom=True)
    ds = load_split(TaskConfig(name="cola", data_dir=str(cola)), "dev")
    assert ds["label"] == [1, 0] and ds["text"][0].startswith("The sailors")
    sts = tmp_path / "STS-B"
    sts.mkdir()
    _write(sts / "dev.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                            "0\tmain\tx\t2012\t1\tnone\tnone\tA man.\tA person.\t4.2\n")
    ds = load_split(TaskConfig(name="stsb", data_dir=str(sts)), "dev")
    assert ds["label"] == [pytest.approx(4.2)] and ds["text_pair"] == ["A person."]
    _write(sts / "dev.tsv", "sentence1\tsentence2\tscore\na\tb\thigh\n")
    with pytest.raises(CompressError, match="'high' is not a number"):
        load_split(TaskConfig(name="stsb", data_dir=str(sts)), "dev")


def test_custom_csv_and_jsonl(tmp_path):
    _write(tmp_path / "train.csv", 'review,stars\n"great, really",pos\nawful,neg\n')
    _write(tmp_path / "dev.jsonl", '{"review": "fine", "stars": "pos"}\n\n{"review": "meh", "stars": "neg"}\n')
    cfg = TaskConfig(name="reviews", files={"train": str(tmp_path / "train.csv"), "dev": str(tmp_path / "dev.jsonl")},
                     text_column="review", label_column="stars", labels=["neg", "pos"], data_dir=str(tmp_path))
    train, dev = load_split(cfg, "train"), load_split(cfg, "dev")
    assert train["text"] == ["great, really", "awful"] and train["label"] == [1, 0]
    assert dev["label"] == [1, 0]
    with pytest.raises(CompressError, match="must list its labels"):
        load_split(TaskConfig(name="x", files={"train": "a.csv"}), "train")
    with pytest.raises(CompressError, match="not a GLUE task"):
        load_split(TaskConfig(name="imdb"), "train")


def _custom(tmp_path, name, text, **task):
    """A custom task whose train and dev splits are both the file ``name`` holding ``text``."""
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    task = {"text_column": "review", "label_column": "stars", "labels": ["neg", "pos"], **task}
    return TaskConfig(name="reviews", files={"train": str(path), "dev": str(path)}, **task)


def _refused(cfg) -> str:
    with pytest.raises(CompressError) as e:
        load_split(cfg, "train")
    return str(e.value)


def test_a_missing_custom_file_says_where_relative_paths_are_read_from(tmp_path, monkeypatch, capsys):
    """A custom task's relative files are read from the working folder, not the recipe's: `compress run walk/r.yaml`
    said only "train.csv: file not found", beside a train.csv in walk/. An absolute path, or task.data_dir, needs no
    hint."""
    monkeypatch.chdir(tmp_path)
    cfg = TaskConfig(name="reviews", files={"train": "train.csv", "dev": "dev.csv"}, text_column="review",
                     label_column="stars", labels=["neg", "pos"])
    assert _refused(cfg) == (f"train.csv: file not found (without task.data_dir, task.files are read from the folder "
                             f"compress runs in, {tmp_path}; set task.data_dir to the folder that holds them)")
    # from the command line, before any stage (it said so after "[teacher] running"), naming the recipe's folder when
    # the file is there
    from compress.cli import main

    (tmp_path / "walk").mkdir()
    (tmp_path / "walk" / "train.csv").write_text("review,stars\nfine,pos\nbad,neg\n")
    (tmp_path / "walk" / "dev.csv").write_text("review,stars\nfine,pos\nbad,neg\n")
    (tmp_path / "walk" / "r.yaml").write_text(
        f"name: r\nruns_dir: {tmp_path / 'runs'}\ntask: {{name: reviews, files: {{train: train.csv, dev: dev.csv}}, "
        f"text_column: review, label_column: stars, labels: [neg, pos]}}\nteacher: {{}}\n")
    assert main(["run", "walk/r.yaml"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (f"error: train.csv: file not found (without task.data_dir, task.files are read from "
                                 f"the folder compress runs in, {tmp_path}; set task.data_dir: walk, where the recipe "
                                 f"and that file are)\n") and not (tmp_path / "runs").exists()
    assert main(["validate", "walk/r.yaml"]) == 0  # a warning there, the same hint
    assert "set task.data_dir: walk, where the recipe and that file are" in capsys.readouterr().err
    cfg.files = {"train": str(tmp_path / "train.csv"), "dev": "dev.csv"}
    assert _refused(cfg) == f"{tmp_path / 'train.csv'}: file not found"
    cfg.files, cfg.data_dir = {"train": "train.csv", "dev": "dev.csv"}, str(tmp_path / "data")
    assert _refused(cfg) == f"{tmp_path / 'data' / 'train.csv'}: file not found"


def test_integer_labels_match_the_recipes_names_by_value(tmp_path):
    """The recipe keeps a label name as written (``labels: [-1, +1]`` is "-1", "+1", so that ``name: 007`` names
    runs/007): a file's label 1 was then "not one of ['-1', '+1']", where it read before. A cell matches its name's
    text, else the one name of the same integer; two names of one integer match neither."""
    from compress.config import load_recipe
    from compress.rows import label_index

    recipe = tmp_path / "r.yaml"
    (tmp_path / "f.csv").write_text("review,stars\nfine,1\n")
    recipe.write_text(f"task: {{name: pm, files: {{train: {tmp_path / 'f.csv'}, dev: {tmp_path / 'f.csv'}}}, "
                      "text_column: review, label_column: stars, labels: [-1, +1]}\nteacher: {}\n")
    labels = load_recipe(recipe).task.labels
    assert labels == ["-1", "+1"]
    data = 'review,stars\nawful,-1\ngreat,1\nfine,+1\nok,01\n'
    assert load_split(_custom(tmp_path, "t.csv", data, labels=labels), "train")["label"] == [0, 1, 1, 1]
    assert load_split(_custom(tmp_path, "t.jsonl", '{"review": "a", "stars": 1}\n{"review": "b", "stars": -1}\n',
                              labels=labels), "train")["label"] == [1, 0]
    assert label_index("1", ["1", "01"]) == 0 and label_index("+1", ["1", "01"]) is None  # which one: neither
    assert label_index("1_0", ["10"]) is None and label_index("pos", ["neg", "pos"]) == 1
    assert _refused(_custom(tmp_path, "t.csv", "review,stars\nok,2\n", labels=labels)) == (
        f"{tmp_path / 't.csv'}:2: column 'stars': label '2' is not one of ['-1', '+1']")


@pytest.mark.parametrize("name,text,line,value", [
    ("t.csv", "review,score\nok,1.5\nbad,nan\n", 3, "nan"),
    ("t.csv", "review,score\nok,inf\n", 2, "inf"),
    ("t.tsv", "review\tscore\nok\t1\n\nbad\t-Infinity\n", 4, "-Infinity"),
    ("t.jsonl", '{"review": "ok", "score": 2}\n{"review": "bad", "score": NaN}\n', 2, "nan"),
])
def test_regression_label_not_finite_is_refused(tmp_path, name, text, line, value):
    cfg = _custom(tmp_path, name, text, label_column="score", labels=None, regression=True)
    assert _refused(cfg) == f"{tmp_path / name}:{line}: column 'score': {value!r} is not a finite number"


@pytest.mark.parametrize("value", ["1_0", "\u0661\u0662", "0x1p3"])
def test_regression_label_in_another_notation_is_refused(tmp_path, value):
    """float() reads "1_0" as 10 and Arabic-Indic digits as 12: a malformed cell became a target silently."""
    cfg = _custom(tmp_path, "t.csv", f"review,score\nok,1.5\nbad,{value}\n", label_column="score", labels=None,
                  regression=True)
    assert _refused(cfg) == f"{tmp_path / 't.csv'}:3: column 'score': {value!r} is not a number"


def test_regression_label_finite_loads(tmp_path):
    cfg = _custom(tmp_path, "t.csv", "review,score\nok,1.5\nbad, -2e3 \n", label_column="score", labels=None,
                  regression=True)
    assert load_split(cfg, "train")["label"] == [1.5, -2000.0]
    sts = tmp_path / "STS-B"  # a GLUE regression task is held to the same
    sts.mkdir()
    _write(sts / "dev.tsv", "sentence1\tsentence2\tscore\na\tb\t4.0\nc\td\tNaN\n")
    with pytest.raises(CompressError) as e:
        load_split(TaskConfig(name="stsb", data_dir=str(sts)), "dev")
    assert str(e.value) == f"{sts / 'dev.tsv'}:3: column 'score': 'NaN' is not a finite number"


def test_custom_row_with_more_fields_than_the_header_is_refused(tmp_path):
    # an unquoted comma cut the text: before, 'really' was silently dropped and 'great' trained as pos
    cfg = _custom(tmp_path, "t.csv", "review,stars\nfine,pos\ngreat, really,pos\n")
    assert _refused(cfg) == f"{tmp_path / 't.csv'}:3: expected 2 comma-separated fields, got 3"
    cfg = _custom(tmp_path, "t.tsv", "review\tstars\nfine\tpos\textra\n")
    assert _refused(cfg) == f"{tmp_path / 't.tsv'}:2: expected 2 tab-separated fields, got 3"
    # quoted, the comma is text
    cfg = _custom(tmp_path, "t.csv", 'review,stars\n"great, really",pos\n')
    assert load_split(cfg, "train")["text"] == ["great, really"]


def test_short_row_names_the_delimiter(tmp_path):
    cfg = _custom(tmp_path, "t.csv", "review,stars,source\nfine,pos,web\nawful,neg\n")
    assert _refused(cfg) == f"{tmp_path / 't.csv'}:3: expected 3 comma-separated fields, got 2"
    cfg = _custom(tmp_path, "t.tsv", "review\tstars\tsource\nawful\tneg\n")
    assert _refused(cfg) == f"{tmp_path / 't.tsv'}:2: expected 3 tab-separated fields, got 2"


def test_glue_files_keep_their_reading(tmp_path, caplog):
    """GLUE files are read as GLUE distributes them: a longer row or a blank sentence is not refused there (the
    SST-2, MRPC and RTE files have neither; the other GLUE tasks' files are not here to check). A longer row whose
    extra fields hold text (a tab inside a sentence shifted the columns: MRPC read half a sentence as the pair's second,
    dropping the real one) is warned of, once."""
    _write(tmp_path / "dev.tsv", "sentence\tlabel\ngood\t1\textra\n \t0\nfine\t1\t\n")
    with caplog.at_level("WARNING"):
        ds = load_split(TaskConfig(name="sst2", data_dir=str(tmp_path)), "dev")
    assert ds["text"] == ["good", " ", "fine"] and ds["label"] == [1, 0, 1]
    said = [r.getMessage() for r in caplog.records if "more fields than the header" in r.getMessage()]
    assert said == [f"{tmp_path / 'dev.tsv'}:2: 1 row(s) with more fields than the header's 2, the extra ones not "
                    f"empty: a tab inside a text shifts the columns after it (those rows are read as their first 2 "
                    f"fields)"]


@pytest.mark.parametrize("name,text,line,column", [
    ("t.csv", "review,stars\nfine,pos\n,pos\n", 3, "review"),
    ("t.csv", "review,stars\n  ,neg\n", 2, "review"),
    ("t.csv", 'review,stars\n"",neg\n', 2, "review"),
    ("t.tsv", "review\tstars\n\tneg\n", 2, "review"),
    ("t.jsonl", '{"review": "ok", "stars": "pos"}\n{"review": "", "stars": "neg"}\n', 2, "review"),
    ("t.jsonl", '{"review": " \\t ", "stars": "neg"}\n', 1, "review"),
])
def test_custom_empty_text_is_refused(tmp_path, name, text, line, column):
    assert _refused(_custom(tmp_path, name, text)) == f"{tmp_path / name}:{line}: empty text in column {column!r}"


def test_custom_empty_text_pair_is_refused(tmp_path):
    cfg = _custom(tmp_path, "t.csv", "review,reply,stars\na,b,pos\nc, ,neg\n", text_pair_column="reply")
    assert _refused(cfg) == f"{tmp_path / 't.csv'}:3: empty text in column 'reply'"
    cfg = _custom(tmp_path, "t.jsonl", '{"review": "a", "reply": "", "stars": "pos"}\n', text_pair_column="reply")
    assert _refused(cfg) == f"{tmp_path / 't.jsonl'}:1: empty text in column 'reply'"


@pytest.mark.parametrize("line_text,kind", [('["good", 1]', "a list"), ("3", "a number"), ('"good"', "a string"),
                                            ("null", "null")])
def test_jsonl_line_not_an_object_is_refused(tmp_path, line_text, kind):
    cfg = _custom(tmp_path, "t.jsonl", '{"review": "ok", "stars": "pos"}\n\n' + line_text + "\n")
    assert _refused(cfg) == f"{tmp_path / 't.jsonl'}:3: expected a JSON object, got {kind}"


def test_file_not_utf8_is_refused(tmp_path):
    latin1 = "review,stars\nfine,pos\ncaf\u00e9 cr\u00e8me,pos\n".encode("latin-1")
    assert _refused(_custom(tmp_path, "t.csv", latin1)) == (
        f"{tmp_path / 't.csv'}:3: not UTF-8 text (byte 0xe9); the file must be UTF-8")
    assert _refused(_custom(tmp_path, "t.jsonl", b'{"review": "caf\xe9", "stars": "pos"}\n')) == (
        f"{tmp_path / 't.jsonl'}:1: not UTF-8 text (byte 0xe9); the file must be UTF-8")
    # UTF-8, with or without a byte-order mark, loads
    for bom in (b"", b"\xef\xbb\xbf"):
        cfg = _custom(tmp_path, "t.csv", bom + "review,stars\ncaf\u00e9,pos\n".encode())
        assert load_split(cfg, "train")["text"] == ["caf\u00e9"]


def test_a_byte_order_mark_at_a_later_lines_start_is_dropped(tmp_path):
    """Two files joined (``cat a.tsv b.tsv``, each saved with a byte-order mark): the second mark, at the start of a
    line in the middle, stayed in that row's first cell: a text starting with U+FEFF, a label '\\ufeffneg' refused,
    a JSON line refused as not JSON. Dropped as the first line's is; line numbers unchanged."""
    bom = "\ufeff"
    cfg = _custom(tmp_path, "t.tsv", f"{bom}review\tstars\ngood one\tpos\n{bom}bad one\tneg\n")
    assert load_split(cfg, "train")["text"] == ["good one", "bad one"]
    cfg = _custom(tmp_path, "t.csv", f"{bom}stars,review\r\npos,good\r\n{bom}{bom}neg,bad\r\n")
    assert load_split(cfg, "train")["label"] == [1, 0]
    rows = f'{bom}{{"review": "a", "stars": "pos"}}\n{bom}{{"review": "b", "stars": "neg"}}\n'
    cfg = _custom(tmp_path, "t.jsonl", rows)
    assert load_split(cfg, "train")["text"] == ["a", "b"]
    assert _refused(_custom(tmp_path, "t.tsv", f"review\tstars\nok\tpos\n{bom}bad\tmeh\n")) == (
        f"{tmp_path / 't.tsv'}:3: column 'stars': label 'meh' is not one of ['neg', 'pos']")


def test_json_array_of_objects(tmp_path):
    text = '[\n  {"review": "fine", "stars": "pos"},\n  {"review": "awful",\n   "stars": "neg"}\n]\n'
    ds = load_split(_custom(tmp_path, "t.json", text), "train")
    assert ds["text"] == ["fine", "awful"] and ds["label"] == [1, 0]
    ds = load_split(_custom(tmp_path, "t.json", '\ufeff[{"review": "a", "stars": "neg"}]'), "train")  # BOM, one line
    assert ds["text"] == ["a"] and ds["label"] == [0]
    # each element must be an object; errors name the line the element starts on
    bad = '[\n {"review": "fine", "stars": "pos"},\n ["good", 1]\n]\n'
    assert _refused(_custom(tmp_path, "t.json", bad)) == f"{tmp_path / 't.json'}:3: expected a JSON object, got a list"
    blank = '[{"review": "fine", "stars": "pos"},\n\n {"review": " ", "stars": "pos"}]'
    assert _refused(_custom(tmp_path, "t.json", blank)) == f"{tmp_path / 't.json'}:3: empty text in column 'review'"
    broken = '[\n {"review": "fine", "stars": "pos"}\n {"review": "x"}\n]'
    assert _refused(_custom(tmp_path, "t.json", broken)).startswith(f"{tmp_path / 't.json'}:3: not valid JSON (")
    assert _refused(_custom(tmp_path, "t.json", "[]")) == f"{tmp_path / 't.json'}: file is empty"


def test_json_and_jsonl_extensions_still_read_one_object_per_line(tmp_path):
    lines = '{"review": "fine", "stars": "pos"}\n{"review": "awful", "stars": "neg"}\n'
    for name in ("t.json", "t.jsonl", "t.JSONL"):
        assert load_split(_custom(tmp_path, name, lines), "train")["label"] == [1, 0]
    # a .jsonl file is never read as one JSON array
    assert _refused(_custom(tmp_path, "t.jsonl", '[{"review": "a", "stars": "neg"}]')) == (
        f"{tmp_path / 't.jsonl'}:1: expected a JSON object, got a list")


@pytest.mark.parametrize("value,kind", [('["a", "b"]', "a list"), ('{"a": 1}', "an object"), ("true", "a boolean"),
                                        ("3", "a number"), ("2.5", "a number")])
def test_json_text_that_is_not_a_string_is_refused(tmp_path, value, kind):
    text = '{"review": "ok", "reply": "ok", "stars": "pos"}\n{"review": %s, "reply": "x", "stars": "neg"}\n' % value
    assert _refused(_custom(tmp_path, "t.jsonl", text)) == (
        f"{tmp_path / 't.jsonl'}:2: column 'review': expected a string, got {kind}")
    pair = '[{"review": "ok", "reply": %s, "stars": "neg"}]' % value
    assert _refused(_custom(tmp_path, "t.json", pair, text_pair_column="reply")) == (
        f"{tmp_path / 't.json'}:1: column 'reply': expected a string, got {kind}")


def test_json_null_text_is_refused_and_number_labels_load(tmp_path):
    text = '{"review": "ok", "stars": 1}\n{"review": null, "stars": 0}\n'
    assert _refused(_custom(tmp_path, "t.jsonl", text, labels=["0", "1"])) == (
        f"{tmp_path / 't.jsonl'}:2: column 'review' is null")
    ds = load_split(_custom(tmp_path, "t.jsonl", '{"review": "ok", "stars": 1}\n', labels=["0", "1"]), "train")
    assert ds["label"] == [1]  # a JSON number label is matched by its text, as before


def test_length_grouped_batches_pad_less(glue_dir, tokenizer):
    data = load_task(TaskConfig(name="sst2", max_train_samples=2000), seed=0)
    ds = tokenize(data.train, tokenizer, 64)
    collator = Collator({"": tokenizer})

    def padded_fraction(group):
        real = total = 0
        for batch in train_loader(ds, collator, 32, seed=0, epoch=0, group_by_length=group):
            real += int(batch["attention_mask"].sum())
            total += batch["attention_mask"].numel()
        return 1 - real / total

    grouped, random = padded_fraction(True), padded_fraction(False)
    assert grouped < random / 3, (grouped, random)
    # same seed and epoch -> same batches; dynamic padding -> width = longest row of the batch
    b1 = next(iter(train_loader(ds, collator, 8, seed=3, epoch=1)))
    b2 = next(iter(train_loader(ds, collator, 8, seed=3, epoch=1)))
    assert (b1["input_ids"] == b2["input_ids"]).all()
    assert b1["input_ids"].shape[1] == int(b1["attention_mask"].sum(1).max())
    loader, order = eval_loader(ds, collator, 64)
    assert sorted(order.tolist()) == list(range(len(ds)))
    assert np.all(np.diff(np.asarray(ds["length"])[order]) >= 0)
    # the sampler sorts on a plain list of lengths (a datasets Column looks each row up lazily: minutes on 245k rows)
    sub = ds.select(range(10, 60))
    assert row_lengths(sub).tolist() == list(sub["length"])
    lengths = train_loader(sub, collator, 8, seed=0, epoch=0).sampler.lengths
    assert type(lengths) is list and lengths == list(sub["length"])


def test_collator_pads_without_the_fast_tokenizer_advice(minilm_dir):
    """Rows are tokenized once (datasets.map) and padded per batch: transformers' advice to call the tokenizer
    instead does not apply, and the collator keeps it out of every run's log."""
    import logging

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    root = logging.getLogger("transformers")
    verbosity = hf_logging.get_verbosity()
    root.addHandler(handler)
    hf_logging.set_verbosity_warning()
    try:
        tok = AutoTokenizer.from_pretrained(minilm_dir)  # a fresh one: the advice is given once per tokenizer
        rows = [dict(tok("a short one"), label=0), dict(tok("a somewhat longer sentence here"), label=1)]
        batch = Collator({"": tok})(rows)
        from_collator = [r for r in records if "fast tokenizer" in r.getMessage()]
        AutoTokenizer.from_pretrained(minilm_dir).pad(rows[:1])  # a bare pad gives the advice: this test sees it
    finally:
        root.removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
    assert batch["input_ids"].shape == (2, len(rows[1]["input_ids"])) and batch["labels"].tolist() == [0, 1]
    assert batch["attention_mask"][0].sum() == len(rows[0]["input_ids"])
    assert from_collator == [] and len([r for r in records if "fast tokenizer" in r.getMessage()]) == 1


def test_custom_train_split_of_one_label_is_refused_and_an_unseen_label_warned(tmp_path, caplog):
    """One label in train trained a constant classifier that every stage measured and the bundle shipped; a listed
    label with no training row (one only in dev) is said once."""
    cfg = _custom(tmp_path, "t.csv", "review,stars\nfine,pos\ngood,pos\n", holdout=0.0)
    with pytest.raises(CompressError) as e:
        load_task(cfg)
    assert str(e.value) == (f"{tmp_path / 't.csv'}: column 'stars': every training row has label 'pos'; a classifier "
                            f"needs rows of at least two of ['neg', 'pos']")
    cfg = _custom(tmp_path, "u.csv", "review,stars\nfine,pos\nawful,neg\n", labels=["neg", "pos", "meh"], holdout=0.0)
    with caplog.at_level("WARNING"):
        load_task(cfg, seed=0), load_task(cfg, seed=1)
    said = [r.getMessage() for r in caplog.records if "no training row" in r.getMessage()]
    assert said == [f"{tmp_path / 'u.csv'}: column 'stars': no training row has label 'meh' (of ['neg', 'pos', 'meh']);"
                    f" the model will not learn it"]


def test_a_scored_split_of_one_label_is_said_once_by_the_run_and_by_validate(tmp_path, caplog, capsys):
    """A dev file of one label made every model's matthews_correlation 0 (scikit-learn's, not nan), the guards and the
    bundle's pick blind, and nothing said so. Said once per file; dev rows of two labels, or a cap that keeps two, are
    not."""
    from compress.cli import main

    train = tmp_path / "train.csv"
    train.write_text("review,stars\nfine,pos\nawful,neg\ngood,pos\nbad,neg\n")
    (tmp_path / "dev.csv").write_text("review,stars\nfine,neg\nawful,neg\ngood,pos\n")
    cfg = TaskConfig(name="reviews", files={"train": str(train), "dev": str(tmp_path / "dev.csv")},
                     text_column="review", label_column="stars", labels=["neg", "pos"], holdout=0.0)
    with caplog.at_level("WARNING"):
        load_task(cfg)
        load_task(dataclasses.replace(cfg, max_eval_samples=2)), load_task(dataclasses.replace(cfg, max_eval_samples=2))
    said = [r.getMessage() for r in caplog.records if "all have label" in r.getMessage()]
    assert said == [f"{tmp_path / 'dev.csv'}: the 2 dev rows scored (task.max_eval_samples) all have label 'neg': "
                    f"their scores cannot tell models apart (matthews_correlation is 0 whatever a model learnt, "
                    f"accuracy "
                    f"the share of rows it gives that label), nor can the retention, the int8 guards and the bundle's "
                    f"pick that read them; score on rows of two labels or more"]
    (tmp_path / "dev1.csv").write_text("review,stars\nfine,pos\ngood,pos\n")
    (tmp_path / "r.yaml").write_text(f"task: {{name: reviews, files: {{train: {train}, dev: {tmp_path / 'dev1.csv'}}}, "
                                     f"text_column: review, label_column: stars, labels: [neg, pos], holdout: 0}}\n"
                                     f"teacher: {{}}\n")
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(["validate", str(tmp_path / "r.yaml")]) == 0
    assert [r.getMessage()[:80] for r in caplog.records if "all have label" in r.getMessage()] == [
        f"{tmp_path / 'dev1.csv'}: the 2 dev rows scored all have label 'pos': their scores"[:80]]


def test_label_names_that_no_cell_could_match_are_refused_and_a_near_miss_is_explained(tmp_path):
    """A listed name twice was "two or more distinct ... got [five names]" (which one?); a name with a trailing space
    passed the config and then matched no cell (cells are read stripped); an NFD cell printed like the NFC name it
    missed; an integer cell where the names are words is not an index in a local file (docs/data.md said it was)."""
    text = "review,stars\nfine,pos\nawful,neg\n"
    assert _refused(_custom(tmp_path, "a.csv", text, labels=["neg", "pos", "neg"])) == (
        "task.labels: 'neg' is listed twice, got ['neg', 'pos', 'neg']")
    assert _refused(_custom(tmp_path, "b.csv", text, labels=["neg", "pos "])) == (
        "task.labels: 'pos ' has spaces around it; the data's label cells are read without them, so no row could have "
        "it")
    nfd = "ne\u0301g"  # e + combining acute: prints as the NFC name
    got = _refused(_custom(tmp_path, "c.csv", f"review,stars\nfine,{nfd}\n", labels=["n\u00e9g", "pos"]))
    assert got.endswith("(the same letters in another Unicode normalization form: the file's are 'ne\\u0301g'; write "
                        "both in NFC)"), got
    got = _refused(_custom(tmp_path, "d.jsonl", '{"review": "fine", "stars": 1}\n'))
    assert got == (f"{tmp_path / 'd.jsonl'}:1: column 'stars': label '1' is not one of ['neg', 'pos'] (a local file's "
                   f"labels are read by name, not as indices into task.labels: write the names)")
    assert _refused(_custom(tmp_path, "e.csv", "review,stars\nfine,meh\n")).endswith("is not one of ['neg', 'pos']")


def test_jsonl_header_is_every_rows_keys_and_a_repeated_column_is_refused(tmp_path):
    """A JSON Lines file whose first row lacks the label said "column 'stars' not found" (the header was the first
    object's keys); a CSV header naming a used column twice read the first one silently."""
    text = '{"review": "fine"}\n{"review": "awful", "stars": "neg"}\n'
    assert _refused(_custom(tmp_path, "t.jsonl", text)) == f"{tmp_path / 't.jsonl'}:1: the row has no key 'stars'"
    text = '[{"review": "fine", "stars": "pos"},\n {"stars": "neg"}]'  # an array's row: named by its line too
    assert _refused(_custom(tmp_path, "t.json", text)) == f"{tmp_path / 't.json'}:2: the row has no key 'review'"
    text = '{"review": "fine", "stars": "pos"}\n{"stars": "neg", "review": "awful", "id": 3}\n'
    assert load_split(_custom(tmp_path, "t.jsonl", text), "train")["label"] == [1, 0]
    cfg = _custom(tmp_path, "t.csv", "review,review,stars\nfine,awful,pos\n")
    assert _refused(cfg) == f"{tmp_path / 't.csv'}: column 'review' appears 2 times in the header; rename all but one"


def test_csv_unclosed_quote_names_the_line_it_opened_on(tmp_path):
    """A '"' never closed swallowed the rest of the file into one field: the error named the file's last line."""
    text = 'review,stars\nfine,pos\n"awful,neg\nok,pos\n\ngood,pos\n'
    assert _refused(_custom(tmp_path, "t.csv", text)) == (
        f"{tmp_path / 't.csv'}:3: expected 2 comma-separated fields, got 1: a quoted field runs from line 3 to line 6 "
        f"(a '\"' never closed?)")
    # a closed multi-line field loads, and its row is named by the line it starts on
    text = 'review,stars\nfine,pos\n\n"awful\nreally",neg\n"meh\n",zzz\n'
    assert _refused(_custom(tmp_path, "t.csv", text)) == (
        f"{tmp_path / 't.csv'}:6: column 'stars': label 'zzz' is not one of ['neg', 'pos']")
    assert load_split(_custom(tmp_path, "t.csv", text.replace("zzz", "neg")), "train")["text"][1] == "awful\nreally"


def test_a_header_name_with_spaces_around_it_is_pointed_out(tmp_path):
    """'review, stars' (a space after the comma): "column 'stars' not found (columns: review,  stars)" did not say
    why."""
    assert _refused(_custom(tmp_path, "t.csv", "review, stars\nfine,pos\n")) == (
        f"{tmp_path / 't.csv'}: column 'stars' not found (columns: review,  stars); the header has ' stars': remove "
        f"the spaces around it")


def test_a_custom_tsv_written_with_csv_quoting_is_warned_of_once(tmp_path, caplog):
    """TSV files are read with quoting off (GLUE's convention): a custom TSV written by a CSV writer (pandas'
    to_csv(sep='\\t')) keeps its quotes in the texts, which is said once, naming the line; bare quotes are not."""
    cfg = _custom(tmp_path, "q.tsv", 'review\tstars\nplain "quoted" word\tpos\n"he said ""hi"""\tneg\n"x"\tpos\n')
    with caplog.at_level("WARNING"):
        rows = load_split(cfg, "train")
        load_split(cfg, "dev")  # the same file again: no second warning
    assert rows["text"] == ['plain "quoted" word', '"he said ""hi"""', '"x"']  # read as written, quoting off
    warned = [r.getMessage() for r in caplog.records if "double quotes as a CSV writer quotes it" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"{tmp_path / 'q.tsv'}:3: ")
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_split(_custom(tmp_path, "bare.tsv", 'review\tstars\nplain "quoted" word\tpos\n"half\tneg\n'), "train")
    assert "CSV writer" not in caplog.text


def test_a_second_text_column_left_unread_is_warned_of_once(tmp_path, caplog):
    """A custom pair file read as single texts (no text_pair_column) would train on the first text only: a column of
    texts that is not read is named once, with the setting; a column of ids or short tags is not a text column, and a
    pair task reading it says nothing."""
    text = ("review\tanswer\tid\tstars\nthe plot is thin\tyes it really is\t17\tneg\n"
            "great fun all along\ti loved it too\t18\tpos\nmeh\tnot my kind of film\t19\tneg\n")
    cfg = _custom(tmp_path, "p.tsv", text)
    with caplog.at_level("WARNING"):
        load_split(cfg, "train")
        load_split(cfg, "dev")
    warned = [r.getMessage() for r in caplog.records if "is not read" in r.getMessage()]
    assert warned == [f"{tmp_path / 'p.tsv'}: column 'answer' holds texts but is not read (task.text_column is "
                      f"'review'): for a text-pair task set task.text_pair_column: answer"]
    caplog.clear()
    with caplog.at_level("WARNING"):
        rows = load_split(_custom(tmp_path, "pair.tsv", text, text_pair_column="answer"), "train")
        load_split(_custom(tmp_path, "tags.tsv", "review\tsource\tstars\nthe plot is thin\tweb site\tneg\n"
                                                 "great fun all along\tprint\tpos\n"), "train")
    assert rows["text_pair"][0] == "yes it really is" and "is not read" not in caplog.text


@pytest.mark.parametrize("text,message", [
    ('review,stars\n"awful" movie,neg\nfine,pos\n', "2: a quoted field has text after its closing '\"': quote"),
    ('review,stars\n"awful,neg\nok "great" stuff,pos\nfine,pos\n',
     "2: a quoted field has text after its closing '\"' (the field runs from line 2 to line 3): quote"),
    ('review,stars\nfine,"pos\nok,neg\n', "2: a quoted field runs from line 2 to the end of the file"),
])
def test_csv_text_after_a_closing_quote_is_refused(tmp_path, text, message):
    """Read leniently, '"awful" movie' trained as 'awful movie', and a stray '"' merged two rows into one (a neg row
    lost, its text glued to the next row's, labelled pos); a quote opened in the last field named no line of it."""
    assert _refused(_custom(tmp_path, "t.csv", text)).startswith(f"{tmp_path / 't.csv'}:{message}")
    text = 'review,stars\n"a ""quoted"" word, and a comma",pos\n5" screen,neg\n'  # valid CSV still loads
    texts = load_split(_custom(tmp_path, "t.csv", text), "train")["text"]
    assert texts == ['a "quoted" word, and a comma', '5" screen']


@pytest.mark.parametrize("name,text,message", [
    ("t.csv", 'review;stars\n"it\'s ""fine""";pos\nbad;neg\n', "1: the header 'review;stars' reads as one column: a "
     ".csv file is read comma-separated, and this one looks ';'-separated; save it again comma-separated (or "
     "tab-separated, as .tsv)"),
    ("t.tsv", "review,stars\nfine,pos\nbad,neg\n", "1: the header 'review,stars' reads as one column: a .tsv file is "
     "read tab-separated, and this one looks comma-separated; name it .csv"),
    ("t.csv", "review\tstars\nfine\tpos\nbad\tneg\n", "1: the header 'review\\tstars' reads as one column: a .csv "
     "file is read comma-separated, and this one looks tab-separated; name it .tsv"),
])
def test_a_file_of_another_delimiter_is_named_so(tmp_path, name, text, message):
    """A ';'-separated .csv (Excel's export where a comma is the decimal mark) stopped on its first quoted text with
    "a quoted field has text after its closing '\"'", or on a column not found: the header says what it is."""
    assert _refused(_custom(tmp_path, name, text)) == f"{tmp_path / name}:{message}"


def test_json_boolean_labels_are_matched_by_their_json_text(tmp_path):
    """A JSON label true/false was read as Python's 'True'/'False': with labels ["false", "true"] (quoted, as the
    recipe check asks of YAML booleans) every row was refused, the error naming a 'True' the file does not hold."""
    text = '{"review": "spam spam", "stars": true}\n{"review": "hello", "stars": false}\n'
    ds = load_split(_custom(tmp_path, "t.jsonl", text, labels=["false", "true"]), "train")
    assert ds["label"] == [1, 0]
    assert _refused(_custom(tmp_path, "t.jsonl", text, labels=["no", "yes"])) == (
        f"{tmp_path / 't.jsonl'}:1: column 'stars': label 'true' is not one of ['no', 'yes']")
    cfg = _custom(tmp_path, "t.jsonl", text, label_column="stars", labels=None, regression=True)
    assert _refused(cfg) == f"{tmp_path / 't.jsonl'}:1: column 'stars': 'true' is not a number"


def test_hub_dataset_string_labels_are_encoded(tmp_path, monkeypatch):
    """datasets 5 reads a text label column as ``large_string``, which the check for ``string`` missed: the labels
    stayed names ('neg', 'pos', and any unknown one) instead of class indices. A local dataset folder goes through
    the same `load_dataset` path as a hub id (offline)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\ngood,pos\nbad,neg\nfine,pos\n")
    (folder / "validation.csv").write_text("text,label\nok,pos\nawful,neg\n")
    cfg = TaskConfig(name="x", hub_dataset=str(folder), labels=["neg", "pos"], holdout=0.0)
    data = load_task(cfg, seed=0)
    assert sorted(data.train["label"]) == [0, 1, 1] and data.dev["label"] == [1, 0]
    (folder / "validation.csv").write_text("text,label\nok,pos\nmeh,meh\n")
    with pytest.raises(CompressError, match=rf"^task\.hub_dataset {folder} split 'validation': label 'meh' is not "
                                            r"one of \['neg', 'pos'\]$"):
        load_task(cfg, seed=0)


def test_hub_dataset_csv_texts_that_read_as_missing_in_pandas_are_texts(tmp_path, monkeypatch):
    """The datasets csv builder reads with pandas' NA strings: a text "None", "NA", "n/a" or "null" (and a label
    named "NA") became a missing value, the row refused as having no text. Read as text, as local files are; an
    empty cell is still refused as missing."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\nNone,NA\nbad,neg\nn/a,pos\nnull,neg\n")
    (folder / "validation.csv").write_text("text,label\nNA,pos\nawful,NA\n")
    cfg = TaskConfig(name="x", hub_dataset=str(folder), labels=["neg", "pos", "NA"], holdout=0.0)
    data = load_task(cfg, seed=0)
    assert sorted(zip(data.train["text"], data.train["label"])) == [("None", 2), ("bad", 0), ("n/a", 1),
                                                                    ("null", 0)]
    assert data.dev["text"] == ["NA", "awful"] and data.dev["label"] == [1, 2]
    (folder / "validation.csv").write_text("text,label\nok,pos\n,neg\n")
    with pytest.raises(CompressError, match=r"split 'validation': row 1 has no text in column 'text' \(got None\)$"):
        load_task(cfg, seed=0)
    (folder / "validation.csv").write_text("text,label\nok,pos\nfine,\n")
    with pytest.raises(CompressError, match=r"split 'validation': a row has no label$"):
        load_task(cfg, seed=0)


def test_hub_dataset_csv_drops_a_byte_order_mark_at_a_later_lines_start(tmp_path, monkeypatch):
    """A CSV hub dataset of two files joined (``cat``, each saved with a byte-order mark): the csv builder drops the
    first line's mark only, so the second stayed in that row's first cell: a text starting with U+FEFF, a label
    refused as '\\ufeffneg'. Dropped, as local files drop it, in every split."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    bom = "\ufeff"
    (folder / "train.csv").write_text(f"{bom}text,label\ngood,pos\n{bom}bad,neg\n", encoding="utf-8")
    (folder / "validation.csv").write_text(f"{bom}label,text\npos,ok\n{bom}neg,awful\n", encoding="utf-8")
    data = load_task(TaskConfig(name="x", hub_dataset=str(folder), labels=["neg", "pos"], holdout=0.0), seed=0)
    assert sorted(zip(data.train["text"], data.train["label"])) == [("bad", 0), ("good", 1)]
    assert data.dev["text"] == ["ok", "awful"] and data.dev["label"] == [1, 0]


def test_hub_dataset_class_labels_follow_the_task_labels_by_name(tmp_path, monkeypatch):
    """A hub dataset's ClassLabel indices were taken as they are: with task.labels [pos, neg] for classes [neg, pos]
    every row trained (and shipped) under the other label's name. Same names in another order are put in the task's
    order; other names are taken by position (glue:sst2's negative/positive as "0", "1"); another count is refused."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    for split, rows in (("train", {"text": ["good", "bad"], "label": [1, 0]}),
                        ("validation", {"text": ["ok", "awful", "fine"], "label": [1, 0, 1]})):
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}.parquet"))
    swapped = load_task(TaskConfig(name="x", hub_dataset=str(folder), labels=["pos", "neg"], holdout=0.0), seed=0)
    assert swapped.dev["label"] == [0, 1, 0]
    # names that differ in case only are the same names (they were taken by position: every label inverted)
    cased = load_task(TaskConfig(name="x", hub_dataset=str(folder), labels=["Pos", "Neg"], holdout=0.0), seed=0)
    assert cased.dev["label"] == [0, 1, 0]
    assert load_task(TaskConfig(name="x", hub_dataset=str(folder), labels=["0", "1"], holdout=0.0)).dev["label"] == [
        1, 0, 1]
    with pytest.raises(CompressError, match=r"split 'train': its label column has 2 classes \['neg', 'pos'\]; "
                                            r"task\.labels lists 3"):
        load_task(TaskConfig(name="x", hub_dataset=str(folder), labels=["neg", "pos", "meh"], holdout=0.0))


def test_hub_dataset_integer_labels_named_by_numbers_are_read_by_name_as_local_files_are(tmp_path, monkeypatch):
    """An integer label column was read by position: with task.labels ["1", "0"] the value 1 became index 1, the
    label named "0", while the same rows in local files (task.files) read by name; labels 1..3 failed on 3 as "not a
    class index" (and without a 3, shifted 1 and 2 silently)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    for split in ("train", "validation"):
        (folder / f"{split}.csv").write_text("text,label\ngood,1\nbad,0\n")
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("text\tlabel\ngood\t1\nbad\t0\n")
    hub = load_task(TaskConfig(name="x", hub_dataset=str(folder), labels=["1", "0"], holdout=0.0), seed=0)
    local = load_task(TaskConfig(name="x", files={"train": str(tsv), "dev": str(tsv)}, labels=["1", "0"],
                                 holdout=0.0), seed=0)
    assert hub.dev["label"] == local.dev["label"] == [0, 1]
    assert load_task(TaskConfig(name="x", hub_dataset=str(folder), labels=["0", "1"], holdout=0.0)).dev["label"] == [
        1, 0]  # names 0..n-1 in order: the same either way
    for split in ("train", "validation"):  # a float column (pandas writes one where a value was missing): by name too
        datasets.Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [1.0, 0.0, 1.0]}).to_parquet(
            str(folder / f"{split}.parquet"))
        (folder / f"{split}.csv").unlink()
    floats = load_task(TaskConfig(name="x", hub_dataset=str(folder), labels=["1", "0"], holdout=0.0), seed=0)
    assert floats.dev["label"] == [0, 1, 0] and floats.dev.features["label"].dtype == "int64"
    datasets.Dataset.from_dict({"text": ["good"], "label": [0.5]}).to_parquet(str(folder / "validation.parquet"))
    with pytest.raises(CompressError, match=r"split 'validation': label '0.5' is not one of \['1', '0'\]$"):
        load_task(TaskConfig(name="x", hub_dataset=str(folder), labels=["1", "0"], holdout=0.0), seed=0)
    for split in ("train", "validation"):
        (folder / f"{split}.parquet").unlink()
        (folder / f"{split}.csv").write_text("text,label\ngood,1\nbad,0\n")
    for split in ("train", "validation"):
        (folder / f"{split}.csv").write_text("text,label\ngood,3\nbad,1\n")
    assert load_task(TaskConfig(name="x", hub_dataset=str(folder), labels=["1", "2", "3"], holdout=0.0),
                     seed=0).dev["label"] == [2, 0]
    (folder / "validation.csv").write_text("text,label\ngood,3\nbad,0\n")
    with pytest.raises(CompressError, match=r"split 'validation': label '0' is not one of \['1', '2', '3'\]$"):
        load_task(TaskConfig(name="x", hub_dataset=str(folder), labels=["1", "2", "3"], holdout=0.0), seed=0)


def test_a_text_column_that_is_the_label_column_is_refused():
    """text_column: label validated, and the model read each row's label as its text."""
    for key in ("text_column", "text_pair_column"):
        with pytest.raises(CompressError, match=rf"task\.{key}: 'label' is label_column too"):
            from_dict(TaskConfig, {"name": "mine", "labels": ["neg", "pos"], key: "label"}, file="r.yaml",
                      where="task")


def test_a_headerless_file_names_the_line_of_its_first_row(tmp_path):
    """A headerless (CoLA) file's first row was always named line 1, whatever blank lines came before it."""
    cola = tmp_path / "CoLA"
    cola.mkdir()
    _write(cola / "dev.tsv", "\n\t\ngj04\t2\t\tThe sailors rode the breeze.\ngj04\t0\t*\tThe more we study.\n", bom=True)
    with pytest.raises(CompressError) as e:
        load_split(TaskConfig(name="cola", data_dir=str(cola)), "dev")
    assert str(e.value) == f"{cola / 'dev.tsv'}:3: column '1': label '2' is not one of ['0', '1']"


def test_hub_dataset_row_without_a_label_is_one_line(tmp_path, monkeypatch):
    """A hub dataset row with no label (null) ended in an AttributeError from inside datasets' map."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\ngood,pos\nbad,\n")
    (folder / "validation.csv").write_text("text,label\nok,pos\n")
    with pytest.raises(CompressError, match=rf"^task\.hub_dataset {folder} split 'train': a row has no label$"):
        load_task(TaskConfig(name="x", hub_dataset=str(folder), labels=["neg", "pos"], holdout=0.0))


def test_an_unlabelled_mrpc_test_split_is_left_out_with_a_note(glue_dir, tmp_path, capsys):
    """GLUE's own MRPC download has a test.tsv without labels (index, #1 ID, #2 ID, #1 String, #2 String): every
    MRPC run stopped at "column 'Quality' not found". The split is left out (no test metrics), with a note."""
    folder = unlabelled_mrpc(glue_dir, tmp_path / "MRPC")
    data = load_task(TaskConfig(name="mrpc", data_dir=str(folder), max_train_samples=20), seed=0)
    assert data.test is None and len(data.dev) == 408
    assert "test.tsv: no 'Quality' column (an unlabelled test split): no test metrics" in capsys.readouterr().err


def test_a_custom_test_file_with_a_misnamed_label_column_is_refused_not_left_out(tmp_path):
    """Only GLUE's own unlabelled MRPC test split is left out with a note: a custom task's test file whose label column
    is misnamed (' label') is an error naming the column, as in its other files, not a silent lack of test metrics."""
    (tmp_path / "train.csv").write_text("text,label\ngood film,pos\nbad film,neg\n")
    (tmp_path / "test.csv").write_text("text, label\ngood film,pos\n")
    cfg = TaskConfig(name="reviews", labels=["neg", "pos"], holdout=0.0,
                     files={"train": str(tmp_path / "train.csv"), "dev": str(tmp_path / "train.csv"),
                            "test": str(tmp_path / "test.csv")})
    with pytest.raises(CompressError, match=r"test\.csv: column 'label' not found"):
        load_task(cfg, seed=0)


def test_a_hub_dataset_offline_and_not_cached_fails_at_once_in_one_line(monkeypatch):
    """Offline, a hub dataset not in the datasets cache was retried five times (~23 s here) before the error; with
    the hub out of reach it is looked up in the cache only, and the one line says what to do instead."""
    from compress import hub

    monkeypatch.setattr(hub, "reachable", lambda: False)
    cfg = TaskConfig(name="x", hub_dataset="no-such-org/no-such-dataset", labels=["neg", "pos"], holdout=0.0)
    with pytest.raises(CompressError, match=r"^task\.hub_dataset: could not load 'no-such-org/no-such-dataset' split "
                                            r"'train': .*\(OfflineModeIsEnabled\) \(the hub cannot be reached and the "
                                            r"datasets cache does not hold it: use task\.files"):
        load_task(cfg, seed=0)  # OfflineModeIsEnabled: the cache was asked, no download was tried


def test_a_data_file_of_an_unlisted_type_is_refused_not_read_as_tsv(tmp_path):
    """`files: {train: reviews.txt}` (comma-separated inside) was read as a TSV: one column named after the whole
    header line, then "no column 'review'" — or, for a one-column file, rows trained on as they were. The recipe names
    the field; the reader, reached without a recipe, names the file."""
    from compress.rows import read_rows

    cfg = _custom(tmp_path, "reviews.txt", "review,stars\ngreat,pos\n")
    with pytest.raises(CompressError, match=r"^r\.yaml: task\.files\.train: '.*reviews\.txt' is not one of the file "
                                            r"types read \(\.tsv, \.csv, \.jsonl, \.json\); rename it to say which$"):
        cfg.validate("r.yaml", "task")
    with pytest.raises(CompressError, match=r"reviews\.txt: unknown file type '\.txt': a data file is \.tsv, \.csv"):
        load_split(cfg, "train")
    (tmp_path / "noext").write_text("review\tstars\ngreat\tpos\n")
    with pytest.raises(CompressError, match=r"noext: unknown file type '\(no extension\)'"):
        read_rows(tmp_path / "noext")
    ok = _custom(tmp_path, "reviews.TSV", "review\tstars\ngreat\tpos\n")  # the type's case does not matter
    ok.validate("r.yaml", "task")
    assert load_split(ok, "train")["label"] == [1]


def test_a_hub_datasets_bad_labels_and_missing_texts_are_one_line(tmp_path, monkeypatch):
    """Local files' row checks were skipped for hub datasets: a plain integer label column's 2 (of two labels) or -1
    (an unlabelled split) trained into "IndexError: Target 2 is out of bounds", a row without text into a tokenizer
    TypeError. Each is one line naming the split, row and column."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "validation.csv").write_text("sentence,label\nok,1\n")
    cfg = TaskConfig(name="x", hub_dataset=str(folder), text_column="sentence", labels=["neg", "pos"], holdout=0.0)
    for rows, said in (("good,1\nbad,2\n", r"row 1's label 2 in column 'label' is not a class index 0\.\.1 of "
                                           r"\['neg', 'pos'\]"),
                       ("good,1\nbad,-1\n", r"row 1's label -1 in column 'label'"),
                       ("good,1\n,0\n", r"row 1 has no text in column 'sentence' \(got None\)")):
        (folder / "train.csv").write_text(f"sentence,label\n{rows}")
        with pytest.raises(CompressError, match=rf"^task\.hub_dataset {folder} split 'train': {said}"):
            load_task(cfg, seed=0)
    (folder / "train.csv").write_text("sentence,label\ngood,1\nbad,0\n")
    assert sorted(load_task(cfg, seed=0).train["label"]) == [0, 1]
    (folder / "train.csv").write_text("sentence,label\ngood,0.5\nbad,inf\n")
    reg = TaskConfig(name="x", hub_dataset=str(folder), text_column="sentence", regression=True, holdout=0.0)
    with pytest.raises(CompressError, match=r"split 'train': row 1.s label inf in column 'label' is not a finite"):
        load_task(reg, seed=0)
    with pytest.raises(CompressError, match=r"^r\.yaml: task\.files: not read with hub_dataset"):
        TaskConfig(name="x", hub_dataset=str(folder), labels=["neg", "pos"],
                   files={"train": "a.tsv", "dev": "b.tsv"}).validate("r.yaml", "task")
    with pytest.raises(CompressError, match=r"^r\.yaml: task\.data_dir: not read with hub_dataset"):
        TaskConfig(name="x", hub_dataset=str(folder), labels=["neg", "pos"], data_dir="d").validate("r.yaml", "task")


def test_a_glue_mrpc_folder_without_its_test_file_runs_without_test_metrics(glue_dir, tmp_path, capsys):
    """MRPC's labelled test.tsv is an extra (GLUE's own download has an unlabelled one): a folder with train and dev
    only passed `validate` and then stopped every run at "test.tsv: file not found"."""
    from compress.tasks import missing_files

    folder = tmp_path / "MRPC"
    folder.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        shutil.copy(glue_dir / "MRPC" / name, folder / name)
    cfg = TaskConfig(name="mrpc", data_dir=str(folder), max_train_samples=20)
    assert missing_files(cfg) == []
    data = load_task(cfg, seed=0)
    assert data.test is None and len(data.dev) == 408
    assert f"{folder / 'test.tsv'}: not there: no test metrics" in capsys.readouterr().err
    custom = TaskConfig(name="mine", labels=["0", "1"], text_column="#1 String", label_column="Quality",
                        files={"train": str(folder / "train.tsv"), "dev": str(folder / "dev.tsv"),
                               "test": str(folder / "test.tsv")})
    assert missing_files(custom) == [folder / "test.tsv"]  # a custom task's listed test file is not an extra


def test_files_read_wrongly_or_with_a_traceback_are_refused_in_one_line(tmp_path):
    """Found by a review of the readers: `1, "great movie", pos` kept its quotes and space in the text (CSV quotes only
    a field's first character); a JSON number of 5,000 digits or nesting deeper than Python's stack ended in a
    traceback; a UTF-16 file without its byte-order mark read as "UTF-8" with NULs in the names; a header name
    behind a second byte-order mark (files joined) printed as if it were the name asked for."""
    t = tmp_path
    assert _refused(_custom(t, "t.csv", 'review,stars\n"fine",pos\n1, "great movie", pos\n')) == (
        f"{t / 't.csv'}:3: field 2 is ' \"great movie\"': a space before its opening '\"' makes the quotes part of "
        f"the text; remove the space after the comma")
    assert load_split(_custom(t, "t.csv", 'review,stars\n"a ""great"" one",pos\nsaid "hi",neg\n'), "train")[
        "text"] == ['a "great" one', 'said "hi"']  # quotes inside a field, and unquoted, are still texts
    # a quoted text that starts with a space and a quote (pandas' to_csv of ' "Great" is the word: "great"') is read
    # as written, on one line or two; only quotes after a space are refused
    assert load_split(_custom(t, "t.csv", 'review,stars\n" ""Great"" is the word: ""great""",pos\n'
                                          '" ""two""\nlines""",neg\n'), "train")["text"] == [
        ' "Great" is the word: "great"', ' "two"\nlines"']
    big = "1" * 5000
    assert _refused(_custom(t, "t.jsonl", f'{{"review": "a", "stars": "pos"}}\n{{"review": "b", "stars": {big}}}\n')) \
        == f"{t / 't.jsonl'}:2: JSON this reader cannot take (Exceeds the limit (4300 digits) for integer string " \
           f"conversion)"
    assert _refused(_custom(t, "t.json", "[" * 100000)).startswith(f"{t / 't.json'}: JSON this reader cannot take "
                                                                   f"(maximum recursion depth exceeded")
    assert _refused(_custom(t, "t.jsonl", '{"review": "a", "stars": ' + "[" * 5000 + "]" * 5000 + "}\n")).startswith(
        f"{t / 't.jsonl'}:1: JSON this reader cannot take (maximum recursion depth exceeded")
    assert _refused(_custom(t, "t.tsv", "review\tstars\nok\tpos\n".encode("utf-16-le"))) == (
        f"{t / 't.tsv'}:1: a NUL byte: not UTF-8 text (UTF-16?); the file must be UTF-8")
    assert _refused(_custom(t, "t.csv", "\ufeff\ufeffreview,stars\nok,pos\n".encode())) == (
        f"{t / 't.csv'}: column 'review' not found (columns: '\\ufeffreview', stars); the header has "
        f"'\\ufeffreview': remove the byte-order mark (U+FEFF) in it")


def test_a_local_hub_dataset_folder_of_tsv_files_is_refused(tmp_path, glue_dir):
    """`task.hub_dataset: <a folder of .tsv files>` went to `datasets.load_dataset`, which reads TSV with CSV quoting:
    RTE's dev texts lost their quotes and rows between two quotes merged into one, with no error."""
    with pytest.raises(CompressError, match=rf"^task\.hub_dataset: {glue_dir / 'RTE'} is a local folder of \.tsv "
                                            r"files \(dev\.tsv\): .* give them as task\.files instead"):
        load_task(TaskConfig(name="x", hub_dataset=str(glue_dir / "RTE"), labels=["entailment", "not_entailment"],
                             text_column="sentence1", text_pair_column="sentence2"), seed=0)


def test_a_capped_split_records_its_rows_before_the_cap(glue_dir):
    """`TaskData.dev_split_rows` / `test_split_rows` are the split's rows before `task.max_eval_samples` (the teacher
    stage records them; the report says "first rows only" where the scored rows are fewer): counted after the cap,
    a capped run read as scored on all of dev."""
    small = load_task(TaskConfig(name="mrpc", max_eval_samples=40), seed=1)
    assert (len(small.dev), small.dev_split_rows) == (40, 408)
    assert (len(small.test), small.test_split_rows) == (40, 1725)
    whole = load_task(TaskConfig(name="mrpc"), seed=1)
    assert (len(whole.dev), whole.dev_split_rows, whole.test_split_rows) == (408, 408, 1725)


def test_holdout_rows_are_the_fraction_rounded_to_nearest(glue_dir):
    """`task.holdout` of the training rows, rounded to the nearest row (MRPC: 0.1 of 3668 is 366.8, so 367 rows), and
    the rest train."""
    from compress.rows import holdout_rows

    cfg = TaskConfig(name="mrpc", holdout=0.1)
    assert holdout_rows(cfg, 3668) == 367
    data = load_task(cfg, seed=1)
    assert (len(data.holdout), len(data.train)) == (367, 3668 - 367)


def test_label_cells_with_spaces_around_them_are_their_names(tmp_path):
    """A label cell's surrounding spaces are no part of its name (as a hub dataset's labels are read): ``good, pos``
    in a CSV is the label "pos", not one refused as " pos"."""
    cfg = _custom(tmp_path, "t.csv", "review,stars\ngood, pos\nbad,neg \nfine,\t1 \n", labels=["neg", "pos", "1"])
    assert load_split(cfg, "train")["label"] == [1, 0, 2]


def test_mnli_dev_is_the_matched_split():
    """GLUE's MNLI dev split (the one scored and reported) is dev_matched.tsv; the mismatched one is a split of its
    own."""
    from compress.tasks import split_paths, task_spec

    paths = split_paths(TaskConfig(name="mnli", data_dir="glue/MNLI"))
    assert paths["dev"].name == "dev_matched.tsv" and paths["dev_mismatched"].name == "dev_mismatched.tsv"
    assert paths["train"].name == "train.tsv"
    assert task_spec(TaskConfig(name="qqp")).metrics[0] == "f1"  # QQP's main metric is F1 (as MRPC's), as GLUE's
