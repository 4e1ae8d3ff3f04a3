"""ASMG's per-coordinate GRU against the update rule written out one coordinate at a time."""

import torch

from sml_torchrec.modules.meta_generator import ColumnGRU


def _slow(g, xs, h0):
    """The GRU of the module docstring, one coordinate and one step at a time."""
    rows, steps, cols = xs.shape
    h, ys = h0.clone(), []
    for s in range(steps):
        y, h_next = torch.empty(rows, cols), torch.empty_like(h)
        for c in range(cols):
            x, hc = xs[:, s, c : c + 1], h[:, c]
            z = torch.sigmoid(x * g.u[0, c] + hc @ g.w[0, c])
            r = torch.sigmoid(x * g.u[1, c] + hc @ g.w[1, c])
            cand = torch.tanh(x * g.u[2, c] + (r * hc) @ g.w[2, c])
            h_next[:, c] = (1 - z) * hc + z * cand
            y[:, c] = h_next[:, c] @ g.w_y[c] + g.b_y[c]
        h = h_next
        ys.append(y)
    return torch.stack(ys, dim=1), h


@torch.no_grad()
def test_matches_the_rule_and_any_column_block():
    torch.manual_seed(0)
    g = ColumnGRU(8, 3)
    xs, h0 = torch.randn(5, 4, 8), torch.randn(5, 8, 3)
    ys, h = g(xs, h0)
    want_ys, want_h = _slow(g, xs, h0)
    assert ys.shape == (5, 4, 8) and h.shape == (5, 8, 3)
    assert torch.allclose(ys, want_ys, atol=1e-6) and torch.allclose(h, want_h, atol=1e-6)
    # A column block (a column-wise shard) gives exactly those columns of the whole.
    block_ys, block_h = g(xs[:, :, 2:6], h0[:, 2:6], col=2)
    assert torch.allclose(block_ys, ys[:, :, 2:6], atol=1e-6)
    assert torch.allclose(block_h, h[:, 2:6], atol=1e-6)
    # One step is the first step of the sequence.
    h1, y1 = g.step(xs[:, 0], h0)
    assert torch.allclose(y1, ys[:, 0], atol=1e-6)


def test_gradients_reach_every_weight():
    g = ColumnGRU(4, 2)
    ys, _ = g(torch.randn(6, 3, 4), torch.zeros(6, 4, 2))
    ys.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())
