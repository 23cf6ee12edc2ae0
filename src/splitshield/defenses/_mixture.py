"""Per-class Gaussian-mixture math for CEM (paper arXiv 2503.00383, Sec. 3-4): the per-epoch fit and the
per-batch Eq. 5-7 update, vectorised over classes and components.

Notation: C classes, K components per class (k = C*K in all), D feature dimension, N training-set size,
B batch size, M the size of the largest class in the captured features.

Why our own k-means instead of scikit-learn/faiss: the fit must run on the training device inside the training
loop, on tensors already there, batched over classes with padding, warm-started, with a fixed iteration count
(no per-iteration convergence check, hence no host synchronisation); scikit-learn serves as the test oracle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F

Covariance = Literal["full", "diagonal", "isotropic"]
# Sums a batch statistic over the processes of a data-parallel job (train/distributed.py ``global_sum``), so the
# per-batch update sees the global batch; None: one process.
Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Mixture:
    """A fitted per-class mixture. ``cov`` is (C, K, D, D) full, (C, K, D) diagonal or (C, K) isotropic."""

    means: torch.Tensor  # (C, K, D)
    weights: torch.Tensor  # (C, K), sums to 1 over all C*K components (pi_j of Eq. 3)
    cov: torch.Tensor
    counts: torch.Tensor  # (C, K) members per component (float)


def pad_by_group(x: torch.Tensor, groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) rows into a zero-padded (G, M, D) block by group, M the largest group, and each row's (N,) slot in its
    group's block (stable order). One host synchronisation (M sizes the block)."""
    counts = torch.bincount(groups, minlength=num_groups)
    order = torch.argsort(groups, stable=True)
    sorted_groups = groups[order]
    pos = torch.arange(len(groups), device=x.device) - (torch.cumsum(counts, 0) - counts)[sorted_groups]
    block = x.new_zeros(num_groups, max(int(counts.max()) if len(groups) else 0, 1), x.shape[1])
    block[sorted_groups, pos] = x[order]
    slot = torch.empty_like(pos)
    slot[order] = pos
    return block, slot


def group_by_class(feats: torch.Tensor, labels: torch.Tensor, num_classes: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) features -> padded (C, M, D) per-class blocks and a (C, M) validity mask."""
    x, slot = pad_by_group(feats, labels, num_classes)
    mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=feats.device)
    mask[labels, slot] = True
    return x, mask


def _nearest(x: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """(C, M, D) x (C, K, D) -> (C, M) index of the nearest mean, via one batched matmul; ||x||^2 is the same
    for every mean of a row, so it is left out of the comparison."""
    return ((means * means).sum(-1).unsqueeze(1) - 2 * x @ means.transpose(1, 2)).argmin(-1)


def kmeanspp_init(x: torch.Tensor, mask: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding, all classes at once: (C, M, D) -> (C, K, D). Sequential in K (inherent to k-means++)."""
    c, _, d = x.shape
    valid = mask.float()
    rows = torch.arange(c, device=x.device)

    def draw(weights: torch.Tensor) -> torch.Tensor:
        # Classes with no captured member (or all-duplicate members) fall back to a uniform draw.
        w = weights * valid
        w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
        return torch.multinomial(w, 1, generator=generator).squeeze(1)

    centers = [x[rows, draw(valid)]]
    closest = None
    for _ in range(1, k):
        d2 = ((x - centers[-1].unsqueeze(1)) ** 2).sum(-1)  # (C, M)
        closest = d2 if closest is None else torch.minimum(closest, d2)
        centers.append(x[rows, draw(closest)])
    return torch.stack(centers, 1)


def lloyd(x: torch.Tensor, mask: torch.Tensor, means: torch.Tensor, iters: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-count Lloyd iterations per class. Returns means (C, K, D) and the assignment (C, M).

    An empty component keeps its previous mean (the released code's statistics drift in that case)."""
    k = means.shape[1]
    valid = mask.unsqueeze(-1).to(x.dtype)
    for _ in range(iters):
        r = F.one_hot(_nearest(x, means), k).to(x.dtype) * valid  # (C, M, K)
        n = r.sum(1)  # (C, K)
        sums = r.transpose(1, 2) @ x  # (C, K, D)
        means = torch.where(n.unsqueeze(-1) > 0, sums / n.clamp_min(1).unsqueeze(-1), means)
    return means, _nearest(x, means)


def moments(x: torch.Tensor, mask: torch.Tensor, means: torch.Tensor, assign: torch.Tensor,
            covariance: Covariance, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Member counts (C, K) and covariances around ``means`` of the hard clusters (zero when empty)."""
    k, d = means.shape[1], means.shape[2]
    r = F.one_hot(assign, k).to(x.dtype) * mask.unsqueeze(-1)  # (C, M, K)
    n = r.sum(1)
    xc = (x - torch.take_along_dim(means, assign.unsqueeze(-1), dim=1)) * mask.unsqueeze(-1)  # (C, M, D)
    denom = n.clamp_min(1)
    if covariance != "full":
        var = (r.transpose(1, 2) @ (xc * xc)) / denom.unsqueeze(-1)  # (C, K, D)
        return n, var if covariance == "diagonal" else var.mean(-1)
    # float64: with sigma down to 1e-4, Sigma / sigma^2 amplifies float32 rounding (~1e-8) to O(1) and the
    # rank-deficient covariance of a small cluster would stop being positive semi-definite.
    cov = x.new_zeros(x.shape[0], k, d, d, dtype=torch.float64)
    xc, r = xc.double(), r.double()
    for s in range(0, x.shape[1], chunk):  # chunks over samples bound memory to C*K*chunk*D
        xs, rs = xc[:, s:s + chunk], r[:, s:s + chunk]
        weighted = rs.transpose(1, 2).unsqueeze(-1) * xs.unsqueeze(1)  # (C, K, m, D)
        cov += weighted.transpose(-1, -2) @ xs.unsqueeze(1)
    return n, cov / denom[..., None, None]


@torch.no_grad()
def fit_mixture(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int, covariance: Covariance,
                iters: int, *, init_means: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Mixture:
    """Fit k hard-assignment Gaussian components per class to (N, D) features (warm start from ``init_means``)."""
    x, mask = group_by_class(feats.float(), labels, num_classes)
    if init_means is None:
        if generator is None:
            raise ValueError("fit_mixture needs init_means or a generator for k-means++ seeding")
        init_means = kmeanspp_init(x, mask, k, generator)
    means, assign = lloyd(x, mask, init_means.to(x), iters)
    counts, cov = moments(x, mask, means, assign, covariance)
    return Mixture(means, counts / max(feats.shape[0], 1), cov, counts)


def class_separation(means: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """min ||mu_i - mu_j||^2 over pairs of non-empty components of *different* classes (means (C, K, D), counts
    (C, K)): the quantity of the paper's Sec. 3.4 condition min ||mu_i - mu_j||^2 >> Tr(Sigma_p). Components of one
    class may overlap freely (they share a label). A scalar tensor (inf with fewer than two classes present)."""
    c, k, _ = means.shape
    flat, valid = means.flatten(0, 1).double(), counts.flatten() > 0
    d2 = torch.cdist(flat, flat).pow(2)  # (ck, ck)
    label = torch.arange(c, device=means.device).repeat_interleave(k)
    mask = (label[:, None] != label[None, :]) & valid[:, None] & valid[None, :]
    return torch.where(mask, d2, torch.full_like(d2, float("inf"))).min()


def mean_variance(weights: torch.Tensor, cov: torch.Tensor, covariance: Covariance) -> float:
    """The mixture's mean per-dimension component variance, weighted by pi: weights (C, K), cov (C, K, ...)."""
    per = {"diagonal": lambda c: c.mean(-1), "isotropic": lambda c: c,
           "full": lambda c: torch.diagonal(c, dim1=-2, dim2=-1).mean(-1)}[covariance](cov.double())
    w = weights.double()
    return float((w * per).sum() / w.sum().clamp_min(1e-12))


def assign_batch(z: torch.Tensor, y: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Nearest component of the sample's own class: (B, D), (B,), (C, K, D) -> global index y*K + a, (B,)."""
    with torch.no_grad():
        own = means[y]  # (B, K, D)
        a = ((z.detach().unsqueeze(1) - own) ** 2).sum(-1).argmin(-1)
    return y * means.shape[1] + a


def log_det_ratio(cov: torch.Tensor, sigma2: float, covariance: Covariance, dim: int, jitter: float = 1e-6
                  ) -> torch.Tensor:
    """1/2 log(|Sigma_j + sigma^2 I| / |sigma^2 I|) per component: (k, ...) -> (k,); ``dim`` = D."""
    if covariance == "diagonal":
        return 0.5 * torch.log1p(cov / sigma2).sum(-1)
    if covariance == "isotropic":
        return 0.5 * dim * torch.log1p(cov / sigma2)
    # |Sigma + s I| / |s I| = |I + Sigma / s|: its eigenvalues are >= 1, so the Cholesky factor exists; float64
    # because Sigma / s reaches 1e8 for s = 1e-8 (sigma = 1e-4). The jitter absorbs rounding asymmetry.
    eye = torch.eye(cov.shape[-1], dtype=torch.float64, device=cov.device)
    m = eye * (1.0 + jitter) + cov.double() / sigma2
    chol = torch.linalg.cholesky(0.5 * (m + m.transpose(-1, -2)))
    return torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


def entropy_loss(weights: torch.Tensor, half_log_det: torch.Tensor) -> torch.Tensor:
    """Eq. 7: L_C = sum_j pi_j (-log pi_j + 1/2 log(|Sigma_j + Sigma_p| / |Sigma_p|)); empty components add 0."""
    return (-torch.special.xlogy(weights, weights) + weights * half_log_det).sum()


def member_counts(comp: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """(k,) members per component of a batch's assignment. A scatter-add, not ``torch.bincount``: bincount sizes its
    output from the data's maximum, a device-to-host synchronisation on every training step on a GPU."""
    return torch.zeros(k, dtype=dtype, device=comp.device).index_add_(0, comp, torch.ones_like(comp, dtype=dtype))


def batch_covariance(z: torch.Tensor, comp: torch.Tensor, means: torch.Tensor, k: int,
                     covariance: Covariance, reduce: Optional[Reduce] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Members n_j (k,) and DeltaSigma_j, the batch members' covariance around the stored mean mu_j (Eq. 6).

    z (B, D) carries the gradient; means (k, D) are the fitted means (constants). With ``reduce``, the member
    counts and sums of squared deviations are summed over processes before dividing (the global batch's values)."""
    n = member_counts(comp, k, z.dtype)
    if reduce is not None:
        n = reduce(n)
    xc = z - means[comp]  # (B, D)
    denom = n.clamp_min(1)
    if covariance != "full":
        squares = z.new_zeros(k, z.shape[1]).index_add(0, comp, xc * xc)
        if reduce is not None:
            squares = reduce(squares)
        var = squares / denom.unsqueeze(-1)  # (k, D)
        return n, var if covariance == "diagonal" else var.mean(-1)
    xc = xc.double()  # float64 for the same reason as in ``moments``
    onehot = F.one_hot(comp, k).double()  # (B, k)
    weighted = onehot.t().unsqueeze(-1) * xc.unsqueeze(0)  # (k, B, D)
    squares = weighted.transpose(1, 2) @ xc.unsqueeze(0)
    if reduce is not None:
        squares = reduce(squares)
    return n, squares / denom[:, None, None].double()  # (k, D, D)


def paper_step(z: torch.Tensor, comp: torch.Tensor, means: torch.Tensor, weights: torch.Tensor,
               cov: torch.Tensor, train_size: int, sigma2: float, covariance: Covariance, jitter: float = 1e-6,
               reduce: Optional[Reduce] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1, one batch: Eq. 5 (weights), Eq. 6 (covariances), Eq. 7 (L_C).

    Shapes are flat over components: means (k, D), weights (k,), cov (k, ...). Returns L_C (with gradient to z),
    and the updated weights and covariances (detached, to store). ``reduce``: see ``batch_covariance``."""
    k, big_n = weights.shape[0], float(train_size)
    if covariance == "full":
        return _full_step(z, comp, means, weights, cov, big_n, sigma2, jitter, reduce)
    n, delta = batch_covariance(z, comp, means, k, covariance, reduce)
    batch = z.shape[0] if reduce is None else n.sum()  # every sample of the (global) batch is in one component
    new_w = (weights * (big_n - batch) + n) / big_n  # Eq. 5 (>= n/N, so the rate below is <= 1)
    rate = torch.where(n > 0, n / (new_w * big_n).clamp_min(1e-12), torch.zeros_like(n))
    shape = (k,) + (1,) * (cov.dim() - 1)
    new_cov = (1 - rate).view(shape) * cov + rate.view(shape) * delta  # Eq. 6
    half_log_det = log_det_ratio(new_cov, sigma2, covariance, z.shape[1], jitter).to(z.dtype)
    return entropy_loss(new_w, half_log_det), new_w.detach(), new_cov.detach().to(cov.dtype)


def _full_step(z: torch.Tensor, comp: torch.Tensor, means: torch.Tensor, weights: torch.Tensor, cov: torch.Tensor,
               big_n: float, sigma2: float, jitter: float, reduce: Optional[Reduce]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``paper_step`` for full covariances with an analytic gradient.

    Why not autograd through Cholesky: at D = 392, k = 30 its backward and the (k, B, D, D)-sized intermediates
    of a one-hot batch covariance cost about 1.9 s per batch on one CPU thread. The gradient is known in closed
    form: with M_j = I + Sigma_j / sigma^2 (Sigma_j after Eq. 6), d(1/2 log|M_j|)/d Sigma_j = M_j^-1 / (2 sigma^2)
    and d Sigma_j / d x_b = rate_j / n_j * (x_b x_b^T)' for member b (x_b = z_b - mu_j), so
    dL_C/dz_b = pi_j rate_j / (n_j sigma^2) * M_j^-1 x_b, one Cholesky solve per component against the factor
    the loss value already needs. The members' scatter matrices come from a padded (k, m, D) block: B D^2 work
    instead of k B D^2. Float64 for the reason given in ``moments``."""
    k = weights.shape[0]
    xc = z - means[comp]  # (B, D), carries the gradient
    block, slot = pad_by_group(xc.detach().double(), comp, k)  # (k, m, D)
    scatter = block.transpose(1, 2) @ block  # (k, D, D): sum of x x^T over this process's members
    n = member_counts(comp, k, torch.float64)
    if reduce is not None:
        n, scatter = reduce(n), reduce(scatter)
    batch = z.shape[0] if reduce is None else n.sum()
    w64 = weights.double()
    new_w = (w64 * (big_n - batch) + n) / big_n  # Eq. 5
    rate = torch.where(n > 0, n / (new_w * big_n).clamp_min(1e-12), torch.zeros_like(n))
    # Eq. 6 with DeltaSigma_j = scatter_j / n_j; the (k, D, D) passes are the step's main cost, hence in place.
    new_cov = torch.mul(cov.double(), (1 - rate)[:, None, None])
    new_cov.add_(scatter.mul_((rate / n.clamp_min(1))[:, None, None]))
    m = new_cov / sigma2
    m.diagonal(dim1=-2, dim2=-1).add_(1.0 + jitter)
    chol = torch.linalg.cholesky(m)  # reads the lower triangle only: no symmetrisation pass needed
    value = entropy_loss(new_w, torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1))  # Eq. 7
    coef = torch.where(n > 0, new_w * rate / (n.clamp_min(1) * sigma2), torch.zeros_like(n))  # (k,)
    solved = torch.cholesky_solve(block.transpose(1, 2), chol)  # (k, D, m): M_j^-1 x_b for every member
    grad = (coef[:, None, None] * solved)[comp, :, slot].to(z.dtype)  # (B, D)
    # A surrogate with value 0 whose gradient is dL_C/dz; under ``reduce`` it goes through the same all-sum as the
    # other modes' statistics, which scales this process's gradient by the number of processes (DDP averages).
    surrogate = (grad * xc).sum()
    if reduce is not None:
        surrogate = reduce(surrogate.unsqueeze(0)).squeeze(0)
    return (value.to(z.dtype) + surrogate - surrogate.detach(), new_w.to(weights.dtype).detach(),
            new_cov.to(cov.dtype).detach())


def official_step(z: torch.Tensor, comp: torch.Tensor, means: torch.Tensor, counts: torch.Tensor,
                  var: torch.Tensor, num_classes: int, sigma2: float, gamma: float, tau: float,
                  reduce: Optional[Reduce] = None) -> torch.Tensor:
    """The authors' released loss, with the class lookup fixed (each class uses its own clusters' pi and v).

    Per cluster j of class c present in the batch: pi_j|c * relu(log(v_j + gamma) - log(tau sigma^2 + gamma)),
    v_j = a v_batch + (1 - a) v_stored, a = min(0.99, 10 n_j / (pi_j|c N_c)) = min(0.99, 10 n_j / size_j);
    summed over the class's clusters and averaged over the classes present. counts/var are flat (k,)."""
    k = counts.shape[0]
    n, v_batch = batch_covariance(z, comp, means, k, "isotropic", reduce)  # mean squared distance over members, dims
    a = torch.clamp(10 * n / counts.clamp_min(1), max=0.99)
    v = a * v_batch + (1 - a) * var
    per_class = counts.view(num_classes, -1)
    pi = (per_class / per_class.sum(1, keepdim=True).clamp_min(1)).reshape(k)  # within-class weights
    hinge = torch.relu(torch.log(v + gamma) - torch.log(torch.tensor(tau * sigma2 + gamma, device=z.device)))
    term = torch.where(n > 0, pi * hinge, torch.zeros_like(hinge)).view(num_classes, -1).sum(1)  # (C,)
    present = n.view(num_classes, -1).sum(1) > 0
    return term.sum() / present.sum().clamp_min(1)


def official_lambda_scale(lr: float) -> float:
    """The released code scales the CEM gradient by 0.001/lr while lr >= 4.1e-4 (lambda 16 acts as 0.32 at
    lr 0.05, 1.6 at 0.01, 8 at 0.002, then 16)."""
    return 0.001 / lr if lr >= 4.1e-4 else 1.0
