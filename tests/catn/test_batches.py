"""Batches of the two flows: documents of the right domain, disjoint shards per rank."""

import numpy as np
import pytest
import torch

from catn.batch import SOURCE, TARGET
from catn.data.batches import doc_tensors, epoch_plan, make_flow_batch, training_batches
from catn.data.dataset import prepare_eta
from catn.data.synthetic import SyntheticConfig, synthetic_corpus


@pytest.fixture(scope="module")
def data():
    corpus = synthetic_corpus(SyntheticConfig(overlap_users=120, source_only_users=20,
                                              target_only_users=20, items_source=20,
                                              items_target=20, seed=2))
    return prepare_eta(corpus, 1.0, doc_len=16)


def test_flow_batch_gathers_each_unique_document_once(data):
    tensors = doc_tensors(data)
    users = torch.tensor([5, 3, 5, 7])
    items = torch.tensor([2, 2, 4, 1])
    b = make_flow_batch(tensors, SOURCE, users, items, None, use_aux=True)
    assert b.user_docs.shape == (3, 16) and b.item_docs.shape == (3, 16)
    # the user's source document, the items' target documents
    assert torch.equal(b.user_docs[b.user_index], tensors["user_docs_s"][users].long())
    assert torch.equal(b.item_docs[b.item_index], tensors["item_docs_t"][items].long())
    assert torch.equal(b.aux_docs[b.user_index], tensors["aux_docs_s"][users].long())
    b = make_flow_batch(tensors, TARGET, users, items, None, use_aux=False)
    assert b.aux_docs is None
    assert torch.equal(b.item_docs[b.item_index], tensors["item_docs_s"][items].long())


@pytest.mark.parametrize("n_s,n_t,batch,world", [(100, 300, 64, 1), (5, 500, 64, 2),
                                                 (10, 10, 3, 4)])
def test_epoch_plan_splits_the_batch_over_ranks_and_flows(n_s, n_t, batch, world):
    plan = epoch_plan(n_s, n_t, batch, world)
    assert plan.per_step_s >= 1 and plan.per_step_t >= 1
    assert plan.per_step_s + plan.per_step_t == max(2, batch // world)
    assert plan.steps * (plan.per_step_s + plan.per_step_t) * world >= n_s + n_t


def test_ranks_draw_disjoint_shards_covering_every_pair(data):
    tensors = doc_tensors(data)
    n_s, n_t = len(data.train_s[0]), len(data.train_t[0])
    world = 2
    plan = epoch_plan(n_s, n_t, 64, world)
    seen = []
    for rank in range(world):
        pairs = set()
        for fs, ft in training_batches(data, tensors, plan, 7, rank, world, True):
            assert fs.user_domain == TARGET and ft.user_domain == SOURCE
            pairs |= {("s", int(u), int(i)) for u, i in zip(fs.users, fs.items)}
            pairs |= {("t", int(u), int(i)) for u, i in zip(ft.users, ft.items)}
        seen.append(pairs)
    assert not seen[0] & seen[1]
    every = {("s", int(u), int(i)) for u, i in zip(*data.train_s[:2])} | {
        ("t", int(u), int(i)) for u, i in zip(*data.train_t[:2])}
    assert seen[0] | seen[1] == every
    # the same seed draws the same batches
    a = next(training_batches(data, tensors, plan, 7, 0, world, True))[0].users
    b = next(training_batches(data, tensors, plan, 7, 0, world, True))[0].users
    assert np.array_equal(a.numpy(), b.numpy())
