#!/usr/bin/env python3
"""semcache from Python: store an answer, hit it with a paraphrase, miss with an unrelated
question, report the served answer right (Feedback), print Stats; then verified mode: in a
namespace with an error bound the paraphrase is an EXPLORE miss, and the Store of the LLM's
answer with its probe token teaches the namespace whether the cached answer was right.
Exits 1 if the paraphrase misses or the unrelated question hits, or verified mode does not
answer as a new verified namespace must (EXPLORE with a token, probe_correct for the same
answer, a reused token refused, Feedback counted).

    python3 clients/python/example.py [ADDRESS]      # default: $SEMCACHE_ADDR or 127.0.0.1:50051
"""

from __future__ import annotations

import os
import sys
import uuid

import grpc

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

        if r.hit and r.entry is not None:
            # The user liked the served answer: Feedback teaches the namespace (a wrong one
            # would never be served for that query again).
            fb = cache.feedback(namespace, r.entry.id, paraphrase, correct=True)
            print(f"feedback   served answer right for {paraphrase!r}: observations={fb.observations} deleted={fb.deleted}")
            if fb.observations < 1 or fb.deleted:
                print("FAIL: Feedback was not recorded", file=sys.stderr)
                ok = False

        s = cache.stats(namespace)
        print(
            f"stats      lookups={s.lookups} hits={s.hits} misses={s.misses} stores={s.stores} "
            f"entries={s.entries} hit_rate={s.hit_rate:.2f} saved_tokens={s.saved_input_tokens}+{s.saved_output_tokens} "
            f"saved_usd={s.saved_cost_usd:.4f} feedback_correct={s.feedback_correct}"
        )

        ok = verified_mode(cache, f"{namespace}-verified", scope, question, answer, paraphrase) and ok

        try:
            cache.lookup(namespace, "   ")
        except SemcacheError as e:
            print(f"error      empty query -> {e.code.name}: {e.message}")

        print(f"dropped    {namespace}: {cache.drop_namespace(namespace)} entries")

    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def verified_mode(
    cache: SemcacheClient, namespace: str, scope: dict[str, str], question: str, answer: str, paraphrase: str
) -> bool:
    """A namespace with error_bound 0.05: it trusts nothing yet, so the paraphrase is an EXPLORE
    miss with a probe token; the gateway calls its LLM and stores the answer with the token."""
    ok = True
    print("verified mode")
    ns = cache.configure_namespace(namespace, ttl_seconds=3600, error_bound=0.05)
    print(f"namespace  {namespace}: error_bound {ns.error_bound:.2f}")
    try:
        cache.store(namespace, question, answer, scope=scope)

        r = cache.lookup(namespace, paraphrase, scope=scope)
        print(
            f"lookup     {paraphrase!r}: hit={r.hit} miss_reason={r.miss_reason} "
            f"similarity={r.similarity:.3f} probe_token={'yes' if r.probe_token else 'none'}"
        )
        if r.hit or not r.explore or not r.probe_token:
            print("FAIL: a new verified namespace must answer EXPLORE with a probe token", file=sys.stderr)
            return False
        # On any miss: call the LLM, then store its answer, passing the token ("" unless EXPLORE).
        llm_answer = answer  # what the (stand-in) LLM answers: here the cached answer was right
        stored = cache.store_result(namespace, paraphrase, llm_answer, scope=scope, probe_token=r.probe_token)
        print(f"stored     {paraphrase!r} with the probe token -> id {stored.id}, probe_correct={stored.probe_correct}")
        if stored.probe_correct is not True:
            print("FAIL: the same answer was not judged correct", file=sys.stderr)
            ok = False

        try:
            cache.store(namespace, paraphrase, llm_answer, scope=scope, probe_token=r.probe_token)
        except SemcacheError as e:
            print(f"error      token reused -> {e.code.name}: {e.message}")
            if e.code != grpc.StatusCode.FAILED_PRECONDITION:
                print(f"FAIL: a reused token should be FAILED_PRECONDITION: {e}", file=sys.stderr)
                ok = False
        else:
            print("FAIL: a reused probe token was accepted", file=sys.stderr)
            ok = False

        s = cache.stats(namespace)
        print(
            f"stats      lookups={s.lookups} hits={s.hits} explores={s.explores} probes_correct={s.probes_correct} "
            f"probes_wrong={s.probes_wrong} estimated_error_rate={s.estimated_error_rate:.4f}"
        )
        if (s.explores, s.probes_correct) != (1, 1):
            print("FAIL: expected 1 explore and 1 correct probe in Stats", file=sys.stderr)
            ok = False
    finally:
        print(f"dropped    {namespace}: {cache.drop_namespace(namespace)} entries")
    return ok


if __name__ == "__main__":
    sys.exit(main())
