// What this machine's kernel offers, probed once per call with throwaway fds.
import { native } from '../native.js';

/** Whether SO_PEERPIDFD works here (Linux 6.5+): probed on a socketpair. False also when the addon cannot make one. */
export function peerPidfdAvailable(): boolean {
  try {
    const [a, b] = native.socketpair(native.SOCK_STREAM);
    try {
      native.close(native.getpeerpidfd(a));
      return true;
    } catch {
      return false;
    } finally {
      native.close(a);
      native.close(b);
    }
  } catch {
    return false;
  }
}

/** Whether memfd_create works here. */
export function memfdAvailable(): boolean {
  try {
    native.close(native.memfd_create('bt-supported'));
    return true;
  } catch {
    return false;
  }
}

/** SCM_MAX_FD as the addon was built with: the most fds one sendmsg carries. Loads the addon (throws, saying how to build it, when it cannot). */
export function scmMaxFd(): number {
  return native.SCM_MAX_FD;
}
