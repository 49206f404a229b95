"""An MCP server built with the official Python SDK, behind a bearer-token check, for the
gateway's interoperability tests.

It serves one transport, Streamable HTTP at /mcp or the legacy SSE transport at /sse
(posting to /messages/), on 127.0.0.1 and a free port, and prints
"listening on 127.0.0.1:PORT" once it accepts connections. Every request without
"Authorization: Bearer <token>" gets 401, as an OAuth-protected server would answer.

Tools: echo(text) returns its text; count(steps) reports progress `steps` times, then
returns "counted N".
"""

import argparse
import asyncio
import socket
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer


def build_server() -> MCPServer:
    server = MCPServer("python-sdk-server")

    @server.tool()
    def echo(text: str) -> str:
        """Returns its text."""
        return text

    @server.tool()
    async def count(steps: int, ctx: Context) -> str:
        """Reports progress `steps` times, then finishes."""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps)
            await asyncio.sleep(0.02)
        return f"counted {steps}"

    return server


class BearerCheck:
    """ASGI middleware: 401 unless the request carries the expected bearer token."""

    def __init__(self, app, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization") != self.expected:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer error="invalid_token"'),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"error":"invalid_token"}'})
                return
        await self.app(scope, receive, send)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=["streamable", "sse"], required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()

    server = build_server()
    if args.transport == "streamable":
        app = server.streamable_http_app()
    else:
        app = server.sse_app()

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(BearerCheck(app, args.token), log_level="warning", lifespan="on")
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
