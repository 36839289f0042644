// Network namespace helpers live in src/cli/demo (the demo makes one too).
export * from '../../src/cli/demo/netns.js';
