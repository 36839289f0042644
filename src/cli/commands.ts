// Registers every subcommand with the CLI.
import { registerCommand } from './main.js';
import { supportedCommand } from './supported.js';
import { inspectCommand } from './inspect.js';
import { demoCommand } from './demo.js';
import { ownerCommand } from './owner-cmd.js';
import { receiveCommand, sendCommand } from './send-receive.js';

registerCommand('demo', demoCommand);
registerCommand('send', sendCommand);
registerCommand('receive', receiveCommand);
registerCommand('inspect', inspectCommand);
registerCommand('_owner', ownerCommand);
registerCommand('supported', supportedCommand);
