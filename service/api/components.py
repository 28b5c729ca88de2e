"""What the service loads or reaches beside the HTTP edge, each with the state it is in, so a
part that failed is seen (``/readyz``'s ``components``, one error log line, the gauge
``tryon_component_available``) and the requests that need it are answered 503 with its own
code, while every other request is served.

- ``weights``: the checkpoint. Failed (TRYON_WEIGHTS or weights/ names an unreadable file):
  the replica starts but is never ready; try-ons answer 503 ``weights_unavailable``, and
  /v1/prepare, which needs no network, is still served.
- ``sampler``: the fused deformable-sampling kernel (Triton, Numba). Failed: its warm-up check
  refused it and the reference sampler serves, slower, with the same answers.
- ``person_detector``: mediapipe's graphs, loaded after readiness. Failed: photos sent without
  their masked model and pose map answer 503 ``person_detector_unavailable``.
- ``cache`` and ``jobs_store``: Redis (TRYON_CACHE_URL, TRYON_JOBS_URL), as the last operation
  found it. The cache down: answers go uncached; the job store down: /v1/jobs answers 503
  ``jobs_unavailable``.

States: ``loading``, ``ready``, ``failed`` (with its reason). A component whose state is read
from the part itself (``watch``) is read when /readyz or /metrics asks.
"""
from __future__ import annotations

import logging
from typing import Callable

from ..metrics import Metrics

log = logging.getLogger("service")

LOADING, READY, FAILED = "loading", "ready", "failed"


class Components:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._states: dict[str, tuple[str, str | None]] = {}
        self._watched: dict[str, Callable[[], str | None]] = {}

    def loading(self, name: str) -> None:
        self._set(name, LOADING, None)

    def ready(self, name: str) -> None:
        self._set(name, READY, None)

    def failed(self, name: str, reason: str, consequence: str) -> None:
        """``consequence``: what the service does without it, for the log line."""
        if self._states.get(name) != (FAILED, reason):
            log.error("COMPONENT FAILED: %s: %s; %s", name, reason, consequence,
                      extra={"component": name})
        self._set(name, FAILED, reason)

    def watch(self, name: str, failure: Callable[[], str | None]) -> None:
        """A component whose state is its own: ``failure()`` is why it failed last, or None (ready)."""
        self._watched[name] = failure
        self.refresh()

    def reason(self, name: str) -> str | None:
        """Why ``name`` failed, or None (loading, ready, or not used here)."""
        status, reason = self._states.get(name, (READY, None))
        return reason if status == FAILED else None

    def refresh(self) -> None:
        for name, failure in self._watched.items():
            reason = failure()
            self._set(name, READY if reason is None else FAILED, reason)

    @property
    def info(self) -> dict:
        """/readyz's ``components``: each one's status, and why a failed one failed."""
        self.refresh()
        return {name: {"status": status, "reason": reason} for name, (status, reason) in self._states.items()}

    def _set(self, name: str, status: str, reason: str | None) -> None:
        self._states[name] = (status, reason)
        self.metrics.component_available.labels(name).set(1 if status == READY else 0)
