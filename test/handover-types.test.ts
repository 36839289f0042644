// receiveHandover's result is typed from its accept list: a device's backend is
// the type its target adopts, read without a cast. These are compile-time checks
// (npm run typecheck covers this file; a wrong type fails it); the function below
// is type-checked, not run.
import { describe, expect, expectTypeOf, it } from 'vitest';
import { ChardevSocketTarget, GenericTarget, TapTarget, VhostUserTarget, receiveHandover, type ChardevBackend, type GenericBackend, type TapBackend, type VhostUserBackend } from '../src/public.js';

describe('ReceiveHandoverResult.devices', () => {
  it('is typed from the accept list', () => {
    const typed = async (): Promise<void> => {
      const one = await receiveHandover({ socket: 3, accept: [new GenericTarget({ id: 'g' })], backendTransfer: true });
      expectTypeOf(one.devices.get('g')!.backend).toEqualTypeOf<GenericBackend | null>();
      const two = await receiveHandover({ socket: 3, accept: [new GenericTarget({ id: 'g' }), new TapTarget({ id: 't' })], backendTransfer: true });
      const d = two.devices.get('t')!;
      if (d.kind === 'tap') expectTypeOf(d.backend).toEqualTypeOf<TapBackend | null>();
      // @ts-expect-error: without the test on kind it may be a GenericBackend
      const tap: TapBackend | null = d.backend;
      void tap;
      // Every kind, from an accept list held in a variable (not a literal in the call).
      const accept = [new TapTarget({ id: 't' }), new ChardevSocketTarget({ id: 'c' }), new VhostUserTarget({ id: 'v' }), new GenericTarget({ id: 'g' })];
      const all = await receiveHandover({ socket: 3, accept, backendTransfer: true });
      for (const r of all.devices.values()) {
        if (r.kind === 'tap') expectTypeOf(r.backend).toEqualTypeOf<TapBackend | null>();
        else if (r.kind === 'chardev-socket') expectTypeOf(r.backend).toEqualTypeOf<ChardevBackend | null>();
        else if (r.kind === 'vhost-user') expectTypeOf(r.backend).toEqualTypeOf<VhostUserBackend | null>();
        else expectTypeOf(r.backend).toEqualTypeOf<GenericBackend | null>();
      }
    };
    expect(typeof typed).toBe('function');
  });
});
