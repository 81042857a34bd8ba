"""Report: Pareto maths, table numbers (retention, speedup, mean ± std), Markdown/HTML/PNG output."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
import re
import shutil
import statistics

import pytest

from compress.cli import main
from compress.errors import CompressError
from compress import pareto
from compress.pareto import pareto_front, pareto_plot
from compress.report import (Latency, Row, RunTable, _provenance_lines, bench_record, collect, mean_std, table_cells,
                             write)

from fake_run import bench_artifact, make_run


def _lat(p50: float) -> dict[int, Latency]:
    return {1: Latency(p50 * 1.8, p50 * 2.0, 1000 / (p50 * 1.8)), 2: Latency(p50, p50 * 1.2, 1000 / p50)}


def _table(run="quickstart", shift=0.0, scale=1.0) -> RunTable:
    rows = [
        Row("teacher", "teacher", "torch", 22_700_000, 90_000_000, 0.893 + shift),
        Row("teacher", "teacher", "onnx fp32", 22_700_000, 90_000_000, 0.893 + shift, latency=_lat(12.0 * scale),
            reference=True),
        Row("teacher · int8 dynamic", "int8", "onnx int8", 22_700_000, 23_000_000, 0.887 + shift,
            latency=_lat(5.0 * scale), shippable=True),
        Row("student tiny", "student", "onnx fp32", 11_000_000, 45_000_000, 0.871 + shift, 0.004, 3,
            latency=_lat(6.0 * scale)),
        Row("student tiny · int8 dynamic", "int8", "onnx int8", 11_000_000, 12_000_000, 0.866 + shift, 0.005, 3,
            latency=_lat(2.4 * scale), shippable=True),
        Row("pruned", "pruned", "onnx fp32", 7_000_000, 30_000_000, 0.860 + shift, latency=_lat(4.0 * scale)),
    ]
    return RunTable(run, f"runs/{run}", "accuracy", rows, teacher_metric=0.893 + shift,
                    provenance={"recipe": f"pipelines/{run}.yaml", "seeds": [42, 43, 44],
                                "protocol": {"batch_size": 1, "threads": "1,2", "rows": 200},
                                "versions": {"onnxruntime": "1.32.0"}, "host": {"cpu": "Test CPU", "cores": 2}})


def test_pareto_front():
    points = [(12.0, 0.893), (5.0, 0.887), (6.0, 0.871), (2.4, 0.866), (4.0, 0.860), (2.4, 0.850)]
    assert pareto_front(points) == [3, 1, 0]  # 2.4 ms/0.866, 5 ms/0.887, 12 ms/0.893; the rest are dominated
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5)]) == [0]


def test_mean_std():
    assert mean_std([0.8, 0.9, 1.0]) == (pytest.approx(0.9), pytest.approx(0.1), 3)
    assert mean_std([0.7]) == (0.7, None, 1)
    assert mean_std([]) == (None, None, 0)
    assert mean_std([0.5, float("nan"), None]) == (0.5, None, 1)


def test_table_numbers():
    table = _table()
    header, body = table_cells(table)
    assert header == ["artifact", "format", "params", "file", "accuracy (dev)", "retention", "p50 ms (1t)",
                      "p90 ms (1t)", "p50 ms (2t)", "p90 ms (2t)", "speedup (2t)", "sent/s (2t)"]
    rows = {cells[0]: dict(zip(header, cells)) for cells in body}
    ref = rows["teacher (reference)"]
    assert ref["speedup (2t)"] == "1.0×" and ref["retention"] == "100.0%" and ref["p50 ms (1t)"] == "21.60"
    student = rows["student tiny · int8 dynamic"]
    assert student["speedup (2t)"] == "5.0×"  # 12.0 / 2.4
    assert student["retention"] == "96.9%"  # 96.98%, rounded down
    assert student["accuracy (dev)"] == "0.8660 ± 0.0050 (sample std, n=3)"
    assert student["params"] == "11.0M" and student["file"] == "12.0 MB" and student["sent/s (2t)"] == "417"
    torch_row = next(dict(zip(header, c)) for c in body if c[1] == "torch")
    assert torch_row["p50 ms (2t)"] == "–" and torch_row["speedup (2t)"] == "–"


def test_write_markdown_html_png(tmp_path):
    tables = [_table(), _table("sst2", shift=0.02, scale=3.0)]
    written = write(tables, tmp_path)
    assert set(written) == {"md", "html", "png"}
    png = (tmp_path / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    md = (tmp_path / "report.md").read_text()
    assert md.count("| artifact | format |") == 2 and "## quickstart" in md and "## sst2" in md
    assert "![metric vs latency](pareto.png)" in md
    assert "- recipe: pipelines/quickstart.yaml" in md and "- seeds: 42, 43, 44" in md
    assert "- protocol: batch_size=1, threads=1,2, rows=200" in md and "cpu=Test CPU" in md
    page = (tmp_path / "report.html").read_text()
    # self-contained: the plot is inlined, nothing is loaded from elsewhere
    inline = re.search(r"src='data:image/png;base64,([^']+)'", page)
    assert inline and base64.b64decode(inline.group(1)) == png
    assert not re.search(r"(src|href)=['\"](?!data:)", page)
    assert page.count("<table>") == 2 and "0.8660 ± 0.0050 (sample std, n=3)" in page and "<dt>host</dt>" in page
    assert page.count("class='ship'") == 4 and page.count("class='ref'") == 2


def test_plot_skips_rows_without_numbers(tmp_path):
    table = _table()
    table.rows = [r for r in table.rows if not r.latency]  # only the torch row: nothing to plot
    assert pareto_plot([table], tmp_path / "p.png") is None
    written = write([table], tmp_path)
    assert "png" not in written and "pareto.png" not in (tmp_path / "report.md").read_text()


def test_names_with_dollar_signs_are_drawn_as_written(tmp_path, monkeypatch):
    """A `$` in a run or student name (a recipe named budget_$5_$10) made matplotlib parse a formula: a traceback
    instead of a plot, or a subscript where the name was."""

    seen = {}
    real = pareto._spread_labels
    monkeypatch.setattr(pareto, "_spread_labels",
                        lambda fig, ax, labels, points=(): seen.setdefault("texts", [t.get_text() for t in labels])
                        and real(fig, ax, labels, points))
    table = _table()
    table.run = "budget_$5_$10"
    table.rows[1].name = "student a $x_1$ b"
    assert pareto_plot([table], tmp_path / "p.png") is not None
    assert "student a $x_1$ b" in seen["texts"]


def test_markdown_shows_names_as_written(tmp_path):
    """report.md escaped only `|` in names: a `<b>` in a run or student name was raw HTML there, a `*` emphasis."""
    table = _table()
    table.run = "run <b>*1*</b>"
    table.rows[1].name = "student s|<i>"
    table.provenance["recipe"] = "pipelines/r<u>_x_</u>.yaml"
    table.folder = "runs/a`b"
    write([table], tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "- recipe: pipelines/r\\<u\\>\\_x\\_\\</u\\>.yaml" in md and "Run folder: `` runs/a`b ``." in md
    assert "## run \\<b\\>\\*1\\*\\</b\\>" in md and "| student s\\|\\<i\\> (reference) |" in md
    assert "<b>" not in md and "<i>" not in md and "<u>" not in md
    # the constant teacher's label (task.labels: any text, a newline too) was raw in the note under the table
    from compress.report import md_text

    table.teacher_constant = "<img src=x onerror=alert(1)>\n\n# heading"
    write([table], tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "<img src=x onerror=alert(1)>" not in md and "'\\<img src=x onerror=alert(1)\\>" in md
    assert md_text("neg\n\n- a list item?") == "neg - a list item?"  # a newline split a table row or a bold span
    # a run named "_x": matplotlib leaves a label starting with "_" out of the legend
    from compress.pareto import pareto_plot

    seen = {}
    real = pareto._spread_labels

    def spy(fig, ax, labels, points=()):
        seen["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
        return real(fig, ax, labels, points)

    table.run = "_x"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pareto, "_spread_labels", spy)
        pareto_plot([table], tmp_path / "p.png")
    assert any(t.lstrip("\u200b").startswith("_x (") for t in seen["legend"]), seen


# ------------------------------------------------------------------------------------------------ run folders
def _files(tmp_path):
    dummy = tmp_path / "dummy.bin"
    dummy.write_bytes(b"\0" * 1000)
    return {"int8_model": dummy, "fp32_model": dummy, "tokenizer_json": dummy}


def test_collect_reads_stage_manifests_and_bench(tmp_path):
    run = make_run(tmp_path, "quickstart", **_files(tmp_path), teacher_acc=0.90, fp32_acc=0.89,
                   int8={"dynamic": (0.885, True), "static": (0.86, False)},
                   latency={"torch_fp32": {1: 30.0, 2: 18.0}, "onnx_fp32": {1: 20.0, 2: 12.0},
                            "int8_dynamic": {1: 8.0, 2: 5.0}, "int8_static": {1: 7.0, 2: 4.0},
                            "optimum_avx512_vnni": {1: 9.0, 2: 6.0}})
    table = collect(run)
    rows = {r.name: r for r in table.rows}
    assert list(rows) == ["teacher", "teacher · onnx fp32", "teacher · int8 dynamic", "teacher · int8 static",
                          "teacher · optimum int8 (peer)"]
    assert table.metric_name == "accuracy" and table.teacher_metric == 0.90
    ref = rows["teacher · onnx fp32"]
    assert ref.reference and ref.latency[2].p50_ms == 12.0 and ref.latency[2].p90_ms == pytest.approx(14.4)
    assert rows["teacher"].latency[1].p50_ms == 30.0 and rows["teacher"].fmt == "torch"  # bench's torch_fp32
    dyn, static = rows["teacher · int8 dynamic"], rows["teacher · int8 static"]
    assert dyn.shippable and not static.shippable and not rows["teacher · optimum int8 (peer)"].shippable
    assert table.speedup(dyn) == pytest.approx(12.0 / 5.0) and table.speedup(dyn, 1) == pytest.approx(20 / 8)
    assert table.retention(dyn) == pytest.approx(0.885 / 0.90)
    assert dyn.latency[2].throughput == pytest.approx(1000 / 5.5, rel=1e-3)  # the bench's dev series, batch 1
    assert dyn.latency[2].peak_throughput == pytest.approx(8000 / 32.5, abs=0.01)  # its best fixed shape
    assert dyn.latency[2].peak_shape == "b8xs32"
    assert dyn.path.endswith("quantize/int8_dynamic.onnx") and dyn.tokenizer.endswith("tokenizer/tokenizer.json")
    assert table.provenance["seeds"] == [42] and table.provenance["recipe"] == "pipelines/quickstart.yaml"
    assert table.provenance["protocol"]["dev_rows"] == 200
    assert table.provenance["teacher stage host"]["cpu"] == "Test CPU"
    assert "bench (2026-11-26T08:20:00+00:00)" in table.provenance["stages"]
    assert table.provenance["int8 accuracy"] == "dev texts one at a time, as shipped"
    # a quantize record from before one-at-a-time scoring says so under the table
    old = collect(make_run(tmp_path / "old", "quickstart", **_files(tmp_path), scored_batch=None))
    line = dict(_provenance_lines(old))["int8 accuracy"]
    assert line.startswith("dev texts in batches of 32") and line.endswith("rerun the quantize stage")


def test_an_int8_model_the_guard_refused_is_said_so_with_its_reason(tmp_path, capsys):
    """A quantize stage whose accuracy guard passed no int8 model: its rows only lacked the "(shippable)" tag; the
    Markdown names them NOT shippable and the note under the table says why. A stage folder since deleted is said
    missing, not redone."""
    from compress.report import md_text, write

    run = make_run(tmp_path, "quickstart", **_files(tmp_path), int8={"dynamic": (0.80, False), "static": (0.885, True)},
                   latency={"onnx_fp32": {2: 12.0}, "int8_dynamic": {2: 5.0}, "int8_static": {2: 4.0}})
    record = json.loads((run / "quantize" / "quantize.json").read_text())
    record["int8"]["dynamic"]["guard"] = "drop 9.00 points > max_drop 1.00 with 3 nodes fp32"
    (run / "quantize" / "quantize.json").write_text(json.dumps(record))
    table = collect(run)
    write([table], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| teacher · int8 dynamic (NOT shippable) |" in md and "| teacher · int8 static (shippable) |" in md
    assert md_text("Not shippable (the quantize stage's accuracy guard, quantize.max_drop): teacher · int8 dynamic: "
                   "drop 9.00 points > max_drop 1.00 with 3 nodes fp32.") in md
    page = (tmp_path / "out" / "report.html").read_text()  # the page names them too, not by colour alone
    assert "Not shippable" in page and "<td>teacher · int8 dynamic (NOT shippable)</td>" in page
    assert "<tr class='ship'><td>teacher · int8 static (shippable)</td>" in page
    shutil.rmtree(run / "quantize")
    from compress.report import _redone_since

    assert _redone_since(run, {"inputs": {"quantize/model.onnx": "ab"}}, "bench")
    assert "the quantize stage is missing (its folder or manifest)" in capsys.readouterr().err


def test_collect_with_students_and_report_measurements(tmp_path, capsys):
    """The quantized model is a student: the teacher's ONNX fp32 (speedup reference) comes from the report stage's
    own measurement (report/latency.json)."""
    run = make_run(tmp_path, "q", **_files(tmp_path), student="tiny", student_acc=0.87,
                   int8={"dynamic": (0.865, True)}, latency={"onnx_fp32": {2: 10.0}, "int8_dynamic": {2: 4.0}})
    from compress.report import MEASURED

    measured = {"protocol": {"dev_rows": 200}, "models": {"teacher": {"artifacts": {
        "onnx_fp32": bench_artifact({2: 24.0}, {"accuracy": 0.899}, size_bytes=90_000_000, file=None)}}}}
    (run / "report").mkdir()
    (run / "report" / MEASURED).write_text(json.dumps(measured))
    table = collect(run)
    rows = {r.name: r for r in table.rows}
    assert list(rows) == ["teacher", "teacher · onnx fp32", "student tiny", "student tiny · onnx fp32",
                          "student tiny · int8 dynamic"]
    assert rows["student tiny"].params == 11_000_000 and rows["student tiny"].metric == 0.87
    assert rows["teacher · onnx fp32"].reference and rows["teacher · onnx fp32"].metric == 0.899
    assert table.speedup(rows["student tiny · int8 dynamic"]) == pytest.approx(6.0)
    # an explicit `extra` replaces what is on disk
    assert collect(run, extra={}).reference_row() is None
    # the note says which pass the latency columns come from
    from compress.report import note

    assert "p50/p90, throughput and speedup from the report stage's own timing pass" in note(table)
    assert "p50/p90, throughput and speedup from the bench stage (bench/bench.json)" in note(collect(run, extra={}))
    unmeasured = collect(run, extra={})
    for row in unmeasured.rows:  # nothing timed: no sentence on where timings come from
        row.latency = {}
    assert "Sources:" not in note(unmeasured)
    # measured before the quantize stage was redone (the quantize outputs it read differ from those there now): the
    # measurements are left out, with a warning, rather than shown beside models they did not time
    (run / "report" / "manifest.json").write_text(json.dumps({"inputs": {"quantize/int8_dynamic.onnx": "0" * 64}}))
    capsys.readouterr()
    assert collect(run).reference_row() is None
    assert (f"warning: {run / 'report' / MEASURED}: the quantize stage was redone since it was measured: its "
            f"latencies are left out") in capsys.readouterr().err


def test_cli_report_overlays_runs(tmp_path, capsys):
    a = make_run(tmp_path / "runs", "quickstart", **_files(tmp_path),
                 latency={"onnx_fp32": {1: 20.0, 2: 12.0}, "int8_dynamic": {1: 8.0, 2: 5.0},
                          "int8_static": {1: 7.0, 2: 4.0}})
    b = make_run(tmp_path / "runs", "sst2", **_files(tmp_path), teacher_acc=0.913, fp32_acc=0.91,
                 int8={"dynamic": (0.905, True)}, latency={"onnx_fp32": {1: 60.0, 2: 35.0},
                                                           "int8_dynamic": {1: 20.0, 2: 12.0}})
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## quickstart" in md and "## sst2" in md and "| teacher · int8 dynamic (reference)" not in md
    assert "| teacher · onnx fp32 (reference) | onnx fp32 |" in md and "2.4×" in md and "2.9×" in md
    assert "best fixed-shape seq/s (2t) |" in md and "246 (b8xs32)" in md
    assert (tmp_path / "rep" / "pareto.png").stat().st_size > 20_000
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: no such run folder\n"
    assert main(["report", str(tmp_path / "rep" / "report.md")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'rep' / 'report.md'}: not a folder")
    assert main(["report", str(tmp_path / "rep")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    # one of the three outputs a folder: refused before any is written (a new plot and markdown were left beside the
    # old html, and the error named the html's temporary file)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "rep").iterdir()}
    (tmp_path / "rep" / "report.html").unlink()
    (tmp_path / "rep" / "report.html").mkdir()
    assert main(["report", str(a), "--out", str(tmp_path / "rep")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'rep' / 'report.html'}: exists and is not a file; the " \
        f"report writes its report.html there\n"
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "rep").iterdir() if p.name != "report.html"} == \
        {k: v for k, v in stamps.items() if k != "report.html"}


def test_report_stage_times_the_teacher_with_the_bench_artifacts(tmp_path, tiny_bert_dir, glue_dir):
    """Real: the quantized model is a student; the report stage exports the teacher (a tiny random BERT) to ONNX,
    scores it on dev and times it in one pass with the bench's real ONNX artifacts on real SST-2 dev
    sentences; the teacher row becomes the speedup reference and every dev latency comes from that pass."""
    import shutil

    from onnxruntime.quantization import quantize_dynamic

    from compress.config import load_recipe
    from compress.export import export_onnx
    from compress.modeling import load_trained
    from compress.report import MEASURED
    from compress.report import run as report_stage

    model, _ = load_trained(tiny_bert_dir)
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    quantize_dynamic(str(fp32), str(tmp_path / "int8.onnx"))
    run = make_run(tmp_path / "runs", "real", int8_model=tmp_path / "int8.onnx", fp32_model=fp32,
                   tokenizer_json=tiny_bert_dir / "tokenizer.json", int8={"dynamic": (0.5, True)}, student="tiny",
                   latency={"onnx_fp32": {1: 999.0}, "int8_dynamic": {1: 998.0}})
    shutil.rmtree(run / "teacher" / "model")
    shutil.copytree(tiny_bert_dir, run / "teacher" / "model")
    recipe_path = tmp_path / "real.yaml"
    recipe_path.write_text(f"name: real\nruns_dir: {tmp_path / 'runs'}\n"
                           f"task: {{name: sst2, data_dir: {glue_dir / 'SST-2'}, max_length: 32, "
                           f"max_eval_samples: 48}}\nteacher: {{model: minilm-l6}}\n"
                           f"students: [{{name: tiny, kind: narrow, layers: 2, hidden: 32, heads: 4}}]\n"
                           f"quantize: {{}}\nbench: {{threads: [1], dev_rows: 12, peers: []}}\nreport: {{}}\n")
    recipe = load_recipe(recipe_path)
    out = tmp_path / "report-out"
    out.mkdir()
    result = report_stage(recipe, out, {})
    assert result["measured"] == ["teacher"]  # the student's ONNX fp32 is the bench stage's
    assert "ships" in result and result["ships"] is None  # a recipe without a bundle: named nothing, but said so
    measured = json.loads((out / MEASURED).read_text())
    art = measured["models"]["teacher"]["artifacts"]["onnx_fp32"]
    dev = [r for r in art["results"] if r["input"] == "dev"]
    # the bench's default order, series: 12 dev rows x 3 rounds
    assert [r["threads"] for r in dev] == [1] and dev[0]["runs"] == 36 and 0 < dev[0]["p50_ms"] < 500
    assert 0.0 <= art["metrics"]["accuracy"] <= 1.0 and art["size_bytes"] > 100_000
    assert art["graph"] == "fused" and art["exported"] == "teacher_fused.onnx"  # the exact fused fp32 graph
    assert art["path"] is None  # it was the scratch folder's, deleted after the pass
    assert set(measured["bench"]["artifacts"]) == {"onnx_fp32", "int8_dynamic"}  # re-timed in the same pass
    table = collect(run, extra=measured)
    rows = {r.name: r for r in table.rows}
    assert rows["teacher · onnx fp32"].reference
    int8 = rows["student tiny · int8 dynamic"]
    assert int8.latency[1].p50_ms < 500  # the pass's number, not the bench's 998 ms
    assert table.speedup(int8, 1) == pytest.approx(dev[0]["p50_ms"] / int8.latency[1].p50_ms)
    assert "order series" in table.provenance["dev latency"]
    md = (out / "report.md").read_text()
    assert "| teacher · onnx fp32 (reference) | onnx fp32 fused |" in md and (out / "pareto.png").is_file()


def test_the_fused_teacher_graph_is_the_reference_only_when_it_was_timed():
    """The speedup reference: the teacher's fused fp32 graph when timed, else its plain export (a fused row without
    latency would give every row no speedup)."""
    from types import SimpleNamespace

    from compress.report import _mark_reference

    for fused_timed, reference in ((True, "teacher · onnx fp32 fused"), (False, "teacher · onnx fp32")):
        rows = [SimpleNamespace(name="teacher · onnx fp32 fused", latency={2: 1.0} if fused_timed else {}),
                SimpleNamespace(name="teacher · onnx fp32", latency={2: 1.2}),
                SimpleNamespace(name="student · int8 dynamic", latency={2: 0.1})]
        _mark_reference(rows)
        assert [r.name for r in rows if r.reference] == [reference]


def test_runs_of_one_recipe_with_different_seeds_merge(tmp_path):
    from compress.report import merge_seeds

    lat = {"onnx_fp32": {2: 12.0}, "int8_dynamic": {2: 5.0}}
    runs = [make_run(tmp_path / f"s{seed}", "quickstart", **_files(tmp_path), seed=seed, teacher_acc=t, latency=lat,
                     int8={"dynamic": (acc, True)})
            for seed, t, acc in ((42, 0.90, 0.88), (43, 0.91, 0.89), (44, 0.92, 0.87))]
    tables = merge_seeds([collect(r) for r in runs])
    assert len(tables) == 1
    table = tables[0]
    rows = {r.name: r for r in table.rows}
    dyn = rows["teacher · int8 dynamic"]
    assert dyn.metric == pytest.approx(0.88) and dyn.metric_std == pytest.approx(0.01) and dyn.seeds == 3
    assert rows["teacher"].metric == pytest.approx(0.91) and table.teacher_metric == pytest.approx(0.91)
    assert table.provenance["seeds"] == [42, 43, 44] and len(table.provenance["runs"]) == 3
    assert table_cells(table)[1][2][5] == "0.8800 ± 0.0100 (sample std, n=3)"
    assert table_cells(table)[0][4] == "peak RSS" and table_cells(table)[1][2][4] == "300 MiB"  # the bench's probe
    assert dyn.latency[2].peak_throughput == pytest.approx(8000 / 32.5, abs=0.01) and dyn.latency[2].peak_shape == "b8xs32"
    # the same seed twice (or different recipes) stay separate tables
    assert len(merge_seeds([collect(runs[0]), collect(runs[0])])) == 2
    # retention and speedup: the mean of each seed's own ratio (not the ratio of the means, not another statistic)
    assert table.retention(dyn) == pytest.approx(statistics.fmean([.88 / .90, .89 / .91, .87 / .92]), rel=1e-9)
    runs = [make_run(tmp_path / f"t{seed}", "quickstart", **_files(tmp_path), seed=seed, teacher_acc=0.9,
                     latency={"onnx_fp32": {2: ref}, "int8_dynamic": {2: ms}}, int8={"dynamic": (0.88, True)})
            for seed, ref, ms in ((42, 12.0, 5.0), (43, 10.0, 4.0), (44, 14.0, 7.0))]
    (table,) = merge_seeds([collect(r) for r in runs])
    dyn = next(r for r in table.rows if r.name == "teacher · int8 dynamic")
    assert table.speedup(dyn, 2) == pytest.approx(statistics.fmean([12 / 5, 10 / 4, 14 / 7]))  # 2.3, not 12/5.33


def test_a_seed_listed_twice_merges_once_and_one_seeds_constant_teacher_is_named(tmp_path, capsys):
    """A copy of one seed's run folder kept every run apart (no merged table, no word); one seed's constant teacher
    was said of the merged table's teacher. Tasks of other runs are said to differ; a student whose model folder is
    gone is said to be left out (found by a seeds-and-comparison walkthrough)."""
    from compress.report import merge_seeds, report_warnings

    runs = [make_run(tmp_path / f"s{seed}", "quickstart", **_files(tmp_path), seed=seed, teacher_acc=acc)
            for seed, acc in ((42, 0.90), (43, 0.91), (44, 0.92))]
    copy = tmp_path / "copy" / "quickstart"
    shutil.copytree(runs[0], copy)
    manifest = runs[1] / "teacher" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "train": {"dev_constant_label": "1"}}))
    capsys.readouterr()
    tables = merge_seeds([collect(r) for r in (*runs, copy)])
    assert [t.provenance.get("runs") for t in tables] == [[str(r) for r in runs], None]
    assert tables[1].folder == str(copy) and tables[0].teacher_constant is None
    err = capsys.readouterr().err
    assert f"warning: report: {copy} has the seed(s) [42] of {runs[0]}: kept apart, not merged as another seed" in err
    assert f"warning: report: the teacher of {runs[1]} (seed(s) [43]) predicts '1' for every dev row" in err
    manifest = runs[2] / "teacher" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "config": {"task": {"name": "rte"}}}))
    rte = collect(runs[2])
    assert rte.provenance["task"] == "rte"
    assert not any("different tasks" in w for w in report_warnings([collect(runs[0]), rte], None))  # one unknown
    manifest = runs[0] / "teacher" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "config": {"task": {"name": "sst2"}}}))
    assert "the runs are of different tasks (quickstart: sst2; quickstart: rte): their metrics, on one axis, do not " \
        "compare" in report_warnings([collect(runs[0]), rte], None)
    student = make_run(tmp_path / "st", "quickstart", **_files(tmp_path), student="l3")
    shutil.rmtree(student / "distill" / "l3" / "model")
    (student / "distill" / "l3" / "metrics.json").write_text("{}")  # the folder stays, its model is gone
    capsys.readouterr()
    assert not [r for r in collect(student).rows if r.name == "student l3"]
    assert f"warning: report: {student / 'distill' / 'l3' / 'model'}: no model (config.json) for student 'l3'" in \
        capsys.readouterr().err


def test_merged_seeds_throughput_is_the_pooled_rate_not_the_mean_of_rates(tmp_path):
    """Two seeds timing the same dev rows at 1.1 and 9.9 ms a sentence (mean): the merged row said 505 sentences/s,
    the mean of 909/s and 101/s, though both seeds' sentences took 5.5 ms each on average (182/s). The pooled rate
    matches the merged mean latency; the fixed shape's seq/s likewise (20 runs each)."""
    from compress.report import merge_seeds, note

    runs = [make_run(tmp_path / f"s{seed}", "quickstart", **_files(tmp_path), seed=seed,
                     latency={"onnx_fp32": {2: 12.0}, "int8_dynamic": {2: ms}}, int8={"dynamic": (0.88, True)})
            for seed, ms in ((42, 1.0), (43, 9.0))]
    (table,) = merge_seeds([collect(r) for r in runs])
    lat = next(r for r in table.rows if r.name == "teacher · int8 dynamic").latency[2]
    assert lat.p50_ms == pytest.approx(5.0)
    assert lat.throughput == pytest.approx(1000 / 5.5, rel=1e-3)  # 2 sentences / (1.1 + 9.9) ms
    assert lat.peak_throughput == pytest.approx(8000 / 32.5, rel=1e-3)  # 2 batches of 8 / (6.5 + 58.5) ms
    assert "throughputs their pooled rate" in note(table)


def test_two_runs_of_one_recipe_are_told_apart_and_dev_selected_int8_is_said(tmp_path):
    """Two folders of the same recipe and seed: headings and legend name each folder. An int8 model whose kept-fp32
    nodes the guard chose by dev scores says so under the table. A bench record of before 2026-12-03 (the Optimum
    peer recorded under the stage's temporary folder) still finds the peer in the bench folder."""
    import json

    lat = {"onnx_fp32": {2: 12.0}, "int8_dynamic": {2: 5.0}}
    a = make_run(tmp_path / "a", "quickstart", **_files(tmp_path), latency=lat)
    b = make_run(tmp_path / "b", "quickstart", **_files(tmp_path), latency=lat)
    record = json.loads((b / "quantize" / "quantize.json").read_text())
    record["int8"]["dynamic"]["tries"] = [{"excluded": 0}, {"excluded": 2}]
    (b / "quantize" / "quantize.json").write_text(json.dumps(record))
    bench = json.loads((b / "bench" / "bench.json").read_text())
    peer = b / "bench" / "peers" / "optimum" / "model_quantized.onnx"
    peer.parent.mkdir(parents=True)
    peer.write_bytes(b"x")
    bench["artifacts"]["optimum_avx512_vnni"] = {**bench["artifacts"]["int8_dynamic"], "peer": True, "ours": False,
                                                 "path": str(b / ".bench.tmp-2825" / "peers/optimum/model_quantized.onnx")}
    (b / "bench" / "bench.json").write_text(json.dumps(bench))
    assert bench_record(b)["artifacts"]["optimum_avx512_vnni"]["path"] == str(peer)
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"## quickstart ({a})" in md and f"## quickstart ({b})" in md
    assert md.count("selected on dev (quantize.guard_rows: holdout judges on held-out rows)") == 1
    assert "tries: dynamic 2" in md
    # a guard that judged the held-out rows (quantize.guard_rows: holdout): said so, with no dev-selection warning
    record["guard"] = {"rows": "holdout (2000 rows)"}
    (b / "quantize" / "quantize.json").write_text(json.dumps(record))
    assert main(["report", str(b), "--out", str(tmp_path / "held")]) == 0
    md = (tmp_path / "held" / "report.md").read_text()
    assert ("int8 accuracy: dev texts one at a time, as shipped; the guard's budget judged on the holdout (2000 rows)"
            in md and "selected on dev" not in md), md


def test_a_bench_that_times_the_teacher_makes_the_reference(tmp_path):
    """Should the bench stage time the teacher's ONNX fp32 itself (artifact ``teacher_onnx_fp32``), that row is the
    reference and the report stage has nothing left to measure."""
    run = make_run(tmp_path, "q", **_files(tmp_path), student="tiny", int8={"dynamic": (0.86, True)},
                   latency={"onnx_fp32": {2: 10.0}, "int8_dynamic": {2: 4.0}, "teacher_onnx_fp32": {2: 30.0}})
    table = collect(run)
    ref = table.reference_row()
    assert ref is not None and ref.name == "teacher · onnx fp32" and ref.kind == "teacher"
    assert table.speedup(next(r for r in table.rows if r.name == "student tiny · int8 dynamic")) == 7.5
    from compress.report import measure_missing

    assert measure_missing(None, table, tmp_path) == {}  # every model is timed: no recipe, data or export needed


def test_a_fusion_that_changes_the_logits_is_not_the_reference(tmp_path, tiny_bert_dir, glue_dir, monkeypatch):
    """The reference stays the plain export when the fused graph's logits differ (a fusion that changed the math)."""
    import shutil

    import torch
    from transformers import BertForSequenceClassification

    import compress.export as E
    from compress.config import TaskConfig
    from compress.data import Collator, load_task, tokenize
    from compress.modeling import load_trained
    from conftest import tiny_bert_config

    model, tok = load_trained(tiny_bert_dir)
    torch.manual_seed(1)
    other = E.export_onnx(BertForSequenceClassification(tiny_bert_config()).eval(), tmp_path / "other.onnx")
    rows = tokenize(load_task(TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2"), max_eval_samples=16),
                              seed=0).dev, tok, 32)
    plain = E.export_onnx(model, tmp_path / "teacher.onnx")
    monkeypatch.setattr(E, "optimize_onnx", lambda src, dst, kind: shutil.copy(other, dst) and {"Attention": 2})
    assert E.fused_if_exact(plain, "bert", rows, Collator({"": tok})) == plain
    assert plain.is_file() and not (tmp_path / "teacher_fused.onnx").exists()


def test_a_moved_run_folder_reads_its_own_files(tmp_path):
    """bench.json records its artifacts' paths under the run folder it ran in; a run folder moved (or copied to another
    --runs-dir) since reads the files under its new place, from a record with ``run_dir`` and from an older one."""
    from compress.report import bench_record

    run = make_run(tmp_path / "old", "q", **_files(tmp_path),
                   latency={"torch_fp32": {1: 30.0}, "onnx_fp32": {1: 20.0}, "int8_dynamic": {1: 8.0}})
    record = json.loads((run / "bench" / "bench.json").read_text())
    record["artifacts"]["torch_fp32"]["model_dir"] = str(run / "prune" / "model")
    record["artifacts"]["onnx_fp32_opt"] = bench_artifact({1: 15.0}, {"accuracy": 0.89}, kind="onnx",
                                                          path=str(run / "quantize" / "model_opt.onnx"))
    record["artifacts"]["optimum_avx512_vnni"] = bench_artifact({1: 9.0}, {"accuracy": 0.88}, kind="onnx", peer=True,
                                                                path="/elsewhere/model_quantized.onnx")
    for with_run_dir in (False, True):
        if with_run_dir:
            record["run_dir"] = str(run)
        (run / "bench" / "bench.json").write_text(json.dumps(record))
        moved = tmp_path / f"new-{with_run_dir}" / "q"
        shutil.copytree(run, moved)
        arts = bench_record(moved)["artifacts"]
        assert arts["torch_fp32"]["model_dir"] == str(moved / "prune" / "model")
        assert arts["int8_dynamic"]["path"] == str(moved / "quantize" / "int8_dynamic.onnx")
        assert arts["onnx_fp32_opt"]["path"] == str(moved / "quantize" / "model_opt.onnx")
        assert arts["optimum_avx512_vnni"]["path"] == "/elsewhere/model_quantized.onnx"  # outside: as recorded
        rows = {r.name: r for r in collect(moved).rows}
        assert rows["teacher · onnx fp32 fused"].path == str(moved / "quantize" / "model_opt.onnx")
        assert bench_record(run)["artifacts"]["int8_dynamic"]["path"] == str(run / "quantize" / "int8_dynamic.onnx")


def test_a_bench_record_of_a_relative_runs_dir_reads_its_files(tmp_path, monkeypatch):
    """With the default relative runs_dir ("runs"), bench.json held paths relative to the working directory, which
    the report took for files under the bench folder: every artifact was "gone since the bench stage" and none was
    re-timed with the reference. The bench now records absolute paths; such older records are read right."""
    from compress.report import bench_record

    monkeypatch.chdir(tmp_path)
    run = make_run(Path("runs"), "q", **_files(tmp_path),
                   latency={"torch_fp32": {1: 30.0}, "onnx_fp32": {1: 20.0}, "int8_dynamic": {1: 8.0}})
    record = json.loads((run / "bench" / "bench.json").read_text())
    record["run_dir"] = "runs/q"
    record["artifacts"]["int8_dynamic"]["path"] = "runs/q/quantize/int8_dynamic.onnx"
    record["artifacts"]["torch_fp32"]["model_dir"] = "runs/q/prune/model"
    record["artifacts"]["optimum_avx512_vnni"] = bench_artifact({1: 9.0}, {"accuracy": 0.88}, kind="onnx", peer=True,
                                                                path="peers/model_quantized.onnx")
    (run / "bench" / "bench.json").write_text(json.dumps(record))
    arts = bench_record(run)["artifacts"]
    assert arts["int8_dynamic"]["path"] == str(run / "quantize" / "int8_dynamic.onnx")
    assert arts["torch_fp32"]["model_dir"] == str(run / "prune" / "model")
    assert arts["optimum_avx512_vnni"]["path"] == str(run / "bench" / "peers" / "model_quantized.onnx")
    assert Path(arts["int8_dynamic"]["path"]).is_file()


def test_report_warns_of_what_would_read_wrong():
    """A headline thread count a run never benchmarked, a run without latency, runs of different metrics: the report
    is still written, with one warning line each."""
    from types import SimpleNamespace

    from compress.report import report_warnings

    timed = SimpleNamespace(latency={1: object()})
    sst2 = SimpleNamespace(run="sst2", threads=[1, 3], metric_name="accuracy", reference_row=lambda: timed,
                           teacher_constant=None, headline_threads=3, provenance={}, dev_rows=872, dev_subset=False,
                           tested=False)
    mrpc = SimpleNamespace(run="mrpc", threads=[], metric_name="f1", teacher_constant=None, headline_threads=None,
                           provenance={}, dev_rows=None, dev_subset=False, tested=False)
    warnings = report_warnings([sst2, mrpc], threads=2)
    assert warnings == ["threads 2: run sst2 was benchmarked at 1, 3 threads only; its speedup, throughput and plot "
                        "columns stay empty",
                        "run mrpc has no latency (no bench stage, report.measure off, or its latencies left out as "
                        "stale): it is not on the plot",
                        "the runs report different metrics (sst2: accuracy, mrpc: f1), drawn on one axis"]
    assert report_warnings([sst2], threads=None) == []
    untimed = SimpleNamespace(run="rte", threads=[2], metric_name="accuracy", headline_threads=2, provenance={},
                              reference_row=lambda: SimpleNamespace(latency={}), teacher_constant=None, dev_rows=None,
                              dev_subset=False, tested=False)
    assert report_warnings([untimed], threads=None) == [
        "run rte: the speedup reference (teacher · onnx fp32) has no timing (never timed, or its timing left out as "
        "stale: a stage was redone since the report stage timed it), so the speedup column stays empty; the recipe's "
        "report stage times it unless report.measure is false (compress run RECIPE --stage report)"]


def test_report_warns_when_overlaid_runs_are_drawn_at_other_thread_counts_or_timed_on_other_machines():
    """Overlaid runs each plotted at their own headline thread count (2 and 1) or timed on two machines shared one
    latency axis without a word: the plot read as a model comparison. A warning says so, and which --threads would
    draw all at one count."""
    from compress.report import report_warnings

    def run(name, threads, cpu="A", ort="1.32.0"):
        ref = Row("teacher · onnx fp32", "teacher", "onnx fp32", metric=0.9,
                  latency={t: Latency(10.0, 11.0) for t in threads}, reference=True)
        return RunTable(name, f"runs/{name}", "accuracy", [ref], teacher_metric=0.9,
                        provenance={"protocol": {"cpu": cpu, "cores": 2}, "versions": {"onnxruntime": ort}})

    assert report_warnings([run("a", [1, 2]), run("b", [1, 2])], None) == []
    # overlaid runs scored on other dev rows (one capped by task.max_eval_samples) compare other numbers
    capped, full, unknown = run("a", [2]), run("b", [2]), run("c", [2])
    capped.dev_rows, capped.dev_subset, full.dev_rows = 200, True, 872
    assert report_warnings([capped, full, unknown], None) == [
        "the runs were scored on different dev rows (a: 200 (first rows only); b: 872 (all)): their dev metrics and "
        "retentions do not compare (task.max_eval_samples)"]
    full.dev_rows, full.dev_subset = 200, True
    assert report_warnings([capped, full, unknown], None) == []
    capped.dev_rows, capped.dev_subset, full.dev_rows, full.dev_subset = 408, False, 277, False  # MRPC beside RTE
    assert report_warnings([capped, full], None) == []
    assert report_warnings([run("a", [1, 2]), run("b", [1])], None) == [
        "the runs are plotted and compared at different thread counts (a: 2, b: 1), on one latency axis; give "
        "--threads 1 (report.threads) to draw all at one"]
    assert report_warnings([run("a", [1, 2]), run("b", [1])], 1) == []
    assert report_warnings([run("a", [2]), run("b", [1])], None)[0].endswith(
        "no thread count was benchmarked by all of them")
    assert report_warnings([run("a", [2]), run("b", [2], cpu="B"), run("c", [2], ort="1.20.0")], None) == [
        "the runs were timed on different machines (a: A x2 with onnxruntime 1.32.0; b: B x2 with onnxruntime 1.32.0; "
        "c: A x2 with onnxruntime 1.20.0): their latencies, drawn on one axis, compare the machines as much as the "
        "models"]


def test_crowded_overlaid_plot_labels_cover_no_label_point_or_legend(tmp_path, monkeypatch):
    """Three overlaid runs of close points (as the report of several runs and the search's many candidates give):
    every label stays in the axes, off every other label, every marker (and its error bar) and the legend (the
    offsets reached 56 pt above or below: three runs had labels over labels)."""

    seen = {}

    def spy(fig, ax, labels, points=()):
        seen["boxes"] = real(fig, ax, labels, points)
        seen["ax"], seen["renderer"], seen["points"], seen["labels"] = ax, fig.canvas.get_renderer(), points, labels
        return seen["boxes"]

    real = pareto._spread_labels
    monkeypatch.setattr(pareto, "_spread_labels", spy)
    a, b, c = _table(), _table("other", shift=-0.002, scale=1.05), _table("third", shift=-0.004, scale=1.1)
    for k, table in enumerate((a, b, c)):  # each run's points sit right next to the others
        table.rows += [Row(f"extra {i}", "int8", "onnx int8", latency={2: Latency(2.0 + 0.07 * k + 0.15 * i, 3.0)},
                           metric=0.866 - 0.0015 * k + 0.001 * (i % 3)) for i in range(8)]
    assert pareto_plot([a, b, c], tmp_path / "p.png") is not None
    ax, renderer, boxes = seen["ax"], seen["renderer"], seen["boxes"]
    # every point named, once (points of one run whose markers overlap share a label: a name a line)
    names = [name for label in seen["labels"] for name in label.get_text().split("\n")]
    assert len(boxes) == len(seen["labels"]) < len(names)
    assert sorted(names) == sorted(r.name for t in (a, b, c) for r in t.rows if r.latency and r.metric is not None)
    frame = ax.get_window_extent(renderer)
    legend = ax.get_legend().get_window_extent(renderer)
    pt = ax.figure.dpi / 72.0

    def overlap(p, q) -> bool:  # by more than touching
        return min(p.x1, q.x1) - max(p.x0, q.x0) > 0.5 and min(p.y1, q.y1) - max(p.y0, q.y0) > 0.5

    for i, box in enumerate(boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        assert not overlap(box, legend)
        assert not any(overlap(box, other) for other in boxes[i + 1:])
        for x, y, err, radius in seen["points"]:
            px, py = ax.transData.transform((x, y))
            r = radius * pt
            assert not (box.x0 < px + r and px - r < box.x1 and box.y0 < py + r and py - r < box.y1), (x, y)
    assert any("std over 3 seeds" in t.get_text() for t in ax.get_legend().get_texts())  # what the bars are


def test_no_leader_line_runs_over_another_points_marker(tmp_path, monkeypatch):
    """A run's plot (a walkthrough's, of its own CSV task): the label of the int8 static point went left, past the
    circled Optimum point beside it, and its leader line ran through that circle, so the static model read as on the
    frontier. Among places that cover nothing, one whose line crosses no other marker is taken."""
    seen = {}

    def spy(fig, ax, labels, points=()):
        seen.update(boxes=real(fig, ax, labels, points), ax=ax, labels=labels, points=points, pt=fig.dpi / 72.0)
        return seen["boxes"]

    real = pareto._spread_labels
    monkeypatch.setattr(pareto, "_spread_labels", spy)
    rows = [Row("teacher", "teacher", "torch", 22_700_000, 90_000_000, 0.7825)]
    for name, kind, fmt, metric, p50 in [
            ("teacher · onnx fp32", "teacher", "onnx fp32", 0.7825, 4.1573),
            ("student small · onnx fp32", "student", "onnx fp32", 0.775, 1.9243),
            ("pruned", "pruned", "torch", 0.7825, 5.7408),
            ("pruned · onnx fp32", "pruned", "onnx fp32", 0.7825, 1.4044),
            ("pruned · onnx fp32 fused", "pruned", "onnx fp32", 0.7825, 1.2184),
            ("pruned · int8 dynamic", "int8", "onnx int8", 0.775, 0.739),
            ("pruned · int8 static", "int8", "onnx int8", 0.7825, 1.0719),
            ("pruned · torch int8 dynamic (peer)", "int8", "torch int8", 0.7625, 5.2855),
            ("pruned · optimum int8 (peer)", "int8", "onnx int8", 0.7825, 1.0103)]:
        rows.append(Row(name, kind, fmt, 7_000_000, 30_000_000, metric, latency={2: Latency(p50, p50 * 1.4)},
                        reference=name == "teacher · onnx fp32"))
    table = RunTable("reviews", "runs/reviews", "accuracy", rows, teacher_metric=0.7825,
                     provenance={"protocol": {"batch_size": 1, "threads": "2"}})
    assert pareto_plot([table], tmp_path / "p.png") is not None
    ax, pt = seen["ax"], seen["pt"]
    markers = [(*ax.transData.transform((x, y)), radius * pt) for x, y, _, radius in seen["points"]]
    leaders = [label for label in seen["labels"] if label.arrow_patch.get_visible()]
    assert leaders  # (labels left their points' sides here)
    for label in leaders:
        (x0, y0), (x1, y1) = label.arrow_patch.get_path().vertices[[0, -1]]  # drawn: display units
        own = ax.transData.transform(label.xy)
        for mx, my, r in markers:
            if abs(mx - own[0]) > 1e-6 or abs(my - own[1]) > 1e-6:
                assert not any(abs(x0 + (x1 - x0) * k / 20 - mx) < r and abs(y0 + (y1 - y0) * k / 20 - my) < r
                               for k in range(21)), label.get_text()


def test_every_column_is_explained_and_shippable_rows_are_named_in_markdown(tmp_path):
    """A reader of report.md (no colours there) sees which int8 models a bundle may ship, and the note under the table
    says what each column holds."""
    from compress.report import NOTE

    table = _table()
    table.rows[2].latency[2].shapes = {"b8xs32": 900.0}
    write([table], tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| teacher · int8 dynamic (shippable) |" in md and "| student tiny · int8 dynamic (shippable) |" in md
    assert "| pruned |" in md  # not an int8 model a bundle may ship
    header, _ = table_cells(table)
    for column in header[2:]:  # artifact and format name themselves
        word = column.split(" (")[0].split()[-1] if column.startswith("best") else column.split()[0]
        assert word.lower().rstrip("s") in NOTE.lower(), column
    assert "b8xs32: batches of 8 sequences of 32 tokens" in NOTE and "(peer)" in NOTE


def test_two_reports_into_one_folder_write_in_turn(tmp_path, capsys):
    """A report folder held by another writer (a second `compress report --out` into it): this one waits, says so,
    then writes its three files; nothing is written while the other holds the folder."""
    import fcntl
    import os
    import threading
    import time

    out = tmp_path / "reports"
    out.mkdir()
    held = os.open(out, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    done = {}
    writer = threading.Thread(target=lambda: done.update(write([_table()], out)))
    writer.start()
    time.sleep(1.0)
    assert writer.is_alive() and not list(out.iterdir())  # waiting its turn
    fcntl.flock(held, fcntl.LOCK_UN)
    os.close(held)
    writer.join(timeout=60)
    assert set(done) == {"md", "html", "png"} and sorted(p.name for p in out.iterdir()) == \
        ["pareto.png", "report.html", "report.md"]  # nothing of the lock left in the folder
    assert f"waiting: {out} is being written by another compress process\n" in capsys.readouterr().err


def test_an_output_path_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "reports").write_text("not a folder")
    with pytest.raises(CompressError, match=r"reports: exists and is not a folder \(the report's output folder\)"):
        write([_table()], tmp_path / "reports")


def _spy_axes(monkeypatch) -> dict:
    """The plot's axes, caught as the report lays its labels out."""

    seen, real = {}, pareto._spread_labels

    def spy(fig, ax, labels, points):
        seen["ax"] = ax
        return real(fig, ax, labels, points)

    monkeypatch.setattr(pareto, "_spread_labels", spy)
    return seen


def _as_task(run: Path, task: dict) -> None:
    """Make a fake run folder's teacher manifest record ``task`` as its task config (as the teacher stage does)."""
    path = run / "teacher" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["config"] = {"task": task}
    path.write_text(json.dumps(manifest))


def test_a_pair_task_report_says_pairs_not_sentences(tmp_path, monkeypatch):
    """MRPC / RTE time one dev pair (both texts in one input) per run: the table's throughput column, its note and
    the plot's axis say pairs; a single-text run keeps 'sent/s' and 'per sentence'."""
    latency = {"onnx_fp32": {1: 20.0, 2: 12.0}, "int8_dynamic": {1: 8.0, 2: 5.0}}
    pair = make_run(tmp_path / "a", "mrpc", **_files(tmp_path), latency=latency)
    _as_task(pair, {"name": "mrpc", "text_pair_column": None})
    custom = make_run(tmp_path / "b", "mine", **_files(tmp_path), latency=latency)
    _as_task(custom, {"name": "mine", "files": {"train": "t.csv", "dev": "d.csv"}, "text_pair_column": "s2"})
    single = make_run(tmp_path / "c", "quickstart", **_files(tmp_path), latency=latency)
    _as_task(single, {"name": "sst2", "text_pair_column": None})
    for run, want in ((pair, True), (custom, True), (single, False)):
        assert collect(run).pair is want, run
    seen = _spy_axes(monkeypatch)
    write([collect(pair)], tmp_path / "pair")
    md = (tmp_path / "pair" / "report.md").read_text()
    assert "pairs/s (2t)" in md and "sent/s" not in md and "real dev pairs" in md and "dev sentences" not in md
    assert "pairs/s being 1000 / the mean ms" in md
    assert seen["ax"].get_xlabel() == "p50 latency per pair, batch 1 (ms, log scale)"
    write([collect(single)], tmp_path / "single")
    assert "sent/s (2t)" in (tmp_path / "single" / "report.md").read_text()
    assert seen["ax"].get_xlabel() == "p50 latency per sentence, batch 1 (ms, log scale)"
    write([collect(single), collect(pair)], tmp_path / "both")
    assert seen["ax"].get_xlabel() == "p50 latency per input (sentence or pair), batch 1 (ms, log scale)"


def _with_f1(run: Path) -> None:
    """A fake run folder scored as MRPC is: every ``{"accuracy": x}`` record becomes ``{"f1": x, "accuracy": x-0.1}``
    (f1 first: the task's main metric)."""
    def convert(value):
        if isinstance(value, dict):
            if isinstance(value.get("accuracy"), float) and "f1" not in value:
                return {"f1": value["accuracy"], "accuracy": round(value["accuracy"] - 0.1, 4),
                        **{k: convert(v) for k, v in value.items() if k != "accuracy"}}
            return {k: convert(v) for k, v in value.items()}
        return [convert(v) for v in value] if isinstance(value, list) else value

    for path in run.rglob("*.json"):
        if path.name not in ("manifest.json", "quantize.json", "bench.json"):  # the fake tokenizer is not JSON
            continue
        path.write_text(json.dumps(convert(json.loads(path.read_text()))))


def test_mrpc_report_shows_accuracy_beside_f1(tmp_path):
    """GLUE reports MRPC as F1 and accuracy: the table has both columns for every scored row (retention stays F1's),
    also when seeds are merged."""
    latency = {"onnx_fp32": {1: 20.0, 2: 12.0}, "int8_dynamic": {1: 8.0, 2: 5.0}, "int8_static": {1: 7.0, 2: 4.0},
               "optimum_avx512_vnni": {1: 9.0, 2: 6.0}}
    runs = [make_run(tmp_path / f"s{seed}", "mrpc", **_files(tmp_path), latency=latency, seed=seed, teacher_acc=acc)
            for seed, acc in ((42, 0.90), (43, 0.92))]
    for run in runs:
        _with_f1(run)
    table = collect(runs[0])
    assert table.metric_name == "f1" and table.other_metrics == ["accuracy"]
    header, body = table_cells(table)
    assert header[4:8] == ["peak RSS", "f1 (dev)", "accuracy (dev)", "retention"]
    rows = {cells[0]: dict(zip(header, cells)) for cells in body}
    assert rows["teacher"]["f1 (dev)"] == "0.9000" and rows["teacher"]["accuracy (dev)"] == "0.8000"
    for name, cells in rows.items():
        assert cells["accuracy (dev)"] != "–", name  # torch, ONNX fp32, int8 and the bench's peers alike
        assert float(cells["accuracy (dev)"]) == pytest.approx(float(cells["f1 (dev)"]) - 0.1)
    write([table], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| f1 (dev) | accuracy (dev) | retention |" in md and "Retention: f1 / teacher f1" in md
    from compress.report import merge_seeds

    merged, = merge_seeds([collect(run) for run in runs])
    header, body = table_cells(merged)
    teacher = dict(zip(header, body[0]))
    assert teacher["f1 (dev)"].startswith("0.9100 ± ") and teacher["accuracy (dev)"].startswith("0.8100 ± ")


def test_a_labelled_test_split_gets_a_column_of_its_own(tmp_path):
    """MRPC's labelled test split: the teacher, the students, the pruned model and the ONNX models are scored on it;
    the table shows the main metric's test score in one column (merged seeds: the mean), rows without one a dash,
    and the note says how many test rows and that nothing is chosen on them. A run without one has no column."""
    from compress.report import merge_seeds, note

    latency = {"onnx_fp32": {1: 20.0, 2: 12.0}, "int8_dynamic": {1: 8.0, 2: 5.0}, "int8_static": {1: 7.0, 2: 4.0}}
    plain = make_run(tmp_path / "plain", "mrpc", **_files(tmp_path), latency=latency)
    _with_f1(plain)
    assert "f1 (test)" not in table_cells(collect(plain))[0]
    runs = [make_run(tmp_path / f"s{seed}", "mrpc", **_files(tmp_path), latency=latency, seed=seed) for seed in (1, 2)]
    for i, run in enumerate(runs):
        _with_f1(run)
        manifest = json.loads((run / "teacher" / "manifest.json").read_text())
        manifest["metrics"]["test"] = {"f1": 0.80 + i / 100, "accuracy": 0.7}
        manifest["train"] = {**manifest.get("train", {}), "test_rows": 200, "test_split_rows": 1725}
        (run / "teacher" / "manifest.json").write_text(json.dumps(manifest))
        record = json.loads((run / "quantize" / "quantize.json").read_text())
        record["int8"]["dynamic"]["test_metrics"] = {"f1": 0.78, "accuracy": 0.68}
        (run / "quantize" / "quantize.json").write_text(json.dumps(record))
    table = collect(runs[0])
    assert table.tested and (table.test_rows, table.test_subset) == (200, True)
    header, body = table_cells(table)
    assert header[4:9] == ["peak RSS", "f1 (dev)", "accuracy (dev)", "retention", "f1 (test)"]
    rows = {cells[0]: dict(zip(header, cells)) for cells in body}
    assert rows["teacher"]["f1 (test)"] == "0.8000" and rows["teacher · int8 dynamic"]["f1 (test)"] == "0.7800"
    assert rows["teacher · int8 static"]["f1 (test)"] == "–"  # its stage scored none
    assert "f1 (test): on the task's labelled test split (200 first rows)" in note(table)
    assert table.provenance["test rows scored"] == "200, the first of the labelled test split only " \
                                                   "(task.max_eval_samples)"
    merged, = merge_seeds([collect(run) for run in runs])
    header, body = table_cells(merged)
    cells = dict(zip(header, body[0]))
    assert cells["f1 (test)"].startswith("0.8050 ± ") and cells["f1 (test)"].endswith("(sample std, n=2)")
    # a seed whose stage scored no test rows (one of before it did): the other's score, said to be one of two
    record = json.loads((runs[1] / "quantize" / "quantize.json").read_text())
    del record["int8"]["dynamic"]["test_metrics"]
    (runs[1] / "quantize" / "quantize.json").write_text(json.dumps(record))
    merged, = merge_seeds([collect(run) for run in runs])
    header, body = table_cells(merged)
    rows = {cells[0]: dict(zip(header, cells)) for cells in body}
    assert rows["teacher · int8 dynamic"]["f1 (test)"] == "0.7800 (n=1 of 2: the others unscored or without it)"
    # overlaid runs scored on other test rows (a cap above MRPC's 408 dev rows cuts its 1725 test rows only)
    from compress.report import report_warnings

    capped, whole = collect(runs[0]), collect(runs[1])
    whole.test_rows, whole.test_subset = 1725, False
    assert report_warnings([capped, whole], None) == [
        "the runs were scored on different test rows (mrpc: 200 (first rows only); mrpc: 1725 (all)): their test "
        "metrics do not compare (task.max_eval_samples)"]
    # a hand-edited score that is no number: one line naming the file and the field (it read "–", unscored, and a
    # teacher's dev score so edited blanked every retention without a word)
    manifest = json.loads((runs[0] / "teacher" / "manifest.json").read_text())
    manifest["metrics"]["test"]["f1"] = "abc"
    (runs[0] / "teacher" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CompressError, match=re.escape(f"{runs[0] / 'teacher' / 'manifest.json'}: metrics.test.f1: "
                                                      f'expected a number, got a string "abc"; rerun')):
        collect(runs[0])


def test_a_compared_run_that_is_redone_redoes_the_report(tmp_path):
    """``report.compare`` runs are inputs of the report stage: a stage redone there (its manifest rewritten) changes
    the report's fingerprint, so the report is not reused with the other run's old numbers."""
    from compress.config import load_recipe
    from compress.pipeline import STAGES, _fingerprint, _what_changed

    other = make_run(tmp_path / "runs", "other", **_files(tmp_path))
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\nruns_dir: {tmp_path / 'runs'}\ntask: {{name: sst2}}\nteacher: {{}}\n"
                    f"report: {{compare: [{other}]}}\n")
    recipe = load_recipe(path)
    report = next(s for s in STAGES if s.name == "report")
    done = {"teacher": {"outputs": {"model/model.safetensors": "ab"}}}
    fp, inputs = _fingerprint(recipe, report, done)
    assert f"{other}/quantize/manifest.json" in inputs and _fingerprint(recipe, report, done)[0] == fp
    manifest = json.loads((other / "quantize" / "manifest.json").read_text())
    (other / "quantize" / "manifest.json").write_text(json.dumps({**manifest, "created": "2026-12-24T08:00:00+00:00"}))
    again, now = _fingerprint(recipe, report, done)
    assert again != fp
    (tmp_path / "runs" / "r" / "report").mkdir(parents=True)  # this run's own folder, named too: not its own input
    (tmp_path / "runs" / "r" / "report" / "manifest.json").write_text("{}")
    path.write_text(path.read_text().replace(f"compare: [{other}]", f"compare: [{tmp_path / 'runs' / 'r'}]"))
    assert _fingerprint(load_recipe(path), report, done)[1] == {k: v for k, v in inputs.items() if str(other) not in k}
    config = json.loads(json.dumps({sec: recipe.section(sec) for sec in report.sections}))
    assert _what_changed(recipe, report, {"config": config, "seed": 42, "inputs": inputs}, now) == \
        f"changed: input {other}/quantize/manifest.json changed"


def test_the_bench_settings_the_report_times_with_are_in_its_fingerprint_when_no_bench_stage_runs(tmp_path):
    """Without a quantize section no bench stage runs, and the report stage times the teacher's ONNX model with the
    recipe's bench settings itself: a change to them redoes the report. With a bench stage, its outputs carry them."""
    from compress.config import load_recipe
    from compress.pipeline import STAGES, _fingerprint, _what_changed, stage_manifest

    path = tmp_path / "r.yaml"
    report = next(s for s in STAGES if s.name == "report")
    done = {"teacher": {"outputs": {"model/model.safetensors": "ab"}}}
    for quantize, moves in (("quantize: {}\n", False), ("", True)):
        path.write_text(f"name: r\nruns_dir: {tmp_path / 'runs'}\ntask: {{name: sst2}}\nteacher: {{}}\n{quantize}"
                        f"bench: {{threads: [1]}}\nreport: {{}}\n")
        fp, inputs = _fingerprint(load_recipe(path), report, done)
        assert (_fingerprint(load_recipe(path, {"bench.threads": [2]}), report, done)[0] != fp) == moves
    (tmp_path / "out").mkdir()
    old = json.loads(json.dumps(stage_manifest(load_recipe(path), report, fp, inputs, tmp_path / "out", {})))
    assert _what_changed(load_recipe(path, {"bench.threads": [2]}), report, old, inputs) == \
        "changed: bench.threads.0: 1 -> 2"


def test_the_bundles_pick_settings_redo_the_report_that_names_its_pick(tmp_path):
    """The report names the model the bundle ships (`bundle_pick`): another bundle.pick, max_drop or threads redoes
    it, where it would have kept naming the old pick. A default bundle section, or none, adds nothing to the
    fingerprint (reports made before keep theirs); other bundle keys (its name) do not redo the report."""
    from compress.config import load_recipe
    from compress.pipeline import STAGES, _fingerprint

    path = tmp_path / "r.yaml"
    report = next(s for s in STAGES if s.name == "report")
    done = {"teacher": {"outputs": {"model/model.safetensors": "ab"}}, "quantize": {"outputs": {"m.onnx": "cd"}}}

    def fingerprint(bundle: str, **sets) -> str:
        path.write_text(f"name: r\nruns_dir: {tmp_path / 'runs'}\ntask: {{name: sst2}}\nteacher: {{}}\n"
                        f"quantize: {{}}\nreport: {{}}\n{bundle}")
        return _fingerprint(load_recipe(path, sets), report, done)[0]

    plain = fingerprint("")
    assert fingerprint("bundle: {}\n") == plain == fingerprint("bundle: {name: edge}\n")
    picks = {fingerprint("bundle: {pick: fastest}\n"), fingerprint("bundle: {max_drop: 2.0}\n"),
             fingerprint("bundle: {threads: 1}\n"), fingerprint("bundle: {pick: most_accurate}\n")}
    assert len(picks) == 4 and plain not in picks
    # a report made before it named the pick (its manifest has no "ships"; the quickstart's max_drop 5 is not the
    # default) is kept, not redone with the bundle after it for one line; a report that names it is redone
    from compress.pipeline import _accepted_fingerprints

    fastest = fingerprint("bundle: {pick: fastest}\n")
    recipe = load_recipe(path)
    inputs = _fingerprint(recipe, report, done)[1]
    assert plain in _accepted_fingerprints(recipe, report, done, inputs, inputs, before_pick=True)
    assert plain not in _accepted_fingerprints(recipe, report, done, inputs, inputs) and fastest != plain
    # and the rerun says which of them changed (it said "stage code revision or compress version changed")
    from compress.pipeline import _what_changed
    from compress.report import pick_settings

    fingerprint("bundle: {}\n")
    recipe = load_recipe(path)
    config = json.loads(json.dumps({sec: recipe.section(sec) for sec in report.sections}))
    old = {"config": config, "seed": recipe.seed, "inputs": inputs, "pick": pick_settings(recipe)}
    assert _what_changed(load_recipe(path, {"bundle.max_drop": 3, "bundle.pick": "fastest"}), report, old, inputs) \
        == "changed: bundle.pick: \"best_within_drop\" -> \"fastest\"; bundle.max_drop: null -> 3.0"
    assert _what_changed(recipe, report, {**old, "pick": None}, inputs) == \
        "changed: bundle section: added (the report names the bundle's model)"
    recorded_before = {k: v for k, v in old.items() if k != "pick"}  # a report of before 2026-12-07
    assert _what_changed(load_recipe(path, {"bundle.pick": "fastest"}), report, recorded_before, inputs) == \
        "changed: bundle.pick, max_drop or threads (which that report did not record), or the stage's code"


def test_a_run_whose_plotted_metrics_are_all_nan_is_left_off_the_plot(tmp_path):
    """A nan metric (a stage that recorded nan) has no place on the plot: a run with nothing else to plot is skipped,
    not an IndexError from an empty Pareto frontier; the table still shows the row."""
    nan = float("nan")
    table = RunTable("r", "runs/r", "accuracy", [
        Row("teacher", "teacher", "torch", metric=0.9),
        Row("teacher · onnx fp32", "teacher", "onnx fp32", metric=nan, latency=_lat(10.0), reference=True)],
        teacher_metric=0.9)
    assert pareto_plot([table], tmp_path / "p.png") is None
    mixed = _table()
    mixed.rows[2].metric = nan  # one nan row among plottable ones: the others are drawn
    assert pareto_plot([mixed], tmp_path / "q.png") == tmp_path / "q.png"


def test_a_zero_latency_has_no_speedup_and_no_place_on_the_log_scale(tmp_path):
    """A p50 of 0 ms (a record no timing can make) was a ZeroDivisionError in the table and a point the log-scale
    plot cannot place: its speedup reads '–' (as a reference of 0 ms gives no speedup) and the plot leaves it off."""
    table = _table()
    zero = Row("broken", "int8", "onnx int8", metric=0.85, latency={1: Latency(0.0, 0.0), 2: Latency(0.0, 0.0)})
    table.rows.append(zero)
    assert table.speedup(zero) is None
    header, body = table_cells(table)
    assert dict(zip(header, body[-1]))["speedup (2t)"] == "–"
    only = RunTable("z", "runs/z", "accuracy", [Row("teacher", "teacher", "torch", metric=0.9), zero],
                    teacher_metric=0.9)
    assert pareto_plot([only], tmp_path / "z.png") is None
    ref = table.reference_row()
    ref.latency = {t: Latency(0.0, 0.0) for t in ref.latency}
    assert table.speedup(table.rows[2]) is None
    from compress.report import _latencies

    assert _latencies([{"input": "dev", "threads": 1, "p50_ms": 0.0, "p90_ms": 0.0, "mean_ms": 0.0}])[1].throughput \
        is None


def test_merged_seeds_keep_an_artifact_the_first_seeds_run_lacks(tmp_path):
    """Seed runs of one recipe where the first lacks a stage (its bench never ran the Optimum peer, or its prune stage
    failed): the artifacts only the other seeds have stay in the merged table, averaged over the seeds that have them
    (n says how many), in the table's kind order."""
    from compress.report import merge_seeds

    runs = [make_run(tmp_path / "s42", "q", **_files(tmp_path), seed=42, int8={"dynamic": (0.88, True)},
                     latency={"onnx_fp32": {2: 12.0}, "int8_dynamic": {2: 5.0}}),
            *(make_run(tmp_path / f"s{seed}", "q", **_files(tmp_path), seed=seed, int8={"dynamic": (0.88, True)},
                       latency={"onnx_fp32": {2: 12.0}, "int8_dynamic": {2: 5.0}, "optimum_avx512_vnni": {2: ms}})
              for seed, ms in ((43, 6.0), (44, 8.0)))]
    for run in runs[1:]:
        (run / "prune" / "model").mkdir(parents=True)
        (run / "prune" / "manifest.json").write_text(json.dumps({"stage": "prune", "seed": 43, "params": 7_000_000,
                                                                 "metrics": {"dev": {"accuracy": 0.8}}}))
    table, = merge_seeds([collect(r) for r in runs])
    rows = {r.name: r for r in table.rows}
    peer = rows["teacher · optimum int8 (peer)"]
    assert peer.latency[2].p50_ms == pytest.approx(7.0) and peer.seeds == 2
    assert rows["pruned"].metric == pytest.approx(0.8) and rows["pruned"].seeds == 2
    assert [r.kind for r in table.rows] == sorted((r.kind for r in table.rows),
                                                  key=["teacher", "student", "pruned", "int8"].index)


def test_a_quantized_teachers_reference_is_its_fused_fp32_graph_as_a_students_is(tmp_path):
    """The speedup reference is the teacher's fastest exact fp32 graph: the report's own export of a student run's
    teacher is fused when exact (`fused_if_exact`); a run that quantized the teacher has the quantize stage's exact
    fused graph (model_opt.onnx, bench artifact onnx_fp32_opt) timed already, and that is the reference, not the
    slower plain export (which flattered every speedup of such runs against student runs)."""
    run = make_run(tmp_path, "q", **_files(tmp_path), int8={"dynamic": (0.88, True)},
                   latency={"onnx_fp32": {1: 20.0, 2: 12.0}, "int8_dynamic": {1: 8.0, 2: 5.0}})
    record = json.loads((run / "bench" / "bench.json").read_text())
    record["artifacts"]["onnx_fp32_opt"] = bench_artifact({1: 16.0, 2: 10.0}, {"accuracy": 0.89}, kind="onnx",
                                                          path=str(run / "quantize" / "model_opt.onnx"))
    (run / "bench" / "bench.json").write_text(json.dumps(record))
    table = collect(run)
    ref = table.reference_row()
    assert ref.name == "teacher · onnx fp32 fused" and ref.fmt == "onnx fp32 fused"
    assert [r.name for r in table.rows if r.reference] == [ref.name]
    dyn = next(r for r in table.rows if r.name == "teacher · int8 dynamic")
    assert table.speedup(dyn) == pytest.approx(10.0 / 5.0) and table.speedup(dyn, 1) == pytest.approx(16.0 / 8.0)
    del record["artifacts"]["onnx_fp32_opt"]  # no fused graph (a fusion that changed the logits): the plain export
    (run / "bench" / "bench.json").write_text(json.dumps(record))
    assert collect(run).reference_row().name == "teacher · onnx fp32"


def test_a_failed_write_leaves_the_old_report_and_no_temporary_file(tmp_path, monkeypatch):
    """A write that fails half-way (a full disk) leaves the previous report.html whole and no half-written
    temporary file in the output folder."""
    write([_table()], tmp_path)
    before = (tmp_path / "report.html").read_text()
    real = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        if self.name.startswith(".report.html"):
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(28, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        write([_table(shift=0.01)], tmp_path)
    assert (tmp_path / "report.html").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".lock") == []


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("p50_ms"), "artifacts.int8_dynamic.results[0]: no 'p50_ms'"),
    (lambda r: r.update(p90_ms="fast"), "artifacts.int8_dynamic.results[0]: threads, p50_ms, p90_ms"),
])
def test_a_malformed_bench_record_is_one_line_naming_file_and_field(tmp_path, capsys, edit, message):
    """A bench.json whose result row lacks a latency (or holds text for one) was a KeyError/ValueError traceback from
    `compress report`; now one line naming the file, the artifact and the row."""
    run = make_run(tmp_path, "q", **_files(tmp_path), latency={"onnx_fp32": {1: 20.0}, "int8_dynamic": {1: 8.0}})
    record = json.loads((run / "bench" / "bench.json").read_text())
    edit(record["artifacts"]["int8_dynamic"]["results"][0])
    (run / "bench" / "bench.json").write_text(json.dumps(record))
    with pytest.raises(CompressError, match=re.escape(f"{run / 'bench' / 'bench.json'}: {message}")):
        collect(run)
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_versions_the_latency_was_timed_with_are_in_the_provenance(tmp_path):
    """The provenance's versions are the teacher stage's environment; a bench stage run later under other library
    versions (an onnxruntime upgrade: stages are reused across one) recorded its own in bench.json, and the latency in
    the table is that environment's: the report names them when they differ."""
    run = make_run(tmp_path, "q", **_files(tmp_path), latency={"onnx_fp32": {1: 20.0}, "int8_dynamic": {1: 8.0}})
    record = json.loads((run / "bench" / "bench.json").read_text())
    teacher_versions = {"python": "3.11.7", "onnxruntime": "1.32.0", "compress": "0.1.0"}
    record["protocol"]["versions"] = teacher_versions
    (run / "bench" / "bench.json").write_text(json.dumps(record))
    assert "bench versions" not in dict(_provenance_lines(collect(run)))  # the same: said once
    record["protocol"]["versions"] = {**teacher_versions, "onnxruntime": "1.33.0"}
    (run / "bench" / "bench.json").write_text(json.dumps(record))
    lines = dict(_provenance_lines(collect(run)))
    assert "onnxruntime=1.32.0" in lines["versions"] and "onnxruntime=1.33.0" in lines["bench versions"]


def test_pareto_front_keeps_exact_ties():
    """Two artifacts at the same latency and metric do not dominate each other: both are on the frontier (the
    search's Pareto column named one of them only); a tie on one axis alone is still dominated."""
    assert pareto_front([(2.0, 0.8), (1.0, 0.7), (2.0, 0.8), (3.0, 0.8)]) == [1, 0, 2]
    assert pareto_front([(1.0, 0.7), (1.0, 0.7)]) == [0, 1]
    assert pareto_front([(1.0, 0.7), (1.0, 0.6), (2.0, 0.7)]) == [0]


def test_a_report_folder_left_from_an_earlier_recipe_is_not_read_by_a_recipe_without_one(tmp_path):
    """`collect(run, recipe)` reads only the stages the recipe configures, but report/latency.json was read whatever
    the recipe said: a bundle stage of a recipe whose report section was dropped took its speedup reference from a
    report folder left by the earlier recipe (and from no input of its fingerprint)."""
    from compress.config import load_recipe
    from compress.report import MEASURED

    run = make_run(tmp_path, "q", **_files(tmp_path), student="tiny", int8={"dynamic": (0.865, True)},
                   latency={"onnx_fp32": {2: 10.0}, "int8_dynamic": {2: 4.0}})
    measured = {"models": {"teacher": {"artifacts": {"onnx_fp32": bench_artifact({2: 24.0}, {"accuracy": 0.899})}}}}
    (run / "report").mkdir()
    (run / "report" / MEASURED).write_text(json.dumps(measured))
    recipe = tmp_path / "q.yaml"
    recipe.write_text(f"runs_dir: {tmp_path}\ntask: {{name: sst2}}\nteacher: {{model: minilm-l6}}\n"
                      f"students: [{{name: tiny}}]\nquantize: {{}}\nbench: {{threads: [2]}}\nbundle: {{}}\n")
    assert collect(run, recipe=load_recipe(recipe)).reference_row() is None
    with_report = load_recipe(recipe, {"report": {}})
    assert collect(run, recipe=with_report).reference_row().latency[2].p50_ms == 24.0


def test_a_stage_being_written_in_the_run_is_not_in_the_provenance(tmp_path):
    """A report of a run whose stage is being redone (its .<stage>.tmp-PID folder holds a manifest.json before the
    rename) listed that stage twice, and the temporary run's seed among the run's seeds."""
    run = make_run(tmp_path, "quickstart", **_files(tmp_path))
    working = run / ".quantize.tmp-12345"
    shutil.copytree(run / "quantize", working)
    manifest = json.loads((working / "manifest.json").read_text())
    (working / "manifest.json").write_text(json.dumps({**manifest, "seed": 7, "created": "2026-12-01T00:00:00"}))
    table = collect(run)
    assert table.provenance["stages"].count("quantize (") == 1 and table.provenance["seeds"] == [42]


def test_seed_runs_that_chose_different_speedup_references_merge_with_one(tmp_path):
    """Seed runs of one recipe where one timed the teacher's fused fp32 graph (its reference) and another did not
    (its plain export is): the merged table marked both rows as the reference; now the fused one, as in one run."""
    from compress.report import merge_seeds

    def table(seed: int, fused: bool) -> RunTable:
        rows = [Row("teacher", "teacher", "torch", 1, 1, 0.9),
                Row("teacher · onnx fp32", "teacher", "onnx fp32", 1, 1, 0.9, latency=_lat(12.0), reference=not fused)]
        if fused:
            rows.append(Row("teacher · onnx fp32 fused", "teacher", "onnx fp32 fused", 1, 1, 0.9, latency=_lat(10.0),
                            reference=True))
        return RunTable("q", f"runs/s{seed}", "accuracy", rows, teacher_metric=0.9, provenance={"seeds": [seed]})

    merged, = merge_seeds([table(42, False), table(43, True)])
    assert [r.name for r in merged.rows if r.reference] == ["teacher · onnx fp32 fused"]
    assert merged.reference_row().latency[2].p50_ms == 10.0


def test_runs_of_one_name_merge_as_seeds_only_when_nothing_but_seeds_differs(tmp_path, capsys):
    """Two folders of one recipe name whose settings differ (a quantize budget here) were averaged as if seeds; a folder
    named twice gave two identical tables; a report (and the bundle made from it) listed in the provenance of the
    report stage being redone."""
    from compress.report import merge_seeds

    lat = {"onnx_fp32": {2: 12.0}, "int8_dynamic": {2: 5.0}}
    a = make_run(tmp_path / "a", "quickstart", **_files(tmp_path), seed=42, latency=lat)
    b = make_run(tmp_path / "b", "quickstart", **_files(tmp_path), seed=43, latency=lat, int8={"dynamic": (0.8, True)})

    def configure(run, seed, max_drop):
        path = run / "quantize" / "manifest.json"
        path.write_text(json.dumps({**json.loads(path.read_text()),
                                    "config": {"quantize": {"max_drop": max_drop}, "teacher": {"seed": seed}}}))

    configure(a, 42, 0.3)
    configure(b, 43, 1.0)
    assert len(merge_seeds([collect(a), collect(b)])) == 2  # apart: other settings
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "apart")]) == 0
    md = (tmp_path / "apart" / "report.md").read_text()
    assert f"## quickstart ({a})" in md and f"## quickstart ({b})" in md and "n=2" not in md
    configure(b, 43, 0.3)  # the same settings, another seed (in the configs too): one table of two seeds
    merged = merge_seeds([collect(a), collect(b)])
    assert len(merged) == 1 and merged[0].provenance["seeds"] == [42, 43]

    def data(run, dev, digest):  # the stage's task spelling its dev file; the teacher's record of its bytes
        for stage, key, value in (("quantize", "config", None), ("teacher", "inputs", {dev: digest})):
            path = run / stage / "manifest.json"
            manifest = json.loads(path.read_text())
            if value is None:
                manifest["config"]["task"] = {"name": "mine", "files": {"dev": dev}, "data_dir": None}
            else:
                manifest[key] = value
            path.write_text(json.dumps(manifest))

    data(a, "dev.csv", "ab")
    data(b, str(tmp_path / "dev.csv"), "ab")  # the same bytes spelt absolute (one run's bench made so): one table
    assert len(merge_seeds([collect(a), collect(b)])) == 1
    data(b, "dev.csv", "cd")  # other bytes under the same name: apart
    assert len(merge_seeds([collect(a), collect(b)])) == 2
    data(b, "dev.csv", "ab")
    again = tmp_path / "a" / ".." / "a" / "quickstart"  # the same folder, spelt otherwise
    assert main(["report", str(a), str(again), "--out", str(tmp_path / "twice")]) == 0
    assert (tmp_path / "twice" / "report.md").read_text().count("## quickstart") == 1
    for stage in ("report", "bundle"):  # the previous report's manifests, while the report stage is redone
        (a / stage).mkdir()
        (a / stage / "manifest.json").write_text(json.dumps({"stage": stage, "seed": 42, "created": "2026-11-26T09"}))
    assert "report (" not in collect(a).provenance["stages"] and "bundle (" not in collect(a).provenance["stages"]


def test_a_bench_without_a_quantize_stage_is_put_on_the_model_it_timed(tmp_path):
    """A run with a bench stage and no quantize stage: the bench's numbers (a pruned model's) were put on the teacher's
    rows (its torch latency, its "onnx fp32" with the pruned model's size and accuracy) and every speedup was wrong."""
    from compress.report import bench_source

    run = make_run(tmp_path, "quickstart", **_files(tmp_path),
                   latency={"torch_fp32": {2: 30.0}, "onnx_fp32": {2: 12.0}, "int8_dynamic": {2: 5.0}})
    path = run / "bench" / "bench.json"
    bench = json.loads(path.read_text())
    bench["artifacts"]["torch_fp32"]["model_dir"] = str(run / "prune" / "model")
    path.write_text(json.dumps(bench))
    shutil.rmtree(run / "quantize")
    rows = {r.name: r for r in collect(run).rows}
    assert {"pruned", "pruned · onnx fp32", "pruned · int8 dynamic"} <= set(rows)
    assert "teacher · int8 dynamic" not in rows and not rows["teacher"].latency
    for model_dir, label in (("r/distill/small/model", "student small"), ("r/teacher/model", "teacher"),
                             ("r/prune/model/", "pruned"), ("", "teacher")):
        assert bench_source({}, {"artifacts": {"torch_fp32": {"model_dir": model_dir}}}) == label
    assert bench_source({"source": {"model": "prune"}}, {}) == "pruned"


def test_a_quantize_record_without_a_model_file_is_one_line(tmp_path):
    run = make_run(tmp_path, "quickstart", **_files(tmp_path))
    (run / "quantize" / "quantize.json").write_text(json.dumps({"int8": {"dynamic": {"metrics": {}}}}))
    with pytest.raises(CompressError, match=r"quantize\.json: int8\.dynamic: no model file recorded; rerun the "
                                            r"quantize stage"):
        collect(run)


def test_a_teacher_of_another_tokenizer_is_timed_in_the_bench_artifacts_pass(tmp_path, tiny_bert_dir, glue_dir,
                                                                              monkeypatch):
    """The report times the teacher's ONNX fp32 (the speedup reference) with every bench artifact in one pass. Grouped
    by tokenizer, a teacher whose tokenizer is not the quantized model's (the SST-2 recipes: MPNet teacher, MiniLM
    student) was timed in a pass of its own and the bench artifacts kept the bench stage's numbers: speedups over
    two sets of runs, while the protocol line said one. One pass now, each model fed its own tokenizer's ids."""
    import types

    import compress.bench as B
    from compress.config import BenchConfig, TaskConfig
    from compress.modeling import load_trained
    from compress.report import measure_missing
    from conftest import export_int8

    run = tmp_path / "run"
    (run / "bench").mkdir(parents=True)
    (run / "quantize").mkdir()
    shutil.copytree(tiny_bert_dir, run / "quantize" / "tokenizer")
    tok = run / "quantize" / "tokenizer" / "tokenizer.json"
    tok.write_text(json.dumps(json.loads(tok.read_text()), indent=1))  # the same vocabulary, other bytes
    int8 = export_int8(load_trained(tiny_bert_dir)[0], run / "quantize")
    (run / "bench" / "bench.json").write_text(json.dumps({"run_dir": str(run), "artifacts": {
        "int8_dynamic": bench_artifact({1: 5.0}, {"accuracy": 0.5}, kind="onnx", path=str(int8))}}))
    passes = []
    real = B.measure_in_fresh_process
    monkeypatch.setattr(B, "measure_in_fresh_process",
                        lambda arts, dev, *a, **k: passes.append((sorted(arts), sorted(dev) if isinstance(dev, dict)
                                                                  else ["one"])) or real(arts, dev, *a, **k))
    recipe = types.SimpleNamespace(bench=BenchConfig(threads=[1], dev_rows=4, warmup=1, rounds=1), seed=0, run_dir=run,
                                   task=TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2"), max_length=32,
                                                   max_eval_samples=8))
    table = RunTable("run", str(run), "accuracy", [Row("teacher", "teacher", "torch", path=str(tiny_bert_dir))])
    (tmp_path / "work").mkdir()
    out = measure_missing(recipe, table, tmp_path / "work")
    assert len(passes) == 1 and passes[0][0] == ["bench:int8_dynamic", "model:teacher"] and len(passes[0][1]) == 2
    assert out["models"]["teacher"]["artifacts"]["onnx_fp32"]["results"][0]["p50_ms"] > 0
    assert out["bench"]["artifacts"]["int8_dynamic"]["results"][0]["p50_ms"] > 0
    assert "dev_set" not in out["models"]["teacher"]["artifacts"]["onnx_fp32"]


def test_a_report_without_a_bench_says_how_many_dev_rows_it_timed(tmp_path, tiny_bert_dir, glue_dir, monkeypatch):
    """A run without a bench stage: the report's own pass timed every row of a dev split smaller than bench.dev_rows
    (WNLI's 71 of 200) but its protocol said "first 200 dev rows". It says the rows timed: here 8 (max_eval_samples).
    Export, scoring and timing are stubbed: only the words are under test."""
    import types

    import compress.bench as B
    import compress.export as E
    from compress.config import BenchConfig, TaskConfig
    from compress.report import measure_missing

    def export(model, path):
        Path(path).write_bytes(b"onnx")
        return Path(path)

    timed = {}
    monkeypatch.setattr(E, "export_onnx", export)
    monkeypatch.setattr(E, "fused_if_exact", lambda path, *a: path)
    monkeypatch.setattr(B, "evaluate_artifact", lambda *a: {"accuracy": 0.5})
    monkeypatch.setattr(B, "measure_in_fresh_process", lambda arts, dev, cfg, *a, **k: timed.update(
        rows={k: len(B.first_rows(d, cfg.dev_rows)) for k, d in dev.items()}) or {"results": {n: [] for n in arts}})
    (tmp_path / "run").mkdir()
    recipe = types.SimpleNamespace(bench=BenchConfig(threads=[1]), seed=0, run_dir=tmp_path / "run",
                                   task=TaskConfig(name="sst2", data_dir=str(glue_dir / "SST-2"), max_length=32,
                                                   max_eval_samples=8))
    assert recipe.bench.dev_rows == 200 and recipe.bench.order == "series"
    table = RunTable("run", str(tmp_path / "run"), "accuracy", [Row("teacher", "teacher", "torch",
                                                                    path=str(tiny_bert_dir))])
    out = measure_missing(recipe, table, tmp_path)
    assert list(timed["rows"].values()) == [8]  # what the pass times...
    assert out["protocol"]["dev"] == "first 8 dev rows, batch 1, unpadded, one timed run each per round"  # ...is said


def test_a_report_by_hand_leaves_out_latencies_measured_before_a_stage_was_redone(tmp_path, capsys):
    """`compress report RUN` after the quantize stage was redone by hand (other modes, another max_drop) showed the old
    bench's latencies on the new int8 files of the same names (and a model since deleted, as shippable); after a
    re-timed bench, the report stage's own latency.json of the earlier pass. Each record is checked against the
    outputs its stage read (its manifest's inputs): one redone since is left out, with a warning."""
    from compress.report import _redone_since

    run = make_run(tmp_path, "q", **_files(tmp_path), student="tiny", int8={"dynamic": (0.86, True)},
                   latency={"onnx_fp32": {2: 10.0}, "int8_dynamic": {2: 4.0}})
    quantize, bench = run / "quantize" / "manifest.json", run / "bench" / "manifest.json"
    for path, key, value in ((quantize, "outputs", {"int8_dynamic.onnx": "aa"}),
                             (bench, "inputs", {"quantize/int8_dynamic.onnx": "aa", "data.tsv": "cc"})):
        path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    row = next(r for r in collect(run).rows if r.name == "student tiny · int8 dynamic")
    assert row.latency[2].p50_ms == 4.0 and "warning" not in capsys.readouterr().err
    quantize.write_text(json.dumps({**json.loads(quantize.read_text()), "outputs": {"int8_dynamic.onnx": "bb"}}))
    row = next(r for r in collect(run).rows if r.name == "student tiny · int8 dynamic")
    assert not row.latency
    assert capsys.readouterr().err.strip() == (f"warning: {run / 'bench' / 'bench.json'}: the quantize stage was redone "
                                               f"since it was measured: its latencies are left out (rerun the stages "
                                               f"after quantize: compress run RECIPE)")
    (run / "bench" / "manifest.json").write_text(json.dumps({**json.loads(bench.read_text()),
                                                             "outputs": {"bench.json": "new"}}))
    assert _redone_since(run, {"inputs": {"bench/bench.json": "old"}}, "report/latency.json")
    assert not _redone_since(run, {"inputs": {"bench/bench.json": "new"}}, "report/latency.json")


def test_report_of_dot_names_the_run_drops_an_old_plot_and_refuses_malformed_artifacts(tmp_path, monkeypatch,
                                                                                        capsys):
    """`compress report .` made a table headed "## " (Path('.').name is ''); a report drawing no plot left an earlier
    report's pareto.png beside it; bench.json artifacts that are not records were an AttributeError traceback."""
    run = make_run(tmp_path, "quickstart", **_files(tmp_path), student="tiny", int8={"dynamic": (0.86, True)},
                   latency={"onnx_fp32": {2: 10.0}, "int8_dynamic": {2: 4.0}, "teacher_onnx_fp32": {2: 30.0}})
    monkeypatch.chdir(run)
    assert collect(".").run == "quickstart"
    out = tmp_path / "out"
    assert main(["report", ".", "--out", str(out)]) == 0
    assert "## quickstart" in (out / "report.md").read_text() and (out / "pareto.png").is_file()
    assert main(["report", ".", "--out", str(out), "--threads", "3"]) == 0  # no latency at 3 threads: no plot
    assert not (out / "pareto.png").exists() and "pareto.png" not in (out / "report.md").read_text()
    capsys.readouterr()
    for arts, said in (({"int8_dynamic": 5}, "got dict of int"), ([1], "got list")):
        (run / "bench" / "bench.json").write_text(json.dumps({"artifacts": arts}))
        assert main(["report", ".", "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == (f"error: {Path('.') / 'bench' / 'bench.json'}: artifacts: expected "
                                                   f"a mapping of name -> record, {said}")


def test_merged_seeds_take_latency_from_any_seed_and_say_how_many_scored(tmp_path):
    """Seed runs merged: the latency columns came from the first run listed only (one without a bench stage first:
    no latency at all, and a false "no latency" warning); a seed that scored nan (a pearson of constant predictions)
    was left out of the mean without a word."""
    from compress.report import _metric, merge_seeds

    nan = float("nan")
    timed = make_run(tmp_path / "s42", "q", **_files(tmp_path), seed=42, int8={"dynamic": (0.80, True)},
                     latency={"onnx_fp32": {1: 20.0, 2: 12.0}, "int8_dynamic": {1: 8.0, 2: 5.0}})
    untimed = make_run(tmp_path / "s43", "q", **_files(tmp_path), seed=43, int8={"dynamic": (nan, True)})
    for order in ([untimed, timed], [timed, untimed]):
        table, = merge_seeds([collect(r) for r in order])
        row = next(r for r in table.rows if r.name == "teacher · int8 dynamic")
        assert sorted(row.latency) == [1, 2] and row.latency[2].p50_ms == pytest.approx(5.0)
        assert table.speedup(row, 2) == pytest.approx(12.0 / 5.0)
        assert row.metric == pytest.approx(0.80) and (row.seeds, row.runs) == (1, 2)
        assert _metric(row) == "0.8000 (n=1 of 2: the others unscored or without it)"
        teacher = next(r for r in table.rows if r.name == "teacher")
        assert _metric(teacher) == "0.9000 ± 0.0000 (sample std, n=2)"


def test_merged_seeds_ratios_are_each_seeds_own_and_runs_timed_on_two_machines_stay_apart(tmp_path, capsys):
    """Merged seeds divided the mean of the teachers' times by a time only one seed measured (12 and 24 ms teachers, a
    5 ms int8 model timed in the first run only: 3.6x, a ratio no run measured; it measured 2.4x), and a row only one
    seed has by the mean of two teachers' scores; runs timed on two machines were averaged into latencies neither
    gave, the provenance naming the first machine only."""
    from compress.report import merge_seeds, table_cells

    a = make_run(tmp_path / "s42", "q", **_files(tmp_path), seed=42, teacher_acc=0.90, int8={"static": (0.85, True)},
                 latency={"onnx_fp32": {2: 12.0}, "int8_static": {2: 5.0}})
    b = make_run(tmp_path / "s43", "q", **_files(tmp_path), seed=43, teacher_acc=0.80, int8={"dynamic": (0.80, True)},
                 latency={"onnx_fp32": {2: 24.0}})
    table, = merge_seeds([collect(a), collect(b)])
    static = next(r for r in table.rows if r.name == "teacher · int8 static")
    dynamic = next(r for r in table.rows if r.name == "teacher · int8 dynamic")
    assert static.latency[2].p50_ms == pytest.approx(5.0) and table.speedup(static, 2) == pytest.approx(12.0 / 5.0)
    assert table.retention(static) == pytest.approx(0.85 / 0.90) and table.retention(dynamic) == pytest.approx(1.0)
    header, body = table_cells(table)
    assert next(c for c in body if c[0] == "teacher · int8 static")[header.index("p50 ms (2t)")] == "5.00 (n=1 of 2)"
    capsys.readouterr()
    bench = b / "bench" / "bench.json"
    record = json.loads(bench.read_text())
    record["protocol"]["cpu"] = "Other CPU"
    bench.write_text(json.dumps(record))
    tables = merge_seeds([collect(a), collect(b)])
    assert [t.folder for t in tables] == [str(a), str(b)]
    assert capsys.readouterr().err.strip() == (f"warning: report: {b} was timed on Other CPU x2 with onnxruntime "
                                               f"1.32.0, {a} on Test CPU x2 with onnxruntime 1.32.0: kept apart, not "
                                               f"merged as seeds")
    # the same CPU under another onnxruntime (its kernels set the latencies as much): apart too
    record["protocol"]["cpu"] = "Test CPU"
    record["protocol"]["versions"] = {"onnxruntime": "1.20.0"}
    bench.write_text(json.dumps(record))
    assert len(merge_seeds([collect(a), collect(b)])) == 2
    assert "with onnxruntime 1.20.0, " in capsys.readouterr().err


def test_merged_seeds_share_one_reference_and_group_by_machine():
    """Seeds whose runs chose other references (one timed the quantize stage's fused teacher graph) divided each by its
    own: the table marked the fused graph the reference while the int8 row's 2.2x averaged 10/5 and 12/5. Three seed
    runs on two machines (A; B, B) gave three tables: a run only ever met the first group of its name."""
    from compress.report import Latency, merge_seeds, note

    def run(seed, cpu, fused=True):
        rows = [Row("teacher", "teacher", "torch", metric=0.9),
                Row("teacher · onnx fp32", "teacher", "onnx fp32", metric=0.9, latency={2: Latency(12.0, 14.0)}),
                Row("teacher · int8 dynamic", "int8", "onnx int8", metric=0.88, latency={2: Latency(5.0, 6.0)})]
        if fused:
            rows.append(Row("teacher · onnx fp32 fused", "teacher", "onnx fp32 fused", metric=0.9,
                            latency={2: Latency(10.0, 11.0)}))
        return RunTable("q", f"runs-{seed}/q", "accuracy", rows, teacher_metric=0.9,
                        provenance={"seeds": [seed], "protocol": {"cpu": cpu, "cores": 2}})

    table, = merge_seeds([run(42, "A"), run(43, "A", fused=False)])
    reference = next(r for r in table.rows if r.reference)
    assert reference.name == "teacher · onnx fp32 fused"
    int8 = next(r for r in table.rows if r.name == "teacher · int8 dynamic")
    plain = next(r for r in table.rows if r.name == "teacher · onnx fp32")
    assert table.speedup(int8, 2) == pytest.approx(10.0 / 5.0) and table.speedup(plain, 2) == pytest.approx(10 / 12)
    assert "the mean of each seed run's own ratio" in note(table) and "own ratio" not in note(run(42, "A"))
    tables = merge_seeds([run(42, "A"), run(43, "B"), run(44, "B")])
    assert [t.provenance["seeds"] for t in tables] == [[42], [43, 44]]
    untimed = [run(42, "A"), run(43, "A")]  # no latency at all (no bench stage, report.measure off): no reference
    for t in untimed:
        t.rows = [r for r in t.rows if r.fmt == "torch"]
    table, = merge_seeds(untimed)
    assert not any(r.reference for r in table.rows) and table.speedup(table.rows[0], 2) is None


def test_the_report_keeps_its_own_timings_on_the_machine_that_took_them_only(tmp_path, monkeypatch):
    """A run without a bench stage (the report times every model itself) copied to another machine kept the first
    machine's timings: nothing the measurement key holds had changed."""
    from types import SimpleNamespace

    import compress.manifest
    from compress import report
    from teachers.zoo import sha256_file

    folder = tmp_path / "run" / "report"
    folder.mkdir(parents=True)
    (folder / "latency.json").write_text(json.dumps({"key": "k", "models": {}}))
    env = {"host": {"cpu": compress.manifest.cpu_model(), "cores": os.cpu_count()}}
    (folder / "manifest.json").write_text(json.dumps({"outputs": {"latency.json": sha256_file(folder / "latency.json")},
                                                      "env": env}))
    recipe = SimpleNamespace(run_dir=tmp_path / "run")
    assert report.kept_measurement(recipe, "k") == {"key": "k", "models": {}}
    # a torn timings file or manifest is timed again: it stopped every rerun with "not valid JSON" until --force
    for name in ("latency.json", "manifest.json"):
        intact = (folder / name).read_text()
        for torn in ("{", "[1]"):
            (folder / name).write_text(torn)
            assert report.kept_measurement(recipe, "k") is None
        (folder / name).write_text(intact)
    assert report.kept_measurement(recipe, "k") == {"key": "k", "models": {}}
    monkeypatch.setattr(compress.manifest, "cpu_model", lambda: "Another CPU")
    assert report.kept_measurement(recipe, "k") is None


def test_retention_is_none_where_the_teacher_score_is_no_base():
    """metric / teacher only where that is a share: a teacher MCC of 0 crashed the bundle stage (ZeroDivisionError),
    one of -0.05 made a student's 0.10 read -200%, a nan one wrote NaN into the bundle's manifest."""
    from compress.tasks import retention

    assert retention(0.9, 0.95) == pytest.approx(0.9 / 0.95)
    assert retention(0.0, 0.5) == 0.0
    for metric, teacher in ((0.1, 0.0), (0.1, -0.05), (float("nan"), 0.9), (0.9, float("nan")), (None, 0.9),
                            (0.9, None), (0.9, float("inf"))):
        assert retention(metric, teacher) is None


def test_stage_json_is_strict_json(tmp_path):
    """Python's json wrote a nan score as a bare NaN, which JSON.parse (a bundle's predict.mjs and page), jq and other
    strict readers refuse: every non-finite float is written as null."""
    from compress.manifest import write_json

    write_json(tmp_path / "m.json", {"dev": {"pearson": float("nan"), "spearmanr": float("-inf")},
                                     "tries": [{"drop": float("inf")}, 0.5], "ok": 1.0})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict {c}")) == {
        "dev": {"pearson": None, "spearmanr": None}, "tries": [{"drop": None}, 0.5], "ok": 1.0}
    # read back by code that formats or subtracts scores (the bench's scores from quantize.json, distill's teacher
    # dev scores): nan again, not a TypeError on None
    import math

    from compress.distill.stage import _teacher_dev
    from compress.manifest import scores

    assert all(math.isnan(v) for v in scores(json.loads(text)["dev"]).values()) and scores(None) == {}
    write_json(tmp_path / "metrics.json", {"metrics": {"dev": {"pearson": float("nan"), "spearmanr": 0.5}}})
    dev = _teacher_dev(tmp_path, None, None, None, 32)
    assert math.isnan(dev["pearson"]) and dev["spearmanr"] == 0.5 and f"{dev['pearson']:.4f}" == "nan"


def test_display_settings_keep_the_report_timing_and_the_bundle_and_a_renamed_or_moved_run_redoes_only_them(
        tmp_path, tiny_bert_dir, glue_dir, capsys, monkeypatch):
    """report.threads (or compare) changes only the tables: the report stage re-timed every model (other latencies
    for the same models) and the bundle, which reads them, was rebuilt, its p50 and maybe its pick moved by timing
    noise. A run renamed (its folder moved to the recipe's new name) kept the report titled and the bundle named
    after the old name. A run folder copied to another machine kept the first machine's latencies as its own."""
    import yaml

    from compress.config import load_recipe
    from compress.pipeline import explain, run_pipeline

    recipe = {"name": "tiny", "seed": 0, "runs_dir": str(tmp_path / "runs"),
              "task": {"name": "sst2", "data_dir": str(glue_dir / "SST-2"), "max_length": 32,
                       "max_train_samples": 64, "max_eval_samples": 24, "holdout": 0.1},
              "teacher": {"model": str(tiny_bert_dir), "max_steps": 2, "batch_size": 8},
              "students": [{"name": "s", "kind": "layer_drop", "layers": 1, "train": {"max_steps": 2, "batch_size": 8}}],
              "quantize": {"modes": ["dynamic"], "max_drop": 50.0, "sensitivity_rows": 8},
              "bench": {"threads": [1], "batch_sizes": [1], "seq_lengths": [32], "dev_rows": 4, "max_seconds": 0.05,
                        "repeats": 2, "rounds": 1, "peers": []},
              "report": {}, "bundle": {"pick": "fastest", "ort": False}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    first = run_pipeline(load_recipe(path))
    folder = tmp_path / "runs" / "tiny"
    # the bundle carries the quantized model's config.json (the one-layer student's, not the teacher's two) for Optimum
    config = json.loads((folder / "bundle" / "tiny-sst2-int8" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["id2label"] == {"0": "negative", "1": "positive"}
    timed = (folder / "report" / "latency.json").read_bytes()
    assert json.loads(timed)["models"]  # the teacher's ONNX fp32 was timed by the report stage
    capsys.readouterr()
    plan = {name: (runs, why) for name, runs, why in explain(load_recipe(path, {"report.threads": 1}))}
    assert plan["report"][0] and plan["bundle"] == (False, "up to date")  # --dry-run says what the run does
    for force in (("bundle",), ("report",)):  # forced: the bundle is made again / the report times again
        plan = {name: (runs, why) for name, runs, why in explain(load_recipe(path, {"report.threads": 1}), force=force)}
        assert plan["bundle"][0], force
    plan = {name: (runs, why) for name, runs, why in explain(load_recipe(path, {"report.threads": 1,
                                                                               "students.0.train.max_steps": 3}))}
    assert plan["bundle"][0] and plan["report"][0]  # a new student: new models, the report times them
    again = run_pipeline(load_recipe(path, {"report.threads": 1}))
    out = capsys.readouterr().out
    assert "[report] running" in out and "latencies of the previous report pass kept" in out
    assert (folder / "report" / "latency.json").read_bytes() == timed
    assert "[bundle] up to date" in out and again["bundle"]["created"] == first["bundle"]["created"]
    # the same data spelt otherwise (a linked folder) with the display change back: the timings of the report were
    # kept by their key (it held the task's paths: they were all timed again, and the bundle rebuilt with them)
    (tmp_path / "glue-link").symlink_to(glue_dir / "SST-2")
    again = run_pipeline(load_recipe(path, {"task.data_dir": str(tmp_path / "glue-link")}))
    out = capsys.readouterr().out
    assert "[report] running" in out and "latencies of the previous report pass kept" in out, out
    assert (folder / "report" / "latency.json").read_bytes() == timed
    assert "[bundle] up to date" in out and again["bundle"]["created"] == first["bundle"]["created"]
    run_pipeline(load_recipe(path, {"report.threads": 1}))  # back to the report of threads 1
    capsys.readouterr()
    # a latency.json edited by hand is timed again, not published anew as the stage's; --force report times again
    edited = json.loads(timed)
    edited["models"]["teacher"]["artifacts"]["onnx_fp32"]["results"][0]["p50_ms"] = 1e-6
    (folder / "report" / "latency.json").write_text(json.dumps(edited))
    run_pipeline(load_recipe(path, {"report.threads": 1}))
    out = capsys.readouterr().out
    assert "its outputs were edited" in out and "previous report pass kept" not in out
    rerun = json.loads((folder / "report" / "latency.json").read_text())
    assert rerun["models"]["teacher"]["artifacts"]["onnx_fp32"]["results"][0]["p50_ms"] > 1e-6
    run_pipeline(load_recipe(path, {"report.threads": 1}), force=("report",))
    out = capsys.readouterr().out
    assert "[report] running" in out and "previous report pass kept" not in out
    # a renamed run: the report and the bundle are made again under the new name, nothing before them
    path.write_text(yaml.safe_dump({**recipe, "name": "tiny2"}))
    folder.rename(tmp_path / "runs" / "tiny2")
    renamed = run_pipeline(load_recipe(path))
    out = capsys.readouterr().out
    for stage in ("teacher", "distill", "quantize", "bench"):
        assert f"[{stage}] up to date" in out, stage
    assert "[report] running" in out and "(changed: name 'tiny' -> 'tiny2')" in out
    assert "## tiny2" in (tmp_path / "runs" / "tiny2" / "report" / "report.md").read_text()
    assert (tmp_path / "runs" / "tiny2" / "bundle" / "tiny2-sst2-int8" / "config.json").is_file()  # found when moved
    assert renamed["bundle"]["recipe"] == "tiny2"
    # the run folder copied to another machine: its latencies are that machine's, so the bench and the report time
    # again (and the bundle, which carries them, is made again); what they measure is not trained again
    import compress.manifest

    timed = (tmp_path / "runs" / "tiny2" / "report" / "latency.json").read_bytes()
    real = compress.manifest.cpu_model()
    monkeypatch.setattr(compress.manifest, "cpu_model", lambda: "Another CPU")
    plan = {name: (runs, why) for name, runs, why in explain(load_recipe(path))}
    assert plan["bench"] == (True, f"timed on another machine (cpu: {real} -> Another CPU)")
    assert plan["report"][0] and plan["bundle"][0] and not plan["quantize"][0]
    moved = run_pipeline(load_recipe(path))
    out = capsys.readouterr().out
    for stage in ("teacher", "distill", "quantize"):
        assert f"[{stage}] up to date" in out, stage
    assert "[bench] running" in out and "previous report pass kept" not in out
    assert (tmp_path / "runs" / "tiny2" / "report" / "latency.json").read_bytes() != timed
    assert moved["bench"]["env"]["host"]["cpu"] == moved["bundle"]["env"]["host"]["cpu"] == "Another CPU"
    assert all(not runs for _, runs, _ in explain(load_recipe(path)))  # and on that machine it stands


def test_a_compared_run_copied_under_another_name_redoes_the_report(tmp_path):
    """report.compare naming a byte-identical copy of a compared run under another folder name: the report was reused
    (same inputs) while its table is titled by the folder's name, the old one."""
    from compress import pipeline
    from compress.config import load_recipe

    runs = tmp_path / "runs"
    make_run(runs, "b", **_files(tmp_path))
    shutil.copytree(runs / "b", runs / "c")
    shutil.copytree(runs / "b", tmp_path / "elsewhere" / "b")
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\nruns_dir: {runs}\ntask: {{name: sst2}}\nteacher: {{}}\nreport: {{compare: [{runs / 'b'}]}}\n")
    recipe = load_recipe(path)
    report = next(s for s in pipeline.STAGES if s.name == "report")
    done = {"teacher": {"outputs": {"model/model.safetensors": "ab"}}}
    _, inputs = pipeline._fingerprint(recipe, report, done)
    config = pipeline._config(recipe, report)
    for other, same in ((runs / "c", False), (tmp_path / "elsewhere" / "b", True)):
        moved = load_recipe(path, {"report.compare": [str(other)]})
        _, moved_inputs = pipeline._fingerprint(moved, report, done)
        swapped = pipeline._recorded_paths(moved, pipeline._config(moved, report), config, moved_inputs, inputs)
        assert (swapped == config) == same, other


def test_retention_and_speedup_are_shown_rounded_down_never_across_a_target():
    """The teacher pruned to half, int8: 93.00 / 93.94 = 98.996% at 37.59 / 9.4018 = 3.998x read "99.0%" and "4.0x"
    in the report (and 4.0 in the bundle manifest, 0.9900 in its card): a target of 99% at 4x looked met. Displayed
    ratios are rounded down now; the manifest keeps four decimals."""
    from compress.bundle import _by_threads, model_card
    from compress.search import _speed
    from compress.tasks import round_down

    assert round_down(0.98996, 3) == 0.989 and round_down(0.29, 2) == 0.29 and round_down(3.9982, 1) == 3.9
    teacher = Row("teacher · onnx fp32", "teacher", "onnx fp32", metric=0.9394, latency={2: Latency(37.59, 40.0)},
                  reference=True)
    int8 = Row("pruned · int8 dynamic", "int8", "onnx int8", metric=0.9300, latency={2: Latency(9.4018, 12.42)},
               shippable=True)
    table = RunTable("r", "runs/r", "accuracy", [teacher, int8], teacher_metric=0.9394)
    header, body = table_cells(table)
    cells = dict(zip(header, body[1]))
    assert cells["retention"] == "98.9%" and cells["speedup (2t)"] == "3.9×", cells
    assert _speed(37.59 / 9.4018) == "3.9x faster than"
    by_threads = _by_threads(table, int8)
    assert by_threads["2"]["speedup_vs_teacher_onnx_fp32"] == 3.9981  # 3.99817, cut
    card = model_card({"name": "b", "task": {"name": "sst2", "labels": ["0", "1"]}, "max_length": 128,
                       "requirements": {}, "files": {}, "sizes": {}, "created": "now", "versions": {},
                       "metrics": {"dev": {"accuracy": 0.93}, "retention": 0.98996,
                                                       "retention_metric": "accuracy"},
                       "latency": {"p50_ms": 9.4018, "by_threads": {**by_threads, "1": {
                           "p50_ms": 12.0, "p90_ms": 13.0, "speedup_vs_teacher_onnx_fp32": 3.0}}}})
    assert "| 0.9899 |" in card and "| 3.99x |" in card and "0.9900" not in card and "4.00x" not in card
    # stored ratios are cut, not rounded, before they are shown: 3.99957 stored as 4.0 read 4.00x / 4.0x
    from compress.bench import format_ratios, ratios

    art = {"ours": {"metrics": {"accuracy": 0.9}, "results": [{"input": "dev", "threads": 2, "p50_ms": 1.0}]},
           "peer": {"peer": True, "metrics": {"accuracy": 0.9},
                    "results": [{"input": "dev", "threads": 2, "p50_ms": 3.99957}]}}
    record = {"ours": "ours", "ratios": ratios(art, "ours"), "artifacts": art}
    assert record["ratios"]["peer"]["speedup_p50"] == {"dev@2t": 3.9995}
    assert "dev@2t 3.99x" in format_ratios(record).splitlines()[1]
    searched = model_card({"name": "b", "task": {"name": "sst2", "labels": ["0", "1"]}, "max_length": 128,
                           "requirements": {}, "files": {}, "sizes": {}, "created": "now", "versions": {},
                           "metrics": {}, "latency": {"p50_ms": 9.4, "speedup_vs_teacher_onnx_fp32": 3.9995}})
    assert "| speedup vs the teacher's ONNX fp32 | 3.99x |" in searched


def test_undefined_scores_read_as_such_in_the_report_the_card_and_the_search_line():
    """A nan score printed "nan" in the report stage's table ("–" in `compress report` of the same run, which read it
    back as null); a None retention printed "None" in the model card; a constant teacher's f1 or MCC was called "that
    label's share"; a search pick slower than the teacher was "0.7x faster"."""
    from compress.bundle import _fmt_metric
    from compress.tasks import constant_score
    from compress.report import _metric, _other_metric, note
    from compress.search import _speed

    nan = float("nan")
    row = Row("teacher · onnx fp32", "teacher", "onnx fp32", metric=nan, dev_metrics={"pearson": nan})
    assert _metric(row) == "–" and _other_metric(row, "pearson") == "–"
    assert _fmt_metric(None) == _fmt_metric(nan) == "– (undefined)" and _fmt_metric(0.91234) == "0.9123"
    assert constant_score("accuracy") == "that label's share" and constant_score("matthews_correlation").startswith("0")
    assert "share" not in constant_score("f1")
    table = RunTable("r", "runs/r", "matthews_correlation", [Row("teacher", "teacher", "torch", metric=0.0)], 0.0,
                     teacher_constant="1")
    assert "its matthews_correlation is 0 (no correlation) and retention" in note(table)
    table = RunTable("r", "runs/r", "pearson", [Row("teacher", "teacher", "torch", metric=nan)], nan)
    assert note(table).startswith("Warning: the teacher's pearson is undefined (nan")
    assert _speed(2.345) == "2.3x faster than" and _speed(0.7) == "1.4x slower than" and _speed(None).startswith("not")


def test_a_hand_edited_record_of_the_wrong_shape_is_one_line_naming_its_file(tmp_path):
    """`"int8": 5` in quantize.json or `"students": 5` in the distill manifest stopped `compress report` with an
    AttributeError traceback; now one line names the file and the key."""
    run = make_run(tmp_path, "q", **_files(tmp_path), student="tiny")
    for path, key in ((run / "quantize" / "quantize.json", "int8"), (run / "distill" / "manifest.json", "students")):
        good = path.read_text()
        path.write_text(json.dumps({**json.loads(good), key: 5}))
        with pytest.raises(CompressError, match=rf"^{re.escape(str(path))}: {key}: expected an object.*, got a number "
                                                r"5; rerun the stage that wrote it$"):
            collect(run)
        path.write_text(good)
    assert collect(run).rows


@pytest.mark.parametrize("file, keys, value, where, said", [
    ("bench/manifest.json", ["seed"], "42", "seed", "an integer, got a string \"42\""),
    ("teacher/manifest.json", ["config"], 5, "config", "an object, got a number 5"),
    ("teacher/manifest.json", ["config", "task"], [], "config.task", "an object, got a list []"),
    ("teacher/manifest.json", ["metrics", "dev", "accuracy"], "high", "metrics.dev.accuracy",
     "a number, got a string \"high\""),
    ("teacher/manifest.json", ["env", "versions"], "1.32", "env.versions", "an object, got a string \"1.32\""),
    ("teacher/manifest.json", ["train"], True, "train", "an object, got a boolean true"),
    ("distill/manifest.json", ["params", "tiny"], "17M", "params.tiny", "an integer, got a string \"17M\""),
    ("bench/bench.json", ["protocol"], 5, "protocol", "an object, got a number 5"),
    ("bench/bench.json", ["run_dir"], 5, "run_dir", "a string, got a number 5"),
    ("bench/bench.json", ["artifacts", "int8_dynamic", "file"], 5, "artifacts.int8_dynamic.file",
     "a string, got a number 5"),
    ("quantize/quantize.json", ["int8", "dynamic", "tries"], 5, "int8.dynamic.tries", "a list, got a number 5"),
    ("quantize/quantize.json", ["fp32", "file"], 5, "fp32.file", "a string, got a number 5"),
])
def test_a_stage_record_field_of_another_type_is_one_line_naming_file_and_field(tmp_path, capsys, file, keys, value,
                                                                                 where, said):
    """Stage records that parse but hold a field of another type than their stage writes (found by feeding
    `compress report` records with one field changed): a TypeError/AttributeError traceback from deep in the report,
    or, for a teacher's score as text, every retention left blank without a word. Now one line naming both."""
    run = make_run(tmp_path, "q", **_files(tmp_path), student="tiny",
                   latency={"onnx_fp32": {1: 20.0}, "int8_dynamic": {1: 8.0}})
    path = run / file
    record = json.loads(path.read_text())
    parent = record
    for key in keys[:-1]:
        parent = parent.setdefault(key, {})
    parent[keys[-1]] = value
    path.write_text(json.dumps(record))
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: {where}: expected {said}; rerun the stage that wrote it\n", err
    assert not out.exists()


def test_validate_reads_the_compared_runs_records_before_any_stage(tmp_path, capsys):
    """`report.compare` naming a run whose records the report cannot read passed `compress validate` (only
    teacher/manifest.json's presence was checked); a run then stopped at its report stage after every other stage.
    Now validate warns naming the file and field (`--strict`: exit 2), and `compress run` stops before any stage."""
    old = make_run(tmp_path, "old", **_files(tmp_path))
    path = old / "teacher" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "seed": "42"}))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: {{name: sst2}}\nteacher: {{model: minilm-l6}}\nreport: {{compare: [{old}]}}\n"
                      f"runs_dir: {tmp_path / 'runs'}\n")
    said = (f"{recipe}: report.compare[0]: {path}: seed: expected an integer, got a string \"42\"; rerun the stage "
            f"that wrote it")
    assert main(["validate", str(recipe)]) == 0
    assert f"warning: {said}" in capsys.readouterr().err.splitlines()
    assert main(["validate", "--strict", str(recipe)]) == 2
    assert main(["run", str(recipe)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {said}"
    assert not (tmp_path / "runs" / "r").exists()
    # the run itself among the compared (allowed: one table): not read ahead, its stale records are being redone
    path.write_text(json.dumps({**json.loads(path.read_text()), "seed": 42}))
    own = make_run(tmp_path / "runs", "r", **_files(tmp_path))
    stale = own / "prune" / "manifest.json"
    stale.parent.mkdir()
    stale.write_text(json.dumps({"stage": "prune", "seed": "7"}))
    recipe.write_text(recipe.read_text().replace(f"compare: [{old}]", f"compare: [{old}, {own}]"))
    capsys.readouterr()
    assert main(["validate", "--strict", str(recipe)]) == 0, capsys.readouterr().err
    assert "warning" not in capsys.readouterr().err


def test_records_the_table_does_not_read_are_not_checked(tmp_path):
    """The shape check reads only the records the table uses: a bundle or report stage's manifest of another shape
    (rewritten only after the report stage, which would have refused it, so no rerun could mend it) and a
    stage folder the recipe no longer plans are left alone."""
    from compress.config import load_recipe
    from compress.report import kept_measurement

    run = make_run(tmp_path, "q", **_files(tmp_path))
    for stage in ("bundle", "report", "old-stage"):
        (run / stage).mkdir(exist_ok=True)
        (run / stage / "manifest.json").write_text(json.dumps({"stage": stage, "seed": "42", "outputs": 5}))
    assert collect(run).provenance["seeds"] == [42]
    recipe = tmp_path / "q.yaml"
    recipe.write_text(f"runs_dir: {tmp_path}\ntask: {{name: sst2}}\nteacher: {{model: minilm-l6}}\n"
                      f"quantize: {{}}\nbench: {{}}\nreport: {{}}\nbundle: {{}}\n")
    assert kept_measurement(load_recipe(recipe)) is None  # the report's own manifest: read unchecked, not kept
    assert collect(run, recipe=load_recipe(recipe)).rows


def test_merged_seeds_best_fixed_shape_is_the_best_mean_whatever_the_order(tmp_path):
    """Merged seeds took the first seed's best fixed shape and averaged the seeds whose best it was too: 500 (b8xs32)
    in one folder order, 350 (b8xs128) in the other, for means of 400 and 375. The protocol line came from the first
    seed's run, none when it had no bench (found by a review of the reported numbers)."""
    import json

    from compress.report import merge_seeds

    lat = {"onnx_fp32": {2: 12.0}, "int8_dynamic": {2: 5.0}}
    runs = []
    for seed, (s32, s128) in ((42, (500.0, 400.0)), (43, (300.0, 350.0))):
        run = make_run(tmp_path / f"s{seed}", "pk", **_files(tmp_path), seed=seed, latency=lat)
        path = run / "bench" / "bench.json"
        bench = json.loads(path.read_text())
        results = bench["artifacts"]["int8_dynamic"]["results"]
        fixed = next(r for r in results if r["input"] == "b8xs32")
        fixed["throughput_seq_s"] = s32
        results.append({**fixed, "input": "b8xs128", "seq": 128, "throughput_seq_s": s128})
        path.write_text(json.dumps(bench))
        runs.append(run)
    for order in (runs, runs[::-1]):
        table, = merge_seeds([collect(r) for r in order])
        dyn = next(r for r in table.rows if r.name == "teacher · int8 dynamic").latency[2]
        # pooled rates (`pooled_rate`): b8xs32 2 / (1/500 + 1/300) = 375, b8xs128 373.3
        assert (dyn.peak_throughput, dyn.peak_shape) == (pytest.approx(375.0), "b8xs32"), order
    untimed = make_run(tmp_path / "s44", "pk", **_files(tmp_path), seed=44)
    table, = merge_seeds([collect(r) for r in (untimed, *runs)])
    assert table.provenance["protocol"] and table.provenance["protocol"] == collect(runs[0]).provenance["protocol"]


def test_mean_std_is_the_mean_of_skewed_seeds_not_their_median():
    """Seeds' scores 0.80, 0.90, 0.97: the table's number is their mean 0.89 (the median, 0.90, is another one)."""
    mean, std, n = mean_std([0.80, 0.90, 0.97])
    assert (mean, n) == (pytest.approx(0.89), 3) and std == pytest.approx(statistics.stdev([0.80, 0.90, 0.97]))


def test_merged_seeds_latency_is_the_mean_of_three_seeds_p50_and_p90(tmp_path):
    """Three seeds timing an int8 model at 4, 5 and 9 ms p50: the merged row's p50 is their mean, 6 ms (p90: 1.2x
    each, 7.2 ms), not the median 5 ms."""
    from compress.report import merge_seeds

    runs = [make_run(tmp_path / f"s{seed}", "quickstart", **_files(tmp_path), seed=seed,
                     latency={"onnx_fp32": {2: 12.0}, "int8_dynamic": {2: ms}}, int8={"dynamic": (0.88, True)})
            for seed, ms in ((42, 4.0), (43, 5.0), (44, 9.0))]
    (table,) = merge_seeds([collect(r) for r in runs])
    lat = next(r for r in table.rows if r.name == "teacher · int8 dynamic").latency[2]
    assert lat.p50_ms == pytest.approx(6.0) and lat.p90_ms == pytest.approx(7.2)
    header, body = table_cells(table)
    cells = dict(zip(header, next(c for c in body if c[0] == "teacher · int8 dynamic")))
    assert cells["p50 ms (2t)"] == "6.00" and cells["p90 ms (2t)"] == "7.20"


def test_merged_seeds_int8_model_is_shippable_only_when_every_seeds_guard_passed_it(tmp_path):
    """Seed 42's int8 model passed the accuracy guard, seed 43's did not: the merged row is not tagged shippable (a
    bundle may ship it only where every seed's passed), whichever seed's folder comes first."""
    from compress.report import markdown, merge_seeds

    runs = [make_run(tmp_path / f"s{seed}", "quickstart", **_files(tmp_path), seed=seed,
                     latency={"onnx_fp32": {2: 12.0}, "int8_dynamic": {2: 5.0}}, int8={"dynamic": (acc, ok)})
            for seed, acc, ok in ((42, 0.88, True), (43, 0.80, False))]
    for order in (runs, runs[::-1]):
        (table,) = merge_seeds([collect(r) for r in order])
        dyn = next(r for r in table.rows if r.name == "teacher · int8 dynamic")
        assert not dyn.shippable, order
        assert "teacher · int8 dynamic (shippable)" not in markdown([table])


def test_peak_rss_column_from_the_bench_merged_seeds_keep_the_largest(tmp_path):
    """The bench's peak RSS of each artifact (alone in a fresh process) is a column after the file size; merged seeds
    show the largest; a row the bench did not probe reads –; a run without a bench has no such column."""
    from compress.report import merge_seeds, note

    runs = [make_run(tmp_path / f"s{seed}", "quickstart", **_files(tmp_path), seed=seed,
                     latency={"onnx_fp32": {2: 12.0}, "int8_dynamic": {2: 5.0}}) for seed in (42, 43)]
    bench = runs[1] / "bench" / "bench.json"
    record = json.loads(bench.read_text())
    record["artifacts"]["int8_dynamic"]["peak_rss_mb"] = 412.4
    bench.write_text(json.dumps(record))
    header, body = table_cells(collect(runs[1]))
    assert header[3:6] == ["file", "peak RSS", "accuracy (dev)"]
    cells = {row[0]: row[4] for row in body}
    assert cells["teacher · int8 dynamic"] == "412 MiB" and cells["teacher"] == "–"
    (merged,) = merge_seeds([collect(r) for r in runs])
    cells = {row[0]: row[4] for row in table_cells(merged)[1]}
    assert cells["teacher · int8 dynamic"] == "412 MiB" and cells["teacher · onnx fp32 (reference)"] == \
        "300 MiB"
    plain = make_run(tmp_path / "nb", "quickstart", **_files(tmp_path))  # no bench stage
    assert "peak RSS" not in table_cells(collect(plain))[0]
    said = note(collect(runs[0]))  # the units of the two columns side by side, and what a rate is of
    assert "Peak RSS (MiB of 2^20 bytes): the most resident memory of a fresh process" in said
    assert "File: size on disk in MB of 10^6 bytes" in said and "sent/s being 1000 / the mean ms" in said


def test_merged_seeds_rows_keep_their_paths_and_only_a_refused_int8_model_reads_not_shippable(tmp_path):
    """Merged seeds built each row positionally: the model path landed in ``refused``, so every merged row (teacher,
    pruned, fp32, peers) read "(NOT shippable)" with its path as the guard's reason, and the tokenizer was lost."""
    from compress.report import markdown, merge_seeds, note

    runs = [make_run(tmp_path / f"s{seed}", "quickstart", **_files(tmp_path), seed=seed,
                     latency={"onnx_fp32": {2: 12.0}, "int8_dynamic": {2: 5.0}, "int8_static": {2: 4.0}},
                     int8={"dynamic": (0.88, True), "static": (0.87, ok)})
            for seed, ok in ((42, True), (43, False))]
    record = json.loads((runs[1] / "quantize" / "quantize.json").read_text())
    record["int8"]["static"]["guard"] = "drop 2.00 points > max_drop 1.00"
    (runs[1] / "quantize" / "quantize.json").write_text(json.dumps(record))
    (table,) = merge_seeds([collect(r) for r in runs])
    rows = {r.name: r for r in table.rows}
    first = {r.name: r for r in collect(runs[0]).rows}
    for name, row in rows.items():
        assert (row.path, row.ort_path, row.tokenizer) == (first[name].path, first[name].ort_path,
                                                           first[name].tokenizer), name
    assert rows["teacher · int8 static"].refused == "drop 2.00 points > max_drop 1.00"
    assert all(r.refused is None for n, r in rows.items() if n != "teacher · int8 static")
    md = markdown([table])
    assert md.count("NOT shippable") == 1 and "| teacher · int8 static (NOT shippable) |" in md
    assert "| teacher · int8 dynamic (shippable) |" in md and "| teacher |" in md
    assert "teacher · int8 static: drop 2.00 points" in note(table) and str(runs[0]) not in note(table)


def test_merged_seeds_best_fixed_shape_is_one_every_seed_timed(tmp_path):
    """Seed 42 timed the fixed shapes b8xs32 and b8xs128, seed 43 only b8xs32: the best fixed shape of the merged row
    is of the shapes both timed (b8xs32, pooled over the two), not b8xs128 from one seed alone."""
    from compress.report import merge_seeds

    lat = {"onnx_fp32": {2: 12.0}, "int8_dynamic": {2: 5.0}}
    runs = []
    for seed, extra in ((42, True), (43, False)):
        run = make_run(tmp_path / f"s{seed}", "pk", **_files(tmp_path), seed=seed, latency=lat)
        path = run / "bench" / "bench.json"
        bench = json.loads(path.read_text())
        results = bench["artifacts"]["int8_dynamic"]["results"]
        fixed = next(r for r in results if r["input"] == "b8xs32")
        fixed["throughput_seq_s"] = 300.0
        if extra:
            results.append({**fixed, "input": "b8xs128", "seq": 128, "throughput_seq_s": 900.0})
        path.write_text(json.dumps(bench))
        runs.append(run)
    table, = merge_seeds([collect(r) for r in runs])
    dyn = next(r for r in table.rows if r.name == "teacher · int8 dynamic").latency[2]
    assert dyn.shapes == {"b8xs32": pytest.approx(300.0)}
    assert (dyn.peak_shape, dyn.peak_throughput) == ("b8xs32", pytest.approx(300.0))


def test_a_torch_models_file_size_is_its_weights_only(tmp_path):
    """A torch model folder's "file" cell is the size of its safetensors weights: not its tokenizer, config or
    training arguments beside them."""
    run = make_run(tmp_path, "quickstart", **_files(tmp_path), latency={"onnx_fp32": {2: 12.0}})
    model = run / "teacher" / "model"
    (model / "tokenizer.json").write_bytes(b"\0" * 700_000)
    (model / "config.json").write_text("{}")
    teacher = next(r for r in collect(run).rows if r.name == "teacher")
    assert teacher.file_bytes == 4096


def test_the_report_stage_reads_a_pair_task_from_its_recipe():
    """With a recipe (the report stage), whether latency is per pair or per sentence is its task's: MRPC and RTE read
    pairs, SST-2 sentences."""
    from types import SimpleNamespace

    from compress.config import TaskConfig
    from compress.report import _is_pair

    assert _is_pair({}, SimpleNamespace(task=TaskConfig(name="mrpc")))
    assert _is_pair({}, SimpleNamespace(task=TaskConfig(name="rte")))
    assert not _is_pair({}, SimpleNamespace(task=TaskConfig(name="sst2")))


def test_a_hand_edited_boolean_score_is_unscored_not_1():
    """A manifest's ``"accuracy": true`` (hand-edited) is no score: the row reads "–", not 1.0000 (True is an int)."""
    from compress.report import _metric_value

    assert _metric_value({"dev": {"accuracy": True}}, "accuracy") == (None, None, 0)
    assert _metric_value({"dev": {"accuracy": 0.5}}, "accuracy") == (0.5, None, 1)


def test_labels_of_one_runs_overlapping_points_are_one_label(tmp_path, monkeypatch):
    """An audit of a run's plot: the int8 static point (1.0035 ms, circled) and the Optimum peer's (1.0276 ms, same
    accuracy) were one blot, the peer's label joined to it by a line and the static one's printed under the peer's
    point: either read as the circled one's. Points of one run whose markers overlap now share one label, a name a
    line; another run's point there keeps its own."""
    seen = {}

    def spy(fig, ax, labels, points=()):
        seen.update(ax=ax, labels=labels)
        return real(fig, ax, labels, points)

    real = pareto._spread_labels
    monkeypatch.setattr(pareto, "_spread_labels", spy)
    tables = []
    for run, shift in (("reviews", 1.0), ("other", 1.01)):
        rows = [Row(name, kind, fmt, 7_000_000, 30_000_000, metric, latency={2: Latency(p50 * shift, p50 * 1.4)},
                    reference=name == "teacher · onnx fp32")
                for name, kind, fmt, metric, p50 in [
                    ("teacher · onnx fp32", "teacher", "onnx fp32", 0.7825, 6.77),
                    ("pruned · int8 dynamic", "int8", "onnx int8", 0.775, 0.7038),
                    ("pruned · int8 static", "int8", "onnx int8", 0.7825, 1.0035),
                    ("pruned · optimum int8 (peer)", "int8", "onnx int8", 0.7825, 1.0276)]]
        tables.append(RunTable(run, f"runs/{run}", "accuracy", rows, teacher_metric=0.7825,
                               provenance={"protocol": {"batch_size": 1, "threads": "2"}}))
    assert pareto_plot(tables, tmp_path / "p.png") is not None
    texts = sorted(label.get_text() for label in seen["labels"])
    assert texts.count("pruned · int8 static\npruned · optimum int8 (peer)") == 2  # one label a run
    assert texts.count("pruned · int8 dynamic") == 2 and len(texts) == 6
    assert all(label.figure is not None for label in seen["labels"])  # the merged ones are off the figure
    assert len([t for t in seen["ax"].texts if "optimum" in t.get_text()]) == 2
