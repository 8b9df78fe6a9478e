"""Which prompt rows share a prefix, and how `TextEncoder` packs them to run each prefix once.

Under CLIP's causal mask a position sees only itself and the positions before it. Rows that
begin with the same embeddings (SOS and the context vectors before the class name, for every
class of a prompt form) therefore have the same hidden states at those positions in every
layer: the encoder runs them once per group (a "block") and lets each row's own positions
attend to the block's prefix keys and values plus their own.

A call of the transformer is packed into one sequence of tokens `[T, width]`: first the
prefixes of its blocks, then its rows' own positions, bucketed so that the rows of a bucket
have the same number of own positions and belong to blocks of one prefix length, the same
number of rows from each block. Per-token work (LayerNorms, projections, MLPs) runs on all
tokens at once; only attention looks at the buckets. With truncation no position after a row's
EOT is run at all.
"""

from typing import NamedTuple

import torch


class SharedPrefix(NamedTuple):
    """Which prompt rows begin with the same embeddings: the rows of one `group` are identical
    at the positions before their `length` (equal within a group, at most each row's EOT
    position, so that every row keeps its EOT among its own positions)."""

    group: torch.Tensor  # [N] group id of each row
    length: torch.Tensor  # [N] positions the row shares with the rest of its group


def shared_prefix(keys, group, eot):
    """The `SharedPrefix` of rows whose embeddings are determined by `keys` `[N, L]` or
    `[N, L, k]` (token ids, context slots): each group shares its longest common run of keys
    from position 0, cut at the group's first EOT."""
    length = torch.empty_like(eot)
    same_keys = keys.reshape(keys.shape[0], keys.shape[1], -1)
    for g in group.unique():
        rows = (group == g).nonzero().squeeze(1)
        same = (same_keys[rows] == same_keys[rows[:1]]).all(dim=2).all(dim=0)
        common = int(same.long().cumprod(0).sum())
        length[rows] = min(common, int(eot[rows].min()))
    return SharedPrefix(group, length)


def prefix_calls(eot, prefix, chunk_size=0):
    """Row indices of each transformer call `TextEncoder` makes for rows with a `SharedPrefix`.

    Rows are ordered by prefix length, group and EOT position, so that the rows of a group are
    adjacent; `chunk_size` cuts that order into calls of at most that many rows, and a group
    cut in two runs its prefix in both calls.
    """
    order = torch.arange(len(eot), device=eot.device)
    for key in (eot, prefix.group, prefix.length):  # stable sorts: by length, group, then EOT
        order = order[key[order].argsort(stable=True)]
    return list(order.split(chunk_size)) if chunk_size else [order]


class Packing(NamedTuple):
    """How one call's rows run as one packed token sequence (`pack`)."""

    prefixes: tuple  # (prefix length P, number of blocks G) of each prefix segment, in token order
    buckets: tuple  # (segment, its blocks [G'] or None for all of them, rows per block m, own positions S)
    sizes: tuple  # tokens of each prefix segment, then of each bucket (their order in the sequence)
    token_rows: torch.Tensor  # [T] the prompt row each token is read from
    token_positions: torch.Tensor  # [T] its position in that row
    rows: torch.Tensor  # [N] the call's rows in bucket order: the order of its features
    eot_tokens: torch.Tensor  # [N] where each of these rows' EOT is in the sequence


def pack(rows, eot, prefix, width=None):
    """The `Packing` of the prompt rows `rows` (one call of `prefix_calls`, in its order).

    A row runs its own positions up to its EOT, or up to `width` (untruncated reference
    layout). Each group of the call is one block, its first row standing for the prefix.
    """
    group, length, eot = (t[rows].cpu() for t in (prefix.group, prefix.length, eot))
    end = eot + 1 if width is None else torch.full_like(eot, width)
    _, block_sizes = torch.unique_consecutive(group, return_counts=True)
    block_firsts = (block_sizes.cumsum(0) - block_sizes).tolist()
    segments, place = _segments(block_firsts, length[block_firsts].tolist())
    # Runs: adjacent rows of one block that end at the same position.
    block_of_row = torch.arange(len(block_sizes)).repeat_interleave(block_sizes)
    _, run_sizes = torch.unique_consecutive(block_of_row * (int(end.max()) + 1) + end, return_counts=True)
    run_firsts = run_sizes.cumsum(0) - run_sizes
    buckets = {}  # (segment, rows per block, own positions) -> [(block within segment, first row)]
    for first, size, block, stop in zip(
        run_firsts.tolist(), run_sizes.tolist(), block_of_row[run_firsts].tolist(), end[run_firsts].tolist()
    ):
        segment, index = place[block]
        key = (segment, size, stop - segments[segment][0])
        buckets.setdefault(key, []).append((index, first))

    token_rows = [torch.tensor(firsts).repeat_interleave(p) for p, firsts in segments]
    token_positions = [torch.arange(p).repeat(len(firsts)) for p, firsts in segments]
    sizes = [p * len(firsts) for p, firsts in segments]
    specs, order, eot_tokens = [], [], []
    for (segment, m, span), members in buckets.items():
        p, firsts = segments[segment]
        blocks = [b for b, _ in members]
        local = (torch.tensor([f for _, f in members])[:, None] + torch.arange(m)).flatten()
        eot_tokens.append(sum(sizes) + torch.arange(len(local)) * span + eot[local] - p)
        token_rows.append(local.repeat_interleave(span))
        token_positions.append(torch.arange(p, p + span).repeat(len(local)))
        sizes.append(len(local) * span)
        order.append(local)
        specs.append((segment, None if blocks == list(range(len(firsts))) else torch.tensor(blocks), m, span))
    device = rows.device
    return Packing(
        tuple((p, len(firsts)) for p, firsts in segments),
        tuple((s, b if b is None else b.to(device), m, span) for s, b, m, span in specs),
        tuple(sizes),
        rows[torch.cat(token_rows).to(device)],
        torch.cat(token_positions).to(device),
        rows[torch.cat(order).to(device)],
        torch.cat(eot_tokens).to(device),
    )


def _segments(block_firsts, block_lengths):
    """Blocks grouped by prefix length (adjacent in a call): [(P, first rows of its blocks)],
    and each block's (segment, index within the segment)."""
    segments, place = [], []
    for first, p in zip(block_firsts, block_lengths):
        if not segments or segments[-1][0] != p:
            segments.append((p, []))
        place.append((len(segments) - 1, len(segments[-1][1])))
        segments[-1][1].append(first)
    return segments, place
