// Host certificates (DESIGN.md section 6, issue 11 item 6): a run's agent, which sits beside
// the run's sshd, asks for a certificate of type host for each sshd host key. The one
// principal is the run's principal, the name the CLI gives ssh as HostKeyAlias, so a client
// that trusts the host CA with `@cert-authority dstack-run-* KEY` accepts this run's sshd for
// this run only: one run's certificate never names another run. Like user certificates,
// each is recorded (host_certs) and audited in one transaction before it is returned.
import { pooledRandomBytes } from '../crypto/random-pool.js';
import { badRequest, CaError, forbidden, RateLimitedError } from '../domain/errors.js';
import type { HostCertRecord } from '../domain/model.js';
import { certOptions, formatCertificateLine, signCertificate, type CertificateFields } from '../ssh/certificate.js';
import { fingerprint, formatAuthorizedKey, parseAuthorizedKey, type PublicKey } from '../ssh/keys.js';
import { actorLabel, type Actor } from './actors.js';
import { auditMany } from './audit.js';
import type { AuthorityContext } from './context.js';
import { RateLimiter, retryAfterSeconds, type BucketLimit } from './rate-limit.js';
import { SerialAllocator } from './serials.js';

/** Default lifetime of a host certificate (certs.hostTtl). */
export const DEFAULT_HOST_CERT_TTL = 7 * 24 * 3600;
/** Largest certs.hostTtl the server accepts. */
export const MAX_HOST_CERT_TTL = 30 * 24 * 3600;
/** validAfter is backdated this much, for clients whose clock is behind. */
export const HOST_CERT_SKEW = 300;

const NO_OPTIONS = certOptions({});

/**
 * Per run: an agent asks at each start and at two thirds of a certificate's life, so a burst of
 * 20 and one every 10 s is far above need; it keeps a broken or hostile agent from filling the
 * certificate table and the audit log.
 */
/**
 * Per run, in certificates (not requests: one request may name 16 keys): 32 at once, then one a
 * minute. A run renews a handful a week; a broken or hostile agent cannot fill the table.
 */
export const HOST_CERT_RATE: BucketLimit = { perSecond: 1 / 60, burst: 32 };

export interface IssuedHostCert {
  hostKey: string;
  certificate: string;
  serial: string;
  validAfter: number;
  validBefore: number;
}

/** Greppable like user key ids: "host run:ml/train-1 serial:4711". */
export function hostKeyIdFor(qualifiedRun: string, serial: bigint): string {
  return `host run:${qualifiedRun} serial:${serial}`;
}

/** The fields of one host certificate. Pure: clock, serial and nonce come in. */
export function hostCertificateProfile(p: {
  now: number;
  serial: bigint;
  nonce: Buffer;
  key: PublicKey;
  run: { principal: string; qualifiedName: string; endsAt: number | null };
  ttl: number;
}): CertificateFields {
  const end = p.now + p.ttl;
  return {
    certType: 'host',
    nonce: p.nonce,
    key: p.key,
    serial: p.serial,
    keyId: hostKeyIdFor(p.run.qualifiedName, p.serial),
    principals: [p.run.principal],
    validAfter: BigInt(p.now - HOST_CERT_SKEW),
    // A run registered with an end gets no host certificate beyond it, like its user certificates.
    validBefore: BigInt(p.run.endsAt !== null ? Math.min(end, p.run.endsAt) : end),
    criticalOptions: NO_OPTIONS,
    extensions: NO_OPTIONS,
  };
}

function hostKey(line: string): PublicKey {
  let key: PublicKey;
  try {
    key = parseAuthorizedKey(line).key;
  } catch (e) {
    throw badRequest((e as Error).message.replace(/^public key: /, ''), 'hostKeys');
  }
  // sshd cannot serve a FIDO key as a host key: nothing to certify.
  if (key.type.startsWith('sk-')) throw badRequest(`${key.type} is a FIDO key type and cannot be an sshd host key`, 'hostKeys');
  return key;
}

/** Signs host certificates for agents; serials come from the blocks shared with user certificates. */
export class HostCertIssuer {
  private readonly serials: SerialAllocator;
  private readonly perRun: RateLimiter;

  constructor(
    private readonly ctx: AuthorityContext,
    rate: BucketLimit = HOST_CERT_RATE,
  ) {
    this.perRun = new RateLimiter(rate);
    // Host certificates are few (a handful per run per week): small blocks waste few serials.
    this.serials = new SerialAllocator(ctx.store, 16);
  }

  /** POST /v1/agents/host-certs: one certificate per host key, for the caller's run. Agents only. */
  async issue(actor: Actor, hostKeys: readonly string[]): Promise<{ certificates: IssuedHostCert[] }> {
    if (actor.kind !== 'agent') {
      throw new CaError(actor.kind === 'anonymous' ? 'unauthenticated' : 'forbidden', `${actorLabel(actor)} is not a host agent`);
    }
    const keys = hostKeys.map(hostKey);
    const unique = new Map(keys.map((k) => [formatAuthorizedKey(k), k]));
    const taken = this.perRun.take(`run:${actor.runId}`, unique.size);
    if (!taken.ok) {
      const seconds = retryAfterSeconds(taken);
      const { burst, perSecond } = this.perRun.limit;
      throw new RateLimitedError(`too many host certificates for this run (${burst}, then one every ${Math.round(1 / perSecond)} s); retry in ${seconds}s`, seconds);
    }
    const now = this.ctx.now();
    const run = await this.ctx.store.getRun(actor.runId);
    if (!run) throw new CaError('not_found', 'the run of this agent no longer exists');
    const project = await this.ctx.store.getProject(run.projectId);
    const qualifiedName = `${project?.name ?? '?'}/${run.name}`;
    if (run.state !== 'running') throw new CaError('gone', `run ${qualifiedName} has finished`);
    if (run.endsAt !== null && run.endsAt <= now) throw new CaError('gone', `run ${qualifiedName} has ended`);

    const signer = this.ctx.caKeys.host.active;
    const caLine = formatAuthorizedKey(signer.publicKey);
    if (await this.ctx.store.isPublicKeyRevoked(caLine)) throw new CaError('gone', 'the active host CA key is revoked; rotate the host CA key before issuing');
    const ttl = this.ctx.config.hostTtl ?? DEFAULT_HOST_CERT_TTL;
    const caFingerprint = fingerprint(signer.publicKey);

    const issued: { record: HostCertRecord; line: string }[] = [];
    for (const [publicKey, key] of unique) {
      const serial = await this.serials.take();
      const fields = hostCertificateProfile({ now, serial, nonce: pooledRandomBytes(32), key, run: { principal: run.principal, qualifiedName, endsAt: run.endsAt }, ttl });
      const cert = await signCertificate(fields, signer);
      issued.push({
        line: formatCertificateLine(cert),
        record: {
          serial,
          runId: run.id,
          keyFingerprint: fingerprint(key),
          publicKey,
          keyId: fields.keyId,
          principal: run.principal,
          caFingerprint,
          validAfter: Number(fields.validAfter),
          validBefore: Number(fields.validBefore),
          issuedAt: now,
        },
      });
    }

    // Recorded and audited before anything is returned; the run and the keys are judged again
    // inside the transaction, so a run finished or a key revoked meanwhile gets nothing.
    await this.ctx.store.tx(async (tx) => {
      const current = await tx.getRun(run.id);
      if (!current || current.state !== 'running') throw new CaError('gone', `run ${qualifiedName} has finished`);
      for (const { record } of issued) {
        if (await tx.isPublicKeyRevoked(record.publicKey)) throw forbidden(`host key ${record.keyFingerprint} is revoked`);
      }
      await tx.insertHostCerts(issued.map((i) => i.record));
      await auditMany(
        tx,
        now,
        issued.map(({ record: r }) => ({
          actor,
          action: 'host-cert.issue',
          details: { run: qualifiedName, serial: r.serial.toString(), keyId: r.keyId, keyFingerprint: r.keyFingerprint, principal: r.principal, caFingerprint: r.caFingerprint, validBefore: r.validBefore },
        })),
      );
    });
    return {
      certificates: issued.map(({ record: r, line }) => ({ hostKey: r.publicKey, certificate: line, serial: r.serial.toString(), validAfter: r.validAfter, validBefore: r.validBefore })),
    };
  }
}
