// verify-required (DESIGN.md section 4, issue 13): a run policy (`attachable_by.verify_required`)
// or a bot (`verifyRequired`) requires FIDO keys with user verification. Certificates for
// hand-built sk-* keys carry the option, as the real `ssh-keygen -L` lists it; any other key
// is refused naming what requires it; tightening either revokes exactly the live certs
// without it, as other policy edits do.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../ca/domain/model.js';
import { generateKeyPairSync } from 'node:crypto';
import { proofMessage } from '../ca/authority/proof.js';
import { formatAuthorizedKey, fromKeyObject } from '../ca/ssh/keys.js';
import { nodeSigner } from '../ca/ssh/signature.js';
import { armorSshsig, sshsigSign } from '../ca/ssh/sshsig.js';
import { openTestCa, userWithToken, type TestCa } from './fixtures/ca.js';
import { fidoKey, subjectKey } from './fixtures/keys.js';
import { cleanupTempDirs, listCert, makeTempDir, parseListing } from './harness/index.js';

let ca: TestCa;
let dir: string;
let orch: string;
let alice: string;
const skEd = formatAuthorizedKey(fidoKey('ed25519-sk'));
const skEc = formatAuthorizedKey(fidoKey('ecdsa-sk', 'ssh:dstack'));
const ed = formatAuthorizedKey(subjectKey('ed25519'));
let n = 0;

async function addRun(attachableBy: Record<string, unknown>): Promise<string> {
  const name = `vr-${++n}`;
  const res = await ca.api('POST', '/v1/runs', { token: orch, body: { project: 'ml', name, owner: 'alice', loginUser: 'root', attachableBy } });
  expect(res.statusCode, res.body).toBe(201);
  return name;
}

async function issue(token: string, run: string, publicKey: string) {
  return ca.api('POST', `/v1/runs/ml/${run}/certs`, { token, body: { publicKey } });
}

/** `ssh-keygen -L` of a certificate line, parsed. */
async function listing(certificate: string) {
  const path = join(dir, `c${++n}-cert.pub`);
  await writeFile(path, `${certificate}\n`);
  return parseListing(await listCert(path));
}

async function events(action: string): Promise<AuditEvent[]> {
  return (await ca.store.listAuditEvents({})).filter((e) => e.action === action);
}

beforeAll(async () => {
  dir = await makeTempDir('verify-required-');
  ca = await openTestCa();
  await ca.admin('POST', '/v1/projects', { name: 'ml' });
  orch = (await ca.admin<{ token: string }>('POST', '/v1/orchestrators', { name: 'dstack' })).token;
  alice = await userWithToken(ca, 'alice');
  await ca.admin('PUT', '/v1/projects/ml/members/alice', { role: 'user' });
});

afterAll(async () => {
  await ca?.close();
  await cleanupTempDirs();
});

describe('a run whose policy says verify_required: true', () => {
  it('certifies sk-ssh-ed25519 and sk-ecdsa keys with verify-required, as ssh-keygen -L lists it', async () => {
    const run = await addRun({ users: ['alice'], verify_required: true });
    expect((await ca.admin<{ attachableBy: unknown }>('GET', `/v1/runs/ml/${run}`)).attachableBy).toEqual({ users: ['alice'], project_members: false, public_keys: [], verify_required: true });
    for (const [key, type] of [
      [skEd, 'sk-ssh-ed25519-cert-v01@openssh.com'],
      [skEc, 'sk-ecdsa-sha2-nistp256-cert-v01@openssh.com'],
    ] as const) {
      const res = await issue(alice, run, key);
      expect(res.statusCode, res.body).toBe(201);
      const l = await listing((res.json() as { certificate: string }).certificate);
      expect(l.type).toBe(type);
      expect(l.criticalOptions).toEqual(['verify-required']);
      expect(l.extensions).toEqual(['permit-port-forwarding', 'permit-pty']);
    }
    expect((await events('cert.issue')).at(-1)?.details).toMatchObject({ verifyRequired: true });
  });

  it('refuses an ed25519 key with a 403 naming the policy key and how to make a FIDO key, and records nothing', async () => {
    const run = await addRun({ project_members: true, verify_required: true });
    const before = (await ca.store.listCerts({})).length;
    const res = await issue(alice, run, ed);
    expect(res.statusCode).toBe(403);
    expect((res.json() as { message: string }).message).toBe(
      `run ml/${run} (attachable_by.verify_required: true) requires a FIDO key with user verification; this is a ssh-ed25519 key, for which sshd ignores verify-required: make one with \`ssh-keygen -t ed25519-sk -O verify-required\` (or ecdsa-sk)`,
    );
    expect((await ca.store.listCerts({})).length).toBe(before);
  });

  it('binds every grant alike: a key holder listed in public_keys gets the same refusal or option', async () => {
    const run = await addRun({ users: ['alice'], public_keys: [ed, skEd], verify_required: true });
    // Alice reaches the run by name; her ed25519 key is refused whichever rule grants it.
    expect((await issue(alice, run, ed)).statusCode).toBe(403);
    const ok = await issue(alice, run, skEd);
    expect(ok.statusCode).toBe(201);
    expect((await listing((ok.json() as { certificate: string }).certificate)).criticalOptions).toEqual(['verify-required']);
  });

  it('a key holder without an account (possession proof) is refused the same way for a non-FIDO key', async () => {
    const holder = generateKeyPairSync('ed25519').privateKey;
    const holderPub = formatAuthorizedKey(fromKeyObject(holder));
    const run = await addRun({ public_keys: [holderPub], verify_required: true });
    const { nonce } = (await ca.api('POST', `/v1/runs/ml/${run}/nonces`)).json() as { nonce: string };
    const signature = armorSshsig(await sshsigSign(nodeSigner(holder), 'dstack-ca', proofMessage(`ml/${run}`, nonce)));
    const res = await ca.api('POST', `/v1/runs/ml/${run}/certs`, { body: { publicKey: holderPub, proof: { nonce, signature } } });
    expect(res.statusCode).toBe(403);
    expect((res.json() as { message: string }).message).toMatch(/^run ml\/vr-\d+ \(attachable_by\.verify_required: true\) requires a FIDO key/);
  });

  it('without it, an sk key gets a cert without the option (sshd then asks only for presence)', async () => {
    const run = await addRun({ users: ['alice'] });
    const res = await issue(alice, run, skEd);
    expect(res.statusCode).toBe(201);
    expect((await listing((res.json() as { certificate: string }).certificate)).criticalOptions).toEqual([]);
  });
});

describe('tightening revokes exactly the live certs without verify-required', () => {
  it('a policy edit to verify_required: true revokes the ed25519 and plain sk certs, not those that carry it; loosening revokes nothing', async () => {
    const vbot = (await ca.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name: 'vbot', maxTtl: 900, verifyRequired: true })).token;
    const run = await addRun({ users: ['alice', 'vbot'] });
    const plainEd = (await issue(alice, run, ed)).json() as { serial: string };
    const plainSk = (await issue(alice, run, skEd)).json() as { serial: string };
    const botSk = (await issue(vbot, run, skEc)).json() as { serial: string; certificate: string };
    expect((await listing(botSk.certificate)).criticalOptions).toEqual(['verify-required']);
    const edit = await ca.api('PATCH', `/v1/runs/ml/${run}`, { token: orch, body: { attachableBy: { users: ['alice', 'vbot'], verify_required: true } } });
    expect(edit.statusCode, edit.body).toBe(200);
    expect((edit.json() as { revokedCerts: number }).revokedCerts).toBe(2);
    const revoked = async (serial: string) => (await ca.store.getCert(BigInt(serial)))?.revokedAt !== null;
    expect([await revoked(plainEd.serial), await revoked(plainSk.serial), await revoked(botSk.serial)]).toEqual([true, true, false]);
    // Loosening: the cert that carries the option stays valid, nothing is revoked.
    const loose = await ca.api('PATCH', `/v1/runs/ml/${run}`, { token: orch, body: { attachableBy: { users: ['alice', 'vbot'] } } });
    expect((loose.json() as { revokedCerts: number }).revokedCerts).toBe(0);
  });

  it('bot update verifyRequired: true revokes the bot certs without it and refuses its ed25519 key by the flag; false lifts it', async () => {
    const tbot = (await ca.admin<{ token: string }>('POST', '/v1/projects/ml/bots', { name: 'tbot', maxTtl: 900 })).token;
    const run = await addRun({ users: ['tbot'] });
    const strict = await addRun({ users: ['tbot'], verify_required: true });
    expect((await issue(tbot, run, ed)).statusCode).toBe(201);
    const carries = (await issue(tbot, strict, skEd)).json() as { serial: string };
    const updated = await ca.admin<{ verifyRequired: boolean; revokedCerts: number }>('PATCH', '/v1/projects/ml/bots/tbot', { verifyRequired: true });
    expect(updated).toMatchObject({ verifyRequired: true, revokedCerts: 1 });
    expect((await ca.store.getCert(BigInt(carries.serial)))?.revokedAt).toBeNull();
    const refused = await issue(tbot, run, ed);
    expect(refused.statusCode).toBe(403);
    expect((refused.json() as { message: string }).message).toMatch(/^bot ml\/tbot \(--verify-required\) requires a FIDO key with user verification; this is a ssh-ed25519 key/);
    // A bot's refusal is a decision: audited with its reason.
    expect((await events('cert.refuse')).at(-1)?.details).toMatchObject({ status: 403, reason: expect.stringContaining('--verify-required') });
    const both = await issue(tbot, strict, ed);
    expect((both.json() as { message: string }).message).toMatch(/^run ml\/vr-\d+ \(attachable_by\.verify_required: true\) and bot ml\/tbot \(--verify-required\) require a FIDO key/);
    const sk = await issue(tbot, run, skEc);
    expect(sk.statusCode).toBe(201);
    expect((await listing((sk.json() as { certificate: string }).certificate)).criticalOptions).toEqual(['verify-required']);
    expect((await ca.admin<{ revokedCerts: number }>('PATCH', '/v1/projects/ml/bots/tbot', { verifyRequired: false })).revokedCerts).toBe(0);
    expect((await issue(tbot, run, ed)).statusCode).toBe(201);
  });
});
