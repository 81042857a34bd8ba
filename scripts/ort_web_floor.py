"""Which onnxruntime-web versions run an int4 vocabulary table (``quantize.table_bits: 4``): each version is installed
from the npm registry into a temporary folder and runs one ``com.microsoft.GatherBlockQuantized`` lookup of a table
packed as `compress.embed_rows` packs it; its rows are compared with native onnxruntime's. Needs Node.js, npm and the
registry (not run by the tests, which run the pinned version: tests/test_bundle_js.py).

    python scripts/ort_web_floor.py 1.19.2 1.20.1 1.21.0 1.22.0

Behind ``bundle_predict.INT4_RUNTIME`` and predict.mjs's version hint.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

LOOKUP = """const ort = await import("onnxruntime-web");
const ids = BigInt64Array.from(JSON.parse(process.argv[3]).map(BigInt));
try {
  const s = await ort.InferenceSession.create(process.argv[2]);
  const r = await s.run({ids: new ort.Tensor("int64", ids, [ids.length])});
  console.log(JSON.stringify({rows: Array.from(r.rows.data)}));
} catch (e) {
  console.log(JSON.stringify({error: String(e?.message ?? e).split("\\n")[0]}));
}
"""


def lookup_model(path: Path, rows: int = 4096, width: int = 64) -> None:
    """One GatherBlockQuantized node over a random table packed by `embed_rows.int4_blocks`, as the rewrite uses it."""
    import onnx
    from onnx import helper, numpy_helper

    from compress.embed_rows import BLOCK, int4_blocks

    packed, scale = int4_blocks(np.random.default_rng(0).normal(size=(rows, width)).astype(np.float32))
    node = helper.make_node("GatherBlockQuantized", ["table", "ids", "scale"], ["rows"], domain="com.microsoft",
                            block_size=BLOCK, gather_axis=0, quantize_axis=1)
    graph = helper.make_graph([node], "lookup", [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["N"])],
                              [helper.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, ["N", width])],
                              [numpy_helper.from_array(packed, "table"), numpy_helper.from_array(scale, "scale")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.microsoft", 1)], ir_version=8),
              str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("versions", nargs="+", help="onnxruntime-web versions, e.g. 1.21.0 1.22.0")
    args = ap.parse_args()
    import onnxruntime as ort

    ids = [i * 97 for i in range(40)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lookup_model(tmp / "lookup.onnx")
        want = ort.InferenceSession(str(tmp / "lookup.onnx"), providers=["CPUExecutionProvider"]).run(
            None, {"ids": np.array(ids, dtype=np.int64)})[0]
        for version in args.versions:
            folder = tmp / version
            folder.mkdir()
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", f"onnxruntime-web@{version}"],
                           cwd=folder, check=True, capture_output=True)
            (folder / "lookup.mjs").write_text(LOOKUP)
            out = subprocess.run(["node", "lookup.mjs", str(tmp / "lookup.onnx"), json.dumps(ids)], cwd=folder,
                                 check=True, capture_output=True, text=True).stdout
            got = json.loads(out.strip().splitlines()[-1])
            if "error" in got:
                print(f"onnxruntime-web {version}: refused ({got['error'][:200]})")
                continue
            rows = np.array(got["rows"], dtype=np.float32).reshape(want.shape)
            same = "the same rows as native onnxruntime, to the bit" if np.array_equal(rows, want) else (
                f"rows differ from native onnxruntime's (largest difference {np.abs(rows - want).max():.3g})")
            print(f"onnxruntime-web {version}: runs it, {same}")


if __name__ == "__main__":
    main()
