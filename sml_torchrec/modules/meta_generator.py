"""ASMG's meta model-generator for one embedding table: a GRU per embedding coordinate.

The generator reads a table's rows of the past periods' models, one model a step, and after each
step outputs a generated row. As in the ASMG authors' code (danni9594/ASMG, ``gru_parallel``),
every coordinate j of a row is its own scalar sequence with its own GRU weights (shared by all
rows), hidden size H:

    z = σ(x u_z + h W_z)    r = σ(x u_r + h W_r)    g = tanh(x u_g + (r ⊙ h) W_g)
    h' = (1 - z) ⊙ h + z ⊙ g                        y = h' w_y + b_y

with x the coordinate's value in the step's model, h its hidden state [H], and no gate biases.
Because coordinates never mix, the generator applies to any block of a table's rows and columns
(a row-, table- or column-wise shard) given the columns' offset: no communication.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ColumnGRU(nn.Module):
    """One GRU per embedding coordinate, run over a sequence of a table's rows.

    Args:
        dim: the table's embedding dimension d (one GRU per coordinate).
        hidden: hidden size H of each coordinate's GRU.

    Shapes: ``step(x [R, C], h [R, C, H], col)`` -> ``(h' [R, C, H], y [R, C])`` for the columns
    ``col .. col + C - 1`` of the table; ``forward(xs [R, S, C], h0 [R, C, H], col)`` runs S
    steps and returns ``(ys [R, S, C], h_S [R, C, H])``.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.u = nn.Parameter(torch.empty(3, dim, hidden))  # input weights of z, r, g
        self.w = nn.Parameter(torch.empty(3, dim, hidden, hidden))  # recurrent weights
        self.w_y = nn.Parameter(torch.empty(dim, hidden))
        self.b_y = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Glorot-uniform as TF computes it for the authors' per-coordinate variables of shape
        [d, fan_in, fan_out] (d counts into both fans), TF's default for every variable."""
        d, h = self.dim, self.hidden
        for p, fan_in, fan_out in ((self.u, 1, h), (self.w, h, h), (self.w_y, h, 1),
                                   (self.b_y, 1, 1)):
            p.uniform_(-1.0, 1.0).mul_(math.sqrt(6.0 / (d * (fan_in + fan_out))))

    def step(
        self, x: torch.Tensor, h: torch.Tensor, col: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cols = slice(col, col + x.shape[1])
        u, w = self.u[:, cols], self.w[:, cols]
        xu = x.unsqueeze(0).unsqueeze(-1) * u.unsqueeze(1)  # [3, R, C, H]
        hw = torch.einsum("rch,gchk->grck", h, w[:2])
        z = torch.sigmoid(xu[0] + hw[0])
        r = torch.sigmoid(xu[1] + hw[1])
        g = torch.tanh(xu[2] + torch.einsum("rch,chk->rck", r * h, w[2]))
        h = (1 - z) * h + z * g
        y = torch.einsum("rch,ch->rc", h, self.w_y[cols]) + self.b_y[cols]
        return h, y

    def forward(
        self, xs: torch.Tensor, h0: torch.Tensor, col: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, ys = h0, []
        for s in range(xs.shape[1]):
            h, y = self.step(xs[:, s], h, col)
            ys.append(y)
        return torch.stack(ys, dim=1), h
