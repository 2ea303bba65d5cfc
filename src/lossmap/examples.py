"""Built-in problems, each returning a ready :class:`~lossmap.landscape.Landscape`.

- :func:`linear_regression`: y = 3x + 2 + N(0, 0.4²), the MSE bowl, at the least-squares
  optimum (float64; its Hessian is 2 AᵀA / n with A = [x, 1]).
- :func:`logistic_regression`: two Gaussian blobs, trained by gradient descent
  (float64; its Hessian is (1/n) Σ p(1-p) a aᵀ).
- :func:`digits_mlp`: scikit-learn's digits (shipped with the package, no download),
  standardised, 80/20 split, an MLP trained deterministically in seconds.

Nothing here touches global random state: data come from ``numpy``'s
``default_rng(seed)`` and model initialisation runs under ``torch.random.fork_rng``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lossmap.landscape import Landscape

__all__ = [
    "digits_data",
    "digits_mlp",
    "linear_regression",
    "linear_regression_data",
    "logistic_regression",
    "logistic_regression_data",
    "make_mlp",
    "quadratic",
    "train",
]


def linear_regression_data(n: int = 200, *, seed: int = 42) -> tuple[Tensor, Tensor]:
    """``x ~ U(-2, 2)``, ``y = 3x + 2 + N(0, 0.4²)``: tensors ``[n, 1]`` in float64."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, size=n)
    y = 3.0 * x + 2.0 + rng.normal(0.0, 0.4, size=n)
    return torch.tensor(x[:, None]), torch.tensor(y[:, None])


def linear_regression(n: int = 200, *, seed: int = 42) -> Landscape:
    """The seed's linear regression at its least-squares optimum (``weight``, ``bias``).

    >>> land = linear_regression()
    >>> w, b = float(land.point()["weight"]), float(land.point()["bias"])
    >>> abs(w - 3) < 0.1 and abs(b - 2) < 0.1   # the data's y = 3x + 2 + noise
    True
    """
    x, y = linear_regression_data(n, seed=seed)
    a = np.hstack([x.numpy(), np.ones((n, 1))])
    (w, b), *_ = np.linalg.lstsq(a, y.numpy()[:, 0], rcond=None)
    model = nn.Linear(1, 1, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(float(w))
        model.bias.fill_(float(b))
    return Landscape(model, nn.MSELoss(), data=(x, y))


def logistic_regression_data(n_per_class: int = 200, *, seed: int = 42) -> tuple[Tensor, Tensor]:
    """Two Gaussian blobs, σ = 1, at (-2, -2) (label 0) and (2, 2) (label 1); float64."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(-2.0, 1.0, size=(n_per_class, 2))
    x1 = rng.normal(2.0, 1.0, size=(n_per_class, 2))
    x = np.vstack([x0, x1])
    y = np.concatenate([np.zeros(n_per_class), np.ones(n_per_class)])
    return torch.tensor(x), torch.tensor(y[:, None])


def logistic_regression(
    n_per_class: int = 200, *, seed: int = 42, steps: int = 500, lr: float = 0.5
) -> Landscape:
    """The seed's logistic regression, trained from zero by full-batch gradient descent.

    Loss: the mean binary cross-entropy ``-mean(y log σ(z) + (1-y) log(1-σ(z)))``,
    ``z = w·x + b``; metric: accuracy.
    """
    x, y = logistic_regression_data(n_per_class, seed=seed)
    model = nn.Linear(2, 1, dtype=torch.float64)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    train(model, nn.BCEWithLogitsLoss(), x, y, steps=steps, lr=lr, optimizer="gd")
    return Landscape(model, nn.BCEWithLogitsLoss(), data=(x, y))


def digits_data(*, seed: int = 0, test_size: float = 0.2) -> dict[str, tuple[Tensor, Tensor]]:
    """scikit-learn's digits (1,797 8×8 images), standardised with the train statistics,
    split 80/20 (stratified, ``seed``): ``{"train": (X, y), "test": (X, y)}``, float32."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    mu, sd = xtr.mean(0), xtr.std(0)
    sd[sd == 0] = 1.0

    def t(a: np.ndarray, b: np.ndarray) -> tuple[Tensor, Tensor]:
        return torch.tensor((a - mu) / sd, dtype=torch.float32), torch.tensor(b, dtype=torch.long)

    return {"train": t(xtr, ytr), "test": t(xte, yte)}


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def make_mlp(
    sizes: Sequence[int], *, activation: str = "relu", seed: int = 0, batchnorm: bool = False
) -> nn.Sequential:
    """An ``nn.Sequential`` MLP ``sizes[0] -> ... -> sizes[-1]``, initialised from ``seed``."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {list(_ACTIVATIONS)}")
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                if batchnorm:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def train(
    model: nn.Module,
    criterion: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int | None = None,
    epochs: int = 0,
    batch_size: int | None = None,
    lr: float = 1e-3,
    optimizer: str = "adam",
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` in place, deterministically (full batch GD, or mini-batch Adam/SGD).

    ``steps`` full-batch steps, or ``epochs`` over shuffled mini-batches of ``batch_size``.
    """
    opts = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "gd": torch.optim.SGD}
    if optimizer not in opts:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {list(opts)}")
    opt = opts[optimizer](model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()

    def step(xb: Tensor, yb: Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        criterion(model(xb), yb).backward()
        opt.step()

    for _ in range(steps or 0):
        step(x, y)
    n = x.shape[0]
    bs = batch_size or n
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            j = perm[i : i + bs]
            step(x[j], y[j])
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


def digits_mlp(
    hidden: Sequence[int] = (128, 128),
    *,
    activation: str = "relu",
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    batchnorm: bool = False,
) -> Landscape:
    """An MLP ``64 -> hidden -> 10`` trained on digits with Adam; train and test sets.

    Deterministic for a given ``seed`` (initialisation and batch order); a few seconds
    on two CPU cores with the defaults.
    """
    data = digits_data()
    model = make_mlp([64, *hidden, 10], activation=activation, seed=seed, batchnorm=batchnorm)
    x, y = data["train"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        train(
            model,
            nn.CrossEntropyLoss(),
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
        )
    return Landscape(model, nn.CrossEntropyLoss(), data=data)


class QuadraticModel(nn.Module):
    """A module holding one parameter vector ``theta`` and returning it when called:
    the loss of :func:`quadratic` reads θ by calling the model (module level, so that
    it pickles)."""

    def __init__(self, theta: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.detach().clone())

    def forward(self, *args: object) -> Tensor:
        return self.theta


def quadratic(
    H: np.ndarray | Tensor,
    *,
    center: np.ndarray | Tensor | None = None,
    start: np.ndarray | Tensor | None = None,
    offset: float = 0.0,
    dtype: torch.dtype = torch.float64,
) -> Landscape:
    """A landscape whose loss is exactly ``L(θ) = offset + ½ (θ − c)ᵀ H (θ − c)``.

    One parameter vector ``theta`` (``[n]``) and a dummy data set of one sample; the
    gradient is ``H (θ − c)`` and the Hessian is ``H`` everywhere, so sharpness and
    curvature estimators can be checked against closed forms.

    Args:
        H: a symmetric ``[n, n]`` matrix (numpy or torch).
        center: the stationary point ``c`` (default 0; the minimum when H is PD).
        start: θ0 (default ``c``).
        offset: the loss at ``c``.
        dtype: the parameters' dtype.

    >>> land = quadratic(np.diag([1.0, 3.0]), center=np.array([1.0, 0.0]), start=np.zeros(2))
    >>> land.loss()
    0.5
    """
    h = torch.as_tensor(np.asarray(H) if not isinstance(H, Tensor) else H).to(dtype)
    if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] == 0:
        raise ValueError(f"H must be a square [n, n] matrix, got shape {tuple(h.shape)}")
    if not bool(torch.isfinite(h).all()):
        raise ValueError("H holds NaN or Inf entries; pass a finite matrix")
    if not torch.allclose(h, h.T, rtol=1e-12, atol=1e-12 * float(h.abs().max().clamp_min(1))):
        raise ValueError(
            "H must be symmetric (the Hessian of ½ xᵀHx is (H + Hᵀ)/2); pass (H + H.T) / 2"
        )
    n = h.shape[0]

    def vec(v: np.ndarray | Tensor | None, name: str, default: Tensor) -> Tensor:
        if v is None:
            return default.clone()
        t = torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v).to(dtype)
        if t.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match H, got {tuple(t.shape)}")
        return t.detach().clone()

    c = vec(center, "center", torch.zeros(n, dtype=dtype))
    theta0 = vec(start, "start", c)
    off = float(offset)

    def loss(model: object, batch: object) -> Tensor:
        d = model() - c  # type: ignore[operator]
        return off + 0.5 * (d @ (h @ d))

    return Landscape(QuadraticModel(theta0), loss=loss, data=(torch.zeros(1, 1, dtype=dtype),))
