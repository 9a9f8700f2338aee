"""evaluate_model scores the model in evaluation mode and leaves its mode as it was."""

import torch

from pvae.data import load_dataset
from pvae.models.registry import build_model
from pvae.runs.evaluate import evaluate_model


def test_evaluation_turns_word_dropout_off_and_restores_the_mode():
    test = load_dataset("ptb", "test", size=6, progress=False)
    vocabulary = test.model_options()["vocabulary"]
    torch.manual_seed(0)
    model = build_model(
        "sentence_vae",
        vocabulary=vocabulary,
        embed_dim=8,
        hidden_dim=8,
        latent_dim=2,
        word_dropout=1.0,
    )
    model.train()
    trained_mode = evaluate_model(model, test, num_samples=3, progress=False)
    assert model.training, "the caller's mode is restored"
    model.eval()
    eval_mode = evaluate_model(model, test, num_samples=3, progress=False)
    assert not model.training
    # Same seed, same samples: with word dropout on (p = 1 replaces every input word) the
    # NLL would differ; evaluation must not depend on the caller's mode.
    assert trained_mode["nll"] == eval_mode["nll"]
