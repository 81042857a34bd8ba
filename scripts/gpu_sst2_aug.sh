#!/usr/bin/env bash
# pipelines/sst2-cpu.yaml's student with the largest transfer set so far, on a lent GPU machine (one H100):
# 8 word-swapped copies of every training row (449k after duplicates are dropped), labelled by the teacher, the L4 student trained one epoch at
# batch 256, then the recipe's prune stage. The teacher is the CPU run's (carried as int8 rows by scripts/gpu_carry.py,
# in three calls of the device tool: .xfer/a = student init, .xfer/b = teacher part 0 + SST-2 train/dev, .xfer/c =
# teacher part 1; wheels of the pinned transformers/tokenizers/datasets/torch-pruning in .whl, installed to /tmp/site).
# Results come back under $OUT: run.log, the distill/prune manifests and metrics, the pruned model in 15 MB pieces.
# GPU_ROOT (default /root) holds xfer/{a,b,c} and receives cache/, teacher/, runs/; EXTRA_SETS adds --set pairs (a
# dry run on the CPU: EXTRA_SETS="task.max_train_samples=600 task.max_eval_samples=100 prune.recover.max_steps=5");
# GPU_STAGE (default prune) is the last stage run (distill: the student only, in bf16 pieces).
set -euo pipefail
ROOT=${GPU_ROOT:-/root}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 COMPRESS_CACHE=$ROOT/cache GLUE_DIR=$ROOT/xfer/b/glue
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
OUT=${OUT:-/tmp/out}
SETS=(--set 'students.0.distill.augment={copies: 8}' --set students.0.train.epochs=1
      --set students.0.train.batch_size=256 --set students.0.train.lr=2.0e-4 --set students.0.train.checkpoint_every=2000)
for kv in ${EXTRA_SETS:-}; do SETS+=(--set "$kv"); done
python3 scripts/gpu_carry.py unpack --parts $ROOT/xfer/a $ROOT/xfer/b $ROOT/xfer/c --teacher-out $ROOT/teacher \
  --zoo $ROOT/cache/zoo
python3 scripts/gpu_carry.py seed --recipe pipelines/sst2-cpu.yaml --runs-dir $ROOT/runs --teacher $ROOT/teacher "${SETS[@]}"
status=0
timeout "${GPU_RUN_LIMIT:-500}" python3 -m compress run pipelines/sst2-cpu.yaml --runs-dir $ROOT/runs --stage "${GPU_STAGE:-prune}" \
  "${SETS[@]}" > "$OUT/run.log" 2>&1 || status=$?
tr '\r' '\n' < "$OUT/run.log" | grep -v -E "(it|step|ba|examples)/s|s/(it|step)" | grep -v "^$" | tail -40
R=$ROOT/runs/sst2-cpu
tar -czf "$OUT/results.tgz" -C "$R" --exclude='*.safetensors' --exclude='*.npy' --exclude='*.parquet' \
  --exclude='checkpoints' teacher/manifest.json distill prune 2>/dev/null || true
if [ -f "$R/prune/model/model.safetensors" ]; then
  split -b 15M "$R/prune/model/model.safetensors" "$OUT/pruned.safetensors.part-"
  sha256sum "$R/prune/model/model.safetensors" > "$OUT/pruned.sha256"
elif [ -f "$R/distill/minilm-l4-kd/model/model.safetensors" ]; then  # no pruned model: the distilled one, in bf16
  python3 -c "import sys, torch; from safetensors.torch import load_file, save_file; save_file({k: v.to(torch.bfloat16) \
for k, v in load_file(sys.argv[1]).items()}, sys.argv[2])" "$R/distill/minilm-l4-kd/model/model.safetensors" /tmp/s16.st
  split -b 15M /tmp/s16.st "$OUT/distilled-bf16.safetensors.part-"
fi
exit $status
