// `npm run bench`: every benchmark, each reporting against a baseline measured in the
// same run (these machines are noisy; only same-run ratios mean anything).
// Usage: node dist/bench/run.js [name...]   (names: see BENCHES)
const BENCHES: Record<string, () => Promise<{ run: () => Promise<void> }>> = {
  'cert-sign': () => import('./cert-sign.js'),
  krl: () => import('./krl.js'),
  'agent-propagation': () => import('./agent-propagation.js'),
  'issue-http': () => import('./issue-http.js'),
};

const wanted = process.argv.slice(2);
for (const name of wanted.length ? wanted : Object.keys(BENCHES)) {
  const load = BENCHES[name];
  if (!load) {
    process.stderr.write(`unknown benchmark "${name}"; have: ${Object.keys(BENCHES).join(', ')}\n`);
    process.exit(2);
  }
  process.stdout.write(`\n## ${name}\n\n`);
  await (await load()).run();
}
