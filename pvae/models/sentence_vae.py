"""The sentence VAE of Bowman et al. (2016), "Generating Sentences from a Continuous Space".

Generative story, for each sentence n::

    z_n ~ Normal(0, I_D)                                   site "z", shape (B, D)
    x_n,t ~ Categorical(softmax(W h_n,t))                  site "x", a TokenSequence
    h_n,t = LSTM(h_n,t-1, [embed(x_n,t-1); z_n]),  h_n,0 = tanh(W_0 z_n)

(``condition``: z through the initial state, ``init``; through every input, ``input``; or
both, the default, as He et al. 2019's code). Guide: an LSTM reads x, and its state at
``<eos>`` gives ``q(z_n | x_n) = Normal(mu, diag sigma^2)``.

An LSTM decoder can model a sentence by itself and so learns to ignore z: the KL term goes to
zero (*posterior collapse*). The remedies people use are options here:

- KL annealing (``pvae train --kl-anneal E --kl-schedule linear|logistic|cyclical``):
  Bowman's logistic schedule and Fu et al.'s cyclical one (:mod:`pvae.infer.callbacks`);
- ``word_dropout`` p: in training, every decoder input word becomes ``<unk>`` with
  probability p (Bowman et al. Sec. 3.2); ``inputless`` is p = 1, at evaluation too;
- ``free_bits`` lambda (Kingma et al. 2016): the per-dimension KL is floored at lambda by a
  zero-valued surrogate, as in :class:`pvae.models.vae.VAE` (bounds stay unbiased);
- ``beta`` weights the KL (``kl_weight=0``-style ablations: a tiny beta).

References:
    [1] Bowman, Vilnis, Vinyals, Dai, Jozefowicz, Bengio. Generating Sentences from a
        Continuous Space. CoNLL 2016. arXiv:1511.06349
    [2] Fu, Li, Liu, Gao, Celikyilmaz, Carin. Cyclical Annealing Schedule. NAACL 2019.
        arXiv:1903.10145
    [3] He, Spokoyny, Neubig, Berg-Kirkpatrick. Lagging Inference Networks and Posterior
        Collapse in Variational Autoencoders. ICLR 2019. arXiv:1901.05534
    [4] Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling. Improving Variational
        Inference with Inverse Autoregressive Flow. NeurIPS 2016. arXiv:1606.04934
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch.nn import functional as F

from pvae.models.base import option
from pvae.models.registry import register_model
from pvae.models.text import TextConfig, TextModel
from pvae.nets.mlp import GaussianHead
from pvae.nets.recurrent import CONDITIONS, SentenceDecoder, SentenceEncoder


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    return bool(value)


@dataclass(frozen=True)
class SentenceVAEConfig(TextConfig):
    """Options of :class:`SentenceVAE` (and of the vMF text VAE)."""

    latent_dim: int = option(32, "latent dimensions", convert=int)
    condition: str = option("both", f"how z enters the decoder: {', '.join(CONDITIONS)}")
    word_dropout: float = option(0.0, "probability of an input word becoming <unk>", convert=float)
    inputless: bool = option(False, "decoder inputs are all <unk> (train and test)", convert=_flag)
    beta: float = option(1.0, "weight of the KL term", convert=float)
    free_bits: float = option(0.0, "per-dimension KL floor in nats (0: off)", convert=float)

    def validate(self) -> None:
        super().validate()
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {self.latent_dim}")
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {self.condition!r}")
        if not 0.0 <= self.word_dropout <= 1.0:
            raise ValueError(f"word_dropout must be in [0, 1], got {self.word_dropout}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a positive number, got {self.beta}")
        if not (self.free_bits >= 0 and math.isfinite(self.free_bits)):
            raise ValueError(f"free_bits must be a non-negative number, got {self.free_bits}")


SMOKE = {"embed_dim": 8, "hidden_dim": 8, "latent_dim": 2, "max_decode_length": 8}


@register_model("sentence_vae", smoke=SMOKE, smoke_dataset="ptb")
class SentenceVAE(TextModel):
    """Gaussian sentence VAE with LSTM encoder and decoder (Bowman et al. 2016).

    Options (:class:`SentenceVAEConfig`): those of every text model, ``latent_dim``,
    ``condition``, ``word_dropout``, ``inputless``, ``beta``, ``free_bits``.

    Shapes: ``x`` int64 ``(B, T)``; site ``"z"`` ``(B, latent_dim)``.
    """

    Config = SentenceVAEConfig
    config: SentenceVAEConfig

    def __init__(self, config: SentenceVAEConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        config = self.config
        self.latent_dim = config.latent_dim
        self.encoder = SentenceEncoder(self.vocab_size, config.embed_dim, config.hidden_dim)
        self.posterior_head = self.build_posterior_head()
        self.decoder = SentenceDecoder(
            self.vocab_size,
            config.embed_dim,
            config.hidden_dim,
            config.latent_dim,
            condition=config.condition,
            word_dropout=config.word_dropout,
            inputless=config.inputless,
            dropout=config.dropout,
        )
        self.register_buffer("prior_loc", torch.zeros(self.latent_dim))
        self.register_buffer("prior_scale", torch.ones(self.latent_dim))

    # -- the pieces a vMF subclass replaces -----------------------------------------------------
    def build_posterior_head(self) -> torch.nn.Module:
        return GaussianHead(self.config.hidden_dim, self.latent_dim)

    def prior(self) -> dist.TorchDistribution:
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self.posterior_head(self.encoder(x))
        return dist.Normal(loc, scale).to_event(1)

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior_head(self.encoder(self._trim(x)))[0]

    def prior_sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        eps = torch.randn(num_samples, self.latent_dim, generator=generator)
        return self.prior_loc + self.prior_scale * eps.to(self.prior_loc)

    # -- Pyro model and guide -------------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        """p(x, z) = p(z) prod_t p(x_t | x_<t, z); ``x`` int64 ``(B, T)``."""
        self._check_input(x)
        x = self._trim(x)
        with pyro.plate("data", x.shape[0]):
            with self._kl_weight():
                z = pyro.sample("z", self.prior())
                if self.config.free_bits > 0:
                    pyro.factor("free_bits", self.free_bits_surrogate(x))
            pyro.sample("x", self.likelihood(self.decoder(x, z), x), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) from the encoder LSTM's state at ``<eos>``."""
        self._check_input(x)
        x = self._trim(x)
        with pyro.plate("data", x.shape[0]), self._kl_weight():
            pyro.sample("z", self.posterior(x))

    @torch.no_grad()
    def metrics(self, test: Any) -> dict[str, float]:
        """``test_kl``: the mean ``KL(q(z | x) || p(z))`` per sentence (analytic), and
        ``test_active_units`` (Burda et al.'s ``Cov_x E[z_u | x] > 0.01``)."""
        from torch.distributions import kl_divergence

        from pvae.evaluation.collapse import ActiveUnits

        device = self._anchor.device
        kls, means = [], []
        for x, _ in test.batches(256, shuffle=False):
            x = self._trim(x.to(device))
            posterior = self.posterior(x)
            kls.append(kl_divergence(posterior, self.prior().expand(posterior.batch_shape)))
            means.append(posterior.mean)
        result = {"test_kl": float(torch.cat(kls).mean())}
        if len(test) >= 2:
            variances = torch.cat(means).var(0, unbiased=False)
            result["test_active_units"] = float(ActiveUnits(variances, 0.01).count)
        return result

    def free_bits_surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-valued ``c - stop_grad(c)``, ``c = -sum_j max(0, lambda - mean_n KL_nj)``:
        the free-bits gradient without changing any bound (see :class:`pvae.models.vae.VAE`)."""
        loc, scale = self.posterior_head(self.encoder(x))
        kl = 0.5 * (loc**2 + scale**2 - 1.0) - torch.log(scale)
        correction = -F.relu(self.config.free_bits - kl.mean(0)).sum()
        return (correction - correction.detach()).expand(x.shape[0])

    def _kl_weight(self) -> contextlib.AbstractContextManager:
        beta = self.config.beta
        return poutine.scale(scale=beta) if beta != 1.0 else contextlib.nullcontext()
