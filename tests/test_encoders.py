"""Encoder registry, the default encoders and the generic timm:/hf: paths (tiny random models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from drf_batch.encoders import (
    DEFAULT_IMAGE_ENCODER,
    DEFAULT_TEXT_ENCODER,
    ENCODERS,
    ImagePreprocessing,
    build_image_encoder,
    build_text_encoder,
)
from drf_batch.encoders.hf_text import mean_pool
from drf_batch.encoders.timm_image import (
    EFFICIENTNET_LITE0_PREPROCESSING,
    EFFICIENTNET_LITE0_TIMM_MODEL,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0_state_dict,
)
from drf_batch.images import preprocess_image
from drf_batch.texts import tokenize_texts

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the public-domain test photos")

# ImageNet-1k class indices.
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)()).convert("RGB")


def _pixels(names: list[str], spec: ImagePreprocessing) -> torch.Tensor:
    return torch.from_numpy(np.stack([preprocess_image(_photo(name), spec) for name in names]))


@pytest.fixture(scope="module")
def classifier() -> tuple[torch.Tensor, torch.Tensor]:
    """The ImageNet classifier of the packaged weights, which the encoder itself leaves out."""
    packaged = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    return packaged["_fc.weight"], packaged["_fc.bias"]


def _top5(features: torch.Tensor, classifier: tuple[torch.Tensor, torch.Tensor]) -> list[set[int]]:
    weight, bias = classifier
    logits = features @ weight.T + bias
    return [set(row.tolist()) for row in logits.topk(5, dim=-1).indices]


def test_registry_defaults_are_entries():
    assert ENCODERS[DEFAULT_IMAGE_ENCODER].kind == "image"
    assert ENCODERS[DEFAULT_TEXT_ENCODER].kind == "text"
    for entry in ENCODERS.values():
        assert callable(entry.load_builder())


def test_registry_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        build_image_encoder("no-such-encoder")
    with pytest.raises(ValueError, match="all-minilm-l6-v2"):
        build_text_encoder(DEFAULT_IMAGE_ENCODER)


def test_efficientnet_names_known_photos(image_encoder, classifier):
    pixels = _pixels(["chelsea", "coffee"], image_encoder.preprocessing)
    with torch.inference_mode():
        features = image_encoder(pixels)
    cat_top5, coffee_top5 = _top5(features, classifier)

    assert cat_top5 & CAT_CLASSES
    assert coffee_top5 & COFFEE_CLASSES


def test_efficientnet_output_shape_and_mode(image_encoder):
    assert image_encoder.dim == 1280
    assert image_encoder.training is False
    assert image_encoder.preprocessing == EFFICIENTNET_LITE0_PREPROCESSING
    with torch.inference_mode():
        output = image_encoder(torch.zeros(2, 3, 224, 224))
    assert output.shape == (2, 1280)
    assert torch.isfinite(output).all()


def test_efficientnet_preprocessing_matches_batchnorm(image_encoder):
    """The stem BatchNorm's running variance fits inputs scaled by (x - 0.5) / 0.5, not ImageNet mean/std.

    Activation statistics of natural photos at the first BatchNorm are close to the statistics it
    was trained with only when the input scaling is the one used in training.
    """
    stem_norm = image_encoder.model.bn1
    captured: list[torch.Tensor] = []
    hook = stem_norm.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    photos = ["chelsea", "coffee", "astronaut", "rocket"]
    chosen = EFFICIENTNET_LITE0_PREPROCESSING
    imagenet = ImagePreprocessing(
        size=chosen.size,
        resize=chosen.resize,
        interpolation=chosen.interpolation,
        mean=IMAGENET_MEAN_STD[0],
        std=IMAGENET_MEAN_STD[1],
    )
    try:
        errors = []
        for spec in (chosen, imagenet):
            captured.clear()
            with torch.inference_mode():
                image_encoder(_pixels(photos, spec))
            batch_variance = captured[0].var(dim=(0, 2, 3))
            log_ratio = (batch_variance.add(1e-5).log() - stem_norm.running_var.add(1e-5).log()).abs().mean()
            errors.append(float(log_ratio))
    finally:
        hook.remove()

    chosen_error, imagenet_error = errors
    assert chosen_error < 0.5
    assert imagenet_error > 2 * chosen_error


def _batchnorm_variance_error(model: torch.nn.Module, pixels: torch.Tensor) -> float:
    """Mean |log(batch variance / running variance)| over every BatchNorm input channel."""
    errors: list[float] = []

    def record(module, inputs):
        variance = inputs[0].var(dim=(0, 2, 3))
        errors.append(float((variance.add(1e-5).log() - module.running_var.add(1e-5).log()).abs().mean()))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        with torch.inference_mode():
            model(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    return float(np.mean(errors))


def test_efficientnet_tf_variant_fits_weights():
    """The weights were converted from TensorFlow: TF "same" padding fits their statistics better."""
    import timm

    state_dict = load_efficientnet_lite0_state_dict()
    assert len(state_dict) == 296
    pixels = _pixels(["chelsea", "coffee", "astronaut", "rocket"], EFFICIENTNET_LITE0_PREPROCESSING)
    errors = {}
    for variant in (EFFICIENTNET_LITE0_TIMM_MODEL, "efficientnet_lite0"):
        model = timm.create_model(variant, pretrained=False)
        model.load_state_dict(state_dict)
        errors[variant] = _batchnorm_variance_error(model.eval(), pixels)
    assert errors[EFFICIENTNET_LITE0_TIMM_MODEL] < 0.95 * errors["efficientnet_lite0"]


def test_efficientnet_fingerprint_stable(image_encoder):
    first = image_encoder.weights_fingerprint()
    assert first == image_encoder.weights_fingerprint()
    assert len(first) == 64


def test_minilm_shape_and_max_length(text_encoder):
    assert text_encoder.dim == 384
    assert text_encoder.max_length == 128
    assert text_encoder.training is False
    assert text_encoder.tokenizer.is_fast


def test_minilm_padding_does_not_change_features(text_encoder):
    texts = ["a sunny day at the beach", "an extremely long and rather wordy sentence about nothing at all"]
    input_ids, attention_mask = tokenize_texts(text_encoder.tokenizer, texts, max_length=128)
    alone_ids, alone_mask = tokenize_texts(text_encoder.tokenizer, texts[:1], max_length=128)
    with torch.inference_mode():
        batched = text_encoder(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        alone = text_encoder(torch.from_numpy(alone_ids), torch.from_numpy(alone_mask))
    assert attention_mask[0].sum() < attention_mask.shape[1]
    np.testing.assert_allclose(batched[0].numpy(), alone[0].numpy(), atol=1e-5)


def test_minilm_similar_texts_are_closer(text_encoder):
    texts = ["I love this sunny day", "What a wonderful sunny day", "The invoice is attached as a PDF"]
    input_ids, attention_mask = tokenize_texts(text_encoder.tokenizer, texts, max_length=128)
    with torch.inference_mode():
        features = text_encoder(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    features = torch.nn.functional.normalize(features, dim=-1)
    assert float(features[0] @ features[1]) > float(features[0] @ features[2]) + 0.2


def test_mean_pool_ignores_padding_and_empty_rows():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    pooled = mean_pool(hidden, mask)
    assert pooled[0].tolist() == [2.0, 3.0]
    assert pooled[1].tolist() == [0.0, 0.0]


def test_minilm_save_tokenizer_round_trip(text_encoder, tmp_path):
    from transformers import AutoTokenizer

    text_encoder.save_tokenizer(tmp_path / "tokenizer")
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tokenizer"), local_files_only=True)
    text = "RT @user: great game tonight #win"
    assert reloaded(text)["input_ids"] == text_encoder.tokenizer(text)["input_ids"]


TINY_VIT_OPTIONS = {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2}


def test_timm_generic_random_init():
    encoder = build_image_encoder("timm:vit_tiny_patch16_224", options=TINY_VIT_OPTIONS)
    assert encoder.name == "timm:vit_tiny_patch16_224"
    assert encoder.dim == 24
    assert encoder.preprocessing.size == 32
    with torch.inference_mode():
        output = encoder(torch.zeros(3, 3, 32, 32))
    assert output.shape == (3, 24)


def test_timm_generic_loads_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **TINY_VIT_OPTIONS).eval()
    weights = tmp_path / "tiny.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in source.state_dict().items()}, str(weights))

    encoder = build_image_encoder("timm:vit_tiny_patch16_224", weights=weights, options=TINY_VIT_OPTIONS)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected = source.forward_head(source.forward_features(pixels), pre_logits=True)
        output = encoder(pixels)
    torch.testing.assert_close(output, expected)


def test_timm_generic_rejects_mismatched_weights(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "wrong.safetensors"
    save_file({"something.else": torch.zeros(3)}, str(weights))
    with pytest.raises(ValueError, match="does not match"):
        build_image_encoder("timm:vit_tiny_patch16_224", weights=weights, options=TINY_VIT_OPTIONS)


def test_timm_generic_unknown_model():
    with pytest.raises(ValueError, match="unknown timm model"):
        build_image_encoder("timm:not_a_model_xyz")


def test_options_only_for_timm():
    with pytest.raises(ValueError, match="options"):
        build_image_encoder(DEFAULT_IMAGE_ENCODER, options={"img_size": 32})


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory, text_encoder):
    """A randomly initialised 1-layer BERT with MiniLM's tokenizer, saved to a local folder."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        vocab_size=text_encoder.tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    text_encoder.save_tokenizer(folder)
    return folder


def test_hf_generic_local_folder(tiny_bert_dir):
    encoder = build_text_encoder(f"hf:{tiny_bert_dir}")
    assert encoder.dim == 32
    # The default of 128 tokens is capped by the model's 64 position embeddings.
    assert encoder.max_length == 64
    input_ids, attention_mask = tokenize_texts(encoder.tokenizer, ["hello there", "hi"], max_length=encoder.max_length)
    with torch.inference_mode():
        output = encoder(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    assert output.shape == (2, 32)


def test_hf_generic_max_length_over_limit(tiny_bert_dir):
    with pytest.raises(ValueError, match="position embeddings"):
        build_text_encoder(f"hf:{tiny_bert_dir}", max_length=512)


def test_hf_generic_missing_model(tmp_path):
    with pytest.raises(OSError, match="local files"):
        build_text_encoder(f"hf:{tmp_path / 'absent'}")


def test_tiny_encoders_export_to_onnx(tiny_bert_dir, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    text = build_text_encoder(f"hf:{tiny_bert_dir}")
    image = build_image_encoder("timm:vit_tiny_patch16_224", options=TINY_VIT_OPTIONS)

    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence")
    input_ids, attention_mask = tokenize_texts(text.tokenizer, ["one two", "three"], max_length=64)
    text_path = tmp_path / "text.onnx"
    torch.onnx.export(
        text,
        (torch.from_numpy(input_ids), torch.from_numpy(attention_mask)),
        str(text_path),
        input_names=["input_ids", "attention_mask"],
        output_names=["features"],
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
        dynamo=True,
    )
    image_path = tmp_path / "image.onnx"
    torch.onnx.export(
        image,
        (torch.zeros(2, 3, 32, 32),),
        str(image_path),
        input_names=["pixel_values"],
        output_names=["features"],
        dynamic_shapes={"pixel_values": {0: batch}},
        dynamo=True,
    )

    # Run with a batch size and sequence length other than the ones used at export.
    other_ids, other_mask = tokenize_texts(text.tokenizer, ["a much longer text here", "b", "c d"], max_length=64)
    session = onnxruntime.InferenceSession(str(text_path), providers=["CPUExecutionProvider"])
    (onnx_text,) = session.run(None, {"input_ids": other_ids, "attention_mask": other_mask})
    with torch.inference_mode():
        torch_text = text(torch.from_numpy(other_ids), torch.from_numpy(other_mask)).numpy()
    np.testing.assert_allclose(onnx_text, torch_text, atol=1e-4)

    pixels = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(image_path), providers=["CPUExecutionProvider"])
    (onnx_image,) = session.run(None, {"pixel_values": pixels})
    with torch.inference_mode():
        torch_image = image(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(onnx_image, torch_image, atol=1e-4)
