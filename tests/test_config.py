import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compress.config import load_recipe, yaml_value
from compress.errors import CompressError
from conftest import unlabelled_mrpc

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_every_shipped_recipe_validates():
    recipes = sorted((ROOT / "pipelines").glob("*.yaml"))
    assert len(recipes) >= 4
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.task.name and recipe.teacher.model


def test_the_python_api_refuses_command_line_shapes_in_one_line(tmp_path):
    """From Python: overrides as a list of "k=v" strings gave AttributeError ('list' object has no attribute 'items');
    force="teacher" was the stages t, e, a, ... ("--force t: unknown stage"); score(max_rows=0) an sklearn ValueError
    (the CLI's --max-rows refuses it)."""
    from compress.bundle import score
    from compress.pipeline import explain

    p = write(tmp_path, f"name: r\nruns_dir: {tmp_path / 'runs'}\ntask: {{name: sst2}}\nteacher: {{}}\n")
    with pytest.raises(CompressError, match=r"^overrides: a dict of dotted keys to values, e\.g\. \{'teacher\.epochs': "
                                            r"1\}, got list$"):
        load_recipe(p, ["teacher.epochs=2"])
    assert explain(load_recipe(p), force="teacher") == explain(load_recipe(p), force=("teacher",))
    assert explain(load_recipe(p), force="teacher")[0] == ("teacher", True, "forced (--force)")
    for rows in (0, -1, 2.5):
        with pytest.raises(CompressError, match=rf"^max_rows: a whole number of rows >= 1 \(None: every row\), got "
                                                rf"{rows}$"):
            score(tmp_path / "no-bundle", max_rows=rows)


def test_unknown_key_names_file_and_key(tmp_path):
    p = write(tmp_path, "task: {name: sst2}\nteacher: {model: minilm-l6, lr_rate: 0.1}\n")
    with pytest.raises(CompressError) as e:
        load_recipe(p)
    assert str(p) in str(e.value) and "teacher.lr_rate: unknown key (known keys: " in str(e.value)  # no near one
    p = write(tmp_path, "task: {name: mine, label_colum: y}\nteacher: {}\n")
    with pytest.raises(CompressError, match=r"task\.label_colum: unknown key \(did you mean 'label_column'\? known "):
        load_recipe(p)


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "task: {name: sst2}\nteacher: {model: minilm-l6, lr: fast}\n")
    with pytest.raises(CompressError, match=r"teacher\.lr: expected a number, got 'fast'"):
        load_recipe(p)
    p = write(tmp_path, "task: {name: sst2, max_length: 12.5}\nteacher: {}\n")
    with pytest.raises(CompressError, match=r"task\.max_length: expected an integer"):
        load_recipe(p)
    p = write(tmp_path, "task: {name: sst2}\nteacher: {precision: fp8}\n")
    with pytest.raises(CompressError, match=r"teacher\.precision: expected one of \['fp32', 'bf16', 'auto'\]"):
        load_recipe(p)


def test_missing_required_and_bad_values(tmp_path):
    with pytest.raises(CompressError, match="task: required key is missing"):
        load_recipe(write(tmp_path, "teacher: {}\n"))
    with pytest.raises(CompressError, match=r"teacher\.lr: must be > 0"):
        load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {lr: 0}\n"))
    with pytest.raises(CompressError, match=r"task\.holdout: must be in"):
        load_recipe(write(tmp_path, "task: {name: sst2, holdout: 0.9}\nteacher: {}\n"))
    with pytest.raises(CompressError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    recipes = Path(__file__).resolve().parent.parent / "pipelines"  # the name without .yaml, then a misspelt one
    with pytest.raises(CompressError, match=rf"^{recipes / 'quickstart'}: recipe file not found \(did you mean "
                                            rf"{recipes / 'quickstart.yaml'}\?\)$"):
        load_recipe(recipes / "quickstart")
    with pytest.raises(CompressError, match=rf"^{recipes / 'quikstart.yaml'}: recipe file not found \(recipes in "
                                            rf"{recipes}: bert-base\.yaml, bert-large\.yaml, .*, \.\.\.\)$"):
        load_recipe(recipes / "quikstart.yaml")
    with pytest.raises(CompressError, match="not valid YAML"):
        load_recipe(write(tmp_path, "task: [unclosed\n"))


def test_a_task_that_is_neither_glue_nor_custom_is_refused_at_validation(tmp_path):
    """`compress validate` catches a misspelt task name (or a custom task without files or labels), not the run."""
    def recipe(task: str):
        path = tmp_path / "r.yaml"
        path.write_text(f"name: r\ntask: {task}\nteacher: {{model: minilm-l6}}\n")
        return path

    with pytest.raises(CompressError, match=r"r\.yaml: task\.name: 'sst3' is not a GLUE task \(sst2, .*task\.files"):
        load_recipe(recipe("{name: sst3}"))
    with pytest.raises(CompressError, match=r"r\.yaml: task\.labels: a custom classification task must list"):
        load_recipe(recipe("{name: reviews, files: {train: a.tsv, dev: b.tsv}}"))
    assert load_recipe(recipe("{name: reviews, files: {train: a.tsv, dev: b.tsv}, labels: [neg, pos]}")).task.labels


def test_a_near_miss_of_a_zoo_name_is_refused_at_validation(tmp_path):
    """A typo in a model name fails in `compress validate`, not after the teacher has trained; hub ids and folders
    pass (they are looked up when loaded)."""
    def recipe(teacher: str, init: str):
        path = tmp_path / "r.yaml"
        path.write_text(f"name: r\ntask: {{name: sst2}}\nteacher: {{model: {teacher}}}\n"
                        f"students: [{{name: s, kind: narrow, init: {init}}}]\n")
        return path

    with pytest.raises(CompressError, match=r"r\.yaml: students\[0\]\.init: 'minilm-l7' is not a zoo model "
                                            r"\(did you mean 'minilm-l6'\?\)"):
        load_recipe(recipe("mpnet-base", "minilm-l7"))
    with pytest.raises(CompressError, match=r"teacher\.model: 'MPNet_base' is not a zoo model \(did you mean 'mpnet-base'"):
        load_recipe(recipe("MPNet_base", "minilm-l6"))
    (tmp_path / "minilm-l7").mkdir()  # a folder of that name is what it says, once it holds a model
    with pytest.raises(CompressError, match=r"students\[0\]\.init: folder .*minilm-l7' holds no config\.json"):
        load_recipe(recipe("mpnet-base", str(tmp_path / "minilm-l7")))
    for model_type in ("gpt2", "albert", "distilbert"):  # would fail part-way through a run (audit 2026-12-03)
        (tmp_path / "minilm-l7" / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
        with pytest.raises(CompressError, match=rf"students\[0\]\.init: .*minilm-l7': model type '{model_type}' is "
                                                r"not supported \(supported encoders: bert, electra, mpnet, roberta"):
            load_recipe(recipe("mpnet-base", str(tmp_path / "minilm-l7")))
    (tmp_path / "minilm-l7" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "minilm-l7" / "vocab.txt").write_text("[PAD]\n")  # a model folder holds its tokenizer
    with pytest.raises(CompressError, match=r"teacher\.model: .*r\.yaml' is a file; give a model folder"):
        load_recipe(recipe(str(tmp_path / "r.yaml"), "minilm-l6"))
    for teacher in ("bert-base-uncased", "microsoft/MiniLM-L12-H384-uncased", "roberta-base"):
        assert load_recipe(recipe(teacher, str(tmp_path / "minilm-l7"))).teacher.model == teacher


def test_a_model_folder_whose_config_sizes_are_not_positive_integers_is_refused_at_validation(tmp_path, capsys):
    """A config.json with `"num_hidden_layers": "six"` passed `compress validate --strict` and stopped the run with
    "cannot read its weights (TypeError ...)" (the weights were fine); now refused as the recipe loads, naming the
    file and the field, for the teacher and a student's init alike."""
    from compress.cli import main

    model = tmp_path / "m"
    model.mkdir()
    (model / "vocab.txt").write_text("[PAD]\n")
    path = tmp_path / "r.yaml"
    for value, said in (('"six"', "'six'"), ("0", "0"), ("12.0", "12.0")):
        (model / "config.json").write_text(f'{{"model_type": "bert", "num_hidden_layers": {value}}}')
        path.write_text(f"name: r\ntask: {{name: sst2}}\nteacher: {{model: {model}}}\n")
        assert main(["validate", str(path)]) == 2
        assert capsys.readouterr().err == (f"error: {path}: teacher.model: {model / 'config.json'}: num_hidden_layers: "
                                           f"expected a positive integer, got {said}\n")
    path.write_text(f"name: r\ntask: {{name: sst2}}\nteacher: {{model: minilm-l6}}\n"
                    f"students: [{{name: s, kind: narrow, init: {model}}}]\n")
    with pytest.raises(CompressError, match=r"students\[0\]\.init: .*config\.json: num_hidden_layers: expected a "):
        load_recipe(path)
    (model / "config.json").write_text('{"model_type": "bert", "num_hidden_layers": 6}')
    assert load_recipe(path).students[0].init == str(model)


def test_a_model_folder_without_a_tokenizer_is_refused_at_validation(tmp_path):
    """A folder of config.json and weights only passed validation, then failed the teacher stage with a TypeError
    traceback from transformers' tokenizer loader; a student's init needs none when it names its own tokenizer."""
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\ntask: {{name: sst2}}\nteacher: {{model: {model}}}\n")
    with pytest.raises(CompressError) as e:
        load_recipe(path)
    assert str(e.value) == (f"{path}: teacher.model: folder {str(model)!r} holds no tokenizer (none of tokenizer.json, "
                            f"tokenizer_config.json, vocab.txt, vocab.json, spiece.model, sentencepiece.bpe.model); "
                            f"save the model's tokenizer there too")
    path.write_text(f"name: r\ntask: {{name: sst2}}\nteacher: {{model: minilm-l6}}\n"
                    f"students: [{{name: s, kind: narrow, init: {model}}}]\n")
    with pytest.raises(CompressError, match=r"students\[0\]\.init: folder .* holds no tokenizer"):
        load_recipe(path)
    path.write_text(f"name: r\ntask: {{name: sst2}}\nteacher: {{model: minilm-l6}}\n"
                    f"students: [{{name: s, kind: narrow, init: {model}, tokenizer: minilm-l6}}]\n")
    assert load_recipe(path).students[0].init == str(model)
    # a student's tokenizer folder of config.json alone passed, then failed the distill stage in a TypeError traceback
    path.write_text(f"name: r\ntask: {{name: sst2}}\nteacher: {{model: minilm-l6}}\n"
                    f"students: [{{name: s, kind: narrow, init: random, layers: 1, hidden: 32, heads: 2, "
                    f"tokenizer: {model}}}]\n")
    with pytest.raises(CompressError, match=r"students\[0\]\.tokenizer: folder .* holds no tokenizer\.json or "):
        load_recipe(path)
    from students.narrow import _tokenizer

    with pytest.raises(CompressError, match=rf"^tokenizer '{model}': cannot load \(TypeError: .*\); save a tokenizer "
                                            r"there$"):
        _tokenizer(str(model))  # what the stage says, were it reached (validation refuses it first)


def test_relative_position_embeddings_are_refused_at_validation(tmp_path):
    """A BERT with position_embedding_type relative_key trained and distilled, then failed the prune stage with an
    einsum size error (the head surgery emptied its distance embedding)."""
    model = tmp_path / "m"
    model.mkdir()
    (model / "vocab.txt").write_text("[PAD]\n")
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\ntask: {{name: sst2}}\nteacher: {{model: {model}}}\n")
    for kind in ("relative_key", "relative_key_query"):
        (model / "config.json").write_text(f'{{"model_type": "bert", "position_embedding_type": "{kind}"}}')
        with pytest.raises(CompressError) as e:
            load_recipe(path)
        assert str(e.value) == (f"{path}: teacher.model: {str(model)!r}: position_embedding_type {kind!r} is not "
                                f"supported (absolute position embeddings only)")
    (model / "config.json").write_text('{"model_type": "bert", "position_embedding_type": "absolute"}')
    assert load_recipe(path).teacher.model == str(model)


def test_defaults_and_overrides(tmp_path):
    r = load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {}\n"), {"teacher.epochs": 1, "seed": 7})
    assert r.name == "r" and r.seed == 7 and r.teacher.epochs == 1.0 and r.teacher.model == "minilm-l6"
    assert r.task.max_length == 128 and r.teacher.precision == "fp32"
    assert r.run_dir == Path("runs") / "r"


def test_overrides_reach_list_entries_and_bad_paths_are_one_line_errors(tmp_path):
    path = write(tmp_path, "task: {name: sst2}\nteacher: {}\nstudents:\n  - {name: a, layers: 2}\n"
                           "  - {name: b, layers: 1, train: {epochs: 3}}\n")
    r = load_recipe(path, {"students.0.train.epochs": 5, "students[1].train.lr": 1e-3, "students.1.layers": 3})
    assert r.students[0].train.epochs == 5 and r.students[0].layers == 2
    assert r.students[1].train.lr == 1e-3 and r.students[1].train.epochs == 3 and r.students[1].layers == 3
    with pytest.raises(CompressError, match=r"^--set students.2.layers: students is a list of 2 entries: use an index "
                                            r"from 0 to 1$"):
        load_recipe(path, {"students.2.layers": 1})
    with pytest.raises(CompressError, match=r"students is a list"):
        load_recipe(path, {"students.name": "x"})
    with pytest.raises(CompressError, match=r"^--set students\[x\]\.name: students is a list of 2 entries: use an "
                                            r"index from 0 to 1$"):  # it was "students[x]: unknown key"
        load_recipe(path, {"students[x].name": "x"})
    with pytest.raises(CompressError, match=r"^--set task.name.x: task.name is not a section \(its value is 'sst2'\)$"):
        load_recipe(path, {"task.name.x": 1})
    with pytest.raises(CompressError, match=r"students\[0\]\.train\.epoks: unknown key \(did you mean 'epochs'\? known "
                                            r"keys: epochs, "):
        load_recipe(path, {"students.0.train.epoks": 1})


def test_precision_auto_follows_the_hardware(monkeypatch):
    import compress.train as train

    monkeypatch.setattr(train, "native_bf16", lambda: True)
    assert train.resolve_precision("auto") == "bf16" and train.resolve_precision("fp32") == "fp32"
    monkeypatch.setattr(train, "native_bf16", lambda: False)
    assert train.resolve_precision("auto") == "fp32" and train.resolve_precision("bf16") == "bf16"


def test_native_bf16_on_a_gpu_does_not_count_emulated_bf16(monkeypatch):
    """torch's ``is_bf16_supported()`` says yes on pre-Ampere GPUs that emulate bf16 (slower than fp32 there):
    ``precision: auto`` must ask for native units only."""
    import torch

    import compress.manifest as manifest
    import compress.train as train

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train, "process_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: asked.append(including_emulation) or including_emulation)
    assert train.native_bf16() is False and asked == [False]
    assert train.resolve_precision("auto") == "fp32"
    # `accelerate launch --cpu` on that host trains on the CPU: its flags decide, the GPU is not asked
    monkeypatch.setattr(train, "process_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(manifest, "cpu_flags", lambda: {"avx512_bf16"})
    assert train.native_bf16() is True and asked == [False, False]  # (the two calls above)


def test_an_option_added_later_leaves_fingerprints_alone_at_its_default(tmp_path):
    """`Recipe.section` (what stage fingerprints hash) leaves out an ``omit_default`` option, like
    students[].distill.augment.min_words, while it holds its default: run folders made before the option existed stay
    reused; setting it changes the section."""
    path = tmp_path / "r.yaml"
    path.write_text("task: {name: sst2}\nteacher: {model: bert-base-uncased}\n"
                    "students: [{name: s, distill: {augment: {copies: 3}}}]\n")
    before = load_recipe(path).section("students")[0]["distill"]["augment"]
    assert before == {"copies": 3, "replace_prob": 0.4, "neighbours": 15, "embeddings": "teacher", "seed": 0}
    after = load_recipe(path, {"students.0.distill.augment.min_words": 10}).section("students")[0]
    assert after["distill"]["augment"] == {**before, "min_words": 10}
    assert load_recipe(path).section("teacher")["model"] == "bert-base-uncased"  # other sections as before


def test_bundle_verify_at_its_defaults_leaves_the_bundle_stage_fingerprint_alone(tmp_path):
    """bundle.verify / verify_tolerance (added after run folders existed) at their defaults are not in the bundle
    section: every finished run's bundle stage was redone (and could now fail) on the next `compress run`."""
    path = tmp_path / "r.yaml"
    path.write_text("task: {name: sst2}\nteacher: {model: minilm-l6}\nquantize: {}\nbundle: {pick: fastest}\n")
    before = {"pick": "fastest", "max_drop": None, "threads": None, "name": None, "ort": True}
    assert load_recipe(path).section("bundle") == before
    assert load_recipe(path, {"bundle.verify": True, "bundle.verify_tolerance": 0.5}).section("bundle") == before
    assert load_recipe(path, {"bundle.verify": False, "bundle.verify_tolerance": 1.0}).section("bundle") == \
        {**before, "verify": False, "verify_tolerance": 1.0}


def test_quantize_table_bits_is_8_or_4_and_out_of_the_fingerprint_at_8(tmp_path):
    """quantize.table_bits (added after run folders existed): 8 leaves the quantize section as it was, 4 is in it, any
    other value is refused naming the key."""
    path = write(tmp_path, "task: {name: sst2}\nteacher: {model: minilm-l6}\nquantize: {}\n")
    before = load_recipe(path).section("quantize")
    assert "table_bits" not in before and load_recipe(path, {"quantize.table_bits": 8}).section("quantize") == before
    assert load_recipe(path, {"quantize.table_bits": 4}).section("quantize") == {**before, "table_bits": 4}
    with pytest.raises(CompressError, match=r"quantize\.table_bits: expected one of \[8, 4\], got 6"):
        load_recipe(path, {"quantize.table_bits": 6})


def test_validate_and_dry_run_import_no_torch(tmp_path):
    """Checking a recipe (`compress validate`, `compress run --dry-run`) reads YAML and hashes files: it imports
    neither torch nor transformers (was ~5 s a call, now well under one)."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    code = ("import sys, json\n"
            "from compress.cli import main\n"
            "rcs = [main(['validate', sys.argv[1]]), main(['run', sys.argv[1], '--dry-run', '--runs-dir', sys.argv[2]])]\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
            "print('HEAVY', json.dumps([rcs, heavy]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(root / "pipelines" / "quickstart.yaml"), str(tmp_path)],
                          capture_output=True, text=True, cwd=root)
    assert proc.returncode == 0, proc.stderr
    out, tail = proc.stdout.split("HEAVY")
    assert json.loads(tail) == [[0, 0], []]
    assert "ok; stages: teacher, distill, prune, quantize, bench, report, bundle" in out
    assert "[teacher] would run: not run yet" in out and "[bundle] would run: after" in out


def test_version_names_the_stack(capsys):
    from compress import __version__
    from compress.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"compress {__version__}; python ")
    assert "torch 2.13.0" in out and "transformers 4.57.6" in out and "onnxruntime 1.32.0" in out


def test_validate_warns_of_missing_data_files_without_failing(tmp_path, monkeypatch, capsys):
    from compress.cli import main

    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    recipe = Path(__file__).resolve().parent.parent / "pipelines" / "mrpc.yaml"
    assert main(["validate", str(recipe)]) == 0
    err = capsys.readouterr().err.splitlines()
    hint = " (looked in GLUE_DIR: set GLUE_DIR to the folder holding MRPC/, or task.data_dir to the MRPC folder)"
    assert err == [f"warning: {recipe}: task: {tmp_path / 'MRPC' / name}: file not found{hint}"
                   for name in ("train.tsv", "dev.tsv")]  # MRPC's labelled test.tsv is an extra
    # the ok line says so (it read as a clean bill); --strict fails on them, for CI
    assert main(["validate", str(recipe)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("; 2 warnings below: a run would stop on them")
    assert main(["validate", "--strict", str(recipe)]) == 2
    capsys.readouterr()
    monkeypatch.delenv("GLUE_DIR")
    assert main(["validate", str(recipe)]) == 0 and capsys.readouterr().err == ""


def test_validate_reads_the_data_files_with_the_runs_row_checks(tmp_path, capsys):
    """A bad row in a custom task's file failed only once the run loaded it; `compress validate` now reads every
    local data file with the same checks (standard library only: no torch) and counts the rows."""
    from compress.cli import main

    (tmp_path / "a.tsv").write_text("text\tlabel\ngood film\tpos\nbad film\tneg\n", encoding="utf-8")
    (tmp_path / "b.tsv").write_text("text\tlabel\nfine\tpos\nhmm\tmaybe\n", encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(CUSTOM.replace("name: mine,", f"name: mine, data_dir: {tmp_path},") % "", encoding="utf-8")
    assert main(["validate", str(recipe)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'b.tsv'}:3: column 'label': label 'maybe' is not "
                                               f"one of ['neg', 'pos']")
    (tmp_path / "b.tsv").write_text("text\tlabel\nfine\tpos\nhmm\tneg\nok\tpos\n", encoding="utf-8")
    assert main(["validate", str(recipe)]) == 2  # 5% of 2 rows: the run would hold out nothing and stop
    assert capsys.readouterr().err.strip() == (f"error: {recipe}: task.holdout: 0.05 of 2 training rows holds out "
                                               f"nothing (raise it, or 0 for none)")
    recipe.write_text(CUSTOM.replace("name: mine,", f"name: mine, data_dir: {tmp_path},") % ", holdout: 0",
                      encoding="utf-8")
    assert main(["validate", str(recipe)]) == 0
    assert capsys.readouterr().out.strip().endswith("; data rows: train 2, dev 3")
    assert main(["validate", str(recipe), "--set", "task.max_train_samples=1"]) == 0  # what the run will use, said
    assert capsys.readouterr().out.strip().endswith("; data rows: train 2 (at most 1 used: task.max_train_samples), "
                                                    "dev 3")


CUSTOM = "task: {name: mine, files: {train: a.tsv, dev: b.tsv}, labels: [neg, pos]%s}\nteacher: {}\n"


@pytest.mark.parametrize("text, message", [
    ("task: {name: sst2}\nteacher: {epochs: .nan}\n", r"teacher\.epochs: expected a finite number, got nan"),
    ("task: {name: sst2}\nteacher: {lr: .inf}\n", r"teacher\.lr: expected a finite number, got inf"),
    # an integer beyond floats: OverflowError from math.isfinite
    ("task: {name: sst2}\nteacher: {lr: 1%s}\n" % ("0" * 400),
     r"teacher\.lr: expected a number within a float's range, got 1000"),
    ("task: {name: sst2}\nteacher: {weight_decay: -1}\n", r"teacher: weight_decay and max_grad_norm must be >= 0"),
    ("task: {name: sst2, holdout_max: -5}\nteacher: {}\n", r"task\.holdout_max: must be >= 1, got -5"),
    ("name: ../../escaped\ntask: {name: sst2}\nteacher: {}\n", r"name: a plain folder name is needed"),
    ("name: /etc\ntask: {name: sst2}\nteacher: {}\n", r"name: a plain folder name is needed"),
    ("name: ''\ntask: {name: sst2}\nteacher: {}\n", r"name: a plain folder name is needed"),
    ("task: {name: sst2}\nteacher: {}\nstudents: []\n", r"students: the list is empty"),
    # accepted and silently ignored, or meaningless
    (CUSTOM % ", text_column: t, text_pair_column: t", r"task\.text_pair_column: 't' is text_column too"),
    (CUSTOM % ", metrics: [accuracy, accuracy]", r"task\.metrics: each metric once, got \['accuracy', 'accuracy'\]"),
    ("task: {name: sst2}\nteacher: {}\nstudents: [{name: s}, {name: s}]\n", r"students: the name 's' is used twice"),
    ("task: {name: sst2}\nteacher: {}\nstudents: [{name: s, keep_layers: [1, 1]}]\n",
     r"students\[0\]\.keep_layers: each layer can be kept once"),
    ("task: {name: sst2}\nteacher: {}\nstudents: [{name: s, kind: narrow, layers: 2}]\n",
     r"students\[0\]\.hidden: a narrow student with random init needs hidden"),
    ("task: {name: sst2}\nteacher: {}\nstudents: [{name: s, kind: narrow, layers: 2, hidden: 200}]\n",
     r"students\[0\]: hidden 200 is not divisible by the default heads 3 \(hidden // 64\): give heads"),
    ("task: {name: sst2}\nteacher: {}\nstudents: [{name: s}]\nprune: {heads: 0.5, source: nosuch}\n",
     r"prune\.source: 'nosuch' is neither teacher nor a student \(s\)"),
    ("task: {name: sst2}\nteacher: {}\nquantize: {source: prune}\n",
     r"quantize\.source: 'prune' is not one of this recipe's models \(teacher\)"),
    ("task: {name: sst2, labels: [a, b]}\nteacher: {}\n", r"task\.labels: text_column, text_pair_column, label_column, "
                                                           r"labels, regression, metrics are for custom tasks; GLUE "
                                                           r"task 'sst2' has its own$"),
    # never read for a GLUE task: a change of one redid the teacher and every stage after it
    ("task: {name: sst2, text_column: sentence}\nteacher: {}\n", r"task\.text_column: text_column, .* are for custom"),
    ("task: {name: mrpc, text_pair_column: s2}\nteacher: {}\n", r"task\.text_pair_column: text_column, .* GLUE task "
                                                               r"'mrpc' has its own"),
    ("task: {name: rte, label_column: y}\nteacher: {}\n", r"task\.label_column: text_column, .* are for custom"),
    (CUSTOM % ", metrics: [bleu]", r"task\.metrics: 'bleu' is unknown \(known: accuracy, f1"),
    (CUSTOM % ", regression: true", r"task\.labels: a regression task has no labels"),
    (CUSTOM.replace("[neg, pos]", "[neg, neg]") % "", r"task\.labels: 'neg' is listed twice"),
    (CUSTOM.replace("[neg, pos]", "[]") % "", r"task\.labels: two or more distinct"),
    (CUSTOM.replace(", dev: b.tsv", "") % "", r"task\.files: no 'dev' file \(train and dev are needed"),
    (CUSTOM.replace("labels: [neg, pos]", "regression: true") % ", metrics: [accuracy]",
     r"task\.metrics: 'accuracy' does not score a regression task \(use pearson, spearmanr\)"),
    (CUSTOM % ", metrics: [accuracy, pearson]",
     r"task\.metrics: 'pearson' does not score a classification task \(use accuracy, f1, matthews_correlation\)"),
    (CUSTOM.replace("[neg, pos]", "[neg, pos, neu]") % ", metrics: [f1]",
     r"task\.metrics: 'f1' is the F1 of the second label of a two-label task .* with 3 labels use accuracy"),
    (CUSTOM.replace("[neg, pos]", "[no, yes]") % "",
     r"task\.labels\[0\]: expected a string, got the YAML boolean false \(unquoted no/yes/on/off/true/false"),
    ("task: {name: sst2}\nteacher: {}\nbench: {threads: [1, 1]}\n", r"bench\.threads: each value once, got \[1, 1\]"),
    ("task: {name: sst2}\nteacher: {}\nquantize: {modes: [dynamic, dynamic]}\n",
     r"quantize\.modes: each mode once, got \['dynamic', 'dynamic'\]"),
    ("task: {name: sst2}\nteacher: {}\nbench: {threads: [1]}\nreport: {threads: 2}\n",
     r"report\.threads: 2 is not one of bench\.threads \[1\]"),
    ("task: {name: sst2}\nteacher: {}\nbench: {threads: [1, 2]}\nbundle: {threads: 4}\n",
     r"bundle\.threads: 4 is not one of bench\.threads \[1, 2\]"),
    # each range's edge (a mutation audit found them untested)
    ("task: {name: sst2, max_length: 4}\nteacher: {}\n", r"task\.max_length: must be >= 8, got 4"),
    ("task: {name: sst2, holdout: 0.5}\nteacher: {}\n", r"task\.holdout: must be in \[0, 0\.5\), got 0\.5"),
    ("task: {name: sst2}\nteacher: {grad_accum: 0}\n", r"teacher\.grad_accum: must be > 0, got 0"),
    ("task: {name: sst2}\nteacher: {warmup_ratio: 1.0}\n", r"teacher\.warmup_ratio: must be in \[0, 1\), got 1\.0"),
    ("task: {name: sst2}\nteacher: {max_grad_norm: -1}\n", r"teacher: weight_decay and max_grad_norm must be >= 0"),
    ("task: {name: sst2}\nteacher: {}\nprune: {keep_params: 0}\n",
     r"prune\.keep_params: a fraction in \(0, 1\] is needed, got 0"),
    ("task: {name: sst2}\nteacher: {}\nprune: {keep_params: 0.5, keep_macs: 0.5}\n",
     r"prune: give either ratios \(heads/ffn\) or one budget"),
    ("task: {name: sst2}\nteacher: {}\nquantize: {sensitivity_rows: 0}\n",
     r"quantize\.sensitivity_rows: must be >= 1, got 0"),
])
def test_what_would_fail_mid_run_is_refused_at_validation(tmp_path, text, message):
    """Each of these passed `compress validate` and failed only once the run was under way (some after the teacher
    had trained), or wrote outside runs_dir (a recipe name with a path in it)."""
    with pytest.raises(CompressError, match=message):
        load_recipe(write(tmp_path, text))


def test_the_edges_of_ranges_that_are_allowed_are_taken(tmp_path):
    """parity_min_agreement 1 (every argmax the same) is allowed; int8 types static cannot run are fine for a
    dynamic-only run (they are read by static int8 only)."""
    recipe = load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {}\nquantize: {parity_min_agreement: 1.0, "
                                         "modes: [dynamic], activation_type: qint8, weight_type: quint8}\n"))
    assert recipe.quantize.parity_min_agreement == 1.0 and recipe.quantize.modes == ["dynamic"]


def test_label_names_written_as_numbers_are_their_text(tmp_path):
    recipe = load_recipe(write(tmp_path, CUSTOM.replace("[neg, pos]", "[0, 1]") % ""))
    assert recipe.task.labels == ["0", "1"]


def test_recipe_file_and_set_errors_are_one_line(tmp_path, capsys):
    from compress.cli import main

    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe bad")
    assert main(["validate", str(tmp_path / "bin.yaml")]) == 2
    assert capsys.readouterr().err.strip().endswith("bin.yaml: not a UTF-8 text file (byte 0: invalid start byte)")
    recipe = str(ROOT / "pipelines" / "quickstart.yaml")
    assert main(["validate", recipe, "--set", "bench.threads=[1,"]) == 2
    assert "--set bench.threads: the value is not valid YAML: " in capsys.readouterr().err
    # a key given twice in a --set mapping is refused as in a recipe file (the last one was kept silently)
    assert main(["validate", recipe, "--set", "students.0.train={epochs: 1, epochs: 2}"]) == 2
    assert capsys.readouterr().err.strip() == "error: --set students.0.train: epochs: given twice (line 1, column 13)"
    for bad in ("=3", ".teacher.epochs=1", "teacher..epochs=1"):
        assert main(["validate", recipe, "--set", bad]) == 2
        err = capsys.readouterr().err
        assert "empty key part" in err and len(err.splitlines()) == 1
    (tmp_path / "y.yaml").write_text("task: {name: sst2\nteacher: {}\n")
    assert main(["validate", str(tmp_path / "y.yaml")]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML: " in err and "(line 2, column " in err and len(err.splitlines()) == 1
    # an integer of more than 4300 digits: PyYAML's int() raised Python's ValueError, a traceback
    (tmp_path / "huge.yaml").write_text(f"task: {{name: sst2}}\nteacher: {{max_steps: 1{'0' * 5000}}}\n")
    assert main(["validate", str(tmp_path / "huge.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'huge.yaml'}: not valid YAML: Exceeds the limit")
    assert err.count("\n") == 1 and "sys.set_int_max_str_digits" not in err
    # a date that is none: it said "day is out of range for month", no value, no line
    (tmp_path / "date.yaml").write_text("task: {name: sst2}\nteacher: {}\nseed: 2024-02-30\n")
    assert main(["validate", str(tmp_path / "date.yaml")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'date.yaml'}: not valid YAML: '2024-02-30' is no date (day "
                                       f"is out of range for month) (line 3, column 7)\n")
    assert main(["validate", recipe, "--set", f"teacher.max_steps=1{'0' * 5000}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set teacher.max_steps: the value is not valid YAML: Exceeds")
    assert err.count("\n") == 1
    assert main(["zoo", "list", "mpnet-base"]) == 2
    assert "zoo list takes no names" in capsys.readouterr().err
    # a list entry set where the list is empty or absent: "use an index from 0 to -1", "expected a list, got {'0': 1}"
    for sets, said in ((["bench.peers=[]", "bench.peers.0=onnx_fp32"], "bench.peers is an empty list: set the whole "
                        "list, e.g. --set 'bench.peers=[...]'"),
                       (["search.depths.0=1"], "search.depths is not in the recipe (a list): set the whole list, "
                        "e.g. --set 'search.depths=[...]'")):
        assert main(["validate", recipe, *[a for v in sets for a in ("--set", v)]]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"error: --set {sets[-1].split('=')[0]}: {said}"
    assert main(["validate", str(tmp_path)]) == 2  # a folder: it said "recipe file not found"
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: a folder, not a recipe file"


def test_max_length_beyond_a_models_positions_is_refused_before_torch(tmp_path):
    """task.max_length past the position table of the teacher or a student checkpoint (zoo name or folder, read from
    config.json without torch) is refused by validation, not once the teacher has trained; MPNet/RoBERTa tables lose
    pad_token_id + 1 rows (514 -> 512 tokens)."""
    import json

    folder = tmp_path / "mpnet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mpnet", "max_position_embeddings": 130,
                                                    "pad_token_id": 1}))
    (folder / "vocab.txt").write_text("[PAD]\n")
    ok = write(tmp_path, f"task: {{name: sst2, max_length: 128}}\nteacher: {{model: {folder}}}\n")
    assert load_recipe(ok).task.max_length == 128
    p = write(tmp_path, f"task: {{name: sst2, max_length: 129}}\nteacher: {{model: {folder}}}\n")
    with pytest.raises(CompressError, match=r"r\.yaml: task\.max_length: 129 tokens exceed the 128 positions of "
                                            r"teacher\.model '.*mpnet' \(max_position_embeddings\); use at most 128"):
        load_recipe(p)
    p = write(tmp_path, "task: {name: sst2, max_length: 600}\nteacher: {model: bert-base-uncased}\n"
                        "students: [{name: s, kind: narrow, init: minilm-l6, layers: 2}]\n")
    with pytest.raises(CompressError, match=r"exceed the 512 positions of students\[0\]\.init 'minilm-l6'"):
        load_recipe(p)


def test_a_json_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    """`write_json` writes aside and renames: a write that fails (a full disk) keeps the previous file whole and
    leaves no ``.name.tmp-PID`` behind (it was left in the stage folder)."""
    import pathlib

    from compress.manifest import read_json, write_json

    path = tmp_path / "manifest.json"
    write_json(path, {"a": 1})

    def full_disk(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_json(path, {"a": 2, "b": "x" * 100})
    monkeypatch.undo()
    assert read_json(path) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_validate_leaves_out_an_unlabelled_test_split_as_the_run_does(glue_dir, tmp_path, monkeypatch, capsys):
    """GLUE's own MRPC download has a test.tsv without labels: the run leaves it out with a note (`load_task`), so
    `compress validate` must not stop at "column 'Quality' not found" on the same files."""
    from compress.cli import main

    unlabelled_mrpc(glue_dir, tmp_path / "MRPC")
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    recipe = Path(__file__).resolve().parent.parent / "pipelines" / "mrpc.yaml"
    assert main(["validate", str(recipe)]) == 0
    out, err = capsys.readouterr()
    assert "test.tsv: no 'Quality' column (an unlabelled test split): no test metrics" in err
    assert "data rows: train 3668, dev 408" in out and "test" not in out.split("data rows:")[1]


@pytest.mark.parametrize("student, message", [
    ("{name: s, layers: 4, distill: {matches: [{teacher_layer: 13, student_layer: 4}]}}",
     r"students\[0\]\.distill\.matches\[0\]: teacher_layer 13: the teacher has 12 layers"),
    ("{name: s, kind: narrow, init: minilm-l6, layers: 4, distill: {matches: [{teacher_layer: 12, student_layer: 6}]}}",
     r"students\[0\]\.distill\.matches\[0\]: student_layer 6: the student has 4 layers"),
    ("{name: s, distill: {matches: [{teacher_layer: 12, student_layer: 7}]}}",  # layer_drop default: half, 6
     r"student_layer 7: the student has 6 layers"),
    ("{name: s, kind: narrow, layers: 2, hidden: 128, distill: {matches: [{teacher_layer: 2, student_layer: 3}]}}",
     r"student_layer 3: the student has 2 layers"),
    ("{name: s, kind: narrow, init: minilm-l6, distill: {matches: [{teacher_layer: 12, student_layer: 6, "
     "projection: none}]}}", r"matches\[0\]\.projection: none, but the student is 384 wide and the teacher 768"),
    ("{name: s, kind: narrow, init: minilm-l6, layers: 9}", r"students\[0\]\.layers: 9, but checkpoint 'minilm-l6' "
     r"has only 6 layers"),
    ("{name: s, keep_layers: [2, 13]}", r"students\[0\]\.keep_layers: layer 13 does not exist: the teacher has 12"),
    ("{name: s, layers: 1, distill: {two_step: true, layer_map: uniform, layer_map_features: [hidden], matches: "
     "[{teacher_layer: 12, student_layer: 1, weight: 0}]}}", r"distill\.two_step: every intermediate match has "
     r"weight 0"),
])
def test_distill_matches_and_depths_are_resolved_at_validation(tmp_path, student, message):
    """A match naming a layer a model lacks (or a depth the source model lacks) passed `compress validate` and was
    refused by the distill stage, after the teacher had trained: now the matches are resolved against the zoo's (or
    the folder's config.json) depths and widths as the recipe is read."""
    with pytest.raises(CompressError, match=message):
        load_recipe(write(tmp_path, f"task: {{name: sst2}}\nteacher: {{model: mpnet-base}}\nstudents: [{student}]\n"))


def test_matches_are_resolved_against_a_model_folder_and_a_hub_teacher_is_left_to_the_run(tmp_path, tiny_bert_dir):
    """A local teacher's depth comes from its config.json (the tiny model has 2 layers); with a hub teacher only the
    student's side is checked; the zoo's recorded shapes are the published config.json's."""
    import json

    from teachers.zoo import ZOO, resolve

    text = f"task: {{name: sst2}}\nteacher: {{model: {tiny_bert_dir}}}\nstudents: [{{name: s, layers: 1, " \
           f"distill: {{matches: [{{teacher_layer: 3, student_layer: 1}}]}}}}]\n"
    with pytest.raises(CompressError, match=r"teacher_layer 3: the teacher has 2 layers"):
        load_recipe(write(tmp_path, text))
    load_recipe(write(tmp_path, text.replace("teacher_layer: 3", "teacher_layer: 2")))
    hub = "task: {name: sst2}\nteacher: {model: org/some-bert}\nstudents: [{name: s, kind: narrow, init: minilm-l6, " \
          "distill: {matches: [{teacher_layer: 20, student_layer: %d}]}}]\n"
    load_recipe(write(tmp_path, hub % 6))  # the hub teacher's depth is checked when it loads
    with pytest.raises(CompressError, match=r"student_layer 7: the student has 6 layers"):
        load_recipe(write(tmp_path, hub % 7))
    fields = json.loads((Path(resolve("minilm-l6")) / "config.json").read_text())
    assert (ZOO["minilm-l6"].layers, ZOO["minilm-l6"].hidden) == (fields["num_hidden_layers"], fields["hidden_size"])
    assert (ZOO["mpnet-base"].layers, ZOO["mpnet-base"].hidden) == (12, 768)  # all-mpnet-base-v2's config.json


@pytest.mark.parametrize("bench, message", [
    ("{repeats: 0}", r"bench\.repeats: must be >= 1, got 0"),
    ("{dev_rows: 0}", r"bench\.dev_rows: must be >= 1, got 0"),
    ("{min_runs: 0}", r"bench\.min_runs: must be >= 1, got 0"),
    ("{warmup: -1}", r"bench\.warmup: must be >= 0, got -1"),
    ("{max_seconds: 0}", r"bench\.max_seconds: must be > 0, got 0"),
])
def test_bench_timing_fields_are_refused_one_by_name(tmp_path, bench, message):
    """The timing fields were refused together ("dev_rows, repeats and min_runs must be >= 1") without naming the one
    that is wrong."""
    with pytest.raises(CompressError, match=message):
        load_recipe(write(tmp_path, f"task: {{name: sst2}}\nteacher: {{}}\nbench: {bench}\n"))


def test_a_pruned_model_folders_widths_are_its_layers_own(tmp_path):
    """A pruned folder's config.json keeps its unpruned ancestor's num_attention_heads (HF's pruned_heads convention)
    and its widest FFN: `validate` refused `heads: 3` of a layer-drop student of a teacher pruned to 3 heads a layer
    as "the teacher has heads 4". Its layers' own counts: one number where they agree, one a layer where not."""
    from compress.config import model_widths

    fields = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 100}
    for sizes, widths in (([{"heads": 3, "ffn": 64}, {"heads": 3, "ffn": 64}], (3, 64)),
                          ([{"heads": 1, "ffn": 64}, {"heads": 3, "ffn": 40}], ([1, 3], [64, 40]))):
        (tmp_path / "config.json").write_text(json.dumps({**fields, "compress_layer_sizes": sizes}))
        assert model_widths(str(tmp_path)) == {"hidden": 32, "heads": widths[0], "ffn": widths[1], "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(fields))
    assert model_widths(str(tmp_path)) == {"hidden": 32, "heads": 4, "ffn": 64, "vocab_size": 100}


def test_a_key_given_twice_is_refused_not_silently_overwritten(tmp_path):
    """YAML lets a later key replace an earlier one: a recipe with two `teacher:` sections (or `epochs` twice) ran
    the last one's values without a word. Refused, naming the key and its line; anchors and merges still work."""
    with pytest.raises(CompressError, match=r"r\.yaml: teacher: given twice \(line 3, column 1\)"):
        load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {model: minilm-l6, epochs: 1}\n"
                                    "teacher: {model: minilm-l6, epochs: 3}\n"))
    # named by its whole path (the leaf alone was said: which section's epochs?)
    with pytest.raises(CompressError, match=r"r\.yaml: teacher\.epochs: given twice \(line 2, column 40\)"):
        load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {model: minilm-l6, epochs: 1, epochs: 3}\n"))
    with pytest.raises(CompressError, match=r"r\.yaml: students\[1\]\.train\.epochs: given twice \(line 6, "):
        load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {}\nstudents:\n  - {name: a}\n  - name: b\n"
                                    "    train: {epochs: 1, epochs: 2}\n"))
    recipe = load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: &t {model: minilm-l6, epochs: 1}\n"
                                         "students: [{name: s, train: {<<: {epochs: 1}, epochs: 2}}]\n"))
    assert recipe.teacher.epochs == 1 and recipe.students[0].train.epochs == 2


def test_a_stage_whose_needed_stage_is_not_configured_is_refused_before_anything_runs(tmp_path, capsys):
    """A bundle section without a quantize section: validate said ok, --dry-run died in a KeyError traceback and a run
    stopped only at the bundle stage, after the teacher had trained. Refused by validate and run, in one line."""
    from compress.cli import main

    # a bench section without a quantize section (nor a report section, whose timing its settings serve then) was
    # dropped: validate said "stages: teacher", --stage bench "not configured"; `compress search` times with them too
    for section in ("bundle", "bench"):
        p = write(tmp_path, f"task: {{name: sst2}}\nteacher: {{model: minilm-l6}}\n{section}: {{}}\n"
                            f"runs_dir: {tmp_path / 'runs'}\n")
        for argv in (["validate", str(p)], ["run", str(p), "--dry-run"], ["run", str(p), "--stage", "teacher"]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.strip().startswith(f"error: {p}: {section}: needs the quantize stage, which this recipe does "
                                          f"not configure (add a quantize section"), err
        assert not (tmp_path / "runs" / "r").exists()
    for other in ("report: {}", "search: {budget_ms: 3}"):  # their timing takes the bench settings
        assert main(["validate", str(write(tmp_path, f"task: {{name: sst2}}\nteacher: {{model: minilm-l6}}\n"
                                                     f"bench: {{rounds: 5}}\n{other}\n"))]) == 0, other


def test_an_empty_stage_section_is_refused(tmp_path):
    """``quantize:`` with its keys commented out read as no quantize section: the stage was off without a word
    (``students:`` alike), while ``teacher:`` so written was refused. ``quantize: null`` turns it off on purpose."""
    for section, hint in (("quantize", "write `quantize: {}` for its defaults"), ("bench", "write `bench: {}`"),
                          ("students", "list one student at least")):
        with pytest.raises(CompressError, match=rf"^.*r\.yaml: {section}: an empty section \({re.escape(hint)}"):
            load_recipe(write(tmp_path, f"task: {{name: sst2}}\nteacher: {{}}\n"
                                        f"{'quantize: {}' if section != 'quantize' else ''}\n{section}:\n"
                                        f"  # modes: [dynamic]\n"))
    assert load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {}\nquantize:\n"),
                       {"quantize": {"modes": ["dynamic"]}}).quantize.modes == ["dynamic"]  # given whole by --set
    for off in ("null", "~", "Null", "!!null", "!!null ''"):
        assert load_recipe(write(tmp_path, f"task: {{name: sst2}}\nteacher: {{}}\nquantize: {off}\n")).quantize is None


def test_unknown_keys_that_are_not_all_strings_are_one_line(tmp_path):
    """A recipe with a stray numeric (or yes/no) key beside another unknown one died in a TypeError traceback
    (sorting 1 and 'foo'); it is refused like any unknown key."""
    with pytest.raises(CompressError, match=r"r\.yaml: 1: unknown key \(known keys: name, task, "):
        load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {model: minilm-l6}\n1: x\nfoo: y\n"))
    with pytest.raises(CompressError, match=r"r\.yaml: teacher\.True: unknown key"):
        load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {model: minilm-l6, yes: 1, lr_rate: 2}\n"))


def test_a_number_in_exponent_notation_without_a_dot_is_a_number(tmp_path, capsys):
    """`lr: 2e-5` (how learning rates are written) was refused: "teacher.lr: expected a number, got '2e-5'" (PyYAML
    reads YAML 1.1, where an exponent needs a dot: 2.0e-5). It is the number, in the file and with --set; a word still
    is not."""
    from compress.cli import main

    p = write(tmp_path, "task: {name: sst2}\nteacher: {model: minilm-l6, lr: 2e-5}\n")
    assert load_recipe(p).teacher.lr == 2e-5
    assert load_recipe(p, {"teacher.lr": "3E+2"}).teacher.lr == 300.0
    assert main(["validate", str(p), "--set", "teacher.warmup_ratio=1e-1"]) == 0
    with pytest.raises(CompressError, match=r"teacher\.lr: expected a number, got 'e-5'"):
        load_recipe(p, {"teacher.lr": "e-5"})


def test_a_custom_task_file_under_an_unknown_split_name_is_refused(tmp_path):
    """task.files is split -> file, and a run reads train, dev and test only: `tset: t.tsv` (a typo) validated, its
    rows were even counted, and the run left the test split out without a word."""
    with pytest.raises(CompressError, match=r"r\.yaml: task\.files\.tset: unknown split \(splits: train, dev, test\)"):
        load_recipe(write(tmp_path, "task: {name: x, labels: [a, b], files: {train: a.tsv, dev: b.tsv, tset: c.tsv}}"
                                    "\nteacher: {model: minilm-l6}\n"))
    assert load_recipe(write(tmp_path, "task: {name: x, labels: [a, b], files: {train: a.tsv, dev: b.tsv, test: c.tsv}}"
                                       "\nteacher: {model: minilm-l6}\n")).task.files["test"] == "c.tsv"


def test_forcing_a_stage_the_run_does_not_include_is_refused(tmp_path, capsys):
    """`compress run R --stage teacher --force quantize` (or --force distill on a recipe without students) redid
    nothing and said nothing, exit 0: the stage the user asked to redo was silently not redone."""
    from compress.cli import main

    p = write(tmp_path, f"task: {{name: sst2}}\nteacher: {{model: minilm-l6}}\nquantize: {{}}\n"
                        f"runs_dir: {tmp_path / 'runs'}\n")
    for extra, said in ((["--force", "distill"], "--force distill: not a stage of this run (teacher, quantize)"),
                        (["--stage", "teacher", "--force", "quantize"], "--force quantize: not a stage of this run "
                                                                         "(teacher)")):
        for argv in (["run", str(p), "--dry-run", *extra], ["run", str(p), *extra]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.strip() == f"error: {said}", err
    assert not (tmp_path / "runs" / "r").exists()
    assert main(["run", str(p), "--dry-run", "--force", "all", "--stage", "teacher"]) == 0


def test_a_path_from_the_home_folder_is_expanded(tmp_path, monkeypatch):
    """`runs_dir: ~/runs` made a folder named `~` in the current folder (the shell expands ~, YAML does not), and a
    `teacher.model: ~/models/x` folder that exists was "no such folder". Recipe paths starting with ~ are the home
    folder's; a name with ~ elsewhere is left as it is."""
    import os

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "runs" / "other" / "teacher").mkdir(parents=True)
    (tmp_path / "models" / "x").mkdir(parents=True)
    (tmp_path / "models" / "x" / "config.json").write_text('{"model_type": "bert", "max_position_embeddings": 512}')
    (tmp_path / "models" / "x" / "tokenizer.json").write_text("{}")
    recipe = load_recipe(write(tmp_path, "task: {name: x, labels: [a, b], data_dir: ~/data, files: {train: ~/a.tsv, "
                                         "dev: b~.tsv}}\nteacher: {model: ~/models/x}\nruns_dir: ~/runs\n"
                                         "report: {compare: [~/runs/other]}\n"))
    assert recipe.run_dir == tmp_path / "runs" / "r" and recipe.task.data_dir == str(tmp_path / "data")
    assert recipe.task.files == {"train": str(tmp_path / "a.tsv"), "dev": "b~.tsv"}
    assert recipe.report.compare == [str(tmp_path / "runs" / "other")]
    assert recipe.teacher.model == str(tmp_path / "models" / "x") and os.path.expanduser("~") == str(tmp_path)


def test_a_seed_numpy_cannot_take_is_refused_at_validation(tmp_path):
    """`seed: -1` (or a teacher/student seed past 2**32) validated, then the teacher stage died in a ValueError
    traceback from the seeded shuffle ("expected non-negative integer") or numpy's seeding."""
    base = "task: {name: sst2}\nteacher: {model: minilm-l6%s}\n"
    for text, key in ((base % "" + "seed: -1\n", "seed"), (base % ", seed: 4294967296", "teacher.seed"),
                      (base % "" + "students: [{name: s, train: {seed: -2}}]\n", r"students\[0\]\.train\.seed"),
                      (base % "" + "students: [{name: s, distill: {augment: {seed: -1}}}]\n",
                       r"students\[0\]\.distill\.augment\.seed")):
        with pytest.raises(CompressError, match=rf"r\.yaml: {key}: must be from 0 to 2147483647, got -?\d+"):
            load_recipe(write(tmp_path, text))
    assert load_recipe(write(tmp_path, base % ", seed: 0" + "seed: 2147483647\n")).seed == 2147483647


@pytest.mark.parametrize("name", ["metrics.json", "transfer", "teacher_logits.npy"])
def test_a_student_named_as_a_distill_file_is_refused_at_validation(tmp_path, name):
    """A student named metrics.json passed validation and failed (or overwrote the stage's own file) only when the
    distill stage finished, after the teacher and every student trained."""
    from compress.config import DISTILL_FILES, AugmentConfig, transfer_folder
    from compress.distill import stage

    transfer = transfer_folder(AugmentConfig(), "s").split("/")[0]
    assert {stage.TEACHER_LOGITS, transfer, "metrics.json", "teacher_logits.json"} <= set(DISTILL_FILES)
    with pytest.raises(CompressError, match=rf"students\[0\]\.name: '{re.escape(name)}' is a file the distill stage "
                                            r"writes"):
        load_recipe(write(tmp_path, f"task: {{name: sst2}}\nteacher: {{}}\nstudents: [{{name: {name}}}]\n"))


def test_an_anchor_overriding_its_merge_is_not_a_key_given_twice_when_merged_again(tmp_path):
    """A mapping that merges an anchor and overrides one of its keys (`<<: *ta` then `lr:`), itself merged again
    from a section the loader reaches first (`prune.recover: {<<: *tb}`): PyYAML flattens the anchored mapping in
    place when the later section merges it, so the duplicate-key check, run when the anchored mapping was built,
    saw the merged `lr` beside the explicit one and refused a valid recipe ("lr: given twice")."""
    recipe = load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {model: minilm-l6, epochs: 1}\n"
                                         "students:\n  - name: a\n    train: &ta\n      epochs: 3\n      lr: 1.0e-4\n"
                                         "  - name: b\n    train: &tb\n      <<: *ta\n      lr: 2.0e-4\n"
                                         "prune:\n  heads: 0.5\n  recover:\n    <<: *tb\n    epochs: 1\n"))
    assert recipe.students[1].train.lr == 2.0e-4 and recipe.students[1].train.epochs == 3
    assert recipe.prune.recover.lr == 2.0e-4 and recipe.prune.recover.epochs == 1
    with pytest.raises(CompressError, match=r"r\.yaml: students\[1\]\.train\.lr: given twice \(line 12, column 7\)"):
        load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {model: minilm-l6, epochs: 1}\n"
                                    "students:\n  - name: a\n    train: &ta\n      epochs: 3\n      lr: 1.0e-4\n"
                                    "  - name: b\n    train: &tb\n      <<: *ta\n      lr: 2.0e-4\n      lr: 3.0e-4\n"
                                    "prune:\n  heads: 0.5\n  recover:\n    <<: *tb\n    epochs: 1\n"))


@pytest.mark.parametrize("sets, message", [
    # a student named as a stage: prune.source / quantize.source would read the teacher's (or prune's) model instead
    ({"students.0.name": "teacher"}, r"students\[0\]\.name: 'teacher' names a stage's model"),
    ({"students.0.name": "prune"}, r"students\[0\]\.name: 'prune' names a stage's model"),
    # widths of copied layers: refused by the distill stage, after the teacher had trained
    ({"students.0.hidden": 512}, r"students\[0\]\.hidden: 512, but the teacher has hidden 384; its layers are copied "
                                 r"whole \(leave hidden out, or use kind: narrow"),
    ({"students.0.kind": "narrow", "students.0.init": "minilm-l6", "students.0.heads": 6},
     r"students\[0\]\.heads: 6, but checkpoint 'minilm-l6' has heads 12; .*or use init: random"),
    ({"students.0.kind": "narrow", "students.0.init": "minilm-l6", "students.0.ffn": 100},
     r"students\[0\]\.ffn: 100, but checkpoint 'minilm-l6' has ffn 1536"),
    ({"students.0.layers": None, "students.0.keep_layers": [3, 1]},
     r"students\[0\]\.keep_layers: list the layers in increasing order, got \[3, 1\]"),
    # recovery on a transfer set that cannot exist: refused by the prune stage, after teacher and students trained
    ({"prune.recover.data": "transfer"}, r"prune\.recover\.data: transfer: student 'minilm-l3' has no "
                                         r"distill\.augment"),
    ({"prune.recover.data": "transfer", "prune.source": "teacher"},
     r"prune\.recover\.data: transfer: needs a distilled student as prune\.source \(got 'teacher'\)"),
    ({"prune.recover.data": "transfer", "prune.recover.kd_weight": 0},
     r"prune\.recover\.data: transfer: needs prune\.recover\.kd_weight > 0"),
    ({"prune.recover.data": "transfer", "students.0.distill.augment": {"copies": 2}},  # layer_map: joint step only
     r"prune\.recover\.data: transfer: the transfer set of student 'minilm-l3' gets no saved teacher logits"),
    # held-out guard rows that cannot exist: refused by the quantize stage, after three stages had run
    ({"task.holdout": 0, "quantize.guard_rows": "holdout"}, r"quantize\.guard_rows: holdout, but task\.holdout is 0"),
    # a layer the pruned model lacks: refused by the prune stage after Taylor scoring; no cut at all: a recovery only
    ({"prune.layers": {"layer.3": {"heads": 0.5}}}, r"prune\.layers\.layer\.3: no such layer: the model pruned "
                                                  r"\(minilm-l3\) has 3 layers \(layer\.0 to layer\.2\)"),
    ({"prune.layers": {"layer.2": {}}, "prune.keep_macs": None}, r"prune: nothing to prune"),
    ({"prune.keep_macs": 1.0}, r"prune: nothing to prune"),
    # `compress search` refused these at once; the report timed at the bench defaults and left the speedups empty
    ({"search.depths": [7]}, r"search\.depths: 7 layers, but the teacher has 6"),
    ({"report.threads": 3, "bench": None}, r"report\.threads: 3 is not one of the thread counts the report times "
                                           r"without a bench section \[1, 2\]"),
    # settings that were accepted and did nothing
    ({"students.0.distill.intermediate_max_steps": 5},
     r"students\[0\]\.distill\.intermediate_max_steps: sets two_step's intermediate step"),
    ({"students.0.kind": "narrow", "students.0.hidden": 64, "students.0.layers": None,
      "students.0.keep_layers": [1, 2]},
     r"students\[0\]\.keep_layers: picks layers of a checkpoint \(init\) or of the teacher"),
    ({"students.0.distill.matches": [{"teacher_layer": 2, "student_layer": 1, "feature": "attention",
                                      "projection": "linear"}]},
     r"students\[0\]\.distill\.matches\[0\]\.projection: only for hidden and embedding matches"),
    # refused by the bench stage, after teacher, distill, prune and quantize had run
    ({"bench.seq_lengths": [600]}, r"bench\.seq_lengths: 600 tokens exceed the 512 positions of the model the bench "
                                   r"times \(teacher\.model 'minilm-l6': max_position_embeddings\); use at most 512"),
    # a random student's table is max(512, the teacher's): it was not checked at all
    ({"students.0": {"name": "s", "kind": "narrow", "hidden": 64, "layers": 1}, "bench.seq_lengths": [600]},
     r"bench\.seq_lengths: 600 tokens exceed the 512 positions of the model the bench times \(students\[0\], a "
     r"random student \(max\(512, the teacher's positions\)\)\); use at most 512"),
    # a traceback (_prune_source read prune.source of no prune section) before the source was checked
    ({"prune": None, "quantize.source": "prune"}, r"quantize\.source: 'prune' is not one of this recipe's models "
                                                  r"\(teacher, minilm-l3\)"),
    # past a C int: an OverflowError or islice's ValueError traceback mid-run; 100000 threads hung the machine
    ({"teacher.batch_size": 10**20}, r"teacher\.batch_size: expected an integer from -9223372036854775807 to "
                                     r"9223372036854775807, got 100000000000000000000"),
    ({"bench.threads": [1, 100000]}, r"bench\.threads\[1\]: must be from 1 to 1024, got 100000"),
    ({"search.threads": 2000}, r"search\.threads: must be from 1 to 1024, got 2000"),
])
def test_validation_refuses_what_a_later_stage_would_refuse_after_earlier_ones_trained(sets, message):
    """Each of these passed `validate` and stopped the run only in the distill, prune or quantize stage; a student named
    'teacher' was never refused: prune and quantize then silently took the real teacher."""
    with pytest.raises(CompressError, match=r"quickstart\.yaml: " + message):
        load_recipe(ROOT / "pipelines" / "quickstart.yaml", sets)


@pytest.mark.parametrize("sets, message", [
    ({"task.max_train_samples": 0}, r"task\.max_train_samples: must be >= 1, got 0"),
    ({"teacher.eval_every": 0}, r"teacher\.eval_every: must be >= 1, got 0"),
    ({"teacher.weight_decay": -0.1}, r"teacher: weight_decay and max_grad_norm must be >= 0, got -0\.1 and 1\.0"),
    ({"students.0.distill.temperature": 0}, r"students\[0\]\.distill\.temperature: must be > 0, got 0"),
    ({"students.0.distill.hard_label_weight": -1}, r"students\[0\]\.distill\.hard_label_weight: must be >= 0, got -1"),
    ({"students.0.distill.matches": [{"teacher_layer": -1, "student_layer": 1}]},
     r"students\[0\]\.distill\.matches\[0\]: layers count from 1 \(0 = embeddings\), got "),
    ({"students.0.distill.matches": [{"teacher_layer": 2, "student_layer": 1, "weight": -1}]},
     r"students\[0\]\.distill\.matches\[0\]\.weight: must be >= 0, got -1"),
    ({"students.0.layers": 0}, r"students\[0\]\.layers: must be >= 1, got 0"),
    ({"students.0.layers": None, "students.0.keep_layers": [0, 1]},
     r"students\[0\]\.keep_layers: a non-empty list of layers counted from 1"),
    ({"students.0.layers": 3, "students.0.keep_layers": [1, 2]}, r"students\[0\]: layers=3 but keep_layers lists "),
    ({"students.0.init": "minilm-l6"}, r"students\[0\]\.init: layer_drop students always start from the teacher's "
                                       r"weights"),
    ({"students.0.kind": "narrow", "students.0.layers": None, "students.0.hidden": 64},
     r"students\[0\]\.layers: a narrow student with random init needs layers"),
    ({"prune.recover.temperature": -1}, r"prune\.recover\.temperature: must be > 0, got -1"),
    ({"prune.recover.kd_weight": -0.5}, r"prune\.recover\.kd_weight: must be >= 0, got -0\.5"),
    ({"prune.calibration_batches": 0}, r"prune\.calibration_batches: must be >= 1, got 0"),
    ({"quantize.calibration": {"percentile": 80, "method": "percentile"}},
     r"quantize\.calibration\.percentile: must be in \[90, 100\], got 80"),
    ({"quantize.parity_atol": 0}, r"quantize: parity_atol must be > 0 and parity_min_agreement in \(0, 1\]"),
    ({"quantize.parity_min_agreement": 1.5}, r"quantize: parity_atol must be > 0 and parity_min_agreement in "),
    ({"bench.threads": []}, r"bench\.threads: give at least one thread count"),
    ({"bundle.max_drop": -1}, r"bundle\.max_drop: must be >= 0, got -1"),
    ({"bundle.verify_tolerance": -0.01}, r"bundle\.verify_tolerance: must be >= 0, got -0\.01"),
    ({"search.time_limit_min": -1}, r"search\.time_limit_min: must be >= 0, got -1"),
    ({"search.recover_steps": 0}, r"search\.recover_steps: must be >= 1, got 0"),
    ({"search.depths": []}, r"search\.depths: a non-empty list of layer counts >= 1, got \[\]"),
    ({"search.modes": []}, r"search\.modes: give at least one of dynamic, static"),
])
def test_a_value_out_of_range_is_refused_naming_its_field(sets, message):
    """Each range check of the typed config: one line that names the recipe file, the field and the value."""
    with pytest.raises(CompressError, match=r"quickstart\.yaml: " + message) as e:
        load_recipe(ROOT / "pipelines" / "quickstart.yaml", sets)
    assert "\n" not in str(e.value)


def test_a_transfer_set_some_student_saves_is_accepted_for_recovery():
    """The transfer-set check refuses only what can never exist: a logit-only student of the same augment setting
    (here the one pruned: no intermediate matches) saves it."""
    sets = {"prune.recover.data": "transfer", "students.0.distill.augment": {"copies": 2},
            "students.0.distill.layer_map": None}
    recipe = load_recipe(ROOT / "pipelines" / "quickstart.yaml", sets)
    assert recipe.students[0].distill.caches_transfer_logits()


def test_validate_refuses_a_holdout_that_rounds_to_no_rows(tmp_path):
    """`task.holdout: 0.000001` of SST-2's 67,349 rows is no row: validate said ok; the run stopped at the teacher
    with an error naming no file."""
    out = subprocess.run([sys.executable, "-m", "compress", "validate", str(ROOT / "pipelines" / "quickstart.yaml"),
                          "--set", "task.holdout=0.000001"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0
    assert out.stderr.strip() == (f"error: {ROOT / 'pipelines' / 'quickstart.yaml'}: task.holdout: 1e-06 of 67349 "
                                  f"training rows holds out nothing (raise it, or 0 for none)")


def test_zoo_widths_are_the_published_configs():
    """`model_widths` of a zoo model (for the copied-widths check, before the model is installed) against its
    config.json."""
    from compress.config import model_widths
    from teachers.zoo import resolve

    fields = json.loads((Path(resolve("minilm-l6")) / "config.json").read_text())
    assert model_widths("minilm-l6") == {"hidden": fields["hidden_size"], "heads": fields["num_attention_heads"],
                                         "ffn": fields["intermediate_size"], "vocab_size": fields["vocab_size"]}
    assert model_widths("mpnet-base") == {"hidden": 768, "heads": 12, "ffn": 3072, "vocab_size": 30527}


def test_set_reaches_a_prune_layer_override_whose_name_has_dots():
    """`--set prune.layers.layer.0.heads=0.5` was split at every dot: "prune.layers.layer.0: unknown key"."""
    path = ROOT / "pipelines" / "quickstart.yaml"
    recipe = load_recipe(path, {"prune.layers.layer.0.heads": 0.5, "prune.layers.bert.encoder.layer.2.ffn": 0.25})
    assert recipe.section("prune")["layers"] == {"layer.0": {"heads": 0.5, "ffn": None},
                                                 "bert.encoder.layer.2": {"heads": None, "ffn": 0.25}}
    assert load_recipe(path, {"prune.source": "teacher", "prune.layers.layer.5.heads": 0.5}).prune.layers  # 6 there


def test_a_random_students_own_embeddings_cannot_pick_augmentation_neighbours(tmp_path):
    """`augment.embeddings: student` of a narrow student of random init: the neighbours of random vectors are any
    words ("movie that effectively combines" became "dempsey that outlined combines"); validated, and run without a
    word (found by an augmentation walkthrough). A checkpoint student's own table is a trained one."""
    base = ("task: {name: sst2}\nteacher: {model: minilm-l6}\nstudents:\n  - {name: s, kind: narrow, %s, "
            "distill: {augment: {copies: 1, embeddings: student}}}\n")
    with pytest.raises(CompressError, match=r"students\[0\]\.distill\.augment\.embeddings: student, but a random "
                                            r"student's embeddings are random"):
        load_recipe(write(tmp_path, base % "layers: 1, hidden: 64"))
    assert load_recipe(write(tmp_path, base % "init: minilm-l6, layers: 2")).students[0].init == "minilm-l6"


def test_recovery_on_a_transfer_set_another_student_labels_only_when_they_share_it(tmp_path):
    """A student whose distillation saves no teacher logits on its transfer set can recover on the set another student
    of the same augment setting saves; with `embeddings: student` each student has its own set, so it cannot (it
    validated, then the prune stage found no transfer set after teacher and students had trained)."""
    recipe = ("task: {name: sst2}\nteacher: {model: minilm-l6}\nstudents:\n"
              "  - {name: a, kind: layer_drop, layers: 3, distill: {augment: %s, layer_map: uniform}}\n"
              "  - {name: b, kind: layer_drop, layers: 2, distill: {augment: %s}}\n"
              "prune: {heads: 0.5, source: a, recover: {data: transfer}}\n")
    shared = "{copies: 1}"
    assert load_recipe(write(tmp_path, recipe % (shared, shared))).prune.source == "a"
    own = "{copies: 1, embeddings: student}"
    with pytest.raises(CompressError, match=r"prune\.recover\.data: transfer: the transfer set of student 'a' gets "
                                            r"no saved teacher logits"):
        load_recipe(write(tmp_path, recipe % (own, own)))


def test_set_changes_values_of_the_recipe_and_adds_no_stage(tmp_path, monkeypatch, capsys):
    """--set into a stage section the recipe lacks added that stage with every other setting at its default; a
    missing prune.recover started from TrainConfig's defaults (3 epochs at 5e-5) for one key set, not the recovery's
    (1 at 1e-4); a key given twice kept its first place (the second value lost to a later one set in between); a value
    refused named only the recipe file, which does not hold it."""
    from compress.cli import _overrides, main

    p = write(tmp_path, "task: {name: sst2}\nteacher: {}\nprune: {keep_macs: 0.5}\n")
    with pytest.raises(CompressError, match=r"^--set quantize\.max_drop: the recipe has no quantize section \(that "
                                            r"stage does not run\); add it to the recipe, or set the whole section"):
        load_recipe(p, {"quantize.max_drop": 0.5})
    assert load_recipe(p, {"quantize": {"max_drop": 0.5}}).quantize.max_drop == 0.5  # the whole section: asked for
    off = write(tmp_path, "task: {name: sst2}\nteacher: {}\nprune: null\n")  # null: that stage does not run either
    with pytest.raises(CompressError, match=r"^--set prune\.heads: the recipe has no prune section"):
        load_recipe(off, {"prune.heads": 0.5})
    with pytest.raises(CompressError, match=r"^--set prune\.recover\.lr: prune\.recover is null \(off\) in the recipe"):
        load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {}\nprune: {heads: 0.5, recover: null}\n"),
                    {"prune.recover.lr": 1e-3})  # it turned recovery back on, at the left-out defaults
    with pytest.raises(CompressError, match=r"^--set prune\.recover\.lr: prune\.recover is null \(off\) by --set "
                                            r"prune; set the whole of it to turn it on: --set 'prune\.recover=\{\.\.\.\}'$"):
        load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {}\n"),  # null there, not in the recipe
                    {"prune": {"heads": 0.5, "recover": None}, "prune.recover.lr": 1e-3})
    # the whole section given after a key inside it: the section goes in first, the key adds to it
    added = load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {}\n"), {"prune.keep_macs": 0.5, "prune": {}})
    assert added.prune.keep_macs == 0.5
    bare = write(tmp_path, "task: {name: sst2}\n")  # the teacher section is required, not a stage to add
    assert load_recipe(bare, {"teacher.model": "minilm-l6"}).teacher.model == "minilm-l6"
    p = write(tmp_path, "task: {name: sst2}\nteacher: {}\nprune: {keep_macs: 0.5}\n")
    assert load_recipe(p, {"search.budget_ms": 3.0}).search.budget_ms == 3.0  # compress search's settings, no stage
    recover = load_recipe(p, {"prune.recover.temperature": 3.0}).prune.recover
    assert (recover.temperature, recover.epochs, recover.lr) == (3.0, 1.0, 1.0e-4)
    assert load_recipe(p).prune.recover.epochs == 1.0
    sets = _overrides(["teacher.epochs=5", "teacher={epochs: 2}", "teacher.epochs=7"])
    assert list(sets.items()) == [("teacher", {"epochs": 2}), ("teacher.epochs", 7)]
    assert load_recipe(p, sets).teacher.epochs == 7
    with pytest.raises(CompressError) as e:
        load_recipe(p, {"teacher.epochs": True})
    assert str(e.value).endswith("(a value given with --set teacher.epochs)")
    with pytest.raises(CompressError) as e:  # the most specific override: the section's --set came first
        load_recipe(p, {"prune": {"keep_macs": 0.5}, "prune.recover.teacher": "nope"})
    assert str(e.value).endswith("(a value given with --set prune.recover.teacher)"), str(e.value)
    with pytest.raises(CompressError) as e:  # a section refused as a whole
        load_recipe(p, {"prune.keep_macs": None})
    assert str(e.value).endswith("(the section holds a value given with --set prune.keep_macs)"), str(e.value)
    with pytest.raises(CompressError) as e:
        load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {epochs: yes}\n"))
    assert "--set" not in str(e.value)  # the file's own mistake
    # --runs-dir=~/x: no shell expands that ~ (docs/cli.md: a leading ~ is the home folder)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    p = write(tmp_path, "task: {name: sst2}\nteacher: {}\n")
    assert main(["run", str(p), "--dry-run", "--runs-dir=~/rr"]) == 0
    assert f"run folder: {tmp_path / 'home' / 'rr'}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["x" * 201, "a\nb", "a\x00b", "   ", "tab\there"])
def test_a_name_that_is_no_folder_name_is_refused_in_validation(tmp_path, name):
    """A 300-character name passed validate and crashed the run with "OSError: File name too long"; a NUL byte with
    "ValueError: embedded null byte"; a newline or blanks made odd folders. The same for a student's name (its folder
    under distill/) and a bundle's."""
    base = "task: {name: sst2}\nteacher: {}\n"
    for text, where in ((f"name: {json.dumps(name)}\n{base}", "name"),
                        (f"{base}students: [{{name: {json.dumps(name)}, kind: layer_drop, layers: 1}}]\n",
                         r"students\[0\]\.name"),
                        (f"{base}quantize: {{}}\nbundle: {{name: {json.dumps(name)}}}\n", r"bundle\.name")):
        with pytest.raises(CompressError, match=rf": {where}: a plain folder name is needed"):
            load_recipe(write(tmp_path, text))


def test_a_task_name_that_cannot_name_the_bundle_is_refused_in_validation(tmp_path, capsys):
    """The default bundle name is <recipe>-<task>-int8: a task named "my reviews/v2" passed `compress validate` and
    stopped the run at its bundle stage, after every other stage had trained, with an error naming no setting."""
    from compress.cli import main

    custom = (CUSTOM % "").replace("name: mine", "name: 'my reviews/v2'")
    with pytest.raises(CompressError, match=r": task\.name: 'my reviews/v2' goes into the bundle's name "
                                            r"\(<recipe>-<task>-int8\), a plain folder name .*: rename the task or set "
                                            r"bundle\.name$"):
        load_recipe(write(tmp_path, f"name: r\n{custom}quantize: {{}}\nbundle: {{}}\n"))
    load_recipe(write(tmp_path, f"name: r\n{custom}quantize: {{}}\nbundle: {{name: reviews}}\n"))  # named: fine
    load_recipe(write(tmp_path, f"name: r\n{custom}"))  # no bundle: the task's name names no folder
    # `compress search --bundle` names its bundle so too: refused before the search (which takes up to its time limit)
    path = write(tmp_path, f"name: r\n{custom}")
    assert main(["search", str(path), "--budget-ms", "5", "--bundle", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "task.name: 'my reviews/v2' goes into the bundle's name" in err and "bundle.name" not in err, err


def test_a_percentile_read_by_no_calibration_method_is_refused(tmp_path):
    """`quantize.calibration.percentile` with method minmax or entropy is read by nothing, yet changed the quantize
    stage's fingerprint (a rerun for nothing)."""
    base = "task: {name: sst2}\nteacher: {}\nquantize: {calibration: {method: %s, percentile: 99.9}}\n"
    for method in ("minmax", "entropy"):
        with pytest.raises(CompressError, match=rf"quantize\.calibration\.percentile: read with method: percentile "
                                                rf"only \(method is '{method}'\)"):
            load_recipe(write(tmp_path, base % method))
    assert load_recipe(write(tmp_path, base % "percentile")).quantize.calibration.percentile == 99.9


def test_an_empty_recipe_says_so(tmp_path):
    """An empty or comment-only recipe said "a recipe is a mapping of sections, got NoneType"."""
    for text in ("", "# nothing yet\n"):
        with pytest.raises(CompressError, match=r"r\.yaml: the recipe is empty \(task: and teacher: at least"):
            load_recipe(write(tmp_path, text))
    with pytest.raises(CompressError, match=r"a recipe is a mapping of sections, got list"):
        load_recipe(write(tmp_path, "- a\n"))
    with pytest.raises(CompressError, match=r"a recipe is a mapping of sections, got int$"):  # was "got _YamlInt"
        load_recipe(write(tmp_path, "42\n"))


def test_a_bundle_named_as_the_stages_manifest_is_refused_in_validation(tmp_path):
    """bundle.name: manifest.json validated, then the stage failed on its own temporary file ("Is a directory")."""
    with pytest.raises(CompressError, match=r": bundle\.name: 'manifest\.json' is the file the bundle stage writes "
                                            r"beside the bundle; choose another name$"):
        load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {}\nquantize: {}\nbundle: {name: manifest.json}\n"))
    assert load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {}\nquantize: {}\nbundle: {name: m.json}\n"))


def test_search_says_to_train_the_teacher_with_the_same_settings(tmp_path):
    """`compress search R --set teacher.max_steps=4` on a run whose teacher was made without it said to run `compress
    run R --stage teacher`, which found that teacher up to date: the hint carries the --set pairs."""
    from compress.config import search_settings

    p = write(tmp_path, f"name: s\nruns_dir: {tmp_path / 'runs'}\ntask: {{name: sst2}}\nteacher: {{}}\n")
    with pytest.raises(CompressError) as e:
        search_settings(load_recipe(p, {"teacher.max_steps": 4, "teacher.lr": 0.002}), budget_ms=3.0)
    assert str(e.value).endswith(f"run `compress run {p} --stage teacher --runs-dir {tmp_path / 'runs'} --set "
                                 f"teacher.max_steps=4 --set teacher.lr=0.002` first")


def test_a_tokenizer_json_that_is_not_json_is_refused_in_one_line(tmp_path, tiny_bert_dir):
    """A garbage tokenizer.json passed `validate` and stopped the run with the tokenizers library's bare Exception
    traceback ("expected value at line 1 column 1"); a narrow student's tokenizer folder only at the distill stage."""
    from compress.modeling import load_tokenizer

    (tiny_bert_dir / "tokenizer.json").write_text("garbage{")
    with pytest.raises(CompressError, match=rf"teacher\.model: {tiny_bert_dir / 'tokenizer.json'}: unreadable "
                                            r"\(Expecting value: line 1 column 1"):
        load_recipe(write(tmp_path, f"task: {{name: sst2}}\nteacher: {{model: {tiny_bert_dir}}}\n"))
    with pytest.raises(CompressError, match=r"^cannot load its tokenizer \(Exception: expected value at line 1"):
        load_tokenizer(str(tiny_bert_dir), {}, "cannot load its tokenizer", "save one there")


def test_bench_lengths_are_checked_against_the_model_the_bench_times(tmp_path, tiny_bert_dir):
    """The bench times the quantize source alone: a student of 512 positions may be timed at 256 tokens though the
    teacher (128 positions) could not be."""
    text = (f"task: {{name: sst2, max_length: 64}}\nteacher: {{model: {tiny_bert_dir}}}\nstudents: [{{name: s, kind: "
            f"narrow, init: minilm-l6}}]\nquantize: {{source: %s}}\nbench: {{seq_lengths: [32, 256]}}\n")
    assert load_recipe(write(tmp_path, text % "s")).bench.seq_lengths == [32, 256]
    with pytest.raises(CompressError, match=r"bench\.seq_lengths: 256 tokens exceed the 128 positions of the model "
                                            r"the bench times \(teacher\.model "):
        load_recipe(write(tmp_path, text % "teacher"))


def test_a_name_written_as_a_number_keeps_its_text_and_base_60_is_refused(tmp_path):
    """`name: 007` made runs/7 (str of the YAML int), 0x1F runs/31, 1_000 runs/1000; `max_steps: 1:30` (YAML 1.1's
    base 60) validated as 90 (found by a review of the recipes)."""
    base = "task: {name: sst2}\nteacher: {}\n"
    for text in ("007", "0x1F", "1_000", "42"):
        assert load_recipe(write(tmp_path, f"name: {text}\n{base}")).name == text
        assert load_recipe(write(tmp_path, base), {"name": yaml_value(text)}).name == text
    custom = load_recipe(write(tmp_path, "task: {name: mine, files: {train: a.tsv, dev: b.tsv}, labels: [0, 01]}\n"
                                          "teacher: {}\n"))
    assert custom.task.labels == ["0", "01"]
    with pytest.raises(CompressError, match=r"teacher\.max_steps: 1:30 is a YAML 1\.1 base-60 number \(90\); write "
                                            r"the number"):
        load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {max_steps: 1:30}\n"))
    assert load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {max_steps: 0x10}\n")).teacher.max_steps == 16
    assert type(load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {max_steps: 90}\n")).teacher.max_steps) is int


def test_one_key_of_a_section_that_is_off_when_left_out_does_not_turn_it_on(tmp_path):
    """`--set students.0.distill.augment.seed=1` on a recipe without `augment:` turned augmentation on with every
    other setting at its default; with `augment: null` (the same meaning) it was refused (found by a review)."""
    base = "task: {name: sst2}\nteacher: {}\nstudents:\n  - {name: s, layers: 2%s}\n"
    for text, said in ((base % "", "left out"), (base % ", distill: {augment: null}", "null")):
        with pytest.raises(CompressError, match=rf"--set students\.0\.distill\.augment\.seed: students\.0\.distill\."
                                                rf"augment is {said} \(off\) in the recipe; set the whole of it"):
            load_recipe(write(tmp_path, text), {"students.0.distill.augment.seed": 1})
    on = load_recipe(write(tmp_path, base % ""), {"students.0.distill.augment": {"seed": 1}})
    assert on.students[0].distill.augment.seed == 1
    # a section whose default is not off (recovery) still takes one key
    recipe = load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {}\nprune: {heads: 0.5}\n"),
                         {"prune.recover.temperature": 3.0})
    assert recipe.prune.recover.temperature == 3.0 and recipe.prune.recover.lr == 1.0e-4


@pytest.mark.parametrize("text, message", [
    # YAML booleans are ints to Python: `batch_size: true` trained with batch 1, `group_by_length: 1` was kept as 1
    ("task: {name: sst2}\nteacher: {batch_size: true}\n", r"teacher\.batch_size: expected an integer, got True"),
    ("task: {name: sst2, group_by_length: 1}\nteacher: {}\n", r"task\.group_by_length: expected true/false, got 1"),
    ("task: {name: sst2}\nteacher: {finetune: 0}\n", r"teacher\.finetune: expected true/false, got 0"),
], ids=["true-as-integer", "1-as-boolean", "0-as-boolean"])
def test_a_boolean_for_a_number_or_a_number_for_a_boolean_is_refused(tmp_path, text, message):
    with pytest.raises(CompressError, match=message):
        load_recipe(write(tmp_path, text))


@pytest.mark.parametrize("distill, message", [
    # an attention match of layer 0 read the attention maps of index -1: the last layer's, silently
    ("{matches: [{teacher_layer: 0, student_layer: 1, feature: attention}]}",
     r"students\[0\]\.distill\.matches\[0\]: attention maps exist for layers >= 1, not the embeddings \(0\)"),
    ("{matches: [{teacher_layer: 2, student_layer: 0, feature: attention}]}",
     r"students\[0\]\.distill\.matches\[0\]: attention maps exist for layers >= 1"),
    ("{temperature: 0}", r"students\[0\]\.distill\.temperature: must be > 0, got 0"),
    ("{augment: {neighbours: 0}}", r"students\[0\]\.distill\.augment\.neighbours: must be >= 1, got 0"),
], ids=["attention-teacher-layer-0", "attention-student-layer-0", "temperature-0", "neighbours-0"])
def test_distillation_settings_at_the_edge_of_their_range_are_refused(tmp_path, distill, message):
    with pytest.raises(CompressError, match=message):
        load_recipe(write(tmp_path, "task: {name: sst2}\nteacher: {}\n"
                                    f"students: [{{name: s, distill: {distill}}}]\n"))


def test_docs_recipe_md_is_what_the_code_says_and_every_key_is_documented(monkeypatch):
    """docs/recipe.md (every recipe key: type, default, meaning) is generated from compress/config.py; it must match
    the code (a new or changed key without `python scripts/recipe_reference.py` fails here), and a key without a
    docstring stops the generator by name."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    script = root / "scripts" / "recipe_reference.py"
    out = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = (root / "docs" / "recipe.md").read_text(encoding="utf-8")
    for key in ("## `prune.recover`", "- **`grad_accum`** (integer; default `1`)", "## `students[].distill.matches[]`",
                "- **`recover`** (mapping or null; default `{epochs: 1.0, lr: 0.0001}` and the defaults below)",
                "## `prune.layers.<name>`", "- **`table_bits`** (one of `8`, `4`; default `8`)"):
        assert key in text, key

    spec = importlib.util.spec_from_file_location("recipe_reference", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = module.docstrings

    def without_one():
        docs = real()
        del docs["BenchConfig"][1]["isolate"]
        return docs

    monkeypatch.setattr(module, "docstrings", without_one)
    with pytest.raises(SystemExit, match=r"BenchConfig\.isolate: no docstring under the field"):
        module.render()
    # types of fields to come: written out, or refused by name (not Python's repr in the page)
    import typing

    assert module.type_text(typing.Optional[typing.Union[int, str]])[0] == "integer or string or null"
    assert module.type_text(int | list[float])[0] == "integer or list of number"
    for odd in (list, dict[str, typing.Any], typing.Callable[[], int]):
        with pytest.raises(SystemExit, match="cannot write the type"):
            module.type_text(odd)
