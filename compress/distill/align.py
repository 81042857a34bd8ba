"""Teacher and student with different tokenizers: are the two tokenizations the same tokens, position by position?

MPNet and BERT/MiniLM share one WordPiece vocabulary but number it differently (MPNet's ids are shifted) and use
different special tokens (``<s> ... </s>`` vs ``[CLS] ... [SEP]``). `id_map` translates every teacher id to the
student id of the same token (specials by role: CLS/BOS, SEP/EOS, PAD, UNK, MASK), -1 where there is none.
`aligned_rows` then checks a padded batch: a row aligns when both sides have the same number of real tokens and
the translated teacher ids equal the student ids at every real position. Position-wise losses (hidden states,
attention maps) are used only on aligned rows; logit KD needs no alignment.
"""

from __future__ import annotations

import json

import torch

_ROLES = (("cls_token", "bos_token"), ("sep_token", "eos_token"), ("pad_token",), ("unk_token",), ("mask_token",))


def same_tokenizer(a, b) -> bool:
    """True when two tokenizers give identical model inputs for every text: same class, vocabulary and specials, the
    same normalizer, pre-tokenizer and post-processor (a fast tokenizer's tokenizer.json, its truncation and padding
    left out: set per call; a slow one's settings), the same model inputs and truncation side. The vocabulary alone
    called a copy with ``strip_accents: false``, or one made one-token-type (`modeling.one_token_type`), the same:
    the teacher then labelled the student's tokens, and those logits were cached for other students."""
    if a is b:
        return True
    return (type(a).__name__ == type(b).__name__ and a.get_vocab() == b.get_vocab()
            and a.all_special_tokens == b.all_special_tokens and getattr(a, "do_lower_case", None)
            == getattr(b, "do_lower_case", None) and list(a.model_input_names) == list(b.model_input_names)
            and a.truncation_side == b.truncation_side and _pipeline(a) == _pipeline(b))


def _pipeline(tok):
    """How ``tok`` turns text into ids beyond its vocabulary: a fast tokenizer's tokenizer.json without its vocabulary
    (compared apart) nor its per-call truncation and padding; a slow one's settings without file paths."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return {k: v for k, v in tok.init_kwargs.items() if not k.endswith("_file") and k != "name_or_path"}
    data = json.loads(backend.to_str())
    data.pop("truncation", None)
    data.pop("padding", None)
    data["model"] = {k: v for k, v in (data.get("model") or {}).items() if k != "vocab"}
    return data


def _role_ids(tok) -> dict[int, int]:
    """special token id -> role number."""
    out = {}
    for role, names in enumerate(_ROLES):
        for name in names:
            token = getattr(tok, name, None)
            if token is not None:
                tid = tok.convert_tokens_to_ids(token)
                if tid is not None and (tid != tok.unk_token_id or name == "unk_token"):
                    out.setdefault(tid, role)
    return out


def id_map(teacher_tok, student_tok) -> torch.Tensor:
    """LongTensor over teacher ids: the student id of the same token (specials matched by role), or -1."""
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    table = torch.full((max(max(t_vocab.values()) + 1, len(teacher_tok)),), -1, dtype=torch.long)
    t_roles, s_roles = _role_ids(teacher_tok), _role_ids(student_tok)
    s_by_role = {role: sid for sid, role in s_roles.items()}
    for token, tid in t_vocab.items():
        if tid in t_roles:
            sid = s_by_role.get(t_roles[tid], -1)
        else:
            sid = s_vocab.get(token, -1)
            if sid in s_roles:  # a plain teacher token that is a special on the student side: no counterpart
                sid = -1
        table[tid] = sid
    return table


def aligned_rows(s_ids: torch.Tensor, s_mask: torch.Tensor, t_ids: torch.Tensor, t_mask: torch.Tensor,
                 table: torch.Tensor) -> torch.Tensor:
    """BoolTensor (batch,): rows whose teacher and student tokenizations are the same tokens position by position
    (right padding assumed, as our collator pads)."""
    s_len, t_len = s_mask.sum(1), t_mask.sum(1)
    width = min(s_ids.shape[1], t_ids.shape[1])
    mapped = table.to(t_ids.device)[t_ids[:, :width]]
    real = s_mask[:, :width].bool()
    same = ((mapped == s_ids[:, :width]) | ~real).all(dim=1)
    return same & (s_len == t_len)
