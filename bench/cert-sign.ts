// Certificates signed per second by the core (nonce, encoding, signing) against raw
// node:crypto Ed25519 sign() of a message of the same size, in the same run. The ratio is
// the figure of merit: it says how much the core adds on top of the signature itself.
import { sign } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pooledRandomBytes } from '../ca/crypto/random-pool.js';
import { generateCaKey } from '../ca/keys/ca-key-store.js';
import { certOptions, encodeToBeSigned, signCertificate, type CertificateFields } from '../ca/ssh/certificate.js';
import { formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';
import { nodeSigner } from '../ca/ssh/signature.js';
import { interleaved, median, table } from './measure.js';

export async function run(): Promise<void> {
  const caKey = generateCaKey('ed25519');
  const ca = nodeSigner(caKey);
  const subject = fromKeyObject(generateCaKey('ed25519'));
  const now = BigInt(Math.floor(Date.now() / 1000));
  let serial = 1n;
  // What the issuer derives from the run's policy once; per cert: nonce, serial, key id.
  const extensions = certOptions({ 'permit-pty': true, 'permit-port-forwarding': true });
  const fields = (): CertificateFields => ({
    certType: 'user',
    nonce: pooledRandomBytes(32),
    key: subject,
    serial: serial++,
    keyId: `user:alice run:ml/train-1 serial:${serial}`,
    principals: ['dstack-run-0f3c9a7e1b2d'],
    validAfter: now - 60n,
    validBefore: now + 3600n,
    criticalOptions: new Map(),
    extensions,
  });
  // The raw baseline signs a message as long as the real to-be-signed blob.
  const message = encodeToBeSigned(fields(), ca.publicKey);

  const rates = await interleaved(
    {
      'node:crypto Ed25519 sign() (baseline)': () => sign(null, message, caKey),
      'signCertificate (core)': () => signCertificate(fields(), ca),
    },
    7,
    400,
  );
  const [raw, core] = Object.values(rates) as [number, number];

  // Reference only: the OpenSSH way, one ssh-keygen -s process per certificate.
  const dir = mkdtempSync(join(tmpdir(), 'bench-certs-'));
  const caFile = join(dir, 'ca');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', caFile]);
  writeFileSync(join(dir, 'id.pub'), formatAuthorizedKey(subject) + '\n');
  const times: number[] = [];
  for (let i = 0; i < 15; i++) {
    const t = performance.now();
    execFileSync('ssh-keygen', ['-q', '-s', caFile, '-I', 'k', '-n', 'p', '-z', String(i + 1), join(dir, 'id.pub')]);
    times.push(performance.now() - t);
  }
  rmSync(dir, { recursive: true, force: true });
  const keygen = 1000 / median(times);

  process.stdout.write(
    table(
      ['what', 'per second (median of 7 interleaved rounds)', 'vs baseline'],
      [
        ['node:crypto Ed25519 sign(), ' + message.length + '-byte message (baseline)', raw.toFixed(0), '1.00'],
        ['signCertificate: Ed25519 CA, Ed25519 subject, nonce + encode + sign', core.toFixed(0), (core / raw).toFixed(2)],
        ['ssh-keygen -s, one process per cert (reference)', keygen.toFixed(0), (keygen / raw).toFixed(3)],
      ],
    ),
  );
  process.stdout.write(`\ncore/raw ratio: ${(core / raw).toFixed(2)} (target >= 0.80)\n`);
}
