// Real-OpenSSH test harness: temp dirs, ssh-keygen wrappers, a private sshd + ssh client.
export * from './tmp.js';
export * from './ssh-keygen.js';
export * from './sshd.js';
