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


PROBES = ("Héllo WORLD, naïve CAFÉ: don't stop!", "中文 text Ünïcödé ﬁ ½ 🙂 ÅNGSTRÖM", "tabs\tand  spaces\u200bzero-width",
          "[CLS] <s> [MASK] </s> [UNK] <pad> [SEP] <mask>")
"""Texts on which two tokenizers of one vocabulary may differ: case, accents, CJK, compatibility characters, emoji,
white space, special tokens' strings; each alone, and in pairs."""


def same_tokenizer(a, b) -> bool:
    """True when two tokenizers give the same model inputs (ids, token types, which inputs) for every text: the same
    class, vocabulary, specials and truncation side, and the same inputs on `PROBES`, alone and in pairs. The
    vocabulary alone called a copy with ``strip_accents: false``, or one made one-token-type
    (`modeling.one_token_type`), the same: the teacher then labelled the student's tokens, and those logits were
    cached for other students. Judged on what they give, not on their files: a tokenizer.json converted from a
    vocab.txt (another post-processor kind, the same ids) or a slow tokenizer saved again is the same."""
    if a is b:
        return True
    if not (type(a).__name__ == type(b).__name__ and a.get_vocab() == b.get_vocab()
            and a.all_special_tokens == b.all_special_tokens and a.truncation_side == b.truncation_side):
        return False
    pairs = list(zip(PROBES, PROBES[1:] + PROBES[:1]))
    return all(dict(a(*texts)) == dict(b(*texts)) for texts in [(t,) for t in PROBES] + pairs)


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
