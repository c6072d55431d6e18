"""semcache as LiteLLM's response cache (Python SDK; litellm==1.110.2, see requirements.txt).

    import litellm
    from litellm_semcache import SemcacheLiteLLMCache

    litellm.cache = SemcacheLiteLLMCache("127.0.0.1:50051", namespace="litellm")
    litellm.completion(model="gpt-4o-mini", messages=[...])   # miss: calls the model, stores
    litellm.completion(model="gpt-4o-mini", messages=[...])   # a paraphrase: served by semcache

How a request maps onto semcache:
  * query   = the last user message's text (a request with no user text, or with non-text
              parts such as images, is neither looked up nor stored);
  * scope   = {"model": <model>} plus, when present, a hash of the system prompt(s)
              ("system") and of the parameters that change the answer's shape: tools,
              tool_choice, functions, response_format, n ("params"), and the proxy's key /
              team / org ids ("tenant"), so nothing crosses models, prompts or tenants;
  * context = the earlier user/assistant turns (hashed by the server), so a follow-up only
              hits inside the identical conversation;
  * response = LiteLLM's cached JSON of the ModelResponse (canonical, without its per-call
              fields, see below), usage = its token counts (and cost, when LiteLLM knows the
              model's price), so semcache's Stats count the savings.

Verified mode needs nothing more: configure the namespace with an error bound
(`SemcacheClient().configure_namespace("litellm", error_bound=0.05)`, or the semcache CLI).
A lookup the server answers EXPLORE is a miss to LiteLLM; the backend keeps its probe token
(per LiteLLM cache key, bounded in number and age, thread-safe) until LiteLLM stores the
model's answer for the same request, and sends it with that Store, so the server learns
whether its cached answer would have been right, by comparing the two answers.

So that equal answers compare equal, the response is stored without the fields that differ on
every call (id, created, usage, system_fingerprint): those go into the entry's metadata
("litellm.envelope") and are put back on a hit, so LiteLLM gets the response as it was cached.

`SemcacheCache` is the backend, a `litellm.caching.base_cache.BaseCache` with get_cache /
set_cache and their async variants. `SemcacheLiteLLMCache` is a `litellm.Cache` that uses it;
it exists because LiteLLM's synchronous lookup passes its backend only messages and metadata,
and semcache needs the model (and the other scope parameters) at lookup time too.

The cache never fails a completion: a semcache error is logged (logger "semcache.litellm")
and treated as a miss / a skipped store.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from litellm.caching.base_cache import BaseCache
from litellm.caching.caching import Cache

from semcache_client import SemcacheClient, SemcacheError, Usage

__all__ = ["SemcacheCache", "SemcacheLiteLLMCache"]

log = logging.getLogger("semcache.litellm")

# Request parameters that change what a correct answer looks like: part of the scope.
_SHAPE_PARAMS = ("tools", "tool_choice", "functions", "function_call", "response_format", "n")
# What the lookup needs besides messages: LiteLLM's sync path forwards only messages/input/metadata.
_FORWARDED_LOOKUP_PARAMS = ("model", "litellm_params", "litellm_metadata", *_SHAPE_PARAMS)
# Proxy-set identity; entries never cross keys, teams or orgs.
_TENANT_FIELDS = ("user_api_key_hash", "user_api_key", "user_api_key_team_id", "user_api_key_org_id")


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _text(content: Any) -> str | None:
    """A message's text; None when it carries anything but text (images, audio, files)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None
            parts.append(part["text"])
        return "\n".join(parts)
    return None if content is not None else ""


class _Key:
    """What one LiteLLM request means to semcache."""

    def __init__(self, query: str, scope: dict[str, str], context: list[str]) -> None:
        self.query, self.scope, self.context = query, scope, context

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> "_Key | None":
        messages = kwargs.get("messages")
        model = kwargs.get("model")
        if not isinstance(messages, Sequence) or not messages or not model:
            return None
        last_user = next(
            (i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], Mapping) and messages[i].get("role") == "user"),
            None,
        )
        if last_user is None:
            return None
        query = _text(messages[last_user].get("content"))
        if query is None or not query.strip():
            return None
        system: list[str] = []
        context: list[str] = []
        for i, m in enumerate(messages):
            if i == last_user or not isinstance(m, Mapping):
                continue
            text = _text(m.get("content"))
            if text is None or m.get("tool_calls") or m.get("role") == "tool":
                return None  # tool turns and non-text content: not a cacheable text question
            if m.get("role") in ("system", "developer"):
                system.append(text)
            else:
                context.append(f"{m.get('role')}: {text}")
        scope = {"model": str(model)}
        if system:
            scope["system"] = _digest(system)
        shape = {p: kwargs[p] for p in _SHAPE_PARAMS if kwargs.get(p) is not None}
        if shape:
            scope["params"] = _digest(shape)
        metadata = kwargs.get("metadata")
        litellm_params = kwargs.get("litellm_params")
        if not isinstance(litellm_params, Mapping):
            litellm_params = {}
        candidates = (metadata, kwargs.get("litellm_metadata"), litellm_params.get("metadata"))
        sources = [s for s in candidates if isinstance(s, Mapping)]
        tenant = {f: str(s[f]) for f in _TENANT_FIELDS for s in sources if s.get(f)}
        if tenant:
            scope["tenant"] = _digest(tenant)
        return cls(query, scope, context)

    def identity(self) -> str:
        """What a probe token is bound to (the query) and where its Store goes (scope, context)."""
        return _digest([self.query, self.scope, self.context])


class _PendingProbes:
    """Probe tokens from EXPLORE lookups, waiting for LiteLLM to store the model's answer to the
    same request: at most `max_size` (the oldest go first), each for at most `ttl_seconds` (the
    server's tokens expire too, after 600 s by default). Thread-safe: LiteLLM's async path runs
    the backend on worker threads."""

    def __init__(self, max_size: int = 10_000, ttl_seconds: float = 600.0) -> None:
        self.max_size, self.ttl_seconds = max_size, ttl_seconds
        self._lock = threading.Lock()
        self._tokens: OrderedDict[str, tuple[float, str, str]] = OrderedDict()  # key -> (expiry, identity, token)

    def put(self, key: str, identity: str, token: str) -> None:
        with self._lock:
            self._tokens.pop(key, None)
            self._tokens[key] = (time.monotonic() + self.ttl_seconds, identity, token)
            while len(self._tokens) > self.max_size:
                self._tokens.popitem(last=False)

    def discard(self, key: str) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def take(self, key: str, identity: str) -> str | None:
        """The token kept for `key`, once; None if there is none, it aged out, or it was issued
        for another query / scope / conversation than the one being stored."""
        now = time.monotonic()
        with self._lock:
            item = self._tokens.pop(key, None)
            while self._tokens:  # drop what aged out (the oldest first)
                first = next(iter(self._tokens.values()))
                if first[0] > now:
                    break
                self._tokens.popitem(last=False)
        if item is None or item[0] <= now or item[1] != identity:
            return None
        return item[2]

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)


def _probe_refused(e: SemcacheError) -> bool:
    """The server refused the probe token (expired, used, or not for this Store), not the Store."""
    return e.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT) and e.message.startswith(
        "probe_token"
    )


class SemcacheCache(BaseCache):
    """A LiteLLM cache backend over semcache (gRPC). Prefer SemcacheLiteLLMCache, which wires it in.

    `max_pending_probes` / `probe_ttl_seconds` bound the verified-mode probe tokens kept between
    a lookup and the store of the same request."""

    def __init__(
        self,
        address: str | None = None,
        namespace: str = "litellm",
        *,
        client: SemcacheClient | None = None,
        threshold: float | None = None,
        ttl_seconds: int | None = None,
        timeout: float = 5.0,
        max_pending_probes: int = 10_000,
        probe_ttl_seconds: float = 600.0,
    ) -> None:
        super().__init__(default_ttl=ttl_seconds or 0)
        self.client = client or (SemcacheClient(address, timeout=timeout) if address else SemcacheClient(timeout=timeout))
        self.namespace = namespace
        self.threshold = threshold
        self.ttl_seconds = ttl_seconds
        self.pending_probes = _PendingProbes(max_pending_probes, probe_ttl_seconds)
        self.last_lookup: Any = None  # the last LookupResult, for logging and tests
        self.last_store: Any = None  # the last StoreResult (its probe_correct), for logging and tests

    # -- sync ------------------------------------------------------------------------------

    def get_cache(self, key: str, **kwargs: Any) -> dict[str, Any] | None:
        k = _Key.from_kwargs(kwargs)
        if k is None:
            return None
        try:
            r = self.client.lookup(self.namespace, k.query, scope=k.scope, threshold=self.threshold, context=k.context or None)
        except SemcacheError as e:
            log.warning("semcache lookup failed, treating it as a miss: %s", e)
            return None
        self.last_lookup = r
        metadata = kwargs.get("metadata")
        if isinstance(metadata, dict):
            metadata["semantic-similarity"] = r.similarity
        if r.probe_token:
            # EXPLORE: a miss for LiteLLM; the token goes with the Store of the model's answer.
            self.pending_probes.put(key, k.identity(), r.probe_token)
        else:
            self.pending_probes.discard(key)
        if not r.hit or r.entry is None:
            log.debug("semcache miss (%s, similarity %.3f) for %r", r.miss_reason, r.similarity, k.query)
            return None
        log.debug("semcache hit (similarity %.3f): %r answered by %r", r.similarity, k.query, r.entry.query)
        # The shape LiteLLM's Cache.get_cache_logic expects: its own {"timestamp", "response"}.
        response = _join_envelope(r.entry.response, r.entry.metadata.get(_ENVELOPE_KEY))
        return {"timestamp": r.entry.created_at_unix_ms / 1000.0, "response": response}

    def set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        k = _Key.from_kwargs(kwargs)
        if k is None:
            return
        response = value.get("response") if isinstance(value, Mapping) and "response" in value else value
        if not isinstance(response, str):
            try:
                response = json.dumps(response, default=str)
            except (TypeError, ValueError):
                return
        ttl = kwargs.get("ttl")
        ttl_seconds = int(ttl) if ttl is not None else self.ttl_seconds
        probe_token = self.pending_probes.take(key, k.identity())
        usage = _usage(response, str(kwargs.get("model")))
        metadata = {"source": "litellm", **_incomplete(response)}
        response, envelope = _split_envelope(response)
        if envelope:
            metadata[_ENVELOPE_KEY] = envelope
        store: dict[str, Any] = dict(
            scope=k.scope, metadata=metadata, ttl_seconds=ttl_seconds, usage=usage, context=k.context or None
        )
        try:
            try:
                self.last_store = self.client.store_result(self.namespace, k.query, response, probe_token=probe_token, **store)
            except SemcacheError as e:
                if not (probe_token and _probe_refused(e)):
                    raise
                # Expired or already used: the answer is still worth caching.
                log.debug("semcache refused the probe token, storing without it: %s", e)
                self.last_store = self.client.store_result(self.namespace, k.query, response, **store)
            if self.last_store.probe_correct is not None:
                verdict = "right" if self.last_store.probe_correct else "wrong"
                log.debug("semcache probe for %r: the cached answer was judged %s", k.query, verdict)
        except SemcacheError as e:
            if e.code == grpc.StatusCode.FAILED_PRECONDITION:
                # A truncated answer that the server is configured not to cache.
                log.debug("semcache did not cache the response: %s", e)
            else:
                log.warning("semcache store failed, response not cached: %s", e)

    # -- async: the blocking client on a worker thread ----------------------------------------

    async def async_get_cache(self, key: str, **kwargs: Any) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.get_cache, key, **kwargs)

    async def async_set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        await asyncio.to_thread(self.set_cache, key, value, **kwargs)

    async def async_set_cache_pipeline(self, cache_list: list[tuple[str, Any]], **kwargs: Any) -> None:
        await asyncio.gather(*(self.async_set_cache(k, v, **kwargs) for k, v in cache_list))

    async def batch_cache_write(self, key: str, value: Any, **kwargs: Any) -> None:
        await self.async_set_cache(key, value, **kwargs)

    async def disconnect(self) -> None:
        self.client.close()

    async def test_connection(self) -> dict:
        try:
            await asyncio.to_thread(self.client.wait_until_serving, 5.0)
            return {"status": "success", "message": f"semcache at {self.client.address} is SERVING"}
        except Exception as e:  # noqa: BLE001 - reported, not raised
            return {"status": "failed", "message": "semcache is not reachable", "error": str(e)}


# A ModelResponse's fields that differ on every call, even for the same answer.
_PER_CALL_FIELDS = ("id", "created", "usage", "system_fingerprint")
_ENVELOPE_KEY = "litellm.envelope"


def _split_envelope(response_json: str) -> tuple[str, str | None]:
    """The response as canonical JSON without its per-call fields, and those fields as JSON
    (None when there are none, or the response is not a JSON object)."""
    try:
        response = json.loads(response_json)
    except ValueError:
        return response_json, None
    if not isinstance(response, dict):
        return response_json, None
    envelope = {f: response.pop(f) for f in _PER_CALL_FIELDS if f in response}
    canonical = json.dumps(response, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return canonical, (json.dumps(envelope, ensure_ascii=False, default=str) if envelope else None)


def _join_envelope(response_json: str, envelope_json: str | None) -> str:
    """A cached response with its per-call fields put back (entries stored without an envelope
    are returned as they are)."""
    if not envelope_json:
        return response_json
    try:
        response, envelope = json.loads(response_json), json.loads(envelope_json)
    except ValueError:
        return response_json
    if not isinstance(response, dict) or not isinstance(envelope, dict):
        return response_json
    return json.dumps({**envelope, **response}, ensure_ascii=False)


def _incomplete(response_json: str) -> dict[str, str]:
    """semcache's marker for an answer cut off at the token limit, which the server caches only
    when started with --cache-incomplete."""
    try:
        choices = json.loads(response_json).get("choices") or []
        reasons = {c.get("finish_reason") for c in choices if isinstance(c, Mapping)}
    except (ValueError, AttributeError, TypeError):
        return {}
    return {"semcache.incomplete": "truncated"} if "length" in reasons else {}


def _usage(response_json: str, model: str) -> Usage | None:
    """Token counts (and the price, if LiteLLM knows the model's) of the response being cached."""
    try:
        u = json.loads(response_json).get("usage") or {}
        prompt, completion = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    except (ValueError, AttributeError, TypeError):
        return None
    cost = 0.0
    try:
        from litellm import cost_per_token

        p, c = cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=completion)
        cost = float(p + c)
    except Exception:  # noqa: BLE001 - unknown model: no price
        pass
    return Usage(input_tokens=prompt, output_tokens=completion, cost_usd=cost)


class SemcacheLiteLLMCache(Cache):
    """`litellm.cache = SemcacheLiteLLMCache(address, namespace=...)`.

    Takes `litellm.Cache`'s own options too (mode="default_off" for opt-in caching per
    request with cache={"use-cache": True}, ttl=..., supported_call_types=...). By default
    only chat completions are cached.
    """

    def __init__(
        self,
        address: str | None = None,
        namespace: str = "litellm",
        *,
        client: SemcacheClient | None = None,
        threshold: float | None = None,
        ttl_seconds: int | None = None,
        supported_call_types: list[str] | None = None,
        **cache_kwargs: Any,
    ) -> None:
        super().__init__(
            type="local",
            supported_call_types=supported_call_types or ["completion", "acompletion"],
            **cache_kwargs,
        )
        self.cache: SemcacheCache = SemcacheCache(
            address, namespace, client=client, threshold=threshold, ttl_seconds=ttl_seconds
        )

    @staticmethod
    def _get_safe_cache_lookup_kwargs(kwargs: Mapping[str, object]) -> dict[str, object]:
        lookup = dict(Cache._get_safe_cache_lookup_kwargs(kwargs))
        for param in _FORWARDED_LOOKUP_PARAMS:
            if param in kwargs:
                lookup[param] = kwargs[param]
        return lookup
