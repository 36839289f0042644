// `backend-transfer _owner <json>`: one side of the demo (not for direct use).
import { runOwner } from './demo/owner.js';
import type { Command } from './main.js';

export const ownerCommand: Command = {
  summary: '',
  run: (argv) => runOwner(argv[0] ?? '{}'),
};
