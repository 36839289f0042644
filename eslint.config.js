// ESLint: typescript-eslint with type-checked rules over src/, and the layer rules
// of docs/architecture.md:
//   - nothing in the library imports the CLI (src/cli/);
//   - only src/native.ts loads the addon (node-gyp-build, *.node);
//   - who imports the addon (src/native.ts): the system layer (src/native.ts,
//     src/fd/), and the transport (src/transport/), which is the socket-syscall
//     layer: socket, bind, connect, sendmsg, recvmsg, poll are what it is. The
//     transport uses the addon's socket calls only: its TAP, memfd, eventfd,
//     kcmp, mmap and closer calls are src/fd/'s (checked on `native.<name>`).
//     src/index.ts, the repository's own barrel for tests (not the package root),
//     re-exports the addon on purpose. Everything else goes through src/fd/;
//   - no import cycles (type-only imports do not count).
// `npm run lint` runs it (scripts/lint.sh).
import tseslint from 'typescript-eslint';
import importX from 'eslint-plugin-import-x';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';

/** The system layer: the addon's typed interface and the fd functions over it. */
const SYSTEM = ['src/native.ts', 'src/fd/**/*.ts'];
/** The socket-syscall layer: may import the addon, for its socket calls. */
const TRANSPORT = ['src/transport/**/*.ts'];
/** The repository's own barrel (tests, benchmarks, examples; not exported by the package): re-exports the addon on purpose. */
const REPO_BARREL = ['src/index.ts'];

const NO_CLI = { group: ['**/cli/**', '**/cli'], message: 'The library does not import the CLI (src/cli/): the CLI is built on the library, not the other way round.' };
const NO_NATIVE = {
  group: ['**/native.js', '**/native'],
  allowTypeImports: true,
  message: 'Only the system layer (src/native.ts, src/fd/) and the transport (src/transport/) import the addon: use a function of src/fd/ (see docs/architecture.md).',
};
const NO_ADDON_LOADER = {
  paths: [{ name: 'node-gyp-build', message: 'Only src/native.ts loads the addon.' }],
  patterns: [{ group: ['**/*.node'], message: 'Only src/native.ts loads the addon.' }],
};

/** The addon's calls that are not socket calls (a regular expression for the transport rule below). */
const TRANSPORT_NOT_SOCKET =
  '/^(tun|if_nametoindex|IFF_|TUN_F_|memfd_create|fcntl_add_seals|fcntl_get_seals|F_SEAL_|eventfd|EFD_|pipe2|pidfd_open|kcmp|KCMP_|mmap_memfd|munmap_buffer|mapping_stats|close_deferred|closer_stats)/';

function restrict(...groups) {
  return { '@typescript-eslint/no-restricted-imports': ['error', { paths: NO_ADDON_LOADER.paths, patterns: [...NO_ADDON_LOADER.patterns, ...groups] }] };
}

export default tseslint.config(
  { ignores: ['dist/**', 'build/**', 'node_modules/**', 'prebuilds/**'] },
  {
    files: ['src/**/*.ts'],
    extends: [...tseslint.configs.recommendedTypeChecked],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    plugins: { 'import-x': importX },
    settings: {
      ...importX.flatConfigs.typescript.settings,
      'import-x/resolver-next': [createTypeScriptImportResolver({ project: './tsconfig.json' })],
    },
    rules: {
      // A lazy import() back to a module that imports this one is allowed: it runs
      // after both are loaded (handover/warmup.ts loads source.ts and target.ts so).
      'import-x/no-cycle': ['error', { ignoreExternal: true, allowUnsafeDynamicCyclicDependency: true }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // Off, on purpose: an async function without await is how this code turns a
      // synchronous throw into a rejection; and what it rejects with is a caught
      // error (typed unknown), passed on unchanged so callers see the real error.
      '@typescript-eslint/require-await': 'off',
      '@typescript-eslint/prefer-promise-reject-errors': 'off',
    },
  },
  // Layers (see the header).
  { files: ['src/**/*.ts'], ignores: ['src/cli/**', ...SYSTEM, ...TRANSPORT, ...REPO_BARREL], rules: restrict(NO_CLI, NO_NATIVE) },
  { files: [...SYSTEM, ...TRANSPORT, ...REPO_BARREL], rules: restrict(NO_CLI) },
  { files: ['src/cli/**/*.ts'], rules: restrict(NO_NATIVE) },
  {
    files: TRANSPORT,
    rules: {
      'no-restricted-syntax': [
        'error',
        {
          selector: `MemberExpression[object.name='native'][property.name=${TRANSPORT_NOT_SOCKET}]`,
          message: 'The transport uses the addon for its socket calls only: TAP, memfd, eventfd, kcmp, mmap and closer calls go through src/fd/ (see docs/architecture.md).',
        },
      ],
    },
  },
);
