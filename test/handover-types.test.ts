// receiveHandover's result is typed from its accept list: a device's backend is
// the type its target adopts, read without a cast. These are compile-time checks
// (npm run typecheck covers this file; a wrong type fails it); the function below
// is type-checked, not run.
import { describe, expect, expectTypeOf, it } from 'vitest';
import { GenericTarget, TapTarget, receiveHandover, type GenericBackend, type TapBackend } from '../src/public.js';

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
    };
    expect(typeof typed).toBe('function');
  });
});
