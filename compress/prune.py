"""Structured pruning of BERT-family sequence classifiers: whole attention heads and FFN neurons (model surgery only).

The hidden size never changes; what goes is attention heads (the q/k/v rows of a head and the matching columns of
the attention output) and FFN neurons (a row of ``intermediate.dense`` and the matching column of ``output.dense``).

1. **Score** every head and neuron on torch-pruning groups (`score`): the group rooted at a layer's ``query`` output
   channels couples the q/k/v rows with the attention output's columns, the group rooted at ``intermediate.dense``
   couples its rows with ``output.dense``'s columns. Magnitude: ``GroupMagnitudeImportance`` (L1 or L2); Taylor:
   ``GroupTaylorImportance`` (|weight x gradient|) summed over calibration batches of task training data. A head
   scores the mean of its channels. Scores are raw (not normalised per layer), so a global ranking can prune some
   layers harder than others.
2. **Plan** what each layer keeps (`plan`, pure): a ratio per kind ranked over all layers (``scope: global``, the
   default, gives non-uniform layers) or within each layer (``per_layer``), per-layer overrides, or a budget on the
   encoder's parameters or MACs (one ratio for both kinds, found by bisection). At least one head and one neuron stay
   in every layer, unless ``drop_empty_layers``: then a layer may lose both, and is removed.
3. **Cut** with torch-pruning's DependencyGraph (`apply`): ``DG.get_pruning_group(query, prune_linear_out_channels,
   channels).prune()`` removes the rows/columns from every coupled layer (the same call BasePruner/MetaPruner makes
   after its own ranking; we rank ourselves because MetaPruner only removes heads when its width scope also prunes
   channels, has no parameter/MAC budget, and does not say which heads it removed).
4. **Rewrite the bookkeeping** torch-pruning leaves stale: each layer's ``num_attention_heads`` and
   ``all_head_size``, HF's ``pruned_heads`` (per module and in the config, original head ids),
   ``config.intermediate_size``/``num_hidden_layers``, and record what each layer kept in original numbering
   (``config.compress_pruning``, see `Provenance`) and its sizes (``config.compress_layer_sizes``).

Loading: with the same FFN width in every layer, stock ``AutoModelForSequenceClassification.from_pretrained`` rebuilds
the model exactly (heads through ``config.pruned_heads``). With per-layer FFN widths, transformers cannot express the
model; `load_pruned` (also used by `compress.modeling.load_trained`) builds it from the config, resizes each layer's
FFN from ``compress_layer_sizes`` and then loads the weights (strictly).

MPNet (``attention.attn.q/k/v/o``) is pruned the same way. Its relative-position bias is one tensor with a row per
original head, shared by all layers: `dependency_graph` traces it detached (else torch-pruning couples every layer's
heads through it), and `select_bias_heads` gives each layer its kept heads' rows, a forward pre-hook that
`load_pruned` installs again (stock ``from_pretrained`` of a head-pruned MPNet fails in its first forward).
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch_pruning as tp
from torch import nn

from compress.config import PruneConfig
from compress.errors import CompressError

log = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# ----------------------------------------------------------------------------------------------------- provenance
@dataclass
class LayerState:
    """One encoder layer: where it came from and what it kept, in the numbering of the unpruned model."""

    source: int
    heads: list[int]
    ffn: list[int]


@dataclass
class Provenance:
    """The unpruned geometry and what every remaining layer kept (``config.compress_pruning``)."""

    num_layers: int
    num_heads: int
    head_size: int
    intermediate_size: int
    layers: list[LayerState] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Provenance":
        return cls(d["num_layers"], d["num_heads"], d["head_size"], d["intermediate_size"],
                   [LayerState(int(x["source"]), list(x["heads"]), list(x["ffn"])) for x in d["layers"]])


@dataclass(frozen=True)
class Layout:
    """Where an encoder layer keeps its attention (dotted paths from the layer)."""

    attn: str
    """The module with the q/k/v linears and the head bookkeeping (num_attention_heads, attention_head_size,
    all_head_size)."""
    q: str
    k: str
    v: str
    out: str
    """The attention output projection, whose input columns follow the heads."""

    @property
    def needed(self) -> tuple[str, ...]:
        return (f"{self.attn}.{self.q}", f"{self.attn}.{self.k}", f"{self.attn}.{self.v}", self.out,
                "intermediate.dense", "output.dense")


LAYOUTS = (Layout("attention.self", "query", "key", "value", "attention.output.dense"),  # BERT, RoBERTa, MiniLM...
           Layout("attention.attn", "q", "k", "v", "attention.attn.o"))  # MPNet


def layout(layer: nn.Module) -> Optional[Layout]:
    return next((lay for lay in LAYOUTS if all(_has(layer, n) for n in lay.needed)), None)


def self_attention(layer: nn.Module) -> nn.Module:
    """The layer's self-attention module (BERT's ``attention.self``, MPNet's ``attention.attn``)."""
    return _get(layer, layout(layer).attn)


def query(layer: nn.Module) -> nn.Linear:
    lay = layout(layer)
    return _get(layer, f"{lay.attn}.{lay.q}")


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a BERT-family model (BERT, RoBERTa, MiniLM, ELECTRA, MPNet...)."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not layers or any(layout(layer) is None for layer in layers):
        raise CompressError(f"{type(model).__name__}: not a BERT-family encoder (need encoder.layer[*] with "
                            "attention.self.query/key/value and attention.output.dense, or MPNet's "
                            "attention.attn.q/k/v/o, and intermediate.dense, output.dense)")
    return layers


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _has(module: nn.Module, dotted: str) -> bool:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return False
    return True


def provenance(model: nn.Module) -> Provenance:
    """The model's pruning record; for a model never pruned by us, the identity record built from its shapes
    (honouring heads already removed through HF's ``config.pruned_heads``)."""
    layers = encoder_layers(model)
    cfg = model.config
    record = getattr(cfg, "compress_pruning", None)
    if record:
        prov = Provenance.from_dict(record)
    else:
        head_size = self_attention(layers[0]).attention_head_size
        pruned = {int(k): set(v) for k, v in (getattr(cfg, "pruned_heads", None) or {}).items()}
        prov = Provenance(len(layers), cfg.num_attention_heads, head_size, cfg.intermediate_size, [
            LayerState(i, [h for h in range(cfg.num_attention_heads) if h not in pruned.get(i, ())],
                       list(range(layer.intermediate.dense.out_features)))
            for i, layer in enumerate(layers)])
    if len(prov.layers) != len(layers):
        raise CompressError(f"config.compress_pruning lists {len(prov.layers)} layers, the model has {len(layers)}")
    for i, (state, layer) in enumerate(zip(prov.layers, layers)):
        q, inter = query(layer), layer.intermediate.dense
        if q.out_features != len(state.heads) * prov.head_size or inter.out_features != len(state.ffn):
            raise CompressError(f"config.compress_pruning: layer {i} records {len(state.heads)} heads and "
                                f"{len(state.ffn)} FFN neurons, its weights have {q.out_features // prov.head_size}"
                                f" and {inter.out_features}")
    return prov


# ----------------------------------------------------------------------------------------------------------- cost
def layer_cost(hidden: int, heads: int, head_size: int, ffn: int, seq_len: int) -> tuple[int, int]:
    """(parameters, multiply-accumulates for one sequence of ``seq_len`` tokens) of one encoder layer.
    A layer with no heads and no FFN neurons is dropped: (0, 0)."""
    if heads == 0 and ffn == 0:
        return 0, 0
    inner = heads * head_size
    params = 4 * hidden * inner + 3 * inner + hidden + 2 * hidden * ffn + ffn + hidden + 4 * hidden
    macs = seq_len * (4 * hidden * inner + 2 * hidden * ffn) + 2 * seq_len * seq_len * inner
    return params, macs


def encoder_cost(prov: Provenance, hidden: int, seq_len: int, layers: Optional[list[LayerState]] = None) -> tuple[int, int]:
    """Total (parameters, MACs) of the encoder layers described by ``layers`` (default: the provenance's)."""
    costs = [layer_cost(hidden, len(s.heads), prov.head_size, len(s.ffn), seq_len) for s in (layers or prov.layers)]
    return sum(c[0] for c in costs), sum(c[1] for c in costs)


def model_macs(model: nn.Module, seq_len: int) -> int:
    """MACs of one sequence through the encoder, pooler and classifier (embedding lookups are free)."""
    prov, hidden = provenance(model), model.config.hidden_size
    macs = encoder_cost(prov, hidden, seq_len)[1]
    linears = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and ".encoder." not in f".{name}."]
    # pooler/classifier: the first token only; ELECTRA's embeddings_project: every token
    return macs + sum(m.in_features * m.out_features * (seq_len if name.endswith("embeddings_project") else 1)
                      for name, m in linears)


def layer_table(model: nn.Module, seq_len: int) -> list[dict]:
    """One row per encoder layer of ``model``: source layer, heads and FFN neurons kept, parameters (counted on the
    modules) and MACs (analytic) at ``seq_len`` tokens."""
    prov = provenance(model)
    rows = []
    for layer, state in zip(encoder_layers(model), prov.layers):
        _, macs = layer_cost(model.config.hidden_size, len(state.heads), prov.head_size, len(state.ffn), seq_len)
        rows.append({"layer": state.source, "heads": len(state.heads), "ffn": len(state.ffn),
                     "params": sum(p.numel() for p in layer.parameters()), "macs": macs})
    return rows


# -------------------------------------------------------------------------------------------------------- scoring
@dataclass
class Scores:
    """Importance of every current head and FFN neuron, one tensor per current layer (higher: more important)."""

    heads: list[torch.Tensor]
    ffn: list[torch.Tensor]


def example_inputs(model: nn.Module, seq_len: int = 8) -> dict[str, torch.Tensor]:
    """A tiny batch for tracing the dependency graph (no token_type_ids for models without them, e.g. MPNet)."""
    device = next(model.parameters()).device
    ids = torch.full((1, seq_len), min(100, model.config.vocab_size - 1), dtype=torch.long, device=device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


def dependency_graph(model: nn.Module) -> tp.DependencyGraph:
    """torch-pruning's graph of ``model``. MPNet adds one relative-position bias, computed once from an embedding
    with a column per head, to the attention scores of every layer: traced as is, that sum couples every layer's
    q/k channels with each other and with the embedding's columns (channel indices that mean nothing there). The
    graph is traced with the bias detached, so a head group is its layer's q/k/v rows and output columns, as in BERT;
    each layer then takes its kept heads' rows of the bias (`select_bias_heads`). torch-pruning traces in eval mode
    and leaves the model there: every module gets its own mode back."""
    encoder = getattr(getattr(model, "base_model", model), "encoder", None)
    compute = getattr(encoder, "compute_position_bias", None)
    modes = [(m, m.training) for m in model.modules()]
    if compute is not None:
        encoder.compute_position_bias = lambda *a, **k: compute(*a, **k).detach()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs(model),
                                                     output_transform=lambda out: out.logits.sum())
    finally:
        if compute is not None:
            del encoder.compute_position_bias  # the class's method again
        for m, training in modes:
            m.training = training


def _take_bias_heads(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook on an MPNet self-attention: keep the position bias's rows of the heads this layer kept."""
    keep = module.compress_bias_heads
    if keep is None:
        return None
    if len(args) > 3 and args[3] is not None:  # MPNetAttention passes (hidden, mask, head_mask, position_bias)
        args = (*args[:3], args[3].index_select(1, keep), *args[4:])
    elif kwargs.get("position_bias") is not None:
        kwargs = {**kwargs, "position_bias": kwargs["position_bias"].index_select(1, keep)}
    return args, kwargs


def select_bias_heads(model: nn.Module, prov: Optional["Provenance"] = None) -> None:
    """For encoders with a shared relative-position bias (MPNet): make every layer that lost heads add only its
    kept heads' bias (original head ids from the pruning record). transformers' own ``prune_heads`` does not, so a
    head-pruned MPNet fails in its first forward; our loader (`load_pruned`) and `apply` call this. Nothing to do
    for BERT-style encoders."""
    encoder = getattr(getattr(model, "base_model", model), "encoder", None)
    if not hasattr(encoder, "relative_attention_bias"):
        return
    prov = prov or provenance(model)
    device = encoder.relative_attention_bias.weight.device
    for layer, state in zip(encoder_layers(model), prov.layers):
        attn = self_attention(layer)
        keep = None if len(state.heads) == prov.num_heads else torch.tensor(state.heads, device=device)
        attn.register_buffer("compress_bias_heads", keep, persistent=False)
        if not hasattr(attn, "compress_bias_hook"):
            attn.compress_bias_hook = attn.register_forward_pre_hook(_take_bias_heads, with_kwargs=True)


def _groups(model: nn.Module, dg: tp.DependencyGraph):
    """Per layer: (head group over all q channels, FFN group over all intermediate neurons)."""
    for layer in encoder_layers(model):
        q, inter = query(layer), layer.intermediate.dense
        yield (dg.get_pruning_group(q, tp.prune_linear_out_channels, list(range(q.out_features))),
               dg.get_pruning_group(inter, tp.prune_linear_out_channels, list(range(inter.out_features))))


def score(model: nn.Module, method: str, batches: Optional[Iterable[dict]] = None) -> Scores:
    """Importance of heads and FFN neurons: ``l1``/``l2`` weight magnitude, or ``taylor`` (|w x dL/dw| summed over
    ``batches``: dicts of model inputs with ``labels``, e.g. calibration batches of task training data)."""
    if method not in ("l1", "l2", "taylor"):
        raise CompressError(f"prune.importance: unknown method {method!r} (l1, l2, taylor)")
    dg = dependency_graph(model)
    groups = list(_groups(model, dg))
    head_size = self_attention(encoder_layers(model)[0]).attention_head_size
    if method == "taylor":
        if batches is None:
            raise CompressError("prune.importance: taylor needs calibration batches")
        imp = tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None)
        totals: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None
        was_training = model.training
        model.eval()  # no dropout: the gradients of the function we keep
        n = 0
        for batch in batches:
            model.zero_grad(set_to_none=True)
            device = next(model.parameters()).device
            inputs = {k: v.to(device) for k, v in batch.items() if k in (*MODEL_INPUTS, "labels")}
            with torch.enable_grad():
                model(**inputs).loss.backward()
            now = [(imp(hg), imp(fg)) for hg, fg in groups]
            totals = now if totals is None else [(a + c, b + d) for (a, b), (c, d) in zip(totals, now)]
            n += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        if n == 0:
            raise CompressError("prune.importance: taylor got no calibration batches")
        raw = totals
    else:
        imp = tp.importance.GroupMagnitudeImportance(p=1 if method == "l1" else 2, group_reduction="mean",
                                                     normalizer=None)
        raw = [(imp(hg), imp(fg)) for hg, fg in groups]
    return Scores(heads=[h.detach().float().cpu().view(-1, head_size).mean(1) for h, _ in raw],
                  ffn=[f.detach().float().cpu() for _, f in raw])


# ------------------------------------------------------------------------------------------------------- planning
def layer_index(name: str, prov: Provenance, where: str = "prune") -> int:
    """``layer.3``, ``encoder.layer.3`` or ``bert.encoder.layer.3`` (numbering of the unpruned model) -> 3."""
    m = re.fullmatch(r"(?:[\w.]*\.)?layer\.(\d+)", name.strip())
    if m is None or int(m.group(1)) >= prov.num_layers:
        raise CompressError(f"{where}.layers.{name}: unknown layer (the model has layer.0 .. layer.{prov.num_layers - 1})")
    kept = [layer.source for layer in prov.layers]
    if prov.layers and int(m.group(1)) not in kept:  # dropped by an earlier pruning: the override was ignored
        raise CompressError(f"{where}.layers.{name}: that layer was dropped by an earlier pruning (the model keeps "
                            f"{', '.join(f'layer.{i}' for i in kept)}, numbered as in the unpruned model)")
    return int(m.group(1))


def _select(scores: list[torch.Tensor], keep, min_keep: int) -> list[list[int]]:
    """Positions kept per layer, best first by score. ``keep``: one total ranked over all layers, or a list of
    per-layer counts. Every layer keeps at least ``min_keep`` (its best units) whatever the total asks."""
    order = [torch.argsort(s, descending=True, stable=True).tolist() for s in scores]
    if isinstance(keep, list):
        counts = [min(len(o), max(min_keep, k)) for o, k in zip(order, keep)]
    else:
        counts = [min(len(o), min_keep) for o in order]
        rest = [(float(scores[i][p]), -i, -j, i) for i, o in enumerate(order) for j, p in enumerate(o[counts[i]:])]
        rest.sort(reverse=True)
        for *_, i in rest[: max(0, keep - sum(counts))]:
            counts[i] += 1
    return [sorted(o[:c]) for o, c in zip(order, counts)]


def plan(model_or_prov, scores: Scores, cfg: PruneConfig, *, fraction: float = 1.0, hidden: Optional[int] = None,
         seq_len: int = 128, where: str = "prune", base: Optional[Provenance] = None,
         warn: bool = False) -> list[Optional[LayerState]]:
    """What every current layer keeps after pruning ``fraction`` of the way to ``cfg``'s target (iterative steps
    use 1/steps, 2/steps, ...); ``None`` for a layer to drop. Ratios and budgets count the units of ``base``, the
    model as it was before this pruning began (default: the model as it is now; iterative steps pass the record of
    the model their first step cut): a model pruned earlier (a pruned teacher, a student of one) loses ``heads`` of
    the heads it has, not of those its unpruned ancestor had. ``where``: the section the errors name (``search`` for
    `compress search`'s widths); ``warn``: print where one head and one neuron a layer keep more than the ratios ask."""
    prov = model_or_prov if isinstance(model_or_prov, Provenance) else provenance(model_or_prov)
    base = prov if base is None else base
    if hidden is None and not isinstance(model_or_prov, Provenance):
        hidden = model_or_prov.config.hidden_size
    if len(scores.heads) != len(prov.layers) or len(scores.ffn) != len(prov.layers):
        raise CompressError(f"scores cover {len(scores.heads)} layers, the model has {len(prov.layers)}")
    overrides = {layer_index(name, prov, where): _partway(o, fraction) for name, o in (cfg.layers or {}).items()}
    if cfg.keep_params is None and cfg.keep_macs is None:
        try:
            return _plan_ratios(prov, base, scores, cfg, overrides, cfg.heads * fraction, cfg.ffn * fraction,
                                warn=warn)
        except _Empty as e:
            raise CompressError(f"{where}.{e.kind}: this target removes every {e.unit} of every layer; keep some "
                                f"(a smaller ratio)") from None
    which, budget = ("params", cfg.keep_params) if cfg.keep_params is not None else ("macs", cfg.keep_macs)
    if hidden is None:
        raise CompressError(f"{where}.keep_{which}: planning a budget from a pruning record needs the hidden size")
    k = 0 if which == "params" else 1
    full = encoder_cost(base, hidden, seq_len)[k]
    target = full * (1.0 - (1.0 - budget) * fraction)

    def cost(r: float, heads_cap: float):
        try:
            layers = _plan_ratios(prov, base, scores, cfg, overrides, min(r, heads_cap), r)
        except _Empty:  # a model without any head (or neuron) left is no answer
            return math.inf, None
        return encoder_cost(prov, hidden, seq_len, [s for s in layers if s is not None])[k], layers

    best = cost(0.0, 0.0)
    if best[0] <= target:
        return best[1]
    # the largest ratios that keep a head and an FFN neuron (heads: then FFN ratios go on past it; 2 heads stopped it
    # at 74%): in the largest layer (a layer that rounds to none keeps one without drop_empty_layers, and in
    # per_layer scope), or in the whole model (global ranking with drop_empty_layers: the per-layer limits kept two
    # of each at least, and refused budgets half as small as the smallest model)
    caps = [tuple(1.0 - 0.51 / f(len(getattr(s, kind)) for s in base.layers) for kind in ("heads", "ffn"))
            for f in (max, sum)]
    (heads_cap, hi), top = min((((h, f), cost(f, h)) for h, f in caps), key=lambda c: c[1][0])
    lo = 0.0
    if top[0] > target:
        raise CompressError(f"{where}.keep_{which}: {budget} cannot be met: the smallest model this allows keeps "
                            f"{top[0] / full:.3f} of the encoder's {which}")
    best = top
    for _ in range(40):
        mid = (lo + hi) / 2
        c = cost(mid, heads_cap)
        if c[0] <= target:
            hi, best = mid, c
        else:
            lo = mid
    return best[1]


def _partway(override, fraction: float):
    """A layer's override ``fraction`` of the way (its ratios scaled), as the global ratios are at each step."""
    return replace(override, **{k: getattr(override, k) * fraction for k in ("heads", "ffn")
                                if getattr(override, k) is not None})


class _Empty(Exception):
    def __init__(self, kind: str):
        self.kind, self.unit = kind, "head" if kind == "heads" else "FFN neuron"


def _plan_ratios(prov: Provenance, base: Provenance, scores: Scores, cfg: PruneConfig, overrides: dict,
                 heads_ratio: float, ffn_ratio: float, warn: bool = False) -> list[Optional[LayerState]]:
    kept = {}
    for kind, ratio in (("heads", heads_ratio), ("ffn", ffn_ratio)):
        units = {s.source: len(getattr(s, kind)) for s in base.layers}  # the base's, by layer (dropped ones too)
        kind_scores = getattr(scores, kind)
        min_keep = 0 if cfg.drop_empty_layers else 1
        own = {i for i, s in enumerate(prov.layers) if getattr(overrides.get(s.source), kind, None) is not None}
        pool = [i for i in range(len(prov.layers)) if i not in own]
        keep: list = [0] * len(prov.layers)
        for i in own:
            r = getattr(overrides[prov.layers[i].source], kind)
            keep[i] = round((1.0 - r) * units[prov.layers[i].source])
        if cfg.scope == "per_layer" or not pool:
            for i in pool:
                keep[i] = round((1.0 - ratio) * units[prov.layers[i].source])
            chosen = _select(kind_scores, keep, min_keep)  # a layer asked for 0 units still keeps min_keep
            # judged as `global` judges it: 4 heads at 0.9 round to 0 a layer, yet 6 such layers ask for 2 heads
            total = round((1.0 - ratio) * sum(units[prov.layers[i].source] for i in pool))
            if pool and total > 0 and not any(chosen):  # drop_empty_layers (min_keep 0): every layer rounds to 0;
                chosen = _select(kind_scores, keep, 1)  # as without it (and as global), each keeps its best unit
            asked = sum(keep)
        else:  # global ranking over the pool layers (the base's units, those of layers dropped since included)
            overridden = {s.source for s in base.layers if getattr(overrides.get(s.source), kind, None) is not None}
            total = round((1.0 - ratio) * sum(n for source, n in units.items() if source not in overridden))
            chosen = [None] * len(prov.layers)
            pool_sel = _select([kind_scores[i] for i in pool], total, min_keep)
            own_sel = _select([kind_scores[i] for i in sorted(own)], [keep[i] for i in sorted(own)], min_keep)
            for i, sel in zip(pool, pool_sel):
                chosen[i] = sel
            for i, sel in zip(sorted(own), own_sel):
                chosen[i] = sel
            asked = sum(keep[i] for i in own) + total
        requested = [keep[i] for i in own] + ([total] if pool else [])
        if sum(requested) <= 0 or sum(len(c) for c in chosen) == 0:
            raise _Empty(kind)
        if warn and sum(len(c) for c in chosen) > asked:  # a layer kept keeps one unit of each kind at least
            unit = "heads" if kind == "heads" else "FFN neurons"
            print(f"[prune] prune.{kind}: the ratios ask to keep {asked} of {sum(units.values())} {unit}; every "
                  f"layer keeps at least one{'' if cfg.drop_empty_layers else ' (drop_empty_layers: false)'}, so "
                  f"{sum(len(c) for c in chosen)} are kept")
        kept[kind] = chosen
    out: list[Optional[LayerState]] = []
    for i, state in enumerate(prov.layers):
        h, f = kept["heads"][i], kept["ffn"][i]
        if not h and not f:
            out.append(None)  # drop_empty_layers: the whole layer goes
            continue
        if not h:  # a layer that keeps FFN neurons keeps its best head, and vice versa (no zero-width matmuls)
            h = [int(torch.argmax(scores.heads[i]))]
        if not f:
            f = [int(torch.argmax(scores.ffn[i]))]
        out.append(LayerState(state.source, [state.heads[p] for p in h], [state.ffn[p] for p in f]))
    return out


# -------------------------------------------------------------------------------------------------------- surgery
def apply(model: nn.Module, new_layers: list[Optional[LayerState]]) -> Provenance:
    """Cut ``model`` in place down to ``new_layers`` (from `plan`; original numbering; ``None`` drops a layer) and
    rewrite its bookkeeping and config. Units can only be removed, never restored."""
    prov = provenance(model)
    layers = encoder_layers(model)
    if len(new_layers) != len(layers):
        raise CompressError(f"a pruning plan for {len(new_layers)} layers does not fit a model with {len(layers)}")
    for old, new in zip(prov.layers, new_layers):  # the whole plan is checked before anything is cut
        if new is None:
            continue
        if not set(new.heads) <= set(old.heads) or not set(new.ffn) <= set(old.ffn) or not new.heads or not new.ffn:
            raise CompressError(f"layer {old.source}: a plan may only remove heads/neurons, and must keep at least one"
                                " of each in a layer it keeps")
    # recorded as the weights keep them: in original order, once each (torch-pruning never reorders rows)
    new_layers = [None if new is None else LayerState(old.source, sorted(set(new.heads)), sorted(set(new.ffn)))
                  for old, new in zip(prov.layers, new_layers)]
    kept = [i for i, new in enumerate(new_layers) if new is not None]
    if not kept:
        raise CompressError("prune: this plan drops every layer")
    dg = dependency_graph(model)
    d = prov.head_size
    for layer, old, new in zip(layers, prov.layers, new_layers):
        if new is None:
            continue
        heads = [p for p, h in enumerate(old.heads) if h not in set(new.heads)]
        if heads:
            channels = [p * d + j for p in heads for j in range(d)]
            group = dg.get_pruning_group(query(layer), tp.prune_linear_out_channels, channels)
            group.prune()
        neurons = [p for p, n in enumerate(old.ffn) if n not in set(new.ffn)]
        if neurons:
            group = dg.get_pruning_group(layer.intermediate.dense, tp.prune_linear_out_channels, neurons)
            group.prune()
        _rewrite_layer(layer, len(new.heads), d, set(range(prov.num_heads)) - set(new.heads))
    if len(kept) < len(layers):
        base = getattr(model, "base_model", model)
        base.encoder.layer = nn.ModuleList([layers[i] for i in kept])
    new_prov = Provenance(prov.num_layers, prov.num_heads, prov.head_size, prov.intermediate_size,
                          [copy.deepcopy(new_layers[i]) for i in kept])
    write_config(model, new_prov)
    provenance(model)  # re-check: the record matches the weights
    select_bias_heads(model, new_prov)
    return new_prov


def _rewrite_layer(layer: nn.Module, heads: int, head_size: int, removed: set[int]) -> None:
    sa = self_attention(layer)
    sa.num_attention_heads = heads
    sa.attention_head_size = head_size
    sa.all_head_size = heads * head_size
    layer.attention.pruned_heads = set(removed)
    assert query(layer).out_features == sa.all_head_size == _get(layer, layout(layer).out).in_features


def write_config(model: nn.Module, prov: Provenance) -> None:
    """The config fields that let the pruned model be rebuilt: ``num_hidden_layers``, ``pruned_heads`` (original head
    ids per current layer, HF's convention), ``intermediate_size`` (the common FFN width, or the widest when they
    differ), ``compress_layer_sizes`` and ``compress_pruning``."""
    cfg = model.config
    cfg.num_hidden_layers = len(prov.layers)
    cfg.pruned_heads = {i: sorted(set(range(prov.num_heads)) - set(s.heads))
                        for i, s in enumerate(prov.layers) if len(s.heads) < prov.num_heads}
    widths = [len(s.ffn) for s in prov.layers]
    cfg.intermediate_size = max(widths)
    cfg.compress_layer_sizes = [{"heads": len(s.heads), "ffn": len(s.ffn)} for s in prov.layers]
    cfg.compress_pruning = prov.to_dict()


def uniform_ffn(config) -> bool:
    """Whether stock ``from_pretrained`` can rebuild the model (every layer has the same FFN width)."""
    sizes = getattr(config, "compress_layer_sizes", None)
    return not sizes or len({s["ffn"] for s in sizes}) == 1


def prune(model: nn.Module, cfg: PruneConfig, *, scores: Optional[Scores] = None, batches=None,
          fraction: float = 1.0, seq_len: int = 128, where: str = "prune", base: Optional[Provenance] = None
          ) -> Provenance:
    """Score (unless ``scores`` are given), plan and cut in place: one pruning step (``where``, ``base``: as
    `plan`)."""
    if scores is None:
        scores = score(model, cfg.importance, batches)
    return apply(model, plan(model, scores, cfg, fraction=fraction, seq_len=seq_len, where=where, base=base))


# ---------------------------------------------------------------------------------------------------- save / load
def save_pruned(model: nn.Module, tokenizer, folder: str | Path) -> None:
    """safetensors + config (with the pruning record) + tokenizer."""
    from compress.modeling import save

    save(model, tokenizer, folder)


def load_pruned(folder: str | Path):
    """(model, tokenizer) from a folder written by `save_pruned` (or any save_pretrained folder): `load_pruned_model`
    and the folder's tokenizer."""
    from transformers import AutoTokenizer

    model = load_pruned_model(folder)
    return model, AutoTokenizer.from_pretrained(folder)


def load_pruned_model(folder: str | Path):
    """The model of a folder written by `save_pruned` (or any save_pretrained folder), in eval mode.

    Uniform FFN width: stock ``from_pretrained``. Per-layer FFN widths: the model is built from its config (heads
    are removed by transformers itself from ``config.pruned_heads``), each layer's FFN linears are resized from
    ``config.compress_layer_sizes``, then the safetensors weights are loaded strictly (every key, every shape).
    Either way an MPNet gets its per-layer position-bias heads back (`select_bias_heads`)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CompressError(f"{folder}: not a saved model folder (no config.json)")
    config = AutoConfig.from_pretrained(folder)
    if uniform_ffn(config):
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        select_bias_heads(model)
        return model.eval()
    model = AutoModelForSequenceClassification.from_config(config)
    layers = encoder_layers(model)
    sizes = config.compress_layer_sizes
    if len(sizes) != len(layers):
        raise CompressError(f"{folder}/config.json: compress_layer_sizes has {len(sizes)} entries, "
                            f"num_hidden_layers is {len(layers)}")
    for layer, size in zip(layers, sizes):
        hidden = layer.intermediate.dense.in_features
        layer.intermediate.dense = nn.Linear(hidden, size["ffn"])
        layer.output.dense = nn.Linear(size["ffn"], hidden)
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise CompressError(f"{folder}: no model*.safetensors weights")
    state = {}
    for f in files:
        state.update(load_file(f))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CompressError(f"{folder}: weights do not fit compress_layer_sizes ({str(e).splitlines()[0]})") from None
    select_bias_heads(model)
    return model.eval()
