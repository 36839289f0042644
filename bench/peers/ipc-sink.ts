// Benchmark peer: Node's child_process IPC handle passing. Counts the handles it
// receives (closing each), and reports when N have come.
const n = Number(process.argv[2]);
let got = 0;
process.on('message', (_msg: unknown, handle: { close?: () => void; destroy?: () => void } | undefined) => {
  if (handle) {
    if (handle.close) handle.close();
    else handle.destroy?.();
    got++;
  }
  if (got >= n) process.send!('done', () => process.disconnect());
});
process.send!('ready');
