"""`--resume` from checkpoints of every age: the recipe a resumed run takes and the state it restores, without
training (the tiny training runs in test_train.py check that a resumed run ends where an unbroken one does)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.training.checkpoint import read_checkpoint, restore, save_checkpoint
from models.training.ema import WeightAverage
from models.training.recipe import TrainConfig, resolve_run
from models.training.selection import Standing


def options(**values: object) -> TrainConfig:
    return TrainConfig(out_dir=Path("unused"), data=Path("unused"), resume=True, **values)  # type: ignore[arg-type]


def test_a_checkpoint_from_before_stems_were_a_choice_resumes_on_the_imagenet_stem_and_its_recipe() -> None:
    # given the config a checkpoint of the first training code holds: no stem, augmentation, erasing or EMA
    saved = {"out_dir": "runs/old", "init": "scratch", "input_size": 64, "lr": 0.05, "bf16": True, "history": []}

    # when a run that asks for a small stem with erasing resumes it
    config = resolve_run(options(stem="small", erase_prob=0.5, ema_decay=0.999), saved)

    # then the run goes on as the checkpoint's network trained: the imagenet stem's recipe at its input size
    assert (config.stem, config.input_size, config.augmentation) == ("imagenet", 64, "affine")
    assert (config.erase_prob, config.ema_decay) == (0.0, 0.0)


def test_a_resumed_run_takes_its_network_and_recipe_from_the_checkpoint_not_from_its_options() -> None:
    # given a checkpoint's recorded recipe
    saved = {"stem": "small-pool", "input_size": 24, "augmentation": "pad-crop", "crop_padding": 2,
             "erase_prob": 0.25, "ema_decay": 0.9, "select": "crowd", "min_public_acc": 0.6, "epochs": 5}

    # when it is resumed with other options
    config = resolve_run(options(stem="small", input_size=48, erase_prob=0.0, ema_decay=0.0, epochs=40), saved)

    # then the recorded recipe wins, and options outside it (the epochs) are the run's
    assert (config.stem, config.input_size, config.augmentation, config.crop_padding) == ("small-pool", 24,
                                                                                         "pad-crop", 2)
    assert (config.erase_prob, config.ema_decay, config.select, config.min_public_acc) == (0.25, 0.9, "crowd", 0.6)
    assert config.epochs == 40


def test_restoring_an_early_checkpoint_fills_what_it_did_not_record() -> None:
    # given a checkpoint as the first training code wrote it: no raw weights beside an EMA, no score, no crowd figure
    torch.manual_seed(0)
    trained = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1, momentum=0.9)
    trained(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    saved = {"network": trained.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 4, "step": 50,
             "best_public": 0.61, "config": {"history": [{"epoch": 5, "public_acc": 0.61}]}}

    # when a run that keeps an EMA restores it
    network = nn.Linear(4, 3)
    ema = WeightAverage(network, 0.9)
    resumed_optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    point = restore(saved, network, resumed_optimizer, ema)

    # then the network and its average both start from the saved weights, and the best is ranked by its top-1
    assert all(torch.equal(network.state_dict()[key], value) for key, value in trained.state_dict().items())
    assert all(torch.equal(ema.network.state_dict()[key], value) for key, value in trained.state_dict().items())
    assert ema.updates == 0
    assert resumed_optimizer.state_dict()["state"][0]["momentum_buffer"].equal(
        optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert (point.epoch, point.step, point.best) == (5, 50, Standing(0.61, None, 0.61))
    assert point.history == [{"epoch": 5, "public_acc": 0.61}]


def test_a_checkpoint_with_an_ema_restores_the_raw_weights_to_train_and_the_average_to_evaluate(
        tmp_path: Path) -> None:
    # given a run's network, its EMA after three updates, and the checkpoint it writes
    torch.manual_seed(0)
    network = nn.Linear(4, 3)
    ema = WeightAverage(network, 0.9)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        network(torch.ones(2, 4)).sum().backward()
        optimizer.step()
        ema.update(network)
    config = TrainConfig(out_dir=tmp_path, data=tmp_path / "fer2013.npz", stem="small", history=[{"epoch": 1}])
    save_checkpoint(tmp_path / "last.pt", network, optimizer, config, epoch=0, step=3,
                    best=Standing(0.5, 0.6, 0.6), own=Standing(0.4, 0.5, 0.5), ema=ema)

    # when a fresh run restores it
    fresh = nn.Linear(4, 3)
    fresh_ema = WeightAverage(fresh, 0.9)
    point = restore(read_checkpoint(tmp_path / "last.pt"), fresh, torch.optim.SGD(fresh.parameters(), lr=0.1),
                    fresh_ema)

    # then training goes on from the raw weights, the average from the average, and the run's best is the best's
    assert torch.equal(fresh.weight, network.weight) and not torch.equal(fresh.weight, ema.network.weight)
    assert torch.equal(fresh_ema.network.weight, ema.network.weight) and fresh_ema.updates == 3
    assert (point.epoch, point.step, point.best, point.history) == (1, 3, Standing(0.5, 0.6, 0.6), [{"epoch": 1}])
