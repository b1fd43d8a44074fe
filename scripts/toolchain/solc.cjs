#!/usr/bin/env node
// A native-solc look-alike over solc-js (the official compiler as WebAssembly), so that
// py-solc-x / ape-solidity can compile offline. Only the calls Ape makes are supported:
// `--version` (answered by the generated shim without loading the compiler) and
// `--standard-json` reading the input from stdin. Sources are expected inline (Ape inlines
// them); imports that are not are resolved against --base-path and --include-path folders.
"use strict";
const fs = require("fs");
const path = require("path");

function option(args, name) {
  const values = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === name && i + 1 < args.length) values.push(args[i + 1]);
    else if (args[i].startsWith(name + "=")) values.push(args[i].slice(name.length + 1));
  }
  return values;
}

function main() {
  const args = process.argv.slice(2);
  const solc = require("solc");
  if (args.includes("--version")) {
    process.stdout.write(
      "solc, the solidity compiler commandline interface\nVersion: " + solc.version() + "\n"
    );
    return 0;
  }
  if (!args.includes("--standard-json")) {
    process.stderr.write("solc-js wrapper: only --version and --standard-json are supported\n");
    return 2;
  }
  const roots = [...option(args, "--base-path"), ...option(args, "--include-path"), process.cwd()];
  const findImports = (importPath) => {
    for (const root of roots) {
      const candidate = path.resolve(root, importPath);
      if (fs.existsSync(candidate)) return { contents: fs.readFileSync(candidate, "utf8") };
    }
    return { error: "File not found: " + importPath };
  };
  const input = fs.readFileSync(0, "utf8");
  process.stdout.write(solc.compile(input, { import: findImports }));
  return 0;
}

process.exitCode = main();
