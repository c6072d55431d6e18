#!/usr/bin/env python3
"""A minimal OpenAI-compatible gateway: POST /v1/chat/completions goes through LiteLLM with
semcache as its cache. It is the `gateway` service of docker/compose.yaml and a starting point,
not a production proxy (no auth, no streaming, one thread per request).

    SEMCACHE_ADDR=127.0.0.1:50051 python3 clients/python/gateway.py       # listens on $GATEWAY_LISTEN (0.0.0.0:4000)
    curl -s localhost:4000/v1/chat/completions -H 'content-type: application/json' \\
      -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"How do I reset my password?"}]}'

With GATEWAY_MOCK_RESPONSE set, LiteLLM answers with that text instead of calling a provider
(a demo without API keys); otherwise the provider keys LiteLLM reads (OPENAI_API_KEY, ...) apply.
The response carries `x-semcache-hit: true|false`. GET /health answers 200 once semcache is SERVING.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

import litellm  # noqa: E402

from litellm_semcache import SemcacheLiteLLMCache  # noqa: E402
from semcache_client import SemcacheClient  # noqa: E402

log = logging.getLogger("gateway")
MOCK = os.environ.get("GATEWAY_MOCK_RESPONSE")


class Handler(BaseHTTPRequestHandler):
    client: SemcacheClient

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path != "/health":
            return self._send(404, {"error": "not found"})
        try:
            self.client.wait_until_serving(timeout=1)
            self._send(200, {"status": "ok"})
        except Exception as e:  # noqa: BLE001
            self._send(503, {"status": "unavailable", "error": str(e)})

    def do_POST(self) -> None:  # noqa: N802
        if self.path not in ("/v1/chat/completions", "/chat/completions"):
            return self._send(404, {"error": "not found"})
        try:
            request = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
            if request.pop("stream", False):
                return self._send(400, {"error": {"message": "this demo gateway does not stream"}})
            if MOCK is not None:
                request.setdefault("mock_response", MOCK)
            response = litellm.completion(**request)
        except Exception as e:  # noqa: BLE001 - surfaced to the caller
            status = getattr(e, "status_code", 400 if isinstance(e, (ValueError, TypeError)) else 500)
            return self._send(int(status), {"error": {"message": str(e), "type": type(e).__name__}})
        hit = bool((getattr(response, "_hidden_params", None) or {}).get("cache_hit"))
        self._send(200, response.model_dump(), {"x-semcache-hit": str(hit).lower()})

    def log_message(self, fmt: str, *args: object) -> None:
        log.info("%s %s", self.address_string(), fmt % args)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host, _, port = os.environ.get("GATEWAY_LISTEN", "0.0.0.0:4000").rpartition(":")
    address = os.environ.get("SEMCACHE_ADDR", "127.0.0.1:50051")
    client = SemcacheClient(address)
    client.wait_until_serving(timeout=float(os.environ.get("GATEWAY_WAIT_SECONDS", "120")))
    litellm.cache = SemcacheLiteLLMCache(client=client, namespace=os.environ.get("SEMCACHE_NAMESPACE", "gateway"))
    Handler.client = client
    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    log.info("gateway on %s:%s, semcache at %s%s", host, port, address, " (mock LLM)" if MOCK is not None else "")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
