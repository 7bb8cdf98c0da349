// The spent-nonce list of possession proofs: a nonce is spent only by a proof that verifies,
// lookups do not slow down as the list grows, entries leave once their nonce expired, and the
// list has a ceiling past which proofs are refused rather than replays admitted.
import { describe, expect, it } from 'vitest';
import { caSigner } from '../../test/fixtures/keys.js';
import { CaError } from '../domain/errors.js';
import { armorSshsig, sshsigSign } from '../ssh/sshsig.js';
import { NONCE_TTL, NonceBook, PROOF_NAMESPACE, proofMessage, verifyPossession } from './proof.js';

const holder = caSigner('ed25519');
const stranger = caSigner('ecdsa-p256');
const RUN = 'ml/train-1';

async function proofFor(nonce: string, signer = holder, run = RUN) {
  return { nonce, signature: armorSshsig(await sshsigSign(signer, PROOF_NAMESPACE, proofMessage(run, nonce))) };
}

function refusal(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return `${(e as CaError).status} ${(e as Error).message}`;
  }
  return 'accepted';
}

describe('possession proof nonces', () => {
  it('a failed proof spends nothing: the holder can still use the nonce, once', async () => {
    const book = new NonceBook();
    const t = 1_000_000;
    const { nonce } = book.issue(t);
    // Someone who saw the nonce sends garbage, a proof by another key, a proof for another run.
    expect(refusal(() => verifyPossession(book, { nonce, signature: 'junk' }, RUN, holder.publicKey, t))).toMatch(/^403 proof signature/);
    const other = await proofFor(nonce, stranger);
    expect(refusal(() => verifyPossession(book, other, RUN, holder.publicKey, t))).toBe('403 proof is signed by a different key than the one to certify');
    const wrongRun = await proofFor(nonce, holder, 'ml/other');
    expect(refusal(() => verifyPossession(book, wrongRun, RUN, holder.publicKey, t))).toBe('403 proof signature: signature does not verify');
    expect(book.spentCount).toBe(0);
    const good = await proofFor(nonce);
    // A proof that verifies spends nothing by itself: the caller spends it once the key is granted.
    const proven = verifyPossession(book, good, RUN, holder.publicKey, t + 1);
    expect(book.spentCount).toBe(0);
    book.spend(proven.nonce);
    expect(book.spentCount).toBe(1);
    expect(refusal(() => verifyPossession(book, good, RUN, holder.publicKey, t + 2))).toBe('403 proof nonce was already used');
    // Two requests that verified the same proof before either spent it: only the first passes.
    expect(refusal(() => book.spend(proven.nonce))).toBe('403 proof nonce was already used');
  });

  it('spent entries leave once their nonce has expired', () => {
    const book = new NonceBook();
    const t = 2_000_000;
    for (let i = 0; i < 1000; i++) book.spend(book.check(book.issue(t + (i % 10)).nonce, t + 10));
    expect(book.spentCount).toBe(1000);
    const late = book.issue(t + NONCE_TTL + 5).nonce;
    book.check(late, t + NONCE_TTL + 5); // a call after the first five seconds' nonces expired
    expect(book.spentCount).toBe(500);
    book.check(late, t + 2 * NONCE_TTL);
    expect(book.spentCount).toBe(0);
  });

  it('is bounded: when full, a proof is refused with 503 and a spent nonce is still refused', () => {
    const book = new NonceBook(100);
    const t = 3_000_000;
    const first = book.issue(t).nonce;
    book.spend(book.check(first, t));
    for (let i = 1; i < 100; i++) book.spend(book.check(book.issue(t).nonce, t));
    const extra = book.check(book.issue(t).nonce, t);
    expect(refusal(() => book.spend(extra))).toBe('503 too many possession proofs in the last minutes; try again shortly');
    expect(refusal(() => book.check(first, t + 1))).toBe('403 proof nonce was already used');
    expect(book.spentCount).toBe(100);
  });

  it('lookups cost the same with 200,000 spent nonces as with none (no scan)', () => {
    const t = 4_000_000;
    const time = (book: NonceBook, nonces: string[]) => {
      const start = process.hrtime.bigint();
      for (const n of nonces) book.check(n, t + 1);
      return Number(process.hrtime.bigint() - start);
    };
    const empty = new NonceBook(1_000_000);
    const full = new NonceBook(1_000_000);
    for (let i = 0; i < 200_000; i++) full.spend(full.check(full.issue(t - (i % NONCE_TTL)).nonce, t));
    expect(full.spentCount).toBe(200_000);
    const probesEmpty = Array.from({ length: 5000 }, () => empty.issue(t).nonce);
    const probesFull = Array.from({ length: 5000 }, () => full.issue(t).nonce);
    time(empty, probesEmpty.slice(0, 500)); // warm up both paths
    time(full, probesFull.slice(0, 500));
    const ratio = time(full, probesFull) / time(empty, probesEmpty);
    // A linear scan makes each lookup ~200,000 steps: thousands of times slower.
    expect(ratio).toBeLessThan(4);
  });
});
