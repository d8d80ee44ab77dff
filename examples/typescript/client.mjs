// One agent session with the official TypeScript MCP SDK: list the tools, run
// code in a sandbox, send a bad call, read the sandbox skill's guide; print what
// came back as JSON (tests/e2e runs this file).
//
//   npm install
//   node client.mjs stdio <python of the .venv> <data dir>   # starts `python -m runtime serve`
//   node client.mjs http http://127.0.0.1:8000/mcp <key>     # a server from `scripts/serve --http`
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [mode, target, secret] = process.argv.slice(2);
const transport =
  mode === "stdio"
    ? new StdioClientTransport({
        command: target,
        args: ["-m", "runtime", "serve"],
        env: { ...process.env, CLOUDSKILLS_HOME: secret, CLOUDSKILLS_POOL_SIZE: "1" },
      })
    : new StreamableHTTPClientTransport(new URL(target), {
        requestInit: { headers: { Authorization: `Bearer ${secret}` } },
      });

const client = new Client({ name: "cloudskills-typescript-example", version: "1.0.0" });
await client.connect(transport);
const tools = await client.listTools();
const run = await client.callTool({ name: "sandbox_run", arguments: { code: "print(6 * 7)" } });
const bad = await client.callTool({ name: "sandbox_run", arguments: { code: 5 } });
const guide = await client.readResource({ uri: "skill://sandbox/SKILL.md" });
console.log(
  JSON.stringify({
    tools: tools.tools.map((tool) => tool.name),
    stdout: run.structuredContent?.stdout,
    badIsError: bad.isError === true,
    badText: bad.content?.[0]?.text,
    guide: guide.contents?.[0]?.text?.slice(0, 40),
  }),
);
await client.close();
