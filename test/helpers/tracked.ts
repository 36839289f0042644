// Processes a test starts (QEMUs, storage daemons), tracked so that afterEach can
// dispose of them even when a test fails.

/** Starts things with `starter` and remembers them until disposeAll(). */
export class Tracked<O, T extends { dispose(): Promise<void> }> {
  #all: T[] = [];
  readonly #starter: (options: O) => Promise<T>;
  constructor(starter: (options: O) => Promise<T>) {
    this.#starter = starter;
  }
  async start(options = {} as O): Promise<T> {
    const t = await this.#starter(options);
    this.#all.push(t);
    return t;
  }
  async disposeAll(): Promise<void> {
    await Promise.all(this.#all.splice(0).map((t) => t.dispose()));
  }
}
