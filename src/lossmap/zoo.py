"""Real-size built-in problems (issue #11): models at the scale papers map.

- :func:`resnet20`: ResNet-20 (He et al. 2016, §4.2; 269,722 parameters) with
  BatchNorm, on generated CIFAR-shaped data (:func:`cifar_like_data`), briefly trained
  and mapped in eval mode (BatchNorm's running statistics).
- :func:`transformer_lm`: a GPT-style decoder (11.5 M parameters by default; token
  embedding tied to the output head) on padded token sequences of varying lengths from
  a sparse Markov chain (:func:`lm_data`), with the per-token loss :func:`lm_loss`
  returning ``(sum, count)``.

The models (:func:`resnet20_model`, :func:`transformer_lm_model`) are plain PyTorch,
written so that ``torch.vmap`` runs them with a batching rule for every operator (no
in-place writes, no data-dependent shapes, attention as an explicit softmax): the
engine's ``vmap`` strategy evaluates several points per call. On two CPU cores that
does not pay at these sizes (``auto`` picks one point per call there); on a GPU it is
the point.
Nothing here touches global random state: data come from ``numpy``'s
``default_rng(seed)``, initialisation runs under ``torch.random.fork_rng``, and batch
orders come from a seeded ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lossmap.landscape import Landscape

__all__ = [
    "ResNet",
    "TransformerLM",
    "cifar_like_data",
    "lm_data",
    "lm_loss",
    "resnet20",
    "resnet20_model",
    "transformer_lm",
    "transformer_lm_model",
]

_STAGES = 3
"""ResNet stages (widths w, 2w, 4w; feature maps 32, 16, 8 on CIFAR shapes)."""


def _positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


# ------------------------------------------------------------------ ResNet-20


class _BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` with 3×3 convolutions; the
    shortcut is option A of He et al. (2016): the identity, subsampled by the stride and
    zero-padded with the new channels where the width grows (no parameters)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride = stride
        self.extra = c_out - c_in

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        s = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra:
            s = F.pad(s, (0, 0, 0, 0, 0, self.extra))
        return F.relu(h + s)


class ResNet(nn.Module):
    """A CIFAR ResNet: a 3×3 stem, three stages of ``blocks`` basic blocks of widths
    ``width·(1, 2, 4)`` (the first block of stages 2 and 3 strides by 2), global average
    pooling and a linear head. ``[N, 3, H, W]`` images to ``[N, classes]`` logits."""

    def __init__(self, *, width: int, blocks: int, classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        c = width
        for s in range(_STAGES):
            for b in range(blocks):
                out = width * 2**s
                layers.append(_BasicBlock(c, out, 2 if s > 0 and b == 0 else 1))
                c = out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.head(h.mean(dim=(2, 3)))


def resnet20_model(*, width: int = 16, blocks: int = 3, classes: int = 10, seed: int = 0) -> ResNet:
    """ResNet-20 for CIFAR shapes (He et al. 2016, §4.2), initialised from ``seed``.

    ``6·blocks + 2`` weighted layers: a 3×3 convolution, three stages of ``blocks``
    basic blocks (two 3×3 convolutions with BatchNorm each) of widths 16/32/64, global
    average pooling and a ``classes``-way linear layer. Shortcuts are option A (identity,
    zero-padded channels where the width doubles: no parameters), as the paper uses on
    CIFAR. Convolutions carry no bias (BatchNorm follows); He-normal initialisation
    (fan-out). The defaults have 269,722 parameters (the paper's "0.27M"); ``width`` and
    ``blocks`` build smaller ones.

    >>> sum(p.numel() for p in resnet20_model().parameters())
    269722
    """
    _positive(width=width, blocks=blocks, classes=classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet(width=width, blocks=blocks, classes=classes)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def cifar_like_data(
    n: int = 10_000,
    *,
    seed: int = 0,
    classes: int = 10,
    noise: float = 1.0,
    test_size: float = 0.2,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Generated CIFAR-shaped images: ``{"train": (X, y), "test": (X, y)}``, ``X``
    float32 ``[·, 3, 32, 32]``, ``y`` int64 class indices, ``n`` samples in all (the last
    ``round(n·test_size)`` are the test set).

    Each class has a smooth colour pattern (a sum of four plane waves per channel with
    1-3 cycles per image); a sample is its class's pattern at a random amplitude
    (0.5-1.5) and cyclic shift (up to ±4 pixels each way), plus a random mix of eight
    class-free smooth patterns (amplitude ~N(0, 0.5²) each) and pixel noise
    ``N(0, noise²)``. A small CNN separates the classes within tens of steps; chance is
    ``1/classes``. Deterministic from ``numpy.random.default_rng(seed)``.
    """
    _positive(n=n, classes=classes)
    if not 0 <= test_size < 1:
        raise ValueError(f"test_size must be in [0, 1), got {test_size!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be a standard deviation >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    side, waves, distractors, shift = 32, 4, 8, 4
    u = np.arange(side) / side
    grid_u, grid_v = u[:, None], u[None, :]

    def patterns(k: int) -> np.ndarray:
        """``[k, 3, side, side]`` smooth patterns of unit RMS."""
        f = rng.integers(-3, 4, size=(k, 3, waves, 2))
        phase = rng.uniform(0, 2 * np.pi, size=(k, 3, waves))
        arg = f[..., 0, None, None] * grid_u + f[..., 1, None, None] * grid_v
        p = np.cos(2 * np.pi * arg + phase[..., None, None]).sum(axis=2)
        return p / np.sqrt((p**2).mean(axis=(1, 2, 3), keepdims=True) + 1e-12)

    templates, others = patterns(classes), patterns(distractors)
    y = rng.integers(0, classes, size=n)
    du, dv = (rng.integers(-shift, shift + 1, size=n) for _ in range(2))
    iu = (np.arange(side)[None, :] - du[:, None]) % side
    iv = (np.arange(side)[None, :] - dv[:, None]) % side
    x = templates[
        y[:, None, None, None],
        np.arange(3)[None, :, None, None],
        iu[:, None, :, None],
        iv[:, None, None, :],
    ]
    x *= rng.uniform(0.5, 1.5, size=(n, 1, 1, 1))
    x += np.tensordot(rng.normal(0, 0.5, size=(n, distractors)), others, axes=1)
    x += rng.normal(0, noise, size=x.shape)
    n_test = round(n * test_size)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    cut = n - n_test
    return {"train": (xt[:cut], yt[:cut]), "test": (xt[cut:], yt[cut:])}


def _fit(
    model: nn.Module,
    batch_loss: Callable[[Tensor], Tensor],
    n: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> None:
    """``steps`` Adam steps on ``batch_loss(indices)`` (the mean loss of those samples),
    the learning rate decaying linearly from ``lr`` to ``lr/steps`` (short runs end
    settled, and BatchNorm's running statistics catch up with the last weights), on
    mini-batches of ``batch_size`` drawn without replacement per epoch from a generator
    seeded with ``seed``; the model is left in eval mode without gradients."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / steps)
    gen = torch.Generator().manual_seed(seed)
    bs = min(batch_size, n)
    perm, at = torch.randperm(n, generator=gen), 0
    model.train()
    for _ in range(steps):
        if at + bs > n:
            perm, at = torch.randperm(n, generator=gen), 0
        opt.zero_grad(set_to_none=True)
        batch_loss(perm[at : at + bs]).backward()
        opt.step()
        decay.step()
        at += bs
    model.eval()
    for p in model.parameters():
        p.grad = None


def _split(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def resnet20(
    n: int = 10_000,
    *,
    seed: int = 0,
    train_steps: int = 80,
    batch_size: int = 128,
    lr: float = 5e-3,
    width: int = 16,
    blocks: int = 3,
    eval_batch_size: int = 500,
) -> Landscape:
    """ResNet-20 (:func:`resnet20_model`) trained briefly on :func:`cifar_like_data`.

    ``train_steps`` Adam steps on mini-batches of ``batch_size`` training images
    (BatchNorm in training mode), then the landscape in eval mode (BatchNorm's running
    statistics): cross-entropy and accuracy on ``{"train": ..., "test": ...}``, each a
    list of batches of ``eval_batch_size`` images (a forward pass over 8,000 images at
    once would hold gigabytes of activations). Deterministic for a given ``seed`` (data,
    initialisation, batch order). The defaults (n = 10,000) build in 18 s on two CPU
    cores (measured at load 1.8: 2 s of data, 80 steps) and reach 95% train and 93%
    test accuracy in eval mode (chance: 10%).
    """
    _positive(train_steps=train_steps, batch_size=batch_size, eval_batch_size=eval_batch_size)
    data = cifar_like_data(n, seed=seed)
    model = resnet20_model(width=width, blocks=blocks, seed=seed)
    x, y = data["train"]

    def batch_loss(idx: Tensor) -> Tensor:
        return F.cross_entropy(model(x[idx]), y[idx])

    _fit(model, batch_loss, len(x), steps=train_steps, batch_size=batch_size, lr=lr, seed=seed)
    held = {k: _split(*v, eval_batch_size) for k, v in data.items() if len(v[0])}
    return Landscape(model, nn.CrossEntropyLoss(), data=held)


# ------------------------------------------------------- a GPT-style decoder


class _DecoderBlock(nn.Module):
    """Pre-LayerNorm: ``h + attn(ln1(h))``, then ``h + mlp(ln2(h))``; causal multi-head
    self-attention as an explicit softmax (``torch.vmap`` batches it; PyTorch's fused
    ``scaled_dot_product_attention`` has no vmap batching rule on CPU and runs point by
    point there) and a GELU MLP of width ``4·d_model``."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)

    def forward(self, h: Tensor, allowed: Tensor) -> Tensor:
        """``h: [B, T, D]``; ``allowed: [B, 1, T, T]``, True where query t may attend
        to key s."""
        b, t, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        att = scores.masked_fill(~allowed, -math.inf).softmax(dim=-1)
        h = h + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return h + self.out(F.gelu(self.fc(self.ln2(h))))


class TransformerLM(nn.Module):
    """A GPT-style causal language model: token and learned position embeddings,
    pre-LayerNorm decoder blocks, a final LayerNorm and an output head whose weight IS
    the token embedding (one parameter; ``head.weight`` is its alias).

    ``forward(input_ids [B, T], attention_mask [B, T] | None) -> logits [B, T, vocab]``.
    Positions count the tokens the mask keeps (``cumsum(mask) - 1``), and a query
    attends to the kept keys at or before it (and always to itself, so a padding row
    is never empty): left or right padding leaves the kept tokens' logits unchanged.
    """

    def __init__(self, *, vocab: int, d_model: int, layers: int, heads: int, seq_len: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList([_DecoderBlock(d_model, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        t = input_ids.shape[-1]
        if t > self.seq_len:
            raise ValueError(
                f"sequences of {t} tokens exceed the model's seq_len={self.seq_len}; "
                "build the model with a larger seq_len or cut the sequences"
            )
        keep = torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask is not None:
            keep = attention_mask.bool()
        positions = (keep.long().cumsum(dim=-1) - 1).clamp(min=0)
        h = self.tok(input_ids) + self.pos(positions)
        causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
        diagonal = torch.eye(t, dtype=torch.bool, device=input_ids.device)
        allowed = causal & (keep[:, None, None, :] | diagonal)
        for block in self.blocks:
            h = block(h, allowed)
        return self.head(self.ln(h))


def transformer_lm_model(
    *,
    vocab: int = 2048,
    d_model: int = 384,
    layers: int = 6,
    heads: int = 6,
    seq_len: int = 128,
    seed: int = 0,
) -> TransformerLM:
    """A GPT-style decoder (:class:`TransformerLM`), initialised from ``seed`` as GPT-2:
    weights ~N(0, 0.02²) (the residual projections ÷√(2·layers)), biases 0.

    Parameters: ``vocab·d + seq_len·d + layers·(12d² + 13d) + 2d`` (``d = d_model``; the
    tied head adds none): 11,483,136 with the defaults.

    Raises:
        ValueError: a size that is not a positive int, ``vocab < 2`` (token 0 is
            padding), or ``d_model`` not a multiple of ``heads``.

    >>> model = transformer_lm_model()
    >>> sum(p.numel() for p in model.parameters()), model.head.weight is model.tok.weight
    (11483136, True)
    """
    _positive(vocab=vocab, d_model=d_model, layers=layers, heads=heads, seq_len=seq_len)
    if vocab < 2:
        raise ValueError(f"vocab must be at least 2 (token 0 is padding), got {vocab}")
    if d_model % heads:
        raise ValueError(
            f"d_model must be a multiple of heads, got d_model={d_model}, heads={heads}; "
            f"e.g. d_model={heads * max(1, round(d_model / heads))}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TransformerLM(
            vocab=vocab, d_model=d_model, layers=layers, heads=heads, seq_len=seq_len
        )
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear | nn.Embedding) and m is not model.head:  # head: tied
                residual = name.endswith((".proj", ".out"))
                nn.init.normal_(m.weight, 0.0, 0.02 / math.sqrt(2 * layers) if residual else 0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model


def lm_data(
    n_sequences: int,
    *,
    seq_len: int,
    vocab: int,
    seed: int = 0,
    batch_size: int = 32,
    branching: int = 4,
    min_len: int | None = None,
) -> list[dict[str, Tensor]]:
    """Token sequences from a sparse Markov chain, right-padded with token 0, as dict
    batches ``{"input_ids": int64 [B, seq_len], "attention_mask": bool [B, seq_len]}``
    (``B = batch_size``, the last batch smaller).

    Tokens ``1..vocab-1``; each token is followed by one of ``branching`` successors
    (chosen at random per token) with Dirichlet(1) probabilities, so the per-token
    entropy is at most ``log(branching)`` against ``log(vocab - 1)`` for a guess. The
    first token is uniform; lengths are uniform in ``[min_len, seq_len]`` (default
    ``min_len = max(2, seq_len // 4)``, at most ``seq_len``). Deterministic from
    ``default_rng(seed)``.
    """
    _positive(n_sequences=n_sequences, seq_len=seq_len, batch_size=batch_size, branching=branching)
    if vocab < 2:
        raise ValueError(f"vocab must be at least 2 (token 0 is padding), got {vocab}")
    lo = min(seq_len, max(2, seq_len // 4)) if min_len is None else min_len
    if not 1 <= lo <= seq_len:
        raise ValueError(f"min_len must be in [1, seq_len={seq_len}], got {lo}")
    rng = np.random.default_rng(seed)
    succ = rng.integers(1, vocab, size=(vocab, branching))
    cdf = np.cumsum(rng.dirichlet(np.ones(branching), size=vocab), axis=1)
    ids = np.zeros((n_sequences, seq_len), dtype=np.int64)
    ids[:, 0] = rng.integers(1, vocab, size=n_sequences)
    for t in range(1, seq_len):
        cur = ids[:, t - 1]
        pick = (cdf[cur] < rng.uniform(size=(n_sequences, 1))).sum(axis=1)
        ids[:, t] = succ[cur, np.minimum(pick, branching - 1)]
    lengths = rng.integers(lo, seq_len + 1, size=n_sequences)
    mask = np.arange(seq_len)[None, :] < lengths[:, None]
    ids[~mask] = 0
    x, m = torch.from_numpy(ids), torch.from_numpy(mask)
    return [
        {"input_ids": x[i : i + batch_size], "attention_mask": m[i : i + batch_size]}
        for i in range(0, n_sequences, batch_size)
    ]


def lm_loss(model: Callable[..., Tensor], batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy summed over the batch's targets, and their number.

    A target is token ``t+1`` of a sequence where the mask keeps both it and token ``t``
    (no padding predicted, none predicting). lossmap divides the sums by the counts
    summed over the data set: the exact per-token mean, whatever the padding and the
    batch sizes. ``model(input_ids, attention_mask)`` returns ``[B, T, vocab]`` logits.
    """
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    logits = model(ids, keep)
    valid = (keep[:, 1:] & keep[:, :-1]).reshape(-1)
    per_token = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
    )
    return torch.where(valid, per_token, 0).sum(), valid.sum()


def transformer_lm(
    n_sequences: int = 160,
    *,
    seed: int = 0,
    train_steps: int = 20,
    batch_size: int = 16,
    lr: float = 1e-3,
    test_size: float = 0.2,
    eval_batch_size: int = 32,
    **config: int,
) -> Landscape:
    """A :func:`transformer_lm_model` briefly trained on :func:`lm_data`.

    ``n_sequences`` sequences in all (the last ``round(n_sequences·test_size)`` are the
    test set), with the model's ``vocab`` and ``seq_len``; ``config`` goes to
    :func:`transformer_lm_model` (``vocab``, ``d_model``, ``layers``, ``heads``,
    ``seq_len``). ``train_steps`` Adam steps on mini-batches of ``batch_size`` training
    sequences, then ``Landscape(model, loss=lm_loss, data={"train": [...], "test":
    [...]})`` over batches of ``eval_batch_size`` sequences: the exact per-token mean.
    Deterministic for a given ``seed``. The defaults (11.5 M parameters, 128 training
    sequences) build in 16 s on two CPU cores (measured at load 1.8); the per-token loss
    falls from 7.7 (a uniform guess: log 2047 = 7.62) to 7.1 on the training set, far
    from the chain's entropy (at most log 4): trained briefly, not to convergence.
    """
    _positive(
        n_sequences=n_sequences,
        train_steps=train_steps,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
    )
    if not 0 <= test_size < 1:
        raise ValueError(f"test_size must be in [0, 1), got {test_size!r}")
    model = transformer_lm_model(seed=seed, **config)
    seqs = lm_data(
        n_sequences,
        seq_len=model.seq_len,
        vocab=model.tok.num_embeddings,
        seed=seed,
        batch_size=n_sequences,
    )[0]
    cut = n_sequences - round(n_sequences * test_size)
    ids, mask = seqs["input_ids"], seqs["attention_mask"]

    def batch_loss(idx: Tensor) -> Tensor:
        total, count = lm_loss(model, {"input_ids": ids[idx], "attention_mask": mask[idx]})
        return total / count.clamp(min=1)

    _fit(model, batch_loss, cut, steps=train_steps, batch_size=batch_size, lr=lr, seed=seed)
    parts = {"train": slice(0, cut), "test": slice(cut, n_sequences)}
    e = eval_batch_size
    data = {
        name: [
            {"input_ids": ids[s][i : i + e], "attention_mask": mask[s][i : i + e]}
            for i in range(0, len(ids[s]), e)
        ]
        for name, s in parts.items()
        if len(ids[s])
    }
    return Landscape(model, loss=lm_loss, data=data)
