// Certificates and keys cross the OpenSSH boundary both ways with the same facts:
// `ssh-keygen -L` reads what we write, we read what `ssh-keygen -s` writes, and our
// listing is byte-for-byte ssh-keygen's.
import { generateKeyPairSync } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { certOptions, CERT_FOREVER, formatCertificateLine, parseCertificateLine, signCertificate, verifyCertificate } from '../ca/ssh/certificate.js';
import { formatCertificateListing } from '../ca/ssh/describe.js';
import { fingerprint, fromKeyObject, parseAuthorizedKey, type PublicKey } from '../ca/ssh/keys.js';
import { issueToFile } from './fixtures/certs.js';
import { CA_KEY_TYPES, SUBJECT_TYPES, caSigner, certFields } from './fixtures/keys.js';
import { cleanupTempDirs, generateKey, listCert, makeTempDir, parseListing, run, signCertWithSshKeygen, type KeyFiles, type KeyType } from './harness/index.js';

process.env.TZ = 'UTC'; // listCert runs ssh-keygen with TZ=UTC; our listing must use the same zone

let dir: string;
const subjects = {} as Record<(typeof SUBJECT_TYPES)[number], KeyFiles>;

beforeAll(async () => {
  dir = await makeTempDir('cert-interop-');
  await Promise.all(SUBJECT_TYPES.map(async (t) => (subjects[t] = await generateKey(dir, `id_${t}`, t))));
});
afterAll(cleanupTempDirs);

async function ourListing(path: string): Promise<string> {
  const { cert } = parseCertificateLine(await readFile(path, 'utf8'));
  expect(verifyCertificate(cert)).toBe(true);
  return formatCertificateListing(cert, path);
}

describe('ssh-keygen reads every certificate we write', () => {
  const options = {
    criticalOptions: certOptions({ 'force-command': 'nvidia-smi -L', 'source-address': '127.0.0.1/32,10.0.0.0/8', 'verify-required': true }),
    extensions: certOptions({ 'permit-pty': true, 'permit-port-forwarding': true, 'permit-X11-forwarding': true, 'custom@dstack.ai': 'v' }),
  };
  for (const ca of CA_KEY_TYPES) {
    it(`CA ${ca}, every subject type, with options`, async () => {
      for (const subject of SUBJECT_TYPES) {
        const serial = BigInt(1 + CA_KEY_TYPES.indexOf(ca) * 10 + SUBJECT_TYPES.indexOf(subject));
        const path = await issueToFile(dir, `${ca}-${subject}`, subjects[subject], caSigner(ca), {
          serial,
          keyId: `user:alice run:ml/train-1 serial:${serial}`,
          principals: ['dstack-run-a', 'dstack-run-b'],
          ...options,
        });
        const theirs = await listCert(path);
        expect(await ourListing(path)).toBe(theirs);
        const facts = parseListing(theirs);
        expect(facts.serial).toBe(serial);
        expect(facts.caFingerprint).toBe(fingerprint(caSigner(ca).publicKey));
        expect(facts.signatureAlgorithm).toBe(ca.startsWith('rsa') ? 'rsa-sha2-512' : caSigner(ca).publicKey.type);
        expect(facts.criticalOptions).toEqual(['force-command nvidia-smi -L', 'source-address 127.0.0.1/32,10.0.0.0/8', 'verify-required']);
      }
    });
  }

  it('host certificates and every validity form', async () => {
    for (const [validAfter, validBefore] of [
      [0n, CERT_FOREVER],
      [1_700_000_000n, CERT_FOREVER],
      [0n, 1_900_000_000n],
      [1_700_000_000n, 1_900_000_000n],
    ] as const) {
      const path = await issueToFile(dir, `host-${validAfter}-${validBefore}`, subjects.ed25519, caSigner('ed25519'), {
        certType: 'host',
        validAfter,
        validBefore,
        principals: ['gpu-7.example.com'],
      });
      expect(await ourListing(path)).toBe(await listCert(path));
    }
  });

  it('FIDO sk-ssh-ed25519 and sk-ecdsa subject keys', async () => {
    // No authenticator here: build the public keys by hand (key + application string).
    const ed = fromKeyObject(generateKeyPairSync('ed25519').publicKey) as { pk: Buffer };
    const ec = fromKeyObject(generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey) as { q: Buffer };
    const sk: PublicKey[] = [
      { type: 'sk-ssh-ed25519@openssh.com', pk: ed.pk, application: 'ssh:' },
      { type: 'sk-ecdsa-sha2-nistp256@openssh.com', curve: 'nistp256', q: ec.q, application: 'ssh:dstack' },
    ];
    for (const key of sk) {
      const cert = await signCertificate(certFields(key, { criticalOptions: certOptions({ 'verify-required': true }) }), caSigner('ed25519'));
      const path = join(dir, `${key.type}-cert.pub`);
      await writeFile(path, formatCertificateLine(cert) + '\n');
      const theirs = await listCert(path);
      expect(theirs).toContain(key.type.startsWith('sk-ssh') ? 'ED25519-SK-CERT' : 'ECDSA-SK-CERT');
      expect(await ourListing(path)).toBe(theirs);
    }
  });
});

describe('we read every certificate ssh-keygen -s writes', () => {
  const caTypes: KeyType[] = ['ed25519', 'ecdsa256', 'ecdsa384', 'ecdsa521', 'rsa3072'];
  for (const caType of caTypes) {
    it(`ssh-keygen CA ${caType}, every subject type, with options`, async () => {
      const ca = await generateKey(dir, `kg-ca-${caType}`, caType);
      for (const subject of SUBJECT_TYPES) {
        const serial = 4711n + BigInt(SUBJECT_TYPES.indexOf(subject));
        const path = await signCertWithSshKeygen({
          caPrivatePath: ca.privatePath,
          publicPath: subjects[subject].publicPath,
          keyId: `kg ${caType} ${subject}`,
          principals: ['p1', 'p2'],
          serial,
          validity: '20260101000000:20270101000000',
          options: ['force-command=echo hi', 'source-address=127.0.0.1/32', 'verify-required', 'no-pty', 'extension:x@dstack.ai=1', 'critical:y@dstack.ai=2'],
        });
        const text = await readFile(path, 'utf8');
        const { cert } = parseCertificateLine(text);
        expect(cert.serial).toBe(serial);
        expect(cert.principals).toEqual(['p1', 'p2']);
        expect(fingerprint(cert.signatureKey)).toBe(fingerprint(parseAuthorizedKey(ca.publicLine).key));
        expect(await ourListing(path)).toBe(await listCert(path));
        expect(formatCertificateLine(cert, `${subject}-cert.pub`)).toBe(text.trim().replace(/ \S+$/, ` ${subject}-cert.pub`));
      }
    });
  }
});

describe('fingerprints', () => {
  it.each(SUBJECT_TYPES)('%s: same as ssh-keygen -l', async (t) => {
    const r = await run('/usr/bin/ssh-keygen', ['-l', '-f', subjects[t].publicPath]);
    expect(r.stdout.split(' ')[1]).toBe(fingerprint(parseAuthorizedKey(subjects[t].publicLine).key));
  });
});
