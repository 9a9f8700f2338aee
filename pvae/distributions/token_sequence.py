"""A padded token sequence scored by teacher-forced next-token logits."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution, constraints
from torch.nn import functional as F


class TokenSequence(TorchDistribution):
    r"""The likelihood of an autoregressive decoder over padded sentences.

    Given the logits the decoder computed with teacher forcing on the observed sentence,

    .. math:: \log p(x) = \sum_{t=1}^{T} m_t \log \mathrm{softmax}(\ell_t)[x_t - o],

    with ``m_t = 1`` on the sentence's tokens (``<eos>`` included) and 0 on padding, and
    output ``j`` standing for token ``j + o`` (``o = offset``; pvae's decoders never predict
    ``<pad>`` or ``<bos>``, :mod:`pvae.nets.recurrent`). The sum over a sentence is the chain
    rule, so this is the exact ``log p(x | z)`` of the decoder, and padding contributes nothing
    whatever its length. Computed with one fused ``cross_entropy`` (no full ``log_softmax``
    copy of the logits).

    ``event_shape`` is ``(T,)``; ``batch_shape`` is ``logits.shape[:-2]`` (``(B,)``, or
    ``(K, B)`` for K importance samples), so the site sits in ``pyro.plate("data")`` like an
    image. The logits are only valid for the sentence they were computed on, so the
    distribution scores and does not ``sample`` (decode with :mod:`pvae.models.decoding`).

    :param logits: ``(*batch, T, V)`` next-token logits.
    :param mask: bool ``(..., T)`` broadcastable to ``(*batch, T)``: the tokens to score.
    :param offset: token id of output 0.

    References:
        [1] Bengio, Ducharme, Vincent, Jauvin. A Neural Probabilistic Language Model. JMLR 2003.
        [2] Bowman, Vilnis, Vinyals, Dai, Jozefowicz, Bengio. Generating Sentences from a
            Continuous Space. CoNLL 2016. arXiv:1511.06349
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(
        self,
        logits: torch.Tensor,
        mask: torch.Tensor,
        offset: int = 0,
        validate_args: bool | None = None,
    ) -> None:
        if logits.dim() < 2:
            raise ValueError(f"logits must be (*batch, T, V), got shape {tuple(logits.shape)}")
        self.logits = logits
        self.mask = mask.bool()
        self.offset = offset
        batch_shape = logits.shape[:-2]
        super().__init__(batch_shape, logits.shape[-2:-1], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TokenSequence, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(*batch_shape, *self.logits.shape[-2:])
        new.mask = self.mask
        new.offset = self.offset
        super(TokenSequence, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(self.logits.shape[:-1], value.shape)
        logits = self.logits.expand(*shape, self.logits.shape[-1])
        targets = (value - self.offset).clamp_min(0).expand(shape)
        mask = self.mask.expand(shape)
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        ).reshape(shape)
        return -(nll * mask).sum(-1)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        """Not available: the logits hold for the sentence they were computed on, so a draw
        from them is no sentence of the model. Decode instead (:mod:`pvae.models.decoding`)."""
        raise NotImplementedError(
            "TokenSequence holds teacher-forced logits of one observed sentence and cannot "
            "simulate sentences; decode from the model instead (pvae.models.decoding)"
        )
