from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fervid.cli import main as fervid_main
from fervid.errors import FervidError
from fervid.labels import EMOTIONS
from models.training.evaluate import REFERENCE, run_evaluation
from models.training.metrics import classification_metrics, confusion_matrix, mcnemar_exact_p, metrics_from_confusion
from tests.unit.training.test_export import write_checkpoint

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY_SIZE = 16  # the conftest tiny classifier's input side
# (true, predicted) class pairs of the constructed PublicTest slice: 8 of 10 right.
PUBLIC_PAIRS = [(0, 0), (0, 3), (1, 1), (2, 2), (3, 3), (3, 3), (3, 6), (4, 4), (5, 5), (6, 6)]
PRIVATE_PAIRS = [(6, 6), (6, 6), (5, 4), (4, 4), (3, 3), (2, 0)]


def test_metrics_of_a_known_confusion_matrix() -> None:
    # given 10 faces of three classes (and a fourth that never occurs), confusion rows = true class:
    #   a: 3 a, 1 b        b: 2 b        c: 2 a, 1 b, 1 c
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    predictions = np.array([0, 0, 0, 1, 1, 1, 0, 0, 1, 2])
    scores = np.eye(4, dtype=np.float32)[predictions]

    # when scored
    metrics = classification_metrics(labels, scores, class_names=("a", "b", "c", "d"))

    # then every figure is the hand-computed one
    np.testing.assert_array_equal(metrics.confusion, [[3, 1, 0, 0], [0, 2, 0, 0], [2, 1, 1, 0], [0, 0, 0, 0]])
    assert metrics.accuracy == pytest.approx(0.6)
    a, b, c, d = (metrics.per_class[name] for name in "abcd")
    assert (a.precision, a.recall, a.f1, a.support) == pytest.approx((3 / 5, 3 / 4, 2 / 3, 4))
    assert (b.precision, b.recall, b.f1, b.support) == pytest.approx((2 / 4, 1.0, 2 / 3, 2))
    assert (c.precision, c.recall, c.f1, c.support) == pytest.approx((1.0, 1 / 4, 0.4, 4))
    assert (d.precision, d.recall, d.f1, d.support) == (0.0, 0.0, 0.0, 0)
    # the class that never occurs is left out of the macro average, as scikit-learn does
    assert metrics.macro_f1 == pytest.approx((2 / 3 + 2 / 3 + 0.4) / 3)
    assert metrics.to_dict()["count"] == 10


def test_metrics_refuse_mismatched_or_out_of_range_inputs() -> None:
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1]), np.array([0]), classes=3)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), classes=3)
    with pytest.raises(ValueError):
        classification_metrics(np.array([0]), np.zeros((1, 3), np.float32))  # 7 emotions expected
    assert metrics_from_confusion(np.zeros((7, 7), np.int64)).accuracy == 0.0


def band_face(emotion: int) -> np.ndarray:
    """A 48x48 face, dark but for rows 6k..6k+5: after the 48->16 resize they are exactly rows 2k and 2k+1."""
    face = np.zeros((48, 48), np.uint8)
    face[6 * emotion : 6 * emotion + 6] = 255
    return face


def rewire_band_model(tiny_model: Path, out: Path, predicts: dict[int, int] | None = None) -> Path:
    """The conftest tiny classifier, rewired so that a face whose bright band is k is predicted `predicts[k]`
    (default k itself); mirror-invariant."""
    predicts = predicts or {}
    model = onnx.load(str(tiny_model))
    weight = np.zeros((TINY_SIZE, TINY_SIZE, len(EMOTIONS)), np.float32)
    for band in range(len(EMOTIONS)):
        weight[2 * band : 2 * band + 2, :, predicts.get(band, band)] = 1.0
    (init,) = [init for init in model.graph.initializer if init.name == "weight"]
    init.CopyFrom(numpy_helper.from_array(weight.reshape(-1, len(EMOTIONS)), "weight"))
    onnx.save(model, out)
    return out


@pytest.fixture
def band_model(tiny_model_path: Path) -> Path:
    return rewire_band_model(tiny_model_path, tiny_model_path)


@pytest.fixture
def constructed_fer_file(tmp_path: Path) -> Path:
    """A FER-2013-shaped file whose test faces make the band model predict exactly the pairs above."""
    rng = np.random.default_rng(3)
    arrays = {"x_train": rng.integers(0, 256, (64, 48, 48), dtype=np.uint8),
              "y_train": rng.integers(0, len(EMOTIONS), 64).astype(np.int64)}
    for split, pairs in (("public", PUBLIC_PAIRS), ("private", PRIVATE_PAIRS)):
        arrays[f"x_{split}"] = np.stack([band_face(predicted) for _, predicted in pairs])
        arrays[f"y_{split}"] = np.array([true for true, _ in pairs], np.int64)
    path = tmp_path / "fer_constructed.npz"
    np.savez(path, **arrays)
    return path


def expected_confusion(pairs: list[tuple[int, int]]) -> list[list[int]]:
    confusion = [[0] * len(EMOTIONS) for _ in EMOTIONS]
    for true, predicted in pairs:
        confusion[true][predicted] += 1
    return confusion


def test_evaluation_of_an_onnx_model_gives_the_hand_computed_metrics_and_writes_its_files(
    band_model: Path, constructed_fer_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a model whose every prediction is known, and test splits built around it
    out_dir = tmp_path / "eval"

    # when evaluated through the runtime path, with and without TTA
    report = run_evaluation(onnx_model=band_model, data_path=constructed_fer_file, out_dir=out_dir, tta="both")

    # then the metrics are the hand-computed ones (mirroring changes nothing for this model)
    public, private = report["splits"]["public"], report["splits"]["private"]
    assert public["off"]["accuracy"] == pytest.approx(0.8) and private["off"]["accuracy"] == pytest.approx(4 / 6)
    assert public["off"]["confusion"] == expected_confusion(PUBLIC_PAIRS)
    assert private["off"]["confusion"] == expected_confusion(PRIVATE_PAIRS)
    assert public["on"] == public["off"]
    assert public["off"]["per_class"]["angry"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})

    # and metrics.json, one PNG per split and TTA mode, and a table with the reference line are written
    assert json.loads((out_dir / "metrics.json").read_text()) == report
    assert report["model"]["kind"] == "onnx" and report["reference"] == REFERENCE
    for name in ("public", "public_tta", "private", "private_tta"):
        assert (out_dir / f"confusion_{name}.png").read_bytes().startswith(PNG_SIGNATURE)
    table = capsys.readouterr().out
    assert "public   off   80.00%" in table
    assert "reference (not computed here)" in table and "65.8%" in table


def test_limit_evaluates_only_the_first_faces_of_each_split(
    band_model: Path, constructed_fer_file: Path, tmp_path: Path
) -> None:
    # when evaluating with --limit 4 and TTA off, PublicTest only
    report = run_evaluation(onnx_model=band_model, data_path=constructed_fer_file, out_dir=tmp_path, tta="off",
                            splits=["public"], limit=4)

    # then only those faces (3 right of 4) count, and only the asked-for plots exist
    assert report["splits"]["public"]["off"]["count"] == 4
    assert report["splits"]["public"]["off"]["accuracy"] == pytest.approx(0.75)
    assert set(report["splits"]) == {"public"} and set(report["splits"]["public"]) == {"off"}
    assert sorted(path.name for path in tmp_path.glob("*.png")) == ["confusion_public.png"]


def test_int8_evaluation_reports_accuracy_change_and_speed(
    band_model: Path, constructed_fer_file: Path, tmp_path: Path
) -> None:
    # when evaluating with --int8 (calibrated on the file's train faces)
    report = run_evaluation(onnx_model=band_model, data_path=constructed_fer_file, out_dir=tmp_path, tta="off",
                            splits=["public"], int8=True, calibration_size=32)

    # then the quantized model keeps this wide-margin model's predictions, and both speeds were measured
    int8 = report["int8"]
    assert int8["calibration_split"] == "train" and int8["calibration_faces"] == 32
    assert int8["splits"]["public"]["off"]["confusion"] == expected_confusion(PUBLIC_PAIRS)
    assert int8["change_vs_baseline"]["public"]["off"]["accuracy"] == pytest.approx(0.0)
    speed = int8["speed"]
    assert speed["fp32_faces_per_s"] > 0 and speed["int8_faces_per_s"] > 0
    assert speed["speedup"] == pytest.approx(speed["int8_faces_per_s"] / speed["fp32_faces_per_s"])
    assert int8["model"]["name"] == "tiny-test-classifier-int8"
    assert (tmp_path / "confusion_public_int8.png").is_file()


def test_the_exact_mcnemar_p_value_matches_the_binomial_test() -> None:
    # two-sided binomial test at 1/2 on the faces only one model gets right (values as scipy's binomtest gives)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(5, 5) == 1.0
    assert mcnemar_exact_p(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact_p(2, 10) == pytest.approx(0.0385742, abs=1e-7)
    assert mcnemar_exact_p(10, 2) == mcnemar_exact_p(2, 10)
    assert 0.0 < mcnemar_exact_p(300, 240) < 0.05 < mcnemar_exact_p(300, 270)


def test_a_model_is_weighed_against_another_on_the_same_faces(
    band_model: Path, constructed_fer_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a second model that swaps angry and happy: it loses (0,0), (3,3), (3,3) and wins (0,3) of PUBLIC_PAIRS
    other = rewire_band_model(band_model, tmp_path / "swapped.onnx", predicts={0: 3, 3: 0})
    # when the first is evaluated against it
    report = run_evaluation(onnx_model=band_model, data_path=constructed_fer_file, out_dir=tmp_path / "eval",
                            tta="off", splits=["public"], against=other)
    # then both are scored on the same faces, with the faces that tell them apart and the exact test on those
    compared = report["against"]["splits"]["public"]["off"]
    assert compared == pytest.approx({"faces": 10, "accuracy": 0.8, "other_accuracy": 0.6, "only_this_right": 3,
                                      "only_other_right": 1, "p_value": 0.625})
    assert report["against"]["model"]["path"] == str(other)
    assert "+20.00 points); right only here 3, only there 1, McNemar p = 0.625" in capsys.readouterr().out


def test_checkpoint_evaluation_runs_the_pytorch_model(constructed_fer_file: Path, tmp_path: Path) -> None:
    # given a training checkpoint
    checkpoint = write_checkpoint(tmp_path / "best.pt", input_size=32)

    # when evaluated directly
    report = run_evaluation(checkpoint=checkpoint, data_path=constructed_fer_file, out_dir=tmp_path / "eval")

    # then every split and TTA mode is scored over all its faces
    assert report["model"]["kind"] == "checkpoint" and report["model"]["input_size"] == 32
    for split, pairs in (("public", PUBLIC_PAIRS), ("private", PRIVATE_PAIRS)):
        for mode in ("off", "on"):
            assert report["splits"][split][mode]["count"] == len(pairs)
            assert 0.0 <= report["splits"][split][mode]["accuracy"] <= 1.0


def test_int8_evaluation_of_a_checkpoint_quantizes_its_fp32_export(constructed_fer_file: Path,
                                                                    tmp_path: Path) -> None:
    # given a training checkpoint
    checkpoint = write_checkpoint(tmp_path / "best.pt", input_size=32)

    # when evaluated with --int8
    report = run_evaluation(checkpoint=checkpoint, data_path=constructed_fer_file, out_dir=tmp_path / "eval",
                            splits=["public"], tta="off", int8=True, calibration_size=16)

    # then an INT8 model of the checkpoint was built and compared with the PyTorch figures
    int8 = report["int8"]
    assert int8["model"]["name"] == "fervid-resnet50-fer2013-int8"
    assert (tmp_path / "eval" / "fervid-emotion-int8.onnx").is_file()
    change = int8["change_vs_baseline"]["public"]["off"]["accuracy"]
    assert change == pytest.approx(int8["splits"]["public"]["off"]["accuracy"]
                                   - report["splits"]["public"]["off"]["accuracy"])


def test_the_training_split_is_never_an_evaluation_split(band_model: Path, constructed_fer_file: Path,
                                                         tmp_path: Path) -> None:
    with pytest.raises(FervidError) as raised:
        run_evaluation(onnx_model=band_model, data_path=constructed_fer_file, out_dir=tmp_path, splits=["train"])
    assert raised.value.code == "invalid_request"


def test_cli_reports_missing_data_in_one_line(band_model: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # when evaluating against a data file that does not exist
    code = fervid_main(["eval", "--onnx", str(band_model), "--data", str(tmp_path / "none.npz"),
                        "--out", str(tmp_path / "eval")])

    # then the command exits 2 with a coded one-line message and writes nothing
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("fervid eval: data_not_found:") and "\n" not in error
    assert not (tmp_path / "eval").exists()


def test_evaluation_with_the_crowds_votes_scores_agreement_with_the_majority_on_clear_faces_only(
    band_model: Path, constructed_fer_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given PublicTest votes: the first 8 faces have a crowd majority of 7 in 10 for the emotion the model predicts
    # on faces 0-5 and for "neutral" on 6-7; faces 8-9 have none (5 happiness, 5 contempt)
    columns = np.array(["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                        "unknown", "NF"])
    ferplus_column = {0: 4, 1: 5, 2: 6, 3: 1, 4: 3, 5: 2, 6: 0}  # FER-2013 index -> FER+ column
    votes = np.zeros((len(PUBLIC_PAIRS), 10), np.uint8)
    for face, (_, predicted) in enumerate(PUBLIC_PAIRS[:8]):
        crowd = predicted if face < 6 else 6
        votes[face, ferplus_column[crowd]] = 7
        votes[face, 8] = 3
    votes[8:, [1, 7]] = 5
    meta = tmp_path / "meta.npz"
    np.savez(meta, ferplus_columns=columns, ferplus_votes_public=votes,
             ferplus_aligned_public=np.ones(len(PUBLIC_PAIRS), bool))

    # when evaluated on PublicTest with them
    report = run_evaluation(onnx_model=band_model, data_path=constructed_fer_file, out_dir=tmp_path, tta="off",
                            splits=["public"], ferplus=meta)

    # then the model agrees with the crowd on 7 of the 8 clear faces (faces 0-5, and face 6, which it calls neutral
    # too), FER-2013's own labels on 5 (faces 0, 2, 3, 4 and 5)
    crowd = report["crowd"]["public"]
    majority = [predicted if face < 6 else 6 for face, (_, predicted) in enumerate(PUBLIC_PAIRS[:8])]
    labels = [true for true, _ in PUBLIC_PAIRS[:8]]
    predictions = [predicted for _, predicted in PUBLIC_PAIRS[:8]]
    assert crowd["clear_faces"] == 8
    assert crowd["off"]["accuracy"] == pytest.approx(np.mean(np.equal(predictions, majority)))
    assert crowd["off"]["accuracy"] == pytest.approx(7 / 8)
    assert crowd["fer2013_labels_agreement"] == pytest.approx(np.mean(np.equal(labels, majority)))
    assert crowd["fer2013_labels_agreement"] == pytest.approx(5 / 8)
    assert crowd["off"]["confusion"] == expected_confusion(list(zip(majority, predictions, strict=True)))
    assert (tmp_path / "confusion_public_crowd.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "FER+ crowd majority, public (8 clear faces): this model tta off 87.50%" in capsys.readouterr().out
