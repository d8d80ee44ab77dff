// A client built on @modelcontextprotocol/ext-tasks, the official client side of MCP tasks
// (SEP-2663): on a 2026-07-28 connection it calls a sandbox_run that takes a few seconds,
// gets a task handle back, and lets ext-tasks poll the task (tasks/get) to its result.
// It prints what it saw as JSON (tests/e2e runs this file).
//
//   npm install
//   node tasks_client.mjs http://127.0.0.1:8000/mcp <key> [seconds]   # a server from `scripts/serve --http`
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { createTaskSessionFromClient, resultFromTaskOutcome } from "@modelcontextprotocol/ext-tasks/client";

const [url, key, seconds = "4"] = process.argv.slice(2);
const auth = { Authorization: `Bearer ${key}` };
const clientInfo = { name: "cloudskills-tasks-example", version: "1.0.0" };

const client = new Client(clientInfo, { versionNegotiation: { mode: { pin: "2026-07-28" } } });
await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: auth } }));
const protocolVersion = client.getNegotiatedProtocolVersion();

// ext-tasks sends tools/call and tasks/* itself, below the SDK, because the SDK's own codecs
// refuse a task handle. On 2026-07-28 every request stands alone, so that is one POST each,
// with the routing headers the Streamable HTTP transport asks for.
let nextId = 1;
async function rawDispatch(request, options = {}) {
  const message = { jsonrpc: "2.0", id: `tasks-${nextId++}`, ...request };
  const name = message.params?.name ?? message.params?.taskId;
  const response = await fetch(url, {
    method: "POST",
    signal: options.signal,
    headers: {
      ...auth,
      ...(options.context?.headers ?? {}),
      "Content-Type": "application/json",
      Accept: "application/json, text/event-stream",
      "MCP-Protocol-Version": protocolVersion,
      "Mcp-Method": message.method,
      ...(name === undefined ? {} : { "Mcp-Name": name }),
    },
    body: JSON.stringify(message),
  });
  const text = await response.text();
  // The answer comes as JSON, or as an SSE stream whose last message is the response.
  const payloads = response.headers.get("content-type")?.includes("text/event-stream")
    ? text
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => JSON.parse(line.slice(5)))
    : [JSON.parse(text)];
  const answer = payloads.find((payload) => payload.id === message.id);
  if (answer === undefined) throw new Error(`no response to ${message.method} (HTTP ${response.status}): ${text}`);
  return answer.error === undefined ? { kind: "result", result: answer.result } : { kind: "error", error: answer.error };
}

const session = createTaskSessionFromClient(client, {
  endpointId: `cloudskills:${url}`,
  rawDispatch,
  v2RequestFraming: { protocolVersion, clientInfo, clientCapabilities: {} },
  tools: { currentTool: () => undefined },
});
const seen = { protocolVersion, generation: session.capabilities.execution ? "tasks" : "none", polls: [] };
try {
  const code = `import time; time.sleep(${Number(seconds)}); print('slept ${seconds} s')`;
  const execution = await session.callTool("sandbox_run", { code, timeout_s: 60 });
  seen.kind = execution.kind;
  seen.taskId = execution.handle?.taskId;
  const { outcome } = await execution.settle({
    onEvent: (event) => {
      if (event.type === "task") seen.polls.push(event.task.status);
    },
  });
  const result = resultFromTaskOutcome(outcome);
  seen.status = outcome.status;
  seen.isError = result.isError === true;
  seen.stdout = result.structuredContent?.stdout;
  seen.resultTaskId = result.structuredContent?.task_id;

  // A failure of the tool itself is still a completed task, with isError.
  const failing = await session.callTool("sandbox_run", { code: "import time; time.sleep(60)", timeout_s: 3 });
  const failed = await failing.settle();
  seen.failingKind = failing.kind;
  seen.failingStatus = failed.outcome.status;
  seen.failingText = failed.outcome.status === "completed" ? failed.outcome.result.content?.[0]?.text : undefined;
} finally {
  await session.close();
  await client.close();
}
console.log(JSON.stringify(seen));
