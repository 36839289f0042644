// Registers every subcommand with the CLI.
import { registerCommand } from './main.js';
import { supportedCommand } from './supported.js';
import { inspectCommand } from './inspect.js';

registerCommand('inspect', inspectCommand);
registerCommand('supported', supportedCommand);
