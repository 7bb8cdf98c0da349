// Device-code login for the CLI (the RFC 8628 device authorization grant, in spirit): the
// CLI gets a secret device code and shows the user a short user code; the user approves it
// in the browser with a passkey assertion made for that code; the CLI's next poll receives
// a login session (an expiring user token) exactly once.
import { randomInt } from 'node:crypto';
import type { AuthenticationResponseJSON } from '@simplewebauthn/server';
import { CaError, notFound } from '../../domain/errors.js';
import type { DeviceCode, Identity } from '../../domain/model.js';
import { audit } from '../audit.js';
import { requireEnabledIn } from '../lookup.js';
import type { Authority } from '../authority.js';
import { newSecret, newToken, secretLookupHash } from '../tokens.js';
import { assertionOptions, loginConfig, recordAssertion, verifyAssertion } from './passkeys.js';

/** RFC 8628 section 6.1: consonants only (no words, no look-alikes), 20^8 codes. */
const USER_CODE_ALPHABET = 'BCDFGHJKLMNPQRSTVWXZ';
/**
 * Anyone may start a login, so no caller can fill the table for everyone (issue 12 item 5):
 * an address (an IPv6 /64 counts as one) holds at most `perAddress` waiting codes, its oldest
 * giving way to its newest; when `max` codes wait in all, the oldest waiting one gives way, so
 * a new caller always gets a code. Pushing a code out before it is approved takes `max /
 * perAddress` addresses (4,000 by default) each waiting at its cap.
 */
export const DEVICE_CODE_LIMITS: Readonly<{ max: number; perAddress: number }> = { max: 20_000, perAddress: 5 };

export function newUserCode(): string {
  let s = '';
  for (let i = 0; i < 8; i++) s += USER_CODE_ALPHABET[randomInt(USER_CODE_ALPHABET.length)];
  return `${s.slice(0, 4)}-${s.slice(4)}`;
}

/** What users type is forgiving: case, spaces and a missing dash do not matter. */
export function normalizeUserCode(input: string): string | null {
  const s = input.toUpperCase().replace(/[\s-]/g, '');
  if (s.length !== 8 || [...s].some((ch) => !USER_CODE_ALPHABET.includes(ch))) return null;
  return `${s.slice(0, 4)}-${s.slice(4)}`;
}

export interface DeviceAuthorization {
  deviceCode: string;
  userCode: string;
  verificationUri: string;
  verificationUriComplete: string;
  expiresIn: number;
  interval: number;
}

export async function startDeviceLogin(a: Authority, client: string, requestedFrom: string): Promise<DeviceAuthorization> {
  const cfg = loginConfig(a);
  const limits = a.deviceCodeLimits;
  const now = a.ctx.now();
  const { secret, hash } = newSecret('device');
  const userCode = await a.ctx.store.tx(async (tx) => {
    // Codes expired for a day serve nothing any more (a poll of an unknown code is expired_token too).
    await tx.deleteExpiredDeviceCodes(now - 24 * 3600);
    const mine = await tx.countPendingDeviceCodesFrom(requestedFrom, now);
    if (mine >= limits.perAddress) await tx.expireOldestPendingDeviceCodes({ requestedFrom }, mine - limits.perAddress + 1, now);
    const all = await tx.countPendingDeviceCodes(now);
    if (all >= limits.max) await tx.expireOldestPendingDeviceCodes({}, all - limits.max + 1, now);
    let code = newUserCode();
    // A clash with a waiting code is astronomically rare; redraw rather than ever show two logins one code.
    for (let i = 0; (await tx.getPendingDeviceCode(code, now)) !== null; i++) {
      if (i >= 5) throw new CaError('unavailable', 'could not draw a free user code; try again');
      code = newUserCode();
    }
    await tx.insertDeviceCode({ deviceHash: hash, userCode: code, client, requestedFrom, createdAt: now, expiresAt: now + cfg.deviceCodeTtl, lastPolledAt: null, approvedBy: null, decidedAt: null, denied: false, consumedAt: null });
    return code;
  });
  const verificationUri = `${a.web.publicUrl}/device`;
  return { deviceCode: secret, userCode, verificationUri, verificationUriComplete: `${verificationUri}?code=${userCode}`, expiresIn: cfg.deviceCodeTtl, interval: cfg.deviceInterval };
}

/** RFC 8628 section 3.5 answers while the login is not (or no longer) to be had. */
export class DevicePollError extends CaError {
  constructor(
    readonly oauthError: 'authorization_pending' | 'slow_down' | 'expired_token' | 'access_denied',
    message: string,
  ) {
    super('bad_request', message);
  }
}

export interface DeviceLoginSession {
  token: string;
  expiresAt: number;
  user: string;
}

export async function pollDeviceLogin(a: Authority, deviceCode: string): Promise<DeviceLoginSession> {
  const cfg = loginConfig(a);
  const now = a.ctx.now();
  const hash = secretLookupHash('device', deviceCode);
  const d = hash === null ? null : await a.ctx.store.getDeviceCodeByHash(hash);
  if (!d) throw new DevicePollError('expired_token', 'unknown device code; run dstack-ca login again');
  // Before the consumed check: an approval withdrawn is spent too, and says why.
  if (d.denied) throw deniedError(d);
  if (d.consumedAt !== null) throw new DevicePollError('expired_token', 'this device code was already used; run dstack-ca login again');
  // An approval is collected within the code's life (plus a poll interval, for an approval in
  // its last second); later it is gone, so an attacker cannot sit on an approved code.
  if (now >= d.expiresAt + (d.approvedBy === null ? 0 : cfg.deviceInterval + 5)) {
    throw new DevicePollError('expired_token', d.approvedBy === null ? 'the device code expired before it was approved; run dstack-ca login again' : 'the device code expired; run dstack-ca login again');
  }
  if (d.approvedBy === null) {
    // Polling too fast changes nothing (no write): a loop of polls costs the caller, not the CA.
    if (d.lastPolledAt !== null && now - d.lastPolledAt < cfg.deviceInterval - 1) throw new DevicePollError('slow_down', `poll at most every ${cfg.deviceInterval} s`);
    await a.ctx.store.tx((tx) => tx.markDeviceCodePolled(d.id, now));
    throw new DevicePollError('authorization_pending', 'waiting for approval in the browser');
  }
  const approver = d.approvedBy;
  const outcome = await a.ctx.store.tx(async (tx): Promise<DeviceLoginSession | 'used' | 'withdrawn'> => {
    // Writers are serialised: re-read inside the transaction so two polls never both get a
    // session, and an approval withdrawn meanwhile (the approver disabled) is answered as such.
    const current = await tx.getDeviceCodeByHash(d.deviceHash);
    if (current?.denied) return 'withdrawn';
    if (current?.consumedAt !== null) return 'used';
    const user = await tx.getIdentity(approver);
    if (!user || user.disabled) {
      // Disabling withdraws approvals at once (admin.ts); this catches one left from before
      // that rule. Withdrawn and spent (committed): re-enabling the user must not revive it.
      await tx.withdrawApprovedDeviceCodes(approver, now);
      return 'withdrawn';
    }
    await tx.consumeDeviceCode(d.id, now);
    const { secret, hash: tokenHash } = newToken('user');
    const expiresAt = now + cfg.sessionTtl;
    await tx.insertToken({ kind: 'user', hash: tokenHash, identityId: user.id, runId: null, name: `login from ${d.client}`, expiresAt, usedAt: null, revokedAt: null, createdAt: now });
    await audit(tx, now, `user:${user.name}`, 'login', { user: user.name, via: 'device-code', client: d.client, userCode: d.userCode, expiresAt });
    return { token: secret, expiresAt, user: user.name };
  });
  if (outcome === 'used') throw new DevicePollError('expired_token', 'this device code was already used; run dstack-ca login again');
  if (outcome === 'withdrawn') throw deniedError({ approvedBy: approver });
  return outcome;
}

/** access_denied, saying why: denied on the page, or an approval withdrawn (see DeviceCode.denied). */
function deniedError(d: Pick<DeviceCode, 'approvedBy'>): DevicePollError {
  return d.approvedBy === null
    ? new DevicePollError('access_denied', 'the login was denied in the browser')
    : new DevicePollError('access_denied', 'the approval was withdrawn: the approving user was disabled before the login was collected; run dstack-ca login again once the user is enabled');
}

async function pendingCode(a: Authority, userCode: string): Promise<DeviceCode> {
  const code = normalizeUserCode(userCode);
  const d = code === null ? null : await a.ctx.store.getPendingDeviceCode(code, a.ctx.now());
  if (!d) throw notFound(`no login is waiting for code ${userCode.slice(0, 20)}: it may have expired or already been approved; run dstack-ca login again`);
  return d;
}

/**
 * What the approval page shows before the user decides: the host name the CLI claims, the
 * address it really called from, and the approver's own address, so a login started by
 * someone else (a phishing link) stands out.
 */
export async function describeDeviceLogin(
  a: Authority,
  userCode: string,
  viewerAddress: string,
): Promise<{ userCode: string; client: string; requestedFrom: string; yourAddress: string; sameAddress: boolean; createdAt: number; expiresAt: number }> {
  const d = await pendingCode(a, userCode);
  return {
    userCode: d.userCode,
    client: d.client,
    requestedFrom: d.requestedFrom,
    yourAddress: viewerAddress,
    sameAddress: d.requestedFrom === viewerAddress,
    createdAt: d.createdAt,
    expiresAt: d.expiresAt,
  };
}

export async function deviceDecisionOptions(a: Authority, userCode: string, requester: string) {
  const d = await pendingCode(a, userCode);
  return assertionOptions(a, { kind: 'device', deviceCodeId: d.id }, requester);
}

/** Approves (or denies) a waiting login with a passkey assertion made for this very code. */
export async function decideDeviceLogin(a: Authority, userCode: string, response: AuthenticationResponseJSON, approve: boolean): Promise<{ identity: Identity; client: string }> {
  const d = await pendingCode(a, userCode);
  const { identity, passkey, newCounter } = await verifyAssertion(a, response, (p) => p.kind === 'device' && p.deviceCodeId === d.id);
  const now = a.ctx.now();
  await a.ctx.store.tx(async (tx) => {
    // The approver is re-checked here: a disable that committed after verifyAssertion looked
    // must not be followed by an approval the disable never withdrew.
    await requireEnabledIn(tx, identity.id, () => new CaError('unauthenticated', 'passkey refused: this user is disabled'));
    await recordAssertion(tx, passkey, newCounter, now);
    if ((await tx.getPendingDeviceCode(d.userCode, now))?.id !== d.id) throw new CaError('conflict', 'this login was already approved or denied');
    await tx.decideDeviceCode(d.id, approve ? { approvedBy: identity.id } : { denied: true }, now);
    await audit(tx, now, `user:${identity.name}`, approve ? 'login.device.approve' : 'login.device.deny', { user: identity.name, client: d.client, userCode: d.userCode, passkey: passkey.name });
  });
  return { identity, client: d.client };
}
