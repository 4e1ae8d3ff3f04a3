import pytest
import torch
import torch.distributed as dist

from recsys_common.process_group import run_local
from sml_torchrec.distributed.sharded_topk import gather_full_topk, sharded_topk, topk_reference


def _case(seed: int, B: int = 9, n: int = 13, d: int = 3, E: int = 25):
    """Integer-valued embeddings: scores are exact, and with values in -2..2 ties abound."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-2, 3, (B, d), generator=g).float()
    items = torch.randint(-2, 3, (n, d), generator=g).float()
    eq = torch.randint(0, B, (E,), generator=g)
    ei = torch.randint(0, n, (E,), generator=g)
    return q, items, eq, ei


def test_reference_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 5.0], [0.0, 0.0]])
    # Scores 1, 2, 1, 0: id 0 and id 2 tie, the lower id goes first; id 1 masked.
    v, i = topk_reference(q, items, 5, torch.tensor([0]), torch.tensor([1]))
    assert i.tolist() == [[0, 2, 3, -1, -1]]
    assert v.tolist() == [[1.0, 1.0, 0.0, float("-inf"), float("-inf")]]


@pytest.mark.parametrize("k", [1, 4, 13, 20])
def test_single_process_equals_reference(k):
    q, items, eq, ei = _case(0)
    ref = topk_reference(q, items, k, eq, ei)
    # A small query chunk and a non-zero offset exercise the chunking and the id shift.
    v, i = sharded_topk(q, items, 0, k, eq, ei, query_chunk=4)
    assert torch.equal(v, ref[0]) and torch.equal(i, ref[1])
    v, i = sharded_topk(q, items[5:], 5, k, eq, ei, query_chunk=2)
    r5 = topk_reference(q, items, k, torch.cat([eq, torch.arange(9).repeat_interleave(5)]),
                        torch.cat([ei, torch.arange(5).repeat(9)]))
    assert torch.equal(v, r5[0]) and torch.equal(i, r5[1])


def test_ties_are_broken_by_lower_id():
    q = torch.ones(2, 1)
    items = torch.ones(10, 1)  # every item scores 1
    v, i = sharded_topk(q, items, 0, 4)
    assert i.tolist() == [[0, 1, 2, 3]] * 2


# (row split over 2 ranks, k): uneven blocks with k > n_local on rank 1; rank 0 empty; rank 1
# empty with k > the table (padding); k = the whole table (masked items become padding).
CASES = [([9, 4], 6), ([0, 13], 5), ([13, 0], 20), ([6, 7], 13)]


def _rank_fn(seed: int, chunk: int):
    q, items, eq, ei = _case(seed)
    rank = dist.get_rank()
    outs = []
    for splits, k in CASES:
        off = sum(splits[:rank])
        block = items[off : off + splits[rank]]
        got = sharded_topk(q, block, off, k, eq, ei, query_chunk=chunk)
        base = gather_full_topk(q, block, off, k, eq, ei)
        # numpy, not tensors: a tensor on the result queue is shared memory owned by the rank
        # process, which may already have exited when the parent unpickles it.
        outs.append([(v.numpy(), i.numpy()) for v, i in (got, base)])
    return outs


def test_two_ranks_equal_reference():
    # One process group for all cases: spawning ranks costs seconds, the cases milliseconds.
    per_rank = run_local(_rank_fn, 2, (1, 4), timeout_s=120, threads=1)
    q, items, eq, ei = _case(1)
    for c, (_, k) in enumerate(CASES):
        ref_v, ref_i = topk_reference(q, items, k, eq, ei)
        for outs in per_rank:
            for v, i in outs[c]:
                assert torch.equal(torch.from_numpy(v), ref_v), CASES[c]
                assert torch.equal(torch.from_numpy(i), ref_i), CASES[c]
        # The data must make the rule matter: ties inside the top k, masking that changes it.
        finite = ref_v[:, 1:] > float("-inf")
        assert ((ref_v[:, 1:] == ref_v[:, :-1]) & finite).any()
        assert not torch.equal(topk_reference(q, items, k)[1], ref_i)
