"""Fetching image URLs without becoming a proxy into the private network (SSRF).

Each hop (the URL and every redirect, at most ``MAX_REDIRECTS``) is checked
again: http/https only, the host resolved here, and every address it
resolves to must be public (not private, loopback, link-local, multicast,
reserved or unspecified) unless the host is on the allow-list. The
connection then goes to the checked IP itself (Host header and TLS SNI keep
the name), so a second DNS answer (rebinding) can not redirect it. A refusal
says only that the address is not public, never what the name resolves to.

Bytes are counted as they arrive, before they can grow: the body is asked for
as it is (``Accept-Encoding: identity``; an image is compressed already) and
an answer in any other encoding is refused, so 948 bytes of brotli can not
inflate to a gigabyte; each chunk is taken from the request's share of the
bytes in flight (service/limits.py ByteBudget). The whole fetch has a total
deadline. At most TRYON_URL_MAX_FETCHES fetches run at once in the process,
TRYON_URL_FETCHES_PER_REQUEST for one request; a fetch that waits past its
deadline for a place is refused with 503 and Retry-After. ``fetch_parts``: every URL of a
request's (or a job's) parts fetched, a garment's failure kept as its result.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

from .. import tracing
from .errors import ApiError
from ..limits import BudgetHold, OverLimit, byte_count, read_capped
from ..settings import Settings
from .sources import RequestParts

MAX_REDIRECTS = 3
DEFAULT_PORTS = {"http": 80, "https": 443}
NOT_ALLOWED = ("the URL's host is not a public address; private, loopback, link-local, multicast and reserved "
               "addresses are refused")


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                                 or ip.is_reserved or ip.is_unspecified)


def _bare(entry: str) -> str:
    return entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry


@dataclass(frozen=True)
class PinnedTarget:
    url: httpx.URL  # with the checked IP as host
    host_header: str
    sni_hostname: str | None


class UrlFetcher:
    def __init__(self, settings: Settings):
        self.max_bytes = settings.url_max_bytes
        self.total_timeout_s = settings.url_total_timeout_s
        # Entries are a host ("images.example.com", "[::1]") or a host and port ("127.0.0.1:8080").
        self.allow_hosts = {_bare(h.strip().lower()) for h in settings.url_allow_hosts}
        timeout = httpx.Timeout(connect=settings.url_connect_timeout_s, read=settings.url_read_timeout_s,
                                write=settings.url_read_timeout_s, pool=settings.url_connect_timeout_s)
        # trust_env=False: a proxy from the environment would connect by name and undo the pinning.
        # No keep-alive: the pool is keyed by the pinned IP, and a TLS connection verified for
        # one name must not be reused for another name on the same address.
        self.client = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False,
                                        limits=httpx.Limits(max_keepalive_connections=0),
                                        headers={"Accept": "image/*", "Accept-Encoding": "identity",
                                                 "User-Agent": "tryon-service"})
        self.per_request = settings.url_fetches_per_request
        self._slots = asyncio.Semaphore(settings.url_max_fetches)

    async def aclose(self) -> None:
        await self.client.aclose()

    def _allowed(self, host: str, port: int) -> bool:
        shown = f"[{host}]" if ":" in host else host
        return host.lower() in self.allow_hosts or f"{shown}:{port}".lower() in self.allow_hosts

    async def pin(self, raw: str, field: str) -> PinnedTarget:
        """The URL checked by the rules above, with the address to connect to; ApiError when refused."""
        try:
            url = httpx.URL(raw)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise ApiError(422, "invalid_url", f"not a valid URL ({exc})", field) from None
        if url.scheme not in DEFAULT_PORTS:
            raise ApiError(422, "invalid_url", f"only http and https URLs are fetched, not {url.scheme or 'none'!r}",
                           field)
        host = url.host
        if not host:
            raise ApiError(422, "invalid_url", "the URL has no host", field)
        port = url.port or DEFAULT_PORTS[url.scheme]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ApiError(502, "upstream_unreachable", f"could not resolve {host} ({exc})", field) from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not addresses:
            raise ApiError(502, "upstream_unreachable", f"{host} resolves to no address", field)
        if not self._allowed(host, port):
            if not all(is_public_address(a) for a in addresses):
                raise ApiError(400, "url_not_allowed", NOT_ALLOWED, field)
        default_port = port == DEFAULT_PORTS[url.scheme]
        shown = f"[{host}]" if ":" in host else host
        return PinnedTarget(url=url.copy_with(host=addresses[0]),
                            host_header=shown if default_port else f"{shown}:{port}",
                            sni_hostname=host if url.scheme == "https" else None)

    async def fetch_all(self, urls: list[tuple[str, str]], hold: BudgetHold | None = None) -> list[bytes | BaseException]:
        """Each (field, URL) fetched, TRYON_URL_FETCHES_PER_REQUEST at a time: its bytes or its error, in order."""
        turns = asyncio.Semaphore(self.per_request)

        async def one(field: str, url: str) -> bytes:
            async with turns:
                return await self.fetch(url, field, hold)
        return await asyncio.gather(*(one(field, url) for field, url in urls), return_exceptions=True)

    @tracing.traced("fetch")
    async def fetch(self, raw_url: str, field: str, hold: BudgetHold | None = None) -> bytes:
        try:
            async with asyncio.timeout(self.total_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise ApiError(503, "busy", f"every one of this process's URL fetches (TRYON_URL_MAX_FETCHES) "
                           f"stayed busy for {self.total_timeout_s:g} s", field, {"Retry-After": "5"}) from None
        try:
            async with asyncio.timeout(self.total_timeout_s):
                return await self._follow(raw_url, field, hold)
        except TimeoutError:
            raise ApiError(504, "upstream_timeout",
                           f"fetching the URL took longer than {self.total_timeout_s:g} s", field) from None
        finally:
            self._slots.release()

    async def _follow(self, raw_url: str, field: str, hold: BudgetHold | None) -> bytes:
        current = raw_url
        for _ in range(MAX_REDIRECTS + 1):
            target = await self.pin(current, field)
            extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
            # With tracing on, the fetch's span goes with it (traceparent), as any HTTP client's would.
            request = self.client.build_request("GET", target.url, extensions=extensions,
                                                headers={"Host": target.host_header, **tracing.carrier()})
            try:
                response = await self.client.send(request, stream=True)
            except httpx.TimeoutException:
                raise ApiError(504, "upstream_timeout", f"timed out connecting to or reading from "
                               f"{httpx.URL(current).host}", field) from None
            except httpx.HTTPError as exc:
                raise ApiError(502, "upstream_unreachable", f"could not fetch the URL ({type(exc).__name__}: "
                               f"{exc})", field) from None
            try:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise ApiError(502, "upstream_error", "a redirect without a Location header", field)
                    current = str(httpx.URL(current).join(location))
                    continue
                if response.status_code != 200:
                    raise ApiError(502, "upstream_error", f"the URL answered HTTP {response.status_code}", field)
                encoding = response.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise ApiError(502, "upstream_error", f"the URL answered in Content-Encoding {encoding[:32]!r}; "
                                   "images are fetched as they are (Accept-Encoding: identity)", field)
                return await self._read_capped(response, field, hold)
            finally:
                await response.aclose()
        raise ApiError(502, "upstream_error", f"more than {MAX_REDIRECTS} redirects", field)

    async def _read_capped(self, response: httpx.Response, field: str, hold: BudgetHold | None) -> bytes:
        declared = byte_count(response.headers.get("content-length"))
        if declared is not None and declared > self.max_bytes:
            raise ApiError(413, "image_too_large", f"the URL serves {declared} bytes, over the limit of "
                           f"{self.max_bytes}", field)
        try:
            # aiter_raw: the bytes as sent, nothing decoded here
            return await read_capped(response.aiter_raw(), self.max_bytes, hold, f"fetching {field}")
        except OverLimit:
            raise ApiError(413, "image_too_large", f"the URL serves more than {self.max_bytes} bytes", field) from None
        except httpx.TimeoutException:
            raise ApiError(504, "upstream_timeout", "timed out reading the URL's body", field) from None
        except httpx.HTTPError as exc:
            raise ApiError(502, "upstream_unreachable", f"the URL's body broke off ({exc})", field) from None


async def fetch_parts(parts: RequestParts, fetcher: UrlFetcher, hold: BudgetHold | None = None) -> RequestParts:
    """Fetches every URL (UrlFetcher.fetch_all: a few at a time): a person-side failure fails the
    request, a garment's failure in a batch is kept as that garment's result."""
    person_urls = [(field, url) for field, url in parts.person.items() if isinstance(url, str)]
    cloth_at = [i for i, c in enumerate(parts.cloths) if isinstance(c, str)]
    fetched = await fetcher.fetch_all(person_urls + [("cloth", parts.cloths[i]) for i in cloth_at], hold)
    for outcome in fetched[:len(person_urls)]:
        if isinstance(outcome, BaseException):
            raise outcome
    for outcome in fetched[len(person_urls):]:
        if isinstance(outcome, BaseException) and not isinstance(outcome, ApiError):
            raise outcome
    cloths = list(parts.cloths)
    for i, outcome in zip(cloth_at, fetched[len(person_urls):]):
        cloths[i] = outcome
    person = parts.person | {field: outcome for (field, _), outcome in zip(person_urls, fetched)}
    return RequestParts(person, parts.keypoints, cloths, parts.options)


def has_urls(parts: RequestParts) -> bool:
    return any(isinstance(v, str) for v in [*parts.person.values(), *parts.cloths])
