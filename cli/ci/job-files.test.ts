import { describe, expect, it } from 'vitest';
import { copyAlias, jobId, jobTempBase, renderJobFiles, type JobFiles } from './job-files.js';

const files: JobFiles = { dir: '/t/d', key: '/t/d/id_ed25519', publicKey: '/t/d/id_ed25519.pub', certificate: '/t/d/id_ed25519-cert.pub', sshConfig: '/t/d/ssh_config', knownHosts: '/t/d/known_hosts' };
const hostKey = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl';
const run = { project: 'ml', name: 'train-1', principal: 'dstack-run-00ff', loginUser: 'root', state: 'running' as const, endsAt: null, ssh: { host: '10.0.0.5', port: 2222, hostKeys: [hostKey] } };

describe('job files', () => {
  it('the temp dir: --dir, then RUNNER_TEMP, TMPDIR (absolute only); never CI_BUILDS_DIR, which GitLab keeps across jobs', () => {
    expect(jobTempBase({ RUNNER_TEMP: '/r', CI_BUILDS_DIR: '/b' }, '/flag')).toEqual({ base: '/flag', source: '--dir' });
    expect(jobTempBase({ RUNNER_TEMP: '/r', CI_BUILDS_DIR: '/b' })).toEqual({ base: '/r', source: '$RUNNER_TEMP' });
    expect(jobTempBase({ RUNNER_TEMP: 'rel', CI_BUILDS_DIR: '/b', TMPDIR: '/t' })).toEqual({ base: '/t', source: '$TMPDIR' });
    expect(jobTempBase({ CI_BUILDS_DIR: '/b' }).base).not.toBe('/b');
  });

  it('the job id: GitHub run/attempt/job, GitLab job id, else local', () => {
    expect(jobId({ GITHUB_RUN_ID: '7', GITHUB_RUN_ATTEMPT: '2', GITHUB_JOB: 'deploy' })).toBe('github:7.2.deploy');
    expect(jobId({ CI_JOB_ID: '99' })).toBe('gitlab:99');
    expect(jobId({})).toBe('local');
  });

  it('one Host block under both names, the job key and cert, strict checking by principal, no renewing Match line', () => {
    const { sshConfig, knownHosts } = renderJobFiles(files, run, []);
    expect(copyAlias('ml', 'train-1')).toBe('ml+train-1');
    expect(sshConfig).toContain('Host ml/train-1 ml+train-1\n  HostName 10.0.0.5\n  Port 2222\n  User root\n  IdentityFile "/t/d/id_ed25519"\n  CertificateFile "/t/d/id_ed25519-cert.pub"\n  IdentitiesOnly yes\n  HostKeyAlias dstack-run-00ff\n  UserKnownHostsFile "/t/d/known_hosts"\n  StrictHostKeyChecking yes\n');
    expect(sshConfig).not.toMatch(/^Match/m);
    expect(knownHosts).toContain(`dstack-run-00ff ${hostKey}`);
    expect(renderJobFiles(files, { ...run, ssh: { ...run.ssh, hostKeys: [] } }, [hostKey]).knownHosts).toContain(`@cert-authority dstack-run-* ${hostKey}`);
  });
});
