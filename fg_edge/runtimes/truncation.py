"""Texts longer than a model takes: cut them as `--truncate` says, and say so, or refuse them
(the policy: fg_edge.formats.positions)."""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from fg_edge.errors import InputMismatchError

log = logging.getLogger(__name__)


def check_lengths(encs: Sequence, max_length: int, truncate: str) -> None:
    """After encoding (`tokenizers` Encodings, truncated by the tokenizer unless `truncate` is 'error'): refuse a
    text over `max_length` under 'error', otherwise warn how many texts were cut."""
    if truncate == "error":
        over = [(i, len(e.ids)) for i, e in enumerate(encs) if len(e.ids) > max_length]
        if over:
            i, n = over[0]
            raise InputMismatchError(f"{len(over)} text(s) are longer than {max_length} tokens (text {i + 1}: {n} "
                                     "tokens); shorten them or pass --truncate right|left")
        return
    cut = sum(1 for e in encs if e.overflowing)
    if cut:
        kept, other = ("start", "left") if truncate == "right" else ("end", "right")
        log.warning("%d of %d text(s) were longer than %d tokens and were cut to it (keeping the %s; --truncate %s "
                    "keeps the %s, --truncate error refuses)", cut, len(encs), max_length, kept, other,
                    "end" if kept == "start" else "start")


def fit_prompt(ids: list[int], limit: Optional[int], max_new_tokens: int, truncate: str,
               lead: Sequence[int] = ()) -> list[int]:
    """A decoder prompt that leaves room for `max_new_tokens` inside `limit` positions: cut as `truncate` says
    ('left' keeps the end and the leading special tokens `lead`, e.g. BOS; 'right' keeps the start), or refused."""
    if not ids:
        raise InputMismatchError("the prompt tokenises to nothing; give some text")
    if not limit:
        return ids
    if max_new_tokens >= limit:
        raise InputMismatchError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt: the model holds "
                                 f"{limit} positions; use --max-new-tokens {limit - 1} or less")
    room = limit - max_new_tokens
    if len(ids) <= room:
        return ids
    if truncate == "error":
        raise InputMismatchError(f"the prompt has {len(ids)} tokens; with --max-new-tokens {max_new_tokens} the "
                                 f"model's {limit} positions leave room for {room}; shorten it or pass --truncate "
                                 "left|right")
    # the special tokens the template puts first (BOS; not a trailing EOS of the empty text) stay in front
    n = 0
    while n < min(len(lead), len(ids)) and ids[n] == lead[n]:
        n += 1
    lead = list(ids[:n]) if n < room else []
    kept = ids[:room] if truncate == "right" else lead + ids[len(ids) - (room - len(lead)):]
    log.warning("the prompt has %d tokens; cut to %d (keeping the %s) so that %d new tokens fit the model's %d "
                "positions (--truncate error refuses instead)", len(ids), len(kept),
                "start" if truncate == "right" else "end", max_new_tokens, limit)
    return kept
