// Everything in one import, for the repository's own tests, benchmarks and
// examples. NOT the package's root export: that is src/public.ts (package.json
// "exports" maps '.' to it); the addon and the wire internals are subpaths there.
export * from './public.js';
export { native, loadNative } from './native.js';
export type { NativeBinding, NativeStat, IfReq } from './native.js';
export * from './stream/index.js';
export * from './vhost-user/index.js';
