#!/usr/bin/env python3
"""The gateway as the client under test of the MCP conformance suite's auth scenarios.

The suite (`conformance client --command "... auth_client.py --gateway BIN"`) starts a
scenario's MCP server and authorization server, then runs this script with the server's
URL as the last argument. The script does what a person and an MCP client would do with
the gateway in front of that server:

1. writes a gateway.toml with one OAuth route, `conformance`, whose upstream is the
   scenario's server, and starts the gateway on 127.0.0.1:0 with a fresh token store;
2. signs in as a browser would, without one: `GET /auth/conformance/start`, follow the
   redirect to the scenario's authorization endpoint (which approves at once), follow its
   redirect back to the gateway's `/oauth/callback`;
3. connects the official MCP Python SDK client to the gateway's endpoint for the route
   (no credentials of its own), initializes, lists the tools and calls each of them;
4. when the gateway answers that the route needs a new sign-in (more scope is needed),
   signs in again and repeats the call, a bounded number of times.

What the scenario tells its client goes into the route's configuration the way an
operator would write it: a pre-registered client's id and secret (`MCP_CONFORMANCE_CONTEXT`;
the secret through an environment variable, never in the file), or the URL of a Client ID
Metadata Document hosted elsewhere.

The script prints what it did, one line per step, and exits 0 when every step worked.
Everything it starts is stopped when it ends, also on SIGTERM from the suite.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx2
import mcp.types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

ROUTE = "conformance"
START_TIMEOUT_SECS = 15.0
SESSION_TIMEOUT_SECS = 20.0
# A route asking for more scope gets a new sign-in; a server that never grants enough
# must not make the client sign in forever.
MAX_SIGN_INS = 3
# The Client ID Metadata Document that the `auth/basic-cimd` scenario expects as client id.
CIMD_URL = "https://conformance-test.local/client-metadata.json"
SECRET_ENV = "CONFORMANCE_CLIENT_SECRET"
CLIENT_INFO = types.Implementation(name="mcp-u2m-gateway-conformance", version="1.0.0")


class Failure(Exception):
    """A step did not go as a working gateway would make it go."""


def say(message: str) -> None:
    print(f"auth_client: {message}", flush=True)


def toml_string(value: str) -> str:
    return json.dumps(value)


def upstream_base(server_url: str) -> str:
    """The route's upstream: the server URL without its `/mcp` endpoint."""
    parsed = urllib.parse.urlsplit(server_url)
    path = parsed.path.rstrip("/")
    if path.endswith("/mcp"):
        path = path[: -len("/mcp")]
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))


def route_auth(scenario: str, context: dict) -> tuple[list[str], dict[str, str]]:
    """The `[routes.auth]` lines for a scenario, and the environment they read."""
    lines = ['kind = "oauth"']
    env: dict[str, str] = {}
    if "client_id" in context:
        lines.append(f"client_id = {toml_string(context['client_id'])}")
        if "client_secret" in context:
            lines.append(f"client_secret_env = {toml_string(SECRET_ENV)}")
            env[SECRET_ENV] = context["client_secret"]
    if scenario == "auth/basic-cimd":
        lines.append(f"client_metadata_url = {toml_string(CIMD_URL)}")
    return lines, env


def write_config(work: Path, server_url: str, scenario: str, context: dict) -> dict[str, str]:
    auth, env = route_auth(scenario, context)
    text = "\n".join(
        [
            "[server]",
            'listen = "127.0.0.1:0"',
            "",
            "[store]",
            f"dir = {toml_string(str(work / 'store'))}",
            "",
            "[[routes]]",
            f'name = "{ROUTE}"',
            f'prefix = "/{ROUTE}"',
            f"upstream = {toml_string(upstream_base(server_url))}",
            "[routes.auth]",
            *auth,
            "",
        ]
    )
    (work / "gateway.toml").write_text(text)
    return env


def start_gateway(binary: str, work: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Starts the gateway; returns the process and its base URL, read from its banner."""
    log = (work / "gateway.log").open("wb")
    process = subprocess.Popen(
        [binary, "serve", "--config", str(work / "gateway.toml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env, "RUST_LOG": os.environ.get("RUST_LOG", "warn,mcp_u2m_gateway=debug")},
    )
    deadline = time.monotonic() + START_TIMEOUT_SECS
    pattern = re.compile(rb"listening on (http://[0-9.]+:[0-9]+)")
    while time.monotonic() < deadline:
        found = pattern.search((work / "gateway.log").read_bytes())
        if found:
            return process, found.group(1).decode()
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise Failure(f"the gateway did not start:\n{(work / 'gateway.log').read_text()}")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


# Cookies kept like a browser's: the gateway binds each sign-in to the browser that started
# it with a cookie, which must come back with the callback.
OPENER = urllib.request.build_opener(
    urllib.request.ProxyHandler({}),
    urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
    NoRedirect(),
)


def get(url: str):
    """One GET without following redirects: status, headers (any case), body."""
    try:
        with OPENER.open(url, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode(errors="replace")


def sign_in(gateway: str) -> None:
    """Start → the authorization server's approval → the gateway's callback."""
    status, headers, body = get(f"{gateway}/auth/{ROUTE}/start")
    if status == 302 and urllib.parse.urlsplit(headers["Location"]).path.startswith("/auth/"):
        # The gateway first moves the browser to its public URL, where the cookie belongs.
        status, headers, body = get(headers["Location"])
    if status != 302:
        raise Failure(f"sign-in start answered {status}: {body[:300]}")
    status, headers, body = get(headers["Location"])
    if status not in (302, 303):
        raise Failure(f"the authorization endpoint answered {status}: {body[:300]}")
    callback = urllib.parse.urljoin(gateway, headers["Location"])
    status, _, body = get(callback)
    if status != 200:
        raise Failure(f"the callback answered {status}: {body[:300]}")
    say("signed in")


def needs_sign_in(text: str) -> bool:
    return f"/auth/{ROUTE}/start" in text


async def call_with_sign_in(gateway: str, attempt, signed_in: list[int]):
    """Runs `attempt`; when the gateway asks for a new sign-in, signs in and runs it again."""
    while True:
        try:
            result = await attempt()
        except Exception as error:  # the SDK raises JSON-RPC errors as exceptions
            if not needs_sign_in(str(error)) or signed_in[0] >= MAX_SIGN_INS:
                raise
            say(f"the gateway asks for a new sign-in: {error}")
        else:
            text = "".join(
                block.text
                for block in getattr(result, "content", [])
                if isinstance(block, types.TextContent)
            )
            if not (getattr(result, "is_error", False) and needs_sign_in(text)):
                return result
            if signed_in[0] >= MAX_SIGN_INS:
                raise Failure(f"still refused after {MAX_SIGN_INS} sign-ins: {text}")
            say(f"the gateway asks for a new sign-in: {text}")
        await anyio.to_thread.run_sync(sign_in, gateway)
        signed_in[0] += 1


async def run_session(gateway: str, signed_in: list[int]) -> None:
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx2.AsyncClient(timeout=httpx2.Timeout(SESSION_TIMEOUT_SECS), trust_env=False)
        )
        read, write = await stack.enter_async_context(
            streamable_http_client(f"{gateway}/{ROUTE}/mcp", http_client=http)
        )
        session = await stack.enter_async_context(
            ClientSession(read, write, client_info=CLIENT_INFO)
        )
        init = await call_with_sign_in(gateway, session.initialize, signed_in)
        say(f"initialized with {init.server_info.name}")
        listing = await call_with_sign_in(gateway, session.list_tools, signed_in)
        names = [tool.name for tool in listing.tools]
        say(f"tools: {names}")
        for name in names:
            result = await call_with_sign_in(
                gateway, lambda name=name: session.call_tool(name, {}), signed_in
            )
            say(f"called {name}: is_error={result.is_error}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", required=True, help="the mcp-u2m-gateway binary")
    parser.add_argument("server_url", help="the scenario's MCP server (the suite adds it)")
    args = parser.parse_args(argv)

    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    work = Path(tempfile.mkdtemp(prefix="conformance-gateway-"))
    process = None

    # The suite stops a client that runs too long with SIGTERM; the gateway goes with it.
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        env = write_config(work, args.server_url, scenario, context)
        process, gateway = start_gateway(args.gateway, work, env)
        say(f"{scenario or 'scenario'}: gateway at {gateway} for {args.server_url}")
        sign_in(gateway)
        signed_in = [1]
        anyio.run(run_session, gateway, signed_in)
        say(f"done after {signed_in[0]} sign-in(s)")
        return 0
    except Exception as error:
        say(f"failed: {type(error).__name__}: {error}")
        log = work / "gateway.log"
        if log.exists():
            sys.stdout.write(log.read_text())
        return 1
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
