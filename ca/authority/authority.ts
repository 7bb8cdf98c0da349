// The CA's domain core, as the HTTP layer sees it: a context plus the stateful parts
// (serial blocks, group commit, proof nonces). Operations live in their own modules.
import { AgentGuards } from './agents.js';
import { webConfigFor, type AuthorityContext, type WebConfig } from './context.js';
import { HostCertIssuer } from './host-certs.js';
import { Issuer } from './issuance.js';
import { ChallengeBook } from './login/challenges.js';
import { DEVICE_CODE_LIMITS } from './login/device.js';
import { RateLimiter } from './rate-limit.js';

export class Authority {
  readonly issuer: Issuer;
  /** Host certificates for agents' sshd host keys. */
  readonly hostCerts: HostCertIssuer;
  /** WebAuthn challenges in flight (single-use). */
  readonly challenges = new ChallengeBook();
  /**
   * Per source address, for the login steps anyone may start (device codes, passkey
   * ceremonies): they cost a row or a challenge each, so they are rationed.
   */
  readonly loginStarts = new RateLimiter({ perSecond: 1, burst: 30 });
  /** Per source address, for the enrollment page's "which account" lookup (one per page load; a budget of its own, so loading the page never uses up the ceremonies'). */
  readonly enrollLookups = new RateLimiter({ perSecond: 1, burst: 30 });
  /** Waiting device codes, at most, in all and per address (device.ts); tests lower them. */
  deviceCodeLimits: { max: number; perAddress: number } = { ...DEVICE_CODE_LIMITS };
  /** Per source address, for device-code polls (a CLI polls every few seconds). */
  readonly devicePolls = new RateLimiter({ perSecond: 2, burst: 20 });
  /** Join attempts per address, replayed-join audits, host-key changes per run (agents.ts). */
  readonly agentGuards = new AgentGuards();
  /**
   * Where browsers reach the CA; the server sets it once it knows its bound port. The default
   * suits tests that never listen.
   */
  web: WebConfig = webConfigFor('http://localhost');

  constructor(readonly ctx: AuthorityContext) {
    this.issuer = new Issuer(ctx);
    this.hostCerts = new HostCertIssuer(ctx);
  }
}
