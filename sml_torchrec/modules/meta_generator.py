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

    def _weights(self, col: int, cols: int) -> tuple[torch.Tensor, ...]:
        """The columns' weights laid out for batched matmuls over the coordinates."""
        c = slice(col, col + cols)
        u = self.u[:, c].unsqueeze(2)  # [3, C, 1, H]
        w_zr = torch.cat([self.w[0, c], self.w[1, c]], dim=-1)  # [C, H, 2H]
        return u, w_zr, self.w[2, c], self.w_y[c].unsqueeze(-1), self.b_y[c].unsqueeze(-1)

    @staticmethod
    def _step(x: torch.Tensor, h: torch.Tensor, weights: tuple[torch.Tensor, ...]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step, coordinates first: ``x [C, R]``, ``h [C, R, H]`` -> ``h', y [C, R]``."""
        u, w_zr, w_g, w_y, b_y = weights
        xu = x.unsqueeze(-1) * u  # [3, C, R, H]
        z, r = torch.sigmoid(xu[:2] + torch.bmm(h, w_zr).unflatten(-1, (2, -1)).movedim(-2, 0))
        g = torch.tanh(xu[2] + torch.bmm(r * h, w_g))
        h = h + z * (g - h)
        return h, torch.bmm(h, w_y).squeeze(-1) + b_y

    def step(
        self, x: torch.Tensor, h: torch.Tensor, col: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self._weights(col, x.shape[1])
        h, y = self._step(x.T, h.transpose(0, 1), weights)
        return h.transpose(0, 1), y.T

    def forward(
        self, xs: torch.Tensor, h0: torch.Tensor, col: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self._weights(col, xs.shape[2])
        h, ys = h0.transpose(0, 1), []
        for s in range(xs.shape[1]):
            h, y = self._step(xs[:, s].T, h, weights)
            ys.append(y.T)
        return torch.stack(ys, dim=1), h.transpose(0, 1)
