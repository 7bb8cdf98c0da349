// Budgets for the server-sent event streams of GET /v1/krl/events (issue 12 item 10). A
// stream holds a socket and a listener for as long as its client likes, and anyone may open
// one, so they are counted: anonymous streams per source address (an IPv6 /64 counts as one)
// and in all; agents' streams (Authorization: Bearer <agent token>) per agent credential and
// in all, in a budget of their own, so no number of anonymous streams ever keeps an agent
// from its KRL pushes. Over budget: 429 (this address or agent has enough) or 503 (the
// anonymous budget is spent), both with Retry-After.
import type { Actor } from '../authority/actors.js';
import { DEFAULT_STREAM_LIMITS, type StreamLimits } from '../authority/context.js';
import { addressKey } from '../authority/rate-limit.js';

/** Seconds a refused client is asked to wait (agents back off with jitter anyway). */
export const STREAM_RETRY_AFTER = 30;

export type Admission =
  | { ok: true; release: () => void }
  | { ok: false; status: 429 | 503; retryAfter: number; message: string };

export class StreamBudget {
  private readonly open = new Map<string, number>();
  private anonymous = 0;
  private agents = 0;

  constructor(readonly limits: StreamLimits = DEFAULT_STREAM_LIMITS) {}

  /** Admits one more stream for this caller, or says why not. Call release() once when it ends. */
  admit(actor: Actor, ip: string): Admission {
    const agent = actor.kind === 'agent';
    const key = agent ? `agent:${actor.tokenId}` : `addr:${addressKey(ip)}`;
    const mine = this.open.get(key) ?? 0;
    const refuse = (status: 429 | 503, message: string): Admission => ({ ok: false, status, retryAfter: STREAM_RETRY_AFTER, message });
    if (agent) {
      if (mine >= this.limits.perAgent) return refuse(429, `this agent already has ${mine} event streams open`);
      if (this.agents >= this.limits.agents) return refuse(503, 'too many agent event streams are open; retry later');
      this.agents++;
    } else {
      if (mine >= this.limits.perAddress) return refuse(429, `too many event streams from this address (at most ${this.limits.perAddress}); agents authenticate with their credential`);
      if (this.anonymous >= this.limits.anonymous) return refuse(503, 'too many unauthenticated event streams are open; retry later (agents authenticate with their credential)');
      this.anonymous++;
    }
    this.open.set(key, mine + 1);
    let released = false;
    return {
      ok: true,
      release: () => {
        if (released) return;
        released = true;
        if (agent) this.agents--;
        else this.anonymous--;
        const n = (this.open.get(key) ?? 1) - 1;
        if (n <= 0) this.open.delete(key);
        else this.open.set(key, n);
      },
    };
  }

  /** Open streams, for tests and metrics. */
  get counts(): { anonymous: number; agents: number } {
    return { anonymous: this.anonymous, agents: this.agents };
  }
}
