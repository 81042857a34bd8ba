"""scripts/gpu_carry.py: a teacher and a student init carried in pieces (int8 rows / bf16), rebuilt, and a run folder
seeded so that the pipeline reuses the teacher stage instead of training it."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_carry", ROOT / "scripts" / "gpu_carry.py")
gpu_carry = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_carry)


@pytest.fixture()
def small_bert(tmp_path, tokenizer) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=96, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=192, max_position_embeddings=128, num_labels=2)
    folder = tmp_path / "teacher"
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_pieces_rebuild_the_teacher_within_half_a_step_and_the_init_in_bf16(tmp_path, small_bert):
    xf = tmp_path / "xf"
    gpu_carry.pack(small_bert, small_bert, xf, part_mb=2.0)
    parts = sorted(xf.glob("teacher-*"))
    assert len(parts) >= 2 and all(p.stat().st_size for p in parts)
    # carried as three folders, as over three calls; the teacher is rebuilt only once every part is there
    calls = [tmp_path / c for c in "abc"]
    for c in calls:
        c.mkdir()
    shutil.move(str(xf / "student-init"), calls[0])
    shutil.move(str(parts[0]), calls[1])
    for p in parts[1:]:
        shutil.move(str(p), calls[2])
    zoo, out = tmp_path / "zoo", tmp_path / "rebuilt"
    gpu_carry.unpack(calls[:1], out, zoo)
    assert not out.exists() and (zoo / "minilm-l6" / ".verified").is_file()
    with pytest.raises(SystemExit, match=r"1 part\(s\) here, \d+ expected"):
        gpu_carry.unpack(calls[:2], out, zoo)
    gpu_carry.unpack(calls, out, zoo)

    original = load_file(str(small_bert / "model.safetensors"))
    rebuilt = load_file(str(out / "model.safetensors"))
    assert rebuilt.keys() == original.keys()
    quantized = 0
    for name, w in original.items():
        r = rebuilt[name]
        assert r.dtype == torch.float32 and r.shape == w.shape
        if w.dim() == 2 and w.numel() > 4096:
            # int8 rows: half a step (each row's absmax / 127) plus the fp16 rounding of the step, times 127
            step = w.abs().amax(dim=1, keepdim=True) / 127
            bound = 0.5 * step + 127 * (step - step.half().float()).abs() + 1e-7
            assert ((r - w).abs() <= bound).all(), name
            assert not torch.equal(r, w)
            quantized += 1
        else:
            assert torch.equal(r, w), name
    assert quantized >= 2 * 6  # every layer's q/k/v/o/in/out matrices
    init = load_file(str(zoo / "minilm-l6" / "model.safetensors"))
    for name, w in original.items():
        assert torch.equal(init[name], w.to(torch.bfloat16).float()), name


def test_a_seeded_teacher_stage_is_reused_by_the_pipeline(tmp_path, small_bert, glue_dir):
    from compress.cli import _overrides
    from compress.config import load_recipe
    from compress.pipeline import _fingerprint, _reuse, plan, run_pipeline

    # a 2-layer teacher: the recipe's 3-layer student is refused when the recipe is read (validation resolves depths)
    sets = [f"teacher.model={small_bert}", "task.max_train_samples=64", "task.max_eval_samples=16",
            "students.0.layers=1"]
    runs = tmp_path / "runs"
    gpu_carry.seed(str(ROOT / "pipelines" / "quickstart.yaml"), str(runs), small_bert, sets)
    recipe = load_recipe(ROOT / "pipelines" / "quickstart.yaml", _overrides(sets))
    recipe.runs_dir = str(runs)
    done = run_pipeline(recipe, until="teacher")
    manifest = done["teacher"]
    assert manifest["seeded"].startswith("scripts/gpu_carry.py")
    assert (recipe.run_dir / "teacher" / "model" / "model.safetensors").is_file()
    # a different recipe value is a different stage: the seeded folder is not trusted for it
    other = load_recipe(ROOT / "pipelines" / "quickstart.yaml", _overrides(sets + ["teacher.epochs=7"]))
    other.runs_dir = str(runs)
    stage = next(s for s in plan(other) if s.name == "teacher")
    assert _reuse(other, stage, other.run_dir / "teacher", *_fingerprint(other, stage, {}))[0] is None
