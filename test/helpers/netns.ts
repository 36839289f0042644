// Network namespace helpers live in src/demo (the demo makes one too).
export * from '../../src/demo/netns.js';
