// The qemu-storage-daemon harness lives in src/demo (the demo uses it too).
export * from '../../src/demo/storage-daemon.js';
