"""DDFP's density model of the 256-d decoder feature: a GLOW-style normalizing flow and a Gaussian-mixture prior
with one learnable mean per class.

How the pieces map to the released code (Gavinwxy/DDFP `model/flow/*.py`, built on FrEIA 0.2 as pip installs it):

* `AffineCoupling` is FrEIA's `GLOWCouplingBlock(subnet_fc, clamp=2.0)`: x = x1 | x2 (halves),
  y1 = exp(s2(x2))·x1 + t2(x2), y2 = exp(s1(y1))·x2 + t1(y1), each subnet predicting [s, t], and
  log|det J| = the sum of the clamped s of both halves. The soft clamp is FrEIA's "ATAN" activation,
  s = clamp·0.636·atan(s_raw) (`soft_clamp`). FrEIA before its 2021 rewrite divided by the clamp inside the atan
  (clamp·0.636·atan(s_raw/clamp)); DDFP unpacks `(z, log_jac) = inn(x)`, which only the rewritten API returns, so
  the released runs used the form without the division.
* `FixedPermutation` is FrEIA's `PermuteRandom(seed=k)`: y = x[:, perm] with perm = NumPy's permutation of D
  after `np.random.seed(k)`. Difference: we draw it from a local `np.random.RandomState(k)` (same values), so
  building the flow leaves NumPy's global RNG alone, where FrEIA reseeds it.
* `GlowFlow` is DDFP's `RNVP`: n_blocks × [coupling, permutation(seed=k)], then every trainable parameter
  (weights and biases) overwritten with 0.05·N(0, 1), in the same parameter order.
* `GaussianMixturePrior` is DDFP's `FastGMM` with its means as a learnable parameter (the released script passes
  `learnable_mean=True`): identity covariances, uniform weights 1/K. Differences: an unlabeled sample is marked
  with `UNLABELED` (-1) instead of 300 (labels are not checked: that would wait on the GPU every step);
  squared distances are expanded (‖z‖² − 2 z·μ + ‖μ‖²) instead of materialising an
  N × K × D difference tensor.
* `FeatureDensity` bundles flow and prior (DDFP's `nf_model` holds both, so its Adam also trains the means) and
  gives the NLL of DDFP's `FlowLoss`: −mean(log p(z) + log|det J|).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

UNLABELED = -1  # label of a sample whose log-density is the whole mixture (DDFP's 300)

ATAN_SCALE = 0.636  # FrEIA's constant: 0.636 ≈ 2/π, so that clamp·0.636·atan(·) stays within ≈ ±clamp


def soft_clamp(s_raw: torch.Tensor, clamp: float) -> torch.Tensor:
    """FrEIA's soft clamp of the log-scale: clamp·0.636·atan(s_raw), within ±clamp·0.636·π/2 (≈ ±0.999·clamp)."""
    return clamp * ATAN_SCALE * torch.atan(s_raw)


def subnet(c_in: int, c_out: int, hidden: int) -> nn.Sequential:
    """DDFP's `subnet_fc`: Linear -> ReLU -> Linear -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, c_out))


class AffineCoupling(nn.Module):
    """GLOW affine coupling on (N, D) inputs, D even (FrEIA's `GLOWCouplingBlock` semantics).

    `subnet2` reads the second half and gives [s2, t2] for the first; `subnet1` reads the transformed first half
    and gives [s1, t1] for the second (FrEIA's names and creation order, so a seeded init matches)."""

    def __init__(self, dim: int, hidden: int = 256, clamp: float = 2.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"AffineCoupling needs an even dimension, got {dim}")
        self.half = dim // 2
        self.clamp = clamp
        self.subnet1 = subnet(self.half, 2 * self.half, hidden)
        self.subnet2 = subnet(self.half, 2 * self.half, hidden)

    def _scale_shift(self, net: nn.Module, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s_raw, t = net(u).split(self.half, dim=1)
        return soft_clamp(s_raw, self.clamp), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, log|det ∂y/∂x|) with the log-determinant per sample, shape (N,)."""
        x1, x2 = x.split(self.half, dim=1)
        s2, t2 = self._scale_shift(self.subnet2, x2)
        y1 = torch.exp(s2) * x1 + t2
        s1, t1 = self._scale_shift(self.subnet1, y1)
        y2 = torch.exp(s1) * x2 + t1
        return torch.cat([y1, y2], dim=1), s2.sum(dim=1) + s1.sum(dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y.split(self.half, dim=1)
        s1, t1 = self._scale_shift(self.subnet1, y1)
        x2 = (y2 - t1) * torch.exp(-s1)
        s2, t2 = self._scale_shift(self.subnet2, x2)
        x1 = (y1 - t2) * torch.exp(-s2)
        return torch.cat([x1, x2], dim=1)


def reference_permutation(dim: int, seed: int) -> np.ndarray:
    """The permutation FrEIA's `PermuteRandom(seed)` draws (np.random.seed(seed); np.random.permutation(dim)),
    from a local generator: `RandomState(seed)` is the same legacy Mersenne Twister stream as the global one."""
    return np.random.RandomState(seed).permutation(dim)


class FixedPermutation(nn.Module):
    """y = x[:, perm], a fixed channel permutation (log|det J| = 0). The permutation is a buffer, so a checkpoint
    carries it."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        perm = torch.as_tensor(reference_permutation(dim, seed), dtype=torch.long)
        self.register_buffer("perm", perm)
        self.register_buffer("perm_inv", torch.argsort(perm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.perm]

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, self.perm_inv]


class GlowFlow(nn.Module):
    """n_blocks × [AffineCoupling, FixedPermutation(seed=k)] on (N, D) vectors (DDFP's `RNVP`: 2 blocks, D = 256,
    hidden 256, clamp 2). Every parameter starts as init_std·N(0, 1), weights and biases, as the reference."""

    def __init__(self, dim: int = 256, n_blocks: int = 2, hidden: int = 256, clamp: float = 2.0,
                 init_std: float = 0.05):
        super().__init__()
        self.dim = dim
        self.couplings = nn.ModuleList(AffineCoupling(dim, hidden, clamp) for _ in range(n_blocks))
        self.permutations = nn.ModuleList(FixedPermutation(dim, seed=k) for k in range(n_blocks))
        with torch.no_grad():
            # One pass in block order (coupling k's subnet1 then subnet2; permutations hold no parameters): the
            # order FrEIA's graph lists them, so a seeded init draws the same numbers.
            for coupling in self.couplings:
                for p in coupling.parameters():
                    p.copy_(init_std * torch.randn_like(p))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, log|det ∂z/∂x|) for x of shape (N, D); the log-determinant has shape (N,)."""
        logdet = x.new_zeros(x.shape[0])
        for coupling, permutation in zip(self.couplings, self.permutations):
            x, block_logdet = coupling(x)
            x = permutation(x)
            logdet = logdet + block_logdet
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for coupling, permutation in zip(reversed(self.couplings), reversed(self.permutations)):
            z = coupling.inverse(permutation.inverse(z))
        return z


class GaussianMixturePrior(nn.Module):
    """K unit-covariance Gaussians with learnable means (init N(0, 1)) and uniform weights 1/K.

    `log_prob(z, labels)`: the mixture log-density for labels == UNLABELED (or for all samples when labels is
    None), the class-conditional log N(z; μ_y, I) otherwise, without the log(1/K) term, as released."""

    def __init__(self, num_classes: int, dim: int = 256):
        super().__init__()
        self.means = nn.Parameter(torch.randn(num_classes, dim))

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    def component_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """(N, K): log N(z; μ_k, I) = −½(D ln 2π + ‖z − μ_k‖²)."""
        # Computed in at least float32 with autocast off: the expanded distance subtracts large terms, which
        # half precision would round away.
        dtype = torch.promote_types(z.dtype, torch.float32)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z, means = z.to(dtype), self.means.to(dtype)
            sq_dist = z.pow(2).sum(1, keepdim=True) - 2 * z @ means.T + means.pow(2).sum(1)
            return -0.5 * (z.shape[1] * math.log(2 * math.pi) + sq_dist)

    def log_prob(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) log-densities; labels (N,) in {UNLABELED, 0 … K-1}."""
        components = self.component_log_probs(z)
        mixture = torch.logsumexp(components, dim=1) - math.log(self.num_classes)
        if labels is None:
            return mixture
        labels = labels.long()
        unlabeled = labels == UNLABELED
        class_conditional = components.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
        return torch.where(unlabeled, mixture, class_conditional)


class FeatureDensity(nn.Module):
    """Flow + prior: log p(x) = log p_prior(flow(x)) + log|det J|. DDFP's `nf_model` together with `FlowLoss`;
    `parameters()` holds the flow and the means, which the released flow optimizer trains together."""

    def __init__(self, num_classes: int, dim: int = 256, n_blocks: int = 2, hidden: int = 256, clamp: float = 2.0,
                 init_std: float = 0.05):
        super().__init__()
        # Means first, then the flow: the reference draws them in this order, so a seeded build matches it.
        self.prior = GaussianMixturePrior(num_classes, dim)
        self.flow = GlowFlow(dim, n_blocks, hidden, clamp, init_std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, log|det J|) for features x of shape (N, D)."""
        return self.flow(x)

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) log p(x): class-conditional for labeled samples, the mixture for UNLABELED ones or when labels is
        None."""
        z, logdet = self.flow(x)
        return self.prior.log_prob(z, labels) + logdet

    def nll(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """−mean(log p_prior(z) + log|det J|), DDFP's `FlowLoss`."""
        return -self.log_prob(x, labels).mean()
