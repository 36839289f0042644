export interface Case {
  /** Cases in one group are compared with the group's baseline. */
  group: string;
  name: string;
  unit: string;
  /** The baseline of its group (the physical limit, usually raw C). */
  baseline?: boolean;
  /** Lower is better (times, memory). Default: higher is better. */
  lowerIsBetter?: boolean;
  /** The ratio to the baseline this library aims for (>= for rates, <= for lowerIsBetter absolute targets). */
  target?: number;
  /** An absolute target (for cases without a baseline), in `unit`. */
  absoluteTarget?: number;
  run(): Promise<number>;
  /** Extra facts reported next to the figures (e.g. fds lost). */
  extra?: () => Record<string, unknown>;
}

export interface Scale {
  quick: boolean;
  bulkBytes: number;
  fdMessages1: number;
  fdMessages253: number;
  pingpongs: number;
  ipcHandles: number;
  usocketFds: number;
  daemonFds: number;
  daemonState: number;
  rssBytes: number;
}
