"""The model's metadata read off its protobuf framing: the same as the onnx package reads, without the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from models.backends.ort import is_quantized
from models.graph_rewrites import has_qdq, store_weights
from models.spec import DEFAULT_MODEL_PATH, WEIGHTS_KEY, read_metadata, read_model_spec
from models.training.quantize import quantize_int8


def onnx_metadata(path: Path) -> dict[str, str]:
    return {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}


@pytest.fixture
def model_files(tiny_model_path: Path, tmp_path: Path) -> list[Path]:
    """The shipped model, a tiny one without WEIGHTS_KEY, its fp16-stored copy and its INT8 copy."""
    fp16 = tmp_path / "fp16.onnx"
    stored = store_weights(onnx.load(str(tiny_model_path)), "fp16")
    stored.metadata_props.add(key=WEIGHTS_KEY, value="fp16")
    onnx.save(stored, fp16)
    faces = np.random.default_rng(0).integers(0, 256, (32, 48, 48), dtype=np.uint8)
    int8 = quantize_int8(tiny_model_path, tmp_path / "int8.onnx", faces, read_model_spec(tiny_model_path).preprocess)
    return [DEFAULT_MODEL_PATH, tiny_model_path, fp16, int8]


def test_metadata_and_quantization_read_off_the_framing_match_the_parsed_graph(model_files: list[Path]) -> None:
    for path in model_files:
        # when / then: each key and value as the onnx package reads them, and QDQ exactly where the graph has it
        assert read_metadata(path) == onnx_metadata(path), path
        assert is_quantized(path) == has_qdq(onnx.load(str(path))), path
    assert [is_quantized(path) for path in model_files[1:]] == [False, False, True]


def test_a_file_that_is_not_a_model_is_refused(tiny_model_path: Path, tmp_path: Path) -> None:
    # given a text file, an empty file and a model cut short
    text, empty, cut = tmp_path / "notes.onnx", tmp_path / "empty.onnx", tmp_path / "cut.onnx"
    text.write_text("not a model at all\n")
    empty.write_bytes(b"")
    cut.write_bytes(tiny_model_path.read_bytes()[:-40])
    for path in (text, empty, cut):
        # then each is a ValueError, as callers of read_model_spec expect for a foreign file
        with pytest.raises(ValueError):
            read_model_spec(path)
