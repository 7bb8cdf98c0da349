// The passkey pages: enrollment, login, device approval, account. Small, static, and
// dependency-light (@simplewebauthn/browser plus one script of ours), served with a strict
// Content-Security-Policy: no inline script or style, nothing from other origins.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply } from 'fastify';

export const PAGE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self'",
  "form-action 'self'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join('; ');

const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': PAGE_CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cache-control': 'no-store',
};

const here = dirname(fileURLToPath(import.meta.url));

function asset(name: string): Buffer {
  return readFileSync(join(here, 'static', name));
}

function webauthnBundle(): Buffer {
  const main = createRequire(import.meta.url).resolve('@simplewebauthn/browser');
  return readFileSync(join(dirname(main), '..', 'dist', 'bundle', 'index.umd.min.js'));
}

interface Page {
  path: string;
  id: string;
  title: string;
  body: string;
}

const PAGES: Page[] = [
  {
    path: '/enroll',
    id: 'enroll',
    title: 'Create your passkey',
    // Says whose account only once the server has checked the link (pages.js fills #who).
    body: `<p id="intro">This one-time link registers a passkey for the account <strong id="who">…</strong>. Your device will ask you to unlock it.</p>
<label for="name">Name for this passkey (optional)</label>
<input id="name" maxlength="64" placeholder="e.g. laptop" autocomplete="off">
<button id="go" type="button" disabled>Create passkey</button>`,
  },
  {
    path: '/login',
    id: 'login',
    title: 'Log in',
    body: `<p>Log in to the dstack certificate authority with your passkey.</p>
<button id="go" type="button">Log in with a passkey</button>`,
  },
  {
    path: '/device',
    id: 'device',
    title: 'Approve a CLI login',
    body: `<p>A <code>dstack-ca login</code> is waiting. Check that the code below is the one your terminal shows.
Approve only a login you started yourself: whoever started it gets your access.</p>
<label for="code">Code</label>
<input id="code" maxlength="20" autocomplete="off" autocapitalize="characters" placeholder="BCDF-GHJK">
<p id="client" class="muted"></p>
<p id="warning" class="warn"></p>
<button id="approve" type="button">Approve with passkey</button>
<button id="deny" type="button" class="secondary">Deny</button>`,
  },
  {
    path: '/account',
    id: 'account',
    title: 'Your passkeys',
    body: `<p id="who" class="muted"></p>
<ul id="passkeys"></ul>
<label for="name">Name for a new passkey (optional)</label>
<input id="name" maxlength="64" autocomplete="off">
<button id="add" type="button">Add a passkey</button>
<button id="logout" type="button" class="secondary">Log out</button>`,
  },
];

/** A 16x16 key, white on blue: the pages' icon (served, so no browser logs a 404 for it). */
const FAVICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#1f4e8c"/>' +
  '<circle cx="5.5" cy="8" r="2.5" fill="none" stroke="#fff" stroke-width="1.5"/><path d="M8 8h6M12 8v2.5" stroke="#fff" stroke-width="1.5"/></svg>\n';

function html(p: Page): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${p.title} · dstack-ca</title>
<link rel="icon" href="/assets/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/assets/pages.css">
<script src="/assets/webauthn.js" defer></script>
<script src="/assets/pages.js" defer></script>
</head>
<body data-page="${p.id}">
<main>
<h1>${p.title}</h1>
${p.body}
<p id="status" role="status" aria-live="polite"></p>
</main>
</body>
</html>
`;
}

function send(reply: FastifyReply, type: string, body: string | Buffer): FastifyReply {
  for (const [k, v] of Object.entries(SECURITY_HEADERS)) void reply.header(k, v);
  return reply.type(type).send(body);
}

export function pageRoutes(app: FastifyInstance): void {
  // Read once at start: a missing asset is a broken install and should fail loudly, early.
  const assets: Record<string, { type: string; body: Buffer }> = {
    'webauthn.js': { type: 'text/javascript; charset=utf-8', body: webauthnBundle() },
    'pages.js': { type: 'text/javascript; charset=utf-8', body: asset('pages.js') },
    'pages.css': { type: 'text/css; charset=utf-8', body: asset('pages.css') },
    'favicon.svg': { type: 'image/svg+xml', body: Buffer.from(FAVICON_SVG) },
  };
  for (const p of PAGES) {
    const body = html(p);
    app.get(p.path, { schema: { hide: true } }, async (_req, reply) => send(reply, 'text/html; charset=utf-8', body));
  }
  app.get('/', { schema: { hide: true } }, async (_req, reply) => reply.redirect('/account'));
  // Browsers ask for /favicon.ico on their own (a 404 in every console otherwise).
  app.get('/favicon.ico', { schema: { hide: true } }, async (_req, reply) => send(reply, 'image/svg+xml', FAVICON_SVG));
  for (const [name, a] of Object.entries(assets)) {
    app.get(`/assets/${name}`, { schema: { hide: true } }, async (_req, reply) => send(reply, a.type, a.body));
  }
}
