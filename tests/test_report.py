"""Report: Pareto maths, table numbers (retention, speedup, mean ± std), Markdown/HTML/PNG output."""

from __future__ import annotations

import base64
import re

import pytest

from compress.report import Latency, Row, RunTable, mean_std, pareto_front, pareto_plot, table_cells, write


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
    assert student["retention"] == f"{100 * 0.866 / 0.893:.1f}%"
    assert student["accuracy (dev)"] == "0.8660 ± 0.0050 (n=3)"
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
    assert page.count("<table>") == 2 and "0.8660 ± 0.0050 (n=3)" in page and "<dt>host</dt>" in page
    assert page.count("class='ship'") == 4 and page.count("class='ref'") == 2


def test_plot_skips_rows_without_numbers(tmp_path):
    table = _table()
    table.rows = [r for r in table.rows if not r.latency]  # only the torch row: nothing to plot
    assert pareto_plot([table], tmp_path / "p.png") is None
    written = write([table], tmp_path)
    assert "png" not in written and "pareto.png" not in (tmp_path / "report.md").read_text()
