// `backend-transfer supported`: what this build and this machine can do.
import { parseArgs } from 'node:util';
import { existsSync } from 'node:fs';
import { native } from '../native.js';
import type { Command } from './main.js';

export const supportedCommand: Command = {
  summary: 'print what this build and machine support (--json)',
  async run(argv) {
    const { values } = parseArgs({ args: argv, options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } });
    if (values.help) {
      console.log('usage: backend-transfer supported [--json]');
      return 0;
    }
    const facts = {
      scmMaxFd: native.SCM_MAX_FD,
      socketTypes: ['stream', 'seqpacket'],
      tun: existsSync('/dev/net/tun'),
      vhostNet: existsSync('/dev/vhost-net'),
      peerPidfd: native.SO_PEERPIDFD,
    };
    if (values.json) console.log(JSON.stringify(facts));
    else for (const [k, v] of Object.entries(facts)) console.log(`${k.padEnd(12)} ${String(v)}`);
    return 0;
  },
};
