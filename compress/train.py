"""The one training loop: teacher fine-tuning, student distillation and pruning recovery all run through `fit`.

The objective is passed in (``objective(model, batch) -> (loss, logs)``), so this file knows nothing about KD.
Accelerate handles devices, DDP (``accelerate launch`` / ``torchrun``), bf16 autocast and gradient accumulation.

Checkpoint selection uses the held-out slice of train (``evaluate``), never dev. With ``checkpoint_dir`` the loop
saves resumable state (model, optimizer, scheduler, RNG, data position) every
``cfg.checkpoint_every`` steps; the same call after a crash resumes from the newest one and ends where an
uninterrupted run would.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from compress.bundle_predict import first_line
from compress.config import TrainConfig
from compress.data import Collator, bar_off, train_loader
from compress.errors import CompressError
from compress.manifest import hash_tree, sha256_file

log = logging.getLogger(__name__)

Objective = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]


@dataclass
class FitResult:
    steps: int
    best_metric: Optional[float]
    best_step: Optional[int]
    history: list[dict] = field(default_factory=list)
    tokens_per_s: float = 0.0
    tokens: int = 0
    """Tokens trained on in this run (every process's), padding not counted: what ``tokens_per_s`` divides."""
    wall_s: float = 0.0
    resumed_from: Optional[int] = None
    precision: str = "fp32"
    """What ran (``auto`` resolved)."""


def best_scores(result: FitResult) -> Optional[dict]:
    """The held-out scores of the weights `fit` restored (its history row at ``best_step``): scoring them again gives
    these to the digit (the same weights, rows, batches and fp32 forward), and took seconds to minutes of a stage;
    None when no state was selected (no evaluation, or every score nan)."""
    rows = [r for r in result.history if result.best_step is not None and r.get("step") == result.best_step]
    return {k: v for k, v in rows[-1].items() if k not in ("step", "tag")} if rows else None


def classification_objective(model, batch):
    """Plain fine-tuning: the model's own loss (cross-entropy, or MSE for regression)."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
    out = model(**inputs)
    return out.loss, {}


def _state_of(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.detach().to("cpu", copy=True).contiguous()
            for name, m in modules.items() for k, v in m.state_dict().items()}


def _load_state(modules: dict[str, torch.nn.Module], state: dict[str, torch.Tensor]) -> None:
    for name, m in modules.items():
        prefix = f"{name}."
        m.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


def fit(
    model: torch.nn.Module,
    train_ds,
    collator: Collator,
    cfg: TrainConfig,
    *,
    seed: int,
    objective: Objective = classification_objective,
    evaluate: Optional[Callable[[torch.nn.Module], dict]] = None,
    group_by_length: bool = True,
    checkpoint_dir: Optional[Path] = None,
    desc: str = "train",
    unused_parameters: bool = False,
) -> FitResult:
    """Train ``model`` on ``train_ds`` (modules trained with it, like distillation's projections, are submodules of
    it: `compress.distill.objective.Distiller`); the best held-out state is loaded back into ``model`` at the end.
    ``evaluate(model) -> {metric: value}``: the first metric selects. ``unused_parameters``: the objective may leave
    trained parameters without a gradient (`_accelerator`)."""
    precision = resolve_precision(cfg.precision)
    accelerator = _accelerator(precision, cfg.grad_accum, unused_parameters)
    set_seed(seed)
    modules = {"model": model}
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    no_decay = [p for p in params if p.ndim < 2]
    decay = [p for p in params if p.ndim >= 2]
    # fused AdamW: one vectorised kernel over all parameters; on this 2-core CPU a step over a 17M-parameter student
    # took 12.9 ms against 74.9 ms for the default per-tensor loop (`python scripts/bench_kernels.py adamw`)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=True)
    total = step_budget(len(train_loader(train_ds, collator, cfg.batch_size, seed, 0, group_by_length)),
                        accelerator.num_processes, cfg)
    # Accelerate steps a prepared scheduler once per process per optimizer step (unless split_batches): count the
    # schedule in those units, or under DDP the learning rate would decay num_processes times too fast
    per_step = 1 if getattr(accelerator, "split_batches", False) else accelerator.num_processes
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps(total) * per_step, total * per_step)
    prepared = accelerator.prepare(*modules.values(), optimizer, scheduler)
    modules = dict(zip(modules, prepared[: len(modules)]))
    optimizer, scheduler = prepared[len(modules):]

    result = FitResult(steps=0, best_metric=None, best_step=None, precision=precision)
    best_state: Optional[dict] = None
    step, epoch, skip = 0, 0, 0
    resume_rng = None
    ckpt = _latest_checkpoint(checkpoint_dir, desc, accelerator.is_main_process)
    if ckpt is not None:
        try:
            accelerator.load_state(str(ckpt))
        except Exception as e:  # files intact, yet not loadable here (another library version...): one line
            raise CompressError(f"{ckpt}: cannot resume from this checkpoint ({first_line(e)}); delete "
                                f"{checkpoint_dir} to train this stage from the start") from None
        meta = json.loads((ckpt / "trainer.json").read_text())
        step, epoch, skip = meta["step"], meta["epoch"], meta["batches_done_in_epoch"]
        result.best_metric, result.best_step, result.history = meta["best_metric"], meta["best_step"], meta["history"]
        if (ckpt / "best.safetensors").is_file():
            best_state = load_file(ckpt / "best.safetensors")
        result.resumed_from = step
        if meta.get("objective") is not None and hasattr(objective, "restore_state"):
            objective.restore_state(meta["objective"])  # e.g. the distiller's counts of misaligned rows
        resume_rng = _rng_state()  # the RNG as it was at the checkpoint (see the epoch loop)
        if accelerator.is_main_process:  # said where it shows (the CLI logs warnings only), as prune's step resume is
            print(f"[{desc}] resuming at step {step}/{total} ({ckpt})")

    def run_eval(tag: str) -> None:
        nonlocal best_state
        if evaluate is None:
            return
        unwrapped = accelerator.unwrap_model(modules["model"])
        unwrapped.eval()
        saved = {k: unwrapped.__dict__[k] for k in ("forward", "_original_forward") if k in unwrapped.__dict__}
        if "_original_forward" in saved:  # bf16: selection scores with the model's own forward, in fp32 as the
            _drop_autocast_forward(unwrapped)  # stage's metrics are, not with Accelerate's autocast one
        try:
            with torch.inference_mode():
                metrics = evaluate(unwrapped)
        finally:
            unwrapped.__dict__.pop("forward", None)
            unwrapped.__dict__.update(saved)
        unwrapped.train()
        value = next(iter(metrics.values()))
        result.history.append({"step": step, "tag": tag, **metrics})
        best = result.best_metric  # a nan (pearson of constant predictions, or of one held-out row) selects nothing:
        # kept as the best, every later nan left the first evaluation's weights to be restored after all the training
        if not math.isnan(value) and (best is None or math.isnan(best) or value > best):
            result.best_metric, result.best_step = value, step
            best_state = _state_of({k: accelerator.unwrap_model(m) for k, m in modules.items()})

    def save_checkpoint(batches_done: int) -> None:
        if checkpoint_dir is None:
            return
        target = Path(checkpoint_dir) / f"step-{step:08d}"
        tmp = target.with_name(target.name + ".tmp")
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        wait_for_everyone()
        accelerator.save_state(str(tmp))
        wait_for_everyone()  # every process's RNG state written before the main process names it done
        # what the objective counts (a collective call where it sums over processes: every process makes it)
        kept = objective.checkpoint_state() if hasattr(objective, "checkpoint_state") else None
        if accelerator.is_main_process:
            if best_state is not None:
                save_file(best_state, tmp / "best.safetensors")
            meta = {"step": step, "epoch": epoch, "batches_done_in_epoch": batches_done,
                    "best_metric": result.best_metric, "best_step": result.best_step, "history": result.history,
                    **({} if kept is None else {"objective": kept}),
                    "files": hash_tree(tmp)}  # every process's files written (the barrier above): checked on resume
            (tmp / "trainer.json").write_text(json.dumps(meta))
            if target.exists():  # a damaged checkpoint of this step, skipped on resuming from an earlier one
                shutil.rmtree(target)
            tmp.rename(target)
            # keep the two newest; a step-*.tmp a kill -9 left mid-save is no checkpoint (it counted as one of the two
            # newest: a rerun saving at other steps deleted good ones and kept it)
            done = sorted(p for p in Path(checkpoint_dir).glob("step-*") if not p.name.endswith(".tmp"))
            for old in done[:-2] + sorted(Path(checkpoint_dir).glob("step-*.tmp")):
                shutil.rmtree(old, ignore_errors=True)
        wait_for_everyone()

    paused = 0.0  # seconds of held-out scoring and checkpoint saves: not training (tokens/s leaves them out)

    def off_training(fn):
        def timed(*args):
            nonlocal paused
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                paused += time.perf_counter() - t
        return timed

    run_eval, save_checkpoint = off_training(run_eval), off_training(save_checkpoint)
    for m in modules.values():
        m.train()
    tokens, t0 = 0, time.perf_counter()

    def last_good() -> str:  # at the failure: the folder named only when a checkpoint was saved in it
        latest = _latest_checkpoint(checkpoint_dir, say=False)
        return "" if checkpoint_dir is None else f"; last good checkpoint {latest}" if latest else \
            "; no checkpoint saved yet"

    bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True,
               **bar_off(not accelerator.is_local_main_process))
    last_loss = float("nan")
    step_loss, step_terms = None, {}  # the optimizer step's loss (and each term): its micro-batches' weighted mean
    try:  # an interrupt closes the bar first: 'interrupted' is then the last line shown, not a redrawn bar
        while step < total:
            loader = accelerator.prepare_data_loader(
                train_loader(train_ds, collator, cfg.batch_size, seed, epoch, group_by_length))
            n_batches = len(loader)  # this process's, before a resume skips the done ones
            if skip:
                loader = accelerator.skip_first_batches(loader, skip)
            batches_done = skip
            skip = 0
            batches = iter(loader)
            if resume_rng is not None:
                # the first batch draws a base seed from the global RNG (the interrupted run drew it at epoch start):
                # put the checkpoint's RNG back after it, so dropout draws exactly what the uninterrupted run drew
                first = next(batches, None)
                _set_rng_state(resume_rng)
                resume_rng = None
                batches = itertools.chain([] if first is None else [first], batches)
            for batch in batches:
                with accelerator.accumulate(*modules.values()):
                    with accelerator.autocast():
                        loss, logs = objective(modules["model"], batch)
                    if not torch.isfinite(loss.detach()):
                        raise CompressError(f"{desc}: loss became {loss.item()} at step {step}, batch {batches_done}"
                                            f"{last_good()} (lower the learning rate or use fp32)")
                    # Accelerate divides every loss by grad_accum and steps at the epoch's end however many batches
                    # its last group holds: each batch's loss is weighted back up by its share of its group's rows,
                    # so a group's gradient is the mean loss of its rows (a short last group, or one holding the
                    # epoch's short last batch, as one batch of them all would give), for losses that are means over
                    # rows; a mean over a batch's tokens (hidden/attention matches) is weighted by rows too
                    # (docs/gpu.md)
                    weight = _accumulation_weight(batches_done, n_batches, cfg.grad_accum, cfg.batch_size,
                                                  len(train_ds) if accelerator.num_processes == 1 else None)
                    accelerator.backward(loss * weight if weight != 1 else loss)
                    share = weight / cfg.grad_accum  # what this micro-batch counts for in its step's loss
                    step_loss = loss.detach() * share + (0 if step_loss is None else step_loss)
                    for name, value in logs.items():
                        step_terms[name] = step_terms.get(name, 0.0) + value * share
                    if accelerator.sync_gradients:  # max_grad_norm 0: no clipping (Hugging Face's convention), the
                        # norm only measured: a finite loss with an inf/nan gradient made every weight nan silently
                        norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
                        if norm is not None and not torch.isfinite(torch.as_tensor(norm)):
                            raise CompressError(f"{desc}: the gradient norm became {float(norm)} at step {step}, "
                                                f"batch {batches_done}{last_good()} (lower the learning rate or use "
                                                f"fp32)")
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                batches_done += 1
                mask = batch.get("attention_mask")
                tokens += int(mask.sum()) * accelerator.num_processes if mask is not None else 0
                if not accelerator.sync_gradients:
                    continue
                step += 1
                last_loss, step_loss = step_loss.item(), None
                # the step's loss, then its terms where there are several (kd, hard, each match: unweighted), set
                # before the bar moves: set after, the bar showed the step before's loss (of its last micro-batch)
                terms = {name: f"{value:.4f}" for name, value in step_terms.items()} if len(step_terms) > 1 else {}
                step_terms = {}
                bar.set_postfix(loss=f"{last_loss:.4f}", **terms,
                                epoch=epoch + 1,  # as the history's "epoch N" tags count
                                tok_s=f"{tokens / max(time.perf_counter() - t0 - paused, 1e-9):.0f}", refresh=False)
                bar.update(1)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                    run_eval(f"step {step}")
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                    save_checkpoint(batches_done)
                if step >= total:
                    break
            else:
                epoch += 1
                if not result.history or result.history[-1]["step"] != step:  # not again when eval_every just did
                    run_eval(f"epoch {epoch}")
                continue
            break
        if not result.history or result.history[-1]["step"] != step:
            run_eval("end")
    finally:
        bar.close()
    result.steps = step
    result.wall_s = time.perf_counter() - t0
    result.tokens = tokens
    result.tokens_per_s = tokens / max(result.wall_s - paused, 1e-9)  # training only, as the bar shows it
    if best_state is not None:
        _load_state({k: accelerator.unwrap_model(m) for k, m in modules.items()}, best_state)
    elif result.history and accelerator.is_main_process:
        log.warning("every held-out score was nan (%s): the final weights are kept, none was selected",
                    next((k for k in result.history[0] if k not in ("step", "tag")), "metric"))
    if checkpoint_dir is not None and accelerator.is_main_process:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: nothing to resume
    for m in modules.values():
        _drop_autocast_forward(accelerator.unwrap_model(m)).eval()
    log.info("%s: %d steps, final loss %.4f, %.0f tokens/s", desc, step, last_loss, result.tokens_per_s)
    return result


def step_budget(n_batches: int, processes: int, cfg: TrainConfig) -> int:
    """The optimizer steps `fit` takes: ``cfg.epochs`` passes over ``n_batches`` batches shared out between
    ``processes`` (a group of fewer than ``grad_accum`` batches at an epoch's end is a step too), at most
    ``cfg.max_steps``."""
    steps_per_epoch = max(1, math.ceil(math.ceil(n_batches / processes) / cfg.grad_accum))
    total = max(1, math.ceil(round(cfg.epochs * steps_per_epoch, 6)))  # 2.2 x 25 is 55.00000000000001: 55, not 56
    return total if cfg.max_steps is None else min(total, cfg.max_steps)


def rows_read(train_ds, cfg: TrainConfig, seed: int, group_by_length: bool = True,
              processes: Optional[int] = None) -> list[int]:
    """The rows of ``train_ds`` that `fit` with the same arguments trains on, every process's together, in index
    order: each epoch's shuffled batches (`train_loader`) up to the step budget. Under DDP, Accelerate deals an
    epoch's batches out in turn (process r reads batches r, r + P, ...), so the first k steps of every process read
    the epoch's first k x grad_accum x P batches. Work done per row ahead of training (a teacher's logits) need cover
    only these rows when ``max_steps`` stops `fit` inside an epoch."""
    processes = processes or process_state().num_processes

    def batches(epoch: int) -> list[list[int]]:
        return list(train_loader(train_ds, None, cfg.batch_size, seed, epoch, group_by_length).batch_sampler)

    epoch, epoch_batches = 0, batches(0)
    left = step_budget(len(epoch_batches), processes, cfg)
    rows: set[int] = set()
    while left > 0 and len(rows) < len(train_ds):
        epoch_batches = epoch_batches if epoch == 0 else batches(epoch)
        per_process = math.ceil(len(epoch_batches) / processes)
        for batch in epoch_batches[: min(per_process, left * cfg.grad_accum) * processes]:
            rows.update(batch)
        left -= min(left, math.ceil(per_process / cfg.grad_accum))
        epoch += 1
    return sorted(rows)


def _drop_autocast_forward(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with the forward it had before `fit`. Accelerate's ``prepare`` under bf16 replaces the module's own
    ``forward`` with one wrapped in bf16 autocast (``model._original_forward`` keeps the old one), and leaves it there:
    after a bf16 fit every later call ran in bf16, the stage's "fp32" dev metrics, the next pruning step's Taylor
    scores and dependency tracing included. (Accelerate's ``unwrap_model(keep_fp32_wrapper=False)`` is not used: it
    unwinds every ``__wrapped__``, transformers' own forward decorators too.)"""
    original = model.__dict__.pop("_original_forward", None)
    if original is not None:
        if getattr(original, "__self__", None) is model and \
                getattr(original, "__func__", None) is getattr(type(model), "forward", None):
            model.__dict__.pop("forward", None)  # the class's forward again
        else:
            model.forward = original
    return model


_WARNED: set = set()


def _accelerator(precision: str, grad_accum: int, unused_parameters: bool = False) -> Accelerator:
    """An Accelerator for one fit. Accelerate keeps one global state per process and refuses a second Accelerator
    with another mixed precision; stages of one pipeline run may differ (a bf16 teacher, an fp32 recovery), so that
    state is rebuilt when the precision changes (the process group, PartialState, is kept). ``unused_parameters``:
    the loss may leave trained parameters without a gradient (DDP then looks for them each step instead of waiting
    for their reduction forever; a weight-0 term reaching them instead would have AdamW decay them)."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    mixed = "bf16" if precision == "bf16" else "no"
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched not in (None, "no", mixed) and launched not in _WARNED:  # "no" is also the launcher default
        _WARNED.add(launched)
        log.warning("accelerate launch --mixed_precision %s is overridden by the recipe's precision (%s here): set "
                    "precision in the recipe (fp32, bf16 or auto)", launched, precision)
    shared = AcceleratorState._shared_state
    if shared and str(shared.get("_mixed_precision")) != mixed:
        AcceleratorState._reset_state()
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if unused_parameters else []
    return Accelerator(mixed_precision=mixed, gradient_accumulation_steps=grad_accum, kwargs_handlers=handlers)


def main_process_writes(write: Callable[[], None]) -> None:
    """``write`` (to a folder every process shares: a stage's resume checkpoints) on the main process only: two
    processes writing and renaming the same temporary folder raced (a prune stage under torchrun failed in 3 of 6
    runs). No barrier: callers reach it under conditions that may differ between processes (another process may
    already find the file written), and what is written is read only by a later run."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or process_state().is_main_process:
        write()


def process_state():
    """Accelerate's process state (made once per process, shared by every Accelerator after it) on the CPU where there
    is no GPU or where ``accelerate launch --cpu`` / ``ACCELERATE_USE_CPU=1`` asks for it. PartialState reads no such
    variable: made for the GPU on a GPU host, fit's Accelerator (which does read it) then refused to start
    ("AcceleratorState has already been initialized and cannot be changed")."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"))


def process_device() -> torch.device:
    """Where this process trains, as `fit`'s Accelerator places the model (`process_state`): its GPU under
    ``accelerate launch``/torchrun, the CPU without one or with ``accelerate launch --cpu``. Teachers that label rows
    go there too."""
    return process_state().device


def wait_for_everyone() -> None:
    """Every process of a distributed run waits here (nothing to do in one process): Accelerate's barrier, except
    that a gloo group (processes training on the CPU) waits on the CPU. Accelerate names the process's local index as
    the barrier's device, which torch takes for a GPU when the host has one: `accelerate launch --cpu` on a one-GPU
    machine failed there with "CUDA error: invalid device ordinal" (and on several GPUs used them for CPU work)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
        dist.barrier()
    else:
        process_state().wait_for_everyone()


def from_main_process(value):
    """``value`` as the main process computed it, in every process of a distributed run (a pickled broadcast); in one
    process, ``value``. Every process must call it. For decisions that must agree everywhere though each process
    computes them (which heads and neurons a pruning step cuts: GPU kernels need not sum gradients in the same order
    twice, and models of different shapes cannot train together)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def end_distributed() -> None:
    """Tear this process's process group down (``accelerate launch`` / ``torchrun``) before the interpreter exits: a
    gloo group left to the exit can abort a process ("terminate called without an active exception") after all its
    work is done, which torchrun reports as a failed run (pytorch/pytorch#190489). Call it after success only: a
    process leaving on an error must not wait on the others (pytorch/torchtitan#1342). A no-op in one process (no
    PartialState is created there)."""
    from accelerate import PartialState

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        PartialState().destroy_process_group()


def native_bf16() -> bool:
    """Does this machine run bf16 matmuls natively: a CUDA GPU with bf16 units (Ampere and later; torch's default
    ``is_bf16_supported()`` also says yes for older GPUs that only emulate it, slower than fp32 there), or a CPU
    flagged avx512_bf16 / amx_bf16 (Linux /proc/cpuinfo)? The GPU is asked only where this process trains on it (not
    under ``accelerate launch --cpu`` on a GPU host)."""
    if torch.cuda.is_available() and process_device().type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    from compress.manifest import cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` where `native_bf16`, else ``fp32``; other values unchanged."""
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _accumulation_weight(batch: int, n_batches: int, grad_accum: int, batch_size: int, rows: Optional[int]) -> float:
    """What batch ``batch`` (of the epoch's ``n_batches``) multiplies its mean loss by before Accelerate divides it by
    ``grad_accum``: ``grad_accum`` x its rows / its group's rows. ``rows``: the epoch's rows, every batch full but the
    last (one process); None under DDP, where batches are even (Accelerate's default) and each counts alike."""
    start = batch // grad_accum * grad_accum
    group = max(1, min(grad_accum, n_batches - start))
    if rows is None:
        return grad_accum / group

    def size(i: int) -> int:
        return max(0, min(batch_size, rows - i * batch_size))

    return grad_accum * size(batch) / sum(size(i) for i in range(start, start + group))


def _latest_checkpoint(checkpoint_dir: Optional[Path], desc: str = "train", say: bool = True) -> Optional[Path]:
    """The newest checkpoint whose files are as saved (`_damage`); a damaged one is skipped, said (``say``) on one
    line: its model, optimizer or RNG file read back short or altered gave a traceback, or, an RNG file, a resume
    that was no longer exact (Accelerate only logs that one), on every rerun."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    done = sorted(p for p in Path(checkpoint_dir).glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / "trainer.json").is_file())
    for ckpt in reversed(done):
        damage = _damage(ckpt)
        if damage is None:
            return ckpt
        if say:
            print(f"[{desc}] skipping the damaged checkpoint {ckpt} ({damage})")
    return None


def _damage(ckpt: Path) -> Optional[str]:
    """What is wrong with a checkpoint's files against the sha256 its ``trainer.json`` recorded (None: nothing;
    checkpoints of before 2026-12-06 recorded none and are taken as they are)."""
    try:
        meta = json.loads((ckpt / "trainer.json").read_text())
        if not isinstance(meta, dict) or "step" not in meta:
            return "trainer.json holds no step"
    except (OSError, ValueError) as e:
        return f"trainer.json unreadable: {first_line(e)}"
    for rel, digest in (meta.get("files") or {}).items():
        if not (ckpt / rel).is_file():
            return f"{rel} missing"
        if sha256_file(ckpt / rel) != digest:
            return f"{rel} is not as saved (sha256 differs)"
    return None

