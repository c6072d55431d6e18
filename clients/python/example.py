#!/usr/bin/env python3
"""semcache from Python: store an answer, hit it with a paraphrase, miss with an unrelated
question, print Stats. Exits 1 if the paraphrase misses or the unrelated question hits.

    python3 clients/python/example.py [ADDRESS]      # default: $SEMCACHE_ADDR or 127.0.0.1:50051
"""

from __future__ import annotations

import os
import sys
import uuid

from semcache_client import SemcacheClient, SemcacheError, Usage


def main() -> int:
    address = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SEMCACHE_ADDR", "127.0.0.1:50051")
    namespace = f"example-py-{uuid.uuid4().hex[:8]}"  # a fresh namespace: reruns start clean
    scope = {"model": "gpt-4o-mini"}
    ok = True

    with SemcacheClient(address) as cache:
        cache.wait_until_serving(timeout=60)
        print(f"semcache at {address}, namespace {namespace}")

        ns = cache.configure_namespace(namespace, ttl_seconds=3600)
        print(f"namespace: threshold {ns.similarity_threshold:.2f}, ttl {ns.ttl_seconds}s, model {ns.embedding_model}")

        question = "How do I reset my password?"
        answer = "Open Settings > Security and choose Reset password; we email you a link."
        entry_id = cache.store(
            namespace,
            question,
            answer,
            scope=scope,
            metadata={"source": "example.py"},
            usage=Usage(input_tokens=12, output_tokens=20, cost_usd=0.0004),
        )
        print(f"stored     {question!r} -> id {entry_id}")

        paraphrase = "I forgot my password, how can I change it?"
        r = cache.lookup(namespace, paraphrase, scope=scope)
        print(f"lookup     {paraphrase!r}: hit={r.hit} similarity={r.similarity:.3f} threshold={r.threshold:.2f}")
        if r.hit and r.entry is not None:
            print(f"           response: {r.entry.response!r} (cached for {r.entry.query!r})")
        else:
            print(f"FAIL: the paraphrase missed ({r.miss_reason})", file=sys.stderr)
            ok = False

        other_model = cache.lookup(namespace, paraphrase, scope={"model": "another-model"})
        print(f"lookup     same paraphrase, scope model=another-model: hit={other_model.hit} ({other_model.miss_reason})")
        if other_model.hit:
            print("FAIL: a lookup in another scope hit", file=sys.stderr)
            ok = False

        unrelated = "What is the capital of Australia?"
        m = cache.lookup(namespace, unrelated, scope=scope)
        print(f"lookup     {unrelated!r}: hit={m.hit} similarity={m.similarity:.3f} miss_reason={m.miss_reason}")
        if m.hit:
            print(f"FAIL: the unrelated question hit: {m.response!r}", file=sys.stderr)
            ok = False

        s = cache.stats(namespace)
        print(
            f"stats      lookups={s.lookups} hits={s.hits} misses={s.misses} stores={s.stores} "
            f"entries={s.entries} hit_rate={s.hit_rate:.2f} saved_tokens={s.saved_input_tokens}+{s.saved_output_tokens} "
            f"saved_usd={s.saved_cost_usd:.4f}"
        )

        try:
            cache.lookup(namespace, "   ")
        except SemcacheError as e:
            print(f"error      empty query -> {e.code.name}: {e.message}")

        print(f"dropped    {namespace}: {cache.drop_namespace(namespace)} entries")

    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
