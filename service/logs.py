"""JSON log lines, one object per line, for uvicorn's and our own loggers; with tracing on, each
line logged while a span is current carries its ``trace_id`` and ``span_id``."""
from __future__ import annotations

import json
import logging
import sys
import time

from . import tracing
from .examples import EXAMPLES
from .settings import Settings

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        line |= {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        if tracing.ENABLED:  # the span current where the line was logged (its thread, its task)
            line |= tracing.log_fields()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def curl_line(settings: Settings) -> str:
    """A curl command that works as is against this server, with the example images."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    host = f"[{host}]" if ":" in host else host
    files = {name: EXAMPLES / f"{name}.png" for name in ("masked_model", "pose", "cloth")}
    parts = " ".join(f"-F {name}=@{path}" for name, path in files.items())
    key = " -H 'Authorization: Bearer YOUR_API_KEY'" if settings.api_keys else ""
    return f"curl -sS -o tryon.jpg -D -{key} {parts} http://{host}:{settings.port}/v1/tryon"


def announce_ready(settings: Settings, device: str, weights: str, startup: dict) -> None:
    """The "ready" log line of the process that loaded the model, and the curl line (also on stdout)."""
    log = logging.getLogger("service")
    log.info("ready", extra={"device": device, "weights": weights, **startup})
    line = curl_line(settings)
    log.info("try it: %s", line)
    print(line, flush=True)
