// The frame table: one entry per frame type, read by both the reader and the
// writer (docs/architecture.md, "Adding a frame type"). An entry says what the
// generic checks need: who may receive the frame, where it may come in the order,
// how many fds and which flags it may carry, whether its body is always CRC'd or
// only with BODY_CRC, the feature it needs, and its body codec. What no table can
// say simply (HELLO's probe, a section's device bookkeeping) stays in the reader's
// handler for that frame; the reader's handler map is typed by FrameName, so a new
// entry here does not compile until the reader handles it.
import { abortCodec, ackCodec, endOfStateCodec, freezeCodec, helloCodec, nackCodec, pingCodec, planCodec, welcomeCodec, type Codec } from './codec.js';
import { Features, FrameFlags, FrameType, type Abort, type Ack, type EndOfState, type Freeze, type Hello, type Nack, type Ping, type Plan, type Welcome } from './wire.js';

export type FrameName = keyof typeof FrameType;

/** Where a frame comes in the order of a stream (docs/stream-format.md, "Order"). */
export const OrderPhase = {
  /** HELLO, WELCOME, PLAN: each once, in this order. */
  HANDSHAKE: 0,
  /** Sections, STAGE, FREEZE, END_OF_STATE: after PLAN, before END_OF_STATE is done. */
  STATE: 1,
  /** COMMIT, ABORT: end the state; only PING, PONG and EOF follow. */
  END: 2,
  /** ACK, NACK, PING, PONG: any time after the handshake (a NACK also in place of WELCOME). */
  CONTROL: 3,
  /** EOF: last. */
  FINAL: 4,
} as const;
export type OrderPhaseCode = (typeof OrderPhase)[keyof typeof OrderPhase];

export interface FrameDef {
  readonly code: number;
  readonly name: FrameName;
  /** 'main': source → target only; 'return': target → source only; 'both'. */
  readonly receivedOn: 'main' | 'return' | 'both';
  readonly phase: OrderPhaseCode;
  /** 'always': the body CRC is checked whatever was negotiated; 'feature': only with BODY_CRC. */
  readonly crc: 'always' | 'feature';
  /** The most fds one frame may declare (the reader's maxFdsPerFrame applies on top). */
  readonly maxFds: number;
  /** Header flags the frame may carry. */
  readonly flags: number;
  /** Feature bits that must be in use for this frame to come at all (0: none). */
  readonly requires: number;
  /** May come inside an open section (between SECTION_START and SECTION_END). */
  readonly inSection: boolean;
  /** May come after COMMIT or ABORT. */
  readonly afterEnd: boolean;
  /** May come after a NACK in place of WELCOME (return path). */
  readonly afterRefusal: boolean;
  /** The body codec (size, encode, decode); null where the body is laid out with the header (section frames, STAGE: encodeSectionPrefix) or empty. */
  readonly codec: Codec<unknown> | null;
}

const ANY = Number.MAX_SAFE_INTEGER;

/** The decoded body of each frame type (undefined: laid out with the header, or empty): its codec's type. */
export interface FrameBodies {
  HELLO: Hello;
  WELCOME: Welcome;
  PLAN: Plan;
  SECTION_START: undefined;
  SECTION_PART: undefined;
  SECTION_END: undefined;
  SECTION_FULL: undefined;
  STAGE: undefined;
  FREEZE: Freeze;
  END_OF_STATE: EndOfState;
  ACK: Ack;
  NACK: Nack;
  PING: Ping;
  PONG: Ping;
  COMMIT: undefined;
  ABORT: Abort;
  EOF: undefined;
}

type Entry<T> = Omit<FrameDef, 'name' | 'code' | 'inSection' | 'afterEnd' | 'afterRefusal' | 'codec'> &
  Partial<Pick<FrameDef, 'inSection' | 'afterEnd' | 'afterRefusal'>> & { codec: T extends undefined ? null : Codec<T> };

const section: Entry<undefined> = { receivedOn: 'main', phase: OrderPhase.STATE, crc: 'feature', maxFds: ANY, flags: FrameFlags.PAYLOAD_IN_MEMFD, requires: 0, codec: null };

/** One entry per frame type (by FrameType name); the code comes from FrameType. */
const ENTRIES: { readonly [K in FrameName]: Entry<FrameBodies[K]> } = {
  HELLO: { receivedOn: 'main', phase: OrderPhase.HANDSHAKE, crc: 'always', maxFds: 1, flags: 0, requires: 0, codec: helloCodec },
  WELCOME: { receivedOn: 'return', phase: OrderPhase.HANDSHAKE, crc: 'always', maxFds: 0, flags: 0, requires: 0, codec: welcomeCodec },
  PLAN: { receivedOn: 'main', phase: OrderPhase.HANDSHAKE, crc: 'always', maxFds: 0, flags: 0, requires: 0, codec: planCodec },
  SECTION_START: section,
  SECTION_PART: { ...section, inSection: true },
  SECTION_END: { ...section, inSection: true },
  SECTION_FULL: section,
  STAGE: { receivedOn: 'main', phase: OrderPhase.STATE, crc: 'feature', maxFds: ANY, flags: 0, requires: Features.STAGED, codec: null },
  // With STAGED, FREEZE may come inside the open section of a precopied state.
  FREEZE: { receivedOn: 'main', phase: OrderPhase.STATE, crc: 'feature', maxFds: 0, flags: 0, requires: Features.STAGED, inSection: true, codec: freezeCodec },
  END_OF_STATE: { receivedOn: 'main', phase: OrderPhase.STATE, crc: 'feature', maxFds: 0, flags: 0, requires: 0, codec: endOfStateCodec },
  ACK: { receivedOn: 'return', phase: OrderPhase.CONTROL, crc: 'feature', maxFds: 0, flags: 0, requires: 0, codec: ackCodec },
  NACK: { receivedOn: 'return', phase: OrderPhase.CONTROL, crc: 'feature', maxFds: 0, flags: 0, requires: 0, afterRefusal: true, codec: nackCodec },
  PING: { receivedOn: 'both', phase: OrderPhase.CONTROL, crc: 'feature', maxFds: 0, flags: 0, requires: 0, inSection: true, afterEnd: true, codec: pingCodec },
  PONG: { receivedOn: 'both', phase: OrderPhase.CONTROL, crc: 'feature', maxFds: 0, flags: 0, requires: 0, inSection: true, afterEnd: true, codec: pingCodec },
  COMMIT: { receivedOn: 'main', phase: OrderPhase.END, crc: 'feature', maxFds: 0, flags: 0, requires: 0, codec: null },
  // ABORT may come inside an open section (a source whose state failed midway says why).
  ABORT: { receivedOn: 'main', phase: OrderPhase.END, crc: 'feature', maxFds: 0, flags: 0, requires: 0, inSection: true, codec: abortCodec },
  EOF: { receivedOn: 'both', phase: OrderPhase.FINAL, crc: 'feature', maxFds: 0, flags: 0, requires: 0, afterEnd: true, afterRefusal: true, codec: null },
};

/** The table, by frame type code. */
export const FRAMES: ReadonlyMap<number, FrameDef> = new Map(
  (Object.keys(ENTRIES) as FrameName[]).map((name) => {
    const e = ENTRIES[name] as Entry<unknown>;
    const def: FrameDef = { inSection: false, afterEnd: false, afterRefusal: false, ...e, codec: e.codec, name, code: FrameType[name] };
    return [def.code, Object.freeze(def)];
  }),
);

/** The entry of a frame type, or undefined for an unknown code. */
export function frameDef(type: number): FrameDef | undefined {
  return FRAMES.get(type);
}

/** Whether a frame's body carries a CRC the reader checks: always for the handshake, else with BODY_CRC. */
export function bodyHasCrc(type: number, features: number): boolean {
  return FRAMES.get(type)?.crc === 'always' || (features & Features.BODY_CRC) !== 0;
}

/** The names of feature bits, for messages ("STAGED", "BODY_CRC | STAGED"). */
export function featureNames(bits: number): string {
  return (Object.keys(Features) as (keyof typeof Features)[]).filter((k) => (bits & Features[k]) !== 0).join(' | ');
}

/** The place of a frame type in the order (undefined for an unknown code). */
export function phaseOf(type: number): OrderPhaseCode | undefined {
  return FRAMES.get(type)?.phase;
}
