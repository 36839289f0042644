// Registers every subcommand with the CLI.
import { registerCommand } from './main.js';
import { supportedCommand } from './supported.js';

registerCommand('supported', supportedCommand);
