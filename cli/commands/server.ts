// `dstack-ca server`: runs the CA. The README's quick start is `npm start`, which runs this.
import { hostname } from 'node:os';
import { resolve as resolvePath } from 'node:path';
import type { Server as TlsServer } from 'node:tls';
import type { Command } from 'commander';
import type { CliContext } from '../context.js';
import { CliError, UsageError } from '../errors.js';

interface ServerFlags {
  dataDir?: string;
  listen?: string;
  config?: string;
  caKeyType?: string;
  tlsCert?: string;
  tlsKey?: string;
  insecureHttp?: boolean;
  trustProxy?: string[];
  logRequests?: boolean;
}

const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

export function registerServer(program: Command, ctx: CliContext): void {
  program
    .command('server')
    .description('run the CA (embedded SQLite in the data dir); the first start creates the CA key and an admin token')
    .option('--data-dir <dir>', 'where the database, sealed CA keys and admin token live (default ./data)')
    .option('--listen <host:port>', 'address to listen on (default 127.0.0.1:8443)')
    .option('--config <file>', 'YAML or JSON configuration file; flags override it')
    .option('--ca-key-type <type>', 'CA key type on first start: ed25519, ecdsa-p256/384/521, rsa-3072/4096')
    .option('--tls-cert <file>', 'serve HTTPS with this PEM certificate (chain after the leaf allowed); re-read on SIGHUP')
    .option('--tls-key <file>', 'the PEM private key of --tls-cert; re-read on SIGHUP')
    .option('--insecure-http', 'serve plain http on a listen address off loopback (tokens travel in clear); default there: a self-signed certificate')
    .option('--trust-proxy <addr>', 'believe X-Forwarded-For/-Proto/-Host from this reverse proxy address or CIDR block (repeatable)', collect)
    .option('--log-requests', 'log one JSON line per request and response on stdout (config logRequests; default: only events, warnings and errors)')
    .action(async (flags: ServerFlags, cmd: Command) => {
      // --insecure-http is also a global option of the client verbs; the root may have taken it.
      flags.insecureHttp ??= cmd.optsWithGlobals<{ insecureHttp?: boolean }>().insecureHttp;
      if ((flags.tlsCert === undefined) !== (flags.tlsKey === undefined)) {
        throw new UsageError(`${flags.tlsCert === undefined ? '--tls-cert' : '--tls-key'} is missing: --tls-cert and --tls-key go together`);
      }
      // Loaded here, not at the top: every other verb would pay for fastify and SQLite.
      const [{ buildApp, LOG_REDACT }, { openCa }, { ConfigError, loadServerConfig }, { webConfigFor }, { enrollmentUrl }, tlsLib] = await Promise.all([
        import('../../ca/api/app.js'),
        import('../../ca/server/bootstrap.js'),
        import('../../ca/server/config.js'),
        import('../../ca/authority/context.js'),
        import('../../ca/authority/login/passkeys.js'),
        import('../../ca/server/tls.js'),
      ]);
      let cfg;
      try {
        cfg = await loadServerConfig(flags.config, {
          dataDir: flags.dataDir,
          listen: flags.listen,
          caKeyType: flags.caKeyType,
          tls: flags.tlsCert !== undefined && flags.tlsKey !== undefined ? { cert: flags.tlsCert, key: flags.tlsKey } : undefined,
          insecureHttp: flags.insecureHttp,
          trustProxy: flags.trustProxy,
          logRequests: flags.logRequests,
        });
      } catch (e) {
        if (e instanceof ConfigError) throw new CliError(`refusing to start: ${e.message}`);
        throw e;
      }
      const sep = cfg.listen.lastIndexOf(':');
      const host = tlsLib.bareHost(cfg.listen.slice(0, sep));
      const port = Number(cfg.listen.slice(sep + 1));

      // TLS: the given files; else plain http on loopback or when asked for; else a self-signed certificate.
      let tls: import('../../ca/server/tls.js').TlsMaterial | null = null;
      let insecure = false;
      try {
        if (cfg.tls) {
          tls = await tlsLib.readTlsFiles(resolvePath(cfg.tls.cert), resolvePath(cfg.tls.key));
        } else if (tlsLib.isLoopbackHost(host)) {
          tls = null;
        } else if (cfg.insecureHttp) {
          insecure = true;
        } else {
          const names = tlsLib.selfSignedNames(host, cfg.publicUrl);
          const made = await tlsLib.loadOrCreateSelfSigned(cfg.dataDir, names);
          ctx.stderr.write(`dstack-ca: ${made.created ? 'made a self-signed TLS certificate' : 'using the self-signed TLS certificate'} ${made.certPath} (no --tls-cert given; listening off loopback)\n`);
          const missing = tlsLib.uncoveredNames(made.x509, names);
          if (missing.length > 0) {
            ctx.stderr.write(`dstack-ca: warning: the self-signed certificate does not name ${missing.join(', ')} (it was made for another address and is kept: clients pin it)\n`);
          }
          tls = made;
        }
      } catch (e) {
        if (e instanceof tlsLib.TlsFileError) throw new CliError(`refusing to start: ${e.message}`);
        throw e;
      }
      if (tls && Date.parse(tls.x509.validTo) < Date.now()) {
        ctx.stderr.write(`dstack-ca: warning: the TLS certificate ${tls.certPath} expired on ${tls.x509.validTo}: clients will refuse it\n`);
      }

      const opened = await openCa(cfg, ctx.env, undefined, tls ? { tlsCertificates: [tls.x509.toString()] } : {});
      const app = await buildApp(opened.authority, {
        logger: { level: cfg.logLevel, redact: LOG_REDACT },
        logRequests: cfg.logRequests,
        ...(tls ? { https: { cert: tls.cert, key: tls.key } } : {}),
        ...(cfg.trustProxy ? { trustProxy: cfg.trustProxy } : {}),
      });
      // Publishes ctx.tlsFingerprints before the first request; SIGHUP reloads through it.
      const reloader = tls ? new tlsLib.TlsReloader(app.server as unknown as TlsServer, tls, opened.authority.ctx) : null;
      // The trust bundle already lists the certificate served (openCa got it as tlsCertificates),
      // so clients that pinned the root accept exactly it.
      const { ensureTrustBundle, rootFingerprint } = await import('../../ca/authority/trust.js');
      // SIGHUP re-reads the certificate and key (both files) and installs them for new
      // connections; open ones keep theirs. A bad pair keeps the old certificate. Without a
      // handler SIGHUP would end the process, so plain http answers it too.
      let reloading: Promise<unknown> = Promise.resolve();
      const onHup = () => {
        if (!reloader) {
          ctx.stderr.write('dstack-ca: SIGHUP: serving plain http, no TLS certificate to reload\n');
          return;
        }
        reloading = reloader.reload().then((r) => {
          if (r.ok) {
            void ensureTrustBundle(opened.authority.ctx).catch((e: unknown) => app.log.error({ err: e }, 'trust bundle update after the TLS reload failed'));
            app.log.info({ certPath: r.served.certPath, fingerprint: r.served.fingerprint }, 'TLS certificate reloaded');
            ctx.stderr.write(`dstack-ca: SIGHUP: TLS certificate reloaded from ${r.served.certPath}; SHA-256 fingerprint: ${tlsLib.formatFingerprint(r.served.fingerprint)}\n`);
          } else {
            app.log.error({ certPath: r.served.certPath, keyPath: r.served.keyPath, err: r.error }, 'TLS reload failed; the previous certificate stays');
            ctx.stderr.write(`dstack-ca: error: SIGHUP: TLS reload failed, still serving the previous certificate (${tlsLib.formatFingerprint(r.served.fingerprint)}): ${r.error}\n`);
          }
        });
      };
      process.on('SIGHUP', onHup);
      try {
        await app.listen({ host, port });
      } catch (e) {
        process.off('SIGHUP', onHup);
        await opened.store.close();
        throw new CliError(`cannot listen on ${cfg.listen}: ${(e as Error).message}${listenHint(e)}`);
      }
      const scheme = tls ? 'https' : 'http';
      // The bound address, so `--listen 127.0.0.1:0` prints the port actually chosen.
      const a = app.server.address();
      const boundHost = a && typeof a === 'object' ? a.address : host;
      const boundPort = a && typeof a === 'object' ? a.port : port;
      const url = cfg.publicUrl ?? `${scheme}://${urlHost(tlsLib.isWildcardHost(boundHost) ? hostname() : boundHost)}:${boundPort}`;
      const kind = tlsLib.isLoopbackHost(boundHost) ? 'loopback' : tlsLib.isWildcardHost(boundHost) ? 'wildcard' : 'other';
      opened.authority.web = webConfigFor(cfg.publicUrl ?? defaultPublicUrl(scheme, boundHost, boundPort, kind));
      ctx.stderr.write(`dstack-ca: serving on ${url} (data dir ${cfg.dataDir}, keyring from ${opened.keyringSource})\n`);
      if (opened.keyringPath) {
        ctx.stderr.write(
          `dstack-ca: warning: the keyring that unseals the CA keys is ${opened.keyringPath}, in the same directory as the sealed keys: ` +
            'a copy of the data dir opens them. Keep it elsewhere: DSTACK_CA_KEYRING=ID:BASE64 from a secret store, or `keyring:` in a config file kept apart (see docs/configuration.md, "The keyring")\n',
        );
      }
      if (tls) ctx.stderr.write(`dstack-ca: TLS certificate SHA-256 fingerprint: ${tlsLib.formatFingerprint(tls.fingerprint)}\n`);
      // The one value clients and agents pin; TLS and every CA key are checked under it.
      ctx.stderr.write(`dstack-ca: CA fingerprint (trust root; clients pin it with --fingerprint, agents with --ca-fingerprint): ${rootFingerprint(opened.authority.ctx)}\n`);
      if (insecure) {
        ctx.stderr.write(
          `dstack-ca: WARNING: serving plain http on ${cfg.listen} (--insecure-http): bearer tokens, login sessions and the CA trust bundle ` +
            'travel in clear, so anyone on the network path can steal tokens and log in as their owners, or hand clients CA keys of their own. ' +
            'Use it only behind a TLS-terminating reverse proxy on a network you trust (and set trustProxy); otherwise drop --insecure-http to serve TLS.\n',
        );
      }
      if (cfg.trustProxy) ctx.stderr.write(`dstack-ca: believing X-Forwarded-For/-Proto/-Host from ${cfg.trustProxy.join(', ')}\n`);
      ctx.stderr.write(`dstack-ca: passkey pages at ${opened.authority.web.publicUrl} (WebAuthn RP id ${opened.authority.web.rpId})\n`);
      if (/^[\d.]+$|:/.test(opened.authority.web.rpId)) {
        ctx.stderr.write('dstack-ca: warning: passkeys need a host name, not an IP address: set publicUrl in the config\n');
      }
      // Only now that the port is ours: a start that cannot bind leaves the running server's link alone.
      const announced = await opened.announceAdmin();
      if (announced.tokenPath) {
        ctx.stderr.write(
          `dstack-ca: ${opened.firstStart ? 'first start: admin token written to' : 'the admin has no passkey yet: the admin token is still in'} ${announced.tokenPath} (mode 0600); use it with\n` +
            `  export DSTACK_CA_URL=${url} DSTACK_CA_TOKEN=$(cat ${announced.tokenPath}) DSTACK_CA_FINGERPRINT=${rootFingerprint(opened.authority.ctx)}\n`,
        );
      }
      if (announced.enrollment) {
        // The secret goes to the operator's terminal only (stderr), never to the JSON log.
        const again = opened.firstStart ? '' : '; each start makes a new one until a global admin has a passkey, older ones stop working';
        ctx.stderr.write(`dstack-ca: enroll the admin's passkey (one-time link${again}): ${enrollmentUrl(opened.authority, announced.enrollment)}\n`);
      }
      if (announced.tokenRetirable) {
        ctx.stderr.write(
          'dstack-ca: an admin has a passkey and the bootstrap admin token still works (it never expires): ' +
            'retire it with `dstack-ca admin-token retire` (logged in with the passkey: `dstack-ca login`)\n',
        );
      }
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      });
      process.off('SIGHUP', onHup);
      await reloading;
      await app.close();
      await opened.store.close();
    });
}

const urlHost = (host: string): string => (host.includes(':') ? `[${host}]` : host);

/** The addresses a browser reaches by the name localhost (and localhost itself). */
const isLocalhostAddress = (host: string): boolean => ['localhost', '127.0.0.1', '::ffff:127.0.0.1'].includes(host.toLowerCase());

/**
 * Loopback is served to browsers as localhost: WebAuthn needs a host name, and localhost is a
 * secure context without TLS. Every interface (0.0.0.0, ::) is served as this machine's name.
 */
function defaultPublicUrl(scheme: 'http' | 'https', host: string, port: number, kind: 'loopback' | 'wildcard' | 'other'): string {
  // Only 127.0.0.1 is surely reached by the name localhost (::1 is not, for Node's resolver at
  // least); 127.0.0.2, ::1 and the like keep their address, so the printed links connect.
  const h = kind === 'loopback' && isLocalhostAddress(host) ? 'localhost' : kind === 'wildcard' ? hostname() : urlHost(host);
  return `${scheme}://${h}:${port}`;
}

/**
 * What to do when the port is taken (EADDRINUSE/EACCES): pick another with --listen, spelled
 * for `npm start` (which needs `--` before its arguments) when npm started us. '' otherwise.
 */
function listenHint(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (code !== 'EADDRINUSE' && code !== 'EACCES') return '';
  const viaNpmStart = process.env.npm_lifecycle_event === 'start';
  return viaNpmStart
    ? '; choose another address with `npm start -- --listen 127.0.0.1:PORT`'
    : '; choose another address with --listen HOST:PORT (e.g. --listen 127.0.0.1:8444)';
}
