'use strict';
// Type checking of TypeScript cells in the context of the cells that ran before.
//
// `new CellTypeChecker(ts)` keeps one TypeScript LanguageService over an in-memory host with two
// script files (not modules, so their top-level names are global to each other):
//   kcr-history.ts  the declarations of the earlier successful cells, newest wins per name
//   kcr-cell.ts     the cell being checked
// plus `kcr-globals.d.ts`, the Node.js globals the `vm` context offers (loosely typed: the
// machine has no @types/node). The lib files are parsed once and kept by the service, so a
// check after the first only re-parses the two small files and re-checks the cell.
//
// `check(code)` returns `{errors, declarations}`: `errors` are the compiler's messages formatted
// as `cell.ts(LINE,COL): error TSNNNN: text` (empty when the cell type-checks), `declarations`
// the cell's top-level declarations to hand to `remember()` once the cell ran without error.
// Diagnostics that do not apply to a notebook cell are ignored: top-level `await` in a script,
// modules without type declarations, and names that only clash with an earlier cell's
// declaration of the same name (a cell may redefine `var x` or `function f`).

const HISTORY = 'kcr-history.ts';
const CELL = 'kcr-cell.ts';
const GLOBALS = 'kcr-globals.d.ts';

const GLOBALS_TEXT = `
declare var console: {
  log(...args: any[]): void; error(...args: any[]): void; warn(...args: any[]): void;
  info(...args: any[]): void; debug(...args: any[]): void; dir(obj: any, options?: any): void;
  table(data: any, columns?: string[]): void; time(label?: string): void;
  timeEnd(label?: string): void; trace(...args: any[]): void; [name: string]: any;
};
declare function display(value: any): void;
declare namespace display {
  function html(html: string): void;
  function png(png: any): void;
  function json(obj: any): void;
  function markdown(md: string): void;
}
declare var require: any;
declare var module: any;
declare var exports: any;
declare var process: any;
declare var Buffer: any;
declare var __filename: string;
declare var __dirname: string;
declare function setTimeout(callback: (...args: any[]) => void, ms?: number, ...args: any[]): any;
declare function clearTimeout(handle: any): void;
declare function setInterval(callback: (...args: any[]) => void, ms?: number, ...args: any[]): any;
declare function clearInterval(handle: any): void;
declare function setImmediate(callback: (...args: any[]) => void, ...args: any[]): any;
declare function clearImmediate(handle: any): void;
declare function queueMicrotask(callback: () => void): void;
declare function structuredClone<T>(value: T, options?: any): T;
declare function fetch(input: any, init?: any): Promise<any>;
declare var URL: any;
declare var URLSearchParams: any;
declare var TextEncoder: any;
declare var TextDecoder: any;
`;

// Diagnostics that are not errors in a notebook cell.
const IGNORED = new Set([
  1375, // 'await' at the top level needs a module: cells run top-level await themselves
  1378, // top-level 'await' needs module/target settings
  1431, // 'for await' at the top level needs a module
  1432, // 'for await' at the top level needs module/target settings
  2307, // cannot find module: no type declarations here; the runtime reports a missing module
  7016, // module without declaration file
  1208, // isolatedModules: file is not a module
]);
// Clashes with a declaration of the same name: ignored when the other one is in the history.
const CLASHES = new Set([2300, 2393, 2403, 2451, 2567, 2440, 2397]);

class CellTypeChecker {
  constructor(ts) {
    this.ts = ts;
    this.entries = []; // [{names: Set<string>, text}] from earlier cells, oldest first
    this.versions = { [HISTORY]: 0, [CELL]: 0, [GLOBALS]: 0 };
    this.texts = { [HISTORY]: '', [CELL]: '', [GLOBALS]: GLOBALS_TEXT };
    this.snapshots = new Map(); // lib file name -> snapshot (read once)
    const options = {
      target: ts.ScriptTarget.ES2022,
      lib: ['lib.es2022.d.ts'],
      module: ts.ModuleKind.CommonJS,
      moduleResolution: ts.ModuleResolutionKind.NodeJs,
      esModuleInterop: true,
      strict: false,
      noImplicitAny: false,
      skipLibCheck: true,
      noEmit: true,
      types: [],
    };
    const files = [GLOBALS, HISTORY, CELL];
    const host = {
      getCompilationSettings: () => options,
      getScriptFileNames: () => files,
      getScriptVersion: (name) => String(this.versions[name] ?? 0),
      getScriptSnapshot: (name) => {
        if (name in this.texts) return ts.ScriptSnapshot.fromString(this.texts[name]);
        if (!this.snapshots.has(name)) {
          const text = ts.sys.readFile(name);
          this.snapshots.set(name, text === undefined ? undefined : ts.ScriptSnapshot.fromString(text));
        }
        return this.snapshots.get(name);
      },
      getCurrentDirectory: () => process.cwd(),
      getDefaultLibFileName: (o) => ts.getDefaultLibFilePath(o),
      fileExists: (name) => name in this.texts || ts.sys.fileExists(name),
      readFile: (name) => (name in this.texts ? this.texts[name] : ts.sys.readFile(name)),
      readDirectory: ts.sys.readDirectory,
      directoryExists: ts.sys.directoryExists,
      getDirectories: ts.sys.getDirectories,
    };
    this.service = ts.createLanguageService(host, ts.createDocumentRegistry());
  }

  _set(name, text) {
    if (this.texts[name] !== text) {
      this.texts[name] = text;
      this.versions[name] += 1;
    }
  }

  check(code) {
    const ts = this.ts;
    const declarations = topLevelDeclarations(ts, code);
    const redeclared = new Set(declarations.flatMap((d) => [...d.names]));
    const history = this.entries.filter((e) => ![...e.names].some((n) => redeclared.has(n)));
    this._set(HISTORY, history.map((e) => e.text).join('\n'));
    this._set(CELL, code);
    const diagnostics = [
      ...this.service.getSyntacticDiagnostics(CELL),
      ...this.service.getSemanticDiagnostics(CELL),
    ];
    const errors = diagnostics.filter((d) => d.category === ts.DiagnosticCategory.Error && !this._ignored(d));
    return { errors: errors.map((d) => format(ts, d)), declarations };
  }

  _ignored(d) {
    if (IGNORED.has(d.code)) return true;
    if (!CLASHES.has(d.code)) return false;
    return (d.relatedInformation || []).every((r) => r.file && r.file.fileName !== CELL);
  }

  /** Add a successful cell's declarations; they replace earlier ones of the same names. */
  remember(declarations) {
    const names = new Set(declarations.flatMap((d) => [...d.names]));
    this.entries = this.entries.filter((e) => ![...e.names].some((n) => names.has(n)));
    this.entries.push(...declarations);
  }
}

function format(ts, d) {
  const text = ts.flattenDiagnosticMessageText(d.messageText, '\n');
  if (d.file && d.start !== undefined) {
    const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
    return `cell.ts(${line + 1},${character + 1}): error TS${d.code}: ${text}`;
  }
  return `error TS${d.code}: ${text}`;
}

function boundNames(ts, name, out) {
  if (ts.isIdentifier(name)) out.add(name.text);
  else for (const element of name.elements || []) if (element.name) boundNames(ts, element.name, out);
  return out;
}

/** `[{names, text}]`: each top-level declaration of a cell as source text a later cell can see. */
function topLevelDeclarations(ts, code) {
  const sf = ts.createSourceFile(CELL, code, ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS);
  const text = (node) => code.slice(node.getStart(sf), node.end);
  const out = [];
  for (const st of sf.statements) {
    if (ts.isVariableStatement(st)) {
      const flags = st.declarationList.flags;
      const keyword = flags & ts.NodeFlags.Const ? 'const' : flags & ts.NodeFlags.Let ? 'let' : 'var';
      for (const decl of st.declarationList.declarations) {
        out.push({ names: boundNames(ts, decl.name, new Set()), text: `${keyword} ${text(decl)};` });
      }
    } else if (ts.isImportDeclaration(st) && st.importClause && ts.isStringLiteral(st.moduleSpecifier)) {
      // imports would make the history a module: turn them into typed globals
      const spec = JSON.stringify(st.moduleSpecifier.text);
      const clause = st.importClause;
      if (clause.name) out.push({ names: new Set([clause.name.text]), text: `declare const ${clause.name.text}: any;` });
      const bindings = clause.namedBindings;
      if (bindings && ts.isNamespaceImport(bindings)) {
        out.push({ names: new Set([bindings.name.text]), text: `declare const ${bindings.name.text}: typeof import(${spec});` });
      } else if (bindings) {
        for (const el of bindings.elements) {
          const from = (el.propertyName || el.name).text;
          out.push({ names: new Set([el.name.text]), text: `declare const ${el.name.text}: typeof import(${spec})[${JSON.stringify(from)}];` });
        }
      }
    } else if (ts.isImportEqualsDeclaration(st)) {
      out.push({ names: new Set([st.name.text]), text: `declare const ${st.name.text}: any;` });
    } else if (
      (ts.isFunctionDeclaration(st) || ts.isClassDeclaration(st) || ts.isInterfaceDeclaration(st) ||
        ts.isTypeAliasDeclaration(st) || ts.isEnumDeclaration(st) || ts.isModuleDeclaration(st)) && st.name
    ) {
      // `export` would make the history a module
      const body = text(st).replace(/^export\s+(default\s+)?/, '');
      out.push({ names: new Set([st.name.text]), text: body });
    }
  }
  return out;
}

module.exports = { CellTypeChecker, topLevelDeclarations };
