"""What a failed forward means for the device: out of memory, or a device that is broken.

torch raises ``torch.OutOfMemoryError`` for its own allocator, but cuDNN and
cuBLAS report their allocation failures as plain ``RuntimeError``s; and an
illegal address, a failed launch or a lost device leaves the CUDA context
poisoned: every later call fails the same way, so the process must be
replaced. Both are told apart by the error's text, which is all CUDA gives.
``DeviceFailed`` is the one exception that says so, wherever it is found out: the
engine raises it at warm-up, and the service's queue refuses work with it
(service.queue.outcomes gives it the queue's outcome interface).
"""
from __future__ import annotations

import torch

# Allocation failures reported by libraries rather than by torch's allocator.
_OUT_OF_MEMORY = ("out of memory", "cudnn_status_alloc_failed", "cublas_status_alloc_failed",
                  "cufft_alloc_failed", "cusolver_status_alloc_failed", "failed to allocate")

# Sticky errors: once one is raised the CUDA context is unusable for this process.
_DEVICE_BROKEN = ("illegal memory access", "illegal address", "illegal instruction", "misaligned address",
                  "unspecified launch failure", "device-side assert", "an illegal", "device not ready",
                  "cuda error: unknown error", "no cuda-capable device", "device has fallen off the bus",
                  "ecc error", "uncorrectable", "gpu is lost", "cuda driver shutting down",
                  "hardware stack error", "launch timed out")


def is_out_of_memory(exc: BaseException) -> bool:
    """A device allocation failure of any library: shrink the work and retry, never a 500."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in _OUT_OF_MEMORY)


def device_failure(exc: BaseException) -> str | None:
    """The reason when ``exc`` means the device (its context) is broken for good, else None."""
    if not isinstance(exc, RuntimeError) or is_out_of_memory(exc):
        return None
    text = str(exc)
    lowered = text.lower()
    if any(s in lowered for s in _DEVICE_BROKEN):
        return text.strip().splitlines()[0][:300]
    return None


class DeviceFailed(RuntimeError):
    """The device's CUDA context is broken (a sticky error): nothing more can run on it in this
    process, which must be replaced."""
