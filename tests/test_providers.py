"""Tests of drf_batch.providers: provider requests, CPU fallback and its single warning."""

from __future__ import annotations

import logging
import os

import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from drf_batch import providers
from drf_batch.providers import CPU, CUDA, ProviderChoice, ProviderError, resolve_providers


def _identity_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _cuda_usable() -> bool:
    session = providers.create_session(
        _identity_model(), providers=[CUDA, CPU], options=ort.SessionOptions()
    )
    return CUDA in session.get_providers()


def test_resolve_aliases():
    assert resolve_providers("cpu") == ((CPU,), True)
    assert resolve_providers("cuda") == ((CUDA, CPU), True)
    assert resolve_providers("gpu,cpu") == ((CUDA, CPU), True)
    assert resolve_providers([CUDA]) == ((CUDA, CPU), True)


def test_resolve_deduplicates():
    assert resolve_providers(["cuda", CUDA, "cpu"]) == ((CUDA, CPU), True)


def test_resolve_auto():
    names, explicit = resolve_providers(None)
    assert explicit is False
    assert names[-1] == CPU
    assert resolve_providers("auto") == (names, False)
    if CUDA in ort.get_available_providers():
        assert names == (CUDA, CPU)


def test_resolve_unknown_raises():
    with pytest.raises(ProviderError, match="unknown execution provider 'tpu'"):
        resolve_providers("tpu")


def test_resolve_empty_raises():
    with pytest.raises(ProviderError, match="no execution provider requested"):
        resolve_providers(" , ")


def test_choice_gpu_fallback():
    choice = ProviderChoice(requested=(CUDA, CPU), used=(CPU,), explicit=True)
    assert choice.gpu_fallback
    assert choice.missing == (CUDA,)
    assert not ProviderChoice(requested=(CUDA, CPU), used=(CUDA, CPU), explicit=True).gpu_fallback
    assert not ProviderChoice(requested=(CPU,), used=(CPU,), explicit=True).gpu_fallback


def test_physical_core_count_is_plausible():
    count = providers.physical_core_count()
    assert 1 <= count <= (os.cpu_count() or count)


def test_cuda_request_falls_back_quietly(capfd):
    if _cuda_usable():
        pytest.skip("CUDA is usable on this machine, so there is no fallback to test")
    capfd.readouterr()
    session = providers.create_session(
        _identity_model(), providers=[CUDA, CPU], options=ort.SessionOptions()
    )
    captured = capfd.readouterr()
    assert session.get_providers() == [CPU]
    assert "CUDAExecutionProvider" not in captured.err
    assert "EP Error" not in captured.out


def test_fallback_report_is_one_warning(caplog):
    choice = ProviderChoice(requested=(CUDA, CPU), used=(CPU,), explicit=True)
    with caplog.at_level(logging.INFO, logger="drf_batch.providers"):
        providers.report_provider_choice(choice, what="bundle 'x'")
    assert len(caplog.records) == 1
    assert caplog.records[0].levelno == logging.WARNING
    assert "GPU NOT USED" in caplog.records[0].getMessage()


def test_auto_fallback_is_info(caplog):
    choice = ProviderChoice(requested=(CUDA, CPU), used=(CPU,), explicit=False)
    with caplog.at_level(logging.INFO, logger="drf_batch.providers"):
        providers.report_provider_choice(choice, what="bundle 'x'")
    assert [record.levelno for record in caplog.records] == [logging.INFO]


@pytest.mark.slow
def test_load_bundle_cuda_request_records_fallback(default_bundle, caplog, capfd):
    from drf_batch.bundle import load_bundle

    if _cuda_usable():
        pytest.skip("CUDA is usable on this machine, so there is no fallback to test")
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="drf_batch.providers"):
        bundle = load_bundle(default_bundle, providers="cuda")
    captured = capfd.readouterr()

    assert bundle.providers_requested == (CUDA, CPU)
    assert bundle.providers_used == (CPU,)
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "GPU NOT USED" in warnings[0].getMessage()
    assert "Failed to create CUDAExecutionProvider" not in captured.err
