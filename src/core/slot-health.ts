/**
 * Slot health: telling a broken GPU from broken code, and taking a GPU that keeps failing out of
 * the rotation. Pure: the lab feeds it each finished run's slot, status and words, and asks.
 *
 * A run's failure is the slot's fault only when its own words say so: the CUDA runtime or driver
 * reporting the device unusable (missing, busy, lost, ECC), which no train.py can cause by
 * itself. Anything else (a Python exception, NaN, an over-budget run) is the code's, and tells
 * nothing about the device. A run that failed for its slot is queued again, on another slot when
 * there is one, so neither the candidate nor the agent's crash streak pays for the hardware.
 */

/** Device faults a run can report, each with the words to quote. Matched against its error and log tail. */
const DEVICE_FAULTS: RegExp[] = [
  /CUDA is not available/i,
  /no CUDA GPUs are available/i,
  /no CUDA-capable device is detected/i,
  /CUDA-capable device\(s\) is\/are busy or unavailable/i,
  /CUDA driver initialization failed/i,
  /cudaErrorDevicesUnavailable|cudaErrorNoDevice|cudaErrorInitializationError/,
  /uncorrectable ECC error/i,
  /GPU is lost|GPU has fallen off the bus/i,
  /\bXid\b.*\b(48|62|63|64|74|79|92|94|95)\b/,
  /NVML_ERROR_GPU_IS_LOST|Unable to determine the device handle for GPU/,
];

/** The line of `text` that reports a device fault, or undefined when none does. */
export function deviceFault(text: string): string | undefined {
  for (const line of text.split('\n')) {
    if (DEVICE_FAULTS.some((pattern) => pattern.test(line))) {
      const trimmed = line.trim();
      return trimmed.length > 200 ? `${trimmed.slice(0, 199)}…` : trimmed;
    }
  }
  return undefined;
}

/** Device faults in a row on one slot that drain it. */
export const DRAIN_AFTER_FAULTS = 3;

/** How many times one experiment is queued again after device faults before it is recorded crashed. */
export const MAX_FAULT_RETRIES = 2;

export interface SlotFault {
  experimentId: number;
  /** The line that named the fault. */
  cause: string;
  at: number;
}

export interface DrainedSlot {
  since: number;
  /** The faults that drained it, oldest first. */
  faults: SlotFault[];
}

/**
 * Each slot's faults since its last good run, and the slots drained. A run that finished without a
 * device fault (whether it succeeded or its code failed) shows the device works and clears the
 * slot's count; cancelled runs say nothing either way.
 */
export class SlotHealth {
  private readonly faults = new Map<number, SlotFault[]>();
  private readonly drained = new Map<number, DrainedSlot>();
  private readonly retries = new Map<number, number>();

  /** Records a run's end on a slot; returns the drain when this fault drained the slot. */
  record(slot: number, run: { experimentId: number; status: string; fault?: string; at: number }): DrainedSlot | undefined {
    if (run.status === 'cancelled') return undefined;
    if (run.fault === undefined) {
      this.faults.delete(slot);
      return undefined;
    }
    const list = [...(this.faults.get(slot) ?? []), { experimentId: run.experimentId, cause: run.fault, at: run.at }];
    this.faults.set(slot, list);
    if (list.length < DRAIN_AFTER_FAULTS || this.drained.has(slot)) return undefined;
    const drain = { since: run.at, faults: list };
    this.drained.set(slot, drain);
    return drain;
  }

  /** Whether an experiment that just failed for its slot may be queued again (counting this retry). */
  retry(experimentId: number): boolean {
    const done = this.retries.get(experimentId) ?? 0;
    if (done >= MAX_FAULT_RETRIES) return false;
    this.retries.set(experimentId, done + 1);
    return true;
  }

  retriesOf(experimentId: number): number {
    return this.retries.get(experimentId) ?? 0;
  }

  isDrained(slot: number): boolean {
    return this.drained.has(slot);
  }

  drainOf(slot: number): DrainedSlot | undefined {
    return this.drained.get(slot);
  }

  /** Faults in a row on a slot not (yet) drained. */
  faultsOf(slot: number): number {
    return this.faults.get(slot)?.length ?? 0;
  }
}

/** A slot as messages name it: `slot 1 (GPU 3)`, or `slot 0` on a CPU slot. */
export function slotName(slot: { index: number; cudaDevices?: string }): string {
  return slot.cudaDevices !== undefined ? `slot ${slot.index} (GPU ${slot.cudaDevices})` : `slot ${slot.index}`;
}

/** The status line and error text for a drained slot. */
export function drainedMessage(slot: { index: number; cudaDevices?: string }, drain: DrainedSlot): string {
  const runs = drain.faults.map((f) => f.experimentId).join(', ');
  return (
    `${slotName(slot)} is drained: ${drain.faults.length} runs in a row failed for the device, not their code (experiments ${runs}; last: ${drain.faults.at(-1)?.cause}). ` +
    'No more runs go to it. Check the GPU (nvidia-smi, the kernel log for Xid errors), then restart the server to use it again, or leave it out with --gpus.'
  );
}
