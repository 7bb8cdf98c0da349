// The CA's domain core, as the HTTP layer sees it: a context plus the stateful parts
// (serial blocks, group commit, proof nonces). Operations live in their own modules.
import type { AuthorityContext } from './context.js';
import { Issuer } from './issuance.js';

export class Authority {
  readonly issuer: Issuer;
  constructor(readonly ctx: AuthorityContext) {
    this.issuer = new Issuer(ctx);
  }
}
