// One entry per backend kind (see BackendKindEntry in types.ts). Adding a kind:
// write its file (Source, Target, backend class and its entry), then add it here.
import { chardevSocketKind } from './chardev-socket.js';
import { genericKind } from './generic.js';
import { tapKind } from './tap.js';
import type { BackendKindEntry, SourceDevice, TargetDevice } from './types.js';
import { vhostUserKind } from './vhost-user.js';
import { bad, jsonState, sourceCommon, targetCommon, type Json } from './json.js';

export const BACKEND_REGISTRY = [tapKind, vhostUserKind, chardevSocketKind, genericKind] as const;

/** Every backend kind this build knows, in registry order. */
export const BACKEND_KINDS = BACKEND_REGISTRY.map((k) => k.kind);

/** The registry entry of `kind`, or undefined. */
export function backendKind(kind: unknown): BackendKindEntry | undefined {
  return (BACKEND_REGISTRY as readonly BackendKindEntry[]).find((k) => k.kind === kind);
}

function entryFor(d: Json): BackendKindEntry {
  const k = backendKind(d.kind);
  if (!k) throw bad(`device ${String(d.id)}: unknown kind ${String(d.kind)} (${BACKEND_KINDS.join(', ')})`);
  return k;
}

/** A source device from its JSON description (the fds are this process's). */
export function sourceFromJson(d: Json): SourceDevice {
  return entryFor(d).sourceFromJson(d, sourceCommon(d), jsonState(d));
}

/** A target device from its JSON description. */
export function targetFromJson(d: Json): TargetDevice {
  return entryFor(d).targetFromJson(d, targetCommon(d));
}

/** The fds (fixed order, named) and metadata of a backend of `kind`; nothing for a null backend. */
export function describeBackend(kind: string, backend: unknown): { fds: { name: string; fd: number }[]; meta: unknown } {
  const k = backendKind(kind);
  if (!backend || !k) return { fds: [], meta: null };
  return k.describe(backend);
}
