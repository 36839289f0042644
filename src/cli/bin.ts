// Process entry of the CLI (bin/backend-transfer.js loads the compiled copy).
import { run } from './main.js';

process.exitCode = await run(process.argv.slice(2));
