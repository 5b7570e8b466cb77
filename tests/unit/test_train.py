from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import models.train
from fervid.labels import EMOTIONS
from models.export import export_onnx
from models.network import EmotionResNet50
from models.train import TrainConfig, train
from tests.unit.test_export import write_checkpoint

Weights = dict[str, torch.Tensor]


class Interrupted(Exception):
    pass


@pytest.fixture
def small_fer_file(tmp_path: Path) -> Path:
    """A FER-2013-shaped .npz of random faces: training mechanics need the file's layout, not its pictures."""
    rng = np.random.default_rng(7)
    arrays = {}
    for split, count in (("train", 96), ("public", 32), ("private", 32)):
        arrays[f"x_{split}"] = rng.integers(0, 256, (count, 48, 48), dtype=np.uint8)
        arrays[f"y_{split}"] = rng.integers(0, len(EMOTIONS), count).astype(np.int64)
    path = tmp_path / "fer_small.npz"
    np.savez(path, **arrays)
    return path


def small_config(out_dir: Path, data: Path, resume: bool = False) -> TrainConfig:
    # bf16 off: exact comparisons need fp32 arithmetic; one thread keeps reductions in one order.
    return TrainConfig(out_dir=out_dir, data=data, input_size=32, epochs=2, batch_size=32, bf16=False, threads=1,
                       warmup_epochs=0.5, resume=resume)


def load_weights(path: Path) -> Weights:
    return torch.load(path, map_location="cpu", weights_only=True)["network"]


def unbroken_and_resumed(root: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Weights, Weights, Weights]:
    """Weights after an unbroken 2-epoch run, after epoch 1 of a killed run, and after resuming that run."""
    train(small_config(root / "unbroken", data))
    unbroken = load_weights(root / "unbroken" / "last.pt")

    # The second run dies right after saving last.pt for epoch one, as a killed process would.
    save_checkpoint = models.train.save_checkpoint

    def save_then_die(path: Path, *args: object, **kwargs: object) -> None:
        save_checkpoint(path, *args, **kwargs)  # type: ignore[arg-type]
        if path.name == "last.pt":
            raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(models.train, "save_checkpoint", save_then_die)
        with pytest.raises(Interrupted):
            train(small_config(root / "resumed", data))
    after_first_epoch = load_weights(root / "resumed" / "last.pt")

    train(small_config(root / "resumed", data, resume=True))
    assert torch.load(root / "resumed" / "last.pt", weights_only=True)["epoch"] == 1
    return unbroken, after_first_epoch, load_weights(root / "resumed" / "last.pt")


def assert_identical(expected: Weights, actual: Weights) -> None:
    assert actual.keys() == expected.keys()
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert different == []


def test_resumed_training_ends_with_the_same_weights_as_an_unbroken_run(
    tmp_path: Path, small_fer_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an unbroken two-epoch run, and the same run killed after epoch one
    # when the killed run is resumed to epoch two
    unbroken, after_first_epoch, resumed = unbroken_and_resumed(tmp_path, small_fer_file, monkeypatch)

    # then the second epoch changed the weights, and they equal the unbroken run's
    assert not torch.equal(after_first_epoch["fc.weight"], resumed["fc.weight"])
    assert_identical(unbroken, resumed)


def test_resume_restores_everything_but_the_dropout_rng(
    tmp_path: Path, small_fer_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a network without dropout, the one consumer of the global RNG during training
    build_network = models.train.build_network

    def without_dropout(config: TrainConfig, train_faces: np.ndarray | None = None,
                        data_sha256: str = "") -> EmotionResNet50:
        network = build_network(config, train_faces, data_sha256)
        network.dropout.p = 0.0
        return network

    monkeypatch.setattr(models.train, "build_network", without_dropout)

    # when a killed run is resumed
    unbroken, after_first_epoch, resumed = unbroken_and_resumed(tmp_path, small_fer_file, monkeypatch)

    # then weights, optimizer momentum, schedule and data order all carried over exactly
    assert not torch.equal(after_first_epoch["fc.weight"], resumed["fc.weight"])
    assert_identical(unbroken, resumed)


def test_training_can_continue_from_an_exported_model(tmp_path: Path, small_fer_file: Path) -> None:
    # given a model exported by `fervid export` (its training run gone)
    source = write_checkpoint(tmp_path / "source.pt")
    exported = export_onnx(source, tmp_path / "source.onnx", tta=False, weights="fp32")

    # when training starts from it, with a zero learning rate so that no step moves a weight
    config = small_config(tmp_path / "continued", small_fer_file)
    config.init, config.init_model, config.epochs, config.lr = "model", exported, 1, 0.0
    train(config)

    # then the run started from the exported weights, not from fresh ones
    continued, original = load_weights(tmp_path / "continued" / "last.pt"), load_weights(source)
    assert torch.equal(continued["conv1.weight"], original["conv1.weight"])
    assert torch.equal(continued["fc.weight"], original["fc.weight"])
    # and its export reports the epochs trained in all and how training began
    again = export_onnx(tmp_path / "continued" / "last.pt", tmp_path / "continued.onnx", tta=False, weights="fp32")
    meta = {prop.key: prop.value for prop in onnx.load(str(again)).metadata_props}
    assert (meta["fervid.init"], meta["fervid.epochs"]) == ("scratch", "2")


def test_a_continuation_starts_its_best_checkpoint_from_the_network_it_began_with(
        tmp_path: Path, small_fer_file: Path) -> None:
    # given a model exported by `fervid export`
    source = write_checkpoint(tmp_path / "source.pt")
    exported = export_onnx(source, tmp_path / "source.onnx", tta=False, weights="fp32")

    # when a continuation runs no epoch at all
    config = small_config(tmp_path / "rebuilt", small_fer_file)
    config.init, config.init_model, config.epochs = "model", exported, 0
    best = train(config)

    # then best.pt is the exported network, scored on PublicTest, and exports as the same network
    assert torch.equal(load_weights(best)["layer3.0.conv2.weight"], load_weights(source)["layer3.0.conv2.weight"])
    assert 0.0 <= torch.load(best, weights_only=False)["best_public"] <= 1.0
    again = export_onnx(best, tmp_path / "rebuilt.onnx", tta=False, weights="fp32")
    meta = {prop.key: prop.value for prop in onnx.load(str(again)).metadata_props}
    assert meta["fervid.epochs"] == "1"
