// The VS Code client of `l3m lsp`: starts the server over stdio for .l3m files and restarts it when its
// settings change. Everything the editor shows (diagnostics, hover, definitions, completion,
// formatting, outline) comes from the server; this file only wires it in.
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function serverOptions() {
  const config = vscode.workspace.getConfiguration("l3m");
  const command = config.get("server.path") || "l3m";
  const args = config.get("server.args") || ["lsp"];
  const folder = vscode.workspace.workspaceFolders && vscode.workspace.workspaceFolders[0];
  // The server resolves tokenizer paths from its working directory, as `l3m lint` does from a shell.
  const options = folder ? { cwd: folder.uri.fsPath } : {};
  return { command, args, transport: TransportKind.stdio, options };
}

function clientOptions() {
  return {
    documentSelector: [
      { scheme: "file", language: "l3m" },
      { scheme: "untitled", language: "l3m" },
    ],
    synchronize: { fileEvents: vscode.workspace.createFileSystemWatcher("**/*.l3m") },
  };
}

async function start() {
  client = new LanguageClient("l3m", "l3m language server", serverOptions(), clientOptions());
  try {
    await client.start();
  } catch (err) {
    const { command } = serverOptions();
    vscode.window.showErrorMessage(
      `l3m: could not start '${command} lsp' (${err && err.message ? err.message : err}). ` +
        "Install l3m with its 'lsp' extra (pip install 'l3m[lsp]') and set 'l3m.server.path' to its executable."
    );
  }
}

async function restart() {
  if (client) {
    await client.stop().catch(() => undefined);
  }
  await start();
}

async function activate(context) {
  context.subscriptions.push(vscode.commands.registerCommand("l3m.restartServer", restart));
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (event.affectsConfiguration("l3m.server")) {
        restart();
      }
    })
  );
  await start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
