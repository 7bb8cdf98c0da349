// The global --url, --token and --fingerprint options, apart from the client so that registering them
// loads nothing else.
import type { Command } from 'commander';

/** Adds --url and --token to the root command; every API verb reads them with optsWithGlobals(). */
export function registerApiOptions(program: Command): void {
  program
    .option('--url <url>', 'CA server URL (default: $DSTACK_CA_URL, then the config file, then the login session)')
    .option('--token <token>', 'API token (default: $DSTACK_CA_TOKEN, then the config file, then the login session for its server)')
    .option('--insecure-http', 'allow an http:// URL off loopback (tokens travel in clear)')
    .option('--fingerprint <SHA256:...>', "pin the CA's trust root (as `dstack-ca server` prints it); kept per server, so needed once (default: $DSTACK_CA_FINGERPRINT, then the config file)");
}

/** Global options that take a value, which the verb lookup must skip. */
export const API_OPTIONS_WITH_VALUES = ['--url', '--token', '--fingerprint'];
