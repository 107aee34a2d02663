"""MIL aggregators: a slide's frozen tile embeddings [N, D] -> slide logits [C].

All models share one interface (`MILModel`):

- `forward(bag: [N, D]) -> MILOutput(logits [C], attention [N], aux_logits [C] | None)`
- `forward_segments(x: [T, D], seg: [T] | None, n_bags: B) -> MILOutput(logits [B, C],
  attention [T], aux_logits [B, C] | None)`: B bags concatenated (see `segments`), used by
  the trainer's batched path. `forward` is `forward_segments` with one bag, so both give the
  same numbers.

Outputs: C = number of classes for classification (2 for binary, trained with cross-entropy),
C = 1 for regression (MSE). `attention` is a per-tile importance for heatmaps, never used in a
loss; its meaning is the class attribute `attention_kind`:
  "softmax" - attention weights, each bag sums to 1 (gated-attention, attention, dsmil);
  "share"   - share of the pooled features that the tile supplies, sums to 1 (max);
  "score"   - the tile's own class score, unnormalised: positive-class log-odds for binary,
              the value for regression, the bag's predicted class otherwise (mean, mil-rnn).
`aux_logits` is a second prediction trained with the same loss and target, weighted
`aux_weight` (the loss is (1 - w) * L(logits) + w * L(aux_logits)): DSMIL's max-instance
score and MIL-RNN's top-1 instance.

Multi-output forms (`MULTI_OUTPUT`, used by `train --joint` for a gene panel): one output per
gene, each with its own attention branch (CLAM's multi-branch design): logits [B, K] (one
binary log-odds or one value per output) and attention [T, K] (column k: output k's map).
They are not `--model` choices of their own.

References: gated attention and its settings from HistCode (arXiv 2204.11994) and its code;
ABMIL (Ilse et al., ICML 2018); DSMIL (Li et al., CVPR 2021); MIL-RNN (Campanella et al.,
Nature Medicine 2019). See docs method-reference.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from histstore.errors import InvalidInput
from histstore.mil.segments import (
    gather,
    segment_argmax,
    segment_max,
    segment_mean,
    segment_softmax,
    segment_sum,
    segment_topk,
)


@dataclass
class MILOutput:
    logits: Tensor                    # [C] (single bag) or [B, C]
    attention: Tensor | None = None   # [N] / [T], see attention_kind
    aux_logits: Tensor | None = None  # like logits
    aux_weight: float = 0.0


# ---------------------------------------------------------------------------------- configs

def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class MILConfig:
    """Fields shared by every model. n_outputs: classes (>= 2) or 1 for regression."""

    in_dim: int
    n_outputs: int
    dropout: float = 0.0

    def __post_init__(self):
        _positive("in_dim", self.in_dim)
        _positive("n_outputs", self.n_outputs)
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInput(f"dropout must be in [0, 1), got {self.dropout!r}")


@dataclass(frozen=True)
class GatedAttentionConfig(MILConfig):
    hidden_dim: int = 512  # HistCode: Linear(1024 -> 512) + ReLU
    attn_dim: int = 256    # HistCode: gate 512 -> 256 -> 1

    def __post_init__(self):
        super().__post_init__()
        _positive("hidden_dim", self.hidden_dim)
        _positive("attn_dim", self.attn_dim)


@dataclass(frozen=True)
class AttentionConfig(GatedAttentionConfig):
    hidden_dim: int = 500  # Ilse et al.: M = 500
    attn_dim: int = 128    # Ilse et al.: L = 128


@dataclass(frozen=True)
class PoolingConfig(MILConfig):
    # same trainable embedding as gated attention (Linear + ReLU, 512) so that the comparison
    # isolates the pooling operator; 0 pools the raw embeddings (a linear model on the pool)
    hidden_dim: int = 512

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.hidden_dim, int) or self.hidden_dim < 0:
            raise InvalidInput(f"hidden_dim must be >= 0, got {self.hidden_dim!r}")


@dataclass(frozen=True)
class DSMILConfig(MILConfig):
    q_dim: int = 128                  # DSMIL code: q = Linear-ReLU-Linear-Tanh, 128
    passing_v: bool = False           # DSMIL default: v = identity
    instance_loss_weight: float = 0.5  # loss 0.5 bag + 0.5 max-instance

    def __post_init__(self):
        super().__post_init__()
        _positive("q_dim", self.q_dim)
        if not 0.0 <= self.instance_loss_weight < 1.0:
            raise InvalidInput("instance_loss_weight must be in [0, 1)")


@dataclass(frozen=True)
class MILRNNConfig(MILConfig):
    k: int = 10                        # Campanella: S = 10 top tiles
    rnn_hidden: int = 128
    instance_loss_weight: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        _positive("k", self.k)
        _positive("rnn_hidden", self.rnn_hidden)
        if not 0.0 <= self.instance_loss_weight < 1.0:
            raise InvalidInput("instance_loss_weight must be in [0, 1)")


# ------------------------------------------------------------------------------ base class

class MILModel(nn.Module):
    """Base class: subclasses set `name`, `attention_kind`, `config_cls` and implement
    `forward_segments`."""

    name: ClassVar[str]
    attention_kind: ClassVar[str]
    config_cls: ClassVar[type[MILConfig]]
    multi_output: ClassVar[bool] = False  # True: one output (and attention column) per target

    def __init__(self, config: MILConfig):
        super().__init__()
        self.config = config

    def forward(self, bag: Tensor) -> MILOutput:
        """bag [N, D] -> logits [C], attention [N], aux_logits [C] | None."""
        if bag.ndim != 2 or bag.shape[0] < 1 or bag.shape[1] != self.config.in_dim:
            raise ValueError(f"expected a bag [N>=1, {self.config.in_dim}], got "
                             f"{tuple(bag.shape)}")
        out = self.forward_segments(bag, None, 1)
        aux = None if out.aux_logits is None else out.aux_logits[0]
        return MILOutput(out.logits[0], out.attention, aux, out.aux_weight)

    def forward_segments(self, x: Tensor, seg: Tensor | None, n_bags: int) -> MILOutput:
        """Abstract: every model defines its pooling here (x [T, D] tiles of n_bags bags,
        seg [T] bag index per tile or None for one bag)."""
        raise NotImplementedError(f"{type(self).__name__} must define forward_segments")

    def spec(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild the model: {"name", "config"}."""
        return {"name": self.name, "config": asdict(self.config)}

    # helpers -------------------------------------------------------------------------
    @property
    def n_scores(self) -> int:
        """Outputs of an instance head: 1 for binary (positive log-odds) and regression,
        else one per class."""
        return 1 if self.config.n_outputs <= 2 else self.config.n_outputs

    def _to_logits(self, z: Tensor) -> Tensor:
        """Instance-head outputs [..., n_scores] -> logits [..., C]: a binary log-odds z
        becomes [0, z], whose softmax is [1 - sigmoid(z), sigmoid(z)]."""
        if self.config.n_outputs == 2:
            return torch.cat([torch.zeros_like(z), z], dim=-1)
        return z

    def _tile_score(self, tile_logits: Tensor, bag_logits: Tensor, seg: Tensor | None) -> Tensor:
        """Per-tile class logits [T, C] -> one score per tile [T] (see attention_kind
        "score")."""
        c = self.config.n_outputs
        if c == 1:
            return tile_logits[:, 0]
        if c == 2:
            return tile_logits[:, 1] - tile_logits[:, 0]
        pred = gather(bag_logits.argmax(-1), seg)
        return tile_logits.gather(1, pred.expand(tile_logits.shape[0]).unsqueeze(1))[:, 0]


def _embedding(in_dim: int, hidden_dim: int, dropout: float) -> nn.Module:
    """Trainable tile embedding h' = ReLU(W1 h) on top of the frozen encoder's features."""
    if hidden_dim == 0:
        return nn.Dropout(dropout)
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))


# ---------------------------------------------------------------------------------- models

class _AttentionPooling(MILModel):
    """Shared body of attention pooling: h' = embed(h); alpha = softmax_i(attention_logits(h'));
    z = sum_i alpha_i h'_i; logits = classifier(z). Subclasses define the layers."""

    attention_kind = "softmax"
    embed: nn.Module
    classifier: nn.Linear

    def attention_logits(self, h: Tensor) -> Tensor:
        """Abstract: h' [T, H] -> unnormalised attention [T] (ungated or gated)."""
        raise NotImplementedError(f"{type(self).__name__} must define attention_logits")

    def forward_segments(self, x, seg, n_bags):
        h = self.embed(x)                                               # [T, H]
        alpha = segment_softmax(self.attention_logits(h), seg, n_bags)  # [T]
        z = segment_sum(alpha.unsqueeze(-1) * h, seg, n_bags)           # [B, H]
        return MILOutput(self.classifier(z), alpha.detach())


class GatedAttentionMIL(_AttentionPooling):
    """HistCode's pooling (gated attention, Ilse et al.):

    h'_i = ReLU(W1 h_i)                                 [N, 512]
    a_i  = w^T [tanh(V h'_i) * sigmoid(U h'_i)]          [N]      (512 -> 256 -> 1)
    alpha = softmax_i(a);  z = sum_i alpha_i h'_i        [512]
    logits = Linear(512, C)(z)
    """

    name = "gated-attention"
    config_cls = GatedAttentionConfig

    def __init__(self, config: GatedAttentionConfig):
        super().__init__(config)
        self.embed = _embedding(config.in_dim, config.hidden_dim, config.dropout)
        # V and U in one matmul (fewer kernel launches in one-bag-per-step training)
        self.attn_vu = nn.Linear(config.hidden_dim, 2 * config.attn_dim)
        self.attn_w = nn.Linear(config.attn_dim, 1)
        self.classifier = nn.Linear(config.hidden_dim, config.n_outputs)

    def attention_logits(self, h: Tensor) -> Tensor:
        v, u = self.attn_vu(h).chunk(2, dim=-1)
        return self.attn_w(torch.tanh(v) * torch.sigmoid(u)).squeeze(-1)


class AttentionMIL(_AttentionPooling):
    """ABMIL without the gate (Ilse et al.): a_i = w^T tanh(V h'_i); M = 500, L = 128."""

    name = "attention"
    config_cls = AttentionConfig

    def __init__(self, config: AttentionConfig):
        super().__init__(config)
        self.embed = _embedding(config.in_dim, config.hidden_dim, config.dropout)
        self.attn_v = nn.Linear(config.hidden_dim, config.attn_dim)
        self.attn_w = nn.Linear(config.attn_dim, 1)
        self.classifier = nn.Linear(config.hidden_dim, config.n_outputs)

    def attention_logits(self, h: Tensor) -> Tensor:
        return self.attn_w(torch.tanh(self.attn_v(h))).squeeze(-1)


class MeanPoolMIL(MILModel):
    """z = mean_i h'_i, logits = Linear(z). Attention: each tile's own score through the
    classifier (the mean of these scores is the bag's)."""

    name = "mean"
    attention_kind = "score"
    config_cls = PoolingConfig

    def __init__(self, config: PoolingConfig):
        super().__init__(config)
        self.embed = _embedding(config.in_dim, config.hidden_dim, config.dropout)
        self.classifier = nn.Linear(config.hidden_dim or config.in_dim, config.n_outputs)

    def forward_segments(self, x, seg, n_bags):
        h = self.embed(x)
        logits = self.classifier(segment_mean(h, seg, n_bags))
        with torch.no_grad():
            score = self._tile_score(self.classifier(h), logits, seg)
        return MILOutput(logits, score)


class MaxPoolMIL(MILModel):
    """z = max_i h'_i per feature, logits = Linear(z). Attention: the share of the pooled
    features that each tile supplies (credit split among ties), summing to 1 per bag."""

    name = "max"
    attention_kind = "share"
    config_cls = PoolingConfig

    def __init__(self, config: PoolingConfig):
        super().__init__(config)
        self.embed = _embedding(config.in_dim, config.hidden_dim, config.dropout)
        self.classifier = nn.Linear(config.hidden_dim or config.in_dim, config.n_outputs)

    def forward_segments(self, x, seg, n_bags):
        h = self.embed(x)
        z = segment_max(h, seg, n_bags)                         # [B, H]
        with torch.no_grad():
            is_max = (h == gather(z, seg)).to(h.dtype)          # [T, H]
            ties = gather(segment_sum(is_max, seg, n_bags), seg)
            share = (is_max / ties).sum(1) / h.shape[1]
        return MILOutput(self.classifier(z), share)


class DSMIL(MILModel):
    """Dual-stream MIL (Li et al., CVPR 2021), on frozen embeddings h_i [N, D].

    instance stream: c_i = Linear(h_i) [N, K]; critical instance m_k = argmax_i c_ik.
    bag stream: A_ik = softmax_i(q(h_i) . q(h_{m_k}) / sqrt(d_q)); b_k = sum_i A_ik v(h_i);
    bag logits = Conv1d(K, K, kernel D)(b) [K]. Loss 0.5 bag + 0.5 max-instance (max_i c_i).
    K = 1 for binary (the positive class's log-odds, as in DSMIL's binary setup, mapped to
    logits [0, z]) and regression; K = C for multi-class. Attention: A for the positive class
    (binary), the bag's predicted class (multi-class).
    """

    name = "dsmil"
    attention_kind = "softmax"
    config_cls = DSMILConfig

    def __init__(self, config: DSMILConfig):
        super().__init__(config)
        d, k = config.in_dim, self.n_scores
        self.instance = nn.Linear(d, k)
        self.q = nn.Sequential(nn.Linear(d, config.q_dim), nn.ReLU(),
                               nn.Linear(config.q_dim, config.q_dim), nn.Tanh())
        if config.passing_v:
            self.v = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(d, d), nn.ReLU())
        else:
            self.v = nn.Dropout(config.dropout)
        self.bag_fc = nn.Conv1d(k, k, kernel_size=d)

    def forward_segments(self, x, seg, n_bags):
        c = self.instance(x)                                     # [T, K]
        q = self.q(x)                                            # [T, dq]
        crit = segment_argmax(c, seg, n_bags)                    # [B, K] tile index
        q_crit = q[crit]                                         # [B, K, dq]
        s = (q.unsqueeze(1) * gather(q_crit, seg)).sum(-1) / math.sqrt(q.shape[1])  # [T, K]
        a = segment_softmax(s, seg, n_bags)                      # [T, K]
        v = self.v(x)                                            # [T, Dv]
        b = torch.stack([segment_sum(a[:, j:j + 1] * v, seg, n_bags)
                         for j in range(a.shape[1])], dim=1)     # [B, K, Dv]
        bag = self.bag_fc(b).squeeze(-1)                         # [B, K]
        logits = self._to_logits(bag)
        aux = self._to_logits(segment_max(c, seg, n_bags))      # max-instance, [B, C]
        if a.shape[1] == 1:
            att = a[:, 0]
        else:
            att = a.gather(1, gather(logits.argmax(-1), seg).expand(a.shape[0]).unsqueeze(1))
            att = att[:, 0]
        return MILOutput(logits, att.detach(), aux, self.config.instance_loss_weight)


class MILRNN(MILModel):
    """MIL-RNN (Campanella et al., 2019) on frozen embeddings.

    An instance head scores every tile (c_i = Linear(h_i)); the k = 10 highest-scoring tiles,
    in descending score order, feed an Elman RNN as in Campanella's code
    (s_t = ReLU(W_in h_t + W_s s_{t-1}), hidden 128); logits = Linear(s_final). Bags with
    N < k use all N tiles.

    Training is joint, in one stage: loss = (1 - w) * L(rnn logits) + w * L(top-1 instance
    logits), w = 0.5. Campanella train in two stages (the tile classifier by top-1 MIL first,
    then the RNN on its fixed ranking); with a frozen encoder both heads are small and the
    top-k selection is not differentiable, so the instance head learns only from its top-1
    loss (Campanella's stage-1 objective) and the RNN only from the bag loss - the two stages'
    objectives, optimised together.
    """

    name = "mil-rnn"
    attention_kind = "score"
    config_cls = MILRNNConfig

    def __init__(self, config: MILRNNConfig):
        super().__init__(config)
        self.instance = nn.Linear(config.in_dim, self.n_scores)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn_in = nn.Linear(config.in_dim, config.rnn_hidden)
        self.rnn_state = nn.Linear(config.rnn_hidden, config.rnn_hidden)
        self.rnn_out = nn.Linear(config.rnn_hidden, config.n_outputs)

    def forward_segments(self, x, seg, n_bags):
        c = self.instance(x)                                     # [T, K]
        score = c[:, 0] if c.shape[1] == 1 else c.amax(1)        # ranking score [T]
        top, valid = segment_topk(score, seg, n_bags, self.config.k)  # [B, k]
        inputs = self.rnn_in(self.dropout(x[top]))               # [B, k, hidden]
        state = inputs.new_zeros(n_bags, self.config.rnn_hidden)
        for t in range(self.config.k):
            new = torch.relu(inputs[:, t] + self.rnn_state(state))
            state = torch.where(valid[:, t:t + 1], new, state)
        logits = self.rnn_out(state)
        aux = self._to_logits(c[top[:, 0]])                      # top-1 instance, [B, C]
        return MILOutput(logits, score.detach(), aux, self.config.instance_loss_weight)


# ---------------------------------------------------------------------- multi-output models

class _MultiBranchAttention(MILModel):
    """Attention pooling with one branch per output (CLAM's multi-branch form, Lu et al. 2021,
    one branch per output instead of per class): a shared tile embedding and attention body,
    then for each output k its own attention column, pooled vector and linear head:

    h'_i = embed(h_i)                                   [N, H]  shared
    a_ik = w_k^T body(h'_i)                             [N, K]  (body: gated or plain)
    alpha_k = softmax_i(a_k);  z_k = sum_i alpha_ik h'_i [K, H]
    logit_k = v_k . z_k + b_k                           [K]

    Output k is a binary log-odds (multi-label classification, sigmoid) or a value
    (multi-output regression); which one is the trainer's business. `attention` is
    [T, K]: column k is output k's softmax attention (each bag's column sums to 1)."""

    attention_kind = "softmax"
    multi_output: ClassVar[bool] = True
    embed: nn.Module
    heads: nn.Linear  # row k of the weight is output k's head; applied to z_k only

    def attention_logits(self, h: Tensor) -> Tensor:
        """Abstract: h' [T, H] -> unnormalised attention [T, K]."""
        raise NotImplementedError(f"{type(self).__name__} must define attention_logits")

    def forward_segments(self, x, seg, n_bags):
        h = self.embed(x)                                               # [T, H]
        alpha = segment_softmax(self.attention_logits(h), seg, n_bags)  # [T, K]
        if seg is None:
            z = (alpha.t() @ h).unsqueeze(0)                            # [1, K, H]
        else:
            z = torch.stack([segment_sum(alpha[:, k:k + 1] * h, seg, n_bags)
                             for k in range(alpha.shape[1])], dim=1)   # [B, K, H]
        logits = (z * self.heads.weight).sum(-1) + self.heads.bias      # [B, K]
        return MILOutput(logits, alpha.detach())


class GatedAttentionMultiMIL(_MultiBranchAttention):
    """Gated attention (HistCode's pooling) with one attention branch per output: V and U
    shared, w_k per output (CLAM_MB's attention_c: Linear(attn_dim, K))."""

    name = "gated-attention-multi"
    config_cls = GatedAttentionConfig

    def __init__(self, config: GatedAttentionConfig):
        super().__init__(config)
        self.embed = _embedding(config.in_dim, config.hidden_dim, config.dropout)
        self.attn_vu = nn.Linear(config.hidden_dim, 2 * config.attn_dim)
        self.attn_w = nn.Linear(config.attn_dim, config.n_outputs)
        self.heads = nn.Linear(config.hidden_dim, config.n_outputs)

    def attention_logits(self, h: Tensor) -> Tensor:
        v, u = self.attn_vu(h).chunk(2, dim=-1)
        return self.attn_w(torch.tanh(v) * torch.sigmoid(u))


class AttentionMultiMIL(_MultiBranchAttention):
    """ABMIL attention without the gate, one branch per output (M = 500, L = 128)."""

    name = "attention-multi"
    config_cls = AttentionConfig

    def __init__(self, config: AttentionConfig):
        super().__init__(config)
        self.embed = _embedding(config.in_dim, config.hidden_dim, config.dropout)
        self.attn_v = nn.Linear(config.hidden_dim, config.attn_dim)
        self.attn_w = nn.Linear(config.attn_dim, config.n_outputs)
        self.heads = nn.Linear(config.hidden_dim, config.n_outputs)

    def attention_logits(self, h: Tensor) -> Tensor:
        return self.attn_w(torch.tanh(self.attn_v(h)))


# -------------------------------------------------------------------------------- registry

MODELS: dict[str, type[MILModel]] = {
    m.name: m for m in (GatedAttentionMIL, AttentionMIL, MeanPoolMIL, MaxPoolMIL, DSMIL, MILRNN)
}


# the multi-output form of a model (`train --joint`: one output per gene), by the model's
# name; checkpoints name the multi-output class (e.g. "gated-attention-multi")
MULTI_OUTPUT: dict[str, type[MILModel]] = {
    "gated-attention": GatedAttentionMultiMIL,
    "attention": AttentionMultiMIL,
}
_BY_NAME: dict[str, type[MILModel]] = {**MODELS, **{m.name: m for m in MULTI_OUTPUT.values()}}


def model_names() -> list[str]:
    """The single-output models (`train --model` choices)."""
    return list(MODELS)


def multi_output_name(name: str) -> str:
    """The registered multi-output form of model `name`; InvalidInput if it has none."""
    if name not in MULTI_OUTPUT:
        raise InvalidInput(f"model {name!r} has no multi-output form for --joint; "
                           f"use one of: {', '.join(MULTI_OUTPUT)}")
    return MULTI_OUTPUT[name].name


def build_model(name: str, in_dim: int, n_outputs: int, **cfg: Any) -> MILModel:
    """Build a registered model: `build_model("gated-attention", 1024, 2, dropout=0.25)`.

    n_outputs: number of classes (>= 2) for classification, 1 for regression; for a
    multi-output model (MULTI_OUTPUT), the number of outputs (genes).
    """
    cls = _model_class(name, cfg)
    return cls(cls.config_cls(in_dim=in_dim, n_outputs=n_outputs, **cfg))


def check_model_settings(name: str, cfg: dict[str, Any]) -> None:
    """Raise InvalidInput now for an unknown model or a bad setting (before any work)."""
    cls = _model_class(name, cfg)
    cls.config_cls(in_dim=1, n_outputs=2, **cfg)


def _model_class(name: str, cfg: dict[str, Any]) -> type[MILModel]:
    if name not in _BY_NAME:
        raise InvalidInput(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    cls = _BY_NAME[name]
    allowed = {f.name for f in fields(cls.config_cls)} - {"in_dim", "n_outputs"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise InvalidInput(f"model {name!r} has no setting {', '.join(unknown)}; "
                           f"settings: {', '.join(sorted(allowed))}")
    return cls


def build_model_from_spec(spec: dict[str, Any]) -> MILModel:
    """Inverse of `MILModel.spec()` (load the state dict afterwards)."""
    config = dict(spec["config"])
    return build_model(spec["name"], config.pop("in_dim"), config.pop("n_outputs"), **config)
