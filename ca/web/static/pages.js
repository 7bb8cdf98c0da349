// The passkey pages' one script (no inline script: the CSP forbids it). Each page is
// chosen by <body data-page>. WebAuthn calls go through @simplewebauthn/browser.
'use strict';

(() => {
  const { startRegistration, startAuthentication, browserSupportsWebAuthn } = window.SimpleWebAuthnBrowser;
  const $ = (id) => document.getElementById(id);
  const CSRF_HEADER = 'x-dstack-ca-csrf';

  function status(text, kind) {
    const el = $('status');
    el.textContent = text;
    el.className = kind || '';
  }

  async function api(method, path, body, csrf) {
    const headers = {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (csrf) headers[CSRF_HEADER] = csrf;
    const res = await fetch(path, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) });
    const data = res.status === 204 ? null : await res.json().catch(() => null);
    if (!res.ok) {
      const err = new Error((data && data.message) || `the server answered ${res.status}`);
      err.status = res.status;
      throw err;
    }
    return data;
  }

  /** Runs one user action with its buttons disabled; errors end up in the status line. */
  function action(buttons, fn) {
    return async () => {
      buttons.forEach((b) => (b.disabled = true));
      try {
        await fn();
      } catch (e) {
        if (e && e.status === 401 && document.body.dataset.page === 'account') {
          // Changing passkeys needs a fresh login (see the server's step-up rule).
          location.assign('/login');
          return;
        }
        // The browser's own refusal (cancelled, timed out) reads better than its class name.
        status(e && e.name === 'NotAllowedError' ? 'The passkey request was cancelled or timed out.' : (e && e.message) || String(e), 'error');
      } finally {
        buttons.forEach((b) => (b.disabled = false));
      }
    };
  }

  const pages = {
    async enroll() {
      // The link's secret is in the fragment (never sent to servers); take it out of the address bar.
      const secret = decodeURIComponent(location.hash.slice(1));
      history.replaceState(null, '', location.pathname);
      const go = $('go');
      if (!secret) {
        status('This enrollment link is incomplete: open the whole link you were given.', 'error');
        go.disabled = true;
        return;
      }
      // Whose passkey this creates, before anything is created; a link that cannot be used says why here.
      try {
        const { user } = await api('POST', '/v1/web/enroll/account', { enrollment: secret });
        $('who').textContent = user;
        go.disabled = false;
      } catch (e) {
        $('intro').textContent = 'This enrollment link cannot be used.';
        status((e && e.message) || String(e), 'error');
        return;
      }
      go.addEventListener(
        'click',
        action([go], async () => {
          status('Waiting for your passkey…');
          const { user, options } = await api('POST', '/v1/web/enroll/options', { enrollment: secret });
          $('who').textContent = user;
          const response = await startRegistration({ optionsJSON: options });
          const name = $('name').value.trim();
          await api('POST', '/v1/web/enroll/verify', { enrollment: secret, response, ...(name ? { name } : {}) });
          status(`Passkey saved for ${user}. You can now run: dstack-ca login`, 'ok');
          go.disabled = true;
          go.dataset.done = 'true';
        }),
      );
    },

    async login() {
      const go = $('go');
      go.addEventListener(
        'click',
        action([go], async () => {
          status('Waiting for your passkey…');
          const options = await api('POST', '/v1/web/login/options', {});
          const response = await startAuthentication({ optionsJSON: options });
          const { user } = await api('POST', '/v1/web/login/verify', { response });
          status(`Logged in as ${user}.`, 'ok');
          location.assign('/account');
        }),
      );
    },

    async device() {
      const input = $('code');
      const approve = $('approve');
      const deny = $('deny');
      input.value = new URLSearchParams(location.search).get('code') || '';
      const describe = async () => {
        const code = input.value.trim();
        if (!code) return;
        try {
          const d = await api('GET', `/v1/web/device?userCode=${encodeURIComponent(code)}`);
          $('client').textContent = `Requested at ${new Date(d.createdAt * 1000).toLocaleTimeString()} from address ${d.requestedFrom}, by a computer that calls itself "${d.client}".`;
          $('warning').textContent = d.sameAddress
            ? ''
            : `Careful: this login was started from ${d.requestedFrom} and you are at ${d.yourAddress}. If you did not start it on that machine yourself, deny it.`;
          status('');
        } catch (e) {
          $('client').textContent = '';
          $('warning').textContent = '';
          status(e.message, 'error');
        }
      };
      input.addEventListener('change', describe);
      await describe();
      const decide = (yes) =>
        action([approve, deny], async () => {
          const userCode = input.value.trim();
          status('Waiting for your passkey…');
          const options = await api('POST', '/v1/web/device/options', { userCode });
          const response = await startAuthentication({ optionsJSON: options });
          const r = await api('POST', '/v1/web/device/decide', { userCode, approve: yes, response });
          status(yes ? `Approved for ${r.user}. Return to your terminal.` : 'Denied. The terminal login will fail.', 'ok');
          document.body.dataset.decided = yes ? 'approved' : 'denied';
        });
      approve.addEventListener('click', decide(true));
      deny.addEventListener('click', decide(false));
    },

    async account() {
      let session;
      try {
        session = await api('GET', '/v1/web/session');
      } catch (e) {
        if (e.status === 401) {
          location.assign('/login');
          return;
        }
        throw e;
      }
      $('who').textContent = `Logged in as ${session.user}.`;
      const list = $('passkeys');
      const render = (passkeys) => {
        list.replaceChildren();
        for (const p of passkeys) {
          const li = document.createElement('li');
          const used = p.lastUsedAt ? `last used ${new Date(p.lastUsedAt * 1000).toLocaleString()}` : 'never used';
          li.textContent = `${p.name} (added ${new Date(p.createdAt * 1000).toLocaleDateString()}, ${used})`;
          const rm = document.createElement('button');
          rm.type = 'button';
          rm.textContent = 'Remove';
          rm.addEventListener(
            'click',
            action([rm], async () => {
              await api('DELETE', `/v1/web/passkeys/${p.id}`, undefined, session.csrf);
              session = await api('GET', '/v1/web/session');
              render(session.passkeys);
              status(`Removed ${p.name}.`, 'ok');
            }),
          );
          li.append(rm);
          list.append(li);
        }
      };
      render(session.passkeys);
      const add = $('add');
      add.addEventListener(
        'click',
        action([add], async () => {
          const options = await api('POST', '/v1/web/passkeys/options', {}, session.csrf);
          const response = await startRegistration({ optionsJSON: options });
          const name = $('name').value.trim();
          await api('POST', '/v1/web/passkeys', { response, ...(name ? { name } : {}) }, session.csrf);
          session = await api('GET', '/v1/web/session');
          render(session.passkeys);
          status('Passkey added.', 'ok');
        }),
      );
      const logout = $('logout');
      logout.addEventListener(
        'click',
        action([logout], async () => {
          await api('POST', '/v1/web/logout', undefined, session.csrf);
          location.assign('/login');
        }),
      );
    },
  };

  document.addEventListener('DOMContentLoaded', () => {
    if (!browserSupportsWebAuthn()) {
      status('This browser does not support passkeys (WebAuthn).', 'error');
      return;
    }
    const page = pages[document.body.dataset.page];
    if (page) page().catch((e) => status(e.message || String(e), 'error'));
  });
})();
