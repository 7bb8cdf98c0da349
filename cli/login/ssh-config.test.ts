import { describe, expect, it } from 'vitest';
import { addInclude, configPathValue, execShellWord, hasInclude, identityArg, includeLine, removeInclude, renderKnownHosts, renderSshConfig, renderSshHosts, sshTarget } from './ssh-config.js';
import type { MeRun } from './session.js';

const HOST_KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl';

function run(over: Partial<MeRun> = {}): MeRun {
  return {
    project: 'ml',
    name: 'train-1',
    principal: 'dstack-run-ml-train-1',
    loginUser: 'root',
    state: 'running',
    endsAt: null,
    ssh: { host: '10.0.0.5', port: 2222, hostKeys: [HOST_KEY] },
    ...over,
  };
}

const input = (runs: MeRun[]) => ({
  key: '/home/a/.config/dstack-ca/id_ed25519',
  knownHosts: '/home/a/.config/dstack-ca/known_hosts',
  certFile: (p: string, r: string) => `/home/a/.config/dstack-ca/certs/${p}/${r}-cert.pub`,
  hostsFile: '/home/a/.config/dstack-ca/ssh_hosts',
  renewCommand: ['/usr/bin/node', '/opt/dstack ca/dist/cli/main.js', 'renew', '--ssh-match'],
  runs,
});

describe('quoting', () => {
  it('double-quotes paths and doubles % where ssh expands tokens', () => {
    expect(configPathValue('/a b/c%d')).toBe('"/a b/c%%d"');
    expect(configPathValue('/a b/c%d', false)).toBe('"/a b/c%d"');
    expect(identityArg('/x%y/k')).toBe('/x%%y/k');
  });
  it('refuses what ssh_config cannot hold', () => {
    for (const bad of ['/a"b', '/a\\b', '/a\nb', '/a${HOME}']) expect(() => configPathValue(bad)).toThrow(/ssh_config cannot hold/);
    expect(configPathValue('/a${HOME}', false)).toBe('"/a${HOME}"');
  });
  it('single-quotes shell words for Match exec, refusing quotes and backslashes', () => {
    expect(execShellWord('/opt/a b/main.js')).toBe("'/opt/a b/main.js'");
    expect(execShellWord('/x%y')).toBe("'/x%%y'");
    for (const bad of ["/a'b", '/a"b', '/a\\b', '/a\tb']) expect(() => execShellWord(bad)).toThrow(/Match exec/);
  });
});

describe('renderSshConfig', () => {
  it('writes, per run and sorted, a Match line that renews (the name literal, never %n), one discovery line for every other P/R, then includes the Host blocks', () => {
    const runs = [run({ name: 'zeta' }), run(), run({ name: 'nossh', ssh: null }), run({ name: 'nokeys', ssh: { host: 'h.example', port: 22, hostKeys: [] } })];
    const renew = `'/usr/bin/node' '/opt/dstack ca/dist/cli/main.js' 'renew'`;
    expect(renderSshConfig(input(runs))).toBe(
      [
        '# Written by dstack-ca (login, config ssh); rewritten on every sync, do not edit.',
        `Match originalhost ml/nokeys exec "${renew} '--ssh-match' 'ml/nokeys'"`,
        `Match originalhost ml/train-1 exec "${renew} '--ssh-match' 'ml/train-1'"`,
        `Match originalhost ml/zeta exec "${renew} '--ssh-match' 'ml/zeta'"`,
        // ml/nossh has no Host block: its name goes to discovery, which finds its address once it has one.
        `Match originalhost */*,!ml/nokeys,!ml/train-1,!ml/zeta exec "${renew} '--ssh-discover'"`,
        'Match all',
        'Include "/home/a/.config/dstack-ca/ssh_hosts"',
        '',
      ].join('\n'),
    );
    expect(renderSshHosts(input(runs))).toBe(
      [
        '# Written by dstack-ca (login, config ssh); rewritten on every sync, do not edit.',
        '',
        'Host ml/nokeys',
        '  HostName h.example',
        '  Port 22',
        '  User root',
        '  IdentityFile "/home/a/.config/dstack-ca/id_ed25519"',
        '  CertificateFile "/home/a/.config/dstack-ca/certs/ml/nokeys-cert.pub"',
        '  IdentitiesOnly yes',
        '',
        '# ml/nossh: no Host block: the run has no ssh address yet',
        '',
        'Host ml/train-1',
        '  HostName 10.0.0.5',
        '  Port 2222',
        '  User root',
        '  IdentityFile "/home/a/.config/dstack-ca/id_ed25519"',
        '  CertificateFile "/home/a/.config/dstack-ca/certs/ml/train-1-cert.pub"',
        '  IdentitiesOnly yes',
        '  HostKeyAlias dstack-run-ml-train-1',
        '  UserKnownHostsFile "/home/a/.config/dstack-ca/known_hosts"',
        '  StrictHostKeyChecking yes',
        '',
        'Host ml/zeta',
        '  HostName 10.0.0.5',
        '  Port 2222',
        '  User root',
        '  IdentityFile "/home/a/.config/dstack-ca/id_ed25519"',
        '  CertificateFile "/home/a/.config/dstack-ca/certs/ml/zeta-cert.pub"',
        '  IdentitiesOnly yes',
        '  HostKeyAlias dstack-run-ml-train-1',
        '  UserKnownHostsFile "/home/a/.config/dstack-ca/known_hosts"',
        '  StrictHostKeyChecking yes',
        '',
      ].join('\n'),
    );
  });

  it('never lets a server value add a directive', () => {
    const evil: MeRun[] = [
      run({ name: 'a', ssh: { host: 'h\n  ProxyCommand sh -c x', port: 22, hostKeys: [] } }),
      run({ name: 'b', loginUser: 'root\nProxyCommand x' }),
      run({ name: 'c', principal: 'p x' }),
      run({ name: 'd', ssh: { host: 'h', port: 22, hostKeys: ['ssh-ed25519 notbase64!\nHost *'] } }),
      run({ name: 'e', ssh: { host: 'h', port: 70000, hostKeys: [] } }),
      run({ project: 'ML x', name: 'f' }),
    ];
    const text = renderSshHosts(input(evil));
    expect(text).not.toMatch(/ProxyCommand|Host \*|Host ml\//);
    // No Match line names them either: only the discovery line, which never reads a server value.
    expect(renderSshConfig(input(evil))).not.toMatch(/ProxyCommand|ml\/[a-f]/);
    expect(text.match(/no Host block/g)).toHaveLength(6);
    expect(renderKnownHosts(evil)).not.toMatch(/ssh-ed25519/);
    expect(sshTarget(run())).toMatchObject({ host: '10.0.0.5', port: 2222, user: 'root', hostKeys: [HOST_KEY] });
    // A host that ssh would read as an option is refused (it becomes an argument of `dstack-ca ssh`).
    for (const host of ['-oProxyCommand=x', '-A', '.hidden']) expect(typeof sshTarget(run({ ssh: { host, port: 22, hostKeys: [] } }))).toBe('string');
    expect(sshTarget(run({ ssh: { host: '::1', port: 22, hostKeys: [] } }))).toMatchObject({ host: '::1' });
  });

  it('has no Match line when asked for none, and renders known_hosts by principal', () => {
    expect(renderSshConfig({ ...input([]), renewCommand: null })).toBe('# Written by dstack-ca (login, config ssh); rewritten on every sync, do not edit.\nInclude "/home/a/.config/dstack-ca/ssh_hosts"\n');
    expect(renderKnownHosts([run(), run({ name: 'x', ssh: null })])).toBe(`# Written by dstack-ca: host keys of dstack runs, by principal (HostKeyAlias).\ndstack-run-ml-train-1 ${HOST_KEY}\n`);
    // A host key with a comment is normalized to its bare form.
    expect(renderKnownHosts([run({ ssh: { host: 'h', port: 22, hostKeys: [`${HOST_KEY} root@box`] } })])).toContain(`dstack-run-ml-train-1 ${HOST_KEY}\n`);
  });
});

describe('host certificates (@cert-authority)', () => {
  const HOST_CA = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuYuBfQaSM/XAczdFhbM2P3gOT59186ofKYenmIjpZn';
  it('known_hosts gets one @cert-authority line per host CA key, before the pinned keys (kept as a fallback)', () => {
    expect(renderKnownHosts([run(), run({ name: 'bare', principal: 'dstack-run-bare', ssh: { host: 'h', port: 22, hostKeys: [] } })], [`${HOST_CA} host-ca`, 'not a key', HOST_KEY])).toBe(
      [
        '# Written by dstack-ca: host keys of dstack runs, by principal (HostKeyAlias).',
        `@cert-authority dstack-run-* ${HOST_CA}`,
        `@cert-authority dstack-run-* ${HOST_KEY}`,
        `dstack-run-ml-train-1 ${HOST_KEY}`,
        '',
      ].join('\n'),
    );
  });
  it('with the host CA trusted, a run without pinned keys is checked strictly by its principal too; without it, not', () => {
    const runs = [run({ name: 'bare', principal: 'dstack-run-bare', ssh: { host: 'h', port: 22, hostKeys: [] } })];
    const strict = renderSshHosts({ ...input(runs), hostCertAuthority: true });
    expect(strict).toContain('  HostKeyAlias dstack-run-bare\n  UserKnownHostsFile "/home/a/.config/dstack-ca/known_hosts"\n  StrictHostKeyChecking yes\n');
    expect(renderSshHosts(input(runs))).not.toMatch(/HostKeyAlias|StrictHostKeyChecking/);
  });
});

describe('addInclude', () => {
  const inc = '/home/a/.config/dstack-ca/ssh_config';
  it('adds one line at the top, once', () => {
    const first = addInclude('Host *\n  ServerAliveInterval 30\n', inc);
    expect(first).toEqual({ changed: true, text: `Include "${inc}"\nHost *\n  ServerAliveInterval 30\n` });
    expect(addInclude(first.text, inc)).toEqual({ changed: false, text: first.text });
    expect(addInclude('', inc).text).toBe(`${includeLine(inc)}\n`);
  });
  it('recognizes an Include the user wrote or moved, in any form', () => {
    for (const text of [`Host x\n\tInclude ${inc}\n`, `include = "${inc}"\n`, `INCLUDE other "${inc}"\n`]) {
      expect(hasInclude(text, inc)).toBe(true);
      expect(addInclude(text, inc).changed).toBe(false);
    }
    expect(hasInclude(`Include ${inc}.bak\n# Include ${inc}\n`, inc)).toBe(false);
  });
  it('quotes a path with spaces', () => {
    expect(includeLine('/home/a b/x')).toBe('Include "/home/a b/x"');
  });
  it('removeInclude takes out the lines that include the path alone, and nothing else', () => {
    const added = addInclude('Host *\n  ServerAliveInterval 30\n', inc).text;
    expect(removeInclude(added, inc)).toEqual({ changed: true, text: 'Host *\n  ServerAliveInterval 30\n' });
    expect(removeInclude('Host *\n', inc)).toEqual({ changed: false, text: 'Host *\n' });
    const shared = `INCLUDE other "${inc}"\n`;
    expect(removeInclude(shared, inc)).toEqual({ changed: false, text: shared });
  });
});
