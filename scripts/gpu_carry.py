"""Carry a trained teacher and the zoo's student init to a lent GPU machine whose transfers are capped (64 MiB a call).

The device tool of this workplace sends the working tree plus a few carried folders, at most 64 MiB a call, and the
GPU machine cannot reach a model hub. The fine-tuned MPNet teacher is 438 MB in fp32, MiniLM-L6 91 MB. So:

  pack    here:  the teacher's 2-D weights as int8, one absmax scale per output row (fp16), every other tensor fp32,
                 split into parts of about 55 MB; MiniLM-L6 in bf16 (both rounded once, on the way)
  unpack  there: rebuild fp32 ``save_pretrained`` folders (the teacher, and the zoo folder ``minilm-l6`` marked verified)
  seed    there: a run folder whose ``teacher`` stage is that teacher, with the manifest the pipeline would write
                 (its fingerprint and output hashes), so ``compress run RECIPE --runs-dir D`` goes on from the
                 distill stage. No teacher metrics are copied: the distill stage measures the rounded teacher's dev
                 score itself, and that is the score its retention uses.

  python scripts/gpu_carry.py pack --teacher RUN/teacher/model --out .xfer
  python scripts/gpu_carry.py unpack --parts .xfer-a .xfer-b ... --teacher-out /root/teacher [--zoo DIR]
  python scripts/gpu_carry.py seed --recipe R.yaml --runs-dir D --teacher /root/teacher [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SMALL = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.float().abs().amax(dim=1).clamp_min(1e-12) / 127.0
    return torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8), scale.to(torch.float16)


def pack(teacher: Path, student_init: Path, out: Path, part_mb: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = load_file(str(teacher / "model.safetensors"))
    parts: list[dict] = [{}]
    size = 0
    for name, w in state.items():
        if w.dim() == 2 and w.numel() > 4096:
            q, s = _int8_rows(w)
            entry = {f"{name}::q": q.contiguous(), f"{name}::s": s.contiguous()}
        else:
            entry = {name: w.float().contiguous()}
        nbytes = sum(t.numel() * t.element_size() for t in entry.values())
        if size + nbytes > part_mb * 1e6 and parts[-1]:
            parts.append({})
            size = 0
        parts[-1].update(entry)
        size += nbytes
    for i, p in enumerate(parts):
        d = out / f"teacher-{i}"
        d.mkdir(exist_ok=True)
        save_file(p, str(d / "weights.safetensors"))
    for f in SMALL:
        if (teacher / f).is_file():
            shutil.copyfile(teacher / f, out / "teacher-0" / f)
    (out / "teacher-0" / "parts.json").write_text(json.dumps({"parts": len(parts), "keys": len(state)}))
    d = out / "student-init"
    d.mkdir(exist_ok=True)
    s_state = load_file(str(student_init / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in s_state.items()}, str(d / "model.safetensors"))
    for f in SMALL:
        if (student_init / f).is_file():
            shutil.copyfile(student_init / f, d / f)
    for p in sorted(out.rglob("*")):
        if p.is_file():
            print(f"{p}  {p.stat().st_size / 1e6:.1f} MB")


def unpack(parts: list[Path], teacher_out: Path, zoo: Path) -> None:
    """Whatever of the carried folders is there: the student init (zoo) and, once every part is in, the teacher."""
    found = lambda pattern: sorted(d for folder in parts for d in folder.glob(pattern))  # noqa: E731
    init = found("student-init")
    if init:
        target = zoo / "minilm-l6"
        target.mkdir(parents=True, exist_ok=True)
        s_state = load_file(str(init[0] / "model.safetensors"))
        save_file({k: v.float().contiguous() for k, v in s_state.items()}, str(target / "model.safetensors"),
                  metadata={"format": "pt"})
        for f in SMALL:
            if (init[0] / f).is_file():
                shutil.copyfile(init[0] / f, target / f)
        (target / ".verified").write_text("carried in bf16 by scripts/gpu_carry.py\n")
        print(f"student init -> {target}")
    pieces = found("teacher-*")
    if not pieces:
        return
    head = next((d for d in pieces if (d / "parts.json").is_file()), None)
    expected = json.loads((head / "parts.json").read_text()) if head else None
    if expected is None or len(pieces) != expected["parts"]:
        raise SystemExit(f"teacher: {len(pieces)} part(s) here, {expected and expected['parts']} expected")
    merged: dict[str, torch.Tensor] = {}
    for d in pieces:
        merged.update(load_file(str(d / "weights.safetensors")))
    state = {}
    for name, t in merged.items():
        if name.endswith("::q"):
            base = name[:-3]
            state[base] = (t.float() * merged[f"{base}::s"].float()[:, None]).contiguous()
        elif not name.endswith("::s"):
            state[name] = t
    if len(state) != expected["keys"]:
        raise SystemExit(f"teacher: {len(state)} tensors rebuilt, {expected['keys']} expected")
    teacher_out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(teacher_out / "model.safetensors"), metadata={"format": "pt"})
    for f in SMALL:
        if (head / f).is_file():
            shutil.copyfile(head / f, teacher_out / f)
    print(f"teacher: {len(state)} tensors from {len(pieces)} parts -> {teacher_out}")


def seed(recipe_path: str, runs_dir: str, teacher: Path, sets: list[str]) -> None:
    from compress.cli import _overrides
    from compress.config import load_recipe
    from compress.manifest import write_json
    from compress.pipeline import _fingerprint, plan, stage_manifest

    recipe = load_recipe(recipe_path, _overrides(sets))
    recipe.runs_dir = runs_dir
    stage = next(s for s in plan(recipe) if s.name == "teacher")
    folder = recipe.run_dir / "teacher"
    tmp = folder.with_name(".teacher.seeding")  # written aside, then renamed: no half-seeded stage on a failure
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(teacher, tmp / "model")
    fp, inputs = _fingerprint(recipe, stage, {})
    write_json(tmp / "manifest.json", stage_manifest(recipe, stage, fp, inputs, tmp, {
        "seeded": "scripts/gpu_carry.py: trained elsewhere, weights carried as int8 rows"}))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    print(f"seeded {folder} (fingerprint {fp[:12]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--student-init", type=Path, default=None, help="default: the zoo's minilm-l6 (materialized)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--part-mb", type=float, default=55.0)
    u = sub.add_parser("unpack")
    u.add_argument("--parts", type=Path, nargs="+", required=True)
    u.add_argument("--teacher-out", type=Path, required=True)
    u.add_argument("--zoo", type=Path, default=None, help="default: $COMPRESS_CACHE/zoo")
    s = sub.add_parser("seed")
    s.add_argument("--recipe", required=True)
    s.add_argument("--runs-dir", required=True)
    s.add_argument("--teacher", type=Path, required=True)
    s.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    from teachers.zoo import cache_root, materialize

    if a.cmd == "pack":
        pack(a.teacher, a.student_init or materialize("minilm-l6"), a.out, a.part_mb)
    elif a.cmd == "unpack":
        unpack(a.parts, a.teacher_out, a.zoo or cache_root() / "zoo")
    else:
        seed(a.recipe, a.runs_dir, a.teacher, a.set)


if __name__ == "__main__":
    main()
