// Drives LibreChat's code execution tool (createCodeExecutionTool from @librechat/agents)
// the way LibreChat's ToolNode does, without a model: tool calls with {lang, code}, the
// second one carrying the first one's session_id. The base URL comes from
// LIBRECHAT_CODE_BASEURL (read by the package), the key from KCR_CODE_API_KEY.
// Prints one JSON line: what each call returned (content text + artifact).
const { createCodeExecutionTool } = require('@librechat/agents');

async function main() {
  const tool = createCodeExecutionTool({
    authHeaders: { 'x-api-key': process.env.KCR_CODE_API_KEY },
  });
  const calls = [];
  const first = await tool.invoke({
    type: 'tool_call',
    id: 'call-1',
    name: tool.name,
    args: {
      lang: 'py',
      code: "x = 6 * 7\nopen('/mnt/data/answer.txt', 'w').write(str(x))\nprint(x)",
    },
  });
  calls.push({ content: first.content, artifact: first.artifact });
  const sessionId = first.artifact && first.artifact.session_id;
  const second = await tool.invoke({
    type: 'tool_call',
    id: 'call-2',
    name: tool.name,
    // What LibreChat's ToolNode injects: the session and the files of the last call.
    session_id: sessionId,
    _injected_files: (first.artifact.files || []).map((f) => ({
      id: f.id,
      session_id: sessionId,
      name: f.name,
    })),
    args: { lang: 'py', code: "print(x + 1, open('/mnt/data/answer.txt').read())" },
  });
  calls.push({ content: second.content, artifact: second.artifact });
  let failure = null;
  const stranger = createCodeExecutionTool({ authHeaders: { 'x-api-key': 'not-a-key' } });
  try {
    await stranger.invoke({
      type: 'tool_call',
      id: 'call-3',
      name: stranger.name,
      args: { lang: 'py', code: 'print(1)' },
    });
  } catch (e) {
    failure = String(e.message || e);
  }
  process.stdout.write(JSON.stringify({ calls, failure }) + '\n');
}

main().catch((e) => {
  process.stderr.write(String((e && e.stack) || e) + '\n');
  process.exit(1);
});
