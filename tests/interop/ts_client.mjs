#!/usr/bin/env node
// Drive one MCP session through the gateway with the official TypeScript SDK client.
//
// The gateway's interoperability tests run this script with Node 22 against a gateway route
// to prove that a second real MCP client, not just our own test code, can talk through it.
// It connects over the transport named on the command line, initializes, lists the tools,
// calls `echo`, calls `slow_stream` with a progress callback, then starts a second slow
// call and cancels it with an AbortSignal once its first progress notification arrives (or
// after a short delay), and calls `echo` again to show that the session survived.
// It prints one JSON line that the calling test checks:
//
//     {"transport": ..., "server_name": ..., "tools": [...], "echo": ..., "progress": N,
//      "progress_callbacks": N, "slow_result": ..., "cancel": {"rejected", "code",
//      "message", "after_progress", "request_id", "notified"}, "echo_after_cancel": ...,
//      "sent": [...]}
//
// `progress` counts the slow call's progress notifications as they arrived on the
// transport, `progress_callbacks` the times the SDK ran the call's progress callback.
// `cancel.rejected` says the call's promise was rejected as cancelled, `cancel.notified`
// that the SDK sent `notifications/cancelled` for that request (JSON-RPC id
// `cancel.request_id`) and the gateway accepted it.
// `sent` lists the method of every message the client sent, in order ("response" for an
// answer to the server), so that the test can match them with what the upstream received.
// `--echo-arg`, `--slow-tool`, `--slow-args` and `--cancel-args` name the tools and
// arguments of servers other than the gateway's mock upstream.
//
// Any failure ends the process with status 1 and a one-line reason on stderr; bad arguments
// end it with status 2. The whole run is bounded by a timeout so a stuck stream fails the
// test instead of hanging it. Proxy settings in the environment are the caller's to clear.
//
// Usage:
//     node ts_client.mjs --sdk DIR --transport streamable|sse --url URL
//                        [--expect-tool NAME]... [--echo-tool NAME] [--echo-arg KEY]
//                        [--slow-tool NAME] [--slow-args JSON] [--cancel-args JSON]
//
// DIR is the installed `@modelcontextprotocol/sdk` package; the script lives outside its
// node_modules tree, so it loads the SDK's ES modules from there by path.

import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const OVERALL_TIMEOUT_MS = 30_000;
const ECHO_TEXT = "hello through the gateway";
const SLOW_ARGS = { steps: 3, interval_ms: 100 };
// Long enough that the call is still running when it is cancelled.
const CANCEL_ARGS = { steps: 50, interval_ms: 100 };
// When no progress notification comes first, the call is cancelled after this long.
const CANCEL_FALLBACK_MS = 1_000;
const CANCEL_REASON = "cancelled by the interop client";
const CLIENT_INFO = { name: "mcp-gateway-interop-ts-client", version: "1.0.0" };

/** A step of the session did not go as the gateway tests require. */
class InteropFailure extends Error {}

function usage(message) {
  process.stderr.write(`ts_client: ${message}\n`);
  process.exit(2);
}

function jsonOption(text, name) {
  try {
    return JSON.parse(text);
  } catch {
    return usage(`--${name} is not JSON: ${text}`);
  }
}

function parseCommandLine(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        sdk: { type: "string" },
        transport: { type: "string" },
        url: { type: "string" },
        "expect-tool": { type: "string", multiple: true, default: [] },
        "echo-tool": { type: "string", default: "echo" },
        "echo-arg": { type: "string", default: "text" },
        "slow-tool": { type: "string", default: "slow_stream" },
        "slow-args": { type: "string" },
        "cancel-args": { type: "string" },
      },
    }));
  } catch (error) {
    return usage(error.message);
  }
  if (!values.sdk || !values.url) {
    usage("--sdk and --url are required");
  }
  if (values.transport !== "streamable" && values.transport !== "sse") {
    usage("--transport must be streamable or sse");
  }
  return {
    sdk: values.sdk,
    transport: values.transport,
    url: values.url,
    expectTools: values["expect-tool"],
    echoTool: values["echo-tool"],
    echoArg: values["echo-arg"],
    slowTool: values["slow-tool"],
    slowArgs: values["slow-args"] ? jsonOption(values["slow-args"], "slow-args") : SLOW_ARGS,
    cancelArgs: values["cancel-args"]
      ? jsonOption(values["cancel-args"], "cancel-args")
      : CANCEL_ARGS,
  };
}

/** The SDK's modules this script uses, loaded from the package directory `dir`. */
async function loadSdk(dir) {
  const load = (path) => import(pathToFileURL(join(dir, "dist/esm", path)).href);
  const [client, streamable, sse, types] = await Promise.all([
    load("client/index.js"),
    load("client/streamableHttp.js"),
    load("client/sse.js"),
    load("types.js"),
  ]);
  return {
    Client: client.Client,
    StreamableHTTPClientTransport: streamable.StreamableHTTPClientTransport,
    SSEClientTransport: sse.SSEClientTransport,
    McpError: types.McpError,
  };
}

function openTransport(sdk, args) {
  const url = new URL(args.url);
  if (args.transport === "sse") {
    return new sdk.SSEClientTransport(url);
  }
  return new sdk.StreamableHTTPClientTransport(url);
}

/**
 * What crossed the transport: every message the client sent, with the promise of its
 * delivery (the SDK sends a cancellation notice without waiting for it), and the progress
 * notifications that arrived, by progress token.
 */
class Traffic {
  constructor(transport) {
    this.sent = [];
    this.progress = new Map();
    const send = transport.send.bind(transport);
    transport.send = (message, options) => {
      const delivered = send(message, options);
      this.sent.push({ message, delivered });
      return delivered;
    };
  }

  /** Counts progress notifications on their way in; call after the client has connected. */
  watchIncoming(transport) {
    const deliver = transport.onmessage;
    transport.onmessage = (message, extra) => {
      if (message.method === "notifications/progress") {
        const token = message.params?.progressToken;
        this.progress.set(token, (this.progress.get(token) ?? 0) + 1);
      }
      deliver?.(message, extra);
    };
  }

  /** The id of the last `tools/call` of `tool` the client sent. */
  lastCallOf(tool) {
    const calls = this.sent.filter(
      ({ message }) => message.method === "tools/call" && message.params?.name === tool,
    );
    return calls.at(-1)?.message.id;
  }
}

function resultText(tool, result) {
  const text = result.content
    .filter((block) => block.type === "text")
    .map((block) => block.text)
    .join("");
  if (result.isError) {
    throw new InteropFailure(`tool ${tool} returned an error result: ${JSON.stringify(text)}`);
  }
  return text;
}

async function listAllTools(client) {
  // Ask for every page so a paginating upstream still yields the full set.
  const tools = [];
  let cursor;
  do {
    const listing = await client.listTools(cursor ? { cursor } : undefined);
    tools.push(...listing.tools.map((tool) => tool.name));
    cursor = listing.nextCursor;
  } while (cursor);
  return tools.sort();
}

async function callEcho(client, args) {
  const arguments_ = { [args.echoArg]: ECHO_TEXT };
  const result = await client.callTool({ name: args.echoTool, arguments: arguments_ });
  return resultText(args.echoTool, result);
}

/**
 * Calls the slow tool with a progress callback. The SDK runs that callback a microtask
 * after a notification arrives but settles the call at once on its response, so a last
 * notification that arrives together with the response never reaches the callback; the
 * notifications that arrived are therefore counted on the transport as well.
 */
async function callSlow(client, traffic, args) {
  let callbacks = 0;
  const result = await client.callTool(
    { name: args.slowTool, arguments: args.slowArgs },
    undefined,
    { onprogress: () => (callbacks += 1) },
  );
  const token = traffic.lastCallOf(args.slowTool);
  return {
    progress: traffic.progress.get(token) ?? 0,
    callbacks,
    text: resultText(args.slowTool, result),
  };
}

/**
 * Starts a slow call and aborts it at its first progress notification, or after
 * CANCEL_FALLBACK_MS without one; reports how the call ended and whether the SDK's
 * `notifications/cancelled` for it was delivered.
 */
async function callAndCancel(sdk, client, traffic, args) {
  const controller = new AbortController();
  let afterProgress = false;
  const abort = () => controller.abort(CANCEL_REASON);
  const fallback = setTimeout(abort, CANCEL_FALLBACK_MS);
  const onprogress = () => {
    if (!controller.signal.aborted) {
      afterProgress = true;
      abort();
    }
  };
  const call = client.callTool({ name: args.slowTool, arguments: args.cancelArgs }, undefined, {
    onprogress,
    signal: controller.signal,
  });

  const outcome = await call
    .then(
      (result) => {
        throw new InteropFailure(`the cancelled call completed: ${JSON.stringify(result)}`);
      },
      (error) => error,
    )
    .finally(() => clearTimeout(fallback));
  const rejected =
    controller.signal.aborted &&
    outcome instanceof sdk.McpError &&
    outcome.message.includes(CANCEL_REASON);
  return {
    rejected,
    code: outcome?.code ?? null,
    message: String(outcome?.message ?? outcome),
    after_progress: afterProgress,
    request_id: traffic.lastCallOf(args.slowTool) ?? null,
    notified: await cancellationDelivered(traffic, args.slowTool),
  };
}

/** Whether `notifications/cancelled` went out for the last call of `tool`, and arrived. */
async function cancellationDelivered(traffic, tool) {
  const requestId = traffic.lastCallOf(tool);
  const notice = traffic.sent.find(
    ({ message }) =>
      message.method === "notifications/cancelled" && message.params?.requestId === requestId,
  );
  if (requestId === undefined || !notice) {
    return false;
  }
  try {
    await notice.delivered;
    return true;
  } catch (error) {
    process.stderr.write(`ts_client: notifications/cancelled was not delivered: ${error}\n`);
    return false;
  }
}

async function runSession(sdk, args) {
  const client = new sdk.Client(CLIENT_INFO);
  // Late answers to the cancelled call land here: expected, so noted but not failures.
  client.onerror = (error) => process.stderr.write(`ts_client: ignored: ${describe(error)}\n`);
  const transport = openTransport(sdk, args);
  const traffic = new Traffic(transport);
  await client.connect(transport);
  traffic.watchIncoming(transport);
  try {
    const tools = await listAllTools(client);
    const missing = args.expectTools.filter((name) => !tools.includes(name)).sort();
    if (missing.length > 0) {
      throw new InteropFailure(`tools/list lacks expected tools ${missing}; got ${tools}`);
    }
    const echo = await callEcho(client, args);
    const slow = await callSlow(client, traffic, args);
    const cancel = await callAndCancel(sdk, client, traffic, args);
    return {
      transport: args.transport,
      server_name: client.getServerVersion()?.name ?? null,
      tools,
      echo,
      progress: slow.progress,
      progress_callbacks: slow.callbacks,
      slow_result: slow.text,
      cancel,
      echo_after_cancel: await callEcho(client, args),
      sent: traffic.sent.map(({ message }) => message.method ?? "response"),
    };
  } finally {
    await client.close();
  }
}

/** One line naming the error and its causes. */
function describe(error) {
  const parts = [];
  for (let at = error; at; at = at.cause) {
    parts.push(at instanceof Error ? `${at.name}: ${at.message}` : String(at));
  }
  return parts.join("; caused by ").replaceAll("\n", " ");
}

async function main(argv) {
  const args = parseCommandLine(argv);
  const timer = setTimeout(() => {
    process.stderr.write(`ts_client: no complete session within ${OVERALL_TIMEOUT_MS} ms\n`);
    process.exit(1);
  }, OVERALL_TIMEOUT_MS);
  try {
    const sdk = await loadSdk(args.sdk);
    const report = await runSession(sdk, args);
    process.stdout.write(`${JSON.stringify(report)}\n`);
    return 0;
  } catch (error) {
    process.stderr.write(`ts_client: ${args.transport} ${args.url}: ${describe(error)}\n`);
    return 1;
  } finally {
    clearTimeout(timer);
  }
}

// Exit at once: a stream the SDK still holds open must not keep the process alive.
process.exit(await main(process.argv.slice(2)));
