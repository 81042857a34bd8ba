"""Time `compress.export._quiet_ort_transformers` (which sets the ORT transformer optimizer's loggers to errors only,
run before every ONNX optimization) as it was at each commit given, in one process that has imported what a quantize
stage imports (torch, transformers, onnxruntime.transformers, compress's stages: ~4,000 modules).

    python scripts/bench_ort_quiet.py e919f04 HEAD
"""

import subprocess
import sys
import time
import types

import onnxruntime.transformers.optimizer  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401

import compress.quantize  # noqa: F401
import compress.search  # noqa: F401

for commit in sys.argv[1:]:
    source = subprocess.run(["git", "show", f"{commit}:compress/export.py"], capture_output=True, text=True,
                            check=True).stdout
    module = types.ModuleType(f"export_at_{commit.replace('~', '_')}")
    module.__file__ = "compress/export.py"
    sys.modules[module.__name__] = module
    exec(compile(source, f"{commit}:compress/export.py", "exec"), module.__dict__)
    start = time.perf_counter()
    for _ in range(5):
        module._quiet_ort_transformers()
    print(f"{commit}: {(time.perf_counter() - start) / 5 * 1000:.1f} ms a call, {len(sys.modules)} modules loaded")
