"""Building blocks of Ng et al.'s (2020) FusionNet: NetVLAD coding, multi-head non-local self-attention,
center loss. Used by :mod:`genrecli.models.neural.fusionnet`; written from the paper's equations (1)-(13).

* :class:`NetVLAD` -- Arandjelovic et al.'s trainable VLAD (the paper's Eqs. 1-5): a soft assignment of every
  local descriptor ``f_j`` to ``K`` clusters, ``a_j(k) = softmax_k(w_k^T f_j + b_k)``, the assigned residuals
  summed over descriptors, ``V(k, d) = sum_j a_j(k) (f_j(d) - c_k(d))``, then intra-normalisation (each
  cluster's residual to unit L2 norm) and an L2 normalisation of the whole ``K x D`` coding (Algorithm 2,
  step 9).
* :class:`MultiHeadSelfAttention` -- the paper's Eqs. (6)-(10), a non-local block with the embedded Gaussian
  ``phi(X_i, X_j) = exp((W_k X_i)^T (W_q X_j))`` normalised over ``j``, ``g(X_j) = W_g X_j`` (``W_*`` are
  1x1 convolutions, i.e. linear maps applied to every token), and the residual ``Z_i = X_i + alpha Y_i``
  with a learned scale ``alpha``; ``N`` heads (independent ``W_q, W_k, W_g, alpha``) whose outputs are
  concatenated ("concatenating outputs of self-attention for N times").
* :func:`center_loss` -- Wen et al.'s center loss (the paper's Eq. 12), averaged over the batch.

Choices not stated by the paper
-------------------------------
* NetVLAD: descriptors are L2-normalised before the assignment (as in Arandjelovic et al.'s NetVLAD, which
  the paper cites for the layer; ``normalize_input=False`` keeps them raw); cluster centres start as random
  unit vectors (no k-means initialisation: the network is trained end to end from scratch).
* Attention: ``alpha`` starts at 0 (each head starts as the identity and learns how much non-local
  context to add, as in SAGAN); ``W_q`` and ``W_k`` keep the token dimension (no bottleneck); no
  ``1/sqrt(d)`` temperature (the paper's Eq. 9 has none).
* Center loss: ``1/2 ||x_i - c_{y_i}||^2`` averaged over the batch (Eq. 12 sums; a mean keeps ``lambda``
  independent of the batch size, like the mean softmax loss beside it); the centres are parameters of the
  network learned by the same optimiser (Wen et al.'s separate moving-average update is not used).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class NetVLAD(nn.Module):
    """NetVLAD over a set of ``dim``-dimensional local descriptors with ``clusters`` visual words.

    ``forward(f)`` takes descriptors ``(batch, n, dim)`` and returns the normalised coding
    ``(batch, clusters, dim)`` (unit L2 norm over its ``clusters * dim`` values, each cluster's row of unit
    norm unless it is all zero). :meth:`from_map` turns a conv feature map ``(batch, dim, H, W)`` into its
    ``H * W`` descriptors.
    """

    def __init__(self, dim: int, clusters: int, *, normalize_input: bool = True):
        super().__init__()
        self.dim, self.clusters, self.normalize_input = int(dim), int(clusters), bool(normalize_input)
        self.assign = nn.Linear(self.dim, self.clusters)  # w_k, b_k of Eq. (4)
        self.centers = nn.Parameter(F.normalize(torch.randn(self.clusters, self.dim), dim=1))  # c_k

    @staticmethod
    def from_map(fmap: torch.Tensor) -> torch.Tensor:
        """(batch, D, H, W) -> (batch, H*W, D) descriptors."""
        return fmap.flatten(2).transpose(1, 2)

    def _descriptors(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f, dim=-1) if self.normalize_input else f

    def soft_assignment(self, f: torch.Tensor) -> torch.Tensor:
        """(batch, n, clusters): a_j(k) of Eq. (4); every row sums to one."""
        return torch.softmax(self.assign(self._descriptors(f)), dim=-1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f = self._descriptors(f)
        a = torch.softmax(self.assign(f), dim=-1)  # (B, n, K)
        # Eq. (5): sum_j a_j(k) f_j - (sum_j a_j(k)) c_k
        v = torch.einsum("bnk,bnd->bkd", a, f) - a.sum(dim=1).unsqueeze(-1) * self.centers.unsqueeze(0)
        v = F.normalize(v, dim=2)  # intra-normalisation
        return F.normalize(v.flatten(1), dim=1).view_as(v)  # L2 normalisation of the whole coding


class MultiHeadSelfAttention(nn.Module):
    """``heads`` non-local self-attention heads over ``tokens`` of width ``dim``, outputs concatenated.

    ``forward(x)``: (batch, M, dim) -> (batch, M, heads * dim), head ``n`` giving
    ``Z = X + alpha_n softmax_j((W_k X_i)^T (W_q X_j)) W_g X_j``.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.dim, self.heads = int(dim), int(heads)
        self.query = nn.Linear(self.dim, self.heads * self.dim)
        self.key = nn.Linear(self.dim, self.heads * self.dim)
        self.value = nn.Linear(self.dim, self.heads * self.dim)
        self.alpha = nn.Parameter(torch.zeros(self.heads))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, heads, M, M) weights; row i is the distribution over j of Eqs. (6)-(7), (9)."""
        b, m, _ = x.shape
        q = self.query(x).view(b, m, self.heads, self.dim).transpose(1, 2)
        k = self.key(x).view(b, m, self.heads, self.dim).transpose(1, 2)
        return torch.softmax(k @ q.transpose(-1, -2), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, m, d = x.shape
        g = self.value(x).view(b, m, self.heads, d).transpose(1, 2)  # (B, N, M, d)
        y = self.attention(x) @ g
        z = x.unsqueeze(1) + self.alpha.view(1, -1, 1, 1) * y  # Eq. (10) per head
        return z.transpose(1, 2).reshape(b, m, self.heads * d)


def center_loss(embeddings: torch.Tensor, targets: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``mean_i 1/2 ||x_i - c_{y_i}||^2`` (Eq. 12 averaged over the batch); 0 when every row is on its centre."""
    diff = embeddings - centers[targets]
    return 0.5 * (diff * diff).sum(dim=1).mean()


def pool_size(length: int, want: int = 2) -> int:
    """Pool by ``want`` along an axis unless it is already shorter (a 5-block VGG on a short map)."""
    return want if length >= want else 1


def pooled(length: int, size: int) -> int:
    """Length after a ceil-mode pooling of ``size``."""
    return int(math.ceil(length / size))
