// A TAP queue's ioctls and flag bits (TUNSETIFF, TUNGETIFF flags, TUNGETVNETHDRSZ,
// TUNGETDEVNETNS) and if_nametoindex: what the TAP backend and QEMU's attach
// helper ask of the kernel. Errors are the addon's (errno, .code/.syscall).
import { native } from '../native.js';
import { closeFd } from './close.js';
import { MISC_MAJOR, TUN_MINOR } from './kind.js';

let flagMask: number | null = null;

/** The TUNSETIFF flags that define a TAP, compared on both sides (TUNGETIFF also reports queue state bits). Read from the addon on first use, so that importing loads nothing. */
export function tapFlagMask(): number {
  flagMask ??= native.IFF_TAP | native.IFF_TUN | native.IFF_NO_PI | native.IFF_VNET_HDR | native.IFF_MULTI_QUEUE;
  return flagMask;
}

/** Whether a queue with these TUNGETIFF flags is attached (IFF_DETACH_QUEUE clear). */
export function tapQueueEnabled(flags: number): boolean {
  return (flags & native.IFF_DETACH_QUEUE) === 0;
}

/** Whether a TAP with these flags has a virtio-net header (IFF_VNET_HDR). */
export function tapHasVnetHdr(flags: number): boolean {
  return (flags & native.IFF_VNET_HDR) !== 0;
}

/** Whether a TAP with these flags may have more than one queue (IFF_MULTI_QUEUE). */
export function tapIsMultiQueue(flags: number): boolean {
  return (flags & native.IFF_MULTI_QUEUE) !== 0;
}

/** The TUNSETIFF flags of a TAP without packet information: IFF_VNET_HDR with `vnetHdr`, IFF_MULTI_QUEUE with `multiQueue`. */
export function tapOpenFlags(o: { vnetHdr: boolean; multiQueue: boolean }): number {
  return native.IFF_TAP | native.IFF_NO_PI | (o.vnetHdr ? native.IFF_VNET_HDR : 0) | (o.multiQueue ? native.IFF_MULTI_QUEUE : 0);
}

/** TUNSETIFF: attaches `fd` (an open /dev/net/tun) to the interface `name`, created if need be, with `flags`. */
export function tunSetIff(fd: number, name: string, flags: number): void {
  native.tunsetiff(fd, name, flags);
}

/** TUNGETVNETHDRSZ: the size of the virtio-net header on a queue. */
export function tapVnetHdrSize(fd: number): number {
  return native.tungetvnethdrsz(fd);
}

/** Inode of the network namespace of a TAP queue's device (TUNGETDEVNETNS), or null when the kernel does not tell. */
export function tapNetnsIno(queueFd: number): number | null {
  try {
    const ns = native.tungetdevnetns(queueFd);
    try {
      return native.fstat(ns).ino;
    } finally {
      closeFd(ns);
    }
  } catch {
    return null;
  }
}

/** if_nametoindex(3) in this process's network namespace: the ifindex, or 0 when there is no such interface. */
export function ifIndexOf(name: string): number {
  return native.if_nametoindex(name);
}

// A TAP queue's interface name and flags from its fd alone, cheaply: fstat (is it
// /dev/net/tun?) and TUNGETIFF, two syscalls, where inspectFd() makes five and
// reads the /proc/self/fd link. For the TAP's capture inside the downtime.

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
