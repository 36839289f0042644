// Frame builders live in src/cli/demo (the demo's TAP traffic uses them too).
export * from '../../src/cli/demo/frames.js';
