"""Decoding sentences from a :class:`~pvae.nets.recurrent.SentenceDecoder`: greedy, sampling
with a temperature, and beam search, optionally conditioned on latent codes ``z``.

Each returns int64 ids ``(B, L)``: every row a sentence ending in ``<eos>`` (or cut at
``max_length`` tokens), padded with ``<pad>`` after it, as a :class:`~pvae.data.text.TextDataset`
stores sentences; ``Vocabulary.decode`` turns a row into words.
"""

from __future__ import annotations

import torch

from pvae.nets.recurrent import BOS_ID, EOS_ID, OUTPUT_OFFSET, PAD_ID, SentenceDecoder

__all__ = ["beam_search", "decode", "greedy", "sample"]


def _start(
    decoder: SentenceDecoder, z: torch.Tensor | None, batch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, tuple | None]:
    tokens = torch.full((batch,), BOS_ID, dtype=torch.int64, device=device)
    return tokens, decoder.initial_state(z, batch), None


def _finish(steps: list[torch.Tensor]) -> torch.Tensor:
    ids = torch.stack(steps, dim=1)
    # Everything after the first <eos> is padding.
    ended = torch.cumsum((ids == EOS_ID).long(), dim=1)
    after = (ended - (ids == EOS_ID).long()) > 0
    return ids.masked_fill(after, PAD_ID)


@torch.no_grad()
def sample(
    decoder: SentenceDecoder,
    z: torch.Tensor | None = None,
    *,
    batch: int | None = None,
    max_length: int = 50,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Ancestral sampling, ``x_t ~ softmax(logits_t / temperature)``; ``temperature`` 0 is
    greedy decoding. ``z`` ``(B, D)`` (or ``batch=B`` sentences for a plain language model)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    batch = z.shape[0] if z is not None else batch
    if batch is None:
        raise ValueError("pass z or batch")
    device = next(decoder.parameters()).device
    tokens, state, _ = _start(decoder, z, batch, device)
    steps, done = [], torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(max_length):
        logits, state = decoder.step(tokens, z, state)
        if temperature == 0:
            choice = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, -1)
            draw = torch.multinomial(
                probs.cpu() if generator is not None else probs, 1, generator=generator
            )
            choice = draw.squeeze(-1).to(device)
        tokens = choice + OUTPUT_OFFSET
        steps.append(tokens)
        done |= tokens == EOS_ID
        if bool(done.all()):
            break
    return _finish(steps)


def greedy(
    decoder: SentenceDecoder,
    z: torch.Tensor | None = None,
    *,
    batch: int | None = None,
    max_length: int = 50,
) -> torch.Tensor:
    """The most likely next token at every step (sampling at temperature 0)."""
    return sample(decoder, z, batch=batch, max_length=max_length, temperature=0.0)


@torch.no_grad()
def beam_search(
    decoder: SentenceDecoder,
    z: torch.Tensor | None = None,
    *,
    batch: int | None = None,
    beam_size: int = 5,
    max_length: int = 50,
) -> torch.Tensor:
    """The highest-scoring sentence of a beam of ``beam_size`` hypotheses (score: the
    sentence's log-probability under the decoder; finished hypotheses keep their score)."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    batch = z.shape[0] if z is not None else batch
    if batch is None:
        raise ValueError("pass z or batch")
    device = next(decoder.parameters()).device
    flat_z = z.repeat_interleave(beam_size, dim=0) if z is not None else None
    tokens, state, _ = _start(decoder, flat_z, batch * beam_size, device)
    # Only the first hypothesis of each beam is live at the start (all are <bos>).
    scores = torch.full((batch, beam_size), float("-inf"), device=device)
    scores[:, 0] = 0.0
    history = torch.zeros(batch, beam_size, 0, dtype=torch.int64, device=device)
    done = torch.zeros(batch, beam_size, dtype=torch.bool, device=device)
    for _ in range(max_length):
        logits, state = decoder.step(tokens, flat_z, state)
        log_probs = torch.log_softmax(logits.float(), -1).view(batch, beam_size, -1)
        vocab = log_probs.shape[-1]
        # A finished hypothesis extends only by <pad> (output index 0 here), at no cost.
        finished = torch.full_like(log_probs, float("-inf"))
        finished[..., 0] = 0.0
        log_probs = torch.where(done.unsqueeze(-1), finished, log_probs)
        candidates = (scores.unsqueeze(-1) + log_probs).view(batch, -1)
        scores, index = candidates.topk(beam_size, dim=-1)
        origin, choice = index // vocab, index % vocab
        new_tokens = choice + OUTPUT_OFFSET
        was_done = done.gather(1, origin)
        new_tokens = torch.where(was_done, torch.full_like(new_tokens, PAD_ID), new_tokens)
        history = torch.cat(
            [
                history.gather(1, origin.unsqueeze(-1).expand(-1, -1, history.shape[-1])),
                new_tokens.unsqueeze(-1),
            ],
            dim=-1,
        )
        done = was_done | (new_tokens == EOS_ID)
        rows = (origin + torch.arange(batch, device=device).unsqueeze(1) * beam_size).view(-1)
        state = tuple(part[:, rows] for part in state)
        tokens = torch.where(
            new_tokens == PAD_ID, torch.full_like(new_tokens, EOS_ID), new_tokens
        ).view(-1)
        if bool(done.all()):
            break
    best = scores.argmax(-1)
    ids = history[torch.arange(batch, device=device), best]
    return _finish(list(ids.unbind(-1)))


def decode(
    decoder: SentenceDecoder,
    z: torch.Tensor | None = None,
    *,
    method: str = "greedy",
    batch: int | None = None,
    max_length: int = 50,
    temperature: float = 1.0,
    beam_size: int = 5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decodes with ``method`` ``"greedy"``, ``"sample"`` or ``"beam"``."""
    if method == "greedy":
        return greedy(decoder, z, batch=batch, max_length=max_length)
    if method == "sample":
        return sample(
            decoder,
            z,
            batch=batch,
            max_length=max_length,
            temperature=temperature,
            generator=generator,
        )
    if method == "beam":
        return beam_search(decoder, z, batch=batch, beam_size=beam_size, max_length=max_length)
    raise ValueError(f"unknown decoding method {method!r}; choose greedy, sample or beam")
