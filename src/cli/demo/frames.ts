// Real frames for TAP traffic (demo and tests): ICMP echo requests and TCP SYNs
// behind a zeroed virtio-net header, and parsing of what the kernel sends back.

function checksum(b: Buffer): number {
  let sum = 0;
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length % 2) sum += b[b.length - 1]! << 8;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return ~sum & 0xffff;
}

function mac(s: string): Buffer {
  return Buffer.from(s.split(':').map((x) => parseInt(x, 16)));
}

function ip(s: string): Buffer {
  return Buffer.from(s.split('.').map(Number));
}

export interface EchoSpec {
  vnetHdrSize: number;
  srcMac: string;
  dstMac: string;
  srcIp: string;
  dstIp: string;
  id: number;
  seq: number;
}

/** An Ethernet/IPv4/ICMP echo request, behind a zeroed virtio-net header. */
export function echoRequest(e: EchoSpec): Buffer {
  const payload = Buffer.from(`backend-transfer ${e.id}/${e.seq}`);
  const icmp = Buffer.alloc(8 + payload.length);
  icmp[0] = 8; // echo request
  icmp.writeUInt16BE(e.id, 4);
  icmp.writeUInt16BE(e.seq, 6);
  payload.copy(icmp, 8);
  icmp.writeUInt16BE(checksum(icmp), 2);
  return ipv4Frame(e, 1, icmp); // ICMP
}

/** A frame around `l4`: a zeroed virtio-net header, Ethernet, and an IPv4 header (TTL 64, its id the low 16 bits of `seq`) for `protocol`. */
function ipv4Frame(e: Omit<EchoSpec, 'id'>, protocol: number, l4: Buffer): Buffer {
  const iph = Buffer.alloc(20);
  iph[0] = 0x45;
  iph.writeUInt16BE(20 + l4.length, 2);
  iph.writeUInt16BE(e.seq & 0xffff, 4);
  iph[8] = 64;
  iph[9] = protocol;
  ip(e.srcIp).copy(iph, 12);
  ip(e.dstIp).copy(iph, 16);
  iph.writeUInt16BE(checksum(iph), 10);
  const eth = Buffer.concat([mac(e.dstMac), mac(e.srcMac), Buffer.from([0x08, 0x00])]);
  return Buffer.concat([Buffer.alloc(e.vnetHdrSize), eth, iph, l4]);
}

/** The echo reply in a frame read from a TAP, or null when it is something else. */
export function parseEchoReply(frame: Buffer, vnetHdrSize: number): { srcIp: string; dstIp: string; id: number; seq: number } | null {
  const f = frame.subarray(vnetHdrSize);
  if (f.length < 14 + 20 + 8 || f.readUInt16BE(12) !== 0x0800) return null;
  const iph = f.subarray(14);
  if (iph[9] !== 1) return null;
  const icmp = iph.subarray((iph[0]! & 0xf) * 4);
  if (icmp[0] !== 0) return null; // echo reply
  return { srcIp: [...iph.subarray(12, 16)].join('.'), dstIp: [...iph.subarray(16, 20)].join('.'), id: icmp.readUInt16BE(4), seq: icmp.readUInt16BE(6) };
}

export interface SynSpec {
  vnetHdrSize: number;
  srcMac: string;
  dstMac: string;
  srcIp: string;
  dstIp: string;
  srcPort: number;
  dstPort: number;
  seq: number;
}

/**
 * A TCP SYN to a closed port: the kernel answers with a RST for the same
 * 4-tuple, which a multi-queue TAP steers back to the queue the SYN came in on
 * (tun's flow table keys on the symmetric flow hash; ICMP replies would not match,
 * their hash includes the ICMP type).
 */
export function tcpSyn(e: SynSpec): Buffer {
  const tcp = Buffer.alloc(20);
  tcp.writeUInt16BE(e.srcPort, 0);
  tcp.writeUInt16BE(e.dstPort, 2);
  tcp.writeUInt32BE(e.seq >>> 0, 4);
  tcp[12] = 5 << 4;
  tcp[13] = 0x02; // SYN
  tcp.writeUInt16BE(64240, 14);
  const pseudo = Buffer.concat([ip(e.srcIp), ip(e.dstIp), Buffer.from([0, 6, 0, tcp.length]), tcp]);
  tcp.writeUInt16BE(checksum(pseudo), 16);
  return ipv4Frame(e, 6, tcp); // TCP
}

/** The RST answering a SYN, or null. */
export function parseRst(frame: Buffer, vnetHdrSize: number): { srcIp: string; dstIp: string; srcPort: number; dstPort: number; ack: number } | null {
  const f = frame.subarray(vnetHdrSize);
  if (f.length < 14 + 20 + 20 || f.readUInt16BE(12) !== 0x0800) return null;
  const iph = f.subarray(14);
  if (iph[9] !== 6) return null;
  const tcp = iph.subarray((iph[0]! & 0xf) * 4);
  if ((tcp[13]! & 0x04) === 0) return null;
  return { srcIp: [...iph.subarray(12, 16)].join('.'), dstIp: [...iph.subarray(16, 20)].join('.'), srcPort: tcp.readUInt16BE(0), dstPort: tcp.readUInt16BE(2), ack: tcp.readUInt32BE(8) };
}
