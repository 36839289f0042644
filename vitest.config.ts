import { defineConfig } from 'vitest/config';

// Native code and fds do not belong in worker threads: every test file runs in
// its own forked process.
export default defineConfig({
  test: {
    pool: 'forks',
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    isolate: true,
    reporters: ['default'],
  },
});
