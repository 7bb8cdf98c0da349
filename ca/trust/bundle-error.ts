/** Why a trust bundle, a KRL status, a trust proof or a fingerprint was refused. Nothing is installed when this is thrown. */
export class TrustError extends Error {
  override readonly name = 'TrustError';
}
