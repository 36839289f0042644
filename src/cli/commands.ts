// Every subcommand of the CLI, in the order `--help` lists them. main.ts loads
// this list when it runs (this file imports nothing of main.ts but its type).
import type { Command } from './main.js';
import { supportedCommand } from './supported.js';
import { inspectCommand } from './inspect.js';
import { demoCommand } from './demo.js';
import { ownerCommand } from './owner-cmd.js';
import { receiveCommand, sendCommand } from './send-receive.js';

export const COMMANDS: readonly (readonly [string, Command])[] = [
  ['demo', demoCommand],
  ['send', sendCommand],
  ['receive', receiveCommand],
  ['inspect', inspectCommand],
  ['_owner', ownerCommand],
  ['supported', supportedCommand],
];
