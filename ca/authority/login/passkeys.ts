// Passkey ceremonies (WebAuthn, @simplewebauthn/server): enrolling from a one-time link,
// adding and removing passkeys, and assertions that log a browser in or approve a CLI's
// device code. User verification is required everywhere; origin and RP id come from the
// server's public URL; every challenge answers once; signature counters must advance.
import {
  generateAuthenticationOptions,
  generateRegistrationOptions,
  verifyAuthenticationResponse,
  verifyRegistrationResponse,
  type AuthenticationResponseJSON,
  type PublicKeyCredentialCreationOptionsJSON,
  type PublicKeyCredentialRequestOptionsJSON,
  type RegistrationResponseJSON,
} from '@simplewebauthn/server';
import { CaError, badRequest, conflict, notFound } from '../../domain/errors.js';
import type { Enrollment, Identity, Passkey } from '../../domain/model.js';
import { hasControlChars, NO_CONTROLS_MESSAGE } from '../../domain/text.js';
import type { StoreReader, StoreTx } from '../../store/store.js';
import { audit } from '../audit.js';
import { requireEnabledIn } from '../lookup.js';
import type { Authority } from '../authority.js';
import { DEFAULT_LOGIN_CONFIG, type LoginConfig } from '../context.js';
import { hashToken, newSecret, secretLookupHash } from '../tokens.js';
import type { CeremonyPurpose, Requester } from './challenges.js';

export const loginConfig = (a: Authority): LoginConfig => a.ctx.config.login ?? DEFAULT_LOGIN_CONFIG;

const refused = (why: string) => new CaError('unauthenticated', `passkey refused: ${why}`);

/** WebAuthn user handle: opaque, stable per user, no personal data (RFC: at most 64 bytes). */
function userHandle(identity: Identity): Uint8Array {
  return new TextEncoder().encode(`dstack-ca:${identity.id}`);
}

// ---- enrollment links ----

/** A new one-time enrollment link secret for `identity` (inside the caller's transaction). */
export async function createEnrollment(tx: StoreTx, identity: Identity, now: number, ttl: number): Promise<{ secret: string; expiresAt: number }> {
  await requireEnabledIn(tx, identity.id, () => conflict(`user ${identity.name} is disabled: enable it first`));
  const { secret, hash } = newSecret('enroll');
  const expiresAt = now + ttl;
  await tx.insertEnrollment({ hash, identityId: identity.id, expiresAt, usedAt: null, revokedAt: null, createdAt: now });
  return { secret, expiresAt };
}

export function enrollmentUrl(a: Authority, secret: string): string {
  // The secret rides in the fragment, which browsers never send: it stays out of access logs.
  return `${a.web.publicUrl}/enroll#${secret}`;
}

async function usableEnrollment(store: StoreReader, secret: string, now: number): Promise<{ enrollment: Enrollment; identity: Identity }> {
  const hash = secretLookupHash('enroll', secret);
  const enrollment = hash === null ? null : await store.getEnrollmentByHash(hash);
  if (!enrollment) throw refused('this enrollment link is not valid; ask an admin for a new one');
  if (enrollment.usedAt !== null) throw refused('this enrollment link was already used; ask an admin for a new one');
  if (enrollment.revokedAt !== null) throw refused('this enrollment link was replaced by a newer one');
  if (enrollment.expiresAt <= now) throw refused('this enrollment link has expired; ask an admin for a new one');
  const identity = await store.getIdentity(enrollment.identityId);
  if (!identity || identity.disabled) throw refused('this user is disabled');
  return { enrollment, identity };
}

/** `requester`: who started the ceremony (rationed per address, or per logged-in identity). */
async function registrationOptions(a: Authority, identity: Identity, purpose: CeremonyPurpose, requester: Requester): Promise<PublicKeyCredentialCreationOptionsJSON> {
  const existing = await a.ctx.store.listPasskeys(identity.id);
  const options = await generateRegistrationOptions({
    rpName: a.web.rpName,
    rpID: a.web.rpId,
    userName: identity.name,
    userDisplayName: identity.name,
    userID: userHandle(identity) as Uint8Array<ArrayBuffer>,
    attestationType: 'none',
    excludeCredentials: existing.map((p) => ({ id: p.credentialId, transports: p.transports })),
    authenticatorSelection: { residentKey: 'preferred', userVerification: 'required' },
    timeout: 120_000,
  });
  a.challenges.remember(options.challenge, purpose, a.ctx.now(), requester);
  return options;
}

/** Registration options for the user an enrollment link belongs to. */
export async function enrollmentOptions(a: Authority, secret: string, requester: string): Promise<{ user: string; options: PublicKeyCredentialCreationOptionsJSON }> {
  const { enrollment, identity } = await usableEnrollment(a.ctx.store, secret, a.ctx.now());
  return { user: identity.name, options: await registrationOptions(a, identity, { kind: 'enroll', enrollmentId: enrollment.id, identityId: identity.id }, { address: requester }) };
}

/**
 * The account an enrollment link enrolls, for the page to show before the ceremony (issue 14,
 * item 22): `{user}` for a usable link only; any other link is refused exactly as the options
 * call refuses it. The secret is 32 random bytes looked up by hash, so the answer tells nothing
 * to anyone who does not already hold the link (nothing to enumerate); the route is rationed
 * per address like the other anonymous starts.
 */
export async function enrollmentAccount(a: Authority, secret: string): Promise<{ user: string }> {
  const { identity } = await usableEnrollment(a.ctx.store, secret, a.ctx.now());
  return { user: identity.name };
}

const PASSKEY_NAME_MAX = 64;

function passkeyName(name: string | undefined, fallback: string): string {
  const n = (name ?? '').trim();
  if (n.length > PASSKEY_NAME_MAX) throw badRequest(`at most ${PASSKEY_NAME_MAX} characters`, 'name');
  if (hasControlChars(n)) throw badRequest(NO_CONTROLS_MESSAGE, 'name');
  return n === '' ? fallback : n;
}

/**
 * What every ceremony checks alike: our challenge (answering once, and only for a purpose
 * `accept` allows), the origin, the RP id, and user verification.
 */
function expectations(a: Authority, accept: (p: CeremonyPurpose) => boolean) {
  const now = a.ctx.now();
  return {
    expectedChallenge: (challenge: string): boolean => {
      const purpose = a.challenges.take(challenge, now);
      return purpose !== null && accept(purpose);
    },
    expectedOrigin: a.web.origin,
    expectedRPID: a.web.rpId,
    requireUserVerification: true,
  };
}

/** Runs a library check; what it throws becomes a refusal a user can act on. */
async function libraryCheck<T>(check: () => Promise<T>): Promise<T> {
  try {
    return await check();
  } catch (e) {
    throw refused(describeWebAuthnError(e));
  }
}

async function verifyRegistration(a: Authority, response: RegistrationResponseJSON, accept: (p: CeremonyPurpose) => boolean) {
  const result = await libraryCheck(() => verifyRegistrationResponse({ response, ...expectations(a, accept) }));
  if (!result.verified) throw refused('the registration did not verify');
  return result.registrationInfo;
}

/** Cuts the library's messages down to what a user can act on. */
function describeWebAuthnError(e: unknown): string {
  const m = (e as Error).message ?? String(e);
  if (/challenge/i.test(m)) return 'the challenge is unknown, expired or already used; reload the page and try again';
  if (/origin/i.test(m)) return `wrong origin (${m.replace(/^.*origin\s*/i, '').slice(0, 120)})`;
  if (/rp ?id/i.test(m)) return 'wrong relying party';
  if (/counter/i.test(m)) return 'the signature counter did not advance (a cloned authenticator?)';
  if (/user verification|userVerified/i.test(m)) return 'user verification is required';
  return m.slice(0, 200);
}

async function storePasskey(tx: StoreTx, identity: Identity, info: Awaited<ReturnType<typeof verifyRegistration>>, name: string, now: number): Promise<Passkey> {
  await requireEnabledIn(tx, identity.id, () => refused('this user is disabled'));
  if (await tx.getPasskeyByCredentialId(info.credential.id)) throw conflict('this passkey is already registered');
  return tx.insertPasskey({
    identityId: identity.id,
    credentialId: info.credential.id,
    publicKey: Buffer.from(info.credential.publicKey),
    counter: info.credential.counter,
    transports: [...(info.credential.transports ?? [])],
    name,
    createdAt: now,
    lastUsedAt: null,
  });
}

/** Finishes enrollment: the link is spent, the passkey stored, and a browser session begins. */
export async function enrollmentVerify(a: Authority, secret: string, response: RegistrationResponseJSON, name?: string): Promise<{ user: Identity; session: WebSessionIssued }> {
  const { enrollment, identity } = await usableEnrollment(a.ctx.store, secret, a.ctx.now());
  const info = await verifyRegistration(a, response, (p) => p.kind === 'enroll' && p.enrollmentId === enrollment.id);
  const now = a.ctx.now();
  const label = passkeyName(name, 'passkey');
  const session = await a.ctx.store.tx(async (tx) => {
    // Re-checked inside the transaction: two tabs racing with one link, only one wins.
    await usableEnrollment(tx, secret, now);
    await tx.markEnrollmentUsed(enrollment.id, now);
    const passkey = await storePasskey(tx, identity, info, label, now);
    await audit(tx, now, `user:${identity.name}`, 'passkey.enroll', { user: identity.name, passkey: passkey.name, credentialId: passkey.credentialId });
    return startWebSession(tx, a, identity, now);
  });
  return { user: identity, session };
}

/** Registration options to add another passkey, for a logged-in browser. */
export async function addPasskeyOptions(a: Authority, identity: Identity): Promise<PublicKeyCredentialCreationOptionsJSON> {
  return registrationOptions(a, identity, { kind: 'add-passkey', identityId: identity.id }, { identityId: identity.id });
}

export async function addPasskeyVerify(a: Authority, identity: Identity, response: RegistrationResponseJSON, name?: string): Promise<Passkey> {
  const info = await verifyRegistration(a, response, (p) => p.kind === 'add-passkey' && p.identityId === identity.id);
  const now = a.ctx.now();
  const label = passkeyName(name, 'passkey');
  return a.ctx.store.tx(async (tx) => {
    const passkey = await storePasskey(tx, identity, info, label, now);
    await audit(tx, now, `user:${identity.name}`, 'passkey.add', { user: identity.name, passkey: passkey.name, credentialId: passkey.credentialId });
    return passkey;
  });
}

/** Removes one of the user's passkeys; the last one stays (an admin reset replaces it). */
export async function removePasskey(a: Authority, identity: Identity, passkeyId: number): Promise<void> {
  const now = a.ctx.now();
  await a.ctx.store.tx(async (tx) => {
    const mine = await tx.listPasskeys(identity.id);
    const target = mine.find((p) => p.id === passkeyId);
    if (!target) throw notFound(`no passkey ${passkeyId} for user ${identity.name}`);
    if (mine.length === 1) throw conflict('this is your only passkey: add another one first (or ask an admin to reset your enrollment)');
    await tx.deletePasskey(target.id);
    await audit(tx, now, `user:${identity.name}`, 'passkey.remove', { user: identity.name, passkey: target.name, credentialId: target.credentialId });
  });
}

// ---- assertions: browser login and device approval ----

/** Options for a discoverable-credential assertion (no user name typed). */
export async function assertionOptions(a: Authority, purpose: CeremonyPurpose, requester: string): Promise<PublicKeyCredentialRequestOptionsJSON> {
  const options = await generateAuthenticationOptions({ rpID: a.web.rpId, userVerification: 'required', timeout: 120_000 });
  a.challenges.remember(options.challenge, purpose, a.ctx.now(), { address: requester });
  return options;
}

/**
 * Checks an assertion made for `accept`-able purposes; the caller records the new counter
 * (recordAssertion) in the transaction of what the assertion grants, so both commit together.
 */
export async function verifyAssertion(
  a: Authority,
  response: AuthenticationResponseJSON,
  accept: (p: CeremonyPurpose) => boolean,
): Promise<{ identity: Identity; passkey: Passkey; newCounter: number }> {
  const passkey = await a.ctx.store.getPasskeyByCredentialId(response.id);
  if (!passkey) throw refused('this passkey is not registered here');
  const identity = await a.ctx.store.getIdentity(passkey.identityId);
  if (!identity || identity.disabled) throw refused('this user is disabled');
  const handle = response.response.userHandle;
  if (handle !== undefined && handle !== Buffer.from(userHandle(identity)).toString('base64url')) throw refused('the passkey answered for another user');
  const credential = { id: passkey.credentialId, publicKey: new Uint8Array(passkey.publicKey), counter: passkey.counter, transports: passkey.transports };
  const result = await libraryCheck(() => verifyAuthenticationResponse({ response, credential, ...expectations(a, accept) }));
  if (!result.verified) throw refused('the signature did not verify');
  return { identity, passkey, newCounter: result.authenticationInfo.newCounter };
}

/** Records the use inside a transaction, refusing a counter that went backwards meanwhile. */
export async function recordAssertion(tx: StoreTx, passkey: Passkey, newCounter: number, now: number): Promise<void> {
  const current = (await tx.getPasskeyByCredentialId(passkey.credentialId))?.counter ?? 0;
  if ((newCounter !== 0 || current !== 0) && newCounter <= current) throw refused('the signature counter did not advance (a cloned authenticator?)');
  await tx.recordPasskeyUse(passkey.id, newCounter, now);
}

// ---- browser sessions ----

export interface WebSessionIssued {
  secret: string;
  expiresAt: number;
}

export async function startWebSession(tx: StoreTx, a: Authority, identity: Identity, now: number): Promise<WebSessionIssued> {
  // Re-checked in the transaction that creates the session (verifyAssertion's check came
  // before it, and a disable may have committed since).
  await requireEnabledIn(tx, identity.id, () => refused('this user is disabled'));
  const { secret, hash } = newSecret('web');
  const expiresAt = now + loginConfig(a).webSessionTtl;
  await tx.insertWebSession({ hash, identityId: identity.id, expiresAt, revokedAt: null, createdAt: now });
  return { secret, expiresAt };
}

/** A browser login: the assertion, the counter and the new session in one transaction. */
export async function webLogin(a: Authority, response: AuthenticationResponseJSON): Promise<{ identity: Identity; session: WebSessionIssued }> {
  const { identity, passkey, newCounter } = await verifyAssertion(a, response, (p) => p.kind === 'login');
  const now = a.ctx.now();
  const session = await a.ctx.store.tx(async (tx) => {
    await recordAssertion(tx, passkey, newCounter, now);
    await audit(tx, now, `user:${identity.name}`, 'login', { user: identity.name, via: 'browser', passkey: passkey.name });
    return startWebSession(tx, a, identity, now);
  });
  return { identity, session };
}

/** The identity behind a session cookie, or null (unknown, expired, revoked, disabled user). */
export async function resolveWebSession(a: Authority, secret: string | undefined): Promise<{ identity: Identity; sessionId: number; hash: string; createdAt: number } | null> {
  if (secret === undefined) return null;
  const hash = secretLookupHash('web', secret);
  const s = hash === null ? null : await a.ctx.store.getWebSessionByHash(hash);
  if (!s || s.revokedAt !== null || s.expiresAt <= a.ctx.now()) return null;
  const identity = await a.ctx.store.getIdentity(s.identityId);
  if (!identity || identity.disabled) return null;
  return { identity, sessionId: s.id, hash: s.hash, createdAt: s.createdAt };
}

/**
 * Adding or removing a passkey outlives the session that does it, so it needs a fresh passkey
 * login (step-up): a session older than this must log in again first.
 */
export const STEP_UP_MAX_AGE = 300;

/** CSRF token of a session: derived from its stored hash, so only the server and its page know it. */
export function csrfTokenFor(sessionHash: string): string {
  return hashToken(`csrf:${sessionHash}`);
}

export async function endWebSession(a: Authority, identity: Identity, sessionId: number): Promise<void> {
  const now = a.ctx.now();
  await a.ctx.store.tx(async (tx) => {
    await tx.revokeWebSessions({ id: sessionId }, now);
    await audit(tx, now, `user:${identity.name}`, 'logout', { user: identity.name, via: 'browser' });
  });
}
