"""Evaluation (`fervid eval`): top-1, macro-F1, per-class scores and confusion matrices on PublicTest / PrivateTest.

ONNX models run through the runtime path jobs use (read_model_spec -> preprocess_faces -> OrtBackend);
checkpoints through training's own evaluation (models.training.predict.predict_probs, fp32). `--int8` also quantizes
(calibrated on `train` faces only) and reports the accuracy change and the CPU speed-up measured in the same run.
`--against OTHER.onnx` scores another model on the same faces, and says whether the difference is more than chance
(the faces only one of the two gets right, McNemar's exact test): how a candidate is weighed against the shipped one.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fervid.errors import DATA_NOT_FOUND, INVALID_MODEL, INVALID_REQUEST, FervidError
from fervid.files import sha256_file
from models.backends.ort import OrtBackend
from models.classifier import EmotionClassifier
from models.network_io import preprocess_faces
from models.spec import read_model_spec
from models.training.fer2013 import NO_MAJORITY, Split, load_crowd_majority, load_split
from models.training.metrics import (
    ClassificationMetrics,
    PairedComparison,
    classification_metrics,
    paired_comparison,
    plot_confusion,
)
from models.training.quantize import DEFAULT_CALIBRATION_SIZE, calibration_faces

EVAL_SPLITS = ("public", "private")  # `train` is for fitting and calibration only
TTA_CHOICES = {"off": (False,), "on": (True,), "both": (False, True)}
DEFAULT_BATCH = 64
SPEED_WARMUP = 3
SPEED_ROUNDS = 20
INT8_FILE = "fervid-emotion-int8.onnx"
# Not computed here: the `fer` library's bundled mini-Xception, measured on this same file (../shared/README.md).
REFERENCE = {
    "model": "fer library mini-Xception (bundled)", "public": 0.654, "private": 0.658,
    "note": "reference figure measured on this fer2013.npz per ../shared/README.md, not computed by this run",
}

# (N, 48, 48) grey faces, hflip TTA on or off -> (N, 7) probabilities
Predict = Callable[[NDArray[np.uint8], bool], NDArray[np.float32]]
# split name -> TTA mode ("off" / "on") -> (N, 7) probabilities
Probabilities = dict[str, dict[str, NDArray[np.float32]]]


def onnx_predictor(model: Path, batch_size: int = DEFAULT_BATCH) -> tuple[Predict, dict[str, Any]]:
    """Predictions exactly as a job makes them; TTA is forced on or off whatever the model's metadata says."""
    try:
        spec = read_model_spec(model)
    except (FileNotFoundError, ValueError) as error:
        raise FervidError(str(error), code=INVALID_MODEL) from error
    backend = OrtBackend(model, max_batch=batch_size)

    def predict(faces: NDArray[np.uint8], tta: bool) -> NDArray[np.float32]:
        classifier = EmotionClassifier(dataclasses.replace(spec, tta="hflip" if tta else ""), backend)
        return classifier.classify(list(faces))

    info = {"kind": "onnx", "path": str(model), "name": spec.name, "version": spec.version, "sha256": spec.sha256,
            "metadata_tta": spec.tta or "off", "members": spec.members, "backend": backend.name}
    return predict, info


def checkpoint_predictor(checkpoint: Path, batch_size: int = DEFAULT_BATCH) -> tuple[Predict, dict[str, Any]]:
    # Imported here: evaluating an ONNX model needs no torch.
    from models.training.export import build_network, load_checkpoint
    from models.training.predict import predict_probs

    loaded = load_checkpoint(checkpoint)
    network = build_network(loaded)

    def predict(faces: NDArray[np.uint8], tta: bool) -> NDArray[np.float32]:
        return predict_probs(network, faces, loaded.input_size, tta, bf16=False, batch_size=batch_size)

    info = {"kind": "checkpoint", "path": str(checkpoint), "epochs_trained": loaded.epoch + 1,
            "input_size": loaded.input_size, "stem": loaded.stem, "init": loaded.config.get("init", "unknown"),
            "public_acc_recorded": loaded.public_acc}
    return predict, info


def predict_splits(predict: Predict, splits: Sequence[Split], tta_modes: Sequence[bool]) -> Probabilities:
    return {split.name: {"on" if tta else "off": predict(split.faces, tta) for tta in tta_modes} for split in splits}


def evaluate_splits(probs: Probabilities, splits: Sequence[Split], out_dir: Path,
                    suffix: str = "") -> dict[str, dict[str, ClassificationMetrics]]:
    """Metrics per split and TTA mode ("off" / "on"); writes DIR/confusion_<split>[_tta]<suffix>.png for each."""
    results: dict[str, dict[str, ClassificationMetrics]] = {}
    for split in splits:
        results[split.name] = {}
        for mode, split_probs in probs[split.name].items():
            metrics = classification_metrics(split.labels, split_probs)
            results[split.name][mode] = metrics
            name = f"confusion_{split.name}{'_tta' if mode == 'on' else ''}{suffix}.png"
            title = f"{split.name} ({len(split)} faces), TTA {mode}{suffix.replace('_', ' ')}: " \
                    f"top-1 {metrics.accuracy:.1%}, macro-F1 {metrics.macro_f1:.3f}"
            plot_confusion(metrics.confusion, out_dir / name, title)
    return results


def evaluate_crowd(probs: Probabilities, splits: Sequence[Split], majorities: dict[str, NDArray[np.int64]],
                   out_dir: Path) -> dict[str, Any]:
    """Agreement with the FER+ crowd majority on each split's clear faces (those with one), per TTA mode, beside
    the agreement of FER-2013's own labels with it; writes DIR/confusion_<split>[_tta]_crowd.png (rows: the crowd)."""
    report: dict[str, Any] = {}
    for split in splits:
        majority = majorities[split.name]
        clear = majority != NO_MAJORITY
        section: dict[str, Any] = {
            "clear_faces": int(clear.sum()),
            "fer2013_labels_agreement": float((split.labels[clear] == majority[clear]).mean()),
        }
        for mode, split_probs in probs[split.name].items():
            metrics = classification_metrics(majority[clear], split_probs[clear])
            section[mode] = metrics.to_dict()
            name = f"confusion_{split.name}{'_tta' if mode == 'on' else ''}_crowd.png"
            plot_confusion(metrics.confusion, out_dir / name,
                           f"{split.name} against the FER+ crowd majority ({metrics.count} clear faces), TTA {mode}: "
                           f"agreement {metrics.accuracy:.1%}, macro-F1 {metrics.macro_f1:.3f}")
        report[split.name] = section
    return report


def compare_splits(probs: Probabilities, other_probs: Probabilities,
                   splits: Sequence[Split]) -> dict[str, dict[str, PairedComparison]]:
    """Two models' predictions of the same faces, per split and TTA mode."""
    return {split.name: {mode: paired_comparison(split.labels, split_probs, other_probs[split.name][mode])
                         for mode, split_probs in probs[split.name].items()} for split in splits}


def measure_throughput(models: dict[str, Path], batch: NDArray[np.float32], rounds: int = SPEED_ROUNDS,
                       warmup: int = SPEED_WARMUP) -> dict[str, float]:
    """Faces per second of each model on the same batch, CPU; rounds interleave models so load drifts hit all alike."""
    backends = {name: OrtBackend(path, max_batch=len(batch)) for name, path in models.items()}
    for backend in backends.values():
        for _ in range(warmup):
            backend.run(batch)
    seconds: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(rounds):
        for name, backend in backends.items():
            started = time.perf_counter()
            backend.run(batch)
            seconds[name].append(time.perf_counter() - started)
    return {name: len(batch) / statistics.median(times) for name, times in seconds.items()}


def _metrics_json(results: dict[str, dict[str, ClassificationMetrics]]) -> dict[str, dict[str, Any]]:
    return {split: {mode: metrics.to_dict() for mode, metrics in modes.items()} for split, modes in results.items()}


def _int8_section(fp32_onnx: Path, baseline: dict[str, dict[str, ClassificationMetrics]], splits: Sequence[Split],
                  tta_modes: Sequence[bool], train_faces: NDArray[np.uint8], out_dir: Path, batch_size: int,
                  fp32_label: str) -> tuple[dict[str, Any], dict[str, dict[str, ClassificationMetrics]]]:
    from models.training.quantize import quantize_int8

    spec = read_model_spec(fp32_onnx)
    int8_path = quantize_int8(fp32_onnx, out_dir / INT8_FILE, train_faces, spec.preprocess)
    predict, info = onnx_predictor(int8_path, batch_size)
    results = evaluate_splits(predict_splits(predict, splits, tta_modes), splits, out_dir, suffix="_int8")
    change = {split: {mode: {"accuracy": metrics.accuracy - baseline[split][mode].accuracy,
                             "macro_f1": metrics.macro_f1 - baseline[split][mode].macro_f1}
                      for mode, metrics in modes.items()} for split, modes in results.items()}
    # The given ONNX is the fp32 side even when it stores fp16 weights: ORT computes it in fp32 after load.
    faces = splits[0].faces[:batch_size]
    speed_batch = preprocess_faces(list(faces), spec.preprocess)
    speed = measure_throughput({"fp32": fp32_onnx, "int8": int8_path}, speed_batch)
    section = {
        "model": info, "calibration_faces": len(train_faces), "calibration_split": "train",
        "splits": _metrics_json(results), "change_vs_baseline": change,
        "speed": {"batch_size": len(speed_batch), "warmup_batches": SPEED_WARMUP, "timed_batches": SPEED_ROUNDS,
                  "fp32_onnx": fp32_label, "fp32_faces_per_s": speed["fp32"], "int8_faces_per_s": speed["int8"],
                  "speedup": speed["int8"] / speed["fp32"], "statistic": "batch size / median batch seconds"},
    }
    return section, results


def run_evaluation(*, checkpoint: Path | None = None, onnx_model: Path | None = None,
                   data_path: Path, splits: Sequence[str] = EVAL_SPLITS, tta: str = "both",
                   out_dir: Path = Path("runs/eval"), limit: int = 0, int8: bool = False,
                   calibration_size: int = DEFAULT_CALIBRATION_SIZE, batch_size: int = DEFAULT_BATCH,
                   against: Path | None = None, ferplus: Path | None = None) -> dict[str, Any]:
    """Evaluates one checkpoint or ONNX model; writes DIR/metrics.json and the confusion PNGs; returns the report.
    With `ferplus` (the FER+ votes), also the agreement with the crowd majority on each split's clear faces."""
    _check_options(checkpoint, onnx_model, data_path, splits, tta, int8, calibration_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    if ferplus is not None and not ferplus.is_file():
        raise FervidError(f"FER+ votes file {ferplus} not found; pass --ferplus PATH to fer2013_meta.npz",
                          code=DATA_NOT_FOUND)
    loaded = [load_split(data_path, name) for name in splits]
    if limit:
        loaded = [split.head(limit) for split in loaded]
    majorities = {split.name: load_crowd_majority(ferplus, split.name)[: len(split)] for split in loaded} \
        if ferplus is not None else {}
    tta_modes = TTA_CHOICES[tta]

    if onnx_model is not None:
        predict, info = onnx_predictor(onnx_model, batch_size)
    else:
        assert checkpoint is not None
        predict, info = checkpoint_predictor(checkpoint, batch_size)
    probs = predict_splits(predict, loaded, tta_modes)
    results = evaluate_splits(probs, loaded, out_dir)
    report: dict[str, Any] = {
        "model": info, "data": {"path": str(data_path), "sha256": sha256_file(data_path)},
        "limit": limit or None, "splits": _metrics_json(results), "reference": REFERENCE,
    }
    if majorities:
        report["crowd"] = evaluate_crowd(probs, loaded, majorities, out_dir)
    table = {"torch" if checkpoint is not None else "onnx": results}
    comparisons: dict[str, dict[str, PairedComparison]] = {}
    if against is not None:
        other, other_info = onnx_predictor(against, batch_size)
        comparisons = compare_splits(probs, predict_splits(other, loaded, tta_modes), loaded)
        report["against"] = {"model": other_info, "test": "exact McNemar, two-sided",
                             "splits": {split: {mode: comparison.to_dict() for mode, comparison in modes.items()}
                                        for split, modes in comparisons.items()}}
    if int8:
        with tempfile.TemporaryDirectory(prefix="fervid-eval-") as work:
            fp32_onnx, fp32_label = _fp32_onnx(checkpoint, onnx_model, Path(work), data_path)
            faces = calibration_faces(data_path, calibration_size)
            report["int8"], table["int8"] = _int8_section(
                fp32_onnx, results, loaded, tta_modes, faces, out_dir, batch_size, fp32_label)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=1))
    print(format_table(table, report))
    for split, modes in comparisons.items():
        for mode, comparison in modes.items():
            print(format_comparison(split, mode, comparison, str(against)))
    return report


def _check_options(checkpoint: Path | None, onnx_model: Path | None, data_path: Path, splits: Sequence[str],
                   tta: str, int8: bool, calibration_size: int) -> None:
    if (checkpoint is None) == (onnx_model is None):
        raise FervidError("give exactly one of --checkpoint or --onnx", code=INVALID_REQUEST)
    if tta not in TTA_CHOICES:
        raise FervidError(f"--tta must be one of {tuple(TTA_CHOICES)}, not {tta!r}", code=INVALID_REQUEST)
    unknown = [name for name in splits if name not in EVAL_SPLITS]
    if unknown or not splits:
        raise FervidError(f"--splits must name some of {EVAL_SPLITS}, not {list(splits)}", code=INVALID_REQUEST)
    if int8 and calibration_size <= 0:
        raise FervidError("--calibration-size must be positive", code=INVALID_REQUEST)
    if not data_path.is_file():
        raise FervidError(f"data file {data_path} not found; pass --data PATH to fer2013.npz", code=DATA_NOT_FOUND)


def _fp32_onnx(checkpoint: Path | None, onnx_model: Path | None, work: Path, data_path: Path) -> tuple[Path, str]:
    """The fp32 ONNX model `--int8` quantizes, and how the report names it: the given one, or a checkpoint's export
    into `work`."""
    if onnx_model is not None:
        return onnx_model, str(onnx_model)
    from models.training.export import export_onnx

    assert checkpoint is not None
    fp32_onnx = export_onnx(checkpoint, work / "fp32.onnx", tta=False, weights="fp32", data_path=data_path)
    return fp32_onnx, f"fp32 export of {checkpoint} (temporary)"


def format_comparison(split: str, mode: str, comparison: PairedComparison, other: str) -> str:
    return (f"against {other}, {split} tta {mode}: {comparison.accuracy:.2%} vs {comparison.other_accuracy:.2%} "
            f"({100 * (comparison.accuracy - comparison.other_accuracy):+.2f} points); right only here "
            f"{comparison.only_this_right}, only there {comparison.only_other_right}, McNemar p = "
            f"{comparison.p_value:.3g}")


def format_table(table: dict[str, dict[str, dict[str, ClassificationMetrics]]], report: dict[str, Any]) -> str:
    lines = [f"{'model':<7} {'split':<8} {'tta':<4} {'top-1':>7} {'macro-F1':>9} {'faces':>6}"]
    for model, results in table.items():
        for split, modes in results.items():
            for mode, metrics in modes.items():
                lines.append(f"{model:<7} {split:<8} {mode:<4} {metrics.accuracy:>7.2%} {metrics.macro_f1:>9.4f} "
                             f"{metrics.count:>6}")
    if "int8" in report:
        speed = report["int8"]["speed"]
        lines.append(f"CPU speed, batch {speed['batch_size']}: fp32 ONNX {speed['fp32_faces_per_s']:.0f} faces/s, "
                     f"INT8 {speed['int8_faces_per_s']:.0f} faces/s, x{speed['speedup']:.2f}")
    for split, section in report.get("crowd", {}).items():
        agreement = ", ".join(f"tta {mode} {section[mode]['accuracy']:.2%}" for mode in ("off", "on")
                              if mode in section)
        lines.append(f"FER+ crowd majority, {split} ({section['clear_faces']} clear faces): this model {agreement}; "
                     f"FER-2013's own labels {section['fer2013_labels_agreement']:.2%}")
    lines.append(f"reference (not computed here): {REFERENCE['model']}: public {REFERENCE['public']:.1%}, "
                 f"private {REFERENCE['private']:.1%}")
    return "\n".join(lines)
