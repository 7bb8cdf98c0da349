// `dstack-ca server`: runs the CA. The README's quick start is `npm start`, which runs this.
import type { Command } from 'commander';
import type { CliContext } from '../context.js';
import { CliError } from '../errors.js';

interface ServerFlags {
  dataDir?: string;
  listen?: string;
  config?: string;
  caKeyType?: string;
}

export function registerServer(program: Command, ctx: CliContext): void {
  program
    .command('server')
    .description('run the CA (embedded SQLite in the data dir); the first start creates the CA key and an admin token')
    .option('--data-dir <dir>', 'where the database, sealed CA keys and admin token live (default ./data)')
    .option('--listen <host:port>', 'address to listen on (default 127.0.0.1:8443)')
    .option('--config <file>', 'YAML or JSON configuration file; flags override it')
    .option('--ca-key-type <type>', 'CA key type on first start: ed25519, ecdsa-p256/384/521, rsa-3072/4096')
    .action(async (flags: ServerFlags) => {
      // Loaded here, not at the top: every other verb would pay for fastify and SQLite.
      const [{ buildApp, LOG_REDACT }, { openCa }, { ConfigError, loadServerConfig }, { webConfigFor }, { enrollmentUrl }] = await Promise.all([
        import('../../ca/api/app.js'),
        import('../../ca/server/bootstrap.js'),
        import('../../ca/server/config.js'),
        import('../../ca/authority/context.js'),
        import('../../ca/authority/login/passkeys.js'),
      ]);
      let cfg;
      try {
        cfg = await loadServerConfig(flags.config, { dataDir: flags.dataDir, listen: flags.listen, caKeyType: flags.caKeyType });
      } catch (e) {
        if (e instanceof ConfigError) throw new CliError(`refusing to start: ${e.message}`);
        throw e;
      }
      const opened = await openCa(cfg, ctx.env);
      const app = await buildApp(opened.authority, { logger: { level: cfg.logLevel, redact: LOG_REDACT } });
      const sep = cfg.listen.lastIndexOf(':');
      const host = cfg.listen.slice(0, sep).replace(/^\[|\]$/g, '');
      const port = Number(cfg.listen.slice(sep + 1));
      try {
        await app.listen({ host, port });
      } catch (e) {
        await opened.store.close();
        throw new CliError(`cannot listen on ${cfg.listen}: ${(e as Error).message}`);
      }
      // The bound address, so `--listen 127.0.0.1:0` prints the port actually chosen.
      const a = app.server.address();
      const bound = a && typeof a === 'object' ? `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}` : cfg.listen;
      const url = cfg.publicUrl ?? `http://${bound}`;
      opened.authority.web = webConfigFor(cfg.publicUrl ?? defaultPublicUrl(a && typeof a === 'object' ? a.address : host, a && typeof a === 'object' ? a.port : port));
      ctx.stderr.write(`dstack-ca: serving on ${url} (data dir ${cfg.dataDir}, keyring from ${opened.keyringSource})\n`);
      ctx.stderr.write(`dstack-ca: passkey pages at ${opened.authority.web.publicUrl} (WebAuthn RP id ${opened.authority.web.rpId})\n`);
      if (/^[\d.]+$|:/.test(opened.authority.web.rpId)) {
        ctx.stderr.write('dstack-ca: warning: passkeys need a host name, not an IP address: set publicUrl in the config\n');
      }
      if (opened.adminTokenPath) {
        ctx.stderr.write(
          `dstack-ca: first start: admin token written to ${opened.adminTokenPath} (mode 0600); use it with\n` +
            `  export DSTACK_CA_URL=${url} DSTACK_CA_TOKEN=$(cat ${opened.adminTokenPath})\n`,
        );
      }
      if (opened.adminEnrollment) {
        ctx.stderr.write(`dstack-ca: enroll the admin's passkey (one-time link): ${enrollmentUrl(opened.authority, opened.adminEnrollment)}\n`);
      }
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      });
      await app.close();
      await opened.store.close();
    });
}

/** Loopback is served to browsers as localhost: WebAuthn needs a host name, and localhost is a secure context without TLS. */
function defaultPublicUrl(host: string, port: number): string {
  const loopback = host === 'localhost' || host === '::1' || /^127\./.test(host);
  const h = loopback ? 'localhost' : host.includes(':') ? `[${host}]` : host;
  return `http://${h}:${port}`;
}
