"""The ``pvae`` command line: help texts, a tiny end-to-end run, user errors, kill and resume.

Commands run in-process through :func:`pvae.cli.main` (fast); only the kill/resume test starts
subprocesses. Runs are tiny (a few hundred MNIST images, one epoch), so the numbers they produce
are only checked for being finite and plausible, never for quality.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pvae.cli import EXIT_USAGE, build_parser, main
from pvae.models import available_models

COMMANDS = ("train", "evaluate", "sample", "diagnose")
# One epoch over 300 images, evaluated on 50 test images with K=20.
TINY = [
    "--train-size",
    "300",
    "--epochs",
    "1",
    "--eval-size",
    "50",
    "--eval-samples",
    "20",
    "--batch-size",
    "64",
    "--no-progress",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``pvae ARGV`` in-process: (exit code, stdout, stderr). argparse exits by SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expect_error(argv: list[str], capsys, contains: str) -> str:
    """Exit code 2 and exactly one line on stderr, ``pvae COMMAND: error: ...``, no traceback."""
    code, _, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == EXIT_USAGE, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"pvae {argv[0]}: error: "), err
    assert contains in lines[0], err
    return lines[0]


def status_of(run: Path) -> str:
    return json.loads((run / "status.json").read_text())["status"]


def modules_state(run: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(run / "checkpoints" / "checkpoint_last.pt", weights_only=False)
    return payload["modules"][0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One tiny ``pvae train`` run shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run, for tests that damage or extend it."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


# -- help ---------------------------------------------------------------------------------------
def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_help_lists_every_command(capsys) -> None:
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    assert set(_subcommands()) == set(COMMANDS)
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_mentions_every_option(command: str, capsys) -> None:
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0
    actions = [a for a in _subcommands()[command]._actions if a.dest != "help"]
    assert actions
    for action in actions:
        assert action.help, f"{command}: {action.dest} has no help text"
        names = action.option_strings or [action.dest]
        for name in names:
            assert name in out, f"`pvae {command} --help` does not mention {name}"


def test_console_script_help() -> None:
    script = Path(sys.executable).with_name("pvae")
    if not script.exists():
        pytest.skip(f"no pvae console script next to {sys.executable}")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout


# -- a tiny end-to-end run ----------------------------------------------------------------------
def test_train_writes_a_complete_run_folder(trained_run: Path) -> None:
    for name in (
        "config.json",
        "status.json",
        "metrics.json",
        "report.md",
        "checkpoints/checkpoint_last.pt",
        "checkpoints/checkpoint_best.pt",
    ):
        assert (trained_run / name).is_file(), name
    for name in ("loss_curve.png", "samples.png", "reconstructions.png"):
        assert (trained_run / name).read_bytes().startswith(PNG_SIGNATURE), name
    assert status_of(trained_run) == "complete"

    config = json.loads((trained_run / "config.json").read_text())
    assert (config["model"], config["dataset"], config["objective"]) == ("vae", "mnist", "elbo")
    assert (config["train_size"], config["eval_size"], config["eval_samples"]) == (300, 50, 20)
    assert config["train"]["epochs"] == 1 and config["train"]["batch_size"] == 64

    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["eval_samples"] == 20 and metrics["eval_size"] == 50
    assert len(metrics["history"]) == 1
    # An importance-sampled NLL of binarized MNIST in nats: positive, and below 784 ln 2 (a
    # coin per pixel), which the output-bias initialisation alone already beats.
    assert 0 < metrics["test_nll"] < 784 * math.log(2)
    assert 0 < metrics["test_nll_stderr"] < metrics["test_nll"]

    report = (trained_run / "report.md").read_text()
    assert f"{metrics['test_nll']:.2f}" in report
    for figure in ("loss_curve.png", "samples.png", "reconstructions.png"):
        assert f"({figure})" in report


def test_evaluate(run_copy: Path, capsys) -> None:
    argv = ["evaluate", str(run_copy), "--eval-size", "20", "--eval-samples", "10", "--no-progress"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "test NLL" in out
    result = json.loads((run_copy / "evaluation_test_K10_n20.json").read_text())
    assert (result["split"], result["checkpoint"]) == ("test", "best")
    assert (result["eval_size"], result["eval_samples"]) == (20, 10)
    assert 0 < result["nll"] < 784 * math.log(2)


def test_sample(run_copy: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "grid.png"
    code, stdout, err = run_cli(["sample", str(run_copy), "--num", "4", "--out", str(out)], capsys)
    assert code == 0, err
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert str(out) in stdout
    # Without --out, the grid goes into the run folder, named after the seed.
    code, _, err = run_cli(["sample", str(run_copy), "--num", "4", "--seed", "3"], capsys)
    assert code == 0, err
    assert (run_copy / "samples_seed3.png").read_bytes().startswith(PNG_SIGNATURE)


# -- user errors: one line, exit code 2 ---------------------------------------------------------
def test_unknown_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    expect_error(["train", "--model", "nope", *TINY, "--out", str(out)], capsys, "unknown model")
    assert not out.exists()


def test_unknown_dataset(tmp_path: Path, capsys) -> None:
    argv = ["train", "--dataset", "nope", *TINY, "--out", str(tmp_path / "run")]
    expect_error(argv, capsys, "unknown dataset 'nope'")


def test_dataset_not_found(tmp_path: Path, monkeypatch, capsys) -> None:
    """No file anywhere, and the only download source refuses connections at once."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("PVAE_DATA_DIR", str(empty))
    monkeypatch.setenv("PVAE_DATA_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.chdir(tmp_path)  # fetch also looks in ./data
    line = expect_error(
        ["train", *TINY, "--out", str(tmp_path / "run")], capsys, "'mnist.npz' not found"
    )
    assert "PVAE_DATA_DIR" in line


def test_completed_run_is_not_overwritten(run_copy: Path, capsys) -> None:
    before = (run_copy / "metrics.json").read_bytes()
    expect_error(["train", *TINY, "--out", str(run_copy)], capsys, "already holds a completed run")
    assert status_of(run_copy) == "complete"
    assert (run_copy / "metrics.json").read_bytes() == before


def test_resume_with_a_different_model_is_refused(run_copy: Path, capsys) -> None:
    config = (run_copy / "config.json").read_bytes()
    argv = ["train", *TINY, "--latent-dim", "3", "--resume", "--out", str(run_copy)]
    expect_error(argv, capsys, "cannot resume")
    assert (run_copy / "config.json").read_bytes() == config
    assert status_of(run_copy) == "complete"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_evaluate_with_a_corrupt_checkpoint(run_copy: Path, damage: str, capsys) -> None:
    path = run_copy / "checkpoints" / "checkpoint_best.pt"
    data = path.read_bytes()
    path.write_bytes(b"not a checkpoint" if damage == "garbage" else data[: len(data) // 2])
    argv = ["evaluate", str(run_copy), "--eval-size", "10", "--eval-samples", "5", "--no-progress"]
    expect_error(argv, capsys, "corrupt")


def test_evaluate_missing_or_foreign_folder(tmp_path: Path, capsys) -> None:
    expect_error(["evaluate", str(tmp_path / "missing")], capsys, "does not exist")
    expect_error(["evaluate", str(tmp_path)], capsys, "not a pvae run folder")


def test_sample_into_a_missing_folder(run_copy: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "missing" / "grid.png"
    expect_error(["sample", str(run_copy), "--num", "2", "--out", str(out)], capsys, "missing")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "-1"],
        ["train", "--lr", "0"],
        ["evaluate", "run", "--eval-samples", "0"],
    ],
    ids=["negative-epochs", "zero-lr", "zero-eval-samples"],
)
def test_bad_numbers_are_usage_errors(argv: list[str], capsys) -> None:
    code, _, err = run_cli(argv, capsys)
    assert code == EXIT_USAGE
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"pvae {argv[0]}: error: argument {argv[-2]}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path: Path, capsys) -> None:
    argv = ["train", *TINY, "--device", "cuda", "--out", str(tmp_path / "run")]
    expect_error(argv, capsys, "CUDA is not available")


# -- training failures ----------------------------------------------------------------------------
def test_non_finite_loss_fails_the_run(tmp_path: Path, monkeypatch, capsys) -> None:
    """From the third training step on the objective returns NaN: a clear one-line error, status
    failed, no metrics, and the last good checkpoint kept."""
    import pvae.infer.train as train_module

    make_objective = train_module.make_objective

    class PoisonedObjective:
        def __init__(self, inner) -> None:
            self.__dict__["inner"] = inner
            self.__dict__["training_steps"] = 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __setattr__(self, name, value) -> None:
            setattr(self.inner, name, value)

        def __call__(self, *args, **kwargs):
            value = self.inner(*args, **kwargs)
            if torch.is_grad_enabled():
                self.__dict__["training_steps"] += 1
                if self.training_steps >= 3:
                    value.loss = value.loss * float("nan")
            return value

    monkeypatch.setattr(
        train_module, "make_objective", lambda *a, **k: PoisonedObjective(make_objective(*a, **k))
    )
    out = tmp_path / "run"
    line = expect_error(
        ["train", *TINY, "--checkpoint-every", "1", "--out", str(out)], capsys, "non-finite loss"
    )
    assert "epoch 1, step 3" in line and "--lr" in line
    assert status_of(out) == "failed"
    assert "non-finite loss" in json.loads((out / "status.json").read_text())["error"]
    assert not (out / "metrics.json").exists()
    assert torch.load(out / "checkpoints" / "checkpoint_last.pt", weights_only=False)["step"] == 2


def test_diverging_learning_rate_gives_a_clear_error(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    expect_error(["train", *TINY, "--lr", "1e30", "--out", str(out)], capsys, "non-finite")
    assert status_of(out) == "failed"


def test_seed_fixes_the_initialisation(tmp_path: Path, capsys) -> None:
    """The same --seed gives the same weights whatever the process's random state was."""
    argv = ["train", *TINY, "--train-size", "100", "--hidden", "16", "--latent-dim", "2"]
    states = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # whatever ran before in this process
        out = tmp_path / f"run{global_seed}"
        assert run_cli([*argv, "--out", str(out)], capsys)[0] == 0
        states.append(modules_state(out))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


# -- kill and resume ------------------------------------------------------------------------------
RESUME_ARGS = [
    "--train-size",
    "2000",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--hidden",
    "64",
    "--latent-dim",
    "8",
    "--checkpoint-every",
    "3",
    "--eval-size",
    "20",
    "--eval-samples",
    "5",
    "--seed",
    "3",
    "--no-progress",
]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> tuple[Path, Path, dict]:
    """Two subprocess runs with the same seed: one uninterrupted, one SIGKILLed just after its
    first checkpoint (three steps into epoch 1) and resumed with --resume. One thread each, so
    that the arithmetic is deterministic. Returns (resumed run, reference run, the checkpoint
    the kill left)."""
    tmp_path = tmp_path_factory.mktemp("resume")
    command = [sys.executable, "-m", "pvae.cli", "train", *RESUME_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    killed_run, reference_run = tmp_path / "killed", tmp_path / "reference"

    def start(out: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [*command, "--out", str(out)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    reference = start(reference_run)  # runs alongside the one we kill
    victim = start(killed_run)
    try:
        last = killed_run / "checkpoints" / "checkpoint_last.pt"
        deadline = time.monotonic() + 120
        while not last.exists():
            assert victim.poll() is None, f"training ended before its first checkpoint: {victim}"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.002)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        # The killed run is visibly unfinished.
        assert status_of(killed_run) == "running"
        assert not (killed_run / "metrics.json").exists()
        killed_at = torch.load(last, weights_only=False)
        assert killed_at["epoch"] < 2, "the kill came after training had finished"

        resumed = subprocess.run(
            [*command, "--resume", "--out", str(killed_run)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert resumed.returncode == 0, resumed.stderr
        _, reference_err = reference.communicate(timeout=300)
        assert reference.returncode == 0, reference_err
    finally:
        for process in (victim, reference):
            if process.poll() is None:
                process.kill()
            process.communicate()
    return killed_run, reference_run, killed_at


def test_resume_after_kill_matches_an_uninterrupted_run(killed_and_resumed) -> None:
    resumed_run, reference_run, killed_at = killed_and_resumed
    assert status_of(resumed_run) == "complete"
    resumed_state, reference_state = modules_state(resumed_run), modules_state(reference_run)
    assert resumed_state.keys() == reference_state.keys()
    different = [
        k for k in reference_state if not torch.equal(resumed_state[k], reference_state[k])
    ]
    assert not different, (
        f"killed at epoch {killed_at['epoch']}, step {killed_at['step']}; resumed parameters "
        f"differ from the uninterrupted run's in {different}"
    )
    resumed_metrics = json.loads((resumed_run / "metrics.json").read_text())
    reference_metrics = json.loads((reference_run / "metrics.json").read_text())
    assert resumed_metrics["test_nll"] == reference_metrics["test_nll"]


def test_resume_after_kill_keeps_the_history(killed_and_resumed) -> None:
    """The per-epoch records (bounds, learning rates) match the uninterrupted run's, whether
    the kill landed mid-epoch (the usual case: the epoch's running totals are restored from the
    checkpoint) or on an epoch boundary."""
    resumed_run, reference_run, killed_at = killed_and_resumed

    def history(run: Path) -> list[dict]:
        records = json.loads((run / "metrics.json").read_text())["history"]
        return [{k: v for k, v in r.items() if k != "time"} for r in records]

    assert history(resumed_run) == history(reference_run)


def test_unfinished_run_needs_resume(run_copy: Path, capsys) -> None:
    (run_copy / "status.json").write_text(json.dumps({"status": "running"}))
    expect_error(["train", *TINY, "--out", str(run_copy)], capsys, "an unfinished run")


def test_a_torchrun_restart_resumes_the_unfinished_run(run_copy: Path, capsys, monkeypatch):
    """``torchrun --max-restarts`` repeats the command without ``--resume`` after a rank died:
    the restarted workers continue the run instead of refusing its folder."""
    (run_copy / "status.json").write_text(json.dumps({"status": "running"}))
    before = json.loads((run_copy / "metrics.json").read_text())["history"]
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    code, _, err = run_cli(["train", *TINY, "--out", str(run_copy)], capsys)
    assert code == 0, err
    assert "torchrun restart 1: resuming" in err
    assert status_of(run_copy) == "complete"
    after = json.loads((run_copy / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in after] == [r["epoch"] for r in before]  # no gap, no duplicate
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # a first attempt refuses as before
    (run_copy / "status.json").write_text(json.dumps({"status": "running"}))
    expect_error(["train", *TINY, "--out", str(run_copy)], capsys, "an unfinished run")


# -- every registered model (trained, evaluated and diagnosed in tests/models/test_suite.py) -----
def test_model_list_shows_every_model_with_its_options(capsys) -> None:
    code, stdout, _ = run_cli(["train", "--model", "list"], capsys)
    assert code == 0
    for name in available_models():
        assert any(line.startswith(f"{name}: ") for line in stdout.splitlines())
    assert "    beta (default 1.0): " in stdout
    assert "input_shape" not in stdout  # set by the dataset, not an option to pass


def test_dataset_list_shows_every_dataset_with_its_splits(capsys) -> None:
    from pvae.data.registry import available_datasets

    code, stdout, _ = run_cli(["train", "--dataset", "list"], capsys)
    assert code == 0
    lines = stdout.splitlines()
    assert len(lines) == len(available_datasets())
    for name, line in zip(available_datasets(), lines, strict=True):
        assert line.startswith(f"{name}: ") and "(splits: " in line


def test_one_hidden_width_for_models_whose_layers_share_it() -> None:
    """``--hidden 64`` reaches a model with one ``hidden`` width as 64; two widths are refused
    with a message that says why."""
    from pvae.models.neural_statistician import NeuralStatistician

    assert NeuralStatistician(input_shape=(2,), hidden=[64]).config.hidden == 64
    with pytest.raises(ValueError, match="one width"):
        NeuralStatistician(input_shape=(2,), hidden=[64, 32])


def test_resume_without_a_checkpoint_starts_afresh(tmp_path, capsys) -> None:
    """``--resume`` on a folder that has no checkpoint yet gives the fresh run's numbers
    (the output bias is initialised from the data as on a fresh start)."""
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    for out, extra in ((fresh, []), (resumed, ["--resume"])):
        code, _, err = run_cli(["train", *TINY, "--out", str(out), *extra], capsys)
        assert code == 0, err
    a = json.loads((fresh / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert a["history"][0]["train_bound"] == b["history"][0]["train_bound"]
    assert a["test_nll"] == b["test_nll"]


# -- model options --------------------------------------------------------------------------------
def test_model_options_reach_the_model_and_its_config(tmp_path, capsys) -> None:
    out = tmp_path / "beta"
    argv = ["train", *TINY, "--model-option", "beta=2.5", "--model-option", "free_bits=0.1"]
    code, _, err = run_cli([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())["model_config"]
    assert saved["beta"] == 2.5 and saved["free_bits"] == 0.1
    # The evaluator rebuilds the model from that config.
    code, stdout, err = run_cli(
        ["evaluate", str(out), "--eval-size", "10", "--eval-samples", "5", "--no-progress"], capsys
    )
    assert code == 0, err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("beta=-1", "beta must be a positive number"),
        ("no_such_option=3", "model 'vae': unknown option no_such_option; options: input_shape"),
        ("latent_dim=3", "set latent_dim with its own flag"),
    ],
)
def test_bad_model_options_are_one_line_errors(option, message, tmp_path, capsys) -> None:
    argv = ["train", *TINY, "--model-option", option, "--out", str(tmp_path / "run")]
    expect_error(argv, capsys, message)


def test_model_option_needs_key_equals_value(capsys) -> None:
    code, _, err = run_cli(["train", "--model-option", "beta"], capsys)
    assert code == EXIT_USAGE
    assert "expected KEY=VALUE" in err


# -- diagnose ------------------------------------------------------------------------------------
def test_diagnose_writes_its_files_and_report_section(run_copy: Path, capsys) -> None:
    argv = ["diagnose", str(run_copy), "--num-data", "4", "--num-samples", "50"]
    argv += ["--ais-steps", "5", "--ais-chains", "2", "--bdmc-data", "2", "--no-progress"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    saved = json.loads((run_copy / "diagnostics.json").read_text())
    assert saved["num_data"] == 4
    assert saved["ais"]["schedule"] == "adaptive" == saved["bdmc"]["schedule"]  # the default
    # A short table, not the JSON: the ladder, k-hat, BDMC, collapse; the same rows in the report.
    lines = stdout.strip().splitlines()
    assert len(lines) < 25 and lines[0].startswith(f"Diagnostics of {run_copy}: 4 test data")
    names = ["ELBO", "IWAE (K=10)", "AIS (T=5)", "PSIS k-hat > 0.5", "PSIS k-hat > 0.7"]
    names += ["BDMC gap", "active units", "mutual information I(x; z)"]
    rows = {line.split("  ")[0]: line for line in lines[2:]}
    assert set(names) <= set(rows)
    elbo = saved["ladder"][0]
    assert f"{elbo['mean']:.2f} ± {elbo['stderr']:.2f} nats" in rows["ELBO"]
    assert f"{saved['active_units']['count']} / {saved['active_units']['total']}" in stdout
    report = (run_copy / "report.md").read_text()
    assert report.count("## Diagnostics (`pvae diagnose`)") == 1
    assert f"| ELBO | {elbo['mean']:.2f} ± {elbo['stderr']:.2f} nats |" in report
    for name in names:
        assert f"| {name} | " in report
    # Running it again replaces the section instead of appending a second one; --ais-schedule
    # reaches AIS and BDMC.
    assert run_cli([*argv, "--ais-schedule", "sigmoid"], capsys)[0] == 0
    assert (run_copy / "report.md").read_text().count("## Diagnostics (`pvae diagnose`)") == 1
    saved = json.loads((run_copy / "diagnostics.json").read_text())
    assert saved["ais"]["schedule"] == "sigmoid" == saved["bdmc"]["schedule"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], {"num_data": 100, "num_samples": 1000, "ais_steps": 500}),
        (["--quick"], {"num_data": 20, "num_samples": 200, "ais_steps": 100}),
        (["--quick", "--num-data", "7"], {"num_data": 7, "num_samples": 200, "ais_steps": 100}),
    ],
    ids=["defaults", "quick", "explicit-wins"],
)
def test_diagnose_sizes(extra: list[str], expected: dict) -> None:
    from pvae.cli import _diagnose_sizes

    args = build_parser().parse_args(["diagnose", "run", *extra])
    sizes = _diagnose_sizes(args)
    assert {k: sizes[k] for k in expected} == expected


def test_diagnose_needs_enough_samples_for_psis(run_copy: Path, capsys) -> None:
    argv = ["diagnose", str(run_copy), "--num-samples", "20", "--no-progress"]
    expect_error(argv, capsys, "--num-samples must be >= 50")


def test_evaluate_reproduces_the_train_time_nll(trained_run: Path, tmp_path: Path, capsys) -> None:
    """Evaluation draws its importance samples from the run's seed: ``pvae evaluate`` with the
    run's K and size gives the number ``pvae train`` reported, and another seed another file."""
    metrics = json.loads((trained_run / "metrics.json").read_text())
    config = json.loads((trained_run / "config.json").read_text())
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    argv = ["evaluate", str(run), "--eval-samples", str(config["eval_samples"]), "--no-progress"]
    code, _, err = run_cli([*argv, "--eval-size", str(config["eval_size"])], capsys)
    assert code == 0, err
    name = f"evaluation_test_K{config['eval_samples']}_n{config['eval_size']}.json"
    assert json.loads((run / name).read_text())["nll"] == metrics["test_nll"]
    code, _, err = run_cli([*argv, "--eval-size", str(config["eval_size"]), "--seed", "7"], capsys)
    assert code == 0, err
    assert (run / name.replace(".json", "_seed7.json")).exists()


@pytest.mark.parametrize(
    "extra", [["--model-option", "beta=4"], ["--model-option", "free_bits=1"], ["--kl-anneal", "2"]]
)
@pytest.mark.parametrize("objective", ["iwae", "dreg"])
def test_kl_weights_with_importance_weighted_objectives_are_refused(
    objective, extra, tmp_path, capsys
) -> None:
    argv = ["train", *TINY, "--objective", objective, "--num-particles", "2", *extra]
    expect_error([*argv, "--out", str(tmp_path / "r")], capsys, "use --objective elbo")
    assert not (tmp_path / "r").exists()


# -- issue 11, items 5 and 6: resuming keeps a run's history honest ------------------------------
@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--batch-size", "32"),
        ("--train-size", "200"),
        ("--seed", "1"),
        ("--lr", "0.01"),
        ("--lr-schedule", "exponential"),
        ("--clip-norm", "5"),
        ("--kl-anneal", "2"),
        ("--dataset", "binarized_mnist"),
        ("--objective", "iwae --num-particles 2"),
        ("--num-particles", "2"),
        ("--hidden", "16"),
    ],
)
def test_resume_refuses_changes_that_break_continuity(run_copy: Path, flag, value, capsys) -> None:
    """A resumed run must continue the one its folder describes: options that decide what the
    first epochs did are refused, by flag, and the folder is left exactly as it was."""
    before = {name: (run_copy / name).read_bytes() for name in ("config.json", "status.json")}
    argv = ["train", *TINY, flag, *value.split(), "--epochs", "2", "--resume"]
    line = expect_error([*argv, "--out", str(run_copy)], capsys, "cannot resume")
    assert flag in line
    assert {name: (run_copy / name).read_bytes() for name in before} == before


def test_resume_with_more_epochs_keeps_the_original_config(run_copy: Path, capsys) -> None:
    """--epochs (and the evaluation's size) may change on resume: config.json keeps what the
    run started with and records each resume's command and what it changed."""
    original = json.loads((run_copy / "config.json").read_text())
    argv = ["train", *TINY, "--epochs", "2", "--eval-samples", "10", "--resume"]
    code, _, err = run_cli([*argv, "--out", str(run_copy)], capsys)
    assert code == 0, err
    config = json.loads((run_copy / "config.json").read_text())
    resumes = config.pop("resumes")
    assert config == original
    assert len(resumes) == 1
    assert resumes[0]["command"] == "pvae " + " ".join([*argv, "--out", str(run_copy)])
    assert resumes[0]["changed"] == {"train.epochs": [1, 2], "eval_samples": [20, 10]}
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["eval_samples"] == 10
    assert status_of(run_copy) == "complete"


def test_resume_cannot_undo_trained_epochs(run_copy: Path, capsys) -> None:
    code, _, err = run_cli(
        ["train", *TINY, "--epochs", "2", "--resume", "--out", str(run_copy)], capsys
    )
    assert code == 0, err
    argv = ["train", *TINY, "--epochs", "1", "--resume", "--out", str(run_copy)]
    expect_error(argv, capsys, "--epochs 1")


def test_resume_with_a_corrupt_last_checkpoint_changes_nothing(run_copy: Path, capsys) -> None:
    """The checkpoint is checked before anything is written: a completed run stays completed,
    and the error says that checkpoint_best.pt is intact and how to use it."""
    (run_copy / "checkpoints" / "checkpoint_last.pt").write_bytes(b"not a checkpoint")
    before = {name: (run_copy / name).read_bytes() for name in ("config.json", "status.json")}
    argv = ["train", *TINY, "--epochs", "2", "--resume", "--out", str(run_copy)]
    line = expect_error(argv, capsys, "checkpoint_last.pt is corrupt")
    assert "checkpoint_best.pt" in line and "intact" in line
    assert {name: (run_copy / name).read_bytes() for name in before} == before
    # What the message suggests works: copy the best checkpoint over the last one, resume.
    checkpoints = run_copy / "checkpoints"
    shutil.copy(checkpoints / "checkpoint_best.pt", checkpoints / "checkpoint_last.pt")
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err


def test_resume_removes_stale_temp_files(run_copy: Path, capsys) -> None:
    """Temp files a kill left behind (``.NAME.XXXXXXXX.tmp``) are removed when training starts
    again; other files are not touched."""
    stale = [
        run_copy / "checkpoints" / ".checkpoint_last.pt.k2_x9abc.tmp",
        run_copy / "checkpoints" / ".checkpoint_best.pt.a1b2c3d4.tmp",
        run_copy / ".status.json.zz99yy88.tmp",
    ]
    kept = [run_copy / "checkpoints" / "notes.tmp", run_copy / ".keep"]
    for path in [*stale, *kept]:
        path.write_bytes(b"half a file")
        os.utime(path, (time.time() - 60, time.time() - 60))
    argv = ["train", *TINY, "--epochs", "2", "--resume", "--out", str(run_copy)]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert [path for path in stale if path.exists()] == []
    assert all(path.exists() for path in kept)


def test_interrupted_run_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    """Ctrl-C during training: status ``interrupted`` with where it stopped (not ``failed``),
    and a plain ``pvae train`` on the folder says to pass --resume."""
    import pvae.infer.train as train_module

    make_objective = train_module.make_objective

    class Interrupting:
        """The objective, with Ctrl-C pressed during the third training step."""

        def __init__(self, inner) -> None:
            self.__dict__.update(inner=inner, training_steps=0)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __setattr__(self, name, value) -> None:
            setattr(self.inner, name, value)

        def __call__(self, *args, **kwargs):
            if torch.is_grad_enabled():
                self.__dict__["training_steps"] += 1
                if self.training_steps == 3:
                    raise KeyboardInterrupt
            return self.inner(*args, **kwargs)

    def interrupting(*args, **kwargs):
        return Interrupting(make_objective(*args, **kwargs))

    monkeypatch.setattr(train_module, "make_objective", interrupting)
    out = tmp_path / "run"
    code, _, err = run_cli(["train", *TINY, "--checkpoint-every", "1", "--out", str(out)], capsys)
    assert code == 130, err
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted"
    assert (status["epoch"], status["step"]) == (1, 3)
    monkeypatch.undo()
    expect_error(["train", *TINY, "--out", str(out)], capsys, "pass --resume to continue it")
    code, _, err = run_cli(["train", *TINY, "--resume", "--out", str(out)], capsys)
    assert code == 0, err


def test_failed_start_does_not_block_the_retry(tmp_path: Path, capsys) -> None:
    """A run that failed before its first checkpoint holds nothing to continue: the same
    command, corrected, starts it afresh without --resume."""
    out = tmp_path / "run"
    expect_error(["train", *TINY, "--lr", "1e30", "--out", str(out)], capsys, "non-finite")
    code, _, err = run_cli(["train", *TINY, "--lr", "1e-3", "--out", str(out)], capsys)
    assert code == 0, err
    assert status_of(out) == "complete"


# -- bad input: one line, exit code 2, the flag named ---------------------------------------------
def _damage_data_in_place(tmp_path: Path, monkeypatch) -> None:
    """A copy of mnist.npz, verified once, then overwritten with the same size and time."""
    from pvae.data.download import fetch

    data = tmp_path / "data"
    data.mkdir()
    path = Path(shutil.copy2(Path(os.environ["PVAE_DATA_DIR"]) / "mnist.npz", data))
    fetch("mnist.npz", data)  # verified: the stamp now records its size and time
    stat = path.stat()
    raw = bytearray(path.read_bytes())
    raw[-4096:] = bytes(4096)
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    monkeypatch.setenv("PVAE_DATA_DIR", str(data))


def _disk_full(tmp_path: Path, monkeypatch) -> None:
    import errno

    import pvae.infer.checkpoint as checkpoint

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    monkeypatch.setattr("pvae.runs.folder.atomic_write_bytes", full)


def _empty_training_data(tmp_path: Path, monkeypatch) -> None:
    import pvae.data

    load_dataset = pvae.data.load_dataset

    def load(name, split, **kwargs):
        dataset = load_dataset(name, split, **kwargs)
        return _Empty(dataset) if split == "train" else dataset

    monkeypatch.setattr(pvae.data, "load_dataset", load)


class _Empty:
    """A dataset with no units (what a filter that kept nothing would give)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return 0

    def __getattr__(self, name):
        return getattr(self.dataset, name)


def _regular_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "file").write_text("not a folder")


_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
_MPS = pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")


def _case(case: str, argv: list[str], contains: str, setup=None, marks=()):
    return pytest.param(argv, contains, setup, id=case, marks=marks)


def _device_cases() -> list:
    """A device this machine lacks, for every command that has --device."""
    cases = []
    for command, parser in _subcommands().items():
        if not any("--device" in action.option_strings for action in parser._actions):
            continue
        head = [command, "--out", "{out}"] if command == "train" else [command, "{run}"]
        for device, marks in (("gpu", ()), ("mps", _MPS), ("cuda", _CUDA)):
            argv = [*head, "--device", device]
            cases.append(_case(f"{command}-{device}", argv, f"--device {device}", marks=marks))
    return cases


# argv ({out}: a new run folder, {run}: a trained run, {file}: a regular file), what the one
# line must say, and what to break first. `pvae train` gets TINY in front of argv.
BAD_INPUTS = [
    *_device_cases(),
    _case("out-is-a-file", ["train", "--out", "{file}"], "--out", _regular_file),
    _case("out-under-a-file", ["train", "--out", "{file}/run"], "--out", _regular_file),
    _case("disk-full", ["train", "--out", "{out}"], "No space left on device", _disk_full),
    _case("lr-overflows", ["train", "--lr", "1e300", "--out", "{out}"], "--lr"),
    _case("lr-inf", ["train", "--lr", "inf", "--out", "{out}"], "--lr"),
    _case("damaged-data", ["train", "--out", "{out}"], "mnist.npz", _damage_data_in_place),
    _case("empty-data", ["train", "--out", "{out}"], "no training data", _empty_training_data),
    _case(
        "eval-samples-2.5", ["train", "--eval-samples", "2.5", "--out", "{out}"], "--eval-samples"
    ),
    _case("batch-size-0", ["train", "--batch-size", "0", "--out", "{out}"], "--batch-size"),
    _case("patience-0", ["train", "--patience", "0", "--out", "{out}"], "--patience"),
    _case("kl-anneal-nan", ["train", "--kl-anneal", "nan", "--out", "{out}"], "--kl-anneal"),
    _case("kl-anneal-negative", ["train", "--kl-anneal", "-1", "--out", "{out}"], "--kl-anneal"),
    _case("clip-norm-inf", ["train", "--clip-norm", "inf", "--out", "{out}"], "--clip-norm"),
    # M2 trains with Pyro's ELBOs (its own objective): no KL weight for annealing to change.
    _case(
        "kl-anneal-m2",
        ["train", "--model", "m2", "--kl-anneal", "1", "--out", "{out}"],
        "no KL weight to anneal",
    ),
]


@pytest.mark.parametrize(("argv", "contains", "setup"), BAD_INPUTS)
def test_bad_inputs_are_one_line_errors(
    argv, contains, setup, tmp_path: Path, run_copy: Path, monkeypatch, capsys
) -> None:
    """Every user error is one line naming what was wrong, exit code 2, no traceback; a failed
    start leaves no folder behind that would block the corrected command."""
    if setup is not None:
        setup(tmp_path, monkeypatch)
    out = tmp_path / "new-run"
    places = {"{out}": str(out), "{run}": str(run_copy), "{file}": str(tmp_path / "file")}
    argv = [_place(arg, places) for arg in argv]
    if argv[0] == "train":
        argv[1:1] = TINY
    expect_error(argv, capsys, contains)
    assert not out.exists() or not any(out.iterdir())


def _place(arg: str, places: dict[str, str]) -> str:
    for key, value in places.items():
        arg = arg.replace(key, value)
    return arg


@pytest.mark.parametrize("command", ["train", "evaluate", "sample", "diagnose"])
def test_help_states_each_default_once(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    if command in ("train", "diagnose", "sample"):
        assert "(default: 0)" in text  # --seed: a zero default is still stated
    for block in re.split(r" (?=--[a-z-]+ )", text):
        assert block.count("default") <= 1 + block.count("defaults"), block


def test_diagnose_nproc_shares_the_work_and_matches_one_sharded_process(
    run_copy: Path, tmp_path: Path, capsys
) -> None:
    """``pvae diagnose --nproc 2`` (torchrun, two gloo ranks) prints once, writes the files
    once, and gives the numbers of one process running the same seeded chunks
    (``diagnose_model(..., sharded=True)``)."""
    from pvae.runs.diagnose import diagnose_run

    alone_dir = Path(shutil.copytree(run_copy, tmp_path / "alone"))
    sizes = ["--num-data", "6", "--num-samples", "50", "--ais-steps", "20", "--ais-chains", "2"]
    sizes += ["--bdmc-data", "3", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pvae.cli", "diagnose", str(run_copy), "--nproc", "2"]
    done = subprocess.run(
        [*command, *sizes, "--no-progress"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("BDMC") == 1  # rank 0 alone prints the table
    report = (run_copy / "report.md").read_text()
    assert report.count("## Diagnostics (`pvae diagnose`)") == 1
    both = json.loads((run_copy / "diagnostics.json").read_text())
    assert both["shards"] == {"chunks": 6, "processes": 2, "seed": 3}

    alone = diagnose_run(
        alone_dir, num_data=6, num_samples=50, ais_steps=20, ais_chains=2, bdmc_data=3, seed=3,
        progress=False, distributed=None,
    )  # fmt: skip
    assert "shards" not in alone  # one process without torchrun: the single stream
    from pvae.data import load_dataset
    from pvae.runs import load_run
    from pvae.runs.diagnose import diagnose_model
    from pvae.runs.evaluate import whole_batch

    model, config = load_run(alone_dir, "best")
    test = load_dataset(config["dataset"], "test", size=6, size_seed=3, progress=False)
    sharded, _ = diagnose_model(
        model, whole_batch(test), None, tmp_path / "sharded", num_samples=50, ais_steps=20,
        ais_chains=2, bdmc_data=3, seed=3, progress=False, sharded=True,
    )  # fmt: skip
    assert sharded["shards"] == {"chunks": 6, "processes": 1, "seed": 3}
    for key in ("ladder", "bdmc", "importance", "ais", "active_units", "kl_total"):
        assert json.dumps(both[key], sort_keys=True) == json.dumps(sharded[key], sort_keys=True)
    # The chunks' own streams are another draw than one process's single stream.
    assert both["ais"]["mean"] != alone["ais"]["mean"]
    assert abs(both["ais"]["mean"] - alone["ais"]["mean"]) < 5 * (
        both["ais"]["stderr"] + alone["ais"]["stderr"]
    )


def test_nproc_inside_torchrun_is_refused(run_copy: Path, capsys, monkeypatch) -> None:
    """A process that torchrun started does not start torchrun again (train and evaluate)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    message = "already one of torchrun's"
    expect_error(["train", *TINY, "--nproc", "2", "--out", str(run_copy)], capsys, message)
    expect_error(["evaluate", str(run_copy), "--nproc", "2"], capsys, message)
    expect_error(["diagnose", str(run_copy), "--nproc", "2"], capsys, message)


def test_train_precision_bf16_is_recorded_and_bad_values_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bf16"
    assert main(["train", *TINY, "--precision", "bf16", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["precision"] == "bf16"
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["test_nll"])
    expect_error(
        ["train", *TINY, "--precision", "fp16", "--out", str(tmp_path / "x")], capsys, "--precision"
    )


def test_train_no_fused_adam_is_recorded_and_trains(tmp_path: Path, capsys) -> None:
    out = tmp_path / "default_adam"
    assert main(["train", *TINY, "--no-fused-adam", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["fused_adam"] is False
    assert math.isfinite(json.loads((out / "metrics.json").read_text())["test_nll"])
