"""Issue 14's recipe: the small-face stems, their training options, the precision choice, test-time views and the
GPU command's CPU smoke run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fervid.errors import FervidError
from fervid.labels import EMOTIONS
from models.cpu_features import CpuFeatures
from models.training.augment import mix_batch, pad_crop_augment, random_erase, tencrop_views
from models.training.export import build_network, export_onnx, load_checkpoint
from models.training.network import EmotionResNet50
from models.training.precision import choose_precision
from models.training.predict import predict_probs, to_input
from models.training.recipe import TrainConfig, resolve_recipe
from models.training.train import train
from models.training.warm_start import exported_member
from tests.unit.training.conftest import write_fer_file
from tests.unit.training.test_export import write_checkpoint

ROOT = Path(__file__).resolve().parents[3]
AVX2_ONLY = CpuFeatures("x86_64", "an AVX2 CPU", ("AVX2",))
AMX = CpuFeatures("x86_64", "a Sapphire Rapids", ("AVX2", "AVX-512", "AVX512-BF16", "AMX-BF16"))


def metadata(path: Path) -> dict[str, str]:
    return {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize(("stem", "layer1_side"), [("small", 48), ("small-pool", 24), ("imagenet", 12)])
def test_each_stem_keeps_the_stages_and_head_and_sets_layer1s_map(stem: str, layer1_side: int) -> None:
    # given a network of each stem and a 48 px face
    network = EmotionResNet50(stem=stem).eval()
    imagenet = EmotionResNet50(stem="imagenet")

    # when the face passes through its stem and first stage
    with torch.no_grad():
        x = network.maxpool(network.relu(network.bn1(network.conv1(torch.zeros(1, 1, 48, 48)))))
        maps = network.layer1(x)

    # then layer1 sees the map the stem leaves, and everything after the stem is the ResNet50 it always was
    assert maps.shape == (1, 256, layer1_side, layer1_side)
    after_stem = {key: value.shape for key, value in network.state_dict().items() if not key.startswith("conv1.")}
    assert after_stem == {key: value.shape for key, value in imagenet.state_dict().items()
                          if not key.startswith("conv1.")}
    assert network.conv1.weight.shape == ((64, 1, 7, 7) if stem == "imagenet" else (64, 1, 3, 3))


@pytest.mark.parametrize("stem", ["small", "small-pool"])
def test_a_tiny_epoch_trains_each_small_stem_at_the_native_size(
        tmp_path: Path, small_fer_file: Path, stem: str) -> None:
    # given a run from scratch told only its stem (a slice of the training faces)
    config = TrainConfig(out_dir=tmp_path / stem, data=small_fer_file, stem=stem, epochs=1, batch_size=16,
                         limit_train=16, limit_eval=8, precision="fp32", threads=1)

    # when it trains one epoch
    best = train(config)

    # then it trained that stem with its recipe at 48 px, the EMA candidate checkpointed
    saved = torch.load(best, weights_only=False)
    assert saved["config"]["stem"] == stem and saved["config"]["input_size"] == 48
    assert saved["config"]["augmentation"] == "pad-crop" and saved["config"]["ema_decay"] == 0.999
    assert saved["network"]["conv1.weight"].shape == (64, 1, 3, 3)
    assert "training_network" in saved and np.isfinite(saved["config"]["history"][0]["train_loss"])


def test_the_init_decides_the_stem_and_the_stem_its_recipe(tmp_path: Path) -> None:
    def resolved(**options: object) -> TrainConfig:
        return resolve_recipe(TrainConfig(out_dir=tmp_path, data=tmp_path / "fer.npz", **options))  # type: ignore[arg-type]

    # from scratch: the small stem at the native 48 px, pad-crop, erasing and an EMA
    scratch = resolved()
    assert (scratch.stem, scratch.input_size, scratch.augmentation) == ("small", 48, "pad-crop")
    assert (scratch.erase_prob, scratch.ema_decay) == (0.5, 0.999)
    # ImageNet weights: their stem and today's recipe, whatever is said of the rest
    imagenet = resolved(init="imagenet", input_size=197)
    assert (imagenet.stem, imagenet.input_size, imagenet.augmentation) == ("imagenet", 197, "affine")
    assert (imagenet.erase_prob, imagenet.ema_decay) == (0.0, 0.0)
    # explicit choices win over the stem's
    told = resolved(stem="small-pool", erase_prob=0.0, ema_decay=0.0, augmentation="affine")
    assert (told.stem, told.erase_prob, told.ema_decay, told.augmentation) == ("small-pool", 0.0, 0.0, "affine")
    # and ImageNet weights cannot go into a small stem
    with pytest.raises(FervidError) as wrong:
        resolved(init="imagenet", stem="small")
    assert wrong.value.code == "invalid_request" and "imagenet" in str(wrong.value)


def test_a_small_stem_export_matches_torch_and_records_its_stem(tmp_path: Path) -> None:
    # given a small-stem checkpoint at 48 px
    checkpoint = write_checkpoint(tmp_path / "best.pt", input_size=48, stem="small")

    # when it is exported
    exported = export_onnx(checkpoint, tmp_path / "small.onnx", tta=False, weights="fp32")

    # then ONNX Runtime computes what torch does, and the file says its stem and input size
    batch = to_input(np.random.default_rng(3).integers(0, 256, (4, 48, 48), dtype=np.uint8), 48).contiguous()
    (probs,) = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"]).run(
        ["probs"], {"faces": batch.numpy()})
    with torch.no_grad():
        expected = torch.softmax(build_network(load_checkpoint(checkpoint))(batch), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    meta = metadata(exported)
    assert meta["fervid.stem"] == "small" and meta["fervid.input_size"] == "48"
    assert '"size": [48, 48]' in meta["fervid.preprocess"]
    # and an export read back as a member keeps its stem
    assert load_checkpoint(exported).stem == "small"


def test_a_warm_start_rebuilds_the_small_stem_of_an_exported_model(tmp_path: Path, small_fer_file: Path) -> None:
    # given an exported small-stem model, and one of an older export without the stem key
    source = write_checkpoint(tmp_path / "source.pt", input_size=48, stem="small-pool")
    exported = export_onnx(source, tmp_path / "source.onnx", tta=False, weights="fp32")
    legacy = onnx.load(str(export_onnx(write_checkpoint(tmp_path / "old.pt"), tmp_path / "old.onnx", tta=False,
                                       weights="fp32")))
    kept = [prop for prop in legacy.metadata_props if prop.key != "fervid.stem"]
    del legacy.metadata_props[:]
    legacy.metadata_props.extend(kept)
    onnx.save(legacy, tmp_path / "legacy.onnx")

    # then each rebuilds with its stem
    assert exported_member(exported, 0).stem == "small-pool"
    assert exported_member(tmp_path / "legacy.onnx", 0).stem == "imagenet"

    # when training continues from the small-stem file, told neither stem nor input size, at a zero learning rate
    config = TrainConfig(out_dir=tmp_path / "continued", data=small_fer_file, init="model", init_model=exported,
                         epochs=1, batch_size=32, limit_train=32, limit_eval=8, base_lr=0.0, ema_decay=0.0,
                         precision="fp32", threads=1)
    train(config)

    # then it trained the file's network: its stem, its size, its weights
    saved = torch.load(tmp_path / "continued" / "last.pt", weights_only=False)
    assert (saved["config"]["stem"], saved["config"]["input_size"]) == ("small-pool", 48)
    assert torch.equal(saved["network"]["conv1.weight"], load_checkpoint(source).state_dict["conv1.weight"])
    # and another stem than the file's is refused
    config.stem, config.out_dir = "small", tmp_path / "refused"
    with pytest.raises(FervidError) as refused:
        train(config)
    assert refused.value.code == "invalid_request"


@pytest.mark.parametrize(("requested", "device", "cpu", "bf16"), [
    ("auto", "cpu", AVX2_ONLY, False),
    ("auto", "cpu", AMX, True),
    ("auto", "cuda", AVX2_ONLY, True),
    ("bf16", "cpu", AVX2_ONLY, True),
    ("fp32", "cpu", AMX, False),
])
def test_precision_follows_the_cpus_bf16_support_unless_told(
        requested: str, device: str, cpu: CpuFeatures, bf16: bool) -> None:
    precision = choose_precision(requested, device, cpu)
    assert precision.bf16 is bf16
    assert precision.reason  # printed by `fervid train`
    if requested == "auto" and device == "cpu" and not bf16:
        assert "AVX512-BF16" in precision.reason and "slower" in precision.reason


def test_pad_crop_and_erasing_keep_the_batch_shape_and_change_pixels() -> None:
    # given a batch of distinct faces
    generator = torch.Generator().manual_seed(0)
    faces = torch.rand(16, 1, 48, 48, generator=generator)

    # when they are pad-cropped (48 of 56) and erased with certainty
    cropped = pad_crop_augment(faces, 48, 4, generator)
    erased = random_erase(faces, 1.0, 0.5, generator)

    # then shapes hold; every crop is a shifted (maybe mirrored) window of its padded face
    assert cropped.shape == faces.shape and erased.shape == faces.shape
    padded = torch.nn.functional.pad(faces, (4, 4, 4, 4), mode="replicate")
    for face in range(16):
        windows = [padded[face, 0, top : top + 48, left : left + 48] for top in range(9) for left in range(9)]
        assert any(torch.equal(cropped[face, 0], w) or torch.equal(cropped[face, 0], w.flip(1)) for w in windows)
    # and every face lost a rectangle of 2-33 % of it to the fill value
    changed = (erased != faces).flatten(1).float().mean(1)
    assert bool((changed > 0.005).all()) and bool((changed <= 0.34).all())
    assert bool((erased[erased != faces] == 0.5).all())
    # and an erasing probability of 0 changes nothing
    assert torch.equal(random_erase(faces, 0.0, 0.5, generator), faces)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_keep_shapes_and_targets_that_sum_to_one(mixup: float, cutmix: float) -> None:
    # given a batch and smoothed one-hot targets
    generator = torch.Generator().manual_seed(1)
    faces = torch.rand(8, 1, 48, 48, generator=generator)
    targets = torch.eye(len(EMOTIONS))[torch.randint(0, len(EMOTIONS), (8,), generator=generator)] * 0.9 + 0.1 / 7

    # when they are mixed
    mixed, mixed_targets = mix_batch(faces, targets, mixup, cutmix, generator, np.random.default_rng(2))

    # then shapes hold, targets are still distributions, and something mixed
    assert mixed.shape == faces.shape and mixed_targets.shape == targets.shape
    torch.testing.assert_close(mixed_targets.sum(1), torch.ones(8))
    assert not torch.equal(mixed, faces) and not torch.equal(mixed_targets, targets)
    # and with both alphas 0 nothing changes
    same, same_targets = mix_batch(faces, targets, 0.0, 0.0, generator, np.random.default_rng(2))
    assert same is faces and same_targets is targets


def test_tencrop_is_ten_views_and_predict_probs_averages_them() -> None:
    # given a network and faces
    torch.manual_seed(0)
    network = EmotionResNet50(stem="small-pool").eval()
    faces = np.random.default_rng(4).integers(0, 256, (3, 48, 48), dtype=np.uint8)

    # when ten-crop views are made and predicted
    views = tencrop_views(to_input(faces, 24))
    probs = predict_probs(network, faces, 24, tta=False, bf16=False, tencrop=True)

    # then there are ten views of the input's shape, the centre one the input itself, and probabilities are their mean
    assert len(views) == 10 and all(view.shape == (3, 1, 24, 24) for view in views)
    assert torch.equal(views[4], to_input(faces, 24))
    with torch.no_grad():
        expected = torch.stack([torch.softmax(network(view), dim=1) for view in views]).mean(0).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_the_gpu_command_runs_on_the_cpu_and_returns_its_checkpoint_in_parts(tmp_path: Path) -> None:
    # given a FER-2013-shaped file with 256 training faces
    data = write_fer_file(tmp_path / "fer.npz", (256, 32, 8), seed=5)

    # when bench/device_train.py runs one epoch on the CPU (small input: speed is not the point)
    parts_dir = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "device_train.py"), "--device", "cpu", "--limit-train", "256",
         "--epochs", "1", "--data", str(data), "--out", str(tmp_path / "run"), "--parts-dir", str(parts_dir),
         "--stem", "small-pool", "--input-size", "16", "--batch-size", "64", "--threads", "1", "--precision", "fp32"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]

    # then the candidate comes back in parts that join into a checkpoint export reads
    parts = sorted(parts_dir.glob("candidate.pt.part-*"))
    assert parts and all(part.stat().st_size <= 16 * 1024 * 1024 for part in parts)
    assert "cat candidate.pt.part-* > candidate.pt" in (parts_dir / "JOIN.txt").read_text()
    joined = tmp_path / "candidate.pt"
    joined.write_bytes(b"".join(part.read_bytes() for part in parts))
    checkpoint = load_checkpoint(joined)
    assert checkpoint.stem == "small-pool" and checkpoint.input_size == 16
    assert (parts_dir / "history.json").is_file()
    assert "precision: fp32" in result.stdout
