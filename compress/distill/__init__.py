"""Knowledge distillation: losses (pure functions), the matches (`matches`, torch-free), the KD objective, the
`distill` stage and its benchmark.

Student builders (model surgery, no training) live in the top-level ``students`` package. The losses are imported
on first use, so that `compress.distill.matches` (read by `compress validate`) does not import torch.
"""

__all__ = ["attention_loss", "combine", "hard_label_loss", "hidden_mse", "kd_loss", "logits_mse"]


def __getattr__(name: str):
    if name in __all__:
        from compress.distill import losses

        return getattr(losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
