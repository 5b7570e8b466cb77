"""Calibration (`fervid calibrate`): a temperature fitted on PublicTest so that a face's probabilities say how often
the model is right, stored in the model's metadata and applied by every backend (models/classifier.py).

The temperature minimises the negative log-likelihood of PublicTest's labels under softmax(log(p) / T), where p is
what jobs compute (TTA included); the expected calibration error (ECE, 15 equal-width confidence bins) is reported
before and after on PrivateTest, which is read for the report only: against FER-2013's labels, and with the FER+
votes also against the crowd (`vote_calibration_error`: a face's top probability read as the share of its annotators
who chose that emotion).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from fervid.errors import DATA_NOT_FOUND, FervidError
from models.network_io import temperature_scaled
from models.spec import TEMPERATURE_KEY, read_model_spec
from models.training.evaluate import onnx_predictor
from models.training.fer2013 import load_ferplus_shares, load_split

ECE_BINS = 15
# The temperature is searched on a log scale within these bounds (read_model_spec accepts [0.05, 20]).
LOWEST_T, HIGHEST_T = 0.1, 10.0


def negative_log_likelihood(probs: NDArray[np.float32], labels: NDArray[np.int64]) -> float:
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))))


def fit_temperature(probs: NDArray[np.float32], labels: NDArray[np.int64]) -> float:
    """The T minimising the NLL of `labels` under temperature_scaled(probs, T): golden-section search on log T (the
    NLL of a temperature-scaled softmax is convex in 1/T, so one minimum)."""
    def loss(log_t: float) -> float:
        return negative_log_likelihood(temperature_scaled(probs, math.exp(log_t)), labels)

    low, high = math.log(LOWEST_T), math.log(HIGHEST_T)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    while high - low > 1e-4:
        if loss_a < loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return round(math.exp((low + high) / 2), 4)


def expected_calibration_error(probs: NDArray[np.float32], labels: NDArray[np.int64], bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of (faces in bin / faces) x |accuracy - mean confidence| in the bin."""
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    return _binned_error(probs.max(axis=1), correct, bins)


def _binned_error(confidence: NDArray[np.float32], agreement: NDArray[np.float64], bins: int) -> float:
    """Over equal-width confidence bins, the face-weighted |mean agreement - mean confidence|."""
    # Bin k holds confidences in (k/bins, (k+1)/bins]; a confidence of exactly 0 cannot occur over 7 classes.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    error = 0.0
    for k in range(bins):
        members = index == k
        if members.any():
            error += members.mean() * abs(agreement[members].mean() - confidence[members].mean())
    return float(error)


def vote_calibration_error(probs: NDArray[np.float32], shares: NDArray[np.float32], bins: int = ECE_BINS) -> float:
    """ECE with the crowd for truth: per confidence bin, |mean share of the annotators' votes that went to the
    predicted emotion - mean confidence|, over the faces with votes (FER+ `load_ferplus_shares` rows)."""
    voted = shares.sum(axis=1) > 0
    probs, shares = probs[voted], shares[voted]
    agreeing = shares[np.arange(len(probs)), probs.argmax(axis=1)].astype(np.float64)
    return _binned_error(probs.max(axis=1), agreeing, bins)


def calibrate(model: Path, out: Path, data_path: Path, ferplus: Path | None = None) -> dict[str, Any]:
    """Writes `model` with the temperature fitted on PublicTest in its metadata to `out`; returns the report."""
    if not data_path.is_file():
        raise FervidError(f"data file {data_path} not found; pass --data PATH to fer2013.npz", code=DATA_NOT_FOUND)
    spec = read_model_spec(model)
    # The network's own probabilities (a temperature already in the file is undone), with the file's TTA.
    predict, info = onnx_predictor(model)
    public, private = load_split(data_path, "public"), load_split(data_path, "private")
    raw = {split.name: temperature_scaled(predict(split.faces, spec.tta == "hflip"), 1.0 / spec.temperature)
           for split in (public, private)}
    temperature = fit_temperature(raw["public"], public.labels)
    calibrated = {name: temperature_scaled(probs, temperature) for name, probs in raw.items()}
    report: dict[str, Any] = {"model": {**info, "path": str(model)}, "temperature": temperature,
                              "fitted_on": "public", "bins": ECE_BINS, "tta": spec.tta or "off"}
    for split in (public, private):
        shares = load_ferplus_shares(ferplus, split.name) if ferplus is not None else None
        if shares is not None and len(shares) != len(split):
            raise FervidError(f"{ferplus} holds votes for {len(shares)} {split.name} faces, {data_path} has "
                              f"{len(split)}: not the same FER-2013", code=DATA_NOT_FOUND)
        for stage, probs in (("before", raw[split.name]), ("after", calibrated[split.name])):
            report[f"{split.name}_{stage}"] = {
                "ece": expected_calibration_error(probs, split.labels),
                "nll": negative_log_likelihood(probs, split.labels),
                "mean_confidence": float(probs.max(axis=1).mean()),
                "accuracy": float((probs.argmax(axis=1) == split.labels).mean()),
                **({"ece_votes": vote_calibration_error(probs, shares)} if shares is not None else {})}
    graph = onnx.load(str(model))
    kept = [(prop.key, prop.value) for prop in graph.metadata_props if prop.key != TEMPERATURE_KEY]
    del graph.metadata_props[:]
    for key, value in [*kept, (TEMPERATURE_KEY, f"{temperature:g}")]:
        graph.metadata_props.add(key=key, value=value)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(out))
    report["out"] = {"path": str(out), "sha256": read_model_spec(out).sha256}
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"temperature {report['temperature']:g} (fitted on PublicTest, TTA {report['tta']})"]
    for split in ("public", "private"):
        before, after = report[f"{split}_before"], report[f"{split}_after"]
        votes = f", against the FER+ votes {before['ece_votes']:.4f} -> {after['ece_votes']:.4f}" \
            if "ece_votes" in after else ""
        lines.append(f"{split:<8} ECE {before['ece']:.4f} -> {after['ece']:.4f}{votes}, NLL {before['nll']:.4f} -> "
                     f"{after['nll']:.4f}, mean confidence {before['mean_confidence']:.3f} -> "
                     f"{after['mean_confidence']:.3f}, top-1 {after['accuracy']:.2%}")
    return "\n".join(lines) + "\n" + json.dumps(report["out"])
