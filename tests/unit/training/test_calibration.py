"""Calibration: the temperature fitted on PublicTest, stored in the model and applied by every backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from fervid.cli import main as fervid_main
from models.backends.ort import OrtBackend
from models.classifier import EmotionClassifier
from models.network_io import softmax, temperature_scaled
from models.spec import TEMPERATURE_KEY, read_model_spec
from models.training.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    vote_calibration_error,
)


def test_the_fitted_temperature_undoes_a_known_overconfidence() -> None:
    # given labels drawn from softmax(z), and a model that reports softmax(2.5 z): too sure of itself
    rng = np.random.default_rng(4)
    logits = rng.normal(0.0, 1.5, (20_000, 7)).astype(np.float32)
    truth = softmax(logits)
    labels = np.array([rng.choice(7, p=row / row.sum()) for row in truth.astype(np.float64)])
    overconfident = softmax(2.5 * logits)
    # when a temperature is fitted to the labels
    temperature = fit_temperature(overconfident, labels)
    # then it is about 2.5, and it brings the expected calibration error down to chance level
    assert temperature == pytest.approx(2.5, rel=0.05)
    assert expected_calibration_error(overconfident, labels) > 0.1
    assert expected_calibration_error(temperature_scaled(overconfident, temperature), labels) < 0.02


def test_the_expected_calibration_error_of_a_hand_computed_case() -> None:
    # given 4 faces: two at confidence 0.9 (one right), two at 0.35 (both right)
    probs = np.full((4, 7), 0.0, np.float32)
    probs[0, 0], probs[1, 1] = 0.9, 0.9
    probs[2, 2], probs[3, 3] = 0.35, 0.35
    probs[:, 6] += 1 - probs.sum(axis=1)  # the rest of each row, never the top
    labels = np.array([0, 2, 2, 3])
    # then ECE = 2/4 * |0.5 - 0.9| + 2/4 * |1.0 - 0.35|
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.65)


def test_every_job_gets_the_temperature_the_model_carries(tiny_model_path: Path, tmp_path: Path) -> None:
    # given the tiny classifier, and a copy carrying a temperature of 2
    model = onnx.load(str(tiny_model_path))
    model.metadata_props.add(key=TEMPERATURE_KEY, value="2")
    warm = tmp_path / "warm.onnx"
    onnx.save(model, str(warm))
    crops = [np.random.default_rng(n).integers(0, 256, (40, 40), np.uint8) for n in range(5)]

    # when both classify the same faces through the runtime path
    def classify(path: Path) -> np.ndarray:
        spec = read_model_spec(path)
        return EmotionClassifier(spec, OrtBackend(path, max_batch=8)).classify(crops)

    plain, tempered = classify(tiny_model_path), classify(warm)
    # then the copy's probabilities are the plain ones at temperature 2: same ranking, softer
    assert read_model_spec(warm).temperature == 2.0
    np.testing.assert_allclose(tempered, temperature_scaled(plain, 2.0), atol=1e-6)
    assert (tempered.argmax(axis=1) == plain.argmax(axis=1)).all()
    assert (tempered.max(axis=1) < plain.max(axis=1)).all()


def test_a_model_with_a_temperature_out_of_range_is_refused(tiny_model_path: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_model_path))
    model.metadata_props.add(key=TEMPERATURE_KEY, value="0")
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(ValueError, match=TEMPERATURE_KEY):
        read_model_spec(broken)


def test_fervid_calibrate_writes_the_fitted_temperature_and_reports_both_splits(
        tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # given a FER-2013-shaped file whose labels follow the tiny model's own (softened) belief, so it is overconfident
    rng = np.random.default_rng(9)
    arrays: dict[str, np.ndarray] = {}
    spec = read_model_spec(tiny_model_path)
    classifier = EmotionClassifier(spec, OrtBackend(tiny_model_path, max_batch=64))
    for split, count in (("train", 16), ("public", 600), ("private", 600)):
        faces = rng.integers(0, 256, (count, 48, 48), np.uint8)
        belief = temperature_scaled(classifier.classify(list(faces)), 3.0).astype(np.float64)
        arrays[f"x_{split}"] = faces
        arrays[f"y_{split}"] = np.array([rng.choice(7, p=row / row.sum()) for row in belief])
    data = tmp_path / "fer.npz"
    np.savez(data, **arrays)

    # when it is calibrated from the command line
    out = tmp_path / "calibrated.onnx"
    assert fervid_main(["calibrate", "--onnx", str(tiny_model_path), "--out", str(out), "--data", str(data),
                        "--ferplus", "none"]) == 0

    # then the copy carries a temperature near 3, its ECE on PrivateTest fell, and the figures were printed
    report = calibrate(tiny_model_path, tmp_path / "again.onnx", data)
    assert read_model_spec(out).temperature == report["temperature"] == pytest.approx(3.0, rel=0.35)
    assert report["private_after"]["ece"] < report["private_before"]["ece"]
    assert report["private_after"]["accuracy"] == report["private_before"]["accuracy"]
    assert "temperature" in capsys.readouterr().out


def test_the_error_against_the_crowds_votes_reads_a_probability_as_the_share_of_annotators_who_agree() -> None:
    # given 3 faces at confidence 0.9 on their top emotion: 6, 8 and 10 of 10 annotators chose it; and one face
    # without votes, left out
    probs = np.full((4, 7), 0.1 / 6, np.float32)
    probs[:, 3] = 0.9
    shares = np.zeros((4, 7), np.float32)
    shares[0, [3, 6]] = 0.6, 0.4
    shares[1, [3, 0]] = 0.8, 0.2
    shares[2, 3] = 1.0
    # then the error is |mean share (0.8) - mean confidence (0.9)|
    assert vote_calibration_error(probs, shares) == pytest.approx(0.1)
