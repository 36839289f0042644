// Prints the annotated examples of docs/stream-format.md. Each field is laid out by
// hand here, following the spec's tables (not the library's encoder), so that the
// spec test, which decodes these bytes with the library and re-encodes them, checks
// the code against the document.
//   node --import tsx scripts/spec-examples.ts
import { crc32 } from 'node:zlib';

type Field = [bytes: Buffer, note: string];
const u8 = (v: number, note: string): Field => [Buffer.from([v]), note];
const u16 = (v: number, note: string): Field => {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  return [b, note];
};
const u32 = (v: number, note: string): Field => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return [b, note];
};
const u64 = (v: bigint, note: string): Field => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return [b, note];
};
const str = (s: string, note: string): Field[] => [u16(Buffer.byteLength(s), `${note} length`), [Buffer.from(s), `${note} "${s}"`]];
const blob = (b: Buffer, note: string): Field[] => (b.length ? [u32(b.length, `${note} length`), [b, `${note} ${b.toString()}`]] : [u32(0, `${note}: none`)]);

function frame(name: string, type: number, body: Field[], o: { fdCount?: number; firstFdSeq?: number; flags?: number } = {}): Field[] {
  const bodyBytes = Buffer.concat(body.map((f) => f[0]));
  const head = Buffer.alloc(16);
  head[0] = type;
  head[1] = o.flags ?? 0;
  head.writeUInt32LE(bodyBytes.length, 4);
  head.writeUInt32LE(o.fdCount ?? 0, 8);
  head.writeUInt32LE(o.firstFdSeq ?? 0, 12);
  return [
    [head.subarray(0, 1), `type ${name} (0x${type.toString(16).padStart(2, '0')})`],
    [head.subarray(1, 2), 'flags'],
    [head.subarray(2, 4), 'reserved'],
    [head.subarray(4, 8), `bodyLength ${bodyBytes.length}`],
    [head.subarray(8, 12), `fdCount ${o.fdCount ?? 0}`],
    [head.subarray(12, 16), `firstFdSeq ${o.firstFdSeq ?? 0}`],
    u32(crc32(head), 'headerCrc'),
    ...body,
    u32(crc32(bodyBytes), 'bodyCrc'),
  ];
}

function print(title: string, fields: Field[]): void {
  console.log(`<!-- example: ${title} -->`);
  console.log('```hex');
  for (const [b, note] of fields) {
    for (let i = 0; i < b.length; i += 16) {
      const hex = [...b.subarray(i, i + 16)].map((x) => x.toString(16).padStart(2, '0')).join(' ');
      console.log(`${hex.padEnd(48)}  ${i === 0 ? note : ''}`.trimEnd());
    }
  }
  console.log('```');
}

const MAGIC: Field = [Buffer.from([0x89, 0x42, 0x54, 0x4d, 0x0d, 0x0a, 0x1a, 0x0a]), 'magic'];
const BODY_CRC = 4;
const FDS = 1;

// 1. A recorded state-only stream.
print('recorded-state-only', [
  MAGIC,
  ...frame('HELLO', 0x01, [
    u16(1, 'minVersion'),
    u16(1, 'maxVersion'),
    u32(BODY_CRC, 'features BODY_CRC'),
    u8(0, 'canPassFds'),
    u8(0, 'reserved'),
    u32(0xffffffff, 'fdBudget unknown'),
    ...blob(Buffer.alloc(0), 'probe'),
    u32(1, 'offerCount'),
    ...str('state', 'kind'),
    ...str('cpu0', 'id'),
    u32(0, 'instance'),
    u32(1, 'version'),
    u32(0, 'fdCount'),
    u8(2, 'flags REQUIRED'),
    ...blob(Buffer.alloc(0), 'info'),
  ]),
  ...frame('PLAN', 0x03, [
    u16(1, 'version'),
    u32(BODY_CRC, 'features'),
    u32(0, 'totalFds'),
    u32(1, 'deviceCount'),
    ...str('state', 'kind'),
    ...str('cpu0', 'id'),
    u32(0, 'instance'),
    u32(1, 'version'),
    u8(0, 'withFds'),
    u32(0, 'fdCount'),
  ]),
  ...frame('SECTION_FULL', 0x13, [
    u32(1, 'sectionId'),
    u32(0, 'instanceId'),
    u32(1, 'versionId'),
    ...str('cpu0', 'idstr'),
    u16(0, 'attachmentCount'),
    u32(5, 'payloadLength'),
    [Buffer.from('regs!'), 'payload "regs!"'],
  ]),
  ...frame('END_OF_STATE', 0x20, [u32(1, 'sectionCount'), u32(0, 'totalFds'), u64(5n, 'payloadBytes')]),
  ...frame('EOF', 0x7f, []),
]);

// 2. A section with one fd (an eventfd); the fd rides on this frame's bytes.
print('section-with-fd', [
  MAGIC,
  ...frame('HELLO', 0x01, [
    u16(1, 'minVersion'),
    u16(1, 'maxVersion'),
    u32(FDS | BODY_CRC, 'features FDS|BODY_CRC'),
    u8(1, 'canPassFds'),
    u8(0, 'reserved'),
    u32(0xffffffff, 'fdBudget unknown'),
    ...blob(Buffer.alloc(0), 'probe'),
    u32(1, 'offerCount'),
    ...str('generic', 'kind'),
    ...str('kick', 'id'),
    u32(0, 'instance'),
    u32(1, 'version'),
    u32(1, 'fdCount'),
    u8(1, 'flags WANTS_FDS'),
    ...blob(Buffer.alloc(0), 'info'),
  ]),
  ...frame('PLAN', 0x03, [
    u16(1, 'version'),
    u32(FDS | BODY_CRC, 'features'),
    u32(1, 'totalFds'),
    u32(1, 'deviceCount'),
    ...str('generic', 'kind'),
    ...str('kick', 'id'),
    u32(0, 'instance'),
    u32(1, 'version'),
    u8(1, 'withFds'),
    u32(1, 'fdCount'),
  ]),
  ...frame(
    'SECTION_FULL',
    0x13,
    [
      u32(1, 'sectionId'),
      u32(0, 'instanceId'),
      u32(1, 'versionId'),
      ...str('kick', 'idstr'),
      u16(1, 'attachmentCount'),
      u8(4, 'attachment kind eventfd'),
      u8(0, 'role device'),
      ...str('kick0', 'name'),
      ...blob(Buffer.from('{"queue":0}'), 'meta'),
      u32(0, 'payloadLength'),
    ],
    { fdCount: 1, firstFdSeq: 0 },
  ),
  ...frame('END_OF_STATE', 0x20, [u32(1, 'sectionCount'), u32(1, 'totalFds'), u64(0n, 'payloadBytes')]),
  ...frame('EOF', 0x7f, []),
]);

// 3. A return path.
print('return-path', [
  MAGIC,
  ...frame('WELCOME', 0x02, [
    u16(1, 'version'),
    u32(BODY_CRC, 'features'),
    u8(1, 'canPassFds'),
    u8(0, 'reserved'),
    u32(1000, 'fdBudget'),
    u32(1, 'answerCount'),
    ...str('cpu0', 'id'),
    u32(0, 'instance'),
    u8(1, 'decision STATE_ONLY'),
    u8(0, 'reason none'),
    u32(1, 'minVersion'),
    u32(2, 'maxVersion'),
    ...blob(Buffer.alloc(0), 'info'),
  ]),
  ...frame('ACK', 0x30, [u8(1, 'stage LOADED'), u32(0xffffffff, 'sectionId: the whole stream'), ...str('ok', 'detail')]),
  ...frame('NACK', 0x31, [...str('ERR_STREAM_CRC', 'code'), ...str('bad', 'reason'), u32(1, 'sectionId')]),
  ...frame('EOF', 0x7f, []),
]);

// 4. Staged backends (STAGED): the device's fd and static metadata go in a STAGE
// frame before the freeze; after FREEZE only its mutable state follows.
const STAGED = 8;
print('staged', [
  MAGIC,
  ...frame('HELLO', 0x01, [
    u16(1, 'minVersion'),
    u16(1, 'maxVersion'),
    u32(FDS | BODY_CRC | STAGED, 'features FDS|BODY_CRC|STAGED'),
    u8(1, 'canPassFds'),
    u8(0, 'reserved'),
    u32(0xffffffff, 'fdBudget unknown'),
    ...blob(Buffer.alloc(0), 'probe'),
    u32(1, 'offerCount'),
    ...str('generic', 'kind'),
    ...str('kick', 'id'),
    u32(0, 'instance'),
    u32(1, 'version'),
    u32(1, 'fdCount'),
    u8(1, 'flags WANTS_FDS'),
    ...blob(Buffer.alloc(0), 'info'),
  ]),
  ...frame('PLAN', 0x03, [
    u16(1, 'version'),
    u32(FDS | BODY_CRC | STAGED, 'features'),
    u32(1, 'totalFds'),
    u32(1, 'deviceCount'),
    ...str('generic', 'kind'),
    ...str('kick', 'id'),
    u32(0, 'instance'),
    u32(1, 'version'),
    u8(1, 'withFds'),
    u32(1, 'fdCount'),
  ]),
  ...frame(
    'STAGE',
    0x14,
    [
      u32(1, 'sectionId'),
      u32(0, 'instanceId'),
      u32(1, 'versionId'),
      ...str('kick', 'idstr'),
      u16(1, 'attachmentCount'),
      u8(4, 'attachment kind eventfd'),
      u8(0, 'role device'),
      ...str('kick0', 'name'),
      ...blob(Buffer.from('{"queue":0}'), 'meta'),
      u32(3, 'payloadLength'),
      [Buffer.from('cfg'), 'payload "cfg" (static metadata)'],
    ],
    { fdCount: 1, firstFdSeq: 0 },
  ),
  ...frame('FREEZE', 0x15, [u32(0, 'droppedCount')]),
  ...frame('SECTION_FULL', 0x13, [
    u32(2, 'sectionId'),
    u32(0, 'instanceId'),
    u32(1, 'versionId'),
    ...str('kick', 'idstr'),
    u16(0, 'attachmentCount'),
    u32(5, 'payloadLength'),
    [Buffer.from('idx=7'), 'payload "idx=7" (mutable state)'],
  ]),
  ...frame('END_OF_STATE', 0x20, [u32(1, 'sectionCount'), u32(1, 'totalFds (the stage in effect)'), u64(5n, 'payloadBytes (sections only)')]),
  ...frame('EOF', 0x7f, []),
]);

// 5. Its return path: the target's ACK(STAGED) for the STAGE (section 1), before the
// freeze, then ACK(ADOPTED) after END_OF_STATE (no LOADED or VERIFIED with STAGED).
print('staged-return-path', [
  MAGIC,
  ...frame('WELCOME', 0x02, [
    u16(1, 'version'),
    u32(FDS | BODY_CRC | STAGED, 'features FDS|BODY_CRC|STAGED'),
    u8(1, 'canPassFds'),
    u8(0, 'reserved'),
    u32(1000, 'fdBudget'),
    u32(1, 'answerCount'),
    ...str('kick', 'id'),
    u32(0, 'instance'),
    u8(2, 'decision WITH_FDS'),
    u8(0, 'reason none'),
    u32(1, 'minVersion'),
    u32(1, 'maxVersion'),
    ...blob(Buffer.alloc(0), 'info'),
  ]),
  ...frame('ACK', 0x30, [u8(5, 'stage STAGED'), u32(1, 'sectionId: the STAGE frame'), ...str('', 'detail')]),
  ...frame('ACK', 0x30, [u8(3, 'stage ADOPTED'), u32(0xffffffff, 'sectionId: the whole stream'), ...str('', 'detail')]),
  ...frame('EOF', 0x7f, []),
]);
