"""A bundle built with its model's config.json loads in 🤗 Optimum and a transformers pipeline, as its model card
says, and gives what predict.py gives."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compress.bundle import build, predict
from compress.cli import main
from compress.errors import CompressError

from conftest import export_int8, tiny_bert_config

LONG = "so " * 300 + "good"  # past max_length: cut by every runner alike


@pytest.fixture(scope="module")
def minilm_int8(tmp_path_factory, minilm_dir) -> Path:
    """The real MiniLM-L6 body with a widened random 2-class head (so labels are decided), exported and int8
    (dynamic), its config.json beside it."""
    import torch
    from transformers import AutoModelForSequenceClassification

    work = tmp_path_factory.mktemp("minilm")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    with torch.no_grad():
        model.classifier.weight *= 30
    export_int8(model, work)
    model.config.save_pretrained(work)
    return work


def _card_code(folder: Path) -> str:
    """The Python block of the model card's Optimum section, as a user copies it."""
    card = (folder / "README.md").read_text()
    section = card[card.index("### With 🤗 Optimum"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _run_card(folder: Path, inputs: list, fresh: bool = False) -> list:
    """The card's code run as written in the bundle folder (``predict`` imported from there), then its pipeline
    called on ``inputs``; the pipeline's results. ``fresh``: in a fresh Python, as a user runs it (~7 s of imports);
    else in this process, the bundle's predict.py loaded as the module ``predict`` for the card's import."""
    code = _card_code(folder)
    assert code.rstrip().splitlines()[-1].startswith("classify(")
    if fresh:
        script = code + f"\nimport json\nprint(json.dumps(classify({inputs!r})))\n"
        proc = subprocess.run([sys.executable, "-c", script], cwd=folder, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.splitlines()[-1])
    import importlib.util

    spec = importlib.util.spec_from_file_location("predict", folder / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    namespace: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setitem(sys.modules, "predict", module)
        exec(code, namespace)
        return namespace["classify"](inputs)


def test_the_model_cards_optimum_code_gives_what_predict_py_gives(minilm_int8, minilm_dir, glue_dir, tmp_path):
    folder, _ = build(tmp_path, "minilm", model=minilm_int8 / "int8.onnx", tokenizer=minilm_dir / "tokenizer.json",
                      task="sst2", labels=["0", "1"], text_pair=False, max_length=32, ort_format=False,
                      config=minilm_int8 / "config.json")
    manifest = json.loads((folder / "manifest.json").read_text())
    shipped = ["config.json", "tokenizer_config.json", "special_tokens_map.json"]
    assert manifest["transformers_files"] == shipped and set(shipped) <= set(manifest["files"])  # sha256-checked
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["label2id"]["positive"] == 1
    assert config["problem_type"] == "single_label_classification" and config["num_hidden_layers"] == 6
    assert "_name_or_path" not in config  # no path of the build machine
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    assert settings["model_max_length"] == 32 and "name_or_path" not in settings
    assert settings["tokenizer_class"] == "PreTrainedTokenizerFast"  # tokenizer.json read as the runners read it
    dev = [line.split("\t")[0] for line in (glue_dir / "SST-2" / "dev.tsv").read_text().splitlines()[1:41]]
    texts = dev + [LONG]
    got = _run_card(folder, texts, fresh=True)
    want = predict(folder, texts)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    # the same session and the same token ids: the same scores
    assert [r["score"] for r in got] == pytest.approx([r["scores"][r["label"]] for r in want], abs=1e-6)
    assert {r["label"] for r in want} == {"negative", "positive"}  # the head decides: a real comparison
    # from_pretrained: no check, and onnxruntime's default optimizations, whose fused SkipLayerNormalization moves
    # this int8 dynamic model's scores by a few hundredths (its activation scales amplify any change)
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    classify = pipeline("text-classification", model=ORTModelForSequenceClassification.from_pretrained(folder),
                        tokenizer=AutoTokenizer.from_pretrained(folder), truncation=True)
    plain = classify(texts)
    assert [r["label"] for r in plain] == [r["label"] for r in got]
    assert [r["score"] for r in plain] == pytest.approx([r["score"] for r in got], abs=0.05)
    # the Predictor of the card checks the files first: a changed config.json stops it
    (folder / "config.json").write_text((folder / "config.json").read_text().replace("negative", "bad"))
    script = "from predict import Predictor\nPredictor('.')\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=folder, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "config.json: sha256 mismatch" in proc.stderr


def test_pair_and_regression_bundles_load_in_a_pipeline_as_predict_py_runs_them(minilm_int8, minilm_dir, glue_dir,
                                                                                tmp_path):
    import torch
    from transformers import BertForSequenceClassification

    rows = [line.split("\t") for line in
            (glue_dir / "MRPC" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:13]]
    pairs = [(r[3], r[4]) for r in rows] + [(LONG, "a short one")]
    folder, _ = build(tmp_path, "pair", model=minilm_int8 / "int8.onnx", tokenizer=minilm_dir / "tokenizer.json",
                      task="mrpc", labels=["0", "1"], text_pair=True, max_length=32, ort_format=False,
                      config=minilm_int8 / "config.json")
    assert '{"text": "first sentence", "text_pair": "second sentence"}' in _card_code(folder)
    got = _run_card(folder, [{"text": a, "text_pair": b} for a, b in pairs])
    want = predict(folder, [a for a, _ in pairs], [b for _, b in pairs])
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert [r["score"] for r in got] == pytest.approx([r["scores"][r["label"]] for r in want], abs=1e-6)
    # one output and no labels: a regression to a pipeline (no softmax), its value predict.py's
    work = tmp_path / "regression"
    work.mkdir()
    torch.manual_seed(1)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=1))
    export_int8(model, work)
    model.config.save_pretrained(work)
    folder, _ = build(tmp_path, "stsb", model=work / "int8.onnx", tokenizer=minilm_dir / "tokenizer.json",
                      task="stsb", labels=None, text_pair=True, max_length=32, ort_format=False,
                      config=work / "config.json")
    config = json.loads((folder / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "LABEL_0"}
    got = _run_card(folder, [{"text": a, "text_pair": b} for a, b in pairs])
    want = predict(folder, [a for a, _ in pairs], [b for _, b in pairs])
    assert [r["score"] for r in got] == pytest.approx([r["value"] for r in want], abs=1e-6)
    assert len({round(r["value"], 6) for r in want}) > 1  # values that differ: a real comparison


def test_a_run_whose_quantized_model_is_gone_bundles_without_a_config_and_says_so(tmp_path, caplog):
    from types import SimpleNamespace

    from compress.bundle import source_config

    run = SimpleNamespace(run_dir=tmp_path / "run", students=[], path="r.yaml")
    assert source_config(run) is None
    assert "quantize.json): the bundle is built without config.json, so Optimum cannot load it" in caplog.text
    (tmp_path / "run" / "quantize").mkdir(parents=True)
    (tmp_path / "run" / "quantize" / "quantize.json").write_text(json.dumps(
        {"source": {"model": "prune", "folder": str(tmp_path / "elsewhere")}}))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.json").write_text("{}")  # where quantize.json says: maybe another run's by now
    caplog.clear()
    assert source_config(run) is None and "is not in the run folder" in caplog.text
    (tmp_path / "run" / "prune" / "model").mkdir(parents=True)
    (tmp_path / "run" / "prune" / "model" / "config.json").write_text("{}")
    assert source_config(run) == tmp_path / "run" / "prune" / "model" / "config.json"  # the run folder's own


def test_a_bundle_without_a_config_has_no_optimum_section_and_a_bad_config_is_refused(minilm_int8, minilm_dir,
                                                                                       tmp_path, capsys):
    common = dict(model=minilm_int8 / "int8.onnx", tokenizer=minilm_dir / "tokenizer.json", task="sst2",
                  labels=["0", "1"], text_pair=False, max_length=32, ort_format=False)
    folder, _ = build(tmp_path / "plain", "plain", **common)
    assert "transformers_files" not in json.loads((folder / "manifest.json").read_text())
    assert not (folder / "config.json").exists() and "Optimum" not in (folder / "README.md").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    cases = {"torn.json": ("{torn", r"torn.json: not a transformers config.json \("),
             "list.json": ("[1, 2]", r"list.json: not a transformers config.json \(a JSON list, not an object\)"),
             "typeless.json": ('{"hidden_size": 8}', r"typeless.json: no model_type: not a transformers config.json"),
             "missing.json": (None, r"missing.json: transformers config.json not found"),
             "folder": (None, r"folder/config.json: transformers config.json not found")}
    (bad / "folder").mkdir()
    for name, (text, message) in cases.items():
        if text is not None:
            (bad / name).write_text(text)
        with pytest.raises(CompressError, match=message):
            build(tmp_path / "out", "b", **common, config=bad / name)
        assert not (tmp_path / "out").exists()  # nothing half-written, no folder left
    # the command line: --config with --model ships the files; with a recipe, or empty, it is refused in one line
    out = tmp_path / "cli"
    given = ["--model", str(minilm_int8 / "int8.onnx"), "--tokenizer", str(minilm_dir / "tokenizer.json")]
    assert main(["bundle", *given, "--max-length", "32", "--out", str(out), "--no-ort",
                 "--config", str(minilm_int8)]) == 0  # a model folder: its config.json
    assert (out / "sst2-int8" / "config.json").is_file() and (out / "sst2-int8" / "tokenizer_config.json").is_file()
    capsys.readouterr()
    assert main(["bundle", "pipelines/quickstart.yaml", "--config", "c.json"]) != 0
    assert "--config applies only with --model" in capsys.readouterr().err
    assert main(["bundle", *given, "--config", " "]) != 0
    assert "compress bundle --model: --config is empty" in capsys.readouterr().err


def test_a_lone_tokenizer_json_still_cuts_long_texts_and_keeps_its_own_normalizer(minilm_int8, minilm_dir, tmp_path):
    """A tokenizer.json with no settings files beside it (`compress bundle --model --config`): the bundle's
    tokenizer_config.json still gives the max length (no limit before: a text past the model's 512 positions failed in
    onnxruntime) and names PreTrainedTokenizerFast, which reads tokenizer.json as the runners do (BertTokenizerFast
    re-applied its lower-casing default over a cased normalizer)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    alone = tmp_path / "alone"
    alone.mkdir()
    data = json.loads((minilm_dir / "tokenizer.json").read_text())
    data["normalizer"]["lowercase"] = False  # a cased tokenizer
    (alone / "tokenizer.json").write_text(json.dumps(data))
    folder, _ = build(tmp_path, "cased", model=minilm_int8 / "int8.onnx", tokenizer=alone / "tokenizer.json",
                      task="sst2", labels=["0", "1"], text_pair=False, max_length=32, ort_format=False,
                      config=minilm_int8 / "config.json")
    assert json.loads((folder / "manifest.json").read_text())["transformers_files"] == ["config.json",
                                                                                         "tokenizer_config.json"]
    text = "Hello World, a Gripping film"
    assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == \
        Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids
    texts = [text, "word " * 600, "a fine , moving film"]
    got = _run_card(folder, texts)
    want = predict(folder, texts)
    assert [r["score"] for r in got] == pytest.approx([r["scores"][r["label"]] for r in want], abs=1e-6)


def test_no_path_of_the_build_machine_is_shipped(minilm_int8, minilm_dir, tmp_path):
    """The keys transformers' save_pretrained leaves out (name_or_path, special_tokens_map_file, tokenizer_file...)
    held the build machine's cache paths in older tokenizer settings; a stale max_length went with them."""
    source = tmp_path / "tok"
    source.mkdir()
    (source / "tokenizer.json").write_text((minilm_dir / "tokenizer.json").read_text())
    secret = "/home/builder/.cache/secret"
    settings = {**json.loads((minilm_dir / "tokenizer_config.json").read_text()), "name_or_path": secret,
                "special_tokens_map_file": f"{secret}/special_tokens_map.json", "tokenizer_file": f"{secret}/t.json",
                "max_length": 128}
    (source / "tokenizer_config.json").write_text(json.dumps(settings))
    (source / "special_tokens_map.json").write_text(json.dumps({"pad_token": "[PAD]", "name_or_path": secret}))
    config = {**json.loads((minilm_int8 / "config.json").read_text()), "_name_or_path": secret}
    (tmp_path / "config.json").write_text(json.dumps(config))
    folder, _ = build(tmp_path / "out", "paths", model=minilm_int8 / "int8.onnx", tokenizer=source / "tokenizer.json",
                      task="sst2", labels=["0", "1"], text_pair=False, max_length=32, ort_format=False,
                      config=tmp_path / "config.json")
    for name in ("config.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert secret not in (folder / name).read_text(), name
    assert "max_length" not in json.loads((folder / "tokenizer_config.json").read_text())
