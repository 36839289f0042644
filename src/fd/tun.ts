// A TAP queue's interface name and flags from its fd alone, cheaply: fstat (is it
// /dev/net/tun?) and TUNGETIFF, two syscalls, where inspectFd() makes five and
// reads the /proc/self/fd link. For the TAP's capture inside the downtime.
import { native } from '../native.js';

const MISC_MAJOR = 10;
const TUN_MINOR = 200;

/** TUNGETIFF of a TAP queue fd ({ name, flags }), or null when `fd` is not an attached TAP queue (inspectFd() then says what it is). */
export function tapQueueIff(fd: number): { name: string; flags: number } | null {
  try {
    const st = native.fstat(fd);
    if (st.type !== native.S_IFCHR || st.rdevMajor !== MISC_MAJOR || st.rdevMinor !== TUN_MINOR) return null;
    const tun = native.tungetiff(fd);
    return (tun.flags & native.IFF_TAP) !== 0 ? tun : null;
  } catch {
    return null;
  }
}
