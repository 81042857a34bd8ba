"""Run by tests/test_distill.py under `accelerate launch` (2 CPU processes) and as 1 process: a tiny distillation
with logit + hidden-state KD; the main process saves the student's final weights to argv[2]. argv[3] "alone": a
layer-drop student trained on attention matches alone (no logit loss: its head, and its last layer's FFN, get no
gradient); "two_step": a narrow student, TinyBERT's two steps (the first without a logit loss). argv[4]: a checkpoint
folder, a checkpoint saved every step (resumed from where one is there); argv[5]: the batch at which every process
stops with an error (a crash after that many batches)."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import GLUE, tiny_bert_config  # noqa: E402

from compress.config import StudentConfig, TaskConfig, from_dict  # noqa: E402
from compress.data import load_task  # noqa: E402
from compress.distill.stage import distill  # noqa: E402
from compress.train import end_distributed, process_state  # noqa: E402
from students import build_student  # noqa: E402
from teachers.zoo import resolve  # noqa: E402


def main(batch_size: int, out: str, mode: str = "", checkpoints: str = "", crash_at: int = 0) -> None:
    state = process_state()  # before fit's Accelerator: the state is shared (the CPU's under ACCELERATE_USE_CPU)
    tok = AutoTokenizer.from_pretrained(resolve("minilm-l6"))
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=4, hidden_dropout_prob=0.0,
                                                             attention_probs_dropout_prob=0.0))
    data = load_task(TaskConfig(name="sst2", data_dir=str(GLUE / "SST-2"), max_train_samples=400,
                                max_eval_samples=32, holdout=0.0), seed=0)
    # equal token counts on every process (rows of >= 6 words, cut to 8 tokens): position-wise losses are means over
    # each process's tokens, so only then is 2 x 4 rows exactly the same objective as 1 x 8 rows
    data.train = data.train.filter(lambda r: len(r["text"].split()) >= 6).select(range(64))
    spec = from_dict(StudentConfig, {"name": "s", "kind": "narrow", "layers": 2, "hidden": 16, "heads": 2, "ffn": 32,
                                     "distill": {"matches": [
                                         {"teacher_layer": 4, "student_layer": 2},  # 16 -> 32 projection
                                         {"teacher_layer": 2, "student_layer": 1, "feature": "attention",
                                          "loss": "kl"}]},  # 4 vs 2 heads: averaged
                                     "train": {"batch_size": batch_size, "max_steps": 4, "lr": 1.0e-3,
                                               "warmup_ratio": 0.0}})
    if mode == "two_step":
        spec.distill.two_step, spec.distill.intermediate_max_steps = True, 3
    if mode == "alone":
        spec = from_dict(StudentConfig, {"name": "s", "layers": 2, "distill": {
            "kd_weight": 0.0, "hard_label_weight": 0.0, "layer_map": "uniform", "layer_map_features": ["attention"]},
            "train": {"batch_size": batch_size, "max_steps": 4, "lr": 1.0e-3, "warmup_ratio": 0.0}})
    student = build_student(spec, teacher, tok, data.spec)
    for m in student.model.modules():  # no dropout: 1 and 2 processes draw different masks
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    if state.is_main_process:
        save_file({k: v.contiguous() for k, v in student.model.state_dict().items()}, out + ".init")
    if checkpoints:
        spec.train.checkpoint_every = 1
    if crash_at:
        import accelerate

        real, batches = accelerate.Accelerator.backward, []

        def backward(self, loss, **kw):
            batches.append(1)
            if len(batches) == crash_at:
                raise RuntimeError(f"crash at batch {crash_at}")
            return real(self, loss, **kw)

        accelerate.Accelerator.backward = backward
    res = distill(teacher, tok, student, spec, data, max_length=8, seed=0, group_by_length=False,
                  checkpoint_dir=Path(checkpoints) if checkpoints else None)
    if state.is_main_process:
        save_file({k: v.contiguous() for k, v in res.model.state_dict().items()}, out)
    end_distributed()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], *sys.argv[3:4], *sys.argv[4:5], *map(int, sys.argv[5:6]))
