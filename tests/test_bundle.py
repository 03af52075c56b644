"""Tests of drf_batch.bundle: loading a real exported bundle and rejecting damaged ones."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from drf_batch.bundle import (
    GRAPH_FILES,
    GRAPH_OUTPUTS,
    MANIFEST_NAME,
    BundleError,
    SessionConfig,
    load_bundle,
    read_model_header,
    sha256_file,
)
from drf_batch.providers import CPU, physical_core_count

pytestmark = pytest.mark.slow


def _clone_bundle(source: Path, destination: Path) -> Path:
    """Copy a bundle cheaply: hard links, which tests must break with _own_copy before editing."""
    shutil.copytree(source, destination, copy_function=os.link)
    return destination


def _own_copy(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)


def _rewrite_manifest(bundle: Path, **changes) -> None:
    manifest_path = bundle / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest.update(changes)
    manifest_path.unlink()
    manifest_path.write_text(json.dumps(manifest))


def _update_checksum(bundle: Path, relative: str) -> None:
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    files = dict(manifest["files"])
    files[relative] = sha256_file(bundle / relative)
    _rewrite_manifest(bundle, files=files)


@pytest.fixture(scope="module")
def loaded(default_bundle):
    return load_bundle(default_bundle, providers="cpu")


def test_load_bundle_creates_three_sessions(loaded):
    assert set(loaded.sessions) == set(GRAPH_FILES)
    assert loaded.providers_used == (CPU,)
    assert loaded.providers_requested == (CPU,)
    assert loaded.labels == tuple(loaded.manifest["labels"])
    for session in loaded.sessions.values():
        assert [output.name for output in session.get_outputs()] == list(GRAPH_OUTPUTS)


def test_bundle_id_is_manifest_hash(loaded, default_bundle):
    expected = hashlib.sha256((default_bundle / MANIFEST_NAME).read_bytes()).hexdigest()[:16]
    assert loaded.bundle_id == expected


def test_bundle_preprocessing_matches_manifest(loaded):
    preprocessing = loaded.preprocessing
    assert preprocessing.to_dict() == loaded.manifest["image_encoder"]["preprocessing"]


def test_session_options_default_to_physical_cores(loaded):
    options = loaded.sessions["paired"].get_session_options()
    assert options.intra_op_num_threads == physical_core_count()
    assert options.inter_op_num_threads == 1


def test_session_config_threads_applied(default_bundle):
    bundle = load_bundle(
        default_bundle, providers="cpu", graphs=["text_only"], session_config=SessionConfig(intra_op_threads=1)
    )
    assert list(bundle.sessions) == ["text_only"]
    assert bundle.sessions["text_only"].get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize(
    "options",
    [
        {"intra_op_threads": 0},
        {"inter_op_threads": 0},
        {"optimization": "fastest"},
    ],
)
def test_session_config_rejects_invalid(options):
    with pytest.raises(ValueError):
        SessionConfig(**options)


def test_tokenize_matches_encoder_tokenizer(loaded, text_encoder):
    from drf_batch.texts import tokenize_texts

    texts = [
        "ok",
        "Can't stop smiling 😊🎉 thank you all!!!",
        "مرحبا بالعالم، يوم جميل",
        "中文和 English 混合",
        "word " * 400,
    ]
    input_ids, attention_mask = loaded.tokenize(texts)
    expected_ids, expected_mask = tokenize_texts(
        text_encoder.tokenizer, texts, max_length=text_encoder.max_length
    )
    assert input_ids.dtype == np.int64
    assert attention_mask.dtype == np.int64
    assert input_ids.shape == (len(texts), loaded.max_length)
    np.testing.assert_array_equal(input_ids, expected_ids)
    np.testing.assert_array_equal(attention_mask, expected_mask)


def test_tokenize_empty_list(loaded):
    input_ids, attention_mask = loaded.tokenize([])
    assert input_ids.shape == (0, 0)
    assert attention_mask.shape == (0, 0)


def test_run_rejects_wrong_inputs(loaded):
    input_ids, attention_mask = loaded.tokenize(["hello"])
    with pytest.raises(ValueError, match="takes inputs"):
        loaded.run("paired", input_ids=input_ids, attention_mask=attention_mask)


def test_read_model_header_matches_onnx(default_bundle):
    for file_name in GRAPH_FILES.values():
        model = onnx.load(str(default_bundle / file_name), load_external_data=False)
        ir_version, opsets = read_model_header(default_bundle / file_name)
        assert ir_version == model.ir_version
        assert opsets == {entry.domain: entry.version for entry in model.opset_import}


def test_missing_folder_raises(tmp_path):
    with pytest.raises(BundleError, match="bundle folder not found.*export-onnx"):
        load_bundle(tmp_path / "absent")


def test_missing_manifest_raises(default_bundle, tmp_path):
    bundle = _clone_bundle(default_bundle, tmp_path / "bundle")
    (bundle / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match="manifest.json not found"):
        load_bundle(bundle)


def test_invalid_manifest_json_raises(default_bundle, tmp_path):
    bundle = _clone_bundle(default_bundle, tmp_path / "bundle")
    (bundle / MANIFEST_NAME).unlink()
    (bundle / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)


def test_newer_format_version_raises(default_bundle, tmp_path):
    bundle = _clone_bundle(default_bundle, tmp_path / "bundle")
    _rewrite_manifest(bundle, format_version=99)
    with pytest.raises(BundleError, match="format_version 99"):
        load_bundle(bundle)


def test_missing_graph_raises(default_bundle, tmp_path):
    bundle = _clone_bundle(default_bundle, tmp_path / "bundle")
    (bundle / "text_only.onnx").unlink()
    with pytest.raises(BundleError, match="graph 'text_only' missing.*Re-export"):
        load_bundle(bundle)


def test_missing_graph_allowed_when_not_requested(default_bundle, tmp_path):
    bundle = _clone_bundle(default_bundle, tmp_path / "bundle")
    (bundle / "text_only.onnx").unlink()
    loaded = load_bundle(bundle, graphs=["image_only"], verify=False)
    assert list(loaded.sessions) == ["image_only"]


def test_checksum_mismatch_names_file(default_bundle, tmp_path):
    bundle = _clone_bundle(default_bundle, tmp_path / "bundle")
    target = bundle / "image_only.onnx"
    _own_copy(target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for .*image_only\.onnx.*re-export"):
        load_bundle(bundle)


def test_checksum_mismatch_in_tokenizer(default_bundle, tmp_path):
    bundle = _clone_bundle(default_bundle, tmp_path / "bundle")
    target = bundle / "tokenizer" / "tokenizer_config.json"
    _own_copy(target)
    target.write_text(target.read_text() + "\n")
    with pytest.raises(BundleError, match=r"checksum mismatch for .*tokenizer_config\.json"):
        load_bundle(bundle)


def test_verify_false_skips_checksums(default_bundle, tmp_path):
    bundle = _clone_bundle(default_bundle, tmp_path / "bundle")
    target = bundle / "tokenizer" / "tokenizer_config.json"
    _own_copy(target)
    target.write_text(target.read_text() + "\n")
    loaded = load_bundle(bundle, verify=False, graphs=["text_only"])
    assert list(loaded.sessions) == ["text_only"]


def test_missing_tokenizer_raises(default_bundle, tmp_path):
    bundle = _clone_bundle(default_bundle, tmp_path / "bundle")
    shutil.rmtree(bundle / "tokenizer")
    with pytest.raises(BundleError, match="bundle file missing: .*tokenizer"):
        load_bundle(bundle)
    with pytest.raises(BundleError, match="tokenizer missing"):
        load_bundle(bundle, verify=False)


def _restamp_graph(bundle: Path, file_name: str, *, ir_version: int | None = None, opset: int | None = None) -> None:
    path = bundle / file_name
    model = onnx.load(str(path))
    if ir_version is not None:
        model.ir_version = ir_version
    if opset is not None:
        for entry in model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = opset
    path.unlink()
    onnx.save(model, str(path))
    # A consistent manifest, as a newer exporter would write it: only the runtime check can object.
    _update_checksum(bundle, file_name)


def test_unsupported_ir_version_raises(default_bundle, tmp_path):
    bundle = _clone_bundle(default_bundle, tmp_path / "bundle")
    _restamp_graph(bundle, "image_only.onnx", ir_version=99)
    with pytest.raises(BundleError, match=r"cannot load .*image_only\.onnx \(IR version 99.*Re-export"):
        load_bundle(bundle)


def test_unsupported_opset_raises(default_bundle, tmp_path):
    bundle = _clone_bundle(default_bundle, tmp_path / "bundle")
    _restamp_graph(bundle, "image_only.onnx", opset=99)
    with pytest.raises(BundleError, match=r"cannot load .*image_only\.onnx.*ai\.onnx 99"):
        load_bundle(bundle)


def test_graph_with_wrong_inputs_raises(default_bundle, tmp_path):
    bundle = _clone_bundle(default_bundle, tmp_path / "bundle")
    # A text graph filed under the image graph's name.
    (bundle / "image_only.onnx").unlink()
    shutil.copyfile(default_bundle / "text_only.onnx", bundle / "image_only.onnx")
    _update_checksum(bundle, "image_only.onnx")
    with pytest.raises(BundleError, match="image_only' graph takes"):
        load_bundle(bundle, graphs=["image_only"])
