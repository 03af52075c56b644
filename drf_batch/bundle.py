"""Load an exported model bundle: verify its files, create onnxruntime sessions, tokenize texts.

A bundle is a folder written by `drf-batch export-onnx` (format described in export/README.md):
three ONNX graphs, the tokenizer files and a manifest.json that records the sha256 of every file.
Loading checks everything that can be checked before onnxruntime loads a graph, so a damaged or
incompatible bundle fails with an error that names the file and the fix rather than with an
onnxruntime stack trace. This module imports neither torch nor the export code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from drf_batch import providers as provider_choice

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1
"""Manifest format written by this version of drf-batch; load_bundle reads this version only."""

GRAPH_FILES = {
    "paired": "paired.onnx",
    "image_only": "image_only.onnx",
    "text_only": "text_only.onnx",
}
"""Graph name -> file name inside a bundle."""

GRAPH_INPUTS = {
    "paired": ("pixel_values", "input_ids", "attention_mask"),
    "image_only": ("pixel_values",),
    "text_only": ("input_ids", "attention_mask"),
}
GRAPH_OUTPUTS = ("probs", "quality", "branch_weights", "low_quality")
QUALITY_COLUMNS = ("log_p_v", "log_p_t", "log_p_v_to_t", "log_p_t_to_v")
BRANCH_COLUMNS = ("paired", "image", "text")
LOW_QUALITY_COLUMNS = ("image", "text")

REQUIRED_MANIFEST_FIELDS = (
    "format_version",
    "name",
    "labels",
    "image_encoder",
    "text_encoder",
    "opset",
    "ir_version",
    "graphs",
    "thresholds",
    "files",
)

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_HASH_CHUNK_BYTES = 1 << 20


class BundleError(RuntimeError):
    """A bundle is missing, damaged or cannot run on the installed onnxruntime."""


@dataclass(frozen=True)
class SessionConfig:
    """onnxruntime session options used for every graph of a bundle.

    `intra_op_threads` None means one thread per physical core. `optimization` is one of
    OPTIMIZATION_LEVELS.
    """

    intra_op_threads: int | None = None
    inter_op_threads: int = 1
    optimization: str = "all"
    parallel_execution: bool = False

    def __post_init__(self) -> None:
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ValueError(
                f"intra_op_threads must be None (one per physical core) or at least 1, "
                f"got {self.intra_op_threads}"
            )
        if self.inter_op_threads < 1:
            raise ValueError(f"inter_op_threads must be at least 1, got {self.inter_op_threads}")
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(
                f"unknown graph optimisation level {self.optimization!r}; "
                f"expected one of {sorted(OPTIMIZATION_LEVELS)}"
            )

    def to_session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads or provider_choice.physical_core_count()
        options.inter_op_num_threads = self.inter_op_threads
        options.graph_optimization_level = OPTIMIZATION_LEVELS[self.optimization]
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if self.parallel_execution else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        return options


@dataclass
class Bundle:
    """A loaded bundle: its manifest, one onnxruntime session per graph and its tokenizer."""

    path: Path
    manifest: dict[str, Any]
    bundle_id: str
    sessions: dict[str, ort.InferenceSession]
    providers_requested: tuple[str, ...]
    providers_used: tuple[str, ...]
    tokenizer: BundleTokenizer = field(repr=False)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.manifest["labels"])

    @property
    def thresholds(self) -> dict[str, float | None]:
        """Low-quality log-p thresholds per modality, as embedded in the graphs; None flags nothing."""
        return {
            key: None if value is None else float(value) for key, value in self.manifest["thresholds"].items()
        }

    @property
    def max_length(self) -> int:
        """Maximum number of tokens per text, including special tokens."""
        return int(self.manifest["text_encoder"]["max_length"])

    @property
    def quantization(self) -> str | None:
        return self.manifest.get("quantization")

    @property
    def preprocessing(self) -> Any:
        """The image preprocessing (an encoders.ImagePreprocessing) that the image graphs expect."""
        from drf_batch.preprocessing import ImagePreprocessing

        return ImagePreprocessing.from_dict(self.manifest["image_encoder"]["preprocessing"])

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize texts as in training: truncate to max_length, pad to the longest text.

        Returns (input_ids, attention_mask), both int64 arrays of shape [len(texts), seq].
        """
        return self.tokenizer(texts)

    def run(self, graph: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run one graph and return its outputs by name (probs, quality, branch_weights, low_quality)."""
        if graph not in self.sessions:
            raise KeyError(f"graph {graph!r} is not loaded; loaded graphs: {sorted(self.sessions)}")
        expected = set(GRAPH_INPUTS[graph])
        if set(inputs) != expected:
            raise ValueError(
                f"graph {graph!r} takes inputs {sorted(expected)}, got {sorted(inputs)}"
            )
        outputs = self.sessions[graph].run(list(GRAPH_OUTPUTS), inputs)
        return dict(zip(GRAPH_OUTPUTS, outputs))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(
    path: str | Path,
    *,
    providers: str | Sequence[str] | None = None,
    verify: bool = True,
    graphs: Sequence[str] | None = None,
    session_config: SessionConfig | None = None,
) -> Bundle:
    """Load the bundle in `path` and create one onnxruntime session per graph.

    `providers` is None or "auto" (CUDA when available, then the CPU), or explicit provider names
    (see drf_batch.providers.resolve_providers). `verify` checks the sha256 of every file listed in
    the manifest. `graphs` limits the sessions to some of paired, image_only, text_only.
    Raises BundleError when the bundle is missing, damaged or incompatible with onnxruntime.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(
            f"bundle folder not found: {root}. Export one with "
            f"`drf-batch export-onnx --out {root}`."
        )

    manifest_bytes, manifest = read_manifest(root)
    selected = _select_graphs(graphs)
    _check_graph_files(root, manifest, selected)
    if verify:
        verify_checksums(root, manifest)
    for graph in selected:
        check_runtime_support(root / manifest["graphs"][graph])

    requested, explicit = provider_choice.resolve_providers(providers)
    options = (session_config or SessionConfig()).to_session_options()
    sessions: dict[str, ort.InferenceSession] = {}
    used: tuple[str, ...] = ()
    for graph in selected:
        session = provider_choice.create_session(
            root / manifest["graphs"][graph], providers=requested, options=options
        )
        _check_graph_signature(graph, session, root / manifest["graphs"][graph])
        sessions[graph] = session
        # Every session gets the same request, so the first one stands for all of them.
        used = used or tuple(session.get_providers())

    choice = provider_choice.ProviderChoice(requested=requested, used=used, explicit=explicit)
    provider_choice.report_provider_choice(choice, what=f"bundle {manifest['name']!r}")

    return Bundle(
        path=root,
        manifest=manifest,
        bundle_id=hashlib.sha256(manifest_bytes).hexdigest()[:16],
        sessions=sessions,
        providers_requested=requested,
        providers_used=used,
        tokenizer=load_tokenizer(root, max_length=int(manifest["text_encoder"]["max_length"])),
    )


def read_manifest(root: Path) -> tuple[bytes, dict[str, Any]]:
    """Return the raw bytes and the parsed content of a bundle's manifest.json."""
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(
            f"{manifest_path} not found: {root} is not a complete bundle. "
            f"Re-export it with `drf-batch export-onnx --out {root}`."
        )
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(
            f"{manifest_path} is not valid JSON ({error}); re-export the bundle with "
            f"`drf-batch export-onnx --out {root}`"
        ) from error
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} must contain a JSON object, got {type(manifest).__name__}")

    missing = [name for name in REQUIRED_MANIFEST_FIELDS if name not in manifest]
    if missing:
        raise BundleError(
            f"{manifest_path} lacks the fields {missing}; re-export the bundle with "
            f"`drf-batch export-onnx --out {root}`"
        )
    if manifest["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path} has format_version {manifest['format_version']!r}, but this "
            f"drf-batch reads format_version {FORMAT_VERSION}; re-export the bundle with this "
            "drf-batch or install the drf-batch version that wrote it"
        )
    return raw, manifest


def _select_graphs(graphs: Sequence[str] | None) -> tuple[str, ...]:
    if graphs is None:
        return tuple(GRAPH_FILES)
    unknown = [graph for graph in graphs if graph not in GRAPH_FILES]
    if unknown or not graphs:
        raise ValueError(f"unknown graphs {list(graphs)}; expected a subset of {list(GRAPH_FILES)}")
    return tuple(dict.fromkeys(graphs))


def _check_graph_files(root: Path, manifest: Mapping[str, Any], selected: Sequence[str]) -> None:
    listed = manifest["graphs"]
    for graph in selected:
        file_name = listed.get(graph) if isinstance(listed, Mapping) else None
        if not file_name:
            raise BundleError(
                f"the manifest of bundle {root} lists no {graph!r} graph; re-export the bundle "
                f"with `drf-batch export-onnx --out {root}`"
            )
        if not (root / file_name).is_file():
            raise BundleError(
                f"graph {graph!r} missing: {root / file_name} not found. Re-export the bundle "
                f"with `drf-batch export-onnx --out {root}`."
            )


def verify_checksums(root: Path, manifest: Mapping[str, Any]) -> None:
    """Compare the sha256 of every file listed in the manifest with the file on disk.

    Raises BundleError naming the first missing or changed file.
    """
    files = manifest["files"]
    if not isinstance(files, Mapping) or not files:
        raise BundleError(f"the manifest of bundle {root} lists no file checksums; re-export the bundle")
    for relative, expected in sorted(files.items()):
        file_path = root / relative
        if not file_path.is_file():
            raise BundleError(
                f"bundle file missing: {file_path}. Re-export the bundle with "
                f"`drf-batch export-onnx --out {root}`."
            )
        actual = sha256_file(file_path)
        if actual != expected:
            raise BundleError(
                f"checksum mismatch for {file_path}: sha256 {actual}, the manifest expects "
                f"{expected}. The file was changed or damaged after export; re-export the bundle "
                f"with `drf-batch export-onnx --out {root}`."
            )


def read_model_header(path: Path) -> tuple[int, dict[str, int]]:
    """Return the IR version and the opset per domain of an ONNX file without parsing its graph.

    Reads the top-level fields of the ModelProto message and skips the graph field, so this takes
    milliseconds even for large graphs.
    """
    ir_version = 0
    opsets: dict[str, int] = {}
    data = path.read_bytes()
    view = memoryview(data)
    position = 0
    try:
        while position < len(view):
            key, position = _read_varint(view, position)
            field_number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                value, position = _read_varint(view, position)
                if field_number == 1:
                    ir_version = value
            elif wire_type == 2:
                length, position = _read_varint(view, position)
                end = position + length
                if end > len(view):
                    raise ValueError("field runs past the end of the file")
                if field_number == 8:
                    domain, version = _read_opset_id(view[position:end])
                    opsets[domain] = version
                position = end
            elif wire_type == 5:
                position += 4
            elif wire_type == 1:
                position += 8
            else:
                raise ValueError(f"unsupported protobuf wire type {wire_type}")
    except (ValueError, IndexError) as error:
        raise BundleError(
            f"{path} is not a valid ONNX file ({error}); re-export the bundle"
        ) from error
    return ir_version, opsets


def _read_varint(view: memoryview, position: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _read_opset_id(view: memoryview) -> tuple[str, int]:
    domain = ""
    version = 0
    position = 0
    while position < len(view):
        key, position = _read_varint(view, position)
        field_number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _read_varint(view, position)
            if field_number == 2:
                version = value
        elif wire_type == 2:
            length, position = _read_varint(view, position)
            if field_number == 1:
                domain = bytes(view[position : position + length]).decode("utf-8")
            position += length
        else:
            raise ValueError(f"unexpected wire type {wire_type} in an opset id")
    return domain, version


def check_runtime_support(graph_path: Path) -> None:
    """Raise BundleError when the installed onnxruntime cannot load the IR version or opsets of a graph."""
    ir_version, opsets = read_model_header(graph_path)
    problem = _runtime_rejects(ir_version, tuple(sorted(opsets.items())))
    if problem is None:
        return
    opset_text = ", ".join(f"{domain or 'ai.onnx'} {version}" for domain, version in sorted(opsets.items()))
    raise BundleError(
        f"onnxruntime {ort.__version__} cannot load {graph_path} (IR version {ir_version}, "
        f"opsets {opset_text}): {problem}. Re-export the bundle with this drf-batch "
        "(`drf-batch export-onnx`, which writes a compatible IR version, and `--opset` to choose a "
        "lower opset) or upgrade onnxruntime."
    )


@functools.lru_cache(maxsize=32)
def _runtime_rejects(ir_version: int, opsets: tuple[tuple[str, int], ...]) -> str | None:
    """Return onnxruntime's reason for rejecting a model with this IR version and these opsets.

    onnxruntime has no API that reports the IR versions and opsets it supports, so this loads a
    one-node model stamped with the same versions and returns None when that succeeds.
    """
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "runtime_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    imports = [helper.make_opsetid(domain, version) for domain, version in opsets]
    if not any(domain in ("", "ai.onnx") for domain, _ in opsets):
        imports.append(helper.make_opsetid("", 13))
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = ir_version
    try:
        ort.InferenceSession(
            model.SerializeToString(), providers=[provider_choice.CPU]
        )
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
        message = str(error)
        match = re.search(r"(Unsupported model IR version[^\n]*|ONNX Runtime only[^\n]*|Opset[^\n]*)", message)
        return (match.group(1) if match else message).strip()
    return None


def _check_graph_signature(graph: str, session: ort.InferenceSession, graph_path: Path) -> None:
    inputs = {item.name for item in session.get_inputs()}
    outputs = {item.name for item in session.get_outputs()}
    expected_inputs = set(GRAPH_INPUTS[graph])
    missing_outputs = set(GRAPH_OUTPUTS) - outputs
    if inputs != expected_inputs or missing_outputs:
        raise BundleError(
            f"{graph_path} has inputs {sorted(inputs)} and outputs {sorted(outputs)}, but a "
            f"{graph!r} graph takes {sorted(expected_inputs)} and returns {list(GRAPH_OUTPUTS)}; "
            "re-export the bundle with this drf-batch"
        )


class BundleTokenizer:
    """The bundle's tokenizer.json, run with the `tokenizers` library.

    Behaves like the transformers fast tokenizer that training used, called with
    padding="longest", truncation=True and max_length, but needs neither transformers nor torch,
    which keeps scoring processes small and quick to start.
    """

    def __init__(self, directory: Path, *, max_length: int) -> None:
        from tokenizers import Tokenizer

        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        pad_token = _pad_token(directory)
        pad_id = self._tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise BundleError(
                f"padding token {pad_token!r} is not in the vocabulary of {directory / TOKENIZER_FILE}; "
                "re-export the bundle"
            )
        self._tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch(list(texts))
        input_ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        attention_mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)
        if not encodings:
            input_ids = input_ids.reshape(0, 0)
            attention_mask = attention_mask.reshape(0, 0)
        return input_ids, attention_mask


def _pad_token(directory: Path) -> str:
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():
        pad_token = json.loads(config_path.read_text(encoding="utf-8")).get("pad_token")
        if isinstance(pad_token, dict):
            pad_token = pad_token.get("content")
        if isinstance(pad_token, str) and pad_token:
            return pad_token
    return "[PAD]"


def load_tokenizer(root: Path, *, max_length: int) -> BundleTokenizer:
    """Load the bundle's tokenizer from its tokenizer/ folder; reads local files only."""
    directory = root / TOKENIZER_DIR
    if not (directory / TOKENIZER_FILE).is_file():
        raise BundleError(
            f"tokenizer missing: {directory / TOKENIZER_FILE} not found. Re-export the bundle "
            f"with `drf-batch export-onnx --out {root}`."
        )
    try:
        return BundleTokenizer(directory, max_length=max_length)
    except Exception as error:  # the tokenizers library raises its own exception types
        if isinstance(error, BundleError):
            raise
        raise BundleError(
            f"cannot load the tokenizer in {directory} ({error}); re-export the bundle"
        ) from error
