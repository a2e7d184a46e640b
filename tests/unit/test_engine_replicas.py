"""Which vLLM processes model versions are loaded into: every replica behind a router, found by list or DNS."""

from __future__ import annotations

import pytest

from server.engine.client import EngineClient
from server.engine.replicas import Replicas
from server.models.loading import AdapterLoader
from server.settings import Settings


async def test_without_replicas_configured_the_chat_engine_is_the_only_one() -> None:
    chat_engine = EngineClient("http://router:8000", 5)
    replicas = Replicas(Settings(vllm_url="http://router:8000"), chat_engine)
    assert await replicas.current() == [chat_engine]
    await chat_engine.close()


async def test_listed_replicas_each_get_a_client_and_one_dropped_from_the_list_is_closed() -> None:
    chat_engine = EngineClient("http://router:8000", 5)
    settings = Settings(vllm_url="http://router:8000", vllm_replica_urls="http://vllm-0:8000/, http://vllm-1:8000")
    replicas = Replicas(settings, chat_engine)
    first = await replicas.current()
    assert [engine.base_url for engine in first] == ["http://vllm-0:8000", "http://vllm-1:8000"]
    assert await replicas.current() == first  # the same clients, not new connections every pass
    settings.vllm_replica_urls = "http://vllm-1:8000"
    assert [engine.base_url for engine in await replicas.current()] == ["http://vllm-1:8000"]
    assert first[0]._http.is_closed
    await replicas.close()
    await chat_engine.close()


async def test_replicas_behind_a_dns_name_are_each_address_it_resolves_to() -> None:
    chat_engine = EngineClient("http://router:8000", 5)
    replicas = Replicas(Settings(vllm_url="http://router:8000", vllm_replicas_dns="localhost:8123"), chat_engine)
    urls = {engine.base_url for engine in await replicas.current()}
    assert "http://127.0.0.1:8123" in urls
    assert urls <= {"http://127.0.0.1:8123", "http://[::1]:8123"}
    await replicas.close()
    await chat_engine.close()


async def test_an_unresolvable_dns_name_keeps_the_replicas_known_before() -> None:
    chat_engine = EngineClient("http://router:8000", 5)
    settings = Settings(vllm_url="http://router:8000", vllm_replicas_dns="localhost:8123")
    replicas = Replicas(settings, chat_engine)
    known = await replicas.current()
    settings.vllm_replicas_dns = "no-such-host.invalid:8123"
    assert await replicas.current() == known
    await replicas.close()
    await chat_engine.close()


def test_a_dns_name_without_a_port_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="host:port"):
        Settings(vllm_replicas_dns="vllm-replicas.ratchet.svc")


async def test_the_loader_loads_into_the_replicas_of_its_last_refresh() -> None:
    chat_engine = EngineClient("http://router:8000", 5)
    settings = Settings(vllm_url="http://router:8000", vllm_replica_urls="http://vllm-0:8000,http://vllm-1:8000")
    replicas = Replicas(settings, chat_engine)
    loader = AdapterLoader([chat_engine], replicas)
    assert loader.engines == [chat_engine]
    await loader.refresh_engines()
    assert [engine.base_url for engine in loader.engines] == ["http://vllm-0:8000", "http://vllm-1:8000"]
    await replicas.close()
    await chat_engine.close()
