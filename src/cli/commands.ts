// Registers every subcommand with the CLI.
import { registerCommand } from './main.js';
import { supportedCommand } from './supported.js';
import { inspectCommand } from './inspect.js';
import { demoCommand } from './demo.js';
import { ownerCommand } from './owner-cmd.js';

registerCommand('demo', demoCommand);
registerCommand('inspect', inspectCommand);
registerCommand('_owner', ownerCommand);
registerCommand('supported', supportedCommand);
