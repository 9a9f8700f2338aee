"""The text models: padding never changes a likelihood, the masked token likelihood is a
normalised distribution over sentences, importance sampling agrees with quadrature, decoding
(greedy, sampling, beam search), word dropout and the inputless decoder, the vMF VAE's constant
KL, and the input checks."""

from __future__ import annotations

import itertools
import math

import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import kl_divergence

from pvae.data.text import SPECIALS, TextDataset, Vocabulary
from pvae.distributions import TokenSequence
from pvae.evaluation import log_importance_weights, log_likelihood
from pvae.models.decoding import beam_search, decode, greedy, sample
from pvae.models.lstm_lm import SMOKE as LM_SMOKE
from pvae.models.lstm_lm import LSTMLanguageModel
from pvae.models.sentence_vae import SMOKE as VAE_SMOKE
from pvae.models.sentence_vae import SentenceVAE
from pvae.models.vmf_text_vae import SMOKE as VMF_SMOKE
from pvae.models.vmf_text_vae import VMFTextVAE
from pvae.nets.recurrent import CONDITIONS, OUTPUT_OFFSET, SentenceDecoder

VOCAB = (*SPECIALS, "a", "b", "c", "d", "e")
V = len(VOCAB)
EOS, PAD, UNK = 2, 0, 3

MODELS = {
    "lstm_lm": (LSTMLanguageModel, LM_SMOKE),
    "sentence_vae": (SentenceVAE, VAE_SMOKE),
    "vmf_text_vae": (VMFTextVAE, VMF_SMOKE),
}


def build(name: str, weights_seed: int = 0, **options):
    """A model with smoke sizes and weights drawn from ``weights_seed`` (the same at any
    PVAE_TEST_SEED), in evaluation mode."""
    cls, smoke = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weights_seed)
        model = cls(**{"vocabulary": VOCAB, **smoke, **options})
    return model.eval()


def sentences(*word_lists: list[int]) -> torch.Tensor:
    """The padded batch of the given word ids, each followed by <eos>."""
    longest = max(len(words) for words in word_lists) + 1
    x = torch.zeros(len(word_lists), longest, dtype=torch.int64)
    for i, words in enumerate(word_lists):
        x[i, : len(words) + 1] = torch.tensor([*words, EOS])
    return x


def pad_more(x: torch.Tensor, columns: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(x.shape[0], columns)], dim=1)


def own_length(x: torch.Tensor, i: int) -> torch.Tensor:
    """Sentence ``i`` of a batch alone, padded to its own length."""
    return x[i : i + 1, : int((x[i] != PAD).sum())]


def fixed_z(model, n: int) -> torch.Tensor | None:
    if isinstance(model, LSTMLanguageModel):
        return None
    return model.prior_sample(n, torch.Generator().manual_seed(11))


def site_log_prob(model, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    """Per-sentence ``log p(x | z)`` (``log p(x)`` for the language model) of the model's
    ``"x"`` site, with ``z`` fixed."""
    conditioned = poutine.condition(model.model, data={} if z is None else {"z": z})
    trace = poutine.trace(conditioned).get_trace(x)
    site = trace.nodes["x"]
    assert isinstance(site["fn"], TokenSequence)
    return site["fn"].log_prob(site["value"])


BATCH = sentences([4, 5, 6], [7, 4, 4, 8, 5, 6, 7], [3], [8, 8, 8, 5, 4])


# -- padding changes no loss -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_log_likelihood_of_a_sentence_does_not_depend_on_its_batch(name):
    model = build(name)
    z = fixed_z(model, len(BATCH))
    with torch.no_grad():
        batched = site_log_prob(model, BATCH, z)
        alone = torch.stack(
            [
                site_log_prob(model, own_length(BATCH, i), None if z is None else z[i : i + 1])[0]
                for i in range(len(BATCH))
            ]
        )
        # Extra <pad> columns through the model (which trims them) ...
        padded = site_log_prob(model, pad_more(BATCH, 6), z)
        # ... and straight through the decoder and the likelihood, untrimmed.
        wide = pad_more(BATCH, 6)
        logits = model.decoder(wide, z)
        direct = model.likelihood(logits, wide).log_prob(wide)
        # A sentence in reverse batch order, next to other sentences.
        flipped = site_log_prob(model, BATCH.flip(0), None if z is None else z.flip(0)).flip(0)
    assert torch.isfinite(batched).all() and (batched < 0).all()
    for other in (alone, padded, direct, flipped):
        torch.testing.assert_close(other, batched, rtol=1e-5, atol=1e-5)
    # The value is the chain rule over the sentence's own tokens: <eos> included, padding not.
    logits = model.decoder(own_length(BATCH, 1), None if z is None else z[1:2])
    targets = own_length(BATCH, 1)[0] - OUTPUT_OFFSET
    chain = torch.log_softmax(logits[0], -1).gather(-1, targets.unsqueeze(-1)).sum()
    torch.testing.assert_close(chain, batched[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sentence_vae", "vmf_text_vae"])
def test_encoder_features_ignore_padding(name):
    model = build(name)
    with torch.no_grad():
        features = model.encoder(BATCH)
        assert not torch.allclose(features[0], features[1])
        torch.testing.assert_close(model.encoder(pad_more(BATCH, 5)), features)
        for i in range(len(BATCH)):
            torch.testing.assert_close(model.encoder(own_length(BATCH, i))[0], features[i])
        torch.testing.assert_close(model.encode_mean(pad_more(BATCH, 3)), model.encode_mean(BATCH))


# -- the token likelihood is a distribution over sentences -------------------------------------


def all_word_sequences(length: int, words=(UNK, 4, 5)) -> list[list[int]]:
    return [list(seq) for seq in itertools.product(words, repeat=length)]


def test_lstm_lm_is_normalised_over_sentences():
    """Sum of p(x) over every sentence of at most L tokens (words then <eos>), plus the
    probability that no <eos> came in the first L tokens, is 1."""
    words = (UNK, 4, 5)  # <unk> is a token the decoder predicts, like a word
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lm = LSTMLanguageModel(vocabulary=(*SPECIALS, "a", "b"), embed_dim=3, hidden_dim=4)
    lm = lm.double().eval()
    length = 6
    batch = sentences(*(seq for n in range(length) for seq in all_word_sequences(n, words)))
    assert batch.shape == (sum(3**n for n in range(length)), length)
    with torch.no_grad():
        ended = site_log_prob(lm, batch, None).exp().sum()
        # P(no <eos> among the first L tokens), step by step with the decoder: every run of L
        # words, scored without teacher forcing.
        prefixes = torch.tensor(all_word_sequences(length, words))
        tokens = torch.full((len(prefixes),), 1, dtype=torch.int64)  # <bos>
        state, log_p = None, torch.zeros(len(prefixes), dtype=torch.float64)
        for t in range(length):
            logits, state = lm.decoder.step(tokens, None, state)
            log_p += torch.log_softmax(logits, -1).gather(-1, prefixes[:, t : t + 1] - 2)[:, 0]
            tokens = prefixes[:, t]
        not_ended = log_p.exp().sum()
    assert 0.05 < float(not_ended) < 0.95  # both parts matter
    torch.testing.assert_close(ended + not_ended, torch.tensor(1.0, dtype=torch.float64))


def quadrature_log_marginal(vae: SentenceVAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log int N(z; 0, 1) p(x | z) dz on a fine grid (latent_dim 1)."""
    grid = torch.linspace(-10.0, 10.0, 4001, dtype=torch.float64)
    step = float(grid[1] - grid[0])
    z = grid.view(-1, 1, 1).expand(-1, len(x), 1)
    with torch.no_grad():
        log_px_z = vae.likelihood(vae.decoder(x, z), x).log_prob(x)  # (G, N)
    log_prior = -0.5 * grid**2 - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_prior.unsqueeze(-1) + log_px_z, dim=0) + math.log(step), log_px_z


@pytest.mark.statistical
def test_sentence_vae_importance_sampling_agrees_with_quadrature(seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = SentenceVAE(vocabulary=VOCAB, embed_dim=4, hidden_dim=6, latent_dim=1)
    vae = vae.double().eval()
    with torch.no_grad():
        # z matters: a decoder that reads it strongly ...
        vae.decoder.initial.weight.mul_(6.0)
        vae.decoder.lstm.weight_ih_l0[:, -1].mul_(6.0)
        vae.decoder.output.weight.mul_(4.0)
        # ... and a guide q(z | x) = N(0.3, 1.3^2), wider than the prior, so the importance
        # weights p(z) p(x | z) / q(z) are bounded and their standard error is meaningful.
        head = vae.posterior_head
        head.loc.weight.zero_()
        head.loc.bias.fill_(0.3)
        head.raw_scale.weight.zero_()
        head.raw_scale.bias.fill_(math.log(math.expm1(1.3 - head.min_scale)))
    x = BATCH
    exact, log_px_z = quadrature_log_marginal(vae, x)
    # The likelihood depends on z by several nats over the prior's bulk.
    middle = log_px_z[1600:2401]  # z in [-2, 2]
    assert (middle.max(0).values - middle.min(0).values).min() > 1.0
    num_samples = 2000
    estimate = log_likelihood(vae.model, vae.guide, x, num_samples=num_samples)
    log_w = log_importance_weights(vae.model, vae.guide, x, num_samples)  # (K, N), fresh draws
    w = (log_w - log_w.max(0).values).exp()
    # Delta method: sd(log mean w) ~ sd(w) / (sqrt(K) mean(w)); the estimator's bias is about
    # -se^2 / 2.
    stderr = w.std(0) / (w.mean(0) * math.sqrt(num_samples))
    assert (stderr < 0.05).all()
    assert ((estimate - exact).abs() <= 5 * stderr + stderr**2).all(), (estimate, exact, stderr)


def test_lstm_lm_log_likelihood_is_exact_with_one_sample():
    lm = build("lstm_lm")
    with torch.no_grad():
        exact = site_log_prob(lm, BATCH, None)
    estimate = log_likelihood(lm.model, lm.guide, BATCH, num_samples=1)
    torch.testing.assert_close(estimate, exact)
    dataset = TextDataset(BATCH, Vocabulary(VOCAB), bucket=1)
    metrics = lm.likelihood_metrics(estimate, dataset)
    assert dataset.num_tokens == 4 + 8 + 2 + 6
    per_token = -float(exact.sum()) / dataset.num_tokens
    assert metrics["nll_per_token"] == pytest.approx(per_token)
    assert metrics["perplexity"] == pytest.approx(math.exp(per_token))
    # eval_args orders by length (a permutation of the batch).
    (ordered,) = lm.eval_args((BATCH, torch.zeros(4)))
    assert (ordered != PAD).sum(-1).tolist() == [2, 4, 6, 8]


# -- decoding ---------------------------------------------------------------------------------


def peaked_decoder(
    vocab_size: int = V, latent_dim: int = 3, seed: int = 0, condition: str = "both"
) -> SentenceDecoder:
    """A random decoder whose next-token distributions are far from uniform, with <eos>
    likely enough that most sentences end."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = SentenceDecoder(vocab_size, 8, 16, latent_dim, condition=condition)
    with torch.no_grad():
        decoder.output.weight.mul_(3.0)
        decoder.output.bias[0] += 1.0
    return decoder.eval()


def score(decoder: SentenceDecoder, ids: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    """Log-probability of decoded rows under the decoder (a row without <eos>: of its
    tokens), via the TokenSequence likelihood."""
    with torch.no_grad():
        return TokenSequence(decoder(ids, z), ids != PAD, offset=OUTPUT_OFFSET).log_prob(ids)


def check_rows(ids: torch.Tensor, max_length: int) -> None:
    """Every row: tokens, then <eos>, then only <pad>; or max_length tokens without <eos>."""
    assert ids.dtype == torch.int64 and ids.shape[1] <= max_length
    for row in ids.tolist():
        if EOS in row:
            end = row.index(EOS)
            assert all(t > EOS for t in row[:end]) and all(t == PAD for t in row[end + 1 :])
        else:
            assert len(row) == max_length and all(t > EOS for t in row)


Z = torch.randn(64, 3, generator=torch.Generator().manual_seed(5))


def test_greedy_equals_beam_of_one_and_sampling_at_temperature_zero():
    decoder = peaked_decoder()
    best = greedy(decoder, Z, max_length=12)
    check_rows(best, 12)
    assert torch.equal(beam_search(decoder, Z, beam_size=1, max_length=12), best)
    assert torch.equal(sample(decoder, Z, temperature=0.0, max_length=12), best)
    assert torch.equal(decode(decoder, Z, method="greedy", max_length=12), best)
    # Each greedy token is the argmax given the ones before (teacher-forced check).
    with torch.no_grad():
        logits = decoder(best, Z)
    chosen = logits.argmax(-1) + OUTPUT_OFFSET
    mask = best != PAD
    assert torch.equal(chosen[mask], best[mask])


def test_beam_search_scores_at_least_greedy():
    decoder = peaked_decoder()
    best = greedy(decoder, Z, max_length=12)
    beam = beam_search(decoder, Z, beam_size=5, max_length=12)
    check_rows(beam, 12)
    greedy_score, beam_score = score(decoder, best, Z), score(decoder, beam, Z)
    # Not a theorem of beam search (greedy's prefix can leave the beam), but it holds here,
    # and beam search must improve on greedy somewhere.
    assert (beam_score >= greedy_score - 1e-5).all()
    assert (beam_score > greedy_score + 1e-3).any()
    assert torch.equal(decode(decoder, Z, method="beam", beam_size=5, max_length=12), beam)


def test_exhaustive_beam_search_finds_the_most_likely_sentence():
    """With a beam as large as the number of token sequences, beam search is exact: the best
    of every sentence of at most L tokens and every L-token prefix without <eos>."""
    decoder = peaked_decoder(vocab_size=6, latent_dim=2, seed=1)  # outputs <eos> <unk> a b
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
    length = 4
    candidates = [
        *(seq + [EOS] for n in range(length) for seq in all_word_sequences(n)),
        *all_word_sequences(length),
    ]
    ids = torch.zeros(len(candidates), length, dtype=torch.int64)
    for i, seq in enumerate(candidates):
        ids[i, : len(seq)] = torch.tensor(seq)
    scores = torch.stack(
        [score(decoder, ids, z[b : b + 1].expand(len(ids), -1)) for b in range(len(z))]
    )
    found = beam_search(decoder, z, beam_size=4**length, max_length=length)
    found = torch.cat([found, found.new_zeros(len(z), length - found.shape[1])], dim=1)
    torch.testing.assert_close(score(decoder, found, z), scores.max(-1).values)
    assert torch.equal(found, ids[scores.argmax(-1)])


def test_sampling_is_reproducible_and_rows_are_sentences():
    decoder = peaked_decoder()
    draws = [
        sample(decoder, Z, max_length=12, generator=torch.Generator().manual_seed(s))
        for s in (1, 1, 2)
    ]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    for ids in draws:
        check_rows(ids, 12)
    lm = peaked_decoder(latent_dim=0)
    a = sample(lm, batch=16, max_length=12, generator=torch.Generator().manual_seed(4))
    b = decode(
        lm, method="sample", batch=16, max_length=12, generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(a, b) and a.shape[0] == 16
    with pytest.raises(ValueError, match="temperature"):
        sample(decoder, Z, temperature=-1.0)
    with pytest.raises(ValueError, match="pass z or batch"):
        greedy(lm)
    with pytest.raises(ValueError, match="unknown decoding method"):
        decode(decoder, Z, method="nucleus")


@pytest.mark.statistical
def test_sampled_sentences_follow_the_token_likelihood(seed):
    """Ancestral sampling draws a sentence with the probability TokenSequence gives it; at
    temperature 2 the first token follows softmax(logits / 2)."""
    decoder = peaked_decoder(vocab_size=6, latent_dim=0, seed=3)
    n = 4000
    generator = torch.Generator().manual_seed(seed)
    draws = sample(decoder, batch=n, max_length=4, generator=generator)
    short = [seq + [EOS] for k in range(3) for seq in all_word_sequences(k)]  # <= 2 words
    ids = torch.zeros(len(short), 3, dtype=torch.int64)
    for i, seq in enumerate(short):
        ids[i, : len(seq)] = torch.tensor(seq)
    p = score(decoder, ids, None).exp()
    padded = torch.cat([draws, draws.new_zeros(n, max(0, 3 - draws.shape[1]))], dim=1)
    counts = torch.tensor(
        [
            int(((padded[:, :3] == row).all(-1) & (padded[:, 3:] == PAD).all(-1)).sum())
            for row in ids
        ]
    )
    sd = (n * p * (1 - p)).sqrt()
    assert ((counts - n * p).abs() <= 5 * sd + 1).all(), (counts, n * p)
    hot = sample(decoder, batch=n, max_length=1, temperature=2.0, generator=generator)
    with torch.no_grad():
        logits, _ = decoder.step(torch.ones(1, dtype=torch.int64), None, None)
    q = torch.softmax(logits[0] / 2.0, -1)
    first = torch.bincount(hot[:, 0] - OUTPUT_OFFSET, minlength=len(q))
    assert ((first - n * q).abs() <= 5 * (n * q * (1 - q)).sqrt() + 1).all(), (first, n * q)


# -- word dropout, inputless, step = forward ---------------------------------------------------


def as_unk(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every word (and <unk>) as <unk>; <eos> and <pad> kept."""
    return torch.where(x > EOS, torch.full_like(x, UNK), x)


def twin(decoder: SentenceDecoder, **options) -> SentenceDecoder:
    """A decoder with the same weights and other options."""
    other = SentenceDecoder(V, 8, 16, decoder.latent_dim, condition=decoder.condition, **options)
    other.load_state_dict(decoder.state_dict())
    return other


def test_word_dropout_only_in_training_mode():
    z = Z[: len(BATCH)]
    plain = peaked_decoder()
    dropping = twin(plain, word_dropout=0.5).eval()
    with torch.no_grad():
        reference = plain(BATCH, z)
        torch.testing.assert_close(dropping(BATCH, z), reference)  # evaluation: no dropout
        dropping.train()
        assert not torch.allclose(dropping(BATCH, z), reference)
        always = twin(plain, word_dropout=1.0).train()
        torch.testing.assert_close(always(BATCH, z), plain(as_unk(BATCH), z))
    model = build("sentence_vae", word_dropout=0.5)
    base = build("sentence_vae")
    zz = fixed_z(model, len(BATCH))
    with torch.no_grad():
        torch.testing.assert_close(site_log_prob(model, BATCH, zz), site_log_prob(base, BATCH, zz))


@pytest.mark.parametrize("condition", CONDITIONS)
def test_inputless_decoder_reads_only_unk_in_both_modes(condition):
    z = Z[: len(BATCH)]
    plain = peaked_decoder(condition=condition)
    inputless = twin(plain, inputless=True)
    with torch.no_grad():
        expected = plain(as_unk(BATCH), z)
        assert not torch.allclose(expected, plain(BATCH, z))
        for mode in (True, False):
            inputless.train(mode)
            torch.testing.assert_close(inputless(BATCH, z), expected)
        # Decoding step by step feeds <unk> too: greedy decoding scores like forward.
        inputless.eval()
        ids = greedy(inputless, z, max_length=10)
        logits = inputless(ids, z)
        assert torch.equal((logits.argmax(-1) + OUTPUT_OFFSET)[ids != PAD], ids[ids != PAD])


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("latent_dim", [0, 3])
def test_step_by_step_logits_equal_teacher_forced_logits(condition, latent_dim):
    decoder = peaked_decoder(latent_dim=latent_dim, condition=condition)
    z = Z[: len(BATCH)] if latent_dim else None
    with torch.no_grad():
        forced = decoder(BATCH, z)
        state = decoder.initial_state(z, len(BATCH))
        tokens = torch.ones(len(BATCH), dtype=torch.int64)
        for t in range(BATCH.shape[1]):
            logits, state = decoder.step(tokens, z, state)
            torch.testing.assert_close(logits, forced[:, t])
            tokens = BATCH[:, t]
    # K importance samples per sentence: each (k, b) decodes sentence b with z[k, b].
    if latent_dim:
        zk = torch.randn(3, len(BATCH), latent_dim, generator=torch.Generator().manual_seed(8))
        with torch.no_grad():
            many = decoder(BATCH, zk)
            assert many.shape == (3, *forced.shape)
            torch.testing.assert_close(many[2], decoder(BATCH, zk[2]))


def test_token_sequence_cannot_sample():
    logits = torch.zeros(2, 3, V - 2)
    likelihood = TokenSequence(logits, torch.ones(2, 3, dtype=torch.bool), offset=OUTPUT_OFFSET)
    with pytest.raises(NotImplementedError, match="decode"):
        likelihood.sample()
    assert likelihood.batch_shape == (2,) and likelihood.event_shape == (3,)
    # Uniform logits: every scored token costs log(V - 2).
    x = sentences([4, 5], [6])
    mask = x != PAD
    value = TokenSequence(logits, mask, offset=OUTPUT_OFFSET).log_prob(x)
    torch.testing.assert_close(value, -mask.sum(-1) * math.log(V - 2))


# -- the vMF VAE's KL ---------------------------------------------------------------------------


def test_vmf_kl_is_the_same_for_every_sentence_at_fixed_kappa():
    model = build("vmf_text_vae", kappa=5.0)
    with torch.no_grad():
        q = model.posterior(BATCH)
        kl = kl_divergence(q, model.prior())
    assert kl.shape == (len(BATCH),)
    assert not torch.allclose(q.loc[0], q.loc[1])  # different directions ...
    torch.testing.assert_close(kl, kl[:1].expand_as(kl))  # ... the same KL
    # On S^2: KL(vMF(kappa) || uniform) = kappa coth(kappa) - 1 + log(kappa / sinh(kappa)).
    kappa = torch.tensor(5.0, dtype=torch.float64)
    closed = kappa / torch.tanh(kappa) - 1 + torch.log(kappa / torch.sinh(kappa))
    torch.testing.assert_close(kl.double(), closed.expand(len(BATCH)), rtol=1e-5, atol=1e-5)
    # A learned kappa(x) gives each sentence its own KL.
    learned = build("vmf_text_vae", learn_kappa=True)
    with torch.no_grad():
        varied = kl_divergence(learned.posterior(BATCH), learned.prior())
    assert varied.std() > 1e-4


# -- input checks -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_text_models_reject_bad_input(name):
    model = build(name)
    cases = [
        (BATCH.float(), "expects token ids, int64"),
        (BATCH.int(), "expects token ids, int64"),
        (BATCH[0], "expects token ids, int64"),
        (torch.tensor([[4, V, EOS]]), f"token ids must lie in 0..{V - 1}"),
        (torch.tensor([[4, -1, EOS]]), f"token ids must lie in 0..{V - 1}"),
        (torch.tensor([[4, 5, EOS], [PAD, PAD, PAD]]), "empty sentence"),
        (torch.zeros(2, 0, dtype=torch.int64), "empty sentence"),
    ]
    for x, message in cases:
        with pytest.raises(ValueError, match=message):
            model.model(x)
        if name != "lstm_lm":
            with pytest.raises(ValueError, match=message):
                model.guide(x)


def test_text_models_sample_and_reconstruct_sentences():
    vocabulary = Vocabulary(VOCAB)
    words = set(VOCAB[3:])
    for name in MODELS:
        model = build(name)
        drawn = model.sample(4, generator=torch.Generator().manual_seed(0))
        assert len(drawn) == 4 and all(set(s.split()) <= words for s in drawn)
        if name != "lstm_lm":
            assert len(model.reconstruct(BATCH)) == len(BATCH)
            assert len(model.homotopy(BATCH[0], BATCH[1], steps=3)) == 3
            assert model.decoder.training is False
    assert vocabulary.decode(BATCH[1].tolist()) == ["d", "a", "a", "e", "b", "c", "d"]
