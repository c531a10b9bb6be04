'use strict';
// The JavaScript / TypeScript worker: one long-lived Node.js process holding one `vm` context.
//
// Started by `python -m kcr_runner.node_worker LANGUAGE`, which arranges the descriptors:
//   3 = protocol in (runner -> worker), 4 = protocol out, 5/6 = read ends of the pipes that are
//   this process's (and its children's) descriptors 1/2, 7 = the runner's log.
// The worker protocol is in runner/README.md. A worker thread reads the protocol so that an
// interrupt reaches a cell stuck in synchronous code: it raises SIGINT in this process, which
// `vm` (breakOnSigint) turns into an exception in the running script.

const fs = require('fs');
const path = require('path');
const util = require('util');
const vm = require('vm');
const { Worker } = require('worker_threads');
const { createRequire } = require('module');
const { CellTypeChecker } = require('./typecheck.js');

const LANGUAGE = process.argv[2] || 'javascript';

// Re-open the protocol and log descriptors through /proc (new descriptors are close-on-exec),
// so programs the user starts do not inherit them.
function reopen(fd, flags) {
  try {
    const copy = fs.openSync(`/proc/self/fd/${fd}`, flags);
    fs.closeSync(fd);
    return copy;
  } catch (e) {
    return fd;
  }
}
const PROTO_OUT = reopen(4, 'w');
const LOG = reopen(7, 'w');
const log = (...args) => { try { fs.writeSync(LOG, `kcr node worker: ${util.format(...args)}\n`); } catch (e) { /* no log */ } };

function send(message) {
  fs.writeSync(PROTO_OUT, JSON.stringify(message) + '\n');
}

// ---- output: batched, capped stream events ------------------------------------------------
const SYNC_MARK = '\u0000KCR-SYNC\u0000';
const output = {
  maxChars: 10 * 1024 * 1024,
  requestId: null,
  chunks: [],
  cellChars: 0,
  truncated: false,
  lastFlush: 0,
  timer: null,
  begin(id) { this.requestId = id; this.cellChars = 0; this.truncated = false; this.lastFlush = 0; },
  write(name, text) {
    if (!text || this.truncated) return;
    const room = this.maxChars - this.cellChars;
    if (text.length > room) { text = text.slice(0, Math.max(room, 0)); this.truncated = true; }
    this.cellChars += text.length;
    if (text) this.chunks.push([this.requestId, name, text]);
    if (this.truncated) {
      this.chunks.push([this.requestId, 'stderr', `\n[kcr] output truncated: this cell wrote more than ${this.maxChars} characters of stream output; the rest is dropped.\n`]);
    }
    // Leading edge: the first write after a quiet spell goes out at once (so output streams
    // even while synchronous code keeps the event loop busy); later ones within 50 ms are
    // batched by the timer.
    if (Date.now() - this.lastFlush >= 50) this.flush();
    else if (!this.timer) this.timer = setTimeout(() => { this.timer = null; this.flush(); }, 50);
  },
  flush() {
    this.lastFlush = Date.now();
    const chunks = this.chunks;
    this.chunks = [];
    let merged = null;
    const out = [];
    for (const [id, name, text] of chunks) {
      if (merged && merged[0] === id && merged[1] === name) merged[2] += text;
      else { merged = [id, name, text]; out.push(merged); }
    }
    for (const [id, name, text] of out) send({ type: 'event', id, event: 'stream', content: { name, text } });
  },
};

// Output of child processes (descriptors 1/2) arrives on pipes 5/6.
const marksSeen = { stdout: 0, stderr: 0 };
const markWaiters = [];
function pumpPipe(fd, name) {
  const stream = fs.createReadStream(null, { fd, encoding: 'utf8', highWaterMark: 65536 });
  stream.on('data', (text) => {
    const parts = text.split(SYNC_MARK);
    output.write(name, parts.join(''));
    if (parts.length > 1) {
      marksSeen[name] += parts.length - 1;
      for (const waiter of markWaiters.splice(0)) waiter();
    }
  });
  stream.on('error', (e) => log(`pipe ${name}: ${e.message}`));
}
// Everything written to descriptors 1/2 before this call (by finished children) has arrived.
function syncPipes() {
  const target = { stdout: marksSeen.stdout + 1, stderr: marksSeen.stderr + 1 };
  try { fs.writeSync(1, SYNC_MARK); fs.writeSync(2, SYNC_MARK); } catch (e) { return Promise.resolve(); }
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 500);
    const check = () => {
      if (marksSeen.stdout >= target.stdout && marksSeen.stderr >= target.stderr) { clearTimeout(timer); resolve(); }
      else markWaiters.push(check);
    };
    check();
  });
}

// process.stdout/stderr writes go straight to the router: a synchronous write into our own
// pipe could fill it while nobody (this thread) reads it.
for (const [stream, name] of [[process.stdout, 'stdout'], [process.stderr, 'stderr']]) {
  stream.write = (chunk, encoding, callback) => {
    if (typeof encoding === 'function') callback = encoding;
    output.write(name, typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
    if (typeof callback === 'function') process.nextTick(callback);
    return true;
  };
}

// ---- the user's context -----------------------------------------------------------------
let currentId = null;
function emit(event, content) {
  output.flush();
  send({ type: 'event', id: currentId, event, content });
}

function mimeBundle(value) {
  if (value && typeof value === 'object' && !Buffer.isBuffer(value) && Object.keys(value).length && Object.keys(value).every((k) => k.includes('/'))) {
    return value; // already a MIME bundle: {"text/html": "..."}
  }
  return { 'text/plain': util.inspect(value, { colors: false, depth: 4 }) };
}
function display(value) { emit('display_data', { data: mimeBundle(value), metadata: {}, transient: {} }); }
display.html = (html) => display({ 'text/html': String(html), 'text/plain': '<HTML>' });
display.png = (png) => display({ 'image/png': Buffer.isBuffer(png) ? png.toString('base64') : String(png), 'text/plain': '<PNG image>' });
display.json = (obj) => display({ 'application/json': obj, 'text/plain': util.inspect(obj) });
display.markdown = (md) => display({ 'text/markdown': String(md), 'text/plain': String(md) });

const userConsole = new console.Console({ stdout: process.stdout, stderr: process.stderr });
const userRequire = createRequire(path.join(process.cwd(), '__kcr_cell__.js'));
const userModule = { exports: {} };
const sandbox = {
  console: userConsole, display, require: userRequire, module: userModule, exports: userModule.exports,
  process, Buffer, setTimeout, clearTimeout, setInterval, clearInterval, setImmediate, clearImmediate,
  queueMicrotask, URL, URLSearchParams, TextEncoder, TextDecoder, structuredClone, fetch: globalThis.fetch,
  __filename: path.join(process.cwd(), '__kcr_cell__.js'), __dirname: process.cwd(),
};
const context = vm.createContext(sandbox, { name: `kcr ${LANGUAGE}` });

// ---- TypeScript (loaded lazily; Debian's node-typescript or an npm install) --------------------
let ts = null;
function typescript() {
  if (ts) return ts;
  const candidates = [process.env.KCR_TYPESCRIPT, 'typescript', '/usr/share/nodejs/typescript', '/usr/lib/node_modules/typescript', '/usr/local/lib/node_modules/typescript'];
  for (const candidate of candidates) {
    if (!candidate) continue;
    try { ts = require(candidate); return ts; } catch (e) { /* next */ }
  }
  throw new Error('the TypeScript compiler is not installed (apt-get install node-typescript, or npm install typescript)');
}

class CellError extends Error {}

function transpile(code) {
  const t = typescript();
  const result = t.transpileModule(code, {
    reportDiagnostics: true,
    compilerOptions: { target: t.ScriptTarget.ES2022, module: t.ModuleKind.CommonJS, esModuleInterop: true, sourceMap: false, removeComments: false },
    fileName: 'cell.ts',
  });
  const errors = (result.diagnostics || []).filter((d) => d.category === t.DiagnosticCategory.Error);
  if (errors.length) {
    const lines = errors.map((d) => {
      const text = t.flattenDiagnosticMessageText(d.messageText, '\n');
      if (d.file && d.start !== undefined) {
        const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
        return `cell.ts(${line + 1},${character + 1}): error TS${d.code}: ${text}`;
      }
      return `error TS${d.code}: ${text}`;
    });
    const err = new CellError(lines[0]);
    err.name = 'TSError';
    err.traceback = lines;
    throw err;
  }
  // The CommonJS prologue would make every cell strict and touch `exports`: drop it.
  return result.outputText.replace(/^"use strict";\n/, '').replace(/^Object\.defineProperty\(exports, "__esModule", \{ value: true \}\);\n/m, '');
}

// A cell with top-level `await` runs as an async function; its top-level declarations are
// turned into assignments to the context's globals (so they persist) and its last expression
// statement is returned (so it is the cell's result). Uses TypeScript's parser when present.
function wrapAsync(code) {
  let t = null;
  try { t = typescript(); } catch (e) { /* no parser: plain wrap */ }
  if (!t) return `(async () => {\n${code}\n})()`;
  const sf = t.createSourceFile('cell.js', code, t.ScriptTarget.ES2022, true, t.ScriptKind.JS);
  const pieces = [];
  const statements = sf.statements;
  statements.forEach((st, i) => {
    const text = code.slice(st.getStart(sf), st.end);
    if (t.isVariableStatement(st)) {
      for (const decl of st.declarationList.declarations) {
        const init = decl.initializer ? code.slice(decl.initializer.getStart(sf), decl.initializer.end) : 'undefined';
        const target = code.slice(decl.name.getStart(sf), decl.name.end);
        pieces.push(t.isIdentifier(decl.name) ? `globalThis.${target} = (${init});` : `(${target} = (${init}));`);
      }
    } else if ((t.isFunctionDeclaration(st) || t.isClassDeclaration(st)) && st.name) {
      pieces.push(`globalThis.${st.name.text} = ${text};`);
    } else if (i === statements.length - 1 && t.isExpressionStatement(st)) {
      pieces.push(`return (${code.slice(st.expression.getStart(sf), st.expression.end)});`);
    } else {
      pieces.push(text);
    }
  });
  return `(async () => {\n${pieces.join('\n')}\n})()`;
}

let interruptReject = null;
// Set by the reader thread before it raises SIGINT: 1 = user interrupt, 2 = runner timeout.
const interruptFlag = new Int32Array(new SharedArrayBuffer(4));
let interruptText = '';
function pendingInterrupt() {
  const reason = Atomics.load(interruptFlag, 0);
  if (!reason) return null;
  return { reason: reason === 2 ? 'timeout' : 'user', message: interruptText || (reason === 2 ? 'the cell ran longer than the runner\'s time limit' : '') };
}
function interruptError(message) {
  const err = new CellError(message.reason === 'timeout' ? (message.message || 'the cell timed out') : 'the cell was interrupted');
  err.name = message.reason === 'timeout' ? 'TimeoutError' : 'KeyboardInterrupt';
  err.traceback = [`${err.name}: ${err.message}`];
  return err;
}
process.on('SIGINT', () => {
  // Outside synchronous script execution (awaiting a promise): abandon the cell's await.
  const pending = pendingInterrupt();
  if (interruptReject && pending) interruptReject(interruptError(pending));
});

// TypeScript cells are type-checked against the declarations of the cells that ran before
// (typecheck.js); a type error is the cell's error and the cell does not run.
let typeChecker = null;
function cellTypeChecker() {
  if (!typeChecker) typeChecker = new CellTypeChecker(typescript());
  return typeChecker;
}

function typeCheck(code) {
  const { errors, declarations } = cellTypeChecker().check(code);
  if (errors.length) {
    const err = new CellError(errors[0]);
    err.name = 'TSError';
    err.traceback = errors;
    throw err;
  }
  return declarations;
}

async function runCode(code) {
  if (LANGUAGE === 'typescript') {
    const declarations = typeCheck(code);
    const pending = pendingInterrupt(); // an interrupt that came while the checker ran
    if (pending) throw interruptError(pending);
    code = transpile(code);
    // Remembered once the cell runs, also when it then throws: the `var`s and functions it
    // declared exist in the context from now on, as they do in JavaScript.
    cellTypeChecker().remember(declarations);
  }
  let script;
  let isAsync = false;
  try {
    script = new vm.Script(code, { filename: 'cell.js' });
  } catch (e) {
    if (e instanceof SyntaxError && /await|async/.test(e.message)) {
      script = new vm.Script(wrapAsync(code), { filename: 'cell.js' });
      isAsync = true;
    } else {
      throw e;
    }
  }
  let value = script.runInContext(context, { breakOnSigint: true, displayErrors: false });
  if (isAsync || (value && typeof value.then === 'function' && isAsync)) {
    value = await new Promise((resolve, reject) => {
      interruptReject = reject;
      Promise.resolve(value).then(resolve, reject);
    });
  }
  return value;
}

function errorContent(e) {
  if (e instanceof CellError || (e && e.traceback)) return { ename: e.name, evalue: e.message, traceback: e.traceback };
  if (e && e.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') {
    return errorContent(interruptError(pendingInterrupt() || { reason: 'user' }));
  }
  if (e instanceof Error || (e && typeof e === 'object' && 'stack' in e && 'message' in e)) {
    const stack = String(e.stack || `${e.name}: ${e.message}`).split('\n');
    const cut = stack.findIndex((l) => /node:vm|node:internal|kcr_runner\/node_worker/.test(l));
    if (cut > 0) stack.length = cut;  // the worker's own frames are not the user's
    return { ename: e.name || 'Error', evalue: String(e.message), traceback: stack };
  }
  return { ename: 'Error', evalue: util.inspect(e), traceback: [`Uncaught ${util.inspect(e)}`] };
}

// ---- requests ------------------------------------------------------------------------------
let executionCount = 1;
let executing = false;

async function execute(id, content) {
  const code = String(content.code || '');
  const silent = Boolean(content.silent);
  const count = executionCount;
  if (!silent) executionCount += 1;
  send({ type: 'event', id, event: 'execute_input', content: { code, execution_count: count } });
  output.begin(id);
  currentId = id;
  Atomics.store(interruptFlag, 0, 0);
  interruptText = '';
  executing = true;
  let error = null;
  let value;
  try {
    value = await runCode(code);
  } catch (e) {
    error = errorContent(e);
  } finally {
    executing = false;
    interruptReject = null;
  }
  const pending = pendingInterrupt();
  if (pending && !error) error = errorContent(interruptError(pending));
  Atomics.store(interruptFlag, 0, 0);
  await syncPipes();
  if (!error && value !== undefined && !silent) {
    emit('execute_result', { execution_count: count, data: mimeBundle(value), metadata: {} });
  }
  if (error) emit('error', error);
  output.flush();
  output.begin(null);
  currentId = null;
  const reply = { execution_count: count, payload: [], user_expressions: {} };
  return error ? { ...reply, status: 'error', ...error } : { ...reply, status: 'ok' };
}

function complete(content) {
  const code = String(content.code || '');
  const cursor = Number(content.cursor_pos ?? code.length);
  const match = /[A-Za-z_$][\w$]*$/.exec(code.slice(0, cursor));
  const prefix = match ? match[0] : '';
  const names = new Set([...Object.getOwnPropertyNames(context), ...Object.getOwnPropertyNames(globalThis)]);
  const matches = [...names].filter((n) => n.startsWith(prefix) && !n.startsWith('__kcr')).sort();
  return { status: 'ok', matches, cursor_start: cursor - prefix.length, cursor_end: cursor, metadata: {} };
}

const REPLY_TYPES = {
  execute: 'execute_reply', complete: 'complete_reply', inspect: 'inspect_reply', is_complete: 'is_complete_reply',
  history: 'history_reply', comm_info: 'comm_info_reply', comm_open: 'comm_reply', comm_msg: 'comm_reply',
  comm_close: 'comm_reply', snapshot: 'snapshot_reply', restore: 'restore_reply',
};

async function handle(message) {
  const { id, op } = message;
  const content = message.content || {};
  let reply;
  try {
    if (op === 'execute') reply = await execute(id, content);
    else if (op === 'complete') reply = complete(content);
    else if (op === 'inspect') reply = { status: 'ok', found: false, data: {}, metadata: {} };
    else if (op === 'is_complete') reply = { status: 'unknown' };
    else if (op === 'history') reply = { status: 'ok', history: [] };
    else if (op === 'comm_info') reply = { status: 'ok', comms: {} };
    else if (op === 'snapshot' || op === 'restore') {
      reply = { status: 'error', reason: 'not_supported', message: `the ${LANGUAGE} kernel cannot save its in-memory state; only the workspace files are kept` };
    } else {
      reply = { status: 'error', ename: 'NotImplementedError', evalue: `${op} is not supported by this kernel`, traceback: [] };
      if (op.startsWith('comm_')) send({ type: 'event', id, event: 'error', content: reply });
    }
  } catch (e) {
    reply = { status: 'error', ...errorContent(e) };
  }
  send({ type: 'reply', id, msg_type: REPLY_TYPES[op] || 'error', content: reply });
}

// ---- the protocol reader thread --------------------------------------------------------------
const READER = `
const { parentPort, workerData } = require('worker_threads');
const fs = require('fs');
let buffer = '';
const chunk = Buffer.alloc(65536);
for (;;) {
  let n;
  try { n = fs.readSync(workerData.fd, chunk, 0, chunk.length, null); } catch (e) { if (e.code === 'EAGAIN' || e.code === 'EINTR') continue; n = 0; }
  if (n === 0) { parentPort.postMessage({ type: '__eof' }); break; }
  buffer += chunk.toString('utf8', 0, n);
  let i;
  while ((i = buffer.indexOf('\\n')) >= 0) {
    const line = buffer.slice(0, i);
    buffer = buffer.slice(i + 1);
    let message;
    try { message = JSON.parse(line); } catch (e) { continue; }
    if (message.type === 'interrupt') {
      // the reason first (the main thread may be stuck in synchronous code), then the signal
      Atomics.store(workerData.flag, 0, message.reason === 'timeout' ? 2 : 1);
      parentPort.postMessage(message);
      process.kill(process.pid, 'SIGINT');
    } else {
      parentPort.postMessage(message);
    }
  }
}
`;

function main() {
  const queue = [];
  let busy = false;
  let configured = false;
  const pump = async () => {
    if (busy) return;
    busy = true;
    while (queue.length) await handle(queue.shift());
    busy = false;
  };
  const reader = new Worker(READER, { eval: true, workerData: { fd: reopen(3, 'r'), flag: interruptFlag } });
  reader.on('message', (message) => {
    if (message.type === '__eof') process.exit(0);
    if (!configured) {
      if (message.type !== 'configure') { log('expected a configure message first'); process.exit(2); }
      configured = true;
      output.maxChars = Number(message.max_output_bytes || output.maxChars);
      send({ type: 'ready', language: LANGUAGE, pid: process.pid, language_version: process.versions.node });
      // Parse the TypeScript lib files now (about a second), while the pod waits in the pool,
      // not when the user's first cell arrives.
      if (LANGUAGE === 'typescript') setImmediate(() => { try { cellTypeChecker().check(''); } catch (e) { log(`TypeScript warm-up: ${e.message}`); } });
      return;
    }
    if (message.type === 'request') { queue.push(message); pump(); }
    else if (message.type === 'interrupt') { if (executing) interruptText = String(message.message || ''); }
    else if (message.type === 'control' && message.op === 'set_env') {
      Object.assign(process.env, (message.content || {}).env || {});
      send({ type: 'reply', id: message.id, msg_type: 'set_env_reply', content: { status: 'ok' } });
    }
  });
  reader.on('error', (e) => { log(`protocol reader failed: ${e.stack}`); process.exit(3); });
  pumpPipe(5, 'stdout');
  pumpPipe(6, 'stderr');
  process.on('uncaughtException', (e) => emitBackgroundError(e));
  process.on('unhandledRejection', (e) => emitBackgroundError(e));
}

// An error thrown by a callback after its cell ended (a timer, a promise): show it, keep going.
function emitBackgroundError(e) {
  const content = errorContent(e);
  output.write('stderr', `${content.traceback.join('\n')}\n`);
}

main();
