// `backend-transfer supported`: the backend kinds this build can transfer, and
// what this machine offers for them.
import { parseArgs } from 'node:util';
import { supported } from '../backends/policy.js';
import { scmMaxFd } from '../fd/probe.js';
import type { Command } from './main.js';

export const supportedCommand: Command = {
  summary: 'print the backend kinds this build can transfer (--json)',
  async run(argv) {
    const { values } = parseArgs({ args: argv, options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } });
    if (values.help) {
      console.log('usage: backend-transfer supported [--json]');
      return 0;
    }
    const s = supported();
    const facts = { ...s, scmMaxFd: scmMaxFd(), socketTypes: ['stream', 'seqpacket'] };
    if (values.json) console.log(JSON.stringify(facts, null, 2));
    else {
      console.log(`kinds        ${s.kinds.join(', ')}`);
      for (const [k, v] of Object.entries(s.machine)) console.log(`${k.padEnd(12)} ${v ? 'yes' : 'no'}`);
      console.log(`crc32        ${s.crc.impl}${s.crc.fallbackReason ? ` (${s.crc.fallbackReason})` : ''}`);
      console.log(`scmMaxFd     ${facts.scmMaxFd} fds per sendmsg (more are split over pieces)`);
    }
    return 0;
  },
};
