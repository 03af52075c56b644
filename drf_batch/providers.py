"""Choice of onnxruntime execution providers, judged by what a session actually uses.

onnxruntime-gpu lists CUDAExecutionProvider in `get_available_providers()` even on a machine
without a GPU or without the CUDA libraries. A session asked for CUDA there logs an error through
onnxruntime's own logger and falls back to the CPU. This module silences that log while a session
is created, compares the providers that the session reports with the ones requested, and lets the
caller log one clear line about the difference.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

PROVIDER_ALIASES = {
    "cpu": CPU,
    "cuda": CUDA,
    "gpu": CUDA,
    "tensorrt": TENSORRT,
    "trt": TENSORRT,
}
"""Short names accepted wherever a provider is requested, besides onnxruntime's full names."""

AUTO = "auto"
"""Request for the best provider present: CUDA when onnxruntime lists it, then the CPU."""

GPU_PROVIDERS = frozenset({CUDA, TENSORRT, "ROCMExecutionProvider", "MIGraphXExecutionProvider"})

ORT_DEFAULT_LOG_SEVERITY = 2
"""onnxruntime's default logger severity (warning); restored after a session is created."""


class ProviderError(ValueError):
    """A requested execution provider is unknown to onnxruntime."""


@dataclass(frozen=True)
class ProviderChoice:
    """Providers requested for a session and the ones that the session reports using.

    `explicit` is False when the request was `auto`, so a missing GPU is expected and not worth a
    warning.
    """

    requested: tuple[str, ...]
    used: tuple[str, ...]
    explicit: bool

    @property
    def missing(self) -> tuple[str, ...]:
        """Requested providers that the session does not use."""
        return tuple(provider for provider in self.requested if provider not in self.used)

    @property
    def gpu_fallback(self) -> bool:
        """True when a GPU provider was requested and the session runs without any GPU provider."""
        requested_gpu = any(provider in GPU_PROVIDERS for provider in self.requested)
        used_gpu = any(provider in GPU_PROVIDERS for provider in self.used)
        return requested_gpu and not used_gpu


def resolve_providers(requested: str | Sequence[str] | None) -> tuple[tuple[str, ...], bool]:
    """Turn a provider request into onnxruntime provider names, ending with the CPU provider.

    `requested` is None or "auto" (CUDA when onnxruntime lists it, then the CPU), one name, a
    comma-separated string, or a sequence of names. Names are onnxruntime's full names or the short
    names in PROVIDER_ALIASES. Returns the provider names and whether the request was explicit.
    Raises ProviderError for a name that onnxruntime does not know.
    """
    available = ort.get_available_providers()
    if requested is None or (isinstance(requested, str) and requested.strip().lower() == AUTO):
        names = [CUDA, CPU] if CUDA in available else [CPU]
        return tuple(names), False

    if isinstance(requested, str):
        items = [item.strip() for item in requested.split(",") if item.strip()]
    else:
        items = [str(item).strip() for item in requested]
    if not items:
        raise ProviderError(
            "no execution provider requested; pass 'auto', 'cpu', 'cuda' or onnxruntime provider "
            f"names such as {CPU!r}"
        )

    known = set(ort.get_all_providers())
    names: list[str] = []
    for item in items:
        name = PROVIDER_ALIASES.get(item.lower(), item)
        if name not in known:
            raise ProviderError(
                f"unknown execution provider {item!r}; expected one of {sorted(PROVIDER_ALIASES)} "
                f"or an onnxruntime provider name from {sorted(known)}"
            )
        if name not in names:
            names.append(name)

    # The CPU provider runs every operator, so it always closes the list as the last resort.
    if CPU not in names:
        names.append(CPU)
    return tuple(names), True


def physical_core_count() -> int:
    """Return the number of physical CPU cores, or the logical count when Linux sysfs is absent."""
    cores: set[tuple[str, str]] = set()
    for topology in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            continue
        cores.add((package, core))
    if cores:
        return len(cores)
    return os.cpu_count() or 1


@contextlib.contextmanager
def _quiet_onnxruntime():
    """Silence onnxruntime's logger and its printed fallback notice while a session is created.

    NOTE: onnxruntime offers no getter for the default logger severity, so the severity is reset to
    onnxruntime's default (warning) afterwards, not to a value the caller may have set.
    """
    ort.set_default_logger_severity(4)
    try:
        # onnxruntime prints the TensorRT -> CUDA fallback with print(), not through its logger.
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_LOG_SEVERITY)


def create_session(
    model: str | Path | bytes,
    *,
    providers: Sequence[str],
    options: ort.SessionOptions,
) -> ort.InferenceSession:
    """Create an InferenceSession without onnxruntime's own provider fallback messages.

    The caller compares `session.get_providers()` with `providers` and reports a fallback itself.
    """
    source = str(model) if isinstance(model, Path) else model
    requests_gpu = any(provider != CPU for provider in providers)
    if not requests_gpu:
        return ort.InferenceSession(source, options, providers=list(providers))
    with _quiet_onnxruntime():
        return ort.InferenceSession(source, options, providers=list(providers))


def report_provider_choice(choice: ProviderChoice, *, what: str) -> None:
    """Log one line about the providers of `what`: a warning when an explicit GPU request failed."""
    used = ", ".join(choice.used)
    if choice.gpu_fallback and choice.explicit:
        logger.warning(
            "GPU NOT USED for %s: requested %s, but onnxruntime runs on %s. Check that the CUDA "
            "and cuDNN libraries that onnxruntime-gpu %s needs are installed and that a GPU is "
            "visible (nvidia-smi).",
            what,
            ", ".join(choice.requested),
            used,
            ort.__version__,
        )
    elif choice.missing and choice.explicit:
        logger.warning(
            "%s runs on %s; requested providers not used: %s",
            what,
            used,
            ", ".join(choice.missing),
        )
    elif choice.gpu_fallback:
        logger.info("%s runs on %s (no usable GPU found)", what, used)
    else:
        logger.info("%s runs on %s", what, used)
