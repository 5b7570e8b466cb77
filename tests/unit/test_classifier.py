"""The runtime must feed the classifier what training evaluated it on: preprocessing parity with training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.backends.ort import OrtBackend
from models.classifier import EmotionClassifier
from models.network_io import preprocess_faces
from models.spec import Preprocess, read_model_spec
from models.training.export import build_network, export_onnx, load_checkpoint
from models.training.fer2013 import load_split
from models.training.predict import NATIVE_SIZE, PIXEL_MEAN, PIXEL_STD, predict_probs, to_input
from tests.unit.training.test_export import write_checkpoint


def training_preprocess(size: int) -> Preprocess:
    """What `fervid export` writes for a network trained at `size`."""
    return Preprocess(size=(size, size), channels=1, scale=1 / 255, mean=(PIXEL_MEAN,), std=(PIXEL_STD,),
                      native_size=(NATIVE_SIZE, NATIVE_SIZE))


def random_faces(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, NATIVE_SIZE, NATIVE_SIZE), dtype=np.uint8)


@pytest.mark.parametrize("size", [32, 48, 64, 96])
def test_runtime_preprocessing_equals_training_evaluation_preprocessing(size: int) -> None:
    # given 48x48 grey faces (noise: the hardest case for two resize implementations to agree on)
    faces = random_faces(8)

    # when the runtime and training each preprocess them
    runtime = preprocess_faces(list(faces), training_preprocess(size))
    training = to_input(faces, size).contiguous().numpy()

    # then they agree within about one grey level (1/255/0.25 = 0.016): OpenCV resizes in fixed point, to whole levels
    assert runtime.shape == training.shape == (8, 1, size, size)
    assert np.abs(runtime - training).max() < 0.02
    assert np.abs(runtime - training).mean() < 0.005
    if size == NATIVE_SIZE:
        np.testing.assert_allclose(runtime, training, atol=1e-5)


def test_a_large_colour_crop_is_first_brought_to_training_resolution() -> None:
    # given a 150x150 BGR crop of noise, and its grey 48x48 area-downscale (a FER-2013-like face)
    crop = np.random.default_rng(1).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    as_training_face = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), (NATIVE_SIZE, NATIVE_SIZE),
                                  interpolation=cv2.INTER_AREA)

    # when the runtime preprocesses the crop
    runtime = preprocess_faces([crop], training_preprocess(64))

    # then it sees what training would have seen for that face; skipping 48x48 would look very different
    assert np.abs(runtime - to_input(as_training_face[None], 64).numpy()).max() < 0.02
    direct = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), (64, 64), interpolation=cv2.INTER_LINEAR)
    assert np.abs(runtime[0, 0] - to_input(direct[None], 64).numpy()[0, 0]).max() > 1.0


def test_exported_model_through_the_runtime_matches_training_evaluation(shared_dir: Path, tmp_path: Path) -> None:
    # given a checkpoint, its ONNX export and real FER-2013 faces
    checkpoint = write_checkpoint(tmp_path / "best.pt", input_size=64)
    model = export_onnx(checkpoint, tmp_path / "model.onnx", tta=False, weights="fp32")
    faces = load_split(shared_dir / "data" / "fer2013.npz", "public").head(16).faces
    spec = read_model_spec(model)
    network = build_network(load_checkpoint(checkpoint))

    for tta in (False, True):
        # when the runtime classifies the faces as a job would, and training evaluates them
        classifier = EmotionClassifier(dataclasses.replace(spec, tta="hflip" if tta else ""), OrtBackend(model))
        runtime = classifier.classify(list(faces))
        with torch.no_grad():
            training = predict_probs(network, faces, 64, tta=tta, bf16=False)

        # then the probabilities agree
        assert np.abs(runtime - training).max() < 1e-3


def test_face_crops_are_copies_and_edge_crops_are_padded_not_shifted() -> None:
    from models.network_io import Framing, crop_face

    # given a frame whose pixels encode their column, and a face touching its left edge
    frame = np.tile(np.arange(100, dtype=np.uint8), (80, 1))[..., None].repeat(3, axis=2)
    # when the face is cropped with a margin
    crop = crop_face(frame, (0, 20, 40, 40), Framing(side=1.5))
    inner = crop_face(frame, (40, 20, 20, 20), Framing(side=1.0))
    # then the crop is square, owns its memory, and the missing left part replicates column 0
    assert crop.shape[:2] == (60, 60) and crop.base is None and inner.base is None
    assert (crop[:, :10, 0] == 0).all() and crop[0, 10, 0] == 0 and crop[0, 30, 0] == 20
    assert inner[0, 0, 0] == 40 and inner[0, -1, 0] == 59


def test_a_crop_is_centred_on_the_box_and_sized_by_its_longer_side() -> None:
    from models.network_io import Framing, crop_face

    # given a frame whose pixels encode their column and row, and a box 20 wide and 40 tall centred at (50, 50)
    columns = np.tile(np.arange(100, dtype=np.uint8), (100, 1))
    frame = np.stack([columns, columns.T, columns], axis=2)

    # when it is cropped to 1.25 of its height
    crop = crop_face(frame, (40, 30, 20, 40), Framing(side=1.25))
    # and with its centre moved a tenth of that height right and a twentieth up
    moved = crop_face(frame, (40, 30, 20, 40), Framing(side=1.25, dx=0.1, dy=-0.05))

    # then the crop is 50 square, centred on column 50 and row 50, and the moved one on column 54 and row 48
    assert crop.shape[:2] == (50, 50) and moved.shape[:2] == (50, 50)
    assert (crop[0, 0, 0], crop[0, -1, 0]) == (25, 74)
    assert (crop[0, 0, 1], crop[-1, 0, 1]) == (25, 74)
    assert (moved[0, 0, 0], moved[0, -1, 0]) == (29, 78)
    assert (moved[0, 0, 1], moved[-1, 0, 1]) == (23, 72)
