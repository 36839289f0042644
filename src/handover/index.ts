export { sendHandover } from './source.js';
import { receiveHandover as receive } from './target.js';
import type { ReceiveHandoverOptions, ReceiveHandoverResult } from './types.js';
import type { TargetDevice } from '../backends/types.js';

/**
 * Takes a handover over (see target.ts). The result's devices are typed from
 * `accept`: a device's backend is the type its target adopts, no cast needed.
 */
export const receiveHandover: <const A extends readonly TargetDevice[]>(o: ReceiveHandoverOptions<A>) => Promise<ReceiveHandoverResult<A>> = receive;
export * from './types.js';
export { warmUpHandover, warmUpStarted } from './warmup.js';
export { recordHandover } from './record.js';
export type { RecordHandoverOptions, RecordHandoverResult } from './record.js';
