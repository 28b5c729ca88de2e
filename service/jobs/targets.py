"""Webhook URLs under the rules every URL the service reaches follows (service/codec/fetch.py),
checked again before each attempt: DNS can change since the job was submitted."""
from __future__ import annotations

from ..codec.errors import ApiError
from ..codec.fetch import UrlFetcher
from .webhooks import WebhookRefused, WebhookTarget


class FetcherTargets:
    """``WebhookTargets`` by the fetcher's rules: the checked address to connect to, or WebhookRefused."""

    def __init__(self, fetcher: UrlFetcher):
        self.fetcher = fetcher

    async def target(self, url: str) -> WebhookTarget:
        try:
            pinned = await self.fetcher.pin(url, "webhook_url")
        except ApiError as exc:
            raise WebhookRefused(exc.message) from None
        return WebhookTarget(str(pinned.url), pinned.host_header, pinned.sni_hostname)
