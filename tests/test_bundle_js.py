"""predict.mjs: a bundle run under Node.js with onnxruntime-web (WebAssembly) and @huggingface/tokenizers, the
packages a bundle's package.json pins (installed by `make test` into .node/), against predict.py."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from compress.bundle import JS_RUNTIME, build, predict
from compress.cli import main
from conftest import export_int8, tiny_bert_config

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / ".node" / "node_modules"
TEXTS = ["a gripping , funny and deeply moving film", "dull and far too long", "so " * 300 + "good"]


@pytest.fixture(scope="module")
def js_bundle(tmp_path_factory, minilm_dir) -> Path:
    """A bundle of the real MiniLM-L6 body with a random 2-class head, exported and int8 (dynamic), beside the
    installed npm packages (Node resolves them from a parent folder's node_modules)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    for name in JS_RUNTIME:
        assert (NODE_MODULES / name / "package.json").is_file(), f"{name} not installed: run `make test`"
        assert json.loads((NODE_MODULES / name / "package.json").read_text())["version"] == JS_RUNTIME[name]
    work = tmp_path_factory.mktemp("js")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    with torch.no_grad():  # a random head scores everything near 0.5: widen it so that labels are decided
        model.classifier.weight *= 30
    export_int8(model, work)
    (work / "node_modules").symlink_to(NODE_MODULES)
    folder, _ = build(work / "bundles", "minilm-js", model=work / "int8.onnx", tokenizer=minilm_dir / "tokenizer.json",
                      task="sst2", labels=["negative", "positive"], text_pair=False, max_length=32, ort_format=False)
    return folder


def _node(*args, cwd=None, stdin=None):
    return subprocess.run(["node", *map(str, args)], capture_output=True, text=True, cwd=cwd, input=stdin,
                          timeout=300)


def test_bundle_ships_predict_mjs_and_its_pinned_packages(js_bundle):
    manifest = json.loads((js_bundle / "manifest.json").read_text())
    assert {"predict.mjs", "package.json"} <= set(manifest["files"]) and manifest["requirements_js"] == JS_RUNTIME
    assert json.loads((js_bundle / "package.json").read_text())["dependencies"] == JS_RUNTIME
    assert "node predict.mjs" in (js_bundle / "README.md").read_text()


def test_predict_mjs_gives_what_predict_py_gives(js_bundle, glue_dir):
    """Scores within int8 kernel differences (WebAssembly vs native) and the same labels away from a tie, on SST-2
    dev sentences and a text longer than max_length, one at a time, from a file and from the command line. (On the
    quickstart bundle, scripts/js_parity.py: scores within 0.016 and the same label on all 872 dev sentences.)"""
    dev = [line.split("\t")[0] for line in (glue_dir / "SST-2" / "dev.tsv").read_text().splitlines()[1:41]]
    texts = TEXTS + dev
    (js_bundle.parent / "texts.txt").write_text("\n".join(texts) + "\n")
    proc = _node(js_bundle / "predict.mjs", "--json", "--file", js_bundle.parent / "texts.txt")
    assert proc.returncode == 0, proc.stderr
    js = [json.loads(line) for line in proc.stdout.splitlines()]
    py = predict(js_bundle, texts)
    assert len(js) == len(py) == len(texts)
    decided = 0
    for a, b in zip(js, py):
        assert a["scores"] == pytest.approx(b["scores"], abs=0.05)
        if abs(b["scores"]["positive"] - 0.5) > 0.05:
            assert a["label"] == b["label"]
            decided += 1
    assert decided >= len(texts) // 2 and {r["label"] for r in py} == {"negative", "positive"}
    one = _node(js_bundle / "predict.mjs", "--threads", "1", texts[1])
    assert one.returncode == 0 and one.stdout.split("\t")[0] == py[1]["label"]
    for args, message in ((["--threads", "0", "x"], 'error: --threads: expected an integer >= 1, got "0"'),
                          (["--threads", "100000", "x"], "error: --threads: must be at most 1024, got 100000"),
                          (["--jsn", "x"], "error: unknown option --jsn"),
                          (["a", "--file", "f.txt"], "error: give a TEXT (and its pair) or --file PATH, not both"),
                          ([], "error: give a TEXT (and its pair) to classify, or --file PATH"),
                          (["a", "b", "c"],
                           "error: give a TEXT and at most its pair (--file PATH classifies several)")):
        bad = _node(js_bundle / "predict.mjs", *args)
        assert bad.returncode == 2 and bad.stderr.splitlines()[0] == message and bad.stdout == ""


def test_int4_embedding_tables_run_alike_in_both_runners_and_in_ort_format(js_bundle, glue_dir, minilm_dir):
    """The real MiniLM's word table as int4 blocks (``quantize.table_bits: 4``: onnxruntime's GatherBlockQuantized, a
    contrib op): onnxruntime-web gathers the same rows as native onnxruntime, to the bit; its bundle runs under
    predict.mjs as under predict.py (the same labels away from a tie: int8 matmul kernels differ between WebAssembly
    and native, and the random head, widened, amplifies that); the bundle's ``.ort`` copy gives the same logits as its
    ``.onnx``; the int4 model is smaller than the same model with int8 rows."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from compress.quantize import QuantizeConfig, lookup_nodes, quantize_dynamic, row_tables

    work = js_bundle.parent.parent / "int4"
    work.mkdir()
    fp32 = js_bundle.parent.parent / "fp32.onnx"
    lookups = lookup_nodes(fp32)
    kept = quantize_dynamic(fp32, work / "kept.onnx", QuantizeConfig(), exclude=lookups)
    four = row_tables(kept, work / "int4.onnx", lookups, 4)  # the word table; position and token type: int8 rows
    assert [b for t, b in four.items() if "word_embeddings" in t] == [4] and sorted(four.values()) == [4, 8, 8]
    assert set(row_tables(kept, work / "int8.onnx", lookups, 8).values()) == {8}
    # the word table's 30522 x 384 values: 1 + 4/384 bytes each as int8 rows, 0.5 + 4/32 as int4 blocks (4.5 MB less)
    assert (work / "int8.onnx").stat().st_size - (work / "int4.onnx").stat().st_size > 4.4e6
    int4 = onnx.load(str(work / "int4.onnx"))
    gather = next(n for n in int4.graph.node if n.op_type == "GatherBlockQuantized")
    lookup = helper.make_model(helper.make_graph(
        [helper.make_node(gather.op_type, ["table", "ids", "scale"], ["rows"], domain=gather.domain,
                          **{a.name: helper.get_attribute_value(a) for a in gather.attribute})],
        "lookup", [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, ["N", 384])],
        [onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(next(i for i in int4.graph.initializer
                                                                     if i.name == name)), new)
         for name, new in ((gather.input[0], "table"), (gather.input[2], "scale"))]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=8)
    onnx.save(lookup, str(work / "lookup.onnx"))
    (work / "node_modules").symlink_to(NODE_MODULES)
    (work / "lookup.mjs").write_text(
        'const ort = await import("onnxruntime-web");\n'
        'const s = await ort.InferenceSession.create(process.argv[2]);\n'
        'const ids = BigInt64Array.from({length: 315}, (_, i) => BigInt(i * 97));\n'
        'const r = await s.run({ids: new ort.Tensor("int64", ids, [315])});\n'
        'console.log(JSON.stringify(Array.from(r.rows.data)));\n')
    proc = _node(work / "lookup.mjs", work / "lookup.onnx", cwd=work)
    assert proc.returncode == 0, proc.stderr
    want = ort.InferenceSession(str(work / "lookup.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"ids": np.arange(315) * 97})[0]
    assert np.array_equal(np.array(json.loads(proc.stdout), np.float32).reshape(315, 384), want)
    word = onnx.numpy_helper.to_array(next(i for i in onnx.load(str(fp32)).graph.initializer
                                           if "word_embeddings" in i.name))[np.arange(315) * 97]
    assert np.abs(want - word).max() < 0.1 * np.abs(word).max() and np.abs(want).mean() > 0.01
    folder, _ = build(work / "bundles", "int4-js", model=work / "int4.onnx", tokenizer=minilm_dir / "tokenizer.json",
                      task="sst2", labels=["negative", "positive"], text_pair=False, max_length=32, ort_format=True)
    texts = [line.split("\t")[0] for line in (glue_dir / "SST-2" / "dev.tsv").read_text().splitlines()[1:21]]
    (work / "texts.txt").write_text("\n".join(texts) + "\n")
    proc = _node(folder / "predict.mjs", "--json", "--file", work / "texts.txt")
    assert proc.returncode == 0, proc.stderr
    js = [json.loads(line)["scores"]["positive"] for line in proc.stdout.splitlines()]
    py = [r["scores"]["positive"] for r in predict(folder, texts)]
    assert len(js) == len(py) == len(texts) and js == pytest.approx(py, abs=0.1)
    assert all((a > 0.5) == (b > 0.5) for a, b in zip(js, py) if abs(b - 0.5) > 0.05)

    ids = np.array([[101, 2023, 3185, 2001, 2307, 999, 102]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    onnx_run, ort_run = (ort.InferenceSession(str(folder / f), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
                         for f in ("model.onnx", "model.ort"))
    np.testing.assert_allclose(ort_run, onnx_run, atol=1e-5)


def test_predict_mjs_names_the_onnxruntime_web_an_int4_table_needs(tmp_path, minilm_dir):
    """onnxruntime-web before 1.22 refuses an int4 vocabulary table (1.20 and 1.21: uint8 blocks are an invalid type
    for GatherBlockQuantized; 1.19: no such op; 1.22.0 gathers the rows bit-exact): with a stand-in runtime that
    refuses every model as 1.21 does, predict.mjs's one-line load error says which version the bundle needs, as
    predict.py's does, and with the same floor; a bundle without int4 tables, a new enough runtime or one of an odd
    version string gets onnxruntime's words alone."""
    import torch
    from transformers import BertForSequenceClassification

    from compress.bundle_predict import INT4_RUNTIME
    from compress.quantize import QuantizeConfig, lookup_nodes, quantize_dynamic, row_tables

    torch.manual_seed(0)
    int8 = export_int8(BertForSequenceClassification(tiny_bert_config()).eval(), tmp_path)
    lookups = lookup_nodes(tmp_path / "fp32.onnx")
    kept = quantize_dynamic(tmp_path / "fp32.onnx", tmp_path / "kept.onnx", QuantizeConfig(), exclude=lookups)
    assert 4 in row_tables(kept, tmp_path / "int4.onnx", lookups, 4).values()
    stub = tmp_path / "stub"
    folders = {name: build(stub, name, model=model, tokenizer=minilm_dir / "tokenizer.json", task="sst2",
                           labels=["negative", "positive"], text_pair=False, max_length=32, ort_format=False)[0]
               for name, model in (("int4", tmp_path / "int4.onnx"), ("plain", int8))}
    runtime = stub / "node_modules" / "onnxruntime-web"
    runtime.mkdir(parents=True)
    (stub / "node_modules" / "@huggingface").symlink_to(NODE_MODULES / "@huggingface")
    (runtime / "package.json").write_text(json.dumps({"name": "onnxruntime-web", "version": "0.0.0",
                                                      "type": "module", "exports": "./index.mjs"}))
    refused = ("Can't create a session. ERROR_CODE: 10, ERROR_MESSAGE: This is an invalid model. Type Error: Type "
               "'tensor(uint8)' of input parameter (table) of operator (GatherBlockQuantized) in node () is invalid.")
    (runtime / "index.mjs").write_text(
        "export const env = {versions: {web: process.env.STUB_ORT_VERSION, common: process.env.STUB_ORT_VERSION}, "
        "wasm: {}};\n"
        "export class Tensor {}\n"
        f"export const InferenceSession = {{create: async () => {{ throw new Error({json.dumps(refused)} + "
        "'\\n    at stub'); }};\n")
    source = (Path(__file__).parent.parent / "compress" / "bundle_predict.mjs").read_text()
    assert f"const INT4_RUNTIME = {list(INT4_RUNTIME)};" in source  # predict.py's floor, the same number
    need = ".".join(map(str, INT4_RUNTIME))

    def hint(version):
        return (f"; its vocabulary table is int4, which needs onnxruntime-web >= {need} (this is {version}): "
                f"npm install 'onnxruntime-web@>={need}'")

    for name, version, said in (("int4", "1.21.0", hint("1.21.0")), ("int4", "1.9.3", hint("1.9.3")),
                                ("int4", "1.21.1-dev", hint("1.21.1-dev")), ("plain", "1.21.0", ""),
                                ("int4", "1.22.0", ""), ("int4", "1.31.1", ""), ("int4", "2.0.0", ""),
                                ("int4", "local", ""), ("int4", "", "")):
        proc = subprocess.run(["node", str(folders[name] / "predict.mjs"), "a fine film"], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "STUB_ORT_VERSION": version})
        assert proc.returncode != 0 and proc.stdout == "", (name, version, proc.stdout)
        assert proc.stderr.splitlines() == [proc.stderr.strip()], (name, version, proc.stderr)
        error = proc.stderr.strip()
        assert error.startswith("error: model.onnx: onnxruntime cannot load it (Can't create a session."), error
        assert error.endswith(f"in node () is invalid.){said}"), (name, version, error)


def test_predict_mjs_on_pair_and_regression_bundles(js_bundle, glue_dir, minilm_dir):
    """The int8 model bundled as a pair task (MRPC rows, text<TAB>pair lines), and a one-output model as a regression
    task: the JS runner gives predict.py's results; a single text for a pair model is refused in one line."""
    import torch
    from transformers import BertForSequenceClassification

    work = js_bundle.parent.parent
    (work / "regression").mkdir()
    torch.manual_seed(1)
    regression = export_int8(BertForSequenceClassification(tiny_bert_config(num_labels=1)), work / "regression")
    lines = (glue_dir / "MRPC" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:9]
    rows = [line.split("\t") for line in lines]
    pairs = [(r[3], r[4]) for r in rows]
    (work / "pairs.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in pairs))
    for labels in (["not_equivalent", "equivalent"], None):
        name = "pair-js" if labels else "regression-js"
        folder, _ = build(work / "bundles", name, model=work / "int8.onnx" if labels else regression,
                          tokenizer=minilm_dir / "tokenizer.json",
                          task="mrpc" if labels else "stsb", labels=labels, text_pair=True, max_length=32,
                          ort_format=False)
        proc = _node(folder / "predict.mjs", "--json", "--file", work / "pairs.tsv")
        assert proc.returncode == 0, proc.stderr
        js = [json.loads(line) for line in proc.stdout.splitlines()]
        py = predict(folder, [a for a, _ in pairs], [b for _, b in pairs])
        value = (lambda r: r["scores"]["equivalent"]) if labels else (lambda r: r["value"])  # noqa: E731
        assert [value(r) for r in js] == pytest.approx([value(r) for r in py], abs=0.05) and len(js) == len(pairs)
    one = _node(folder / "predict.mjs", "only one text")
    assert one.returncode == 2 and one.stderr.strip() == "error: this model reads text pairs: give a second text"


@pytest.mark.parametrize("post_processor", ["bert", "roberta", "bert-left"])
def test_predict_mjs_tokenizes_and_truncates_pairs_as_the_tokenizers_library(js_bundle, glue_dir, tmp_path,
                                                                              post_processor):
    """Token ids and type ids of real RTE pairs (and lopsided ones) at several max lengths: identical to the Rust
    tokenizers library with the bundle's longest-first truncation. "roberta": MiniLM's vocabulary with the RoBERTa
    post-processor MPNet's tokenizer uses (<s> A </s></s> B </s>, every type id 0). "bert-left": a tokenizer.json
    that truncates on the left (a tokenizer with truncation_side: left), which predict.mjs cut on the right."""
    from tokenizers import Tokenizer

    spec = json.loads((js_bundle / "tokenizer.json").read_text())
    if post_processor == "roberta":
        spec["post_processor"] = {"type": "RobertaProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101],
                                  "trim_offsets": True, "add_prefix_space": False}
    direction = "left" if post_processor == "bert-left" else "right"
    spec["truncation"] = {"direction": direction.title(), "max_length": 32, "strategy": "LongestFirst", "stride": 0}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    lines = (glue_dir / "RTE" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    cases = [[r[1], r[2]] for r in rows[:60]] + [["short", "x " * 50], ["y " * 50, "short"], ["a b c", None],
                                                 ["so " * 300 + "good", None], ["héllo wörld ÇA", None]]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    lengths = [8, 9, 32, 128]
    script = (
        "import { readFile } from 'node:fs/promises';\n"
        f"import {{ Predictor }} from {json.dumps(str(js_bundle / 'predict.mjs'))};\n"
        f"const tj = JSON.parse(await readFile({json.dumps(str(tmp_path / 'tokenizer.json'))}, 'utf8'));\n"
        f"const cases = JSON.parse(await readFile({json.dumps(str(tmp_path / 'cases.json'))}, 'utf8'));\n"
        "const out = [];\n"
        f"for (const ml of {json.dumps(lengths)}) {{\n"
        "  const p = new Predictor({task: {labels: ['a', 'b'], text_pair: true}, max_length: ml}, tj, null);\n"
        "  for (const [a, b] of cases) out.push(p.encode(a, b));\n"
        "}\n"
        "console.log(JSON.stringify(out));\n")
    (tmp_path / "encode.mjs").write_text(script)
    proc = _node(tmp_path / "encode.mjs")
    assert proc.returncode == 0, proc.stderr
    js = iter(json.loads(proc.stdout))
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tokenizer.no_padding()
    for max_length in lengths:
        tokenizer.enable_truncation(max_length=max_length, direction=direction)
        for a, b in cases:
            want = tokenizer.encode(a, b) if b is not None else tokenizer.encode(a)
            got = next(js)
            assert (got["input_ids"], got["token_type_ids"]) == (want.ids, want.type_ids), (max_length, a[:40])
    if post_processor == "roberta":
        assert want.ids[:1] == [101] and 1 not in want.type_ids  # the RoBERTa layout was in force


def test_predict_mjs_loads_a_bundle_over_http_and_refuses_a_changed_file(js_bundle, tmp_path):
    """Over HTTP the bundle scores as it does from disk under the same runtime (to the last digit), and as predict.py
    within int8 kernel differences (0.05, as the parity test: on a CPU without AVX-512 VNNI onnxruntime's native int8
    kernels differ from WebAssembly's by 0.022 on this text, 1e-7 on the next)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(js_bundle.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{js_bundle.name}/"
    script = js_bundle.parent / "remote.mjs"
    script.write_text(f"import {{ Predictor }} from {json.dumps(str(js_bundle / 'predict.mjs'))};\n"
                      f"const model = await Predictor.load({json.dumps(url)});\n"
                      "console.log(JSON.stringify(await model.predict(process.argv[2])));\n")
    try:
        proc = _node(script, TEXTS[0])
        assert proc.returncode == 0, proc.stderr
        local = _node(js_bundle / "predict.mjs", "--json", TEXTS[0])
        assert local.returncode == 0, local.stderr
        assert json.loads(proc.stdout)["scores"] == json.loads(local.stdout)["scores"]
        assert json.loads(proc.stdout)["scores"] == pytest.approx(predict(js_bundle, TEXTS[:1])[0]["scores"], abs=0.05)
    finally:
        server.shutdown()
    changed = shutil.copytree(js_bundle, tmp_path / js_bundle.name)
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    (changed / "tokenizer.json").write_text((changed / "tokenizer.json").read_text().replace('"[UNK]"', '"[UKN]"'))
    proc = _node(changed / "predict.mjs", TEXTS[0])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("error: tokenizer.json: sha256 mismatch: the file changed after the bundle was "
                                   "built; refusing to load")


def test_predict_mjs_refuses_bad_manifests_and_arguments_in_one_line(js_bundle, tmp_path):
    """As predict.py does: manifest fields checked (model inside the listed files, label names those of the verified
    labels.json, valid JSON), an empty text, an option without its value, a --file that cannot be read."""
    copy = shutil.copytree(js_bundle, tmp_path / js_bundle.name)
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    original = (copy / "manifest.json").read_text()

    def refused(*args, manifest=None):
        (copy / "manifest.json").write_text(original if manifest is None else manifest)
        proc = _node(copy / "predict.mjs", *args)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        return proc.stderr.splitlines()[0]

    m = json.loads(original)
    for edit, message in [({"model": {**m["model"], "file": "/etc/hostname"}}, "model.file must name a file listed"),
                          ({"max_length": "abc"}, "max_length must be a positive integer"),
                          ({"task": {**m["task"], "labels": ["bad", "good"]}}, "differ from labels.json"),
                          ({"task": {**m["task"], "labels": ["a"]}}, "task.labels must be a list of two or more"),
                          ({"task": {**m["task"], "text_pair": "false"}},
                           'task.text_pair must be true or false, got "false"'),
                          ({"task": {**m["task"], "text_pair": 1}}, "task.text_pair must be true or false, got 1"),
                          # swapped names with no labels file to compare them with: printed the wrong label
                          ({"task": {**m["task"], "labels": m["task"]["labels"][::-1]}, "labels_file": None},
                           "labels_file must name a file listed under 'files'"),
                          # a max_length the verified tokenizer.json does not truncate to: flipped labels, or a crash
                          ({"max_length": 4}, f"max_length 4 differs from the {m['max_length']} tokens tokenizer.json"),
                          # files onnxruntime / tokenizers.js cannot read: a 31 KB stack, exit 1
                          ({"model": {**m["model"], "file": "README.md"}}, "error: README.md: onnxruntime cannot load it"),
                          ({"tokenizer": {**m["tokenizer"], "file": "labels.json"}},
                           f"max_length {m['max_length']} differs from the no tokens labels.json truncates to")]:
        line = refused(TEXTS[0], manifest=json.dumps({**m, **edit}))
        assert message in line and len(line) < 400, line
    assert refused(TEXTS[0], manifest="{bad").startswith("error: manifest.json: not valid JSON")
    # a byte-order mark: predict.py's json refuses it, predict.mjs's TextDecoder dropped it and loaded the bundle
    assert refused(TEXTS[0], manifest="\ufeff" + original).startswith("error: manifest.json: not valid JSON")
    assert refused("  ") == "error: an empty text: nothing to classify"
    assert refused(TEXTS[0], "--threads") == "error: --threads takes a value"
    proc = _node(copy / "predict.mjs", "--threads", str(os.cpu_count() + 1), TEXTS[0])
    assert proc.returncode == 0 and proc.stdout.count("\t") == 1
    assert proc.stderr.startswith(f"warning: --threads {os.cpu_count() + 1} is more than this machine's")
    assert refused("--file", tmp_path / "missing.txt") == f"error: {tmp_path / 'missing.txt'}: cannot read (ENOENT)"
    assert refused("--file", tmp_path) == f"error: {tmp_path}: cannot read (EISDIR)"


@pytest.mark.parametrize("outside", ["../tokenizer.json", "..\\tokenizer.json", "http://localhost:9/tokenizer.json",
                                     "%2e%2e/tokenizer.json", " //localhost:9/tokenizer.json"])
def test_predict_mjs_refuses_a_file_entry_outside_the_bundle_as_predict_py_does(js_bundle, tmp_path, outside):
    """A manifest whose tokenizer is listed (with its sha256) outside the bundle folder: predict.py refuses the entry,
    predict.mjs read it from the folder above (or, as a URL, from anywhere)."""
    import sys

    copy = shutil.copytree(js_bundle, tmp_path / "b")
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    shutil.copy(copy / "tokenizer.json", tmp_path / "tokenizer.json")
    m = json.loads((copy / "manifest.json").read_text())
    m["files"][outside] = m["files"]["tokenizer.json"]
    m["tokenizer"]["file"] = outside
    (copy / "manifest.json").write_text(json.dumps(m))
    js = _node(copy / "predict.mjs", TEXTS[0])
    assert (js.returncode, js.stdout) == (2, "") and js.stderr == \
        f"error: manifest.json: file entry {json.dumps(outside)} is not a plain path inside the bundle\n"
    py = subprocess.run([sys.executable, "predict.py", TEXTS[0]], cwd=copy, capture_output=True, text=True)
    assert (py.returncode, py.stdout) == (2, "") and py.stderr.startswith("error: ")
    # "../": its plain-path check; the others are plain (absent) names of this folder to Python on POSIX, not URLs
    why = "not a plain path inside the bundle" if outside.startswith("../") else "listed in manifest.json but missing"
    assert why in py.stderr, py.stderr


def test_predict_mjs_reads_files_as_predict_py_does(js_bundle, tmp_path):
    """--file: the same lines, numbered the same (a BOM, CRLF, bytes that are not UTF-8, a blank line, a lone CR
    inside a line, no final newline), from a file and from standard input; a closed pipe ends quietly."""
    import sys

    (tmp_path / "odd.txt").write_bytes(b"\xef\xbb\xbfgood film\r\n\xff bad\n\na\rb\nlast")
    py = subprocess.run([sys.executable, "predict.py", "--json", "--file", str(tmp_path / "odd.txt")], cwd=js_bundle,
                        capture_output=True, text=True)
    js = _node(js_bundle / "predict.mjs", "--json", "--file", tmp_path / "odd.txt")
    piped = _node(js_bundle / "predict.mjs", "--json", "--file", "-",
                  stdin=(tmp_path / "odd.txt").read_bytes().decode("utf-8", "replace"))
    assert py.returncode == js.returncode == piped.returncode == 0, (py.stderr, js.stderr, piped.stderr)
    lines = [[json.loads(line)["line"] for line in p.stdout.splitlines()] for p in (py, js, piped)]
    assert lines == [[1, 2, 4, 5]] * 3
    for a, b in zip(py.stdout.splitlines(), js.stdout.splitlines()):
        assert json.loads(a)["scores"] == pytest.approx(json.loads(b)["scores"], abs=0.05)
    (tmp_path / "boms.txt").write_bytes(b"\xef\xbb\xbf\xef\xbb\xbf\nsecond\n")  # predict.mjs dropped one BOM only
    js = _node(js_bundle / "predict.mjs", "--json", "--file", tmp_path / "boms.txt")
    assert [json.loads(line)["line"] for line in js.stdout.splitlines()] == [2], js.stderr
    runners = (f"PYTHONUNBUFFERED=1 {sys.executable} predict.py", "node predict.mjs")
    full = [subprocess.run(f"{cmd} good > /dev/full", shell=True, capture_output=True, text=True, timeout=300,
                           cwd=js_bundle) for cmd in runners]
    # a full disk: one line, not a stack, and the same line from both
    assert [(p.returncode, p.stderr) for p in full] == [(1, "error: standard output: No space left on device\n")] * 2
    (tmp_path / "many.txt").write_text("a fine film\n" * 2000)
    proc = subprocess.run(f"node {js_bundle / 'predict.mjs'} --file {tmp_path / 'many.txt'} | head -1", shell=True,
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.count("\n") == 1 and proc.stderr == ""


def test_predict_mjs_skips_and_refuses_the_blank_texts_predict_py_does(js_bundle, tmp_path):
    """predict.mjs tested blankness with String.trim, predict.py with str.strip: a line of U+001C (or U+0085) was
    skipped by predict.py and classified by predict.mjs, a line of a byte-order mark the other way round."""
    import sys

    (tmp_path / "ws.txt").write_bytes("good film\n\x1c\n\x85\u3000\nbad film\n".encode("utf-8"))
    py = subprocess.run([sys.executable, "predict.py", "--json", "--file", str(tmp_path / "ws.txt")], cwd=js_bundle,
                        capture_output=True, text=True)
    js = _node(js_bundle / "predict.mjs", "--json", "--file", tmp_path / "ws.txt")
    assert py.returncode == js.returncode == 0, (py.stderr, js.stderr)
    lines = [[json.loads(line)["line"] for line in p.stdout.splitlines()] for p in (py, js)]
    assert lines == [[1, 4]] * 2
    # a byte-order mark at the start of a later line (files joined with cat) is dropped as the first line's: a line
    # of one is blank (it stopped both runners as an empty text), one before a text leaves the text
    (tmp_path / "bom.txt").write_bytes("good film\n\ufeff\r\n\ufeffawful\r\n".encode("utf-8"))
    py = subprocess.run([sys.executable, "predict.py", "--json", "--file", str(tmp_path / "bom.txt")], cwd=js_bundle,
                        capture_output=True, text=True)
    js = _node(js_bundle / "predict.mjs", "--json", "--file", tmp_path / "bom.txt")
    assert py.returncode == js.returncode == 0, (py.stderr, js.stderr)
    assert [[json.loads(line)["line"] for line in p.stdout.splitlines()] for p in (py, js)] == [[1, 3]] * 2
    alone = subprocess.run([sys.executable, "predict.py", "--json", "awful"], cwd=js_bundle, capture_output=True,
                           text=True)  # line 3 is the text without its mark
    assert json.loads(py.stdout.splitlines()[1])["scores"] == json.loads(alone.stdout)["scores"]
    # a byte-order mark inside a line is no blank (str.strip keeps it), but the tokenizer keeps nothing of it:
    # refused by both at its line (it was classified as [CLS] [SEP])
    (tmp_path / "inner.txt").write_bytes("good film\n \ufeff\n".encode("utf-8"))
    py = subprocess.run([sys.executable, "predict.py", "--json", "--file", str(tmp_path / "inner.txt")],
                        cwd=js_bundle, capture_output=True, text=True)
    js = _node(js_bundle / "predict.mjs", "--json", "--file", tmp_path / "inner.txt")
    assert (py.returncode, py.stderr) == (js.returncode, js.stderr) == (
        2, f"error: {tmp_path / 'inner.txt'} line 2: an empty text (nothing in it the tokenizer keeps: nothing to "
           f"classify)\n")
    assert py.stdout.count("\n") == js.stdout.count("\n") == 1
    for text in ("\x1c", "\x85 "):
        py = subprocess.run([sys.executable, "predict.py", text], cwd=js_bundle, capture_output=True, text=True)
        js = _node(js_bundle / "predict.mjs", text)
        assert (py.returncode, py.stderr) == (js.returncode, js.stderr) == (2, "error: an empty text: nothing to "
                                                                             "classify\n")


def test_npm_install_leaves_a_bundle_predict_py_accepts(js_bundle, tmp_path):
    """`npm install` in the bundle folder adds node_modules/ and package-lock.json: predict.py ignores exactly those."""
    from compress.bundle_predict import BundleError, verify

    copy = shutil.copytree(js_bundle, tmp_path / "b")
    (copy / "node_modules").mkdir()
    (copy / "node_modules" / "x.js").write_text("1")
    (copy / "package-lock.json").write_text("{}")
    verify(copy)
    (copy / "extra.js").write_text("1")
    with pytest.raises(BundleError, match="extra.js: not listed"):
        verify(copy)


def _chromium_dom(js_bundle: Path, tmp_path: Path, page: str, extra: dict[str, str] = {}, npm: bool = True) -> str:
    """The DOM of ``page`` of the bundle's site (served over HTTP with the npm packages beside it unless not ``npm``,
    plus ``extra`` files) once headless Chromium has run it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert chromium, "this test needs Chromium: apt-get install chromium"
    site = shutil.copytree(js_bundle, tmp_path / "site")
    if npm:
        (site / "node_modules").symlink_to(NODE_MODULES)  # as `npm install` in the bundle folder would leave it
    for name, text in extra.items():
        (site / name).write_text(text)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=60000",
                               f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                               f"http://127.0.0.1:{server.server_address[1]}/{page}"],
                              capture_output=True, text=True, timeout=180)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_index_html_classifies_in_headless_chromium(js_bundle, tmp_path):
    """The bundle's page, served over HTTP with the npm packages beside it, in a real browser: the same result as
    predict.py within int8 kernel differences. Needs Chromium (`apt-get install chromium`), hence `slow`."""
    from urllib.parse import quote

    dom = _chromium_dom(js_bundle, tmp_path, f"index.html?text={quote(TEXTS[0])}")
    out = dom.split('<pre id="out">', 1)[1].split("</pre>", 1)[0]
    result = json.loads(out.replace("&quot;", '"'))
    assert "error" not in result, result
    want = predict(js_bundle, TEXTS[:1])[0]
    assert result["label"] == want["label"] or abs(want["scores"]["positive"] - 0.5) < 0.05
    assert result["scores"] == pytest.approx(want["scores"], abs=0.05)
    assert "<h1 id=\"name\">minilm-js</h1>" in dom


@pytest.mark.slow
def test_index_html_says_what_is_missing_without_its_npm_packages(js_bundle, tmp_path):
    """A bundle served without `npm install`: the page said "loading…" for ever (a failed static import stops the
    module before its try); it now shows the error, naming predict.mjs and npm install. Needs Chromium."""
    dom = _chromium_dom(js_bundle, tmp_path, "index.html?text=good", npm=False)
    out = dom.split('<pre id="out">', 1)[1].split("</pre>", 1)[0]
    error = json.loads(out.replace("&quot;", '"'))["error"]
    assert error.startswith("cannot load predict.mjs or its npm packages (run `npm install` in the bundle folder): ")


@pytest.mark.slow
def test_index_html_shows_a_refused_text_in_place_of_the_previous_result(js_bundle, tmp_path):
    """Classify on a blank text after a result: the page's click handler dropped the refusal ("an empty text"), and
    the previous text's label stayed on screen as if it were this one's. The refusal replaces it."""
    from urllib.parse import quote

    driver = f"""<pre id="seen"></pre><iframe id="page" src="index.html?text={quote(TEXTS[0])}"></iframe>
<script type="module">
const wait = (ms) => new Promise((done) => setTimeout(done, ms));
const doc = () => document.getElementById("page").contentDocument;
const out = () => doc()?.getElementById("out")?.textContent ?? "";
for (let i = 0; i < 600 && !out().includes("label"); i++) await wait(100);
const before = out();
doc().getElementById("text").value = "   ";
doc().getElementById("go").click();
for (let i = 0; i < 100 && out() === before; i++) await wait(100);
document.getElementById("seen").textContent = JSON.stringify({{before, after: out()}});
</script>"""
    dom = _chromium_dom(js_bundle, tmp_path, "driver.html", {"driver.html": driver})
    seen = json.loads(dom.split('<pre id="seen">', 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    assert "label" in seen["before"], seen
    assert json.loads(seen["after"]) == {"error": "an empty text (nothing in it the tokenizer keeps: nothing to "
                                                  "classify)"}, seen


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs a CPU affinity call and two usable cores")
def test_threads_warning_is_the_same_from_both_runners_on_a_pinned_process(js_bundle):
    """Pinned to one core, --threads 2 warns from predict.mjs (os.availableParallelism) and predict.py alike, in the
    same words."""
    one = min(os.sched_getaffinity(0))
    pin = {"capture_output": True, "text": True, "cwd": js_bundle, "timeout": 300,
           "preexec_fn": lambda: os.sched_setaffinity(0, {one})}
    node = subprocess.run(["node", "predict.mjs", "--threads", "2", TEXTS[1]], **pin)
    py = subprocess.run([sys.executable, "predict.py", "--threads", "2", TEXTS[1]], **pin)
    assert node.returncode == py.returncode == 0 and node.stdout.split("\t")[0] == py.stdout.split("\t")[0]
    assert node.stderr.splitlines()[0] == py.stderr.splitlines()[0] == \
        "warning: --threads 2 is more than this machine's 1 cores: onnxruntime will run slower, not faster"


def test_predict_mjs_refuses_a_pair_line_with_an_empty_text_as_predict_py_does(tmp_path, minilm_dir, capsys):
    """A pair bundle's --file line "text<TAB>" is refused by its line number in both runners."""
    from conftest import export_int8, tiny_bert_config
    from transformers import BertForSequenceClassification

    import torch

    torch.manual_seed(0)
    export_int8(BertForSequenceClassification(tiny_bert_config()), tmp_path)
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    folder, _ = build(tmp_path / "bundles", "rte-js", model=tmp_path / "int8.onnx",
                      tokenizer=minilm_dir / "tokenizer.json", task="rte", labels=["entailment", "not_entailment"],
                      text_pair=True, max_length=32, ort_format=False)
    (tmp_path / "pairs.tsv").write_text("it rains\tthe street is wet\nhe left\t\n", encoding="utf-8")
    py = subprocess.run([sys.executable, "predict.py", "--file", str(tmp_path / "pairs.tsv")], cwd=folder,
                        capture_output=True, text=True)
    js = _node(folder / "predict.mjs", "--file", tmp_path / "pairs.tsv")
    want = f"error: {tmp_path / 'pairs.tsv'} line 2: an empty text pair: nothing to classify"
    assert (py.returncode, py.stderr.strip()) == (js.returncode, js.stderr.strip()) == (2, want)
    assert py.stdout.count("\n") == js.stdout.count("\n") == 1
    # texts of nothing the tokenizer keeps (a zero-width space, a control character): refused by both, not scored as
    # [CLS] [SEP]
    for line, what in (("he left\t\u200b", "text pair"), ("\x01\the is here", "text")):
        (tmp_path / "pairs.tsv").write_text(f"it rains\tthe street is wet\n{line}\n", encoding="utf-8")
        py = subprocess.run([sys.executable, "predict.py", "--file", str(tmp_path / "pairs.tsv")], cwd=folder,
                            capture_output=True, text=True)
        js = _node(folder / "predict.mjs", "--file", tmp_path / "pairs.tsv")
        want = (f"error: {tmp_path / 'pairs.tsv'} line 2: an empty {what} (nothing in it the tokenizer keeps: "
                f"nothing to classify)")
        assert (py.returncode, py.stderr.strip()) == (js.returncode, js.stderr.strip()) == (2, want)
        assert py.stdout.count("\n") == js.stdout.count("\n") == 1
    js = _node(folder / "predict.mjs", "\u200b", "a pair")
    assert (js.returncode, js.stderr.strip()) == (2, "error: an empty text (nothing in it the tokenizer keeps: "
                                                     "nothing to classify)")
    # a blank text or pair on the command line: named as a file's line names it (the pair was "an empty text")
    for texts, what in ((("he left", " "), "text pair"), ((" ", "he left"), "text")):
        py = subprocess.run([sys.executable, "predict.py", *texts], cwd=folder, capture_output=True, text=True)
        js = _node(folder / "predict.mjs", *texts)
        want = f"error: an empty {what}: nothing to classify"
        assert (py.returncode, py.stderr.strip()) == (js.returncode, js.stderr.strip()) == (2, want), texts
        assert main(["predict", str(folder), *texts]) == 2
        assert capsys.readouterr().err.strip().endswith(want.removeprefix("error:"))  # "error: predict: an empty ..."


def _js_encode(tmp_path: Path, tokenizer_json: Path, cases: list, max_length: int = 128) -> list[dict]:
    """predict.mjs's encode() of each [text, pair or null] with ``tokenizer_json`` (no bundle, no model needed)."""
    shutil.copy(ROOT / "compress" / "bundle_predict.mjs", tmp_path / "predict.mjs")
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "encode.mjs").write_text(
        "import { readFile } from 'node:fs/promises';\nimport { Predictor } from './predict.mjs';\n"
        f"const tj = JSON.parse(await readFile({json.dumps(str(tokenizer_json))}, 'utf8'));\n"
        "const cases = JSON.parse(await readFile('cases.json', 'utf8'));\n"
        f"const p = new Predictor({{task: {{labels: ['a', 'b'], text_pair: true}}, max_length: {max_length}}}, tj, null);\n"
        "console.log(JSON.stringify(cases.map(([a, b]) => p.encode(a, b))));\n")
    proc = _node("encode.mjs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _same_ids_as_the_tokenizers_library(tmp_path: Path, tokenizer_json: Path, cases: list) -> list:
    """predict.mjs's ids and type ids of each [text, pair or null] are the Rust library's (max length 128); returns the
    Rust encodings."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=128)
    work = tmp_path / "js"
    work.mkdir()
    wants = [tokenizer.encode(a, b) if b is not None else tokenizer.encode(a) for a, b in cases]
    for (a, _), want, got in zip(cases, wants, _js_encode(work, tokenizer_json, cases)):
        assert (got["input_ids"], got["token_type_ids"]) == (want.ids, want.type_ids), a
    return wants


def test_predict_mjs_splits_cjk_characters_beyond_the_basic_plane_as_the_tokenizers_library(tmp_path, minilm_dir):
    """CJK Extension B-F ideographs (U+20000..., two UTF-16 units each) are split one a word by the Rust BertNormalizer;
    tokenizers.js tests them a UTF-16 unit at a time, so a run of them was one word (one [UNK], not one per char)."""
    cases = [["\U00020000\U00020001 x \U0002a700\U0002b740", None], ["中\U00020000文", "\U0002f800 y"]]
    _same_ids_as_the_tokenizers_library(tmp_path, minilm_dir / "tokenizer.json", cases)


@pytest.mark.parametrize("normalizer", ["bert", "sequence-lowercase"])
def test_predict_mjs_lowercases_a_final_sigma_as_the_tokenizers_library(tmp_path, minilm_dir, normalizer):
    """The Rust library lowercases a character at a time (Σ -> σ everywhere); JavaScript's toLowerCase() gives a word's
    last Σ the final form ς, another token ("##ος" for "##ο ##σ") than predict.py's."""
    spec = json.loads((minilm_dir / "tokenizer.json").read_text())
    if normalizer == "sequence-lowercase":
        spec["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Lowercase"},
                                                                   {"type": "StripAccents"}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    _same_ids_as_the_tokenizers_library(tmp_path, tmp_path / "tokenizer.json", [["ΟΔΟΣ ΣΟΦΟΣ", None],
                                                                                 ["ΑΣ. Σ", "ΚΟΣΜΟΣ"]])


@pytest.mark.parametrize("cased", [False, True, "sequence"])
def test_predict_mjs_reads_every_character_as_the_tokenizers_library(tmp_path, minilm_dir, cased):
    """Every code point U+0001..U+31FFF between two letters ("a" + c + "b"), uncased (MiniLM's BertNormalizer),
    cased, and behind a Sequence normalizer (NFD, Lowercase, StripAccents): 658 of them (characters newer than the Rust
    library's Unicode tables: U+061D, Quranic marks, Sogdian, Newa ...) were stripped, split on or dropped by
    tokenizers.js, and kept whole by the Rust library (their word [UNK]); behind the Sequence, 594 (its StripAccents
    strips every mark (\\p{M}), Rust's only the marks of its own table; U+0085 and U+FEFF split the other way round).
    U+32000..U+10FFFF: the slow test below."""
    _same_ids_for_every_code_point(tmp_path, minilm_dir, cased, range(0x01, 0x32000))


@pytest.mark.slow
@pytest.mark.parametrize("cased", [False, True, "sequence"])
def test_predict_mjs_reads_every_character_beyond_u31fff_as_the_tokenizers_library(tmp_path, minilm_dir, cased):
    """The rest of Unicode, U+32000..U+10FFFF (~30 s a normalizer): no difference either."""
    _same_ids_for_every_code_point(tmp_path, minilm_dir, cased, range(0x32000, 0x110000))


def _same_ids_for_every_code_point(tmp_path: Path, minilm_dir: Path, cased, codepoints: range) -> None:
    """predict.mjs and the Rust tokenizers give the same ids for "a" + c + "b", every c of ``codepoints``."""
    from tokenizers import Tokenizer

    spec = json.loads((minilm_dir / "tokenizer.json").read_text())
    if cased == "sequence":
        spec["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Lowercase"},
                                                                   {"type": "StripAccents"}]}
    elif cased:
        spec["normalizer"].update(lowercase=False, strip_accents=False)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    texts = [f"a{chr(cp)}b" for cp in codepoints if not 0xD800 <= cp <= 0xDFFF]
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=16)
    work = tmp_path / "js"
    work.mkdir()
    got = _js_encode(work, tmp_path / "tokenizer.json", [[t, None] for t in texts], max_length=16)
    differ = [hex(ord(t[1])) for t, want, js in zip(texts, tokenizer.encode_batch(texts), got)
              if js["input_ids"] != want.ids]
    assert differ == [], f"{len(differ)} differ: {differ[:20]}"


def test_both_runners_read_the_command_line_alike(js_bundle):
    """`--` before a text that starts with "-" (predict.py: "unrecognized arguments", predict.mjs: "unknown option"),
    `--threads=1` (predict.mjs refused it), an option-like "-bad" (predict.mjs classified it, predict.py refused it),
    "- loved it" and "-.5" (predict.mjs refused them), "-1e3" and "-h loved it" (predict.mjs classified them), an
    abbreviation "--js" (predict.py took it for --json)."""
    import sys

    # argparse reads "- loved it" (a space) and "-.5" (a negative number) as texts, "-1e3" as an option
    for args, code in [(["--", "-bad"], 0), (["--threads=1", "good"], 0), (["good", "--json"], 0),
                       (["--", "--json"], 0), (["-bad"], 2), (["a", "b", "c"], 2), (["- loved it"], 0), (["-.5"], 0),
                       (["-1e3"], 2), (["-"], 0), (["-h loved it"], 2), (["--js", "good"], 2), (["--help=x"], 2)]:
        py = subprocess.run([sys.executable, "predict.py", *args], cwd=js_bundle, capture_output=True, text=True)
        js = _node(js_bundle / "predict.mjs", *args)
        assert py.returncode == js.returncode == code, (args, py.stderr, js.stderr)
        labels = [[line.split("\t")[0] if "\t" in line else json.loads(line)["label"] for line in p.stdout.splitlines()]
                  for p in (py, js)]
        assert labels[0] == labels[1] and len(labels[0]) == (code == 0), (args, labels)
    # an empty --file path (a shell variable left unset) was "error: : cannot read (ENOENT)"
    py = subprocess.run([sys.executable, "predict.py", "--file", ""], cwd=js_bundle, capture_output=True, text=True)
    js = _node(js_bundle / "predict.mjs", "--file", "")
    for proc in (py, js):
        assert (proc.returncode, proc.stderr) == (2, "error: --file: an empty path (give a file, or - for standard "
                                                     "input)\n"), proc.stderr


def test_predict_mjs_verifies_a_bundle_without_crypto_subtle(js_bundle, tmp_path):
    """Browsers give crypto.subtle only to https or localhost pages: index.html served over plain http to a phone on
    the network failed at once ("Cannot read properties of undefined (reading 'digest')"). A plain-JavaScript SHA-256
    stands in: equal to hashlib's at every padding boundary, and the bundle verifies and classifies without
    crypto at all, a tampered file still refused."""
    import hashlib

    sizes = [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 100_000]
    script = tmp_path / "sha.mjs"
    script.write_text(
        f"const {{ sha256Plain }} = await import({json.dumps(str(js_bundle / 'predict.mjs'))});\n"
        f"const sizes = {json.dumps(sizes)};\n"
        "console.log(JSON.stringify(sizes.map((n) => Buffer.from(sha256Plain(new Uint8Array(n).map((_, i) => "
        "(i * 31 + 7) & 255))).toString('hex'))));\n")
    proc = _node(script)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [hashlib.sha256(bytes((i * 31 + 7) & 255 for i in range(n))).hexdigest()
                                       for n in sizes]
    run = tmp_path / "nocrypto.mjs"
    run.write_text(
        "Object.defineProperty(globalThis, 'crypto', { value: undefined, configurable: true });\n"
        f"const {{ Predictor }} = await import({json.dumps(str(js_bundle / 'predict.mjs'))});\n"
        f"const p = await Predictor.load({json.dumps(str(js_bundle))});\n"
        "console.log(JSON.stringify(await p.predict('a gripping, funny film')));\n")
    proc = _node(run)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == {"label", "score", "scores"}
    copy = shutil.copytree(js_bundle, tmp_path / "b", symlinks=True)
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)  # as beside the fixture's bundle (Node looks in parents)
    (copy / "labels.json").write_text((copy / "labels.json").read_text() + " ")
    proc = _node(run.write_text(run.read_text().replace(str(js_bundle), str(copy))) and run)
    assert proc.returncode != 0 and "labels.json" in proc.stderr and "sha256" in proc.stderr, proc.stderr


def test_predict_mjs_refuses_a_url_outside_the_bundle_before_fetching_it(js_bundle, tmp_path):
    """readBytes' own check under readManifest's plain-name rule: a name that resolves outside the bundle's URL (up a
    folder, encoded, another host, an absolute URL) is refused before any request; a plain name is fetched."""
    base = "http://127.0.0.1:9/bundles/b"  # port 9 (discard): a request made would fail with a network error
    script = tmp_path / "outside.mjs"
    script.write_text(f"import {{ readVerified }} from {json.dumps(str(js_bundle / 'predict.mjs'))};\n"
                      "for (const name of JSON.parse(process.argv[2])) {\n"
                      f"  try {{ await readVerified({json.dumps(base)}, {{}}, [name], false); console.log('read'); }}\n"
                      "  catch (e) { console.log(`${e.constructor.name}: ${e.message}`); }\n"
                      "}\n")
    names = ["../x.json", "%2e%2e/x.json", "//localhost:9/x.json", "http://localhost:9/bundles/b/x.json",
             "../b2/x.json", "tokenizer.json"]
    proc = _node(script, json.dumps(names))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(names)
    for name, line in zip(names[:-1], lines[:-1]):
        assert line.startswith(f"BundleError: {name}: resolves outside the bundle ("), line
    # a plain name is fetched: the refused connection is a BundleError naming the file (it was fetch's TypeError)
    assert lines[-1].startswith(f"BundleError: {base}/tokenizer.json: cannot fetch ("), lines[-1]
    proc = _node(js_bundle / "predict.mjs", "--bundle", f"{base}/", TEXTS[0])  # and one line from the command
    assert (proc.returncode, proc.stdout) == (2, "") and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {base}/manifest.json: cannot fetch ("), proc.stderr


def test_predict_mjs_reads_added_tokens_and_an_unclean_normalizer_as_the_tokenizers_library(tmp_path, minilm_dir):
    """Tokens added to a tokenizer (`add_tokens`: normalized, so known by their lower-cased text) and a special token
    saved with normalized: true got [UNK] or the vocabulary's id in predict.mjs; a BertNormalizer with clean_text off
    leaves U+0085 and U+FEFF for the pre-tokenizer, which predict.mjs split as if it had cleaned them."""
    from tokenizers import Tokenizer

    added = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    added.add_tokens(["COVID-19", "Café"])
    spec = json.loads(added.to_str())
    for token in spec["added_tokens"]:
        token["normalized"] = token["normalized"] or token["content"] == "[MASK]"
    spec["normalizer"]["clean_text"] = False
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    cases = [["COVID-19 cases rose", None], ["the Café is open", "covid-19 CAFÉ"], ["a [MASK] film", None],
             ["a\x85b \ufeffc", None], ["x\ufeff\x85 y", "\x85z"]]
    wants = _same_ids_as_the_tokenizers_library(tmp_path, tmp_path / "tokenizer.json", cases)
    assert {30522, 30523, 103} <= {i for want in wants[:3] for i in want.ids}  # the added tokens and [MASK] read


def test_predict_mjs_refuses_a_text_that_is_not_a_string(js_bundle, tmp_path):
    """predict(["text"]), Python's list style, or a number: one BundleError, not text.replace's TypeError."""
    script = tmp_path / "types.mjs"
    script.write_text(f"import {{ Predictor }} from {json.dumps(str(js_bundle / 'predict.mjs'))};\n"
                      f"const model = await Predictor.load({json.dumps(str(js_bundle))});\n"
                      "for (const text of [['good film'], 42, undefined]) {\n"
                      "  try { await model.predict(text); console.log('classified'); }\n"
                      "  catch (e) { console.log(`${e.constructor.name}: ${e.message}`); }\n"
                      "}\n")
    proc = _node(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"BundleError: predict(text, pair = null): texts must be strings, got {t}"
                                        for t in ("object", "number", "undefined")]


def test_predict_mjs_without_its_npm_packages_says_so_in_one_line(js_bundle, tmp_path):
    """Run before `npm install`, predict.mjs ended in a Node.js stack trace (ERR_MODULE_NOT_FOUND, static imports);
    predict.py names its missing packages in one line. Imported by another module, it rejects with that message."""
    copy = shutil.copytree(js_bundle, tmp_path / "bare")  # no node_modules in this folder or above it
    proc = _node(copy / "predict.mjs", TEXTS[0])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("error: this bundle's npm packages (onnxruntime-web, @huggingface/tokenizers) are not "
                           "installed: run `npm install` in the bundle folder (or one above it)\n")
    script = tmp_path / "use.mjs"
    script.write_text(f"try {{ await import({json.dumps(str(copy / 'predict.mjs'))}); }}\n"
                      "catch (e) { console.log(e.constructor.name, e.message.split(' (')[0]); }\n")
    proc = _node(script)
    assert proc.returncode == 0 and proc.stdout.startswith("BundleError this bundle's npm packages"), proc.stderr


def test_predict_mjs_loads_a_bundle_from_a_file_url(js_bundle):
    """`Predictor.load` takes a URL in Node.js as its comment says: a file: URL (string or URL object) was joined as a
    path ("file:/tmp/..."), and the error named a file that exists."""
    script = js_bundle.parent / "fileurl.mjs"
    url = js_bundle.as_uri() + "/"
    script.write_text(f"import {{ Predictor }} from {json.dumps(str(js_bundle / 'predict.mjs'))};\n"
                      f"for (const base of [{json.dumps(url)}, new URL({json.dumps(url)})]) {{\n"
                      "  const model = await Predictor.load(base);\n"
                      "  console.log(JSON.stringify((await model.predict(process.argv[2])).scores));\n}\n")
    proc = _node(script, TEXTS[0])
    assert proc.returncode == 0, proc.stderr
    local = _node(js_bundle / "predict.mjs", "--json", TEXTS[0])
    assert proc.stdout.splitlines() == [json.dumps(json.loads(local.stdout)["scores"], separators=(",", ":"))] * 2



def test_both_runners_bench_the_same_texts_and_read_the_same_manifest_latency(js_bundle, tmp_path):
    """`--bench ROUNDS`: predict.mjs times the same lines as predict.py (blank ones skipped, each line once untimed,
    then once a round), prints the same JSON fields and reads the manifest's latency alike (the entry of the thread
    count timed, else the headline's); what one refuses (a zero round count, an empty line, a file with no line)
    the other refuses, exit status 2."""
    bundle = tmp_path / "b"
    shutil.copytree(js_bundle, bundle)
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    manifest = json.loads((bundle / "manifest.json").read_text())  # the one file not hashed: a latency to read
    manifest["latency"] = {"p50_ms": 0.7, "p90_ms": 1.0, "threads": 2, "by_threads": {"1": {"p50_ms": 0.5,
                           "p90_ms": 0.6}}, "protocol": {"cpu": "EPYC", "spin": "idle threads sleep"}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "texts.txt").write_text("a gripping, funny film\n\n  \ndull and far too long\n", encoding="utf-8")

    def both(*args, stdin=None):
        return (subprocess.run([sys.executable, "predict.py", *args], input=stdin, capture_output=True, text=True,
                               cwd=bundle), _node(bundle / "predict.mjs", *args, stdin=stdin))

    py, js = both("--bench", "2", "--json", "--threads", "1", "--file", str(tmp_path / "texts.txt"))
    assert py.returncode == js.returncode == 0, (py.stderr, js.stderr)
    py, js = json.loads(py.stdout), json.loads(js.stdout)
    assert set(py) == set(js) and py["manifest"] == js["manifest"] == {"p50_ms": 0.5, "p90_ms": 0.6, "threads": 1,
                                                                       "cpu": "EPYC", "spin": "idle threads sleep"}
    assert [(r["texts"], r["rounds"], r["runs"], r["threads"]) for r in (py, js)] == [(2, 2, 4, 1)] * 2
    assert 0 < js["p50_ms"] <= js["p90_ms"] and js["p50_ms"] <= js["p50_ms_with_tokenizer"]
    assert 20 < py["peak_rss_mb"] < 4000 and 20 < js["peak_rss_mb"] < 4000  # each its own (Node: maxRSS, KiB)
    py, js = both("--bench", "3", "a gripping, funny film")
    assert py.returncode == js.returncode == 0, (py.stderr, js.stderr)
    here, built = js.stdout.splitlines()
    assert re.fullmatch(r"here: p50 \d+\.\d{3} ms, p90 \d+\.\d{3} ms per text, onnxruntime-web's run alone \("
                        r"tokenizing included: p50 \d+\.\d{3} ms, p90 \d+\.\d{3} ms\); 3 runs \(1 text x 3 rounds\) "
                        r"at onnxruntime-web's default threads, WebAssembly; this process's peak resident memory "
                        r"\d+ MiB", here), here
    assert built == "built: p50 0.700 ms, p90 1.000 ms at 2 threads on EPYC, idle threads sleep (the manifest; " \
        "native onnxruntime)"
    assert py.stdout.splitlines()[1] == "built: p50 0.700 ms, p90 1.000 ms at 2 threads on EPYC, idle threads sleep " \
        "(the manifest)"
    for args, stdin, message in [(["--bench", "0", "good"], "", "--bench"),
                                 (["--bench", "1", "--file", "-"], "good\n\u200b\n",
                                  "error: standard input line 2: an empty text (nothing in it the tokenizer keeps"),
                                 (["--bench", "1", "--file", "-"], "\n  \n", "error: standard input: no line to time"),
                                 (["--file", "-"], "\n  \n", "error: standard input: no text to classify (empty, or "
                                                             "blank lines only)")]:
        py, js = both(*args, stdin=stdin)
        assert py.returncode == js.returncode == 2 and py.stdout == js.stdout == "", (args, py.stderr, js.stderr)
        assert message in py.stderr and message in js.stderr, (args, py.stderr, js.stderr)
    manifest["latency"]["by_threads"] = [{"p50_ms": 9.0}, {"p50_ms": 8.0, "p90_ms": 9.0}]  # a list: no by_threads
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    py, js = both("--bench", "1", "--json", "--threads", "1", "good")
    assert json.loads(py.stdout)["manifest"] == json.loads(js.stdout)["manifest"] == {
        "p50_ms": 0.7, "p90_ms": 1.0, "threads": 2, "cpu": "EPYC", "spin": "idle threads sleep"}, (py.stdout, js.stdout)
    manifest["latency"].update(threads=2.0, protocol={"cpu": ["a", "b"], "spin": 1})  # hand-written: read alike
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    py, js = both("--bench", "1", "good")
    assert py.stdout.splitlines()[1] == "built: p50 0.700 ms, p90 1.000 ms at 2 threads (the manifest)"
    assert js.stdout.splitlines()[1] == py.stdout.splitlines()[1].replace("manifest)", "manifest; native onnxruntime)")


def test_both_runners_refuse_to_time_a_model_whose_scores_are_not_one_a_label(js_bundle, tmp_path):
    """A bundle whose labels.json (and manifest, hashes updated) names three labels for a two-score model: predict.py
    refuses it at load, predict.mjs on its first run; `--bench` too (predict.mjs timed it before, the width checked
    only by predict), exit status 2, nothing on stdout."""
    from compress.bundle_predict import sha256_file

    bundle = tmp_path / "b"
    shutil.copytree(js_bundle, bundle)
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    names = ["negative", "neutral", "positive"]
    labels = bundle / "labels.json"
    labels.write_text(json.dumps({"labels": names, "dataset_labels": names}))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["task"].update(labels=names, dataset_labels=names)
    manifest["files"]["labels.json"], manifest["sizes"]["labels.json"] = sha256_file(labels), labels.stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    for args in (["good"], ["--bench", "1", "good"]):
        py = subprocess.run([sys.executable, "predict.py", *args], capture_output=True, text=True, cwd=bundle)
        js = _node(bundle / "predict.mjs", *args)
        assert py.returncode == js.returncode == 2 and py.stdout == js.stdout == "", (args, py.stderr, js.stderr)
        for proc in (py, js):
            assert "manifest.json: the model gives 2 scores but the manifest names 3 label(s)" in proc.stderr, \
                (args, proc.stderr)


def test_predict_mjs_timings_are_the_percentiles_of_each_runs_milliseconds(js_bundle, tmp_path):
    """Predictor.timings on a virtual clock (tokenizing 1 ms, the n-th timed run n ms): numpy's linear p50/p90, as
    predict.py's, of the run alone and with tokenizing; one untimed run a text first."""
    script = tmp_path / "clock.mjs"
    script.write_text("""
const { Predictor } = await import(process.argv[2]);
const model = await Predictor.load(process.argv[3], { threads: 1 });
let t = 0, calls = 0;
performance.now = () => t;
const [feeds, forward] = [model.feeds.bind(model), model.forward.bind(model)];
model.feeds = (...a) => { t += 1; return feeds(...a); };
model.forward = async (...a) => {
  calls += 1;
  const out = await forward(...a);
  t += Math.max(calls - 2, 0);
  return out;
};
const r = await model.timings([["good", null], ["bad", null]], 3, 1);
console.log(JSON.stringify({ ...r, calls }));
""")
    proc = _node(script, js_bundle / "predict.mjs", js_bundle)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"texts": 2, "rounds": 3, "runs": 6, "threads": 1, "p50_ms": 3.5, "p90_ms": 5.5,
                                       "p50_ms_with_tokenizer": 4.5, "p90_ms_with_tokenizer": 6.5, "calls": 8}


def _long_texts(glue_dir: Path) -> list[str]:
    """Lines of over twice `CLIP_CHARS` characters: real SST-2 sentences joined by spaces, runs of them, tabs, line
    breaks, no-break and ideographic spaces, zero-width spaces; led by a 9,000-character word or by 9,000 spaces; in
    capitals; CJK without spaces; one word of 20,000 letters."""
    import random

    from compress.bundle_predict import CLIP_CHARS

    rng = random.Random(0)
    lines = (glue_dir / "SST-2" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
    sentences = [line.split("\t")[0] for line in lines]
    seps = [" ", "  ", "\t", "\n", " \u00a0", "\u3000 ", " , ", "-", "  \u200b "]

    def long(n: int) -> str:
        return "".join(rng.choice(sentences) + rng.choice(seps) for _ in range(n))

    texts = [long(150) for _ in range(6)] + ["x" * 9000 + " " + long(300), " " * 9000 + long(300), long(150).upper(),
                                             "日本語の文章" * 1500 + " " + long(20), "é" * 20000]
    assert all(len(t) > 2 * CLIP_CHARS for t in texts)
    return texts


def test_both_runners_tokenize_a_long_line_from_its_first_words_to_the_same_ids(js_bundle, glue_dir, tmp_path):
    """A 5 MB line took predict.py 800 MB and 4.5 s (predict.mjs 500 MB) to keep 32 tokens: the whole line was
    tokenized, then truncated. Both now tokenize its first whole words when they hold more tokens than the model
    reads, and give the ids the whole line gives (single texts, and pairs of a long and a short text, the short one
    first or second), as the Rust tokenizers library does on the whole line; a pair of two long texts, or a tokenizer
    that truncates on the left (keeps the last tokens), is tokenized whole."""
    from tokenizers import Tokenizer

    from compress.bundle_predict import Predictor

    texts = _long_texts(glue_dir)
    medium = " ".join(texts[0].split()[:25])  # ~30 tokens: longer than half the budget, shorter than a cut
    cases = [[t, None] for t in texts] + [[texts[1], "a short premise"], ["short", texts[2]],
                                          [texts[3], medium], [medium, texts[4]], [texts[0], texts[5]],
                                          [texts[0], texts[1][:8000]]]  # too short to cut, more tokens than a cut
    whole = Tokenizer.from_file(str(js_bundle / "tokenizer.json"))  # truncates at the bundle's 32 tokens
    wants = [whole.encode(a, b) if b is not None else whole.encode(a) for a, b in cases]
    predictor = Predictor(js_bundle)
    for (a, b), want in zip(cases, wants):
        feed, _ = predictor._feed([(a, b) if b is not None else a])
        assert feed["input_ids"][0].tolist() == want.ids and feed["token_type_ids"][0].tolist() == want.type_ids
    clipped = [predictor._clip((a, b) if b is not None else a) != ((a, b) if b is not None else a) for a, b in cases]
    # cut: the lines of words (led by a long word or spaces: from a wider first part); whole: the lines without a
    # space that ends a word in their first part, a pair of two long lines, and a pair whose other line has more
    # tokens than the cut (longest-first truncation would then cut the other one more)
    assert clipped == [True] * 9 + [False] * 2 + [True] * 4 + [False] * 2, clipped
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    shutil.copy(js_bundle / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "encode.mjs").write_text(
        "import { readFile } from 'node:fs/promises';\n"
        f"import {{ Predictor }} from {json.dumps(str(js_bundle / 'predict.mjs'))};\n"
        "const tj = JSON.parse(await readFile('tokenizer.json', 'utf8'));\n"
        "const cases = JSON.parse(await readFile('cases.json', 'utf8'));\n"
        "const p = new Predictor({task: {labels: ['a', 'b'], text_pair: true}, max_length: 32}, tj, null);\n"
        "console.log(JSON.stringify(cases.map(([a, b]) => [p.encode(a, b), p.clipped(p.asRust(a), 30) !== null])));\n")
    proc = _node("encode.mjs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for (a, _), want, (js, _) in zip(cases, wants, got):
        assert (js["input_ids"], js["token_type_ids"]) == (want.ids, want.type_ids), a[:60]
    assert [cut for _, cut in got][:len(texts)] == clipped[:len(texts)]
    # truncated on the left: the last tokens are kept, the whole line is tokenized (by both)
    spec = json.loads((js_bundle / "tokenizer.json").read_text())
    spec["truncation"]["direction"] = "Left"
    left = tmp_path / "left"
    left.mkdir()
    (left / "tokenizer.json").write_text(json.dumps(spec))
    whole = Tokenizer.from_file(str(left / "tokenizer.json"))
    for (a, b), js in zip(cases, _js_encode(left, left / "tokenizer.json", cases, max_length=32)):
        want = whole.encode(a, b) if b is not None else whole.encode(a)
        assert js["input_ids"] == want.ids
    predictor.tokenizer = whole
    assert all(predictor._clip(t) is t for t in texts)


@pytest.mark.parametrize("kind", ["byte-level BPE", "SentencePiece unigram"])
def test_predict_py_cuts_a_long_line_where_byte_level_and_sentencepiece_tokenizers_end_a_word(kind, glue_dir):
    """RoBERTa's byte-level BPE puts a word's leading space in its first token, SentencePiece's Metaspace a "▁": a
    long line cut before a space that ends a word keeps the ids of the whole line there too (tokenizers trained here on
    SST-2, as the bundle's tokenizer.json would hold them)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    from compress.bundle_predict import Predictor

    texts = _long_texts(glue_dir)
    sentences = [" ".join(t.split()[:40]) for t in texts[:6]] * 20
    if kind == "byte-level BPE":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>", "<pad>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=600, special_tokens=["<s>", "</s>", "<pad>"], unk_token="<pad>")
    tokenizer.train_from_iterator(sentences, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 1), ("<s>", 0))
    tokenizer.enable_truncation(32)
    predictor = Predictor.__new__(Predictor)  # the tokenizer alone: no model to run
    predictor.tokenizer, predictor._counter = tokenizer, Tokenizer.from_str(tokenizer.to_str())
    predictor._counter.no_truncation()
    for item in [*texts, (texts[1], "a short premise"), ("short", texts[2])]:
        cut = predictor._clip(item)
        whole, part = (tokenizer.encode(*x) if isinstance(x, tuple) else tokenizer.encode(x) for x in (item, cut))
        assert part.ids == whole.ids
        assert (cut != item) == (item not in texts[-2:]), str(item)[:60]
