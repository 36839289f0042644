// Private network namespaces for TAP devices (ip netns add / del), for the demo and the tests.
import { runSync } from './process.js';

let counter = 0;

/** Runs ip(8); a failure throws with ip's own message (nothing is printed). */
export function ip(...args: string[]): string {
  return runSync('ip', args);
}

/** Creates a fresh network namespace and returns its name. */
export function createNetns(tag = 't'): string {
  const name = `bt-${tag}-${process.pid}-${counter++}`;
  ip('netns', 'add', name);
  ip('-n', name, 'link', 'set', 'lo', 'up');
  return name;
}

export function deleteNetns(name: string): void {
  try {
    ip('netns', 'del', name);
  } catch {
    /* already gone */
  }
}

export interface LinkInfo {
  ifindex: number;
  ifname: string;
  flags: string[];
  operstate: string;
  stats64: { rx: { packets: number; bytes: number }; tx: { packets: number; bytes: number } };
}

/** `ip -s -j link show` of one interface in a namespace. */
export function linkInfo(ns: string, ifname: string): LinkInfo {
  const out = JSON.parse(ip('-n', ns, '-s', '-j', 'link', 'show', 'dev', ifname)) as LinkInfo[];
  return out[0]!;
}

/** An Ethernet frame (broadcast, ethertype 0x88b5 local experimental) with a zero virtio-net header in front. */
export function testFrame(vnetHdrSize: number, tag: number, length = 64): Buffer {
  const b = Buffer.alloc(vnetHdrSize + length);
  const f = b.subarray(vnetHdrSize);
  f.fill(0xff, 0, 6);
  Buffer.from([0x02, 0, 0, 0, 0, tag & 0xff]).copy(f, 6);
  f.writeUInt16BE(0x88b5, 12);
  f.writeUInt32BE(tag, 14);
  return b;
}
