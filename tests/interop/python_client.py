#!/usr/bin/env python3
"""Drive one MCP session through the gateway with the official Python SDK.

The gateway's interoperability tests run this script against a gateway route
to prove that a real MCP client, not just our own test code, can talk through
it. It connects over the transport named on the command line, initializes,
lists the tools, calls `echo`, calls `slow_stream` while counting progress
notifications, starts a second, longer `slow_stream` call and cancels it at its
first progress notification, calls `echo` once more, and prints one JSON line
that the calling test checks:

    {"transport": ..., "server_name": ..., "tools": [...], "echo": ...,
     "progress": N, "slow_result": ...,
     "cancel": {"cancelled", "after_progress", "request_id", "reason"},
     "echo_after_cancel": ...}

The call is cancelled the way the SDK offers: by cancelling the task that awaits
it, upon which the SDK sends `notifications/cancelled` for the request's id.
`cancel.cancelled` says the call did not complete and that notice was written to
the transport; `cancel.request_id` is the call's JSON-RPC id, as the client sent
it, and `cancel.reason` the notice's reason.

With `--call-blocked NAME` it also calls the tool NAME, which the gateway is
expected to refuse, and reports the JSON-RPC error as "blocked": {"code", "message"}.
`--echo-tool`, `--echo-arg`, `--slow-tool`, `--slow-args` and `--cancel-args`
name the tools and arguments of servers other than the gateway's mock upstream.

Any failure ends the process with status 1 and a one-line reason on stderr;
bad arguments end it with status 2. The whole run is bounded by a timeout so
a stuck stream fails the test instead of hanging it.

Usage:
    python_client.py --transport streamable|sse --url URL [--expect-tool NAME]...
                     [--call-blocked NAME] [--echo-tool NAME] [--echo-arg KEY]
                     [--slow-tool NAME] [--slow-args JSON] [--cancel-args JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx2
import mcp.types as types
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

OVERALL_TIMEOUT_SECS = 30.0
ECHO_TEXT = "hello through the gateway"
SLOW_ARGS = {"steps": 3, "interval_ms": 100}
# Long enough that the call is still running when it is cancelled.
CANCEL_ARGS = {"steps": 50, "interval_ms": 100}
# When no progress notification comes first, the call is cancelled after this long.
CANCEL_FALLBACK_SECS = 1.0
CLIENT_INFO = types.Implementation(name="mcp-gateway-interop-client", version="1.0.0")


class InteropFailure(Exception):
    """A step of the session did not go as the gateway tests require."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", required=True, choices=["streamable", "sse"])
    parser.add_argument("--url", required=True, help="MCP endpoint (streamable) or SSE stream URL")
    parser.add_argument(
        "--expect-tool",
        action="append",
        default=[],
        metavar="NAME",
        help="fail unless tools/list contains NAME (repeatable)",
    )
    parser.add_argument("--echo-tool", default="echo", help="the tool that echoes")
    parser.add_argument("--echo-arg", default="text", help="the echo tool's argument")
    parser.add_argument("--slow-tool", default="slow_stream", help="a tool with progress")
    parser.add_argument(
        "--slow-args",
        type=json.loads,
        default=SLOW_ARGS,
        help="the progress tool's arguments, as JSON",
    )
    parser.add_argument(
        "--cancel-args",
        type=json.loads,
        default=CANCEL_ARGS,
        help="the progress tool's arguments for the call that is cancelled, as JSON",
    )
    parser.add_argument(
        "--call-blocked",
        metavar="NAME",
        help="also call tool NAME and report the error the gateway answers it with",
    )
    parser.add_argument(
        "--bearer-env",
        metavar="VAR",
        help="send Authorization: Bearer with the value of environment variable VAR",
    )
    return parser.parse_args(argv)


def request_headers(bearer_env: str | None) -> dict[str, str]:
    # The key is read from the environment so it never shows up in a process listing.
    if bearer_env is None:
        return {}
    key = os.environ.get(bearer_env)
    if not key:
        raise InteropFailure(f"environment variable {bearer_env} is unset or empty")
    return {"Authorization": f"Bearer {key}"}


def loopback_only_client(
    headers: dict[str, str] | None = None,
    timeout: httpx2.Timeout | None = None,
    auth: httpx2.Auth | None = None,
) -> httpx2.AsyncClient:
    """An HTTP client that ignores proxy settings from the environment.

    The tests point this script at a gateway on loopback; an inherited
    HTTP_PROXY must not send that traffic anywhere else.
    """
    return httpx2.AsyncClient(
        headers=headers,
        timeout=timeout or httpx2.Timeout(OVERALL_TIMEOUT_SECS),
        auth=auth,
        trust_env=False,
    )


class RecordingWriteStream:
    """The transport's write stream, keeping a copy of every message the session sends.

    The SDK does not tell its caller which JSON-RPC id a request went out with, nor
    whether it sent `notifications/cancelled`; what it wrote to the transport does.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.sent: list[types.JSONRPCMessage] = []

    async def send(self, item: SessionMessage, /) -> None:
        self.sent.append(item.message)
        await self._inner.send(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> RecordingWriteStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._inner.__aexit__(*exc_info)

    def last_call_of(self, tool: str) -> types.RequestId | None:
        calls = [
            message.id
            for message in self.sent
            if isinstance(message, types.JSONRPCRequest)
            and message.method == "tools/call"
            and (message.params or {}).get("name") == tool
        ]
        return calls[-1] if calls else None

    def cancellations_of(self, request_id: types.RequestId) -> list[dict[str, Any]]:
        return [
            message.params or {}
            for message in self.sent
            if isinstance(message, types.JSONRPCNotification)
            and message.method == "notifications/cancelled"
            and (message.params or {}).get("requestId") == request_id
        ]


async def open_transport(stack: AsyncExitStack, args: argparse.Namespace) -> tuple[Any, Any]:
    headers = request_headers(args.bearer_env)
    if args.transport == "sse":
        return await stack.enter_async_context(
            sse_client(
                args.url,
                headers=headers,
                timeout=OVERALL_TIMEOUT_SECS,
                sse_read_timeout=OVERALL_TIMEOUT_SECS,
                httpx_client_factory=loopback_only_client,
            )
        )

    # The streamable transport takes a ready client and leaves its lifetime to us.
    http_client = await stack.enter_async_context(loopback_only_client(headers=headers))
    return await stack.enter_async_context(
        streamable_http_client(args.url, http_client=http_client)
    )


def result_text(tool: str, result: types.CallToolResult) -> str:
    text = "".join(
        block.text for block in result.content if isinstance(block, types.TextContent)
    )
    if result.is_error:
        raise InteropFailure(f"tool {tool} returned an error result: {text!r}")
    return text


async def call_and_cancel(
    session: ClientSession, sent: RecordingWriteStream, args: argparse.Namespace
) -> dict[str, Any]:
    """Starts a long call of the progress tool and cancels it at its first progress
    notification, or after CANCEL_FALLBACK_SECS without one, by cancelling the task
    that awaits it; reports whether the SDK sent `notifications/cancelled` for it."""
    first_progress = anyio.Event()
    completed: types.CallToolResult | None = None

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        first_progress.set()

    async def call() -> None:
        nonlocal completed
        completed = await session.call_tool(
            args.slow_tool, dict(args.cancel_args), progress_callback=on_progress
        )

    async with anyio.create_task_group() as group:
        group.start_soon(call)
        with anyio.move_on_after(CANCEL_FALLBACK_SECS):
            await first_progress.wait()
        group.cancel_scope.cancel()

    if completed is not None:
        raise InteropFailure(f"the cancelled call completed: {completed.model_dump_json()}")
    request_id = sent.last_call_of(args.slow_tool)
    notices = sent.cancellations_of(request_id) if request_id is not None else []
    return {
        "cancelled": len(notices) == 1,
        "after_progress": first_progress.is_set(),
        "request_id": request_id,
        "reason": notices[0].get("reason") if notices else None,
    }


async def run_session(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        read_stream, transport_write_stream = await open_transport(stack, args)
        write_stream = RecordingWriteStream(transport_write_stream)
        session = await stack.enter_async_context(
            ClientSession(read_stream, write_stream, client_info=CLIENT_INFO)
        )

        init = await session.initialize()

        # Ask for every page so a paginating upstream still yields the full set.
        tools: list[str] = []
        cursor: str | None = None
        while True:
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            listing = await session.list_tools(params=params)
            tools.extend(tool.name for tool in listing.tools)
            cursor = listing.next_cursor
            if not cursor:
                break
        missing = sorted(set(args.expect_tool) - set(tools))
        if missing:
            raise InteropFailure(f"tools/list lacks expected tools {missing}; got {sorted(tools)}")

        echo = await session.call_tool(args.echo_tool, {args.echo_arg: ECHO_TEXT})

        progress_seen = 0

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            nonlocal progress_seen
            progress_seen += 1

        slow = await session.call_tool(
            args.slow_tool, dict(args.slow_args), progress_callback=on_progress
        )

        report = {
            "transport": args.transport,
            "server_name": init.server_info.name,
            "tools": sorted(tools),
            "echo": result_text(args.echo_tool, echo),
            "progress": progress_seen,
            "slow_result": result_text(args.slow_tool, slow),
            "cancel": await call_and_cancel(session, write_stream, args),
        }
        # The session outlives the cancelled call.
        echo_again = await session.call_tool(args.echo_tool, {args.echo_arg: ECHO_TEXT})
        report["echo_after_cancel"] = result_text(args.echo_tool, echo_again)
        if args.call_blocked:
            try:
                result = await session.call_tool(args.call_blocked, {})
            except MCPError as error:
                report["blocked"] = {"code": error.error.code, "message": error.error.message}
            else:
                raise InteropFailure(
                    f"tool {args.call_blocked} was not refused: {result.model_dump_json()}"
                )
        return report


def describe(exc: BaseException) -> str:
    """One line naming the innermost causes, since task groups wrap them."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in exc.exceptions)
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    try:
        with anyio.fail_after(OVERALL_TIMEOUT_SECS):
            return await run_session(args)
    except TimeoutError as exc:
        raise InteropFailure(f"no complete session within {OVERALL_TIMEOUT_SECS:.0f} s") from exc


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        report = anyio.run(main_async, args)
    except Exception as exc:
        print(f"python_client: {args.transport} {args.url}: {describe(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
