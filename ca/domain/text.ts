// Free text people type and the CA stores (passkey names, revocation reasons, force
// commands, OIDC claim patterns): shown later on terminals and pages, so characters a
// terminal acts on or that reorder what is displayed are refused at the API, naming the field.
import { z } from 'zod';

/**
 * C0 controls (tab and newline included), DEL, C1 controls, the Unicode line and paragraph
 * separators, and the bidirectional embedding, override and isolate controls (which make
 * text display in another order than it is stored: "Trojan Source").
 */
// eslint-disable-next-line no-control-regex
export const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
export const CONTROL_CHARS_GLOBAL = new RegExp(CONTROL_CHARS.source, 'g');

export const NO_CONTROLS_MESSAGE = 'must not contain control characters (including tabs and newlines)';

export function hasControlChars(text: string): boolean {
  return CONTROL_CHARS.test(text);
}

/** A trimmed line of free text of at most `max` characters with no control characters. */
export function freeText(max: number) {
  return z
    .string()
    .max(max, `must be at most ${max} characters`)
    .refine((s) => !hasControlChars(s), NO_CONTROLS_MESSAGE)
    .transform((s) => s.trim());
}
