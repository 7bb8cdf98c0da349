// An RSA "key" whose modulus is a prime (issue 12 review): anyone holding only the public key
// derives d = e^-1 mod (n-1), forges the SSHSIG possession proof and would get a certificate.
// Such a key is refused in a policy (api-bad-input.test.ts, with p^k and small factors) and,
// for a policy stored before that check existed, at issuance: here the key is written into
// the run's policy directly, the proof is forged from the public key alone, and nothing is
// issued.
import { createHash, generatePrimeSync } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { formatAuthorizedKey, type PublicKey } from '../ca/ssh/keys.js';
import { armorSshsig, sshsigSign } from '../ca/ssh/sshsig.js';
import type { Signer } from '../ca/ssh/signature.js';
import { SshWriter } from '../ca/ssh/wire.js';
import { openTestCa, type TestCa } from './fixtures/ca.js';
import { cleanupTempDirs } from './harness/index.js';

const toBuf = (x: bigint) => {
  const h = x.toString(16);
  return Buffer.from(h.length % 2 ? `0${h}` : h, 'hex');
};
const toBig = (b: Buffer) => BigInt(`0x${b.toString('hex')}`);
function modpow(b: bigint, e: bigint, m: bigint): bigint {
  let r = 1n;
  for (b %= m; e > 0n; e >>= 1n, b = (b * b) % m) if (e & 1n) r = (r * b) % m;
  return r;
}
function inverse(a: bigint, m: bigint): bigint {
  let [r0, r1, s0, s1] = [a, m, 1n, 0n];
  while (r1) {
    const q = r0 / r1;
    [r0, r1] = [r1, r0 - q * r1];
    [s0, s1] = [s1, s0 - q * s1];
  }
  return ((s0 % m) + m) % m;
}

let ca: TestCa;
let n: bigint;
const e = 65537n;
let pub: PublicKey;

beforeAll(async () => {
  do n = generatePrimeSync(2048, { bigint: true }) as bigint;
  while ((n - 1n) % e === 0n);
  pub = { type: 'ssh-rsa', e: toBuf(e), n: toBuf(n) } as PublicKey;
  ca = await openTestCa();
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  await ca.admin('POST', '/v1/users', { name: 'alice' });
  await ca.admin('POST', '/v1/runs', { project: 'ml', name: 'r1', owner: 'alice', loginUser: 'root', attachableBy: { users: ['alice'] } });
});
afterAll(async () => {
  await ca?.close();
  await cleanupTempDirs();
});

it('the API refuses the key in a policy', async () => {
  const res = await ca.api('PATCH', '/v1/runs/ml/r1', { token: ca.adminToken, body: { attachableBy: { users: ['alice'], public_keys: [formatAuthorizedKey(pub)] } } });
  expect(res.statusCode, res.body).toBe(400);
  expect(res.json().message).toMatch(/^attachableBy\.public_keys\[0\]: RSA modulus is a prime/);
});

it('a policy stored before the check: the forged proof gets no certificate', async () => {
  const run = (await ca.store.listRuns()).find((r) => r.name === 'r1')!;
  await ca.store.tx((tx) => tx.updateRunPolicy(run.id, { ...run.policy, publicKeys: [formatAuthorizedKey(pub)] }));
  const d = inverse(e, n - 1n); // phi(n) = n - 1 for a prime n
  const digestInfo = Buffer.from('3051300d060960864801650304020305000440', 'hex'); // SHA-512
  const signer: Signer = {
    publicKey: pub,
    algorithm: 'rsa-sha2-512',
    async sign(data) {
      const k = toBuf(n).length;
      const t = Buffer.concat([digestInfo, createHash('sha512').update(data).digest()]);
      const em = Buffer.concat([Buffer.of(0, 1), Buffer.alloc(k - t.length - 3, 0xff), Buffer.of(0), t]);
      const s = toBuf(modpow(toBig(em), d, n));
      return new SshWriter(k + 32).string('rsa-sha2-512').string(Buffer.concat([Buffer.alloc(k - s.length), s])).toBuffer();
    },
  };
  const { nonce, message } = (await ca.api('POST', '/v1/runs/ml/r1/nonces')).json() as { nonce: string; message: string };
  const signature = armorSshsig(await sshsigSign(signer, 'dstack-ca', Buffer.from(message)));
  const before = (await ca.store.listCerts({})).length;
  const res = await ca.api('POST', '/v1/runs/ml/r1/certs', { body: { publicKey: formatAuthorizedKey(pub), proof: { nonce, signature } } });
  expect(res.statusCode, res.body).toBe(400);
  expect(res.json().message).toMatch(/^publicKey: RSA modulus is a prime/);
  expect((await ca.store.listCerts({})).length).toBe(before);
});
