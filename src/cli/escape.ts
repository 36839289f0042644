// Peer-provided text (reasons, ids, kinds, metadata, a recorded stream's names)
// is printed only through these two helpers, so that a peer cannot drive the
// terminal: no escape sequences, no line breaks that fake a line of ours, no
// bidi overrides that reorder what is shown.

/**
 * C0 controls and DEL (ESC, CR, LF, TAB ... included), C1 controls (U+0080–U+009F:
 * 8-bit CSI, OSC ...), the bidi embeddings, overrides and isolates (U+202A–U+202E,
 * U+2066–U+2069) and marks (U+200E, U+200F, U+061C), the line and paragraph
 * separators (U+2028, U+2029), and lone surrogates.
 */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

const UNSAFE_IN_JSON = /[\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

function hex(c: string): string {
  const n = c.charCodeAt(0);
  return n <= 0xff ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`;
}

/**
 * `s` made safe for a terminal line: every unsafe character becomes a visible
 * escape (`\x1b`, `\x0a`, `\u202e`), and a backslash becomes `\\` so that an
 * escape shown can always be told from text the peer wrote.
 */
export function escapeText(s: unknown): string {
  return String(s).replace(/\\/g, '\\\\').replace(UNSAFE, hex);
}

/**
 * JSON.stringify, then the characters JSON leaves raw but a terminal acts on (DEL,
 * C1 controls, bidi controls, U+2028/U+2029) as \uXXXX escapes: still valid JSON,
 * parsing to the same value. bigint values are written as numbers.
 */
export function safeJson(value: unknown, space = 2): string {
  const text = JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v), space) ?? 'null';
  // C0 controls never appear raw in JSON.stringify's output except as its own layout (\n, spaces).
  return text.replace(UNSAFE_IN_JSON, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
