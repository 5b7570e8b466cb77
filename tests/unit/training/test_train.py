from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

import models.training.checkpoint
import models.training.initial_network
import models.training.train
from models.training.export import export_onnx, load_checkpoint
from models.training.fer2013 import NO_MAJORITY, load_crowd_majority, load_ferplus_shares, load_split
from models.training.loss import training_targets, weighted_cross_entropy
from models.training.network import EmotionResNet50
from models.training.recipe import TrainConfig
from models.training.selection import Standing, standing
from models.training.train import train
from tests.unit.training.test_export import write_checkpoint

Weights = dict[str, torch.Tensor]


class Interrupted(Exception):
    pass


def small_config(out_dir: Path, data: Path, resume: bool = False, stem: str = "imagenet", input_size: int = 32,
                 **options: Any) -> TrainConfig:
    # fp32: exact comparisons need fp32 arithmetic; one thread keeps reductions in one order.
    return TrainConfig(out_dir=out_dir, data=data, stem=stem, input_size=input_size, epochs=2, batch_size=32,
                       precision="fp32", threads=1, warmup_epochs=0.5, resume=resume, progress_every=1, **options)


def load_weights(path: Path, key: str = "network") -> Weights:
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def unbroken_and_resumed(root: Path, data: Path, monkeypatch: pytest.MonkeyPatch,
                         **options: Any) -> tuple[Weights, Weights, Weights]:
    """Candidate weights after an unbroken 2-epoch run, after epoch 1 of a killed run, and after resuming that run;
    `options` go to every run's config."""
    train(small_config(root / "unbroken", data, **options))
    unbroken = load_weights(root / "unbroken" / "last.pt")

    # The second run dies right after saving last.pt for epoch one, as a killed process would.
    save_checkpoint = models.training.checkpoint.save_checkpoint

    def save_then_die(path: Path, *args: object, **kwargs: object) -> None:
        save_checkpoint(path, *args, **kwargs)  # type: ignore[arg-type]
        if path.name == "last.pt":
            raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(models.training.train, "save_checkpoint", save_then_die)
        with pytest.raises(Interrupted):
            train(small_config(root / "resumed", data, **options))
    after_first_epoch = load_weights(root / "resumed" / "last.pt")

    train(small_config(root / "resumed", data, resume=True, **options))
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
    build_network = models.training.initial_network.build_network

    def without_dropout(config: TrainConfig, train_faces: np.ndarray | None = None,
                        data_sha256: str = "") -> EmotionResNet50:
        network = build_network(config, train_faces, data_sha256)
        network.dropout.p = 0.0
        return network

    monkeypatch.setattr(models.training.train, "build_network", without_dropout)

    # when a killed run is resumed
    unbroken, after_first_epoch, resumed = unbroken_and_resumed(tmp_path, small_fer_file, monkeypatch)

    # then weights, optimizer momentum, schedule and data order all carried over exactly
    assert not torch.equal(after_first_epoch["fc.weight"], resumed["fc.weight"])
    assert_identical(unbroken, resumed)


def test_a_resumed_small_stem_run_with_every_regulariser_on_ends_where_an_unbroken_one_does(
    tmp_path: Path, small_fer_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given small-stem runs with an EMA of the weights, random erasing, mixup and CutMix all on
    options = {"stem": "small-pool", "input_size": 24, "ema_decay": 0.9, "erase_prob": 0.5, "mixup_alpha": 0.4,
               "cutmix_alpha": 1.0}

    # when one of them is killed after epoch one and resumed
    unbroken, after_first_epoch, resumed = unbroken_and_resumed(tmp_path, small_fer_file, monkeypatch, **options)

    # then the EMA candidate ("network") and the raw weights it averages both equal the unbroken run's
    assert not torch.equal(after_first_epoch["fc.weight"], resumed["fc.weight"])
    assert_identical(unbroken, resumed)
    assert_identical(load_weights(tmp_path / "unbroken" / "last.pt", "training_network"),
                     load_weights(tmp_path / "resumed" / "last.pt", "training_network"))
    assert not torch.equal(resumed["fc.weight"],
                           load_weights(tmp_path / "resumed" / "last.pt", "training_network")["fc.weight"])
    saved = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert saved["ema_updates"] == 2 * 3 and saved["config"]["stem"] == "small-pool"


def test_training_can_continue_from_an_exported_model(tmp_path: Path, small_fer_file: Path) -> None:
    # given a model exported by `fervid export` (its training run gone)
    source = write_checkpoint(tmp_path / "source.pt")
    exported = export_onnx(source, tmp_path / "source.onnx", tta=False, weights="fp32")

    # when training starts from it, with a zero learning rate so that no step moves a weight
    config = small_config(tmp_path / "continued", small_fer_file)
    config.init, config.init_model, config.epochs, config.base_lr = "model", exported, 1, 0.0
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


def test_the_weighted_loss_on_one_hot_targets_is_pytorchs_class_weighted_cross_entropy() -> None:
    # given logits, hard labels and class weights
    generator = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(16, 7, generator=generator), torch.randint(0, 7, (16,), generator=generator)
    weight = torch.rand(7, generator=generator) + 0.5

    # when the loss is computed on the labels as one-hot distributions
    targets = training_targets(labels.numpy(), None, 0.0, 0.0, 7)
    loss = weighted_cross_entropy(logits, targets[torch.arange(16)], weight)

    # then it is what the usual class-weighted cross-entropy gives
    torch.testing.assert_close(loss, torch.nn.CrossEntropyLoss(weight=weight)(logits, labels))


def test_ferplus_votes_blend_into_the_targets_of_faces_that_have_them() -> None:
    # given two faces labelled angry: one whose annotators split 3:1 between sad and neutral, one with no votes
    labels = np.array([0, 0])
    shares = np.array([[0, 0, 0, 0, 0.75, 0, 0.25], [0] * 7], dtype=np.float32)

    # when the targets take 0.4 of the votes, with 0.07 label smoothing over the 7 classes
    targets = training_targets(labels, shares, 0.4, 0.07, 7).numpy()

    # then the first target is 0.6 label + 0.4 votes, the second the label alone, both smoothed
    np.testing.assert_allclose(targets[0], 0.93 * np.array([0.6, 0, 0, 0, 0.3, 0, 0.1]) + 0.01, rtol=1e-6)
    np.testing.assert_allclose(targets[1], 0.93 * np.eye(7)[0] + 0.01, rtol=1e-6)


FERPLUS_COLUMNS = np.array(["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                            "unknown", "NF"])


def write_votes(path: Path, faces: int, seed: int = 11) -> Path:
    """FER+-shaped votes (10 columns, in the FER+ file's order) for `faces` faces of every split: 10 annotators a
    face, most of them agreeing on one of the 7 emotions."""
    rng = np.random.default_rng(seed)

    def votes() -> np.ndarray:
        cast = np.zeros((faces, 10), dtype=np.uint8)
        np.add.at(cast, (np.arange(faces), rng.integers(0, 7, faces)), 6)
        np.add.at(cast, (np.repeat(np.arange(faces), 4), rng.integers(0, 10, faces * 4)), 1)
        return cast

    splits = {f"{kind}_{split}": value for split in ("train", "public", "private")
              for kind, value in (("ferplus_votes", votes()), ("ferplus_aligned", np.ones(faces, dtype=bool)))}
    np.savez(path, ferplus_columns=FERPLUS_COLUMNS, **splits)
    return path


def test_training_with_ferplus_votes_runs_and_records_the_blend(tmp_path: Path, small_fer_file: Path) -> None:
    # given FER+-shaped votes for the faces
    votes_path = write_votes(tmp_path / "meta.npz", 96)

    # when a run blends them into its targets
    config = small_config(tmp_path / "blend", small_fer_file)
    config.epochs, config.ferplus_weight, config.ferplus = 1, 0.3, votes_path
    train(config)

    # then it trained and its checkpoint says how
    saved = torch.load(tmp_path / "blend" / "last.pt", weights_only=False)
    assert saved["config"]["ferplus_weight"] == 0.3
    assert np.isfinite(saved["config"]["history"][0]["train_loss"])


def test_ferplus_shares_follow_the_fer_label_order(shared_dir: Path) -> None:
    # given the first training face, whose FER+ annotators voted neutral 4, sadness 1, anger 3, disgust 2
    shares = load_ferplus_shares(shared_dir / "data" / "fer2013_meta.npz", "train")

    # then its shares are in FER-2013 order: angry, disgust, fear, happy, sad, surprise, neutral
    np.testing.assert_allclose(shares[0], [0.3, 0.2, 0, 0, 0.1, 0, 0.4], rtol=1e-6)
    assert shares.shape == (28709, 7)
    # and every face with votes sums to one
    voted = shares.sum(axis=1) > 0
    np.testing.assert_allclose(shares[voted].sum(axis=1), 1.0, rtol=1e-5)


def test_the_crowd_majority_is_an_emotion_with_more_than_half_of_every_vote_cast(tmp_path: Path) -> None:
    # given four faces' votes: 6 anger of 10; 5 anger and 5 contempt; 4 happiness, 3 unknown, 3 not-a-face; and
    # 9 sadness on a face whose FER+ row was not matched
    votes = np.zeros((4, 10), dtype=np.uint8)
    votes[0, [4, 7]] = 6, 4
    votes[1, [4, 7]] = 5, 5
    votes[2, [1, 8, 9]] = 4, 3, 3
    votes[3, 3] = 9
    path = tmp_path / "meta.npz"
    np.savez(path, ferplus_columns=FERPLUS_COLUMNS, ferplus_votes_public=votes,
             ferplus_aligned_public=np.array([True, True, True, False]))

    # then only the first face has a crowd majority, angry (index 0 in FER-2013's order)
    assert load_crowd_majority(path, "public").tolist() == [0, NO_MAJORITY, NO_MAJORITY, NO_MAJORITY]


def test_fer2013s_own_labels_agree_with_the_crowd_on_seven_in_ten_clear_public_faces(shared_dir: Path) -> None:
    # given PublicTest's FER-2013 labels and its FER+ crowd majorities
    majority = load_crowd_majority(shared_dir / "data" / "fer2013_meta.npz", "public")
    labels = load_split(shared_dir / "data" / "fer2013.npz", "public").labels

    # then 2,854 faces are clear, and the one-person labels agree with their crowd on 69.7 % of them
    clear = majority != NO_MAJORITY
    assert int(clear.sum()) == 2854
    assert float((labels[clear] == majority[clear]).mean()) == pytest.approx(0.6973, abs=5e-5)


def test_crowd_selection_ranks_epochs_over_the_floor_by_agreement_and_the_rest_below_them() -> None:
    config = TrainConfig(out_dir=Path("unused"), data=Path("unused"), select="crowd", min_public_acc=0.654)

    over_low, over_high = standing(config, 0.66, 0.75), standing(config, 0.655, 0.80)
    under_accurate, under_crowded = standing(config, 0.653, 0.90), standing(config, 0.60, 0.95)

    assert over_high.score > over_low.score > under_accurate.score > under_crowded.score
    # and by top-1, the crowd figure is only reported
    by_top1 = standing(TrainConfig(out_dir=Path("unused"), data=Path("unused")), 0.66, 0.75)
    assert by_top1 == Standing(0.66, 0.75, 0.66)


def test_a_crowd_selected_run_records_both_figures_each_epoch_and_keeps_the_best_by_its_rule(
        tmp_path: Path, small_fer_file: Path) -> None:
    # given votes for the faces and a top-1 floor every epoch clears
    config = small_config(tmp_path / "crowd", small_fer_file, select="crowd", min_public_acc=0.0,
                          ferplus=write_votes(tmp_path / "meta.npz", 96), keep_epochs=True, ferplus_weight=0.6)

    # when the run trains two epochs
    best = train(config)

    # then each epoch has its PublicTest top-1 and crowd agreement, and best.pt is the epoch with the most agreement
    history = torch.load(tmp_path / "crowd" / "last.pt", weights_only=False)["config"]["history"]
    assert all({"public_acc", "public_crowd"} <= set(record) for record in history)
    chosen = max(history, key=lambda record: record["public_crowd"])
    saved = torch.load(best, weights_only=False)
    assert saved["epoch"] + 1 == chosen["epoch"]
    assert round(saved["best_public_crowd"], 4) == chosen["public_crowd"]
    assert round(saved["best_public"], 4) == chosen["public_acc"]
    # and every epoch's checkpoint was kept, with its own figures
    for record in history:
        kept = torch.load(tmp_path / "crowd" / f"epoch-{record['epoch']:03d}.pt", weights_only=False)
        assert kept["epoch"] + 1 == record["epoch"] and round(kept["public_crowd"], 4) == record["public_crowd"]
        assert round(kept["public_acc"], 4) == record["public_acc"]
        assert load_checkpoint(tmp_path / "crowd" / f"epoch-{record['epoch']:03d}.pt").public_acc == kept["public_acc"]
    # and an export says how the network was trained and what it scored, the crowd included
    exported = export_onnx(tmp_path / "crowd" / "epoch-002.pt", tmp_path / "e2.onnx", tta=False, weights="fp32")
    meta = {prop.key: prop.value for prop in onnx.load(str(exported)).metadata_props}
    assert meta["fervid.ferplus_weight"] == "0.6" and meta["fervid.name"].endswith("-ferplus")
    assert meta["fervid.public_crowd"] == f"{history[1]['public_crowd']:.4f}"
