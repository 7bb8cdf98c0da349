// Issuing a certificate for one run: authorize by the run's policy, decide the profile,
// sign, and return only after the cert row is durably committed (group commit), so no
// issued certificate is ever unknown to the CA.
import { pooledRandomBytes } from '../crypto/random-pool.js';
import { badRequest, CaError, forbidden } from '../domain/errors.js';
import type { CertRecord } from '../domain/model.js';
import { grantFor } from '../policy/attachable-by.js';
import { certificateProfile } from '../policy/cert-profile.js';
import { formatCertificateLine, signCertificate } from '../ssh/certificate.js';
import { assertStrongKey, fingerprint, formatAuthorizedKey, parseAuthorizedKey, type PublicKey } from '../ssh/keys.js';
import { identityOf, type Actor } from './actors.js';
import { auditMany } from './audit.js';
import type { AuthorityContext } from './context.js';
import { GroupCommitter } from './group-commit.js';
import { requireRun } from './lookup.js';
import { NonceBook, verifyPossession } from './proof.js';
import { stillGranted } from './recheck.js';
import { SerialAllocator } from './serials.js';

export interface IssueRequest {
  project: string;
  run: string;
  publicKey: string;
  ttl?: number;
  proof?: { nonce: string; signature: string };
}

export interface IssueResult {
  certificate: string;
  serial: bigint;
  keyId: string;
  principal: string;
  validAfter: number;
  validBefore: number;
}

interface PendingCert {
  record: CertRecord;
  actor: string;
}

function parseSubjectKey(line: string): PublicKey {
  try {
    const { key } = parseAuthorizedKey(line);
    assertStrongKey(key);
    return key;
  } catch (e) {
    throw badRequest((e as Error).message.replace(/^public key: /, ''), 'publicKey');
  }
}

export class Issuer {
  readonly nonces = new NonceBook();
  /** Whether the active CA key is revoked; unknown (null) until asked, and after each new KRL. */
  private activeCaRevoked: boolean | null = null;
  private readonly serials: SerialAllocator;
  private readonly committer: GroupCommitter<PendingCert>;

  constructor(private readonly ctx: AuthorityContext) {
    // Every revocation publishes a KRL; only then can the answer change.
    ctx.krlEvents.on('krl', () => (this.activeCaRevoked = null));
    this.serials = new SerialAllocator(ctx.store);
    this.committer = new GroupCommitter(ctx.store, async (tx, items) => {
      const written: boolean[] = [];
      const ok: CertRecord[] = [];
      for (const { record } of items) {
        const granted = await stillGranted(tx, record);
        written.push(granted);
        if (granted) ok.push(record);
      }
      await tx.insertCerts(ok);
      await auditMany(
        tx,
        ctx.now(),
        items
          .filter((_, i) => written[i])
          .map(({ record: { serial, keyId, keyFingerprint, grant, validBefore, runId }, actor }) => ({
            actor,
            action: 'cert.issue',
            details: { serial: serial.toString(), keyId, keyFingerprint, grant, validBefore, runId },
          })),
      );
      return written;
    });
  }

  async issue(actor: Actor, req: IssueRequest): Promise<IssueResult> {
    const now = this.ctx.now();
    const key = parseSubjectKey(req.publicKey);
    if (actor.kind === 'orchestrator' || actor.kind === 'agent') throw forbidden(`${actor.kind} tokens cannot obtain certificates`);
    const { project, run } = await requireRun(this.ctx.store, req.project, req.run);
    const qualifiedName = `${project.name}/${run.name}`;
    const identity = identityOf(actor);
    const provenKey = req.proof ? verifyPossession(this.nonces, req.proof, qualifiedName, key, now) : null;
    const isProjectMember = identity ? (await this.ctx.store.getMembership(project.id, identity.id)) !== null : false;
    const grant = grantFor(run.policy, { identityName: identity?.name ?? null, isProjectMember, provenKey });
    if (!grant) {
      if (!identity && !provenKey) throw new CaError('unauthenticated', 'authentication or a possession proof is required');
      throw forbidden(`not allowed by the attachable_by policy of run ${qualifiedName}`);
    }
    const line = formatAuthorizedKey(key);
    if (await this.ctx.store.isPublicKeyRevoked(line)) throw forbidden('this public key is revoked');
    const signer = this.ctx.caKeys.active;
    this.activeCaRevoked ??= await this.ctx.store.isPublicKeyRevoked(formatAuthorizedKey(signer.publicKey));
    if (this.activeCaRevoked) {
      throw new CaError('gone', 'the active CA key is revoked; rotate the CA key before issuing');
    }

    const holder = identity ? `${identity.kind}:${identity.name}` : `key:${fingerprint(key)}`;
    const botCap = identity?.kind === 'bot' ? identity.botMaxTtl : null;
    const serial = await this.serials.take();
    const fields = certificateProfile({
      now,
      serial,
      nonce: pooledRandomBytes(32),
      key,
      run: { principal: run.principal, qualifiedName, endsAt: run.endsAt, state: run.state },
      holder,
      requestedTtl: req.ttl,
      limits: { defaultTtl: this.ctx.config.defaultTtl, maxTtl: Math.min(this.ctx.config.maxTtl, botCap ?? Infinity) },
    });
    const cert = await signCertificate(fields, signer);
    const record: CertRecord = {
      serial,
      runId: run.id,
      identityId: identity?.id ?? null,
      keyFingerprint: fingerprint(key),
      publicKey: line,
      keyId: fields.keyId,
      caFingerprint: fingerprint(signer.publicKey),
      grant,
      validAfter: Number(fields.validAfter),
      validBefore: Number(fields.validBefore),
      issuedAt: now,
      revokedAt: null,
      revokeReason: null,
    };
    if (!(await this.committer.submit({ record, actor: holder }))) {
      throw forbidden(`access to run ${qualifiedName} was removed while the certificate was being issued`);
    }
    return {
      certificate: formatCertificateLine(cert),
      serial,
      keyId: fields.keyId,
      principal: run.principal,
      validAfter: record.validAfter,
      validBefore: record.validBefore,
    };
  }
}
