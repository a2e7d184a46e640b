"""The vLLM processes behind the URL chats go to. Behind a router (vllm-router, a Kubernetes Service) that URL
balances chats but knows nothing about adapters: a version must be loaded into every replica, straight, never
through the router. Transport only: which versions to load is the model registry's business."""

from __future__ import annotations

import logging
import socket

import anyio

from server.engine.client import EngineClient
from server.settings import Settings

log = logging.getLogger("ratchet.engine")


class Replicas:
    """Engine clients for `RATCHET_VLLM_REPLICA_URLS`, or for every address `RATCHET_VLLM_REPLICAS_DNS` resolves to
    (a headless Service lists each pod), or else the one engine chats go to."""

    def __init__(self, settings: Settings, chat_engine: EngineClient) -> None:
        self._settings = settings
        self._chat_engine = chat_engine
        self._clients: dict[str, EngineClient] = {}

    async def current(self) -> list[EngineClient]:
        urls = await self._urls()
        if not urls:
            return [self._chat_engine]
        for url in urls - self._clients.keys():
            self._clients[url] = EngineClient(url, self._settings.vllm_request_timeout_s)
        for url in self._clients.keys() - urls:
            await self._clients.pop(url).close()
        return [self._clients[url] for url in sorted(urls)]

    async def _urls(self) -> set[str]:
        listed = {url.strip().rstrip("/") for url in self._settings.vllm_replica_urls.split(",") if url.strip()}
        if listed or not self._settings.vllm_replicas_dns:
            return listed
        host, _, port = self._settings.vllm_replicas_dns.rpartition(":")
        try:
            found = await anyio.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as error:
            # Keep what was known: a DNS hiccup must not make the reconciler think every replica is gone.
            log.warning("cannot resolve vLLM replicas at %s: %s", self._settings.vllm_replicas_dns, error)
            return set(self._clients)
        return {_url(str(address[4][0]), int(port)) for address in found}

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


def _url(address: str, port: int) -> str:
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"
