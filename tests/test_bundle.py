"""Edge bundles: build, verify, extract safely, predict (in-process, with predict.py, and in a venv without torch)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.bundle import build, pick, predict, safe_extract
from compress.bundle_predict import FORMAT, sha256_file
from compress.cli import main
from compress.errors import CompressError

from conftest import export_int8, tiny_bert_config
from fake_run import make_run

TEXTS = ["a gripping , funny and deeply moving film", "dull and far too long", "so " * 300 + "good"]
PINNED = ["onnxruntime==1.32.0", "tokenizers==0.22.2", "numpy==2.4.6"]


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory) -> Path:
    """A tiny random BERT classifier exported to ONNX and quantized to int8 (dynamic) with onnxruntime."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return export_int8(BertForSequenceClassification(tiny_bert_config()), tmp_path_factory.mktemp("int8"))


@pytest.fixture(scope="module")
def bundle(int8_model, tmp_path_factory, minilm_dir) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("bundles")
    return build(out, "sst2-tiny", model=int8_model, tokenizer=minilm_dir / "tokenizer.json", task="sst2",
                 labels=["negative", "positive"], text_pair=False, max_length=32,
                 metrics={"dev": {"accuracy": 0.5}},
                 latency={"p50_ms": 1.5, "p90_ms": 2.0, "protocol": {"batch_size": 1, "threads": 2}},
                 source={"recipe": "test"})


def test_a_model_with_int4_tables_says_so_in_its_manifest_and_card(bundle, int8_model, tmp_path, minilm_dir,
                                                                   tokenizer, monkeypatch):
    """A model whose vocabulary table is int4 (``quantize.table_bits: 4``) needs onnxruntime 1.22 or newer: the
    manifest's model entry and the model card say so; a bundle without one says nothing of it. It runs as built."""
    from compress.quantize import QuantizeConfig, lookup_nodes, quantize_dynamic, row_tables

    fp32 = int8_model.parent / "fp32.onnx"
    lookups = lookup_nodes(fp32)
    kept = quantize_dynamic(fp32, tmp_path / "kept.onnx", QuantizeConfig(), exclude=lookups)
    assert 4 in row_tables(kept, tmp_path / "int4.onnx", lookups, 4).values()
    folder, _ = build(tmp_path / "out", "int4-tiny", model=tmp_path / "int4.onnx",
                      tokenizer=minilm_dir / "tokenizer.json", task="sst2", labels=["negative", "positive"],
                      text_pair=False, max_length=32, ort_format=False)
    said = "its vocabulary table int4, looked up by onnxruntime's GatherBlockQuantized: onnxruntime 1.22 or newer"
    assert json.loads((folder / "manifest.json").read_text())["model"]["int4_tables"] is True
    assert said in (folder / "README.md").read_text()
    plain = bundle[0]
    assert "int4_tables" not in json.loads((plain / "manifest.json").read_text())["model"]
    assert "int4" not in (plain / "README.md").read_text()
    ref = _reference_logits(tmp_path / "int4.onnx", tokenizer, TEXTS)
    got = [[r["scores"]["negative"], r["scores"]["positive"]] for r in predict(folder, TEXTS)]
    np.testing.assert_allclose(got, np.exp(ref) / np.exp(ref).sum(-1, keepdims=True), atol=1e-6)
    # an onnxruntime older than 1.22 refuses the lookup: the one-line error says which version it needs
    import onnxruntime as ort

    from compress.bundle_predict import BundleError, Predictor

    def refuse(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : Type 'tensor(uint8)' of input parameter (data) "
                           "of operator (GatherBlockQuantized) is invalid.")

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    monkeypatch.setattr(ort, "__version__", "1.21.1")
    for where, says in ((folder, "needs onnxruntime >= 1.22 (this is 1.21.1): pip install 'onnxruntime>=1.22'"),
                        (plain, "is invalid.)")):  # a model without int4 tables: onnxruntime's words alone
        with pytest.raises(BundleError) as e:
            Predictor(where)
        assert str(e.value).endswith(says) and "\n" not in str(e.value)
    monkeypatch.setattr(ort, "__version__", "1.32.0")  # a load error of another cause on a new enough runtime
    with pytest.raises(BundleError, match=r"is invalid\.\)$"):
        Predictor(folder)


def _copy(folder: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(folder, dest)
    return dest


def _same_result(a: dict, b: dict) -> None:
    assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-6)
    assert a["scores"] == pytest.approx(b["scores"], abs=1e-6)


def _reference_logits(int8_model: Path, tokenizer, texts, max_length=32) -> np.ndarray:
    """What the model gives with the HF tokenizer: the bundle must reproduce it without transformers."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(int8_model), providers=["CPUExecutionProvider"])
    out = []
    for text in texts:  # one at a time: no padding involved
        enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
        out.append(session.run(None, {k: v.astype(np.int64) for k, v in enc.items()})[0][0])
    return np.stack(out)


def test_round_trip_folder_and_archive(bundle, int8_model, tokenizer):
    folder, archive = bundle
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "index.html", "labels.json", "manifest.json",
                                                        "model.onnx", "model.ort", "package.json", "predict.mjs",
                                                        "predict.py", "tokenizer.json"]
    assert sha256_file(folder / "model.onnx") == sha256_file(int8_model)
    assert (folder / "predict.py").read_text() == (Path(__file__).parent.parent / "compress" /
                                                   "bundle_predict.py").read_text()
    ref = _reference_logits(int8_model, tokenizer, TEXTS)
    probs = np.exp(ref) / np.exp(ref).sum(-1, keepdims=True)
    for source in (folder, archive):
        results = predict(source, TEXTS)  # one text at a time: exactly the model's scores for each text alone
        assert [r["label"] for r in results] == [["negative", "positive"][i] for i in ref.argmax(-1)]
        np.testing.assert_allclose([[r["scores"]["negative"], r["scores"]["positive"]] for r in results], probs,
                                   atol=1e-6)
    # the archive holds exactly the folder, under its name, with normalised metadata
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    assert {m.name for m in members} == {"sst2-tiny"} | {f"sst2-tiny/{p.name}" for p in folder.iterdir()}
    created = json.loads((folder / "manifest.json").read_text())["created"]  # every member dated as built (1970 was
    from datetime import datetime  # refused when the unpacked folder was zipped again: ZIP starts in 1980)

    assert all(m.uid == 0 and m.mtime == int(datetime.fromisoformat(created).timestamp()) for m in members)
    # the ORT-format copy runs and agrees with the ONNX model
    import onnxruntime as ort

    enc = tokenizer(TEXTS[0], return_tensors="np")
    feed = {k: v.astype(np.int64) for k, v in enc.items()}
    a = ort.InferenceSession(str(folder / "model.ort"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    b = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_predictor_batches_only_when_asked(bundle, int8_model, tokenizer):
    from compress.bundle_predict import BundleError, Predictor

    folder, _ = bundle
    predictor = Predictor(folder)
    ref = _reference_logits(int8_model, tokenizer, TEXTS)
    np.testing.assert_allclose(predictor.logits(TEXTS), ref, atol=1e-6)
    batched = predictor.logits(TEXTS, batch_size=2)  # padded batches: the same labels, scores close
    assert batched.shape == ref.shape and (batched.argmax(-1) == ref.argmax(-1)).all()
    np.testing.assert_allclose(batched, ref, atol=0.05)
    assert predictor.logits([]).shape == (0, 2)
    with pytest.raises(BundleError, match="batch_size must be at least 1"):
        predictor.predict(TEXTS, batch_size=0)
    card = (folder / "README.md").read_text()
    assert "one text at a time" in card and "batch_size=N" in card


def test_a_float_bundle_says_it_is_not_int8(int8_model, tmp_path, minilm_dir):
    """The manifest's model.int8 is the file's, not a constant: an fp32 model (require_int8 off) says false."""
    folder, _ = build(tmp_path, "fp32", model=int8_model.parent / "fp32.onnx", tokenizer=minilm_dir / "tokenizer.json",
                      task="sst2", labels=["negative", "positive"], text_pair=False, max_length=32, ort_format=False,
                      require_int8=False)
    assert json.loads((folder / "manifest.json").read_text())["model"]["int8"] is False


def test_manifest_schema(bundle):
    folder, _ = bundle
    m = json.loads((folder / "manifest.json").read_text())
    assert m["format"] == FORMAT and m["name"] == "sst2-tiny"
    assert m["task"] == {"name": "sst2", "labels": ["negative", "positive"], "dataset_labels": ["negative", "positive"],
                         "text_pair": False, "regression": False}
    assert m["max_length"] == 32
    assert [i["name"] for i in m["model"]["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i["shape"] == ["batch", "sequence"] and i["type"] == "tensor(int64)" for i in m["model"]["inputs"])
    assert m["model"]["outputs"][0]["name"] == "logits" and m["model"]["outputs"][0]["shape"][-1] == 2
    assert m["model"]["file"] == "model.onnx" and m["model"]["ort_file"] == "model.ort" and m["model"]["int8"]
    assert m["tokenizer"] == {"file": "tokenizer.json", "pad_token": "[PAD]", "pad_id": 0}
    assert m["metrics"] == {"dev": {"accuracy": 0.5}}
    assert m["latency"]["p50_ms"] == 1.5 and m["latency"]["protocol"]["threads"] == 2
    assert m["requirements"] == dict(p.split("==") for p in PINNED)
    # numpy 2.4 and onnxruntime 1.32 need Python 3.11 (predict.py runs on 3.9+): the card says so beside the pins
    assert m["requirements_python"] == "3.11"
    assert "these versions need Python >= 3.11; older: pip install onnxruntime tokenizers numpy" in \
        (folder / "README.md").read_text()
    assert m["versions"]["onnxruntime"] == "1.32.0" and m["versions"]["compress"]
    # every file but the manifest is listed with its real sha256 and size
    on_disk = {p.name for p in folder.iterdir()} - {"manifest.json"}
    assert set(m["files"]) == on_disk == set(m["sizes"])
    for rel, digest in m["files"].items():
        assert digest == sha256_file(folder / rel) and m["sizes"][rel] == (folder / rel).stat().st_size
    assert json.loads((folder / "labels.json").read_text())["labels"] == ["negative", "positive"]
    # the shipped tokenizer truncates at max_length and pads to the longest row
    tok = json.loads((folder / "tokenizer.json").read_text())
    assert tok["truncation"]["max_length"] == 32 and tok["padding"]["strategy"] == "BatchLongest"
    card = (folder / "README.md").read_text()
    assert "sst2" in card and "0.5000" in card and "pip install onnxruntime==1.32.0" in card and "p50" in card


def test_tampered_file_is_refused(bundle, tmp_path):
    folder = _copy(bundle[0], tmp_path / "b")
    data = bytearray((folder / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(CompressError, match=r"model\.onnx: sha256 mismatch"):
        predict(folder, TEXTS)
    # predict.py itself refuses too, with one line and exit status 2
    proc = subprocess.run([sys.executable, str(folder / "predict.py"), "hello"], capture_output=True, text=True)
    assert proc.returncode == 2 and "sha256 mismatch" in proc.stderr and "Traceback" not in proc.stderr
    # the CLI: one line, exit status 2
    proc = subprocess.run([sys.executable, "-m", "compress", "predict", str(folder), "hello"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "sha256 mismatch" in proc.stderr


def test_planted_or_missing_file_is_refused(bundle, tmp_path):
    folder = _copy(bundle[0], tmp_path / "planted")
    # what file browsers leave (Finder's .DS_Store and ._ twins, Explorer's Thumbs.db): read by nothing, importable by
    # nothing, and an unpacked bundle opened in one was refused for them
    for junk in (".DS_Store", "._model.onnx", "Thumbs.db", "desktop.ini"):
        (folder / junk).write_bytes(b"\0\1")
    assert predict(folder, TEXTS)[0]["label"] in ("negative", "positive")
    (folder / "texts.txt").write_text("a gripping film\n")  # the user's own file: refused, saying where it belongs
    with pytest.raises(CompressError, match=r"texts\.txt: not listed in manifest\.json; refusing a bundle with "
                                            r"unverified files \(keep your own files, such as texts to classify, "
                                            r"outside the bundle folder\)$"):
        predict(folder, TEXTS)
    (folder / "texts.txt").unlink()
    (folder / "numpy.py").write_text("raise SystemExit('planted module ran')\n")
    with pytest.raises(CompressError, match=r"numpy\.py: not listed in manifest\.json"):
        predict(folder, TEXTS)
    proc = subprocess.run([sys.executable, str(folder / "predict.py"), "hello"], capture_output=True, text=True)
    assert proc.returncode == 2 and "not listed" in proc.stderr and "planted module ran" not in proc.stderr
    # a standard module the runner imports itself (argparse, json, hashlib): it was imported from the bundle folder
    # before the folder left sys.path, and ran (exit status 7) before any file was checked
    for name in ("argparse", "json", "hashlib"):
        (folder / "numpy.py").unlink(missing_ok=True)
        (folder / f"{name}.py").write_text("raise SystemExit(7)\n")
        proc = subprocess.run([sys.executable, "predict.py", "hello"], capture_output=True, text=True, cwd=folder)
        assert proc.returncode == 2 and f"{name}.py: not listed" in proc.stderr, (name, proc.returncode, proc.stderr)
        (folder / f"{name}.py").unlink()
    # under `python -S` nothing has imported __future__ before the script: its `from __future__` import ran a
    # planted __future__.py (the runner has none now)
    (folder / "__future__.py").write_text("raise SystemExit(7)\n")
    proc = subprocess.run([sys.executable, "-S", "predict.py", "hello"], capture_output=True, text=True, cwd=folder)
    assert proc.returncode == 2 and "__future__.py: not listed" in proc.stderr, (proc.returncode, proc.stderr)
    folder = _copy(bundle[0], tmp_path / "missing")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CompressError, match=r"tokenizer\.json: listed in manifest\.json but missing$"):
        predict(folder, TEXTS)
    (folder / "tokenizer.json").mkdir()
    with pytest.raises(CompressError, match=r"tokenizer\.json: listed in manifest\.json but not a regular file$"):
        predict(folder, TEXTS)
    (folder / "tokenizer.json").rmdir()
    (folder / "tokenizer.json").symlink_to(bundle[0] / "tokenizer.json")  # the same bytes, through a link
    with pytest.raises(CompressError, match=r"tokenizer\.json: a symbolic link, not the bundle's own file; refusing"):
        predict(folder, TEXTS)


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize("evil", ["dotdot", "absolute", "symlink", "hardlink"])
def test_escaping_archive_member_is_refused(bundle, tmp_path, evil):
    folder, _ = bundle
    members = [(tarfile.TarInfo("b"), None)]
    members[0][0].type = tarfile.DIRTYPE
    members += [_file(f"b/{p.name}", p.read_bytes()) for p in sorted(folder.iterdir())]
    if evil == "dotdot":
        members.append(_file("b/../../escaped.txt"))
    elif evil == "absolute":
        members.append(_file(str(tmp_path / "escaped.txt")))
    else:
        link = tarfile.TarInfo("b/link")
        link.type = tarfile.SYMTYPE if evil == "symlink" else tarfile.LNKTYPE
        link.linkname = str(tmp_path / "escaped.txt") if evil == "symlink" else "../../escaped.txt"
        members.append((link, None))
    archive = _tar_with(tmp_path / "evil.tar.gz", members)
    dest = tmp_path / "x" / "y"
    dest.mkdir(parents=True)
    why = "escapes the extraction folder" if evil in ("dotdot", "absolute") else "is a link or special file"
    with pytest.raises(CompressError, match=f"{why}; refusing the archive"):  # its own check's words, not a later one's
        safe_extract(archive, dest)
    assert list(dest.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()
    with pytest.raises(CompressError, match=f"{why}; refusing the archive"):
        predict(archive, TEXTS)
    assert main(["predict", str(archive), "hello"]) == 2


def test_an_archive_packed_from_inside_its_folder_is_refused_as_such(bundle, tmp_path):
    """`tar czf b.tar.gz -C bundle .` (members ".", "./manifest.json"...): refused as "member '.' escapes the
    extraction folder", which it does not; now what is wrong and how to pack it."""
    folder, _ = bundle
    archive = tmp_path / "flat.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=".")
    dest = tmp_path / "x"
    dest.mkdir()
    with pytest.raises(CompressError, match=r"member '\.': the files lie at the archive's top, not in one bundle "
                                            r"folder \(pack the bundle folder by its name: tar czf NAME\.tar\.gz -C "
                                            r"PARENT NAME\)$"):
        safe_extract(archive, dest)
    # `tar czf b.tar.gz -C parent .` with the bundle folder alone in parent: its folder is there, under "./"
    parent = tmp_path / "parent"
    shutil.copytree(folder, parent / "b")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(parent, arcname=".")
    with pytest.raises(CompressError, match=r"member '\.': the archive's paths start with './' \(pack the bundle "
                                            r"folder by its name"):
        safe_extract(archive, dest)
    assert list(dest.iterdir()) == []


def test_tampered_archive_is_refused(bundle, tmp_path):
    folder, _ = bundle
    members = [_file(f"b/{p.name}", p.read_bytes()) for p in sorted(folder.iterdir())]
    members = [(i, d.replace(b"positive", b"POSITIVE") if i.name.endswith("labels.json") else d) for i, d in members]
    members = [(i, d) if not i.name.endswith("labels.json") else _file(i.name, d) for i, d in members]
    archive = _tar_with(tmp_path / "t.tar.gz", members)
    # named as the archive's member, not by the temporary folder it was extracted to (gone when the error is read)
    with pytest.raises(CompressError, match=rf"^{re.escape(str(archive))}: b/labels\.json: sha256 mismatch"):
        predict(archive, TEXTS)


def test_predict_py_imports_no_torch(bundle):
    """predict.py run by this project's interpreter (which has torch) never imports torch or transformers."""
    folder, _ = bundle
    code = ("import runpy, sys, json\n"
            "sys.argv = ['predict.py', '--json', sys.argv[1]]\n"
            "try:\n    runpy.run_path('predict.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
            "print('HEAVY', json.dumps(heavy))\n")
    proc = subprocess.run([sys.executable, "-c", code, TEXTS[0]], capture_output=True, text=True, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    out, heavy = proc.stdout.split("HEAVY")
    assert json.loads(heavy) == []
    _same_result(json.loads(out), predict(folder, TEXTS[:1])[0])


def test_compress_predict_imports_no_torch(bundle):
    """`compress predict` verifies and runs a bundle without importing torch or transformers (seconds saved per call)."""
    _, archive = bundle
    code = ("import sys, json\n"
            "from compress.cli import main\n"
            "rc = main(['predict', '--json', sys.argv[1], sys.argv[2]])\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
            "print('HEAVY', rc, json.dumps(heavy))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(archive), TEXTS[0]], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out, tail = proc.stdout.split("HEAVY")
    rc, heavy = tail.split(maxsplit=1)
    assert rc == "0" and json.loads(heavy) == []
    _same_result(json.loads(out), predict(archive, TEXTS[:1])[0])


def test_cli_bundle_and_predict(int8_model, minilm_dir, tmp_path, capsys):
    assert main(["bundle", "--model", str(int8_model), "--tokenizer", str(minilm_dir / "tokenizer.json"),
                 "--task", "mrpc", "--max-length", "48", "--out", str(tmp_path), "--no-ort"]) == 0
    folder = tmp_path / "mrpc-int8"
    m = json.loads((folder / "manifest.json").read_text())
    assert m["task"]["text_pair"] is True and m["model"]["ort_file"] is None
    assert m["task"]["labels"] == ["not_equivalent", "equivalent"] and m["task"]["dataset_labels"] == ["0", "1"]
    assert not (folder / "model.ort").exists() and (tmp_path / "mrpc-int8.tar.gz").is_file()
    from compress.bundle_predict import sha256_file  # the one value to publish apart from the bundle

    assert f"manifest.json sha256: {sha256_file(folder / 'manifest.json')} (publish it" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "mrpc-int8.tar.gz"), "he said hi", "he greeted us", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["scores"]) == {"not_equivalent", "equivalent"} and result["label"] in result["scores"]
    assert main(["predict", str(folder), "only one text"]) == 2
    assert "reads text pairs" in capsys.readouterr().err
    # STS-B is a GLUE regression task: no --labels needed (this 2-output model is then refused for its width)
    assert main(["bundle", "--model", str(int8_model), "--tokenizer", str(minilm_dir / "tokenizer.json"),
                 "--task", "stsb", "--out", str(tmp_path / "stsb"), "--no-ort"]) == 2
    assert "gives 2 scores" in capsys.readouterr().err


def test_a_malformed_tokenizer_config_beside_the_tokenizer_is_one_line(int8_model, minilm_dir, tmp_path, capsys):
    """A tokenizer.json without padding takes its pad token from the tokenizer_config.json beside it: a broken one
    ended `compress bundle --model` with a JSONDecodeError traceback."""
    folder = tmp_path / "tok"
    folder.mkdir()
    tokenizer = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    (folder / "tokenizer.json").write_text(json.dumps({**tokenizer, "padding": None}), encoding="utf-8")
    for broken in ("{broken", "[]"):
        (folder / "tokenizer_config.json").write_text(broken)
        assert main(["bundle", "--model", str(int8_model), "--tokenizer", str(folder / "tokenizer.json"),
                     "--out", str(tmp_path / "out"), "--no-ort"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {folder / 'tokenizer_config.json'}: not a tokenizer_config.json") \
            and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    # every folder the failed build made goes (out/a/b left out/a), and none that was there before
    (tmp_path / "kept").mkdir()
    assert main(["bundle", "--model", str(int8_model), "--tokenizer", str(folder / "tokenizer.json"),
                 "--out", str(tmp_path / "kept" / "a" / "b"), "--no-ort"]) == 2
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())


def test_predict_py_classifies_each_line_of_a_file_or_stdin(bundle, tmp_path):
    """predict.py --file: one result a line, in order, blank lines skipped, each text run alone (as measured); stdin
    with `-`; JSON Lines with --json."""
    folder, _ = bundle
    texts = [TEXTS[0], "", TEXTS[1], "  "]
    (tmp_path / "texts.txt").write_text("\ufeff" + "\n".join(texts) + "\n", encoding="utf-8")  # a BOM, as editors write
    expected = predict(folder, [TEXTS[0], TEXTS[1]])
    proc = subprocess.run([sys.executable, "predict.py", "--file", str(tmp_path / "texts.txt")], capture_output=True,
                          text=True, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{r['label']}\t{r['score']:.4f}" for r in expected]
    proc = subprocess.run([sys.executable, "predict.py", "--json", "--file", "-"], input="\ufeff" + "\n".join(texts),
                          capture_output=True, text=True, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [json.loads(line)["line"] for line in lines] == [1, 3]  # blank lines skipped: each result says its line
    for line, want in zip(lines, expected):
        _same_result(json.loads(line), want)
    proc = subprocess.run([sys.executable, "predict.py", "--file", "-", "also a text"], input="x", capture_output=True,
                          text=True, cwd=folder)
    assert proc.returncode == 2 and "give a TEXT or --file PATH, not both" in proc.stderr
    proc = subprocess.run([sys.executable, "predict.py"], capture_output=True, text=True, cwd=folder)
    assert proc.returncode == 2 and "give a TEXT to classify, or --file PATH" in proc.stderr


def test_compress_predict_file_names_the_bad_line(int8_model, minilm_dir, tmp_path, capsys):
    """compress predict --file on a pair bundle: text<TAB>pair lines; a line without its pair is refused by number."""
    assert main(["bundle", "--model", str(int8_model), "--tokenizer", str(minilm_dir / "tokenizer.json"),
                 "--task", "rte", "--out", str(tmp_path), "--no-ort"]) == 0
    archive = tmp_path / "rte-int8.tar.gz"
    manifest = json.loads((tmp_path / "rte-int8" / "manifest.json").read_text())
    assert manifest["max_length"] == 128  # --max-length's default
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("it rains\tthe street is wet\nhe left\the is here\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", str(archive), "--file", str(pairs), "--json"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = predict(archive, ["it rains", "he left"], ["the street is wet", "he is here"])
    assert len(got) == 2 and all(_same_result(a, b) is None for a, b in zip(got, want))
    pairs.write_text("it rains\tthe street is wet\nno pair here\n", encoding="utf-8")
    assert main(["predict", str(archive), "--file", str(pairs)]) == 2
    assert f"{pairs} line 2: this model reads text pairs" in capsys.readouterr().err
    assert main(["predict", str(archive), "--file", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: cannot read" in capsys.readouterr().err
    assert main(["predict", str(archive)]) == 2
    assert "give a TEXT to classify, or --file PATH" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["predict", "b.tar.gz", "hi", "--threads", "0"],
                                  ["bench", "r.yaml", "--threads", "1", "-2"],
                                  ["report", "runs/x", "--threads", "two"],
                                  ["search", "r.yaml", "--threads", "0"],
                                  ["bundle", "--model", "m.onnx", "--max-length", "0"],
                                  # 100000 threads hung the machine; past a C int, onnxruntime's TypeError traceback
                                  ["predict", "b.tar.gz", "hi", "--threads", "100000"],
                                  ["search", "r.yaml", "--threads", str(10**20)],
                                  ["bundle", "--model", "m.onnx", "--max-length", str(10**20)]])
def test_counts_on_the_command_line_are_checked_before_anything_runs(argv, capsys):
    """A thread count or length out of range is a usage error naming the option (not a traceback from a worker)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --" in err and ("must be >= 1" in err or "expected an integer, got 'two'" in err
                                     or "must be at most 1024, got" in err or "must be at most 2147483647" in err)


def test_two_builds_at_one_source_date_epoch_are_byte_identical(int8_model, minilm_dir, tmp_path, monkeypatch):
    """The manifest's `created` (in the model card too) was the wall clock: no two builds of one model gave the same
    archive or manifest sha256. SOURCE_DATE_EPOCH sets it (the reproducible-builds convention)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    archives = [build(tmp_path / out, "b", model=int8_model, tokenizer=minilm_dir / "tokenizer.json", task="sst2",
                      labels=["negative", "positive"], text_pair=False, max_length=32, ort_format=False)[1]
                for out in ("one", "two")]
    assert archives[0].read_bytes() == archives[1].read_bytes()
    assert json.loads((tmp_path / "one" / "b" / "manifest.json").read_text())["created"] == "2023-11-14T22:13:20+00:00"
    with tarfile.open(archives[0]) as tar:  # the members dated so too: an unpacked copy can be zipped again
        assert {m.mtime for m in tar.getmembers()} == {1700000000}
    import zipfile

    (tmp_path / "unpacked").mkdir()
    unpacked = safe_extract(archives[0], tmp_path / "unpacked")
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as z:  # ZIP refuses dates before 1980 (a 1970 member did)
        for path in sorted(unpacked.rglob("*")):
            z.write(path, path.relative_to(unpacked.parent))


def test_build_refuses_a_float_model(int8_model, minilm_dir, tmp_path):
    with pytest.raises(CompressError, match="not an int8 model"):
        build(tmp_path, "fp32", model=int8_model.with_name("fp32.onnx"), tokenizer=minilm_dir / "tokenizer.json",
              task="sst2", labels=["0", "1"], text_pair=False, max_length=32)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_an_interrupted_build_leaves_folder_and_archive_of_one_build(int8_model, minilm_dir, tmp_path, monkeypatch):
    """Ctrl-C while the archive was gzipped (seconds for a real model) left the new folder beside the previous build's
    archive; now both stay the previous build's, and what a killed build (kill -9) left is removed by the next."""
    import compress.bundle as bundle_module

    out = tmp_path / "out"

    def make(recipe: str):
        return build(out, "b", model=int8_model, tokenizer=minilm_dir / "tokenizer.json", task="sst2",
                     labels=["negative", "positive"], text_pair=False, max_length=32, ort_format=False,
                     source={"recipe": recipe})

    def sources() -> tuple[str, str]:
        with tarfile.open(out / "b.tar.gz") as tar:
            in_archive = json.loads(tar.extractfile("b/manifest.json").read())["source"]["recipe"]
        return json.loads((out / "b" / "manifest.json").read_text())["source"]["recipe"], in_archive

    make("first")
    dead = [out / ".b.tmp-999999999", out / ".b.old-999999999", out / ".b.tar.gz.tmp-999999999"]  # no such pid
    dead[0].mkdir(), dead[1].mkdir(), dead[2].write_bytes(b"\0")

    def interrupted(folder, tar_path, arcname=None, mtime=0):
        Path(tar_path).write_bytes(b"\x1f\x8b")  # part of the archive written
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_module, "make_tar", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make("second")
    assert sources() == ("first", "first")
    assert sorted(p.name for p in out.iterdir()) == ["b", "b.tar.gz"]
    monkeypatch.undo()
    make("third")
    assert sources() == ("third", "third")

    # another build publishing into the folder (a second `compress bundle` of this name): this one waits to publish,
    # then its folder and archive go in together
    import fcntl
    import threading
    import time

    held = os.open(out, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    fourth = threading.Thread(target=make, args=("fourth",))
    fourth.start()
    for _ in range(300):  # until it waits to publish (its archive is made first)
        if any(p.name.startswith(".b.tar.gz.tmp-") for p in out.iterdir()):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    assert fourth.is_alive() and sources() == ("third", "third")
    fcntl.flock(held, fcntl.LOCK_UN)
    os.close(held)
    fourth.join(timeout=120)
    assert sources() == ("fourth", "fourth") and sorted(p.name for p in out.iterdir()) == ["b", "b.tar.gz"]


def test_the_archive_is_reproducible_and_names_no_temporary_file(bundle, tmp_path, monkeypatch):
    """The gzip header held the build time and the temporary file's name (.<name>.tar.gz.tmp-<pid>, what
    `gunzip -N` restores to): the same folder gave another archive every time."""
    import time

    from compress.bundle import make_tar

    folder, _ = bundle
    make_tar(folder, tmp_path / ".b.tar.gz.tmp-1", arcname="b")
    monkeypatch.setattr(time, "time", lambda: 2.0e9)  # another build time
    make_tar(folder, tmp_path / ".b.tar.gz.tmp-2", arcname="b")
    first, second = (tmp_path / ".b.tar.gz.tmp-1").read_bytes(), (tmp_path / ".b.tar.gz.tmp-2").read_bytes()
    assert first == second
    assert first[3] & 0x08 and first[10:first.index(b"\0", 10)] == b"b.tar"  # FNAME: the archive's own name


def test_predict_py_in_a_fresh_venv_without_torch(bundle, tmp_path_factory):
    """The device story: a new venv with only onnxruntime, tokenizers and numpy runs the bundle's predict.py."""
    folder, archive = bundle
    venv = tmp_path_factory.mktemp("venv") / "device"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PINNED], check=True)
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('torch'), "
                            "u.find_spec('transformers'))"], capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["None", "None"]
    device = tmp_path_factory.mktemp("device")
    unpacked = safe_extract(archive, device)  # what a user does with the archive on the device
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(py), "predict.py", "--json", TEXTS[0]], capture_output=True, text=True, cwd=unpacked,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    _same_result(json.loads(proc.stdout), predict(folder, TEXTS[:1])[0])


# ------------------------------------------------------------------------------------------------ the stage
def _recipe(tmp_path, name: str, bundle: str, verify: bool = False, task: str = ""):
    """A recipe for a `make_run` run folder, whose numbers are made up: its bundle is not scored again unless
    ``verify`` (``task``: more of the task section)."""
    import dataclasses

    from compress.config import load_recipe

    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nruns_dir: {tmp_path / 'runs'}\ntask: {{name: sst2, max_length: 32{task}}}\n"
                    f"teacher: {{model: minilm-l6}}\nquantize: {{max_drop: 1.0}}\nbench: {{}}\nbundle: {bundle}\n")
    recipe = load_recipe(path)
    return recipe if verify else dataclasses.replace(recipe, bundle=dataclasses.replace(recipe.bundle, verify=False))


@pytest.fixture
def run_dir(tmp_path, int8_model, minilm_dir):
    """A run whose quantize stage made two shippable int8 models (static faster but 2 points worse) and one that
    failed its guard (fastest of all), with bench numbers at 1 and 2 threads."""
    return make_run(tmp_path / "runs", "edge", int8_model=int8_model, fp32_model=int8_model.with_name("fp32.onnx"),
                    tokenizer_json=minilm_dir / "tokenizer.json", teacher_acc=0.90, fp32_acc=0.895,
                    int8={"dynamic": (0.892, True), "static": (0.88, True), "static_pc": (0.70, False)},
                    latency={"onnx_fp32": {1: 20.0, 2: 12.0}, "int8_dynamic": {1: 8.0, 2: 5.0},
                             "int8_static": {1: 6.0, 2: 3.5}, "int8_static_pc": {1: 2.0, 2: 1.0}})


def test_pick(run_dir):
    from compress.report import collect

    table = collect(run_dir)
    chosen, why = pick(table, "best_within_drop", max_drop=1.0)
    assert chosen.name == "teacher · int8 dynamic" and why["within_budget"] and why["threads"] == 2
    assert why["rule"] == "the fastest within 1 point of the teacher's accuracy, by p50 latency at 2 threads"
    assert {c["name"] for c in why["candidates"]} == {"teacher · int8 dynamic", "teacher · int8 static"}
    assert pick(table, "best_within_drop", max_drop=2.5)[0].name == "teacher · int8 static"  # now within budget
    exact, why_exact = pick(table, "best_within_drop", max_drop=2.0)  # 0.90 - 0.88: 2 points, as floats give it
    assert exact.name == "teacher · int8 static" and why_exact["within_budget"]
    assert pick(table, "fastest")[0].name == "teacher · int8 static"  # the unshippable one is never picked
    chosen, why = pick(table, "most_accurate", max_drop=5.0)  # max_drop plays no part: not said (it was)
    assert chosen.name == "teacher · int8 dynamic" and why["rule"] == \
        "the most accurate by accuracy (ties: by p50 latency at 2 threads)"
    chosen, why = pick(table, "best_within_drop", max_drop=0.1)  # nothing within: the most accurate, flagged
    assert chosen.name == "teacher · int8 dynamic" and not why["within_budget"]
    assert why["rule"].startswith("none within 0.1 points of the teacher's accuracy: the most accurate")
    rows = {r.name: r for r in table.rows}
    saved = rows["teacher · int8 static"].metric
    rows["teacher · int8 static"].metric = rows["teacher · int8 dynamic"].metric  # a tie: the faster (static)
    assert pick(table, "most_accurate")[0].name == "teacher · int8 static"
    rows["teacher · int8 static"].metric = saved
    for row in table.rows:  # no bench: smaller file first (a tie here: the more accurate)
        row.latency = {}
    chosen, why = pick(table, "fastest")
    assert why["by"].startswith("file size") and chosen.name == "teacher · int8 dynamic"
    for row in table.rows:
        row.shippable = False
    with pytest.raises(CompressError, match="no shippable int8 model"):
        pick(table, "fastest")


def test_pick_ranks_no_nan_score_and_names_the_guard_when_it_passed_none(run_dir):
    """A shippable int8 model scored nan (a regression model's constant predictions) was "most accurate" whenever it
    came first (max() keeps a nan first), and "not within 100 points" of the teacher; with no model shippable because
    the guard passed none, the refusal said to run the quantize stage, which had run."""
    from compress.report import collect

    table = collect(run_dir)
    rows = {r.name: r for r in table.rows}
    rows["teacher · int8 dynamic"].metric = float("nan")
    for how in ("most_accurate", "best_within_drop"):
        chosen, why = pick(table, how, max_drop=100.0)
        assert chosen.name == "teacher · int8 static" and why["within_budget"]
    for row in table.rows:
        row.shippable = False
    with pytest.raises(CompressError, match=r"no shippable int8 model: the quantize stage's accuracy guard passed "
                                            r"none \(why: .*quantize\.json, int8\.<mode>\.guard\)"):
        pick(table, "fastest")


def test_default_bundle_names_say_the_task_once():
    from compress.config import default_bundle_name as default_name

    assert default_name("quickstart", "sst2") == "quickstart-sst2-int8"
    assert default_name("rte", "rte") == "rte-int8" and default_name("sst2-cpu", "sst2") == "sst2-cpu-int8"
    assert default_name("MRPC_small", "mrpc") == "MRPC_small-int8" and default_name("sst2x", "sst2") == "sst2x-sst2-int8"


def test_bundle_budget_defaults_to_quantize_max_drop_even_when_zero(tmp_path):
    """bundle.max_drop unset: quantize.max_drop, 0 included (it was read as unset: a budget of 1 point)."""
    from compress.bundle import bundle_max_drop
    from compress.config import load_recipe

    path = tmp_path / "r.yaml"
    for quantize, bundle, want in (("{max_drop: 0.0}", "{}", 0.0), ("{max_drop: 0.3}", "{}", 0.3),
                                   ("{max_drop: 0.0}", "{max_drop: 2.5}", 2.5)):
        path.write_text(f"task: {{name: sst2}}\nteacher: {{}}\nquantize: {quantize}\nbundle: {bundle}\n")
        assert bundle_max_drop(load_recipe(path)) == want


def test_bundle_stage_from_a_run(run_dir, tmp_path):
    from compress.bundle import run as bundle_stage

    import dataclasses

    recipe = _recipe(tmp_path, "edge", "{pick: best_within_drop, max_drop: 2.5, threads: 1}")
    recipe = dataclasses.replace(recipe, overrides={"teacher.max_steps": 60})  # as `--set teacher.max_steps=60`
    out = tmp_path / "stage-out"
    out.mkdir()
    record = json.loads((run_dir / "quantize" / "quantize.json").read_text())
    record["int8"]["static"]["metrics"]["f1"] = 0.91  # every metric the quantize stage scored ships (MRPC: f1, acc)
    (run_dir / "quantize" / "quantize.json").write_text(json.dumps(record))
    result = bundle_stage(recipe, out, {"quantize": run_dir / "quantize", "bench": run_dir / "bench"})
    assert result["bundle"]["chosen"] == "teacher · int8 static" and result["bundle"]["threads"] == 1
    folder = out / "edge-sst2-int8"
    assert result["bundle"]["paths"] == ["edge-sst2-int8", "edge-sst2-int8.tar.gz"]
    from compress.bundle_predict import sha256_file

    assert result["bundle"]["manifest_sha256"] == sha256_file(out / "edge-sst2-int8" / "manifest.json")
    m = json.loads((folder / "manifest.json").read_text())
    assert m["metrics"]["dev"] == {"accuracy": 0.88, "f1": 0.91}
    assert m["metrics"]["teacher_dev"] == {"accuracy": 0.90} and m["metrics"]["retention"] == pytest.approx(0.88 / 0.90)
    assert m["latency"]["p50_ms"] == 6.0 and m["latency"]["p90_ms"] == 7.2 and m["latency"]["threads"] == 1
    assert m["latency"]["speedup_vs_teacher_onnx_fp32"] == pytest.approx(20 / 6, abs=0.01)
    by_threads = m["latency"]["by_threads"]  # every benchmarked thread count, the fastest marked
    assert list(by_threads) == ["1", "2"] and by_threads["2"]["p50_ms"] == 3.5 and by_threads["2"]["fastest"]
    assert by_threads["2"]["speedup_vs_teacher_onnx_fp32"] == pytest.approx(12 / 3.5, abs=0.01)
    assert "fastest" not in by_threads["1"] and by_threads["1"]["p50_ms"] == 6.0
    assert m["latency"]["protocol"]["dev_rows"] == 200 and "allow_spinning=0" in m["latency"]["protocol"]["spin"]
    assert "rounds" not in m["latency"]["protocol"]  # only what a reader of the latency needs
    assert m["source"]["artifact"] == "teacher · int8 static" and m["source"]["within_budget"] is True
    # the run's --set values beside the recipe's path: the file alone did not make it (a shrunk run read as full)
    assert m["source"]["overrides"] == {"teacher.max_steps": 60}
    assert '- overrides: {"teacher.max_steps": 60}' in (folder / "README.md").read_text()
    assert m["memory"]["peak_rss_mb"] == 300.0 and "fresh process" in m["memory"]["measured"]  # the bench's probe
    assert "Memory: 300 MiB peak resident on the build machine (the model alone in a fresh process" in \
        (folder / "README.md").read_text()
    from compress.bundle import memory_protocol  # the largest shape named inside the sentence, not after it

    assert memory_protocol("8 x 128 tokens").endswith("largest fixed shape (8 x 128 tokens) and a few dev rows; "
                                                      "shared libraries' pages included")
    assert "largest fixed shape and a few" in memory_protocol()
    assert m["max_length"] == 32 and m["task"]["labels"] == ["negative", "positive"]
    assert sha256_file(folder / "model.onnx") == sha256_file(run_dir / "quantize" / "int8_static.onnx")
    assert predict(out / "edge-sst2-int8.tar.gz", TEXTS)[0]["label"] in ("negative", "positive")
    with pytest.raises(CompressError, match=r": threads: an integer from 1 to 1024, got 100000$"):  # hung the machine
        predict(folder, TEXTS, threads=100000)
    card = (folder / "README.md").read_text()
    assert "| speedup vs the teacher's ONNX fp32 |" in card and "onnxruntime's default, idle threads spinning" in card
    assert "| p50 (ms) |" in card and "| batch size | 1 |" in card and "p50_ms" not in card
    assert "| 2 (fastest) | 3.500 |" in card and "ran fastest at 2 threads (`python predict.py --threads 2 ...`)" in card
    from compress.manifest import hash_tree  # the stage's outputs as its manifest records them: the shipped manifest too

    assert "edge-sst2-int8/manifest.json" in hash_tree(out) and "edge-sst2-int8.tar.gz" in hash_tree(out)


def test_the_bundle_stage_scores_the_bundle_as_it_ships_before_publishing_it(run_dir, tmp_path, glue_dir, int8_model,
                                                                             tokenizer, capsys):
    """bundle.verify (on by default): the stage scores the built bundle with predict.py's runner on the dev rows the
    run scored and publishes nothing when that score is off the record by more than verify_tolerance points (a
    tokenizer or runtime that does not reproduce the measured model), or when dev has another number of rows now;
    the manifest and the model card carry the check."""
    from compress.bundle import run as bundle_stage
    from compress.config import TaskConfig
    from compress.data import load_split

    dev = load_split(TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2")), "dev")
    want = float((_reference_logits(int8_model, tokenizer, dev["text"][:40]).argmax(-1) == dev["label"][:40]).mean())
    task = f", data_dir: {glue_dir / 'SST-2'}, max_eval_samples: 40"
    recipe = _recipe(tmp_path, "edge", "{pick: most_accurate}", verify=True, task=task)
    assert recipe.bundle.verify and recipe.bundle.verify_tolerance == 0.5  # the defaults
    quantize = run_dir / "quantize" / "quantize.json"

    def recorded(accuracy: float) -> None:  # both shippable int8 models are copies of int8_model
        record = json.loads(quantize.read_text())
        for mode in ("dynamic", "static"):
            record["int8"][mode]["metrics"]["accuracy"] = accuracy
        quantize.write_text(json.dumps(record))

    recorded(0.892)
    inputs = {"quantize": run_dir / "quantize", "bench": run_dir / "bench"}
    out = tmp_path / "stage-out"
    out.mkdir()
    with pytest.raises(CompressError) as e:  # the run's record (0.892) is made up: the bundle scores what it scores
        bundle_stage(recipe, out, inputs)
    assert str(e.value) == (f"bundle.verify: the bundle as shipped scores accuracy {want:.4f} on 40 dev rows, the run "
                            f"recorded 0.8920: {100 * abs(want - 0.892):.2f} points apart, more than "
                            f"bundle.verify_tolerance (0.5); its tokenizer.json or runtime does not reproduce the "
                            f"measured model (bundle.verify: false ships it anyway)")
    assert list(out.iterdir()) == []  # nothing published, nothing half-written
    recorded(want + 0.004)  # within the tolerance: shipped, both scores on record
    bundle_stage(recipe, out, inputs)
    m = json.loads((out / "edge-sst2-int8" / "manifest.json").read_text())
    assert m["metrics"]["dev"] == {"accuracy": want + 0.004}
    checked = m["verified"]
    assert (checked["split"], checked["rows"], checked["metrics"], checked["metric"]) == ("dev", 40, {"accuracy": want},
                                                                                          "accuracy")
    assert checked["recorded"] == want + 0.004 and checked["points_apart"] == 0.4 and checked["tolerance_points"] == 0.5
    assert "predict.py" in checked["runner"]
    card = (out / "edge-sst2-int8" / "README.md").read_text()
    assert f"scored accuracy {want:.4f} on the same 40 dev rows (recorded above: {want + 0.004:.4f})" in card
    said = capsys.readouterr().out
    assert f"[bundle] verified as shipped: accuracy {want:.4f} on 40 dev rows" in said
    # its memory as a device runs it: predict.py in a fresh process, the tokenizer included
    peak = checked["memory"]["peak_rss_mb"]
    assert 20 < peak < 2000 and "predict.py --bench 1 in a fresh process on 40 of the first 40 dev rows (the " \
        "non-blank ones) and one of max_length (32) tokens" in checked["memory"]["measured"]  # the rows verified
    assert f"Memory as shipped: {peak:.0f} MiB peak resident on the build machine, running `predict.py` (python " \
        "predict.py --bench 1" in card and f"[bundle] as shipped: {peak:.0f} MiB peak resident" in said
    assert main(["predict", str(out / "edge-sst2-int8"), "a fine film"]) == 0  # the rewritten manifest verifies
    teacher = run_dir / "teacher" / "manifest.json"  # dev had 50 rows when the run scored it
    manifest = json.loads(teacher.read_text())
    teacher.write_text(json.dumps({**manifest, "train": {"dev_rows": 50, "dev_split_rows": 872}}))
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(CompressError, match=r"^bundle.verify: the dev split has 40 rows to score now, the run scored "
                                            r"50: the data changed since"):
        bundle_stage(recipe, again, inputs)
    assert list(again.iterdir()) == []
    off = _recipe(tmp_path, "edge", "{pick: most_accurate, verify: false}", verify=True, task=task)
    bundle_stage(off, again, inputs)  # off: nothing scored, nothing said
    assert "verified" not in json.loads((again / "edge-sst2-int8" / "manifest.json").read_text())


def test_bundle_verify_fails_when_only_one_of_the_scores_is_defined(monkeypatch):
    """A bundle scoring nan (a pearson of constant predictions: a tokenizer that gives every text the same tokens)
    against a recorded 0.85, or a score against none recorded, was 'verified as shipped' with nothing compared."""
    import compress.bundle as b
    from compress.config import TaskConfig

    def scored(**metrics):
        monkeypatch.setattr(b, "score", lambda *a, **k: {"rows": 40, "metrics": metrics})

    monkeypatch.setattr(b, "shipped_memory", lambda *a, **k: None)  # no bundle folder here to run

    stsb = TaskConfig(name="stsb", max_eval_samples=40)
    scored(pearson=float("nan"), spearmanr=float("nan"))
    with pytest.raises(CompressError, match=r"^bundle.verify: the bundle as shipped scores pearson – \(undefined\) on "
                                            r"40 dev rows, the run recorded 0.8500: only one of them is a score;"):
        b.check_as_shipped(Path("x"), stsb, {"pearson": 0.85}, "pearson", 0.5, 40)
    scored(pearson=0.85, spearmanr=0.84)
    with pytest.raises(CompressError, match=r"scores pearson 0.8500 on 40 dev rows, the run recorded – \(undefined\)"):
        b.check_as_shipped(Path("x"), stsb, {"spearmanr": 0.84}, "pearson", 0.5, 40)
    scored(pearson=float("nan"), spearmanr=float("nan"))  # undefined on both sides: the same (constant labels)
    assert b.check_as_shipped(Path("x"), stsb, {"pearson": float("nan")}, "pearson", 0.5, 40)["points_apart"] is None
    scored(pearson=0.851, spearmanr=0.84)
    assert b.check_as_shipped(Path("x"), stsb, {"pearson": 0.85}, "pearson", 0.5, 40)["points_apart"] == 0.1
    # a model of one label for every row is verified (it is what was measured) and said to be one
    monkeypatch.setattr(b, "score", lambda *a, **k: {"rows": 40, "metrics": {"accuracy": 0.55},
                                                     "constant_label": "positive"})
    warned = []
    monkeypatch.setattr(b.log, "warning", lambda msg, *args: warned.append(msg % args))
    b.check_as_shipped(Path("x"), TaskConfig(name="sst2", max_eval_samples=40), {"accuracy": 0.55}, "accuracy", 0.5, 40)
    assert warned == ["bundle: the bundle predicts 'positive' for every one of the 40 dev rows (a constant model): its "
                      "accuracy is that label's share, learnt from no text; train longer or on more rows before "
                      "shipping it"]
    mrpc = TaskConfig(name="mrpc", max_eval_samples=40)  # its f1 is not the label's share (it said so)
    monkeypatch.setattr(b, "score", lambda *a, **k: {"rows": 40, "metrics": {"f1": 0.81, "accuracy": 0.685},
                                                     "constant_label": "equivalent"})
    b.check_as_shipped(Path("x"), mrpc, {"f1": 0.81}, "f1", 0.5, 40)
    assert warned[-1].startswith("bundle: the bundle predicts 'equivalent' for every one of the 40 dev rows (a "
                                 "constant model): its f1 is that of predicting one label (2p/(1+p) or 0), learnt")


def test_shipped_memory_runs_predict_py_and_warns_when_it_cannot(bundle, glue_dir, tmp_path, capsys):
    """The bundle's memory as shipped: predict.py --bench 1 in a fresh process on dev texts and one of max_length
    tokens; a bundle predict.py refuses (a tampered file) is a warning and no figure, not a failed build."""
    from compress.bundle import shipped_memory
    from compress.config import TaskConfig

    folder = tmp_path / "b"
    shutil.copytree(bundle[0], folder)
    task = TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2"))
    memory = shipped_memory(folder, task, threads=1)
    assert 20 < memory["peak_rss_mb"] < 2000
    assert memory["measured"].startswith("python predict.py --bench 1 --threads 1 in a fresh process on 256 of the "
                                         "first 256 dev rows (the non-blank ones) and one of max_length (32) tokens")
    (folder / "labels.json").write_text("{}")
    assert shipped_memory(folder, task) is None
    err = capsys.readouterr().err
    assert err.startswith("warning: bundle: the memory of the bundle as shipped was not measured: predict.py --bench: "
                          "error: ") and "labels.json" in err and err.count("\n") == 1, err


def test_shipped_memory_writes_the_lines_predict_py_reads_and_survives_a_runner_that_says_nothing(
        bundle, tmp_path, monkeypatch, capsys):
    """The texts file: one text (TAB its pair) a line, whitespace runs one space, a row with a blank side left out
    (predict.py refuses such a line), the max_length probe last; a runner that times out, prints no JSON or no
    figure (Windows) is a warning and no figure, never a failed build."""
    import subprocess
    from types import SimpleNamespace

    import compress.data
    import compress.tasks
    from compress.bundle import long_text, shipped_memory
    from compress.config import TaskConfig

    rows = {"text": ["it\trains\n  hard", "  ", "dry", "ok"], "text_pair": ["wet\r\nstreet", "x", " ", "fine"]}
    monkeypatch.setattr(compress.data, "load_split", lambda *a, **k: rows)
    monkeypatch.setattr(compress.tasks, "task_spec", lambda task: SimpleNamespace(text_pair=True))
    written, reply = [], {"stdout": json.dumps({"peak_rss_mb": 97.25}), "returncode": 0}

    def run(cmd, **kwargs):
        if isinstance(reply, Exception):
            raise reply
        written.append(Path(cmd[cmd.index("--file") + 1]).read_text(encoding="utf-8"))
        return subprocess.CompletedProcess(cmd, reply["returncode"], reply["stdout"], "")

    monkeypatch.setattr(subprocess, "run", run)
    task = TaskConfig(name="rte")
    memory = shipped_memory(bundle[0], task, rows=3)  # the verification scored 3 rows: the 4th is not read
    probe = long_text(32)
    assert written == [f"it rains hard\twet street\n{probe}\t{probe}\n"]
    assert memory == {"peak_rss_mb": 97.25, "measured": "python predict.py --bench 1 in a fresh process on 1 of the "
                      "first 3 dev rows (the non-blank ones) and one of max_length (32) tokens: tokenizer, model, "
                      "onnxruntime and the interpreter; shared libraries' pages included"}
    warning = "warning: bundle: the memory of the bundle as shipped was not measured: predict.py --bench"
    for stdout in ("not json", json.dumps({"peak_rss_mb": None}), json.dumps([1])):
        reply["stdout"] = stdout
        assert shipped_memory(bundle[0], task) is None
        assert capsys.readouterr().err.startswith(warning), stdout
    reply = subprocess.TimeoutExpired(["python"], 600)
    assert shipped_memory(bundle[0], task) is None
    assert capsys.readouterr().err.startswith(f"{warning}: Command '['python']' timed out after 600 seconds")


def test_peak_rss_mb_reads_proc_else_getrusage_in_each_systems_unit(monkeypatch):
    """predict.py's peak memory: Linux's VmHWM; elsewhere getrusage's ru_maxrss, bytes on macOS and KiB on other
    Unix; None without either."""
    from types import SimpleNamespace

    import resource

    from compress import bundle_predict

    assert 20 < bundle_predict.peak_rss_mb() < 5000  # this process (torch loaded): VmHWM

    def no_proc(*a, **k):
        raise OSError("no /proc")

    monkeypatch.setattr(bundle_predict, "open", no_proc, raising=False)
    for platform, maxrss in (("darwin", 300 * 2 ** 20), ("freebsd13", 300 * 1024)):
        monkeypatch.setattr(bundle_predict.sys, "platform", platform)
        monkeypatch.setattr(resource, "getrusage", lambda who, m=maxrss: SimpleNamespace(ru_maxrss=m))
        assert bundle_predict.peak_rss_mb() == 300.0, platform
    monkeypatch.setitem(sys.modules, "resource", None)  # import resource: ImportError
    assert bundle_predict.peak_rss_mb() is None


def test_peak_rss_mb_on_windows_reads_the_peak_working_set(monkeypatch):
    """Windows (no /proc, no `resource`): GetProcessMemoryInfo's PeakWorkingSetSize through ctypes, in MiB; None when
    the call fails or kernel32 cannot be loaded. (This host is Linux: kernel32 is a stand-in that fills the counters
    as Windows does, through the pointer it is given.)"""
    import ctypes
    from ctypes import wintypes

    from compress import bundle_predict

    calls = []

    class Kernel32:
        def __init__(self, ok):
            def get_info(handle, counters, size):  # a plain function: the code sets its argtypes and restype
                calls.append((handle, size, ctypes.sizeof(counters._obj)))
                counters._obj.PeakWorkingSetSize = 300 * 2 ** 20
                counters._obj.WorkingSetSize = 100 * 2 ** 20  # the current figure, not the peak
                return ok

            self.GetCurrentProcess = lambda: 7  # a pseudo handle, as Windows' -1
            self.K32GetProcessMemoryInfo = get_info

    monkeypatch.setattr(bundle_predict.sys, "platform", "win32")
    monkeypatch.setattr(ctypes, "WinDLL", lambda name: Kernel32(1), raising=False)
    assert bundle_predict.peak_rss_mb() == 300.0
    size = 2 * ctypes.sizeof(wintypes.DWORD) + 8 * ctypes.sizeof(ctypes.c_size_t)  # 72 on 64-bit Windows
    assert calls == [(7, size, size)]  # cb: the structure's own size
    monkeypatch.setattr(ctypes, "WinDLL", lambda name: Kernel32(0))  # the call failed
    assert bundle_predict.peak_rss_mb() is None

    def no_dll(name):
        raise OSError(f"cannot load {name}")

    monkeypatch.setattr(ctypes, "WinDLL", no_dll)
    assert bundle_predict.peak_rss_mb() is None


def test_a_bundle_and_report_say_when_dev_was_scored_on_its_first_rows_only(run_dir, tmp_path):
    """`task.max_eval_samples`: every dev figure came from the split's first rows, and the report and the bundle's card
    read as full-dev scores; the card's retention did not say of which metric (MRPC has two)."""
    from compress.bundle import run as bundle_stage
    from compress.report import collect

    teacher = json.loads((run_dir / "teacher" / "manifest.json").read_text())
    whole, first = "Dev: 872 rows scored (the whole split).", "Dev: 200 rows scored, the first of the split only"
    # (a cap, the split's rows recorded: None for a teacher stage of before dev_split_rows)
    for cap, split, rows, subset, said in ((None, None, 872, False, whole), (200, None, 200, True, first),
                                           (872, 872, 872, False, whole),  # a cap of the split's size: all of it
                                           (200, 872, 200, True, first), (1000, 872, 872, False, whole)):
        (run_dir / "teacher" / "manifest.json").write_text(json.dumps(
            {**teacher, "train": {"dev_rows": rows, **({} if split is None else {"dev_split_rows": split})},
             "config": {"task": {"max_eval_samples": cap}}}))
        table = collect(run_dir)
        assert (table.dev_rows, table.dev_subset) == (rows, subset)
        assert table.provenance["dev rows scored"].startswith(f"{rows}, the first" if subset else f"{rows} (all)")
        out = tmp_path / f"out-{cap}-{split}"
        out.mkdir()
        bundle_stage(_recipe(tmp_path, "edge", "{max_drop: 2.5}"), out,
                     {"quantize": run_dir / "quantize", "bench": run_dir / "bench"})
        m = json.loads((out / "edge-sst2-int8" / "manifest.json").read_text())
        assert (m["metrics"]["dev_rows"], m["metrics"]["dev_subset"]) == (rows, subset)
        assert m["metrics"]["retention_metric"] == "accuracy"
        card = (out / "edge-sst2-int8" / "README.md").read_text()
        assert said in card and "| - | retention (accuracy / teacher accuracy) |" in card
        assert "| - | dev_rows |" not in card and "retention_metric" not in card


def test_a_bundle_ships_its_models_scores_on_a_labelled_test_split(run_dir, tmp_path):
    """MRPC's labelled test split: the card and manifest gave dev scores only. The chosen int8 model's test scores, the
    teacher's and how many test rows (the first only, under task.max_eval_samples) ship beside them; a teacher stage
    of before test_rows gives no row count and no teacher score, the model's own still ships."""
    from compress.bundle import run as bundle_stage

    teacher = json.loads((run_dir / "teacher" / "manifest.json").read_text())
    record = json.loads((run_dir / "quantize" / "quantize.json").read_text())
    for mode, entry in record["int8"].items():
        entry["test_metrics"] = {"accuracy": 0.81 if mode == "dynamic" else 0.5}
    (run_dir / "quantize" / "quantize.json").write_text(json.dumps(record))
    for rows, split, said in ((1725, 1725, "Test: 1725 rows of the task's labelled test split scored (the whole "
                                           "split). Nothing was chosen on them."),
                              (200, 1725, "Test: 200 rows of the task's labelled test split scored, its first only "
                                          "(`task.max_eval_samples`).")):
        (run_dir / "teacher" / "manifest.json").write_text(json.dumps(
            {**teacher, "metrics": {**teacher["metrics"], "test": {"accuracy": 0.84}},
             "train": {"dev_rows": 872, "dev_split_rows": 872, "test_rows": rows, "test_split_rows": split}}))
        out = tmp_path / f"out-{rows}"
        out.mkdir()
        bundle_stage(_recipe(tmp_path, "edge", "{max_drop: 1.0}"), out,
                     {"quantize": run_dir / "quantize", "bench": run_dir / "bench"})
        m = json.loads((out / "edge-sst2-int8" / "manifest.json").read_text())["metrics"]
        assert m["test"] == {"accuracy": 0.81} and m["teacher_test"] == {"accuracy": 0.84}
        assert (m["test_rows"], m["test_subset"]) == (rows, rows < split)
        card = (out / "edge-sst2-int8" / "README.md").read_text()
        assert m["test_retention"] == pytest.approx(0.81 / 0.84)
        assert "| test | accuracy | 0.8100 |" in card and "| test (the teacher's) | accuracy | 0.8400 |" in card
        # how the int8 scores were taken, beside them (once), and a JSON value in the provenance as JSON
        assert card.count("How the int8 scores were taken: dev texts one at a time, as shipped.") == 1
        assert "- within_budget: true" in card and "int8_scoring" not in card
        assert "| - | retention on test (accuracy / teacher accuracy) | 0.9642 |" in card  # 0.96428..., rounded down
        assert said in card and "test_rows" not in card
    # a teacher stage of before test_rows, capped: the rows the quantize stage scored, the split's first
    record["rows"] = {**record.get("rows", {}), "test": 200}
    (run_dir / "quantize" / "quantize.json").write_text(json.dumps(record))
    (run_dir / "teacher" / "manifest.json").write_text(json.dumps(
        {**teacher, "metrics": {**teacher["metrics"], "test": {"accuracy": 0.84}},
         "train": {"dev_rows": 200}, "config": {"task": {"max_eval_samples": 200}}}))
    out = tmp_path / "out-old"
    out.mkdir()
    bundle_stage(_recipe(tmp_path, "edge", "{max_drop: 1.0}"), out,
                 {"quantize": run_dir / "quantize", "bench": run_dir / "bench"})
    m = json.loads((out / "edge-sst2-int8" / "manifest.json").read_text())["metrics"]
    assert (m["test_rows"], m["test_subset"]) == (200, True)
    from compress.bundle import bundle_metrics  # a hand-edited score that is no number: no retention, no traceback

    assert bundle_metrics({"f1": .8}, {"f1": .9}, "f1", 200, True, {"f1": .78}, {"f1": "abc"})["test_retention"] is None
    (run_dir / "teacher" / "manifest.json").write_text(json.dumps(teacher))
    out = tmp_path / "out-none"
    out.mkdir()
    bundle_stage(_recipe(tmp_path, "edge", "{max_drop: 1.0}"), out,
                 {"quantize": run_dir / "quantize", "bench": run_dir / "bench"})
    m = json.loads((out / "edge-sst2-int8" / "manifest.json").read_text())["metrics"]
    assert m["test"] == {"accuracy": 0.81} and "teacher_test" not in m and "test_rows" not in m
    assert "test_retention" not in m


def test_regression_bundle(tmp_path, minilm_dir):
    """A one-output model (STS-B style): no labels, predict returns the value."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(1)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=1)).eval()
    export_int8(model, tmp_path)
    folder, archive = build(tmp_path / "out", "stsb", model=tmp_path / "int8.onnx",
                            tokenizer=minilm_dir / "tokenizer.json", task="stsb", labels=None, text_pair=True,
                            max_length=32, ort_format=False)
    m = json.loads((folder / "manifest.json").read_text())
    assert m["task"]["regression"] is True and m["task"]["labels"] is None
    (value,) = predict(archive, ["a man is playing a guitar"], ["someone plays guitar"])
    assert set(value) == {"value"} and np.isfinite(value["value"])
    assert main(["predict", str(folder), "a man is playing a guitar", "someone plays guitar"]) == 0


def test_a_bundle_scores_what_its_quantize_record_says(tmp_path, tokenizer, minilm_dir, glue_dir):
    """The int8 dynamic accuracy the quantize stage records is the accuracy the shipped bundle gives, text by text
    (scored in batches of 32, as before, this model's record read 46.88 against the bundle's 45.83 here)."""
    from transformers import BertForSequenceClassification

    from compress.bundle_predict import Predictor
    from compress.config import QuantizeConfig, TaskConfig
    from compress.data import Collator, load_split, tokenize
    from compress.export import onnx_predict, session
    from compress.quantize import quantize_model

    cfg = TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2"))
    rows = load_split(cfg, "dev").select(range(96))
    dev = tokenize(rows, tokenizer, 64)
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(initializer_range=0.5)).eval()
    labels = np.asarray(dev["label"])
    (tmp_path / "q").mkdir()
    rec = quantize_model(model, dev, labels, ["accuracy"], Collator({"": tokenizer}),
                         QuantizeConfig(modes=["dynamic"], max_drop=100.0, ort_format=False), tmp_path / "q",
                         calib_rows=dev, sens_rows=dev.select(range(8)))
    folder, _ = build(tmp_path / "out", "tiny", model=tmp_path / "q" / "int8_dynamic.onnx",
                      tokenizer=minilm_dir / "tokenizer.json", task="sst2", labels=["0", "1"], text_pair=False,
                      max_length=64, ort_format=False)
    shipped = Predictor(folder).logits(list(rows["text"]))
    np.testing.assert_allclose(shipped, onnx_predict(session(tmp_path / "q" / "int8_dynamic.onnx"), dev,
                                                     Collator({"": tokenizer}), batch_size=1), atol=1e-5)
    assert float((shipped.argmax(-1) == labels).mean()) == rec["int8"]["dynamic"]["metrics"]["accuracy"]


# ------------------------------------------------------------------------------------------ what a device may be fed
def _run_predict_py(folder: Path, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "predict.py", *args], capture_output=True, cwd=folder, **kw)


def test_corrupt_archive_is_refused_in_one_line(bundle, tmp_path):
    _, archive = bundle
    data = archive.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2:len(data) // 2 + 100] = bytes(b ^ 0xFF for b in flipped[len(data) // 2:len(data) // 2 + 100])
    bad = "not a readable bundle archive, truncated or corrupt"
    for name, content, message in [("truncated", data[:len(data) // 2], bad), ("text", b"hello\n", bad),
                                   ("empty", b"", bad),  # gzip's CRC is checked at the end: the file's sha256 first
                                   ("flipped", bytes(flipped), f"{bad}|sha256 mismatch")]:
        (tmp_path / f"{name}.tar.gz").write_bytes(content)
        with pytest.raises(CompressError, match=message) as e:
            predict(tmp_path / f"{name}.tar.gz", ["hi"])
        assert "\n" not in str(e.value)
    for missing in (tmp_path / "gone", tmp_path / "gone.tar.gz"):  # a path that is neither: said so, in one line
        with pytest.raises(CompressError) as e:
            predict(missing, ["hi"])
        assert str(e.value) == f"{missing}: no such bundle folder or archive"
    with pytest.raises(CompressError) as e:  # a path that exists but is neither: it said "no such" too
        predict("/dev/null", ["hi"])
    assert str(e.value) == "/dev/null: not a bundle folder or archive (neither a folder nor a regular file)"


def test_bytecode_in_the_bundle_is_checked(bundle, tmp_path):
    """Importing predict.py (the documented Python API) leaves __pycache__/predict.<tag>.pyc: accepted, since it is the
    verified source compiled. A planted .pyc (it would run instead of predict.py) is refused, as is any other file
    there, and an archive carrying __pycache__."""
    import py_compile

    folder = _copy(bundle[0], tmp_path / "b")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as on a device: bytecode written
    proc = subprocess.run([sys.executable, "-c", "import predict; print(predict.Predictor('.').predict(['fine'])[0]"
                           "['label'])"], capture_output=True, text=True, cwd=folder, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() in ("negative", "positive"), proc.stderr
    pyc = folder / "__pycache__" / f"predict.{sys.implementation.cache_tag}.pyc"
    assert pyc.is_file()
    predict(folder, ["still verifies"])
    for flag, opt in (("-O", "opt-1"), ("-OO", "opt-2")):  # python -O / -OO (PYTHONOPTIMIZE) write their own files
        proc = subprocess.run([sys.executable, flag, "-c", "import predict; predict.Predictor('.')"],
                              capture_output=True, text=True, cwd=folder, env=env)
        assert proc.returncode == 0 and (folder / "__pycache__" / f"predict.{sys.implementation.cache_tag}.{opt}.pyc"
                                         ).is_file(), proc.stderr
    predict(folder, ["still verifies"])
    for other in folder.glob("__pycache__/*.opt-*.pyc"):
        other.unlink()
    # another Python's bytecode (one folder used with two interpreters) was refused: this one never loads it; a tag
    # that is this one's in other case is the file it loads on a case-insensitive file system: still refused
    other = folder / "__pycache__" / "predict.cpython-399.opt-1.pyc"
    other.write_bytes(b"another interpreter's")
    predict(folder, ["still verifies"])
    # but not where the manifest's own sha256 is checked (the published digest: nothing unchecked may pass), as
    # that interpreter would run it on import in place of the verified predict.py
    digest = sha256_file(folder / "manifest.json")
    with pytest.raises(CompressError, match=r"predict\.cpython-399\.opt-1\.pyc: predict\.py bytecode of another "
                                            r"Python, which this one cannot check .* delete .*__pycache__"):
        predict(folder, ["x"], manifest_sha256=digest)
    proc = _run_predict_py(folder, "--manifest-sha256", digest, "x", text=True)
    assert proc.returncode == 2 and "bytecode of another Python" in proc.stderr, proc.stderr
    other.unlink()
    assert predict(folder, ["verifies"], manifest_sha256=digest)
    upper = folder / "__pycache__" / f"predict.{sys.implementation.cache_tag.upper()}.pyc"
    upper.write_bytes(b"planted")
    with pytest.raises(CompressError, match=r"not listed in manifest\.json"):
        predict(folder, ["x"])
    upper.unlink()
    (tmp_path / "evil.py").write_text((folder / "predict.py").read_text() + "\nprint('PLANTED CODE RAN')\n")
    py_compile.compile(str(tmp_path / "evil.py"), cfile=str(pyc),
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    with pytest.raises(CompressError, match=r"__pycache__/predict\..*\.pyc: not listed in manifest\.json"):
        predict(folder, ["x"])
    pyc.unlink()
    (folder / "__pycache__" / "numpy.cpython-311.pyc").write_bytes(b"x")
    with pytest.raises(CompressError, match=r"numpy\.cpython-311\.pyc: not listed"):
        predict(folder, ["x"])
    members = [_file(f"b/{p.name}", p.read_bytes()) for p in sorted(bundle[0].iterdir())]
    archive = _tar_with(tmp_path / "pyc.tar.gz", members + [_file(f"b/__pycache__/{pyc.name}", b"junk")])
    with pytest.raises(CompressError, match=r"__pycache__/.*: not listed"):
        predict(archive, ["x"])


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["model"].update(file="/etc/hostname"), r"model\.file must name a file listed under 'files'"),
    (lambda m: m.update(max_length="abc"), "max_length must be a positive integer"),
    (lambda m: m["task"].update(labels=["a"]), "task.labels must be a list of two or more label names"),
    (lambda m: m["task"].update(text_pair="false"), "task.text_pair must be true or false, got 'false'"),
    (lambda m: m["task"].update(text_pair=1), "task.text_pair must be true or false, got 1"),  # as predict.mjs
    (lambda m: m["task"].update(labels=["bad", "good"]), r"task\.labels \['bad', 'good'\] differ from labels\.json"),
    (lambda m: m["model"].update(file="tokenizer.json"), "tokenizer.json: onnxruntime cannot load it"),
    (lambda m: m.pop("model"), r"model\.file must name a file"),
    # label names swapped, and labels_file dropped so that no check compares them: "positive" printed for "negative"
    (lambda m: (m["task"].update(labels=m["task"]["labels"][::-1]), m.update(labels_file=None)),
     r"labels_file must name a file listed under 'files' \(the verified label names\), got None"),
    # a max_length the verified tokenizer.json does not truncate to: shorter flipped labels, longer crashed onnxruntime
    (lambda m: m.update(max_length=4), r"max_length 4 differs from the 32 tokens tokenizer\.json truncates to"),
    (lambda m: m.update(max_length=5000), r"max_length 5000 differs from the 32 tokens tokenizer\.json"),
])
def test_a_malformed_manifest_is_refused_in_one_line(bundle, tmp_path, edit, message):
    """manifest.json is the one file not hashed: every field the runners read is checked (a model path outside the
    listed files, label names that are not the verified labels.json's)."""
    folder = _copy(bundle[0], tmp_path / "b")
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CompressError, match=message) as refused:
        predict(folder, ["x"])
    assert not str(refused.value).startswith(f"{folder}: {folder}"), refused.value  # the bundle named once
    proc = _run_predict_py(folder, "x", text=True)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: ")


def test_predict_py_command_line_edges(bundle, tmp_path):
    """Options after the text; an empty text refused; bytes that are not UTF-8 (argument or file) read as U+FFFD, as
    predict.mjs reads them; a lone CR inside a line does not split it; a closed pipe ends quietly; a missing runtime
    package is named with its pinned pip line."""
    folder, archive = bundle
    assert _run_predict_py(folder, TEXTS[0], "--json").returncode == 0
    proc = _run_predict_py(folder, "--threads", "1", TEXTS[0], text=True)
    assert proc.returncode == 0 and proc.stdout.count("\t") == 1 and proc.stderr == "", proc.stderr
    proc = _run_predict_py(folder, "--threads", str(os.cpu_count() + 1), TEXTS[0], text=True)
    assert proc.returncode == 0 and proc.stdout.count("\t") == 1
    assert proc.stderr.startswith(f"warning: --threads {os.cpu_count() + 1} is more than this machine's")
    for bad in ("02", "+2", " 2", "2_0"):  # int() takes them (2_0 as 20 threads); predict.mjs refuses them
        proc = _run_predict_py(folder, "--threads", bad, TEXTS[0], text=True)
        assert proc.returncode == 2 and "--threads: expected an integer" in proc.stderr, (bad, proc.stderr)
    for empty in ("", "   "):
        proc = _run_predict_py(folder, empty, text=True)
        assert proc.returncode == 2 and proc.stderr == "error: an empty text: nothing to classify\n"
    # only characters the tokenizer drops (zero-width space, a control character, a soft hyphen): [CLS] [SEP] was
    # classified (a label and a score for nothing), as a blank text is not
    for dropped in ("\u200b", "\x01", "\u00ad \ufeff"):
        proc = _run_predict_py(folder, dropped, text=True)
        assert proc.returncode == 2 and proc.stderr == ("error: an empty text (nothing in it the tokenizer keeps: "
                                                        "nothing to classify)\n"), proc.stderr
    (tmp_path / "dropped.txt").write_text("good\n\u200b\n")
    proc = _run_predict_py(folder, "--file", str(tmp_path / "dropped.txt"), text=True)
    assert proc.returncode == 2 and proc.stdout.count("\t") == 1 and proc.stderr == (
        f"error: {tmp_path / 'dropped.txt'} line 2: an empty text (nothing in it the tokenizer keeps: nothing to "
        f"classify)\n")
    proc = _run_predict_py(folder, b"\xff bad")
    assert proc.returncode == 0 and proc.stdout.count(b"\t") == 1, proc.stderr
    (tmp_path / "odd.txt").write_bytes(b"good\n\xff bad\na\rb\n")
    proc = _run_predict_py(folder, "--json", "--file", str(tmp_path / "odd.txt"), text=True)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["line"] for line in proc.stdout.splitlines()] == [1, 2, 3]
    (tmp_path / "boms.txt").write_bytes(b"\xef\xbb\xbf\xef\xbb\xbf\nsecond\n")  # predict.mjs read line 1 as a text
    proc = _run_predict_py(folder, "--json", "--file", str(tmp_path / "boms.txt"), text=True)
    assert [json.loads(line)["line"] for line in proc.stdout.splitlines()] == [2]
    (tmp_path / "many.txt").write_text("a fine film\n" * 3000)
    # standard output on a full disk: one line naming it, not a traceback, buffered or not (it named no file)
    for unbuffered, args in (("", [TEXTS[0]]), ("1", [TEXTS[0]]), ("1", ["--file", str(tmp_path / "many.txt")])):
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, "predict.py", *args], stdout=full, stderr=subprocess.PIPE,
                                  text=True, cwd=folder, env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
        assert proc.returncode == 1 and proc.stderr == "error: standard output: No space left on device\n", args
    proc = subprocess.run(f"{sys.executable} predict.py --file {tmp_path / 'many.txt'} | head -1", shell=True,
                          capture_output=True, text=True, cwd=folder)
    assert proc.stdout.count("\n") == 1 and proc.stderr == ""
    code = "import runpy, sys; sys.modules['tokenizers'] = None; sys.argv = ['predict.py', 'hi']; " \
           "runpy.run_path('predict.py', run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=folder)
    assert proc.returncode == 2 and proc.stderr.startswith("error: this bundle needs onnxruntime, tokenizers, numpy")
    assert "pip install onnxruntime==" in proc.stderr and len(proc.stderr.splitlines()) == 1
    older = code.replace("sys.argv =", "sys.version_info = (3, 10, 0, 'final', 0); sys.argv =")  # Python 3.10
    proc = subprocess.run([sys.executable, "-c", older], capture_output=True, text=True, cwd=folder)
    assert proc.returncode == 2 and ": pip install onnxruntime tokenizers numpy (the versions it was built with, " \
        "onnxruntime==" in proc.stderr and proc.stderr.endswith("need Python >= 3.11)\n"), proc.stderr


def test_compress_predict_takes_options_anywhere(bundle, capsys):
    folder, _ = bundle
    assert main(["predict", str(folder), "--json", TEXTS[0]]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"label", "score", "scores"}
    assert main(["predict", str(folder), "--threads", "1", TEXTS[1]]) == 0
    assert capsys.readouterr().err == ""
    assert main(["predict", str(folder), "--threads", str(os.cpu_count() + 1), TEXTS[1]]) == 0
    assert "is more than this machine's" in capsys.readouterr().err
    assert main(["predict", str(folder), ""]) == 2
    assert capsys.readouterr().err.strip().endswith("an empty text: nothing to classify")
    with pytest.raises(SystemExit):
        main(["predict", str(folder), "a", "--json", "b", "c"])
    assert "unrecognized arguments: c" in capsys.readouterr().err


def test_an_edited_manifest_is_caught_by_its_published_sha256_and_a_linked_one_is_refused(bundle, tmp_path, capsys):
    """manifest.json is the one file not hashed: swapping labels.json and re-hashing it there was accepted by both
    runners (every prediction reversed). The manifest's own sha256, printed by `compress bundle` to publish apart,
    catches that (`--manifest-sha256`); a manifest that is a symlink is refused as every other linked file is; a
    pad_id that is not the tokenizer's pad token's id is refused (an out-of-range one was a traceback)."""
    import hashlib

    from compress.bundle_predict import sha256_file

    folder = _copy(bundle[0], tmp_path / "b")
    good = sha256_file(folder / "manifest.json")
    assert main(["predict", str(folder), "--manifest-sha256", good, TEXTS[0]]) == 0
    capsys.readouterr()
    labels = json.loads((folder / "labels.json").read_text())
    labels["labels"] = labels["labels"][::-1]
    (folder / "labels.json").write_text(json.dumps(labels))
    m = json.loads((folder / "manifest.json").read_text())
    m["files"]["labels.json"] = hashlib.sha256((folder / "labels.json").read_bytes()).hexdigest()
    m["task"]["labels"] = labels["labels"]
    (folder / "manifest.json").write_text(json.dumps(m))
    assert main(["predict", str(folder), TEXTS[0]]) == 0  # the hashes alone cannot see it
    capsys.readouterr()
    assert main(["predict", str(folder), "--manifest-sha256", good.upper(), TEXTS[0]]) == 2
    assert f"manifest.json: sha256 {sha256_file(folder / 'manifest.json')} is not the expected {good}" in \
        capsys.readouterr().err
    for bad in (good[:8], f"{good}  manifest.json"):  # a prefix, a sha256sum line: a usage error, not "changed"
        with pytest.raises(SystemExit):
            main(["predict", str(folder), "--manifest-sha256", bad, TEXTS[0]])
        assert "expected the 64 hex digits of a sha256" in capsys.readouterr().err
        proc = _run_predict_py(folder, "--manifest-sha256", bad, "x", text=True)
        assert proc.returncode == 2 and "expected the 64 hex digits" in proc.stderr
    # what checks a bundle from elsewhere is code from outside it: sha256sum -c, as the card says
    check = subprocess.run(["sha256sum", "-c"], input=f"{good}  manifest.json\n", cwd=folder, capture_output=True,
                           text=True)
    assert check.returncode == 1 and "FAILED" in check.stdout
    proc = _run_predict_py(folder, "--manifest-sha256", good, "x", text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "may have been changed" in proc.stderr
    assert _run_predict_py(folder, "--manifest-sha256", sha256_file(folder / "manifest.json"), "x").returncode == 0

    linked = _copy(bundle[0], tmp_path / "linked")
    (tmp_path / "elsewhere.json").write_bytes((linked / "manifest.json").read_bytes())
    (linked / "manifest.json").unlink()
    (linked / "manifest.json").symlink_to(tmp_path / "elsewhere.json")
    proc = _run_predict_py(linked, "x", text=True)
    assert proc.returncode == 2 and "manifest.json: a symlink" in proc.stderr
    with pytest.raises(CompressError, match="manifest.json: a symlink"):
        predict(linked, ["x"])

    padded = _copy(bundle[0], tmp_path / "pad")
    m = json.loads((padded / "manifest.json").read_text())
    for pad_id in (-1, 10 ** 11, m["tokenizer"]["pad_id"] + 1):
        m["tokenizer"]["pad_id"] = pad_id
        (padded / "manifest.json").write_text(json.dumps(m))
        proc = _run_predict_py(padded, "x", text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and f"tokenizer.pad_id {pad_id} is not the id" \
            in proc.stderr, proc.stderr


def test_compress_predict_reads_texts_that_start_with_a_dash(bundle, capsys):
    """After an option, `compress predict` took only texts not starting with "-": "-5", "- loved it" and anything
    after "--" were "unrecognized arguments" (predict.py and predict.mjs read them)."""
    folder, _ = bundle
    for argv in (["--json", "--", "-bad"], ["--json", "-5"], ["--json", "- loved it"], ["--", "-bad"]):
        assert main(["predict", str(folder), *argv]) == 0, argv
        out = capsys.readouterr().out
        assert out.strip() and (not argv[0] == "--json" or set(json.loads(out)) == {"label", "score", "scores"})
    with pytest.raises(SystemExit):
        main(["predict", str(folder), "--json", "--", "a", "b", "c"])
    assert "unrecognized arguments: c" in capsys.readouterr().err


def test_predictor_wants_a_list_of_texts(bundle):
    from compress.bundle_predict import BundleError, Predictor

    p = Predictor(bundle[0])
    with pytest.raises(BundleError, match=r"texts must be a list of strings, got one string \(use \[text\]\)"):
        p.predict("hello")
    with pytest.raises(BundleError, match=r"^an empty text \(nothing in it the tokenizer keeps"):
        p.predict(["fine", "\u200b"], batch_size=2)  # in a batch too, whatever padding gives the others
    with pytest.raises(BundleError, match="got a value of type int among them"):
        p.predict(["a", 3])


def test_build_refuses_what_would_fail_on_the_device(int8_model, minilm_dir, tmp_path, capfd):
    """A max_length beyond the model's 128 positions, label names that do not match its outputs, non-ONNX model
    files and an output path that is a file are refused at build time, leaving nothing behind."""
    kw = dict(tokenizer=minilm_dir / "tokenizer.json", task="sst2", text_pair=False, ort_format=False)
    out = tmp_path / "out"
    capfd.readouterr()
    with pytest.raises(CompressError, match="does not run on 256 tokens"):
        build(out, "long", model=int8_model, labels=["0", "1"], max_length=256, **kw)
    assert "onnxruntime" not in capfd.readouterr().err  # said once, in the error, not also in ORT's log
    # named before the build (it named the bundle's own manifest.json, a file the user never wrote)
    with pytest.raises(CompressError, match=r"int8\.onnx: the model gives 2 scores a text, but 3 labels are named "
                                            r"\(a, b, c\)$"):
        build(out, "three", model=int8_model, labels=["a", "b", "c"], max_length=32, **kw)
    for labels in (["a", "a"], ["", "b"], ["a"]):
        with pytest.raises(CompressError, match="two or more distinct, non-empty label names"):
            build(out, "bad", model=int8_model, labels=labels, max_length=32, **kw)
    (tmp_path / "x.onnx").write_text("not a model")
    with pytest.raises(CompressError, match="x.onnx: not an ONNX model"):
        build(out, "bad", model=tmp_path / "x.onnx", labels=["a", "b"], max_length=32, **kw)
    with pytest.raises(CompressError, match="exists and is not a folder"):
        build(tmp_path / "x.onnx", "bad", model=int8_model, labels=["a", "b"], max_length=32, **kw)
    assert not out.exists()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs a CPU affinity call and two usable cores")
def test_threads_warning_counts_the_cores_this_process_may_use(bundle):
    """Pinned to one core (taskset, a container's cpuset), --threads 2 is already more than it can use: predict.py
    warns, as predict.mjs does (Node.js counts the affinity's cores); the machine's core count would say nothing."""
    folder, _ = bundle
    one = min(os.sched_getaffinity(0))
    proc = subprocess.run([sys.executable, "predict.py", "--threads", "2", TEXTS[0]], capture_output=True, text=True,
                          cwd=folder, preexec_fn=lambda: os.sched_setaffinity(0, {one}))
    assert proc.returncode == 0 and proc.stdout.count("\t") == 1
    assert proc.stderr.startswith("warning: --threads 2 is more than this machine's 1 cores"), proc.stderr


def test_model_card_says_how_idle_threads_were_timed_only_where_the_protocol_says(bundle):
    """The card's "fastest at N threads" advice says whether idle threads slept (the bench's default) or spun, as
    `predict.py` runs them: advice from sleeping threads sent a reader to 1 thread, where predict.py's spinning ones
    may be faster at 2. A search bundle's protocol is one line of text: nothing said of it then. The bench records
    `spin_protocol`'s words (the advice read only a bool before, so a real card never said it)."""
    from compress.bench import spin_protocol
    from compress.bundle import model_card

    manifest = json.loads((bundle[0] / "manifest.json").read_text())
    by_threads = {"1": {"p50_ms": 0.7, "p90_ms": 0.8, "speedup_vs_teacher_onnx_fp32": 70.0, "fastest": True},
                  "2": {"p50_ms": 0.9, "p90_ms": 1.0, "speedup_vs_teacher_onnx_fp32": 30.5}}
    spinning = "(idle threads spinning, as `predict.py` runs) it ran fastest at 1 thread"
    sleeping = ("(idle threads sleeping; `predict.py` lets them spin, which can be faster at 2+ threads) it ran "
                "fastest at 1 thread")
    for protocol, said in (("batch 1, 2 threads, dev sentences", None), ({"threads": [1, 2], "spin": True}, spinning),
                           ({"threads": [1, 2], "spin": spin_protocol(True)}, spinning),
                           ({"threads": [1, 2], "spin": False}, sleeping),
                           ({"threads": [1, 2], "spin": spin_protocol(False)}, sleeping),
                           ({"threads": [1, 2], "spin": "who knows"}, None), ({"threads": [1, 2]}, None)):
        manifest["latency"] = {"p50_ms": 0.7, "p90_ms": 0.8, "throughput_per_s": 1309.24, "protocol": protocol,
                               "by_threads": by_threads}
        card = model_card(manifest)
        assert "than sleeping ones" in card and "| throughput (texts/s: 1000 / mean ms) | 1309.2 |" in card
        assert "Under this protocol it ran fastest at 1 thread" in card if said is None else said in card, card
        assert "Protocol:\n\n- " in card and "Protocol: `" not in card  # a list, not the record's JSON
    # the protocol's fields in words, known ones first in a set order, then the others by name, Markdown escaped
    manifest["latency"]["protocol"] = {"zeta": "a|b", "threads": [1, 2], "spin": spin_protocol(False), "cores": 2,
                                       "cpu": "Xeon"}
    assert ("Protocol:\n\n- CPU: Xeon\n- cores: 2\n- threads: 1, 2\n- while idle: idle threads sleep "
            "(OMP_WAIT_POLICY=PASSIVE, ORT allow_spinning=0)\n- zeta: a\\|b\n\n") in model_card(manifest)
    manifest["latency"]["protocol"] = "batch 1, 2 threads, dev sentences"  # a search's: its one line
    assert "Protocol:\n\n- batch 1, 2 threads, dev sentences\n\n" in model_card(manifest)
    manifest["task"]["text_pair"] = True  # a pair task's card speaks of pairs
    card = model_card(manifest)
    assert "Measured one pair at a time" in card and "Predictor.predict(texts, pairs, batch_size=N)` runs N pairs" in card
    # the provenance list was raw Markdown: a run or student named with HTML in it (folder names allow it)
    manifest["source"] = {"run": "runs/r<img src=x onerror=alert(1)>", "artifact": "student s|<b>x · int8 dynamic"}
    card = model_card(manifest)
    assert "- run: runs/r\\<img src=x onerror=alert(1)\\>" in card and "- artifact: student s\\|\\<b\\>x" in card
    assert "<img src=x onerror=alert(1)>" not in card and "<b>" not in card


def test_a_pair_line_with_an_empty_text_is_refused_by_line(int8_model, minilm_dir, tmp_path, capsys):
    """--file on a pair bundle: "text<TAB>" (or "<TAB>pair") is an empty text, refused with its line as the command
    line refuses `predict.py "text" ""`, not classified as if the pair were there."""
    assert main(["bundle", "--model", str(int8_model), "--tokenizer", str(minilm_dir / "tokenizer.json"),
                 "--task", "rte", "--out", str(tmp_path), "--no-ort"]) == 0
    pairs = tmp_path / "pairs.tsv"
    for line, what in (("he left\t", "text pair"), ("\the is here", "text"), ("he left\t  ", "text pair")):
        pairs.write_text(f"it rains\tthe street is wet\n{line}\n", encoding="utf-8")
        capsys.readouterr()
        assert main(["predict", str(tmp_path / "rte-int8.tar.gz"), "--file", str(pairs)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.endswith(f"{pairs} line 2: an empty {what}: nothing to classify\n")
        proc = subprocess.run([sys.executable, "predict.py", "--file", str(pairs)], capture_output=True, text=True,
                              cwd=tmp_path / "rte-int8")
        assert proc.returncode == 2 and proc.stdout.count("\n") == 1  # the good line first, then the refusal
        assert proc.stderr.strip() == f"error: {pairs} line 2: an empty {what}: nothing to classify"
    for line, what in (("he left\t\u200b", "text pair"), ("\x01\the is here", "text")):  # nothing the tokenizer keeps
        pairs.write_text(f"it rains\tthe street is wet\n{line}\n", encoding="utf-8")
        proc = subprocess.run([sys.executable, "predict.py", "--file", str(pairs)], capture_output=True, text=True,
                              cwd=tmp_path / "rte-int8")
        assert proc.returncode == 2 and proc.stdout.count("\n") == 1
        assert proc.stderr.strip() == (f"error: {pairs} line 2: an empty {what} (nothing in it the tokenizer keeps: "
                                       f"nothing to classify)")


def test_a_tokenizer_that_truncates_on_the_left_does_so_in_the_bundle(int8_model, minilm_dir, tmp_path, glue_dir):
    """A tokenizer saved with ``truncation_side: left`` (transformers keeps it: training read the end of each long
    text) was baked into the bundle truncating on the right: predict.py fed the model other tokens than it was
    trained and scored on. Token ids of real RTE pairs, training path vs the bundle's tokenizer."""
    from transformers import AutoTokenizer

    from compress.bundle_predict import Predictor
    from compress.config import TaskConfig
    from compress.data import load_split, tokenize

    AutoTokenizer.from_pretrained(minilm_dir, truncation_side="left").save_pretrained(tmp_path / "tok")
    folder, _ = build(tmp_path / "out", "rte-left", model=int8_model, tokenizer=tmp_path / "tok" / "tokenizer.json",
                      task="rte", labels=["entailment", "not_entailment"], text_pair=True, max_length=32,
                      ort_format=False)
    rows = load_split(TaskConfig(name="rte"), "dev").select(range(40))
    trained = list(tokenize(rows, AutoTokenizer.from_pretrained(tmp_path / "tok"), 32)["input_ids"])
    runner = Predictor(folder, check=False)
    bundled = [runner.tokenizer.encode(a, b).ids for a, b in zip(rows["text"], rows["text_pair"])]
    assert sum(len(ids) == 32 for ids in trained) > 20  # most pairs were cut
    assert bundled == trained


@pytest.mark.parametrize("planted", ["node_modules/onnxruntime-web/dist/ort.bundle.min.mjs", "package-lock.json"])
def test_an_archive_carrying_npm_outputs_is_refused(bundle, tmp_path, planted):
    """A folder may hold what `npm install` adds there (not verified, predict.py never reads it); a bundle archive
    never holds them (`build` tars the folder before any npm install): one there is a planted, unverified file (the
    JavaScript `node predict.mjs` would run), refused like any other unlisted one."""
    folder, _ = bundle
    members = [_file(f"b/{p.name}", p.read_bytes()) for p in sorted(folder.iterdir())]
    members.append(_file(f"b/{planted}", b"globalThis.planted = true;\n"))
    archive = _tar_with(tmp_path / "npm.tar.gz", members)
    with pytest.raises(CompressError, match=f"{planted.split('/')[0]}.*refusing"):
        predict(archive, TEXTS)


@pytest.mark.parametrize("setting", [{"do_lower_case": False}, {"strip_accents": False},
                                     {"tokenize_chinese_chars": False}, "class defaults", "model type's class"])
def test_the_bundle_normalizes_as_the_tokenizer_config_beside_it_says(minilm_dir, tmp_path, setting):
    """transformers (the training and scoring path) applies tokenizer_config.json's do_lower_case / strip_accents /
    tokenize_chinese_chars over tokenizer.json's BertNormalizer; the bundle's tokenizer took tokenizer.json as it was:
    "Héllo WORLD" lowercased in the bundle but not in training, other ids. Keys the config leaves out take the
    tokenizer class's defaults ("class defaults": a cased tokenizer.json, a BertTokenizer config without the keys:
    transformers lowercases, and the bundle did not). "model type's class": the config names no tokenizer_class, and
    transformers takes the class of config.json's model_type (bert: BertTokenizer, whose defaults apply)."""
    import shutil

    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from compress.bundle import prepare_tokenizer

    src = tmp_path / "tok"
    src.mkdir()
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, src / name)
    config = json.loads((minilm_dir / "tokenizer_config.json").read_text())
    if setting in ("class defaults", "model type's class"):
        tok_json = json.loads((src / "tokenizer.json").read_text())
        tok_json["normalizer"].update(lowercase=False, strip_accents=False, handle_chinese_chars=False)
        (src / "tokenizer.json").write_text(json.dumps(tok_json))
        config = {k: v for k, v in config.items() if k not in ("do_lower_case", "strip_accents",
                                                               "tokenize_chinese_chars")}
        if setting == "model type's class":
            config.pop("tokenizer_class")
            shutil.copy(minilm_dir / "config.json", src / "config.json")  # model_type: bert
    else:
        config.update(setting)
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    prepare_tokenizer(src / "tokenizer.json", tmp_path / "bundled.json", 32)
    bundled = Tokenizer.from_file(str(tmp_path / "bundled.json"))
    trained = AutoTokenizer.from_pretrained(src)
    for text in ["Héllo WORLD, naïve café", "中文 text Ünïcödé"]:
        assert bundled.encode(text).ids == trained(text, truncation=True, max_length=32)["input_ids"], text


@pytest.mark.parametrize("processor", ["template", "bert", "none"])
def test_a_tokenizer_of_one_token_type_gives_the_bundle_no_second_type(minilm_dir, tmp_path, processor):
    """A BERT student taking the tokenizer of a one-token-type teacher (a RoBERTa with a WordPiece tokenizer,
    `modeling.one_token_type`: tokenizer_config.json names no token_type_ids) trains with every token type 0, while
    the bundle's tokenizer.json gave a pair's second text type 1, which its graph (type_vocab_size 2) then read: the
    model saw other inputs on the device than in training. The bundle's tokenizer gives type 0 throughout, the same
    token ids; a tokenizer that names token_type_ids keeps its types."""
    import shutil

    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from compress.bundle import prepare_tokenizer

    src = tmp_path / "tok"
    src.mkdir()
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, src / name)
    if processor != "template":  # the older post-processor kind (pair types fixed at 0 and 1), or none (the library
        # then gives the second text type 1 by itself)
        tok_json = json.loads((src / "tokenizer.json").read_text())
        tok_json["post_processor"] = {"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]} \
            if processor == "bert" else None
        (src / "tokenizer.json").write_text(json.dumps(tok_json))
    config = json.loads((minilm_dir / "tokenizer_config.json").read_text())
    for names, type_ids in ((["input_ids", "attention_mask"], {0}), (None, {0, 1})):
        (src / "tokenizer_config.json").write_text(json.dumps({**config, **({"model_input_names": names} if names
                                                                            else {})}))
        prepare_tokenizer(src / "tokenizer.json", tmp_path / "bundled.json", 32, text_pair=True)
        pair = Tokenizer.from_file(str(tmp_path / "bundled.json")).encode("a gripping film", "a dull plot")
        assert set(pair.type_ids) == type_ids, names
        trained = AutoTokenizer.from_pretrained(src)("a gripping film", "a dull plot")
        assert pair.ids == trained["input_ids"] and set(trained.get("token_type_ids", [0])) == type_ids


def test_a_max_length_with_no_room_beside_the_special_tokens_is_refused(minilm_dir, tmp_path):
    """At a max length below the special tokens' count, the tokenizers library stops truncating: predict.py fed the
    model every token of a text ("--max-length 1" built) while predict.mjs fed [CLS] [SEP] for every text; at 2 the
    build failed saying the smoke test's text was empty. Refused by name, with the least that works."""
    from tokenizers import Tokenizer

    from compress.bundle import prepare_tokenizer

    src = minilm_dir / "tokenizer.json"
    for max_length, pair, least in ((1, False, 3), (2, False, 3), (4, True, 5)):
        with pytest.raises(CompressError, match=rf"^max_length {max_length}: too short for .*tokenizer\.json: its "
                                                rf"{least - (2 if pair else 1)} special tokens leave no room .*; give "
                                                rf"at least {least}$"):
            prepare_tokenizer(src, tmp_path / "t.json", max_length, pair)
        assert not (tmp_path / "t.json").exists()
    for max_length, pair in ((3, False), (5, True)):
        prepare_tokenizer(src, tmp_path / "t.json", max_length, pair)
        tok = Tokenizer.from_file(str(tmp_path / "t.json"))
        long = "a gripping funny film " * 20
        assert len(tok.encode(long, long if pair else None).ids) == max_length


def test_npm_install_or_an_import_in_a_bundle_does_not_make_the_stage_count_as_edited(tmp_path):
    """Following the bundle's README (`npm install` for predict.mjs, `from predict import Predictor`) adds
    node_modules/, package-lock.json and __pycache__/ inside the bundle folder: the next `make pipeline` found the
    stage's outputs "edited" and rebuilt the bundle, deleting them. They are not outputs; an edited or added bundle
    file still redoes the stage."""
    from compress.manifest import hash_tree, write_json
    from compress.pipeline import STAGES, _reuse

    stage = next(s for s in STAGES if s.name == "bundle")
    folder = tmp_path / "bundle"
    (folder / "b").mkdir(parents=True)
    (folder / "b" / "predict.py").write_text("print()")
    write_json(folder / "manifest.json", {"fingerprint": "fp", "outputs": hash_tree(folder)})
    (folder / "b" / "node_modules" / "onnxruntime-node").mkdir(parents=True)
    (folder / "b" / "node_modules" / "onnxruntime-node" / "index.js").write_text("//")
    (folder / "b" / "package-lock.json").write_text("{}")
    (folder / "b" / "__pycache__").mkdir()
    (folder / "b" / "__pycache__" / "predict.cpython-311.pyc").write_bytes(b"\0")
    assert _reuse(None, stage, folder, "fp", {})[1] is None
    (folder / "b" / "extra.onnx").write_text("x")
    assert _reuse(None, stage, folder, "fp", {})[1] == "its outputs were edited since they were written"
    teacher = STAGES[0]  # only the bundle's users run npm there
    (folder / "b" / "extra.onnx").unlink()
    assert _reuse(None, teacher, folder, "fp", {})[1] == "its outputs were edited since they were written"


def test_bundle_labels_with_regression_is_refused_not_dropped(tmp_path, capsys):
    """`compress bundle --model m.onnx --labels a,b --regression` built a regression bundle, the labels dropped
    without a word; now a one-line error before anything is read."""
    rc = main(["bundle", "--model", str(tmp_path / "m.onnx"), "--tokenizer", str(tmp_path / "t.json"),
               "--labels", "a,b", "--regression", "--out", str(tmp_path / "dist")])
    assert rc == 2 and "--labels names a classifier's outputs, --regression says it has one score" in \
        capsys.readouterr().err
    assert not (tmp_path / "dist").exists()


def test_a_bundle_that_cannot_take_the_old_ones_place_leaves_the_old_one_in_place(tmp_path, monkeypatch):
    """Publishing a rebuilt bundle moves the old folder aside, then renames the new folder and the archive in; when
    a rename failed the old bundle stayed hidden as .<name>.old-PID (and was deleted by the next cleanup), and a
    Ctrl-C while the old folder was being deleted (after the new folder went in, before the archive did) left the
    new folder beside the previous build's archive. Now folder and archive are always of one build."""
    from pathlib import Path as P

    from compress import bundle as B

    folder, tmp, archive, tmp_tar = tmp_path / "b", tmp_path / ".b.tmp", tmp_path / "b.tar.gz", tmp_path / ".b.tgz"

    def builds(first: bool = False) -> None:
        for p in (folder, tmp):
            shutil.rmtree(p, ignore_errors=True)
        archive.unlink(missing_ok=True)
        if not first:
            folder.mkdir()
            (folder / "model.onnx").write_text("old")
            archive.write_text("old")
        tmp.mkdir()
        (tmp / "model.onnx").write_text("new")
        tmp_tar.write_text("new")

    def state() -> tuple:
        model = folder / "model.onnx"
        return (model.read_text() if model.exists() else None, archive.read_text() if archive.exists() else None,
                sorted(p.name for p in tmp_path.glob(".b.old-*")))

    real_rename, real_replace = P.rename, B.os.replace
    for fails, first in (("folder", False), ("archive", False), ("archive", True), ("set aside", False)):
        builds(first)

        def rename(self, target):
            if self == tmp and fails == "folder":
                raise OSError(28, "No space left on device")
            if self == folder and fails == "set aside":  # Ctrl-C just after the old folder was renamed
                real_rename(self, target)
                raise KeyboardInterrupt
            return real_rename(self, target)

        def replace(src, dst):
            if Path(src) == tmp_tar and fails == "archive":
                raise KeyboardInterrupt
            return real_replace(src, dst)

        monkeypatch.setattr(P, "rename", rename)
        monkeypatch.setattr(B.os, "replace", replace)
        with pytest.raises((OSError, KeyboardInterrupt)):
            B._publish(tmp, folder, tmp_tar, archive)
        monkeypatch.undo()
        assert state() == ((None, None, []) if first else ("old", "old", [])), (fails, first)
        assert (tmp / "model.onnx").read_text() == "new"  # back where the caller's cleanup removes it

    # interrupted while the old folder is deleted: both new ones are already in place
    builds()
    monkeypatch.setattr(B.shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        B._publish(tmp, folder, tmp_tar, archive)
    monkeypatch.undo()
    model, packed, old = state()
    assert (model, packed) == ("new", "new") and len(old) == 1  # the set-aside folder: `remove_dead` takes it


def test_a_new_version_of_a_runner_the_bundle_ships_redoes_the_bundle_stage(monkeypatch):
    """The bundle copies predict.py, predict.mjs and index.html from this package as they are: a new version of one
    left run folders' bundles with the old runner (reused: same inputs, same config) until someone bumped the stage's
    revision by hand. Their sha256 are now the stage's inputs."""
    from compress import bundle, pipeline
    from compress.config import load_recipe

    stage = next(s for s in pipeline.STAGES if s.name == "bundle")
    shipped = (bundle.PREDICT_SOURCE, bundle.PREDICT_JS_SOURCE, bundle.PAGE_SOURCE)
    assert set(stage.ships) == {p.name for p in shipped}
    recipe = load_recipe(Path(__file__).resolve().parent.parent / "pipelines" / "quickstart.yaml")
    upstream = {"quantize": {"outputs": {"int8_dynamic.onnx": "a" * 64}}}
    fp, inputs = pipeline._fingerprint(recipe, stage, upstream)
    assert all(inputs[f"package:compress/{p.name}"] == sha256_file(p) for p in shipped)
    real = pipeline.sha256_file
    monkeypatch.setattr(pipeline, "sha256_file",
                        lambda p: "0" * 64 if Path(p).name == "bundle_predict.mjs" else real(p))
    fp2, inputs2 = pipeline._fingerprint(recipe, stage, upstream)
    assert fp2 != fp
    old = {"config": pipeline._config(recipe, stage), "seed": recipe.seed, "inputs": inputs}
    assert pipeline._what_changed(recipe, stage, old, inputs2) == ("changed: input package:compress/bundle_predict.mjs "
                                                                   "changed")


def test_a_build_never_replaces_a_folder_or_archive_that_is_not_a_bundle(int8_model, minilm_dir, tmp_path):
    """`compress bundle --model mymodel/model.onnx --name mymodel --out .` replaced the folder holding the user's model,
    vocab and notes (renamed aside and deleted), and any `<name>.tar.gz`. Only an earlier bundle (and its archive) of
    the name is replaced now; a rebuild over one still works."""
    from compress.cli import main

    mine = tmp_path / "mymodel"
    mine.mkdir()
    shutil.copy(int8_model, mine / "model.onnx")
    shutil.copy(minilm_dir / "tokenizer.json", mine / "tokenizer.json")
    (mine / "notes.txt").write_text("my notes")
    args = ["bundle", "--model", str(mine / "model.onnx"), "--tokenizer", str(mine / "tokenizer.json"), "--out",
            str(tmp_path), "--max-length", "32", "--no-ort", "--labels", "negative,positive"]
    with pytest.raises(CompressError, match=rf"^{mine}: exists and is not a bundle; refusing to replace it"):
        build(tmp_path, "mymodel", model=mine / "model.onnx", tokenizer=mine / "tokenizer.json", task="sst2",
              labels=["negative", "positive"], text_pair=False, max_length=32, ort_format=False)
    assert main([*args, "--name", "mymodel"]) == 2
    assert sorted(p.name for p in mine.iterdir()) == ["model.onnx", "notes.txt", "tokenizer.json"]
    (tmp_path / "other.tar.gz").write_bytes(b"my archive")
    assert main([*args, "--name", "other"]) == 2 and not (tmp_path / "other").exists()
    assert (tmp_path / "other.tar.gz").read_bytes() == b"my archive"
    assert main([*args, "--name", "fresh"]) == 0
    (tmp_path / "fresh").rename(tmp_path / "gone")  # an archive kept without its folder is still the bundle's
    assert main([*args, "--name", "fresh"]) == 0 and main([*args, "--name", "fresh"]) == 0  # rebuilt over itself
    assert (tmp_path / "fresh" / "manifest.json").is_file()


def test_an_archives_unlisted_or_resized_member_is_refused_before_anything_is_extracted(bundle, tmp_path,
                                                                                       monkeypatch):
    """`compress predict X.tar.gz` extracted every member, then refused the unlisted one: a 30 MB archive holding 2 GB
    of zeros filled the disk first. The manifest is read from the archive and its list and sizes checked first."""
    folder, _ = bundle
    extracted = []
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda self, *a, **k: extracted.append(a))
    members = [_file(f"b/{p.name}", p.read_bytes()) for p in sorted(folder.iterdir())]
    big = tarfile.TarInfo("b/zeros.bin")
    big.size = 64 << 20
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(big, io.BytesIO(bytes(big.size)))
    with pytest.raises(CompressError, match=r"member 'b/zeros\.bin': not listed in manifest\.json; refusing the "
                                            r"archive before extracting it$"):
        predict(archive, ["x"])
    resized = [(info, data) if not info.name.endswith("labels.json") else _file(info.name, data + b" " * 10)
               for info, data in members]
    with pytest.raises(CompressError, match=r"member 'b/labels\.json' is \d+ bytes, manifest\.json says \d+"):
        predict(_tar_with(tmp_path / "resized.tar.gz", resized), ["x"])
    # the runner's bytecode is judged once extracted, but not unbounded: many members of such names, each small
    pycs = [_file(f"b/__pycache__/predict.cpython-{400 + i}.pyc", bytes(1 << 20)) for i in range(5)]
    with pytest.raises(CompressError, match=r"more than 4194304 bytes of predict\.py bytecode"):
        predict(_tar_with(tmp_path / "pyc.tar.gz", members + pycs), ["x"])
    for extra, said in (([_file("b/.", b"x")], r"member 'b/\.' is a file in place of the bundle folder"),
                        ([_file("b/./manifest.json", bytes(1 << 20))], r"member 'b/\./manifest\.json' comes twice"),
                        ([_file("b/__pycache__/predict.CPYTHON-311.pyc", b"x")], "not listed")):
        with pytest.raises(CompressError, match=said):
            predict(_tar_with(tmp_path / "extra.tar.gz", members + extra), ["x"])
    import shutil as shutil_module  # a disk without room for what the manifest lists: refused, not filled

    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: types.SimpleNamespace(free=1000))
    with pytest.raises(CompressError, match=r"its files take \d+ bytes, 1000 are free in"):
        predict(_tar_with(tmp_path / "fits.tar.gz", members), ["x"])
    without = [(info, data) for info, data in members if not info.name.endswith("manifest.json")]
    with pytest.raises(CompressError, match=r"no b/manifest\.json: not a bundle archive$"):
        predict(_tar_with(tmp_path / "without.tar.gz", without), ["x"])
    assert extracted == []


def test_archives_with_dot_prefixed_members_or_runner_bytecode_and_bom_manifests_still_open_and_rebuild(
        bundle, int8_model, minilm_dir, tmp_path):
    """The checks before extraction compared raw member names: an archive tarred as ./b/... (`tar czf x.tar.gz ./b`)
    or holding the runner's bytecode (a folder used with `from predict import Predictor`, then tarred) opened before
    and was refused. A bundle folder whose manifest an editor re-saved with a BOM is still a bundle to rebuild."""
    folder, _ = bundle
    copy = _copy(folder, tmp_path / "b")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import predict"], cwd=copy, env=env, check=True)
    assert list(copy.glob("__pycache__/predict.*.pyc"))
    for prefix in ("", "./"):
        archive = tmp_path / f"b{len(prefix)}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(copy, arcname=f"{prefix}b")
        assert predict(archive, ["fine"])[0]["label"] in ("negative", "positive")
    out = tmp_path / "out"
    kw = dict(model=int8_model, tokenizer=minilm_dir / "tokenizer.json", task="sst2", labels=["negative", "positive"],
              text_pair=False, max_length=32, ort_format=False)
    built, _ = build(out, "bom", **kw)
    (built / "manifest.json").write_bytes(b"\xef\xbb\xbf" + (built / "manifest.json").read_bytes())
    assert build(out, "bom", **kw)[0] == built


def test_runner_bytecode_names_and_a_python_without_a_cache_tag(tmp_path, monkeypatch):
    """Only `predict.<lower-case tag>[.opt-1|.opt-2].pyc` names are another Python's bytecode; a Python without a cache
    tag (bytecode caching off: sys.implementation.cache_tag is None) failed with an AttributeError in predict.py."""
    from compress import bundle_predict as bp

    assert [bp.runner_bytecode_name(n) for n in ("predict.cpython-312.pyc", "predict.pypy39.opt-2.pyc",
                                                 "predict.CPYTHON-312.pyc", "predict.cpython-312.opt-3.pyc",
                                                 "predict.x.pyc", "numpy.cpython-312.pyc", "predict.py")] == [
        "cpython-312", "pypy39", None, None, None, None, None]
    source = tmp_path / "predict.py"
    source.write_text("x = 1\n")
    other = tmp_path / "predict.cpython-399.pyc"
    other.write_bytes(b"another Python's")
    assert bp.other_pythons_bytecode(other, source)
    monkeypatch.setattr(sys.implementation, "cache_tag", None)
    assert bp.other_pythons_bytecode(other, source)


def test_a_bundle_name_that_is_no_folder_name_is_one_line(int8_model, minilm_dir, tmp_path, capsys):
    """`compress bundle --model ... --name <300 characters>` (no recipe checks that name) ended in an OSError
    traceback (File name too long)."""
    for name in ("x" * 300, "a\nb", ".hidden"):
        assert main(["bundle", "--model", str(int8_model), "--tokenizer", str(minilm_dir / "tokenizer.json"),
                     "--out", str(tmp_path), "--no-ort", "--name", name]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "must be a plain folder name" in err, err
    assert not list(tmp_path.iterdir())


def test_a_bundles_retention_is_rounded_down_never_up(bundle):
    """0.89099996 / 0.9 = 0.98999996 went into the manifest as round(.., 6) = 0.99, and the model card showed
    0.9900: a retention the model does not keep (found by a review of the reported numbers)."""
    from compress.bundle import bundle_metrics, model_card

    m = bundle_metrics({"pearson": 0.89099996}, {"pearson": 0.9}, "pearson", 1500, False,
                       {"pearson": 0.89099996}, {"pearson": 0.9})
    assert m["retention"] == m["test_retention"] == 0.989999
    card = model_card({**json.loads((bundle[0] / "manifest.json").read_text()), "metrics": m})
    assert "| - | retention (pearson / teacher pearson) | 0.9899 |" in card, card


def test_every_listed_file_is_hash_checked(bundle, tmp_path):
    """A change to any one listed file (the runner itself, the tokenizer, the README...) is refused by its sha256,
    not only the model's or labels.json's."""
    from compress.bundle_predict import BundleError, verify

    folder = _copy(bundle[0], tmp_path / "b")
    listed = json.loads((folder / "manifest.json").read_text())["files"]
    assert {"model.onnx", "tokenizer.json", "labels.json", "predict.py", "README.md"} <= set(listed)
    for rel in listed:
        path = folder / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        with pytest.raises(BundleError, match=rf"{re.escape(str(path))}: sha256 mismatch"):
            verify(folder)
        path.write_bytes(original)
    verify(folder)


def test_a_manifest_entry_that_is_no_plain_path_inside_the_bundle_is_refused(bundle, tmp_path):
    """Entries with '..' or an absolute path are refused as such, even where the file they name hashes right."""
    import hashlib

    from compress.bundle_predict import BundleError, verify

    folder = _copy(bundle[0], tmp_path / "b")
    (tmp_path / "outside.txt").write_text("not the bundle's")
    digest = hashlib.sha256((tmp_path / "outside.txt").read_bytes()).hexdigest()
    original = (folder / "manifest.json").read_text()
    for entry in ("../outside.txt", str(tmp_path / "outside.txt"), "x/../../outside.txt"):
        m = json.loads(original)
        m["files"][entry] = digest
        (folder / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(BundleError, match=rf"file entry {re.escape(repr(entry))} is not a plain path inside the "
                                              r"bundle"):
            verify(folder)


def test_an_archive_with_no_bundle_folder_is_refused_in_one_line(tmp_path):
    """A readable archive holding no member, or only a file at its top: no bundle folder, refused by name."""
    for name, members, said in (("nothing", [], "expected one top-level bundle folder, found none"),
                                ("loose", [_file("manifest.json", b"{}")],
                                 "member 'manifest.json' is a file in place of the bundle folder")):
        archive = _tar_with(tmp_path / f"{name}.tar.gz", members)
        dest = tmp_path / name
        dest.mkdir()
        with pytest.raises(CompressError) as e:
            safe_extract(archive, dest)
        assert str(e.value) == f"{archive}: {said}"
        assert list(dest.iterdir()) == []


def test_thread_counts_up_to_the_limit_are_taken_and_reach_onnxruntime(bundle):
    """--threads 1024 (the documented most) is taken, 1025 refused; the count given is the session's."""
    import argparse

    from compress.bundle_predict import MAX_THREADS, Predictor, thread_count

    assert thread_count(str(MAX_THREADS)) == MAX_THREADS == 1024 and thread_count("1") == 1
    with pytest.raises(argparse.ArgumentTypeError, match="must be at most 1024, got 1025"):
        thread_count("1025")
    for threads in (1, 2):
        options = Predictor(bundle[0], threads=threads, check=False).session.get_session_options()
        assert options.intra_op_num_threads == threads and options.inter_op_num_threads == 1


def test_no_threads_warning_at_exactly_the_usable_cores(bundle):
    """--threads N on N usable cores is no oversubscription: no warning (N + 1 warns)."""
    folder, _ = bundle
    one = min(os.sched_getaffinity(0))
    proc = subprocess.run([sys.executable, "predict.py", "--threads", "1", TEXTS[0]], capture_output=True, text=True,
                          cwd=folder, preexec_fn=lambda: os.sched_setaffinity(0, {one}))
    assert proc.returncode == 0 and proc.stdout.count("\t") == 1 and proc.stderr == "", proc.stderr


def test_compress_predict_refuses_a_text_and_a_file_together(bundle, tmp_path, capsys):
    """`compress predict B --file F TEXT`: a usage error, as predict.py says it (neither input silently dropped)."""
    folder, _ = bundle
    (tmp_path / "texts.txt").write_text("good\n")
    assert main(["predict", str(folder), "--file", str(tmp_path / "texts.txt"), "also a text"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "give a TEXT or --file PATH, not both" in captured.err
    assert main(["predict", str(folder)]) == 2  # neither: said so, not "(not both)"
    assert capsys.readouterr().err == "error: predict: give a TEXT to classify, or --file PATH\n"
    assert main(["predict", str(folder), "good", "bad"]) == 2  # a pair for a single-text model: how to give several
    assert "this model reads single texts: give one text (--file PATH classifies several, one a line)" in \
        capsys.readouterr().err


def test_a_pair_line_needs_exactly_one_tab(tmp_path):
    """Pair tasks read text<TAB>pair: a line with a second tab is refused by number, not read as its first two."""
    from compress.bundle_predict import BundleError, read_lines

    path = tmp_path / "pairs.tsv"
    path.write_text("it rains\tthe street is wet\n\nhe left\the is here\tand more\n", encoding="utf-8")
    with pytest.raises(BundleError, match=rf"{re.escape(str(path))} line 3: this model reads text pairs"):
        list(read_lines(str(path), pair=True))
    path.write_text("it rains\tthe street is wet\n", encoding="utf-8")
    assert list(read_lines(str(path), pair=True)) == [(1, "it rains", "the street is wet")]


def test_predict_py_bench_times_each_text_and_prints_the_manifests_latency_beside(bundle, tmp_path):
    """`predict.py --bench ROUNDS`: every non-blank line of --file (or TEXT) run ROUNDS times one at a time after an
    untimed pass, p50/p90 of onnxruntime's run alone and with tokenizing; the manifest's latency beside it; nothing
    classified is printed. A zero round count, an empty line and a file with no line are refused in one line (a
    file with no line to classify too, without --bench)."""
    folder, _ = bundle
    (tmp_path / "texts.txt").write_text(f"{TEXTS[0]}\n\n{TEXTS[1]}\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "predict.py", "--bench", "2", "--json", "--threads", "1", "--file",
                           str(tmp_path / "texts.txt")], capture_output=True, text=True, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["texts"], result["rounds"], result["runs"], result["threads"]) == (2, 2, 4, 1)
    assert 0 < result["p50_ms"] <= result["p90_ms"] and result["p50_ms"] <= result["p50_ms_with_tokenizer"]
    assert result["p90_ms"] <= result["p90_ms_with_tokenizer"]  # each run's whole time holds its model time
    assert result["manifest"] == {"p50_ms": 1.5, "p90_ms": 2.0, "threads": None, "cpu": None, "spin": None}
    assert 20 < result["peak_rss_mb"] < 2000  # the process's own (Linux: VmHWM): tokenizer, model and onnxruntime
    proc = subprocess.run([sys.executable, "predict.py", TEXTS[0], "--bench", "3"], capture_output=True, text=True,
                          cwd=folder)
    assert proc.returncode == 0, proc.stderr
    here, built = proc.stdout.splitlines()
    assert re.fullmatch(r"here: p50 \d+\.\d{3} ms, p90 \d+\.\d{3} ms per text, onnxruntime's run alone \(tokenizing "
                        r"included: p50 \d+\.\d{3} ms, p90 \d+\.\d{3} ms\); 3 runs \(1 text x 3 rounds\) at "
                        r"onnxruntime's default threads, idle threads spinning \(onnxruntime's default\); this "
                        r"process's peak resident memory \d+ MiB", here), here
    assert built == "built: p50 1.500 ms, p90 2.000 ms (the manifest)"
    for args, stdin, message in [(["--bench", "0", TEXTS[0]], None, "argument --bench: must be >= 1, got 0"),
                                 (["--bench", "1", "--file", "-"], "good\n\u200b\n",
                                  "error: standard input line 2: an empty text (nothing in it the tokenizer keeps"),
                                 (["--bench", "1", "--file", "-"], "\n  \n", "error: standard input: no line to time"),
                                 (["--file", "-"], "\n  \n", "error: standard input: no text to classify (empty, or "
                                                             "blank lines only)"),
                                 (["--file", "-"], "", "error: standard input: no text to classify")]:
        proc = subprocess.run([sys.executable, "predict.py", *args], input=stdin or "", capture_output=True,
                              text=True, cwd=folder)
        assert proc.returncode == 2 and proc.stdout == "" and message in proc.stderr, (args, proc.stderr)


def test_timings_run_each_text_once_untimed_then_once_a_round(bundle):
    """Predictor.timings: len(texts) x (rounds + 1) runs of the model, one text each; what predict refuses it
    refuses too, and no text or no round is an error, not an empty result."""
    from compress.bundle_predict import BundleError, Predictor

    p = Predictor(bundle[0], threads=1)
    real, shapes = p.session, []

    class Counting:
        def run(self, names, feed):
            shapes.append(feed["input_ids"].shape)
            return real.run(names, feed)

    p.session = Counting()
    result = p.timings(TEXTS[:2], rounds=3)
    assert result["runs"] == 6 and len(shapes) == 2 * 4 and {s[0] for s in shapes} == {1}  # batch 1 every run
    assert p.timings([TEXTS[0]], rounds=1)["runs"] == 1
    for texts, pairs, rounds, message in [([], None, 1, "no text to time"), (["a"], None, 0, "rounds must be an "
                                          "integer of at least 1, got 0"), (["a"], ["b"], 1, "reads single texts"),
                                          ("a", None, 1, "got one string")]:
        with pytest.raises(BundleError, match=message):
            p.timings(texts, pairs, rounds)


def test_the_latency_to_compare_is_the_manifests_at_the_same_thread_count():
    """built_latency: by_threads' entry for the count timed here, else the headline's (which names its own count);
    a manifest without latency, or with non-numbers in it, gives None rather than a crash or a made-up figure."""
    from compress.bundle_predict import built_latency, format_timings

    latency = {"p50_ms": 0.7, "p90_ms": 1.0, "threads": 2, "protocol": {"cpu": "EPYC", "spin": "idle threads sleep"},
               "by_threads": {"1": {"p50_ms": 0.5, "p90_ms": 0.6}, "2": {"p50_ms": 0.7, "p90_ms": 1.0}}}
    assert built_latency({"latency": latency}, 1) == {"p50_ms": 0.5, "p90_ms": 0.6, "threads": 1, "cpu": "EPYC",
                                                      "spin": "idle threads sleep"}
    for threads in (None, 4):
        assert built_latency({"latency": latency}, threads)["threads"] == 2
    assert built_latency({}, 1) is None and built_latency({"latency": "fast"}, 1) is None
    assert built_latency({"latency": {"p50_ms": "0.5", "threads": True}}, None)["p50_ms"] is None
    here = {"p50_ms": 0.44, "p90_ms": 0.6, "p50_ms_with_tokenizer": 0.53, "p90_ms_with_tokenizer": 0.73,
            "runs": 300, "texts": 100, "rounds": 3, "threads": 2}
    lines = format_timings(here, built_latency({"latency": latency}, 2)).splitlines()
    assert lines[0].startswith("here: p50 0.440 ms, p90 0.600 ms per text") and "300 runs (100 texts x 3 rounds)" \
        " at 2 threads" in lines[0]
    assert lines[1] == "built: p50 0.700 ms, p90 1.000 ms at 2 threads on EPYC, idle threads sleep (the manifest)"
    assert format_timings(here, None).splitlines()[1] == "built: the manifest records no latency"
    assert format_timings({**here, "peak_rss_mb": 95.4}, None).splitlines()[0].endswith(
        "idle threads spinning (onnxruntime's default); this process's peak resident memory 95 MiB")


def test_compress_predict_bench_times_an_archive(bundle, capsys):
    """`compress predict ARCHIVE --bench N TEXT`: verified, extracted, timed; the same two lines as predict.py."""
    _, archive = bundle
    assert main(["predict", str(archive), "--bench", "2", TEXTS[1], "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "2 runs (1 text x 2 rounds) at 1 thread," in out[0]
    assert out[1] == "built: p50 1.500 ms, p90 2.000 ms (the manifest)"


def test_compress_score_runs_the_bundle_on_a_labelled_split_beside_its_manifest(int8_model, minilm_dir, tokenizer,
                                                                                glue_dir, tmp_path, capsys):
    """`compress score BUNDLE`: the bundle as it ships over the first rows of its task's dev split (the default GLUE
    folder), the accuracy what the model gives with the HF tokenizer; the manifest's figure beside it; MRPC's
    labelled test split of pairs; a bundle of other labels, another task's recipe, a split the task lacks: one line
    each, exit status 2."""
    from compress.config import TaskConfig
    from compress.data import load_split

    folder, archive = build(tmp_path / "b", "sst2-x", model=int8_model, tokenizer=minilm_dir / "tokenizer.json",
                            task="sst2", labels=["0", "1"], text_pair=False, max_length=32,
                            metrics={"dev": {"accuracy": 0.5}, "dev_rows": 872})
    dev = load_split(TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2")), "dev")
    want = float((_reference_logits(int8_model, tokenizer, dev["text"][:40]).argmax(-1) == dev["label"][:40]).mean())
    assert main(["score", str(archive), "--max-rows", "40", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"] == {"accuracy": pytest.approx(want)} and (result["rows"], result["of_rows"]) == (40, 872)
    assert result["manifest"] == {"metrics": {"accuracy": 0.5}, "rows": 872, "subset": None}
    assert main(["score", str(folder), "--max-rows", "40", "--data-dir", str(glue_dir / "SST-2")]) == 0
    assert capsys.readouterr().out.splitlines() == [f"accuracy {want:.4f} on 40 dev rows (its first 40 of 872)",
                                                    "the manifest: accuracy 0.5000 on 872 dev rows"]
    pair, _ = build(tmp_path / "b", "mrpc-x", model=int8_model, tokenizer=minilm_dir / "tokenizer.json", task="mrpc",
                    labels=["0", "1"], text_pair=True, max_length=32)
    assert main(["score", str(pair), "--split", "test", "--max-rows", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"f1 \d\.\d{4}, accuracy \d\.\d{4} on 10 test rows \(its first 10 of 1725\)", out[0]), out
    assert out[1] == "the manifest records no test scores"
    for argv, message in [([str(bundle_of_names := _copy(folder, tmp_path / "names"))], None),
                          ([str(folder), "--recipe", str(Path(__file__).resolve().parents[1] / "pipelines/mrpc.yaml")],
                           "a bundle of task 'sst2', not 'mrpc'"),
                          ([str(folder), "--split", "test"], "task sst2: no 'test' split")]:
        if message is None:  # the same bundle, its labels renamed as `compress bundle --task sst2` never names them
            manifest = json.loads((bundle_of_names / "manifest.json").read_text())
            manifest["task"]["dataset_labels"] = ["negative", "positive"]
            (bundle_of_names / "manifest.json").write_text(json.dumps(manifest))
            message = "its labels ['negative', 'positive'] are not the sst2 data's ['0', '1']"
        assert main(["score", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    # a custom task's bundle without --recipe: it said "task.name: 'reviews' is not a GLUE task (...); a custom task
    # needs task.files or task.hub_dataset", naming recipe fields where no recipe was given
    manifest = json.loads((bundle_of_names / "manifest.json").read_text())
    manifest["task"]["name"] = "reviews"
    (bundle_of_names / "manifest.json").write_text(json.dumps(manifest))
    assert main(["score", str(bundle_of_names)]) == 2
    assert capsys.readouterr().err == (f"error: {bundle_of_names}: a bundle of the custom task 'reviews': give its "
                                       f"recipe (--recipe RECIPE.yaml), which says where its data is and how to read "
                                       f"it\n")


def test_timings_are_the_percentiles_of_each_runs_milliseconds(bundle, monkeypatch):
    """Predictor.timings on a virtual clock (tokenizing 1 ms, the n-th timed run n ms): numpy's linear p50/p90 in
    milliseconds, of onnxruntime's run alone and with tokenizing; the warm-up pass is not timed."""
    from compress import bundle_predict

    p = bundle_predict.Predictor(bundle[0], threads=1)
    clock, calls = [0.0], []
    feed, forward = p._feed, p._forward

    def timed_feed(batch):
        clock[0] += 0.001
        return feed(batch)

    def timed_forward(*args):
        calls.append(1)
        out = forward(*args)
        clock[0] += max(len(calls) - 2, 0) / 1000  # two warm-up runs first, untimed
        return out

    monkeypatch.setattr(p, "_feed", timed_feed)
    monkeypatch.setattr(p, "_forward", timed_forward)
    monkeypatch.setattr(bundle_predict, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    result = p.timings(TEXTS[:2], rounds=3)
    assert len(calls) == 8 and result["runs"] == 6
    assert {k: result[k] for k in ("p50_ms", "p90_ms", "p50_ms_with_tokenizer", "p90_ms_with_tokenizer")} == \
        pytest.approx({"p50_ms": 3.5, "p90_ms": 5.5, "p50_ms_with_tokenizer": 4.5, "p90_ms_with_tokenizer": 6.5})


def test_compress_score_reads_data_dir_pairs_in_order_and_the_manifest_hash(int8_model, minilm_dir, glue_dir, tmp_path,
                                                                            monkeypatch, capsys):
    """--data-dir is the folder read (5 rows: the whole split); a pair task's rows are run as (sentence 1, sentence
    2); the manifest's figures are the split's own; --manifest-sha256 is checked by score and predict --bench."""
    from compress import bundle_predict
    from compress.bundle import score
    from compress.config import TaskConfig
    from compress.data import load_split

    folder, archive = build(tmp_path / "b", "sst2-d", model=int8_model, tokenizer=minilm_dir / "tokenizer.json",
                            task="sst2", labels=["0", "1"], text_pair=False, max_length=32,
                            metrics={"dev": {"accuracy": 0.5}, "dev_rows": 872})
    data = tmp_path / "sst2-5"
    data.mkdir()
    (data / "dev.tsv").write_text("".join((glue_dir / "SST-2" / "dev.tsv").read_text().splitlines(True)[:6]))
    assert main(["score", str(folder), "--data-dir", str(data)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(" on 5 dev rows (the whole split)")
    # a model that predicts one label for every row is said to be one (the teacher's stage said it of the teacher
    # only; a bundle of such a model shipped and scored without a word)
    import numpy as np

    with monkeypatch.context() as m:
        m.setattr(bundle_predict.Predictor, "logits", lambda self, texts, pairs=None: np.array([[0.0, 1.0]]))
        result = score(folder, data_dir=str(data))
        # named as `compress predict` names it (SST-2's own label "1" was said)
        assert result["constant_label"] == "positive" and result["metrics"]["accuracy"] == 0.6, result
        assert main(["score", str(folder), "--data-dir", str(data)]) == 0
        assert capsys.readouterr().err.split("\r")[-1] == "warning: the bundle predicts 'positive' for every one of " \
            "these rows (a constant model)\n"  # after the bar's cleared line
        both = iter([[1.0, 0.0], [0.0, 1.0]] * 3)
        m.setattr(bundle_predict.Predictor, "logits", lambda self, texts, pairs=None: np.array([next(both)]))
        assert "constant_label" not in score(folder, data_dir=str(data))
    for argv in (["score", str(archive)], ["predict", str(archive), "--bench", "1", TEXTS[0]]):
        assert main([*argv, "--manifest-sha256", "0" * 64]) == 2, argv
        assert "manifest" in capsys.readouterr().err
    pair, _ = build(tmp_path / "b", "mrpc-d", model=int8_model, tokenizer=minilm_dir / "tokenizer.json", task="mrpc",
                    labels=["0", "1"], text_pair=True, max_length=32,
                    metrics={"test": {"f1": 0.75}, "test_rows": 1725, "dev_rows": 408})
    seen, logits = [], bundle_predict.Predictor.logits
    monkeypatch.setattr(bundle_predict.Predictor, "logits",
                        lambda self, texts, pairs=None, batch_size=1: seen.append((texts, pairs)) or
                        logits(self, texts, pairs, batch_size))
    result = score(pair, split="test", max_rows=3)
    rows = load_split(TaskConfig(name="mrpc", data_dir=str(glue_dir / "MRPC")), "test")
    assert seen == [([rows["text"][i]], [rows["text_pair"][i]]) for i in range(3)]
    assert result["manifest"] == {"metrics": {"f1": 0.75}, "rows": 1725, "subset": None}


def test_compress_score_of_a_manifest_edited_by_hand(int8_model, minilm_dir, tmp_path, capsys):
    """manifest.json is the one file not hashed: metrics that are not a split's numbers are no figures (not a
    traceback after the whole split is scored), a task without a name is refused in one line."""
    folder, _ = build(tmp_path / "b", "sst2-e", model=int8_model, tokenizer=minilm_dir / "tokenizer.json",
                      task="sst2", labels=["0", "1"], text_pair=False, max_length=32,
                      metrics={"dev": {"accuracy": 0.5}, "dev_rows": 872})
    original = json.loads((folder / "manifest.json").read_text())
    for edit, code, said in [(lambda m: m.__setitem__("metrics", [1]), 0, "the manifest records no dev scores"),
                             (lambda m: m["metrics"].__setitem__("dev", [0.5]), 0, "the manifest records no dev"),
                             (lambda m: m["metrics"].__setitem__("dev", {"accuracy": "0.5"}), 0, "records no dev"),
                             (lambda m: m["task"].pop("name"), 2, "task.name is None")]:
        manifest = json.loads(json.dumps(original))
        edit(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        assert main(["score", str(folder), "--max-rows", "2"]) == code
        out, err = capsys.readouterr()
        assert said in (out if code == 0 else err) and (code == 0 or len(err.strip().splitlines()) == 1), (out, err)


def test_compress_score_runs_onnxruntime_at_the_thread_count_given(int8_model, minilm_dir, tmp_path, monkeypatch):
    """`compress score --threads N`: the session that scores is built with N intra-op threads."""
    from compress import bundle_predict

    folder, _ = build(tmp_path / "b", "sst2-t", model=int8_model, tokenizer=minilm_dir / "tokenizer.json",
                      task="sst2", labels=["0", "1"], text_pair=False, max_length=32)
    made, real = [], bundle_predict.Predictor.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self.session.get_session_options().intra_op_num_threads)

    monkeypatch.setattr(bundle_predict.Predictor, "__init__", init)
    assert main(["score", str(folder), "--max-rows", "2", "--threads", "1"]) == 0
    assert made == [1]


def test_bundle_model_flags_that_contradict_a_glue_task_or_are_empty_are_refused(tmp_path, capsys):
    """`compress bundle --model` with `--pair` on SST-2 built a single-text task's bundle that asked for two texts;
    `--labels x,y` (non-GLUE tasks, says its help) silently replaced SST-2's labels; `--name ""` and `--task ""` became
    the defaults without a word. Each is a one-line error now, before anything is read or written; labels equal to the
    task's are no contradiction."""
    base = ["bundle", "--model", str(tmp_path / "m.onnx"), "--tokenizer", str(tmp_path / "t.json"),
            "--out", str(tmp_path / "dist")]
    for extra, said in ((["--task", "sst2", "--pair"], "--pair: --task sst2 is a GLUE task (single texts, labels "
                                                       "negative,positive)"),
                        (["--task", "sst2", "--labels", "x,y"], "--labels: --task sst2 is a GLUE task"),
                        (["--task", "mrpc", "--regression"], "--regression: --task mrpc is a GLUE task (text pairs, "
                                                             "labels not_equivalent,equivalent)"),
                        (["--task", "stsb", "--labels", "a,b"], "--labels: --task stsb is a GLUE task (text pairs, "
                                                                "a regression)"),
                        (["--labels", "a,b,c"], "--labels: without --task the task is sst2, a GLUE task (single "
                                                "texts, labels negative,positive); these flags are for other tasks: "
                                                "name yours with --task NAME"),
                        (["--name", ""], "compress bundle --model: --name is empty"),
                        (["--task", " "], "compress bundle --model: --task is empty")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, (extra, err)
    assert not (tmp_path / "dist").exists()
    # the task's own labels (spaced or not), or a GLUE pair task's --pair: said twice, not contradicted (the model
    # file, missing, is what stops them next)
    for extra in (["--labels", "negative,positive"], ["--labels", "negative, positive"], ["--task", "mrpc", "--pair"],
                  ["--task", "stsb", "--regression"], ["--task", "mytask", "--labels", "a,b", "--pair"]):
        assert main(base + extra) == 2
        assert capsys.readouterr().err == f"error: {tmp_path / 'm.onnx'}: model file not found\n", extra


def test_errors_name_the_path_given_not_a_temporary_one(int8_model, minilm_dir, tmp_path, monkeypatch, capsys):
    """A file written to a temporary name and renamed (`write_atomic`) onto a folder, and a bundle built into a folder
    this user cannot write: the error named `.report.html.tmp-PID` / `.sst2-int8.tmp-PID`, paths the user never gave.
    Now the path given; nothing is left behind."""
    from pathlib import Path as P

    from compress.cli import main
    from compress.manifest import write_atomic

    (tmp_path / "taken").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        write_atomic(tmp_path / "taken", lambda tmp: tmp.write_text("x"))
    assert e.value.filename == str(tmp_path / "taken") and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]

    def unwritable(tmp):  # the folder refuses the temporary file (this test may run as root: raised by hand)
        raise PermissionError(13, "Permission denied", str(tmp))

    def unreadable(tmp):  # an error of another file than the one written: as it is
        raise PermissionError(13, "Permission denied", str(tmp_path / "source.bin"))

    for write, named in ((unwritable, tmp_path / "out.json"), (unreadable, tmp_path / "source.bin")):
        with pytest.raises(PermissionError) as e:
            write_atomic(tmp_path / "out.json", write)
        assert e.value.filename == str(named)

    out = tmp_path / "locked"
    out.mkdir()
    real = P.mkdir

    def refused(self, *a, **k):  # as a folder of another user's, or `chattr +i` (this test may run as root)
        if self.parent == out:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(P, "mkdir", refused)
    assert main(["bundle", "--model", str(int8_model), "--tokenizer", str(minilm_dir / "tokenizer.json"), "--out",
                 str(out), "--max-length", "32", "--no-ort"]) == 2
    assert capsys.readouterr().err == f"error: {out}: Permission denied\n" and not list(out.iterdir())


def test_predict_py_says_what_its_bundle_path_is_when_it_is_no_bundle(bundle, tmp_path, capsys):
    """`predict.py --bundle PATH`: a path that does not exist and the bundle's .tar.gz were both "not a bundle (no
    manifest.json)"; now no such folder, and an archive to unpack first (or to give to `compress predict`)."""
    from compress import bundle_predict

    folder, archive = bundle
    (tmp_path / "empty").mkdir()
    for path, said in ((tmp_path / "nope", f"{tmp_path / 'nope'}: no such bundle folder"),
                       (archive, f"{archive}: a file, not a bundle folder (an archive: unpack it first, `tar xzf "
                                 f"{archive.name}`, or give it to `compress predict`)"),
                       (tmp_path / "empty", f"{tmp_path / 'empty'}: not a bundle (no manifest.json)"),
                       (folder / "model.onnx", f"{folder / 'model.onnx'}: a model file, not a bundle folder (the "
                                               f"folder that holds it, its manifest.json and tokenizer.json)")):
        assert bundle_predict.main(["--bundle", str(path), "a gripping film"]) == 2
        assert capsys.readouterr().err == f"error: {said}\n"
    assert bundle_predict.main(["--bundle", str(folder), "a gripping film"]) == 0
    from compress.cli import main  # `compress predict` on a model file read it as a corrupt archive

    assert main(["predict", str(folder / "model.onnx"), "a gripping film"]) == 2
    assert capsys.readouterr().err == (f"error: {folder / 'model.onnx'}: a model file, not a bundle (a folder or its "
                                       f".tar.gz); make one with `compress bundle --model {folder / 'model.onnx'} "
                                       f"--tokenizer tokenizer.json --task TASK`\n")


def test_the_report_says_which_model_the_bundle_ships(run_dir, tmp_path):
    """The report is where a user picks the model to ship (issue 6), yet it only tagged every passing int8 model
    "(shippable)": which one the bundle stage ships, and by what rule, was in the bundle's manifest alone. Now the
    row is tagged and a sentence under the table says it: the bundle stage's own pick when the recipe is known (the
    report stage), else what the run's last bundle stage shipped (`compress report RUN`); nothing without a bundle."""
    import dataclasses

    from compress.bundle import run as bundle_stage
    from compress.report import report_runs

    def report(recipe, out):
        report_runs([run_dir], tmp_path / out, recipe=recipe)
        return (tmp_path / out / "report.md").read_text(), (tmp_path / out / "report.html").read_text()

    recipe = _recipe(tmp_path, "edge", "{pick: best_within_drop, max_drop: 2.5, threads: 1}")
    md, page = report(recipe, "a")
    assert "| teacher · int8 static (shippable; the bundle's pick) |" in md and md.count("the bundle's pick") == 1
    assert "| teacher · int8 dynamic (shippable) |" in md
    said = ("The bundle stage ships teacher · int8 static: the fastest within 2.5 points of the teacher's accuracy, "
            "by p50 latency at 1 thread (bundle.pick best_within_drop).")
    assert f"**The model to ship:** {said}" in md and f"<p><b>The model to ship:</b> {said}</p>" in page.replace(
        "&#x27;", "'")
    md, _ = report(dataclasses.replace(recipe, bundle=dataclasses.replace(recipe.bundle, pick="most_accurate")), "b")
    assert "| teacher · int8 dynamic (shippable; the bundle's pick) |" in md
    md, _ = report(dataclasses.replace(recipe, bundle=None), "c")  # no bundle section: no pick said
    assert "the bundle's pick" not in md and "The model to ship" not in md and "(shippable)" in md
    md, _ = report(None, "d")  # `compress report RUN` before any bundle stage ran
    assert "the bundle's pick" not in md
    out = tmp_path / "stage-out"
    out.mkdir()
    result = bundle_stage(recipe, out, {"quantize": run_dir / "quantize", "bench": run_dir / "bench"})
    (run_dir / "bundle").mkdir()
    (run_dir / "bundle" / "manifest.json").write_text(json.dumps({"stage": "bundle", **result}))
    md, _ = report(None, "e")  # after it: what it shipped, named from its record
    assert "| teacher · int8 static (shippable; the bundle's pick) |" in md
    assert (f"**The model to ship:** The run's bundle stage shipped teacher · int8 static: the fastest within 2.5 "
            f"points of the teacher's accuracy, by p50 latency at 1 thread ({run_dir / 'bundle'}).") in md
    (run_dir / "bundle" / "manifest.json").write_text("{torn")  # unreadable: the report without the line, not an error
    md, _ = report(None, "f")
    assert "The model to ship" not in md and "the bundle's pick" not in md


def test_the_card_says_why_memory_as_shipped_can_be_below_the_model_alone(bundle):
    """The card's "Memory: 118 MiB" (the model alone, at the bench's batched shape) above "Memory as shipped: 115 MiB"
    (tokenizer, model and interpreter, one text at a time) read as a contradiction; the card now says why, and only
    when it is so."""
    from compress.bundle import model_card

    manifest = json.loads((bundle[0] / "manifest.json").read_text())
    why = "Less than the model alone above, though it loads the tokenizer too"
    cases = ((118.4, 115.2, True), (118.4, 130.0, False), (118.4, 118.1, False), (None, 90.0, False))
    for alone, shipped, said in cases:
        card = model_card({**manifest, **({"memory": {"peak_rss_mb": alone}} if alone else {}),
                           "verified": {"memory": {"peak_rss_mb": shipped, "measured": "predict.py --bench 1"}}})
        assert f"Memory as shipped: {shipped:.0f} MiB" in card and (why in card) == said, (alone, shipped)


def test_a_model_of_a_pair_run_bundled_without_pair_is_refused(int8_model, minilm_dir, tmp_path, capsys):
    """A quantize stage's model of a custom pair task bundled with `--model` and no `--pair` became a single-text
    bundle that refused every pair it was given; its stage's manifest beside it says what it reads (found by a
    walkthrough). A file with no such record beside it, or of a single-text run, is built as asked."""
    import shutil

    qdir = tmp_path / "runs" / "pairs" / "quantize"
    qdir.mkdir(parents=True)
    shutil.copyfile(int8_model, qdir / "int8_dynamic.onnx")
    task = {"name": "mypair", "files": {"train": "t.csv", "dev": "d.csv"}, "labels": ["different", "same"],
            "text_column": "a", "text_pair_column": "b"}
    (qdir / "manifest.json").write_text(json.dumps({"stage": "quantize", "config": {"task": task}}))
    argv = ["bundle", "--model", str(qdir / "int8_dynamic.onnx"), "--tokenizer", str(minilm_dir / "tokenizer.json"),
            "--task", "mypair", "--labels", "different,same", "--max-length", "48", "--no-ort"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err == (f"error: compress bundle --model: {qdir / 'int8_dynamic.onnx'} was quantized "
                                       f"by a run of the text-pair task 'mypair' ({qdir / 'manifest.json'}): give "
                                       f"--pair\n")
    assert not (tmp_path / "a").exists()
    assert main([*argv, "--out", str(tmp_path / "b"), "--pair"]) == 0
    assert json.loads((tmp_path / "b" / "mypair-int8" / "manifest.json").read_text())["task"]["text_pair"] is True
    single = {**task, "text_pair_column": None}
    (qdir / "manifest.json").write_text(json.dumps({"stage": "quantize", "config": {"task": single}}))
    assert main([*argv, "--out", str(tmp_path / "single")]) == 0
    (qdir / "manifest.json").write_text(json.dumps({"stage": "quantize", "config": {"task": {"name": "rte"}}}))
    assert main([*argv, "--out", str(tmp_path / "c")]) == 2


def test_a_quantize_folders_model_is_bundled_with_its_runs_labels_in_their_order(int8_model, minilm_dir, tmp_path,
                                                                                  capsys):
    """`--labels` in another order than the run's that quantized the model (or than `--config`'s id2label) built a
    bundle printing the wrong name for every text (found by a walkthrough); left out, the run's task, labels and
    max_length are taken, not sst2's and 128."""
    import shutil

    qdir = tmp_path / "runs" / "four" / "quantize"
    qdir.mkdir(parents=True)
    shutil.copyfile(int8_model, qdir / "int8_dynamic.onnx")
    task = {"name": "four", "files": {"train": "t.csv", "dev": "d.csv"}, "labels": ["neg", "pos"], "max_length": 48}
    (qdir / "manifest.json").write_text(json.dumps({"stage": "quantize", "config": {"task": task}}))
    argv = ["bundle", "--model", str(qdir / "int8_dynamic.onnx"), "--tokenizer", str(minilm_dir / "tokenizer.json"),
            "--no-ort"]
    assert main([*argv, "--labels", "pos,neg", "--task", "four", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err == (f"error: compress bundle --model: {qdir / 'int8_dynamic.onnx'} was quantized "
                                       f"by a run of task 'four' (labels neg,pos, {qdir / 'manifest.json'}): --labels "
                                       f"give pos,neg; give its labels in its order (--labels, or its --task)\n")
    assert main([*argv, "--task", "sst2", "--out", str(tmp_path / "a")]) == 2  # sst2's 0,1 are not its labels
    assert "--task sst2 gives 0,1; give its labels" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main([*argv, "--regression", "--out", str(tmp_path / "a")]) == 2  # a classifier shipped as a regression
    assert "(labels neg,pos, " in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    shipped = json.loads((tmp_path / "b" / "four-int8" / "manifest.json").read_text())
    assert (shipped["task"]["name"], shipped["task"]["labels"], shipped["max_length"]) == ("four", ["neg", "pos"], 48)
    # a file of no run, with a config whose id2label says its order
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"model_type": "bert", "id2label": {"0": "neg", "1": "pos"}}))
    argv = ["bundle", "--model", str(int8_model), "--tokenizer", str(minilm_dir / "tokenizer.json"), "--no-ort",
            "--task", "four", "--config", str(config)]
    assert main([*argv, "--labels", "pos,neg", "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err == (f"error: compress bundle --model: --config {config}: its id2label names neg,pos;"
                                       f" --labels give pos,neg (the labels in the model's order)\n")
    assert main([*argv, "--labels", "neg,pos", "--out", str(tmp_path / "d")]) == 0
    (config / "config.json").write_text(json.dumps({"model_type": "bert", "id2label": {"0": "NEGATIVE",
                                                                                      "1": "POSITIVE"}}))
    glue = [a if a != "four" else "sst2" for a in argv]  # SST-2's labels 0,1, shown negative,positive: the same
    assert main([*glue, "--out", str(tmp_path / "g")]) == 0
    # names holding a comma: a JSON list
    (config / "config.json").write_text(json.dumps({"model_type": "bert", "id2label": {"0": "bad, really",
                                                                                      "1": "good"}}))
    assert main([*argv, "--labels", '["bad, really", "good"]', "--out", str(tmp_path / "e")]) == 0
    assert json.loads((tmp_path / "e" / "four-int8" / "manifest.json").read_text())["task"]["labels"] == [
        "bad, really", "good"]
    assert main([*argv, "--labels", '["bad", 1]', "--out", str(tmp_path / "f")]) == 2
    assert "--labels: a JSON list of strings" in capsys.readouterr().err
