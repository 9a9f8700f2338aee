"""Run folders without training: resume rules, stale temp files, devices, paths, and the
options a run refuses before it starts."""

from __future__ import annotations

import json
import math
import os
import time

import pytest

from pvae.infer.checkpoint import remove_stale_temp_files
from pvae.infer.train import TrainConfig
from pvae.runs.folder import (
    ADJUSTABLE,
    FIXED,
    check_device,
    check_out_path,
    check_resume,
    write_json,
)
from pvae.runs.spec import TrainSpec

CONFIG = {
    "model": "vae",
    "dataset": "mnist",
    "model_config": {"latent_dim": 2, "hidden": [16]},
    "objective": "elbo",
    "num_particles": 1,
    "objective_options": {},
    "train": {
        "epochs": 2,
        "batch_size": 64,
        "lr": 1e-3,
        "lr_schedule": None,
        "clip_norm": None,
        "kl_anneal_epochs": 0.0,
        "kl_anneal_schedule": "linear",
        "kl_anneal_cycles": 4,
        "early_stopping_patience": None,
        "seed": 0,
        "device": "cpu",
        "checkpoint_every": None,
        "precision": "fp32",
    },
    "monitor": "valid_bound",
    "eval_samples": 20,
    "eval_size": 50,
    "train_size": 300,
    "num_labels": 100,
    "labelled_schedule": "epoch",
    "command": "pvae train",
}


def _changed(key: str, value) -> dict:
    config = json.loads(json.dumps(CONFIG))
    if key.startswith("train."):
        config["train"][key[len("train.") :]] = value
    else:
        config[key] = value
    return config


@pytest.fixture
def run(tmp_path):
    write_json(tmp_path / "config.json", CONFIG)
    return tmp_path


NEW_VALUES = {
    "model": "iaf",
    "dataset": "binarized_mnist",
    "model_config": {"latent_dim": 3, "hidden": [16]},
    "objective": "iwae",
    "num_particles": 2,
    "objective_options": {"alpha": 1.0},
    "train_size": 200,
    "num_labels": 10,
    "labelled_schedule": "step",
    "monitor": "valid_accuracy",
    "train.batch_size": 32,
    "train.lr": 1e-2,
    "train.lr_schedule": "cosine",
    "train.clip_norm": 5.0,
    "train.kl_anneal_epochs": 2.0,
    "train.kl_anneal_schedule": "cyclical",
    "train.kl_anneal_cycles": 2,
    "train.seed": 1,
    "train.epochs": 4,
    "train.early_stopping_patience": 3,
    "train.checkpoint_every": 10,
    "train.device": "cuda",
    "train.precision": "bf16",
    "eval_samples": 5000,
    "eval_size": 10000,
}


@pytest.mark.parametrize("key", list(FIXED))
def test_resume_refuses_fixed_options(run, key) -> None:
    with pytest.raises(ValueError, match="cannot resume") as error:
        check_resume(run, _changed(key, NEW_VALUES[key]), {"epoch": 1})
    if key == "model_config":
        assert "--latent-dim" in str(error.value)
    elif FIXED[key].startswith("--"):
        assert FIXED[key] in str(error.value)


@pytest.mark.parametrize("key", ADJUSTABLE)
def test_resume_records_adjustable_options(run, key) -> None:
    config = {**_changed(key, NEW_VALUES[key]), "command": "pvae train --resume"}
    written = check_resume(run, config, {"epoch": 1})
    resumes = written.pop("resumes")
    assert written == CONFIG  # the original stays as it was
    assert resumes[0]["command"] == "pvae train --resume"
    old = CONFIG["train"][key[6:]] if key.startswith("train.") else CONFIG[key]
    assert resumes[0]["changed"] == {key: [old, NEW_VALUES[key]]}
    # A second resume appends.
    write_json(run / "config.json", {**written, "resumes": resumes})
    assert len(check_resume(run, config, {"epoch": 1})["resumes"]) == 2


def test_every_config_key_is_fixed_or_adjustable() -> None:
    flat = {k for k in CONFIG if k != "train"} | {f"train.{k}" for k in CONFIG["train"]}
    assert flat - {"command"} == set(FIXED) | set(ADJUSTABLE)


def test_resume_with_fewer_epochs_than_trained_is_refused(run) -> None:
    with pytest.raises(ValueError, match="--epochs 1"):
        check_resume(run, _changed("train.epochs", 1), {"epoch": 2})


def test_cosine_schedule_fixes_the_epochs(run) -> None:
    cosine = _changed("train.lr_schedule", "cosine")
    write_json(run / "config.json", cosine)
    longer = json.loads(json.dumps(cosine))
    longer["train"]["epochs"] = 4
    with pytest.raises(ValueError, match="cosine"):
        check_resume(run, longer, {"epoch": 1})


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path) -> None:
    stale = [tmp_path / ".checkpoint_last.pt.ab_cd123.tmp", tmp_path / ".status.json.zzzzzzzz.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".hidden", tmp_path / ".x.toolongname.tmp"]
    for path in [*stale, *kept]:
        path.write_text("x")
        os.utime(path, (time.time() - 60, time.time() - 60))
    fresh = tmp_path / ".metrics.json.abcdefgh.tmp"  # being written now: kept
    fresh.write_text("x")
    removed = remove_stale_temp_files(tmp_path, older_than=time.time() - 30)
    assert sorted(removed) == sorted(stale)
    assert all(path.exists() for path in [*kept, fresh])


@pytest.mark.parametrize("device", ["gpu", "tpu:0", "cuda:99"])
def test_unavailable_devices_are_refused(device) -> None:
    with pytest.raises(ValueError):
        check_device(device)


def test_cpu_is_a_device() -> None:
    assert check_device("cpu").type == "cpu"


def test_out_paths_that_cannot_be_folders(tmp_path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    for out in (file, file / "run", file / "a" / "b"):
        with pytest.raises(ValueError, match="is a file, not a folder"):
            check_out_path(out)
    check_out_path(tmp_path / "new" / "run")  # missing parents are made


def test_json_files_refuse_nan(tmp_path) -> None:
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"kl_anneal_epochs": math.nan})
    assert not (tmp_path / "x.json").exists()


BAD_TRAIN_CONFIGS = [
    {"epochs": 0},
    {"epochs": 2.5},
    {"batch_size": 0},
    {"batch_size": 2.5},
    {"batch_size": True},
    {"lr": 0.0},
    {"lr": math.inf},
    {"lr": math.nan},
    {"lr": 1e300},
    {"betas": (0.9, 1.0)},
    {"eps": 0.0},
    {"lr_schedule": "sometimes"},
    {"lr_decay": 0.0},
    {"clip_norm": 0.0},
    {"clip_norm": math.inf},
    {"kl_anneal_epochs": math.nan},
    {"kl_anneal_epochs": -1.0},
    {"early_stopping_patience": 0},
    {"checkpoint_every": 0},
    {"seed": 1.5},
    {"monitor": ""},
]


@pytest.mark.parametrize("options", BAD_TRAIN_CONFIGS, ids=str)
def test_bad_train_configs_are_refused(options) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        TrainConfig(**options)


@pytest.mark.parametrize(
    "options",
    [{"eval_samples": 2.5}, {"eval_samples": 0}, {"train_size": 0}, {"num_particles": 1.5}],
    ids=str,
)
def test_bad_train_specs_are_refused(options) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        TrainSpec(**options)
