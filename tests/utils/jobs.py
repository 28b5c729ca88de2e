"""What the job tests share: inputs, a job submitted and waited for, a webhook receiver on 127.0.0.1."""
from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from PIL import Image, ImageOps

from tests.fixtures.service.harness import fixture_bytes

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PERSON = {name: fixture_bytes(f"{name}_64x64.png") for name in ("masked_model", "pose")}
CLOTH = fixture_bytes("cloth_64x64.png")


def garments(n: int) -> list[bytes]:
    """``n`` distinct garments: the fixture garment rotated and mirrored."""
    found = []
    for i in range(n):
        image = Image.open(io.BytesIO(CLOTH)).convert("RGB").rotate(90 * (i % 4))
        image = ImageOps.mirror(image) if i % 8 >= 4 else image
        image = ImageOps.posterize(image, 8 - i // 8) if i >= 8 else image
        buf = io.BytesIO()
        image.save(buf, "PNG")
        found.append(buf.getvalue())
    return found


def submit(url: str, cloths: list[bytes], data: dict | None = None, headers: dict | None = None,
           person: dict[str, bytes] = PERSON) -> httpx.Response:
    files = [(name, (f"{name}.png", body, "image/png")) for name, body in person.items()]
    files += [("cloth", (f"cloth{i}.png", body, "image/png")) for i, body in enumerate(cloths)]
    return httpx.post(f"{url}/v1/jobs", files=files, data=data or {}, headers=headers, timeout=60)


def wait_job(url: str, job_id: str, timeout: float = 120, headers: dict | None = None) -> dict:
    end = time.monotonic() + timeout
    while True:
        answer = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=10)
        if answer.status_code == 503:  # the store for a moment (Redis restarting): as a client, poll again
            time.sleep(float(answer.headers.get("retry-after", "1")) / 5)
            continue
        doc = answer.json()
        if doc["status"] not in ("queued", "running") or time.monotonic() > end:
            return doc
        time.sleep(0.2)


def tryon_png(url: str, cloth: bytes, person: dict[str, bytes] = PERSON, data: dict | None = None) -> bytes:
    """/v1/tryon's answer as PNG for the same person (``data``: its other fields and options)."""
    files = {**{k: (f"{k}.png", v, "image/png") for k, v in person.items()}, "cloth": ("c.png", cloth, "image/png")}
    answer = httpx.post(f"{url}/v1/tryon", files=files, data=data or {}, params={"format": "png"}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.content


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records every delivery; the first ``fail_first`` answer
    ``status`` (500 by default), the rest 204. ``hold_first``: the first delivery is recorded (its
    status None) and never answered, its sender left waiting until the receiver closes."""

    def __init__(self, fail_first: int = 0, status: int = 500, hold_first: bool = False):
        self.deliveries: list[tuple[dict, bytes, int | None]] = []
        self.fail_first = fail_first
        self.released = threading.Event()
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if hold_first and not receiver.deliveries:
                    receiver.record((headers, body, None))
                    receiver.released.wait()
                    return
                answer = status if len(receiver.deliveries) < receiver.fail_first else 204
                receiver.record((headers, body, answer))
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, delivery: tuple[dict, bytes, int | None]) -> None:
        with self.arrived:
            self.deliveries.append(delivery)
            self.arrived.notify_all()

    def wait(self, count: int, timeout: float = 30) -> list[tuple[dict, bytes, int]]:
        """The deliveries once there are ``count`` (fewer if ``timeout`` passes first)."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.deliveries) >= count, timeout)
            return list(self.deliveries)

    def wait_quiet(self, count: int, quiet_s: float, timeout: float = 30) -> list[tuple[dict, bytes, int]]:
        """The deliveries once there are ``count`` and ``quiet_s`` more seconds brought no other (or the
        first that did: the caller's assertion on the count then fails)."""
        self.wait(count, timeout)
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.deliveries) > count, quiet_s)
            return list(self.deliveries)

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def payload(body: bytes) -> dict:
    return json.loads(body)
