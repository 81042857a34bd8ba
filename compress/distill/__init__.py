"""Knowledge distillation: losses (pure functions), the KD objective, the `distill` stage and its benchmark.

Student builders (model surgery, no training) live in the top-level ``students`` package.
"""

from compress.distill.losses import attention_loss, combine, hard_label_loss, hidden_mse, kd_loss, logits_mse

__all__ = ["attention_loss", "combine", "hard_label_loss", "hidden_mse", "kd_loss", "logits_mse"]
