"""Teacher and student with different tokenizers: are the two tokenizations the same tokens, position by position?

MPNet and BERT/MiniLM share one WordPiece vocabulary but number it differently (MPNet's ids are shifted) and use
different special tokens (``<s> ... </s>`` vs ``[CLS] ... [SEP]``). `id_map` translates every teacher id to the
student id of the same token (specials by role: CLS/BOS, SEP/EOS, PAD, UNK, MASK), -1 where there is none.
`aligned_rows` then checks a padded batch: a row aligns when both sides have the same number of real tokens and
the translated teacher ids equal the student ids at every real position. Position-wise losses (hidden states,
attention maps) are used only on aligned rows; logit KD needs no alignment.
"""

from __future__ import annotations

import torch

_ROLES = (("cls_token", "bos_token"), ("sep_token", "eos_token"), ("pad_token",), ("unk_token",), ("mask_token",))


def same_tokenizer(a, b) -> bool:
    """True when two tokenizers produce identical ids for every text (same vocabulary, specials and class)."""
    if a is b:
        return True
    return (type(a).__name__ == type(b).__name__ and a.get_vocab() == b.get_vocab()
            and a.all_special_tokens == b.all_special_tokens and getattr(a, "do_lower_case", None)
            == getattr(b, "do_lower_case", None))


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
