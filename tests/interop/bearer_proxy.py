"""A bearer-token check in front of an MCP server that has none (the reference
server-everything), for the gateway's interoperability tests: what an OAuth-protected
deployment of that server would look like to the gateway.

It listens on 127.0.0.1 and a free port, prints "listening on 127.0.0.1:PORT" once it
accepts connections, answers 401 to any request without "Authorization: Bearer <token>",
and forwards the rest to --upstream, streaming both bodies as they come (event streams
included). The token is not forwarded: the server behind never needs it. It uses only
what the pinned Python SDK brings (uvicorn, and httpx2 as the client).
"""

import argparse
import asyncio
import socket
import sys

import httpx2
import uvicorn

HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"te",
    b"trailer",
    b"upgrade",
    b"host",
    b"authorization",
    b"content-length",
}


class BearerProxy:
    def __init__(self, upstream: str, token: str):
        self.upstream = upstream.rstrip("/")
        self.expected = f"Bearer {token}".encode()
        self.client = httpx2.AsyncClient(timeout=None)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        headers = scope.get("headers") or []
        if dict(headers).get(b"authorization") != self.expected:
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"www-authenticate", b'Bearer error="invalid_token"')],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        url = self.upstream + scope["raw_path"].decode()
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode()
        forwarded = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        request = self.client.build_request(scope["method"], url, headers=forwarded, content=body)
        response = await self.client.send(request, stream=True)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(BearerProxy(args.upstream, args.token), log_level="warning")
    runner = uvicorn.Server(config)

    async def serve():
        starting = asyncio.create_task(runner.serve(sockets=[listener]))
        while not runner.started:
            if starting.done():
                return await starting
            await asyncio.sleep(0.01)
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await starting

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
