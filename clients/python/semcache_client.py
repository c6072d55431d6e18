"""A small typed Python client for semcache (gRPC service semcache.v1.SemanticCache).

    from semcache_client import SemcacheClient

    with SemcacheClient("127.0.0.1:50051") as cache:
        cache.wait_until_serving()
        question = "I forgot my password, how can I change it?"
        r = cache.lookup("support", question)
        if r.hit:
            answer = r.response
        else:
            answer = call_the_llm(...)
            # r.probe_token is "" unless the miss was EXPLORE (verified mode); passing it
            # always is fine, and teaches a verified namespace whether its candidate was right.
            cache.store("support", question, answer, probe_token=r.probe_token)

(`cache.get(namespace, query)` is the short form: the cached response, or None on a miss.)

Verified mode: `cache.configure_namespace("support", error_bound=0.05)` makes the server serve
a hit only when it is confident that at most 5% of lookups get a wrong answer. Until it has
learned enough it answers some lookups with miss_reason "EXPLORE" and a `probe_token`: call
the LLM as on any miss and pass the token to `store` (as above); `store_result` returns
whether the cached answer would have been right (`probe_correct`). `feedback(...)` reports a
served answer as right or wrong.

The protobuf stubs are generated from proto/semcache/v1/semcache.proto with grpcio-tools
(`clients/python/generate.sh`, or `scripts/clients.sh`) into the git-ignored folder
`_generated/` next to this file. If they are missing or older than the proto, they are
generated on first import (this needs grpcio-tools installed). Set SEMCACHE_PROTO_DIR to use
another proto root than the repository's `proto/`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping, Sequence

import grpc

__all__ = [
    "SemcacheClient",
    "SemcacheError",
    "LookupResult",
    "StoreResult",
    "FeedbackResult",
    "Entry",
    "GuardVeto",
    "Usage",
    "Namespace",
    "Stats",
    "generate_stubs",
]

_HERE = Path(__file__).resolve().parent
_GENERATED = _HERE / "_generated"
_PROTO_FILE = "semcache/v1/semcache.proto"


# Metadata keys of a sharded deployment (see the README's "Running more than one node").
ROUTING_HEADER = "x-semcache-namespace"
NODE_HEADER = "x-semcache-node"


def _proto_root() -> Path:
    env = os.environ.get("SEMCACHE_PROTO_DIR")
    return Path(env).resolve() if env else (_HERE / ".." / ".." / "proto").resolve()


def generate_stubs(out_dir: Path = _GENERATED, proto_root: Path | None = None) -> Path:
    """Runs grpc_tools.protoc on semcache.proto into out_dir (pb2, pb2_grpc and .pyi files)."""
    root = proto_root or _proto_root()
    proto = root / _PROTO_FILE
    if not proto.is_file():
        raise FileNotFoundError(f"semcache proto not found at {proto} (set SEMCACHE_PROTO_DIR)")
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the semcache stubs are not generated and grpcio-tools is not installed: "
            "pip install -r clients/python/requirements.txt, then run clients/python/generate.sh"
        ) from e
    out_dir.mkdir(parents=True, exist_ok=True)
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--pyi_out={out_dir}",
            str(proto),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with exit status {rc} on {proto}")
    return out_dir


def _ensure_stubs() -> None:
    pb2 = _GENERATED / "semcache" / "v1" / "semcache_pb2.py"
    proto = _proto_root() / _PROTO_FILE
    if not pb2.is_file():
        generate_stubs()
    elif proto.is_file() and proto.stat().st_mtime > pb2.stat().st_mtime:
        try:  # the proto changed since: regenerate, or keep the old stubs if that cannot be done
            generate_stubs()
        except (ImportError, OSError, RuntimeError) as e:
            import warnings

            warnings.warn(f"semcache stubs are older than {proto} and could not be regenerated: {e}")
    if str(_GENERATED) not in sys.path:
        sys.path.insert(0, str(_GENERATED))


_ensure_stubs()
from semcache.v1 import semcache_pb2 as pb  # noqa: E402  (generated)
from semcache.v1 import semcache_pb2_grpc as pb_grpc  # noqa: E402  (generated)


class SemcacheError(Exception):
    """A failed RPC: `code` is the grpc.StatusCode, `message` the server's explanation."""

    def __init__(self, method: str, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"semcache {method} failed: {code.name}: {message}")
        self.method = method
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Usage:
    """What the cached LLM call cost; semcache adds it to the savings on every hit."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Entry:
    id: str
    namespace: str
    query: str
    response: str
    scope: dict[str, str]
    metadata: dict[str, str]
    created_at_unix_ms: int
    expires_at_unix_ms: int  # 0 = never
    hit_count: int
    context_key: str
    usage: Usage | None = None  # what the cached call cost, when the server reports it

    @classmethod
    def _from_pb(cls, e: Any) -> "Entry":
        usage = None
        if "usage" in e.DESCRIPTOR.fields_by_name and e.HasField("usage"):  # newer servers' proto
            usage = Usage(e.usage.input_tokens, e.usage.output_tokens, e.usage.cost_usd)
        return cls(
            id=e.id,
            namespace=e.namespace,
            query=e.query,
            response=e.response,
            scope=dict(e.scope),
            metadata=dict(e.metadata),
            created_at_unix_ms=e.created_at_unix_ms,
            expires_at_unix_ms=e.expires_at_unix_ms,
            hit_count=e.hit_count,
            context_key=e.context_key,
            usage=usage,
        )


@dataclass(frozen=True)
class GuardVeto:
    id: str
    similarity: float
    guard: str  # "number", "negation" or "content"
    detail: str


@dataclass(frozen=True)
class LookupResult:
    """Every Lookup answer. `entry` is set on a hit; on a miss `miss_reason` says why
    ("EMPTY", "BELOW_THRESHOLD", "VETOED", "NEEDS_CONTEXT", or "EXPLORE": verified mode has a
    candidate it does not trust yet). On EXPLORE `probe_token` is non-empty: call the LLM as on
    any miss and pass it to `store(..., probe_token=...)`; otherwise it is ""."""

    hit: bool
    entry: Entry | None
    similarity: float
    nearest_id: str
    threshold: float
    veto: GuardVeto | None
    miss_reason: str | None
    probe_token: str = ""

    @property
    def response(self) -> str | None:
        return self.entry.response if self.entry is not None else None

    @property
    def explore(self) -> bool:
        """Verified mode asks for the LLM's answer to this query (see probe_token)."""
        return self.miss_reason == "EXPLORE"


@dataclass(frozen=True)
class StoreResult:
    """A Store's answer: the new entry's id and, when a probe token was sent, whether the
    probed entry's cached answer was judged right (None without a token, or when that entry
    has gone since the Lookup)."""

    id: str
    probe_correct: bool | None = None


@dataclass(frozen=True)
class FeedbackResult:
    observations: int  # the entry's observations, this one included
    deleted: bool  # reported wrong for its own query: the entry is gone


@dataclass(frozen=True)
class Namespace:
    name: str
    similarity_threshold: float
    ttl_seconds: int
    max_entries: int
    entries: int
    embedding_model: str
    threshold_floor: float
    hit_guards: bool
    error_bound: float = 0.0  # verified mode's bound on wrong answers; 0 = static threshold

    @classmethod
    def _from_pb(cls, n: Any) -> "Namespace":
        return cls(
            name=n.name,
            similarity_threshold=n.similarity_threshold,
            ttl_seconds=n.ttl_seconds,
            max_entries=n.max_entries,
            entries=n.entries,
            embedding_model=n.embedding_model,
            threshold_floor=n.threshold_floor,
            hit_guards=n.hit_guards,
            error_bound=n.error_bound if _has_field(n, "error_bound") else 0.0,
        )


@dataclass(frozen=True)
class Stats:
    lookups: int
    hits: int
    misses: int
    stores: int
    entries: int
    saved_input_tokens: int
    saved_output_tokens: int
    saved_cost_usd: float
    evictions: int
    expirations: int
    # Verified mode (0 from servers without it).
    explores: int = 0  # lookups answered EXPLORE
    probes_correct: int = 0  # probe tokens stored back whose cached answer was right
    probes_wrong: int = 0  # ... and wrong
    feedback_correct: int = 0
    feedback_wrong: int = 0
    estimated_error_rate: float = 0.0  # the learned model's estimate of wrong hits / lookups

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0


_VERIFIED_STATS = ("explores", "probes_correct", "probes_wrong", "feedback_correct", "feedback_wrong", "estimated_error_rate")


def _has_field(message: Any, name: str) -> bool:
    """Whether the generated stubs know the field (older stubs predate verified mode)."""
    return name in message.DESCRIPTOR.fields_by_name


def _require_field(message: Any, name: str) -> None:
    if not _has_field(message, name):
        raise ValueError(
            f"{name} needs stubs generated from a newer semcache.proto: run clients/python/generate.sh"
        )


def _context_fields(context: Sequence[str] | str | None) -> dict[str, Any]:
    """A list of earlier turns is hashed by the server; a string is the caller's own key."""
    if context is None:
        return {}
    if isinstance(context, str):
        return {"context_key": context} if context else {}
    return {"context": list(context)}


@dataclass
class SemcacheClient:
    """A blocking client over one gRPC channel. Thread-safe; use it as a context manager or
    call close(). `timeout` is the per-call deadline in seconds. `token` is the bearer token
    for a server that requires one (default $SEMCACHE_TOKEN); `credentials` turn on TLS, e.g.
    grpc.ssl_channel_credentials(root_certificates=open("ca.pem", "rb").read())."""

    address: str = field(default_factory=lambda: os.environ.get("SEMCACHE_ADDR", "127.0.0.1:50051"))
    timeout: float = 10.0
    credentials: grpc.ChannelCredentials | None = None
    token: str | None = field(default_factory=lambda: os.environ.get("SEMCACHE_TOKEN") or None)

    def __post_init__(self) -> None:
        if self.credentials is not None:
            self._channel = grpc.secure_channel(self.address, self.credentials)
        else:
            self._channel = grpc.insecure_channel(self.address)
        self._stub = pb_grpc.SemanticCacheStub(self._channel)
        self._metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "SemcacheClient":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Waits until the standard gRPC health service reports SERVING for
        semcache.v1.SemanticCache (the model has loaded and warmed up)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(self._channel)
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                status = health.Check(
                    health_pb2.HealthCheckRequest(service="semcache.v1.SemanticCache"), timeout=2.0
                ).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            except grpc.RpcError as e:
                last = f"{e.code().name}: {e.details()}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"semcache at {self.address} not SERVING after {timeout:.0f}s ({last})")
            time.sleep(0.25)

    # -- RPCs ------------------------------------------------------------------------------

    def _call(self, method: str, request: Any, node: str | None = None) -> Any:
        # The routing header a proxy in front of several nodes hashes to pick the namespace's
        # node (harmless without one); calls that span namespaces name a node instead.
        namespace = getattr(request, "namespace", None)
        if namespace is None:
            namespace = getattr(request, "name", "")
        metadata = self._metadata
        if namespace:
            metadata += ((ROUTING_HEADER, namespace),)
        if node:
            metadata += ((NODE_HEADER, node),)
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout, metadata=metadata)
        except grpc.RpcError as e:
            raise SemcacheError(method, e.code(), e.details() or "") from None

    def lookup(
        self,
        namespace: str,
        query: str,
        scope: Mapping[str, str] | None = None,
        threshold: float | None = None,
        context: Sequence[str] | str | None = None,
    ) -> LookupResult:
        """Looks the query up; a miss is a normal answer (`hit` false), never an error."""
        req = pb.LookupRequest(namespace=namespace, query=query, scope=dict(scope or {}), **_context_fields(context))
        if threshold is not None:
            req.similarity_threshold = threshold
        r = self._call("Lookup", req)
        veto = None
        if r.HasField("veto"):
            veto = GuardVeto(id=r.veto.id, similarity=r.veto.similarity, guard=r.veto.guard, detail=r.veto.detail)
        reason = None
        if not r.hit:
            reason = pb.MissReason.Name(r.miss_reason).removeprefix("MISS_REASON_")
        return LookupResult(
            hit=r.hit,
            entry=Entry._from_pb(r.entry) if r.hit and r.HasField("entry") else None,
            similarity=r.similarity,
            nearest_id=r.nearest_id,
            threshold=r.threshold,
            veto=veto,
            miss_reason=reason,
            probe_token=r.probe_token if _has_field(r, "probe_token") else "",
        )

    def get(
        self,
        namespace: str,
        query: str,
        scope: Mapping[str, str] | None = None,
        threshold: float | None = None,
        context: Sequence[str] | str | None = None,
    ) -> str | None:
        """The cached response on a hit, else None."""
        return self.lookup(namespace, query, scope=scope, threshold=threshold, context=context).response

    def store(
        self,
        namespace: str,
        query: str,
        response: str,
        scope: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        ttl_seconds: int | None = None,
        usage: Usage | None = None,
        context: Sequence[str] | str | None = None,
        probe_token: str | None = None,
        probe_verdict: bool | None = None,
    ) -> str:
        """Caches a response; returns the new entry's id once it is durable on disk.

        `probe_token`: the LookupResult.probe_token of the miss this answer is for ("" or None:
        none). With it a verified namespace learns whether its candidate's cached answer would
        have been right: by comparing it with `response` after normalisation, or by your own
        `probe_verdict` (True/False) when set. `store_result` also returns that judgement. A
        token is used once and expires: reusing one raises SemcacheError FAILED_PRECONDITION."""
        return self.store_result(
            namespace,
            query,
            response,
            scope=scope,
            metadata=metadata,
            ttl_seconds=ttl_seconds,
            usage=usage,
            context=context,
            probe_token=probe_token,
            probe_verdict=probe_verdict,
        ).id

    def store_result(
        self,
        namespace: str,
        query: str,
        response: str,
        scope: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        ttl_seconds: int | None = None,
        usage: Usage | None = None,
        context: Sequence[str] | str | None = None,
        probe_token: str | None = None,
        probe_verdict: bool | None = None,
    ) -> StoreResult:
        """`store`, returning a StoreResult: the id and, with a probe token, `probe_correct`."""
        req = pb.StoreRequest(
            namespace=namespace,
            query=query,
            response=response,
            scope=dict(scope or {}),
            metadata=dict(metadata or {}),
            **_context_fields(context),
        )
        if ttl_seconds is not None:
            req.ttl_seconds = ttl_seconds
        if usage is not None:
            req.usage.CopyFrom(
                pb.Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cost_usd=usage.cost_usd)
            )
        if probe_token:
            _require_field(req, "probe_token")
            req.probe_token = probe_token
            if probe_verdict is not None:
                req.probe_verdict = probe_verdict
        elif probe_verdict is not None:
            raise ValueError("probe_verdict needs the probe_token of the Lookup that answered EXPLORE")
        r = self._call("Store", req)
        probe_correct = r.probe_correct if _has_field(r, "probe_correct") and r.HasField("probe_correct") else None
        return StoreResult(id=r.id, probe_correct=probe_correct)

    def feedback(self, namespace: str, entry_id: str, query: str, correct: bool) -> FeedbackResult:
        """Reports whether a served answer (LookupResult.entry.id) was right for `query`. A wrong
        one is never served for that query again (reported wrong for its own query, the entry
        is deleted), and either teaches the namespace's verified mode. Needs the write grant."""
        if not hasattr(pb, "FeedbackRequest"):
            raise ValueError("feedback needs stubs generated from a newer semcache.proto: run clients/python/generate.sh")
        r = self._call("Feedback", pb.FeedbackRequest(namespace=namespace, entry_id=entry_id, query=query, correct=correct))
        return FeedbackResult(observations=r.observations, deleted=r.deleted)

    def delete(
        self,
        namespace: str,
        *,
        id: str | None = None,
        scope: Mapping[str, str] | None = None,
        all: bool = False,
    ) -> int:
        """Deletes one entry (id), every entry of an exact scope, or all entries; returns the count."""
        if sum(x is not None and x is not False for x in (id, scope, all or None)) != 1:
            raise ValueError("delete takes exactly one of id=, scope= or all=True")
        if id is not None:
            req = pb.DeleteRequest(namespace=namespace, id=id)
        elif scope is not None:
            req = pb.DeleteRequest(namespace=namespace, scope=pb.ScopeSelector(scope=dict(scope)))
        else:
            req = pb.DeleteRequest(namespace=namespace, all=True)
        return self._call("Delete", req).deleted

    def configure_namespace(
        self,
        name: str,
        similarity_threshold: float | None = None,
        ttl_seconds: int | None = None,
        max_entries: int | None = None,
        threshold_floor: float | None = None,
        hit_guards: bool | None = None,
        error_bound: float | None = None,
    ) -> Namespace:
        """Creates or updates a namespace; settings left as None keep their value.
        `error_bound` in [0, 0.5): 0 = the static similarity threshold; above, verified mode,
        which serves a hit only while at most that share of lookups is expected to be wrong."""
        req = pb.ConfigureNamespaceRequest(name=name)
        for key, value in (
            ("similarity_threshold", similarity_threshold),
            ("ttl_seconds", ttl_seconds),
            ("max_entries", max_entries),
            ("threshold_floor", threshold_floor),
            ("hit_guards", hit_guards),
            ("error_bound", error_bound),
        ):
            if value is not None:
                _require_field(req, key)
                setattr(req, key, value)
        return Namespace._from_pb(self._call("ConfigureNamespace", req))

    def get_namespace(self, name: str) -> Namespace:
        return Namespace._from_pb(self._call("GetNamespace", pb.GetNamespaceRequest(name=name)))

    def list_namespaces(self, node: str | None = None) -> list[Namespace]:
        """The server's namespaces; through a cluster's proxy, those of `node` (e.g. "n1")."""
        r = self._call("ListNamespaces", pb.ListNamespacesRequest(), node=node)
        return [Namespace._from_pb(n) for n in r.namespaces]

    def stats(self, namespace: str = "", node: str | None = None) -> Stats:
        """Counters since the server started, for one namespace or all (""); through a
        cluster's proxy, all of `node`'s (e.g. "n1")."""
        r = self._call("Stats", pb.StatsRequest(namespace=namespace), node=node)
        return Stats(
            lookups=r.lookups,
            hits=r.hits,
            misses=r.misses,
            stores=r.stores,
            entries=r.entries,
            saved_input_tokens=r.saved_input_tokens,
            saved_output_tokens=r.saved_output_tokens,
            saved_cost_usd=r.saved_cost_usd,
            evictions=r.evictions,
            expirations=r.expirations,
            **{f: getattr(r, f) for f in _VERIFIED_STATS if _has_field(r, f)},
        )

    def drop_namespace(self, name: str) -> int:
        """Removes a namespace entirely; returns the number of entries removed."""
        return self._call("DropNamespace", pb.DropNamespaceRequest(name=name)).deleted
