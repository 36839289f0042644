// Frame builders live in src/demo (the demo's TAP traffic uses them too).
export * from '../../src/demo/frames.js';
