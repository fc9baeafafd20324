# SPDX-License-Identifier: Apache-2.0
"""Reading Lynx's device counters from a side thread without breaking a CUDA-graph capture.

vLLM captures its decode graphs with `torch.cuda.graph`'s default `capture_error_mode="global"`.
While such a capture is under way, a *potentially unsafe* CUDA call (a synchronous copy, a stream
synchronisation) from any other thread that is itself in global mode fails with "operation not
permitted when stream is capturing" and invalidates the capture, and the engine dies at startup.
The stats thread (integration/telemetry.py) reads the counters every few seconds, so a long capture
(48 layers, many graph sizes) was sure to meet it.

`SideReader` makes the thread's reads harmless, as PyTorch's NCCL watchdog does for its event
queries: the thread switches itself to *relaxed* capture mode (its calls are no longer prohibited
by another thread's capture), and it copies on its own non-blocking stream, so that nothing it
does depends on the capturing stream. A read racing a kernel that updates the counters may see a
row mid-update; the next read is whole again, which is all telemetry needs.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

import torch

_CU_STREAM_CAPTURE_MODE_RELAXED = 2  # CUstreamCaptureMode


class CaptureModeError(RuntimeError):
    pass


def relax_this_thread() -> None:
    """Set the calling thread's stream-capture interaction mode to relaxed (driver API; the mode
    is per thread and the runtime's calls go through it)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        exchange = libcuda.cuThreadExchangeStreamCaptureMode
    except (OSError, AttributeError) as e:
        raise CaptureModeError(f"cuThreadExchangeStreamCaptureMode unavailable: {e}") from e
    mode = ctypes.c_int(_CU_STREAM_CAPTURE_MODE_RELAXED)
    rc = exchange(ctypes.byref(mode))
    if rc != 0:
        raise CaptureModeError(f"cuThreadExchangeStreamCaptureMode returned CUresult {rc}")


class SideReader:
    """`with reader.reading(device):` makes the host copies inside it safe during another
    thread's capture. One reader per thread, used from that thread only; on CPU it does nothing."""

    def __init__(self) -> None:
        self._streams: dict[torch.device, torch.cuda.Stream] = {}

    @contextlib.contextmanager
    def reading(self, device: torch.device | None) -> Iterator[None]:
        if device is None or device.type != "cuda":
            yield
            return
        if not self._streams:
            relax_this_thread()  # first: nothing below may be prohibited by a capture
        stream = self._streams.get(device)
        if stream is None:
            torch.cuda.set_device(device)  # this thread's current device (rank 1 is cuda:1)
            stream = self._streams[device] = torch.cuda.Stream(device=device)  # non-blocking
        with torch.cuda.stream(stream):
            yield
