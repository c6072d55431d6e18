#!/usr/bin/env python3
"""LiteLLM with semcache as its cache, offline (LiteLLM's mock_response stands in for the LLM).

  1. completion("How do I reset my password?")      -> semcache miss -> the (mock) LLM answers
                                                       -> LiteLLM stores the answer in semcache
  2. completion("I forgot my password, how can I change it?")
                                                    -> semcache hit: the first answer, marked
                                                       cache_hit by LiteLLM, no LLM call
  3. the same paraphrase for another model          -> miss (the model is part of the scope)
  4. verified mode, in a namespace with error_bound 0.05 (nothing else changes for LiteLLM):
     the first question is stored; the paraphrase is a miss (EXPLORE: a new verified namespace
     trusts nothing yet), the mock LLM answers, and the backend sends the lookup's probe token
     with the Store, so semcache learns that its cached answer was right.

Exits 1 unless 2 is a cache hit with the first answer, 3 is not, 4 is an EXPLORE miss whose
Store was judged right, and semcache's Stats agree.

    python3 clients/python/litellm_example.py [ADDRESS]   # default: $SEMCACHE_ADDR or 127.0.0.1:50051
"""

from __future__ import annotations

import os
import sys
import time
import uuid

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no model-price download
os.environ.setdefault("LITELLM_TELEMETRY", "False")

from importlib.metadata import version as _version  # noqa: E402

import litellm  # noqa: E402

from litellm_semcache import SemcacheLiteLLMCache  # noqa: E402
from semcache_client import SemcacheClient  # noqa: E402


def ask(model: str, question: str, mock: str) -> litellm.ModelResponse:
    started = time.perf_counter()
    r = litellm.completion(
        model=model,
        messages=[
            {"role": "system", "content": "You are a helpful support agent."},
            {"role": "user", "content": question},
        ],
        mock_response=mock,  # what the "LLM" answers when it is called
    )
    hit = bool((r._hidden_params or {}).get("cache_hit"))
    print(
        f"  {model} {question!r}\n"
        f"    -> {r.choices[0].message.content!r}\n"
        f"    cache_hit={hit} ({(time.perf_counter() - started) * 1e3:.0f} ms)"
    )
    return r


def main() -> int:
    address = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SEMCACHE_ADDR", "127.0.0.1:50051")
    namespace = f"example-litellm-{uuid.uuid4().hex[:8]}"
    ok = True

    with SemcacheClient(address) as client:
        client.wait_until_serving(timeout=60)
        # Create the namespace up front (a lookup in an unknown namespace is a miss that no
        # namespace's Stats count); LiteLLM's cache then uses it.
        client.configure_namespace(namespace, ttl_seconds=3600)
        litellm.cache = SemcacheLiteLLMCache(client=client, namespace=namespace)
        print(f"litellm {_version('litellm')} with semcache at {address}, namespace {namespace}")

        print("1. first question (miss: the mock LLM answers, LiteLLM stores it in semcache)")
        first = ask("gpt-4o-mini", "How do I reset my password?", "Go to Settings > Security > Reset password.")
        if first._hidden_params.get("cache_hit"):
            print("FAIL: the first call was a cache hit", file=sys.stderr)
            ok = False

        print("2. a paraphrase (must be served from semcache, not by the mock LLM)")
        second = ask("gpt-4o-mini", "I forgot my password, how can I change it?", "THE LLM WAS CALLED AGAIN")
        similarity = litellm.cache.cache.last_lookup.similarity if litellm.cache.cache.last_lookup else 0.0
        print(f"    semcache similarity {similarity:.3f}")
        if not second._hidden_params.get("cache_hit") or second.choices[0].message.content != first.choices[0].message.content:
            print("FAIL: the paraphrase was not served from semcache", file=sys.stderr)
            ok = False

        print("3. the same paraphrase to another model (scope: must miss)")
        third = ask("gpt-4o", "I forgot my password, how can I change it?", "an answer from gpt-4o")
        if third._hidden_params.get("cache_hit"):
            print("FAIL: an answer crossed models", file=sys.stderr)
            ok = False

        s = client.stats(namespace)
        print(
            f"semcache stats: lookups={s.lookups} hits={s.hits} misses={s.misses} stores={s.stores} "
            f"entries={s.entries} saved_tokens={s.saved_input_tokens}+{s.saved_output_tokens} saved_usd={s.saved_cost_usd:.6f}"
        )
        if (s.lookups, s.hits, s.stores) != (3, 1, 2):
            print("FAIL: expected 3 lookups, 1 hit, 2 stores", file=sys.stderr)
            ok = False
        client.drop_namespace(namespace)

        ok = verified_mode(client, f"{namespace}-verified") and ok
        litellm.cache = None

    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def verified_mode(client: SemcacheClient, namespace: str) -> bool:
    ok = True
    client.configure_namespace(namespace, ttl_seconds=3600, error_bound=0.05)
    litellm.cache = SemcacheLiteLLMCache(client=client, namespace=namespace)
    backend = litellm.cache.cache
    answer = "Go to Settings > Security > Reset password."
    try:
        print(f"4. verified mode: namespace {namespace} with error_bound 0.05")
        ask("gpt-4o-mini", "How do I reset my password?", answer)
        # The (mock) LLM answers the paraphrase as it answered the question: the cached answer
        # would have been right, and the Store with the probe token says so.
        second = ask("gpt-4o-mini", "I forgot my password, how can I change it?", answer)
        lookup, store = backend.last_lookup, backend.last_store
        print(
            f"    semcache: miss_reason={lookup.miss_reason if lookup else None}, "
            f"probe_correct={store.probe_correct if store else None}"
        )
        if second._hidden_params.get("cache_hit") or lookup is None or lookup.miss_reason != "EXPLORE":
            print("FAIL: a new verified namespace must answer the paraphrase EXPLORE (a miss)", file=sys.stderr)
            ok = False
        elif store is None or store.probe_correct is not True:
            print("FAIL: the Store of the same answer was not judged right with the probe token", file=sys.stderr)
            ok = False
        if len(backend.pending_probes):
            print("FAIL: a probe token was left pending after its Store", file=sys.stderr)
            ok = False
        s = client.stats(namespace)
        print(
            f"semcache stats: lookups={s.lookups} hits={s.hits} stores={s.stores} explores={s.explores} "
            f"probes_correct={s.probes_correct} probes_wrong={s.probes_wrong}"
        )
        if (s.lookups, s.stores, s.explores, s.probes_correct) != (2, 2, 1, 1):
            print("FAIL: expected 2 lookups, 2 stores, 1 explore, 1 correct probe", file=sys.stderr)
            ok = False
    finally:
        client.drop_namespace(namespace)
    return ok


if __name__ == "__main__":
    sys.exit(main())
