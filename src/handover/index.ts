export { sendHandover } from './source.js';
export { receiveHandover } from './target.js';
export * from './types.js';
export { warmUpHandover } from './warmup.js';
export { recordHandover } from './record.js';
export type { RecordHandoverOptions, RecordHandoverResult } from './record.js';
