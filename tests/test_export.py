"""Tests of drf_batch.export: the exported graphs against PyTorch, dynamic axes, the manifest,
INT8 quantisation and the export-onnx command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from drf_batch.bundle import GRAPH_FILES, MANIFEST_NAME, load_bundle, sha256_file
from drf_batch.export import PROBS_TOLERANCE, TARGET_IR_VERSION, ExportOptions, ParityError
from drf_batch.export.graphs import build_export_models, run_graph_module
from drf_batch.export.parity import (
    GraphParity,
    builtin_parity_posts,
    check_parity,
    compare_graph,
    load_parity_posts,
)

pytestmark = pytest.mark.slow


def _checkpoint_of(bundle_path: Path) -> Path | None:
    manifest = json.loads((bundle_path / MANIFEST_NAME).read_text())
    source = manifest["source"]["checkpoint"]
    return None if source == "default_model" else Path(source)


@pytest.fixture(scope="module")
def models(default_bundle):
    return build_export_models(_checkpoint_of(default_bundle))


@pytest.fixture(scope="module")
def bundle(default_bundle):
    return load_bundle(default_bundle, providers="cpu")


def test_manifest_records_contract_fields(bundle):
    manifest = bundle.manifest
    assert manifest["graphs"] == GRAPH_FILES
    assert manifest["ir_version"] == TARGET_IR_VERSION
    assert manifest["opset"] == 18
    assert manifest["quantization"] is None
    assert manifest["labels"] == ["negative", "neutral", "positive"]
    assert manifest["image_encoder"]["name"] == "efficientnet-lite0"
    assert manifest["text_encoder"]["max_length"] == 128
    assert set(manifest["thresholds"]) == {"image", "text"}
    assert set(manifest["statistics"]) == {"image", "text"}
    assert set(manifest["parity"]["graphs"]) == set(GRAPH_FILES)


def test_manifest_checksums_cover_every_file(default_bundle, bundle):
    files = bundle.manifest["files"]
    on_disk = {
        path.relative_to(default_bundle).as_posix()
        for path in default_bundle.rglob("*")
        if path.is_file() and path.name != MANIFEST_NAME
    }
    assert set(files) == on_disk
    assert "tokenizer/tokenizer.json" in files
    for relative, digest in files.items():
        assert sha256_file(default_bundle / relative) == digest


def test_graphs_have_target_ir_and_dynamic_axes(default_bundle):
    for file_name in GRAPH_FILES.values():
        model = onnx.load(str(default_bundle / file_name))
        assert model.ir_version == TARGET_IR_VERSION
        for graph_input in model.graph.input:
            dims = graph_input.type.tensor_type.shape.dim
            assert dims[0].dim_param == "batch", (file_name, graph_input.name)
            if graph_input.name != "pixel_values":
                assert dims[1].dim_param == "seq", (file_name, graph_input.name)
        for graph_output in model.graph.output:
            assert graph_output.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_recorded_parity_within_tolerance(bundle):
    for graph, result in bundle.manifest["parity"]["graphs"].items():
        assert result["probs_max_abs_diff"] <= PROBS_TOLERANCE, graph
        assert result["quality_nan_pattern_equal"], graph
        assert result["labels_equal"] == result["posts"], graph


def _random_inputs(graph: str, batch: int, sequence: int, bundle, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = bundle.preprocessing.size
    inputs = {}
    if graph != "text_only":
        inputs["pixel_values"] = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    if graph != "image_only":
        input_ids = rng.integers(1000, 20000, size=(batch, sequence)).astype(np.int64)
        input_ids[:, 0] = 101
        attention_mask = np.ones((batch, sequence), dtype=np.int64)
        # Padding of different lengths, so the mask matters inside the graph.
        for row in range(batch):
            length = max(2, sequence - 3 * row)
            input_ids[row, length - 1] = 102
            input_ids[row, length:] = 0
            attention_mask[row, length:] = 0
        inputs["input_ids"] = input_ids
        inputs["attention_mask"] = attention_mask
    return inputs


@pytest.mark.parametrize("graph", list(GRAPH_FILES))
@pytest.mark.parametrize(("batch", "sequence"), [(5, 37), (1, 2), (3, 128)])
def test_dynamic_axes_match_pytorch(graph, batch, sequence, bundle, models):
    # The graphs were traced with batch 2 and a sequence of 7 tokens.
    inputs = _random_inputs(graph, batch, sequence, bundle)
    onnx_out = bundle.run(graph, **inputs)
    torch_out = run_graph_module(models.graphs[graph], {k: torch.from_numpy(v) for k, v in inputs.items()})

    assert onnx_out["probs"].shape == (batch, len(bundle.labels))
    assert onnx_out["quality"].shape == (batch, 4)
    assert onnx_out["branch_weights"].shape == (batch, 3)
    assert onnx_out["low_quality"].shape == (batch, 2)
    assert onnx_out["low_quality"].dtype == np.bool_
    np.testing.assert_allclose(onnx_out["probs"], torch_out["probs"].numpy(), rtol=0, atol=PROBS_TOLERANCE)
    np.testing.assert_array_equal(np.isnan(onnx_out["quality"]), np.isnan(torch_out["quality"].numpy()))


def test_absent_modality_outputs(bundle):
    image = bundle.run("image_only", **_random_inputs("image_only", 2, 0, bundle))
    text = bundle.run("text_only", **_random_inputs("text_only", 2, 9, bundle))
    # quality columns: log_p_v, log_p_t, log_p_v_to_t, log_p_t_to_v
    assert np.isnan(image["quality"][:, [1, 3]]).all()
    assert np.isfinite(image["quality"][:, [0, 2]]).all()
    assert np.isnan(text["quality"][:, [0, 2]]).all()
    assert np.isfinite(text["quality"][:, [1, 3]]).all()
    # branch_weights columns: paired, image, text
    assert (image["branch_weights"][:, [0, 2]] == 0).all()
    assert (text["branch_weights"][:, [0, 1]] == 0).all()
    assert not image["low_quality"][:, 1].any()
    assert not text["low_quality"][:, 0].any()
    np.testing.assert_allclose(image["probs"].sum(axis=1), 1.0, atol=1e-5)


def test_builtin_parity_posts_cover_each_graph():
    posts = builtin_parity_posts()
    assert any(post.image is None for post in posts)
    assert any(post.text is None for post in posts)
    assert sum(post.image is not None and post.text is not None for post in posts) >= 5


def test_parity_on_real_posts(bundle, models, mvsa_dir):
    posts = load_parity_posts(mvsa_dir, limit=16)
    assert len(posts) >= 12
    for graph in GRAPH_FILES:
        result = compare_graph(graph, models.graphs[graph], bundle, posts, preprocessing=models.preprocessing)
        assert result.posts == len(posts)
        assert result.probs_max_abs_diff <= PROBS_TOLERANCE, graph
        assert result.quality_max_rel_diff <= 1e-3, graph
        assert result.quality_nan_pattern_equal, graph
        assert result.labels_equal == result.posts, graph
        assert result.low_quality_equal == result.posts, graph


def test_check_parity_raises_above_tolerance():
    result = GraphParity(
        posts=4,
        probs_max_abs_diff=10 * PROBS_TOLERANCE,
        branch_weights_max_abs_diff=0.0,
        quality_max_rel_diff=0.0,
        quality_nan_pattern_equal=True,
        labels_equal=4,
        low_quality_equal=4,
    )
    with pytest.raises(ParityError, match="paired: max \\|probs difference\\|"):
        check_parity({"paired": result}, quantized=False)
    check_parity({"paired": result}, quantized=True)


def test_check_parity_raises_on_nan_pattern():
    result = GraphParity(
        posts=1,
        probs_max_abs_diff=0.0,
        branch_weights_max_abs_diff=0.0,
        quality_max_rel_diff=0.0,
        quality_nan_pattern_equal=False,
        labels_equal=1,
        low_quality_equal=1,
    )
    with pytest.raises(ParityError, match="NaN quality values"):
        check_parity({"text_only": result}, quantized=True)


def test_export_options_reject_unknown_quantization(tmp_path):
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        ExportOptions(out=tmp_path / "b", quantize="int4")


def test_export_options_quantized_path(tmp_path):
    options = ExportOptions(out=tmp_path / "default", quantize="int8")
    assert options.quantized_path == tmp_path / "default-int8"


def test_bundle_metrics_on_real_posts(bundle, mvsa_dir):
    from drf_batch.data import default_image_root, load_labelled_posts
    from drf_batch.export import bundle_metrics

    posts = load_labelled_posts(mvsa_dir)
    test_posts = posts.filter(posts["split"] == "test").head(24)
    result = bundle_metrics(bundle, test_posts, image_root=default_image_root(mvsa_dir))
    assert result.posts + result.skipped == 24
    assert sum(result.posts_per_graph.values()) == result.posts
    assert 0.0 <= result.metrics.accuracy <= 1.0
    assert set(result.predictions.values()) <= set(bundle.labels)


def test_cli_exports_torchscript_and_int8(default_bundle, tmp_path):
    from drf_batch.cli import app

    checkpoint = _checkpoint_of(default_bundle)
    out = tmp_path / "cli"
    arguments = ["export-onnx"]
    if checkpoint is not None:
        arguments.append(str(checkpoint))
    arguments += ["--out", str(out), "--exporter", "torchscript", "--opset", "17", "--quantize", "int8"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output

    fp32 = load_bundle(out, providers="cpu")
    int8 = load_bundle(tmp_path / "cli-int8", providers="cpu")
    assert fp32.manifest["exporter"] == "torchscript"
    assert fp32.manifest["opset"] == 17
    assert int8.manifest["quantization"] == "int8"
    assert "max |probs diff|" in result.output
    for file_name in GRAPH_FILES.values():
        assert (tmp_path / "cli-int8" / file_name).stat().st_size < (out / file_name).stat().st_size
    # INT8 changes the model, so its parity is recorded but only loosely bounded.
    for graph, parity in int8.manifest["parity"]["graphs"].items():
        assert parity["probs_max_abs_diff"] < 0.2, graph


def test_cli_missing_checkpoint_fails_cleanly(tmp_path):
    from drf_batch.cli import app

    result = CliRunner().invoke(app, ["export-onnx", str(tmp_path / "absent"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "export failed: checkpoint config not found" in result.output
    assert not (tmp_path / "b").exists()


def test_cli_rejects_unknown_quantization(tmp_path):
    from drf_batch.cli import app

    result = CliRunner().invoke(app, ["export-onnx", "--out", str(tmp_path / "b"), "--quantize", "int4"])
    assert result.exit_code == 2
    assert "unknown quantization 'int4'" in result.output


def test_export_graph_rejects_unwritten_opset(tmp_path):
    from drf_batch.export.onnx_export import ExportError, export_graph

    # An asymmetric pad, as in TensorFlow-style "same" convolutions: the exporter's converter has no
    # opset 18 -> 17 adapter for Pad and keeps opset 18.
    module = torch.nn.Sequential(
        torch.nn.ZeroPad2d((0, 1, 0, 1)),
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.Flatten(1),
        torch.nn.Softmax(-1),
    )
    with pytest.raises(ExportError, match="instead of the requested opset 17"):
        export_graph(
            module,
            {"pixel_values": torch.randn(2, 3, 8, 8)},
            tmp_path / "graph.onnx",
            output_names=["probs"],
            opset=17,
            exporter="dynamo",
        )


def test_load_parity_posts_from_parquet():
    posts_path = Path(__file__).resolve().parent.parent / "sample_data" / "posts.parquet"
    if not posts_path.is_file():
        pytest.skip(f"{posts_path} not found; run sample_data/make_sample_data.py")
    posts = load_parity_posts(posts_path, image_root=posts_path.parent / "images", limit=100)
    post_ids = [post.post_id for post in posts]
    assert len(post_ids) == len(set(post_ids))
    assert all(post.image is not None or post.text is not None for post in posts)
    assert any(post.image is None for post in posts)
    assert any(post.text is None for post in posts)
