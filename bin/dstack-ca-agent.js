#!/usr/bin/env node
/* global process, console, URL */
// The installed `dstack-ca-agent` command (npm link, npm install -g .): runs the built code in dist/.
// It exists before the first build, so `npm link` can link it at once after `npm ci`.
import('../dist/agent-hook/main.js').catch((e) => {
  if (e && e.code === 'ERR_MODULE_NOT_FOUND' && String(e.message).includes('dist/agent-hook/main.js')) {
    console.error('dstack-ca-agent: not built yet: run `npm run build` (or `npm start`) in ' + new URL('..', import.meta.url).pathname);
    process.exit(1);
  }
  throw e;
});
