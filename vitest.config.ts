import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['{ca,cli,agent-hook,test}/**/*.test.ts'],
    // Tests that drive real sshd/ssh-keygen processes are slow on 2 cores.
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
