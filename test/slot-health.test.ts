import { appendFileSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readLogTail } from '../src/core/runner.js';
import { deviceFault, DRAIN_AFTER_FAULTS, drainedMessage, MAX_FAULT_RETRIES, SlotHealth } from '../src/core/slot-health.js';

describe('deviceFault', () => {
  it.each([
    ['the evaluator refused the model (harness): --device cuda but CUDA is not available'],
    ['RuntimeError: No CUDA GPUs are available'],
    ['RuntimeError: CUDA error: no CUDA-capable device is detected'],
    ['RuntimeError: CUDA error: CUDA-capable device(s) is/are busy or unavailable'],
    ['RuntimeError: CUDA driver initialization failed, you might not have a CUDA gpu.'],
    ['torch.AcceleratorError: CUDA error: uncorrectable ECC error encountered'],
    ['NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.'],
    ['NVRM: Xid (PCI:0000:3b:00): 48, An uncorrectable double bit error'],
    ['pynvml.NVMLError: NVML_ERROR_GPU_IS_LOST'],
  ])('names a device fault: %s', (line) => {
    expect(deviceFault(`step 10 loss 3.2\n  ${line}\nsupervise: trainer exited 1`)).toBe(line);
  });

  it.each([
    ['torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB'],
    ['RuntimeError: CUDA error: device-side assert triggered'],
    ['RuntimeError: CUDA error: an illegal memory access was encountered'],
    ['FAIL: loss is nan at step 3'],
    ['ValueError: too many values to unpack'],
    ['killed at the wall-clock ceiling of 60 s'],
    ['NVRM: Xid (PCI:0000:3b:00): 13, Graphics Exception'],
    [''],
  ])('leaves the code its own failures: %s', (line) => {
    expect(deviceFault(line)).toBeUndefined();
  });

  it('shortens a long line', () => {
    const fault = deviceFault(`RuntimeError: No CUDA GPUs are available ${'x'.repeat(400)}`);
    expect(fault?.length).toBe(200);
    expect(fault?.endsWith('…')).toBe(true);
  });
});

describe('SlotHealth', () => {
  const fault = (experimentId: number, at = experimentId) => ({ experimentId, status: 'crashed', fault: 'No CUDA GPUs are available', at });

  it(`drains a slot after ${DRAIN_AFTER_FAULTS} device faults in a row, once`, () => {
    const health = new SlotHealth();
    expect(health.record(1, fault(1))).toBeUndefined();
    expect(health.record(1, fault(2))).toBeUndefined();
    expect(health.faultsOf(1)).toBe(2);
    const drain = health.record(1, fault(3));
    expect(drain).toEqual({ since: 3, faults: [fault(1), fault(2), fault(3)].map(({ experimentId, fault: cause, at }) => ({ experimentId, cause, at })) });
    expect(health.isDrained(1)).toBe(true);
    expect(health.drainOf(1)).toBe(drain);
    expect(health.record(1, fault(4))).toBeUndefined();
    expect(health.isDrained(0)).toBe(false);
  });

  it('a run that ends without a device fault resets the count, succeeded or not; a cancelled one does not', () => {
    const health = new SlotHealth();
    health.record(0, fault(1));
    health.record(0, fault(2));
    health.record(0, { experimentId: 3, status: 'cancelled', at: 3 });
    expect(health.faultsOf(0)).toBe(2);
    health.record(0, { experimentId: 4, status: 'crashed', at: 4 });
    expect(health.faultsOf(0)).toBe(0);
    health.record(0, fault(5));
    health.record(0, { experimentId: 6, status: 'succeeded', at: 6 });
    health.record(0, fault(7));
    health.record(0, fault(8));
    expect(health.isDrained(0)).toBe(false);
  });

  it('counts each slot apart', () => {
    const health = new SlotHealth();
    health.record(0, fault(1));
    health.record(1, fault(2));
    health.record(0, fault(3));
    health.record(1, { experimentId: 4, status: 'succeeded', at: 4 });
    expect([health.faultsOf(0), health.faultsOf(1)]).toEqual([2, 0]);
  });

  it(`queues one experiment again at most ${MAX_FAULT_RETRIES} times`, () => {
    const health = new SlotHealth();
    const answers = Array.from({ length: MAX_FAULT_RETRIES + 2 }, () => health.retry(7));
    expect(answers).toEqual([...Array(MAX_FAULT_RETRIES).fill(true), false, false]);
    expect(health.retriesOf(7)).toBe(MAX_FAULT_RETRIES);
    expect(health.retry(8)).toBe(true);
  });
});

describe('drainedMessage', () => {
  it('names the slot, its GPU, the runs and what to do', () => {
    const drain = { since: 1, faults: [1, 2, 3].map((experimentId) => ({ experimentId, cause: 'uncorrectable ECC error encountered', at: experimentId })) };
    const message = drainedMessage({ index: 2, cudaDevices: '5' }, drain);
    expect(message).toMatch(/^slot 2 \(GPU 5\) is drained: 3 runs in a row failed for the device.*experiments 1, 2, 3; last: uncorrectable ECC error encountered\)/);
    expect(message).toMatch(/nvidia-smi.*restart the server.*--gpus/);
    expect(drainedMessage({ index: 0 }, drain)).toMatch(/^slot 0 is drained/);
  });
});

describe('readLogTail from an attempt', () => {
  it("reads only what was written after the attempt's start, at most the tail", () => {
    const dir = mkdtempSync(join(tmpdir(), 'ar-log-'));
    try {
      const log = join(dir, 'run.log');
      writeFileSync(log, 'first attempt\nRuntimeError: No CUDA GPUs are available\n');
      const start = statSync(log).size;
      appendFileSync(log, 'second attempt\nValueError: bad shape\n');
      expect(readLogTail(log, undefined, start)).toBe('second attempt\nValueError: bad shape\n');
      expect(deviceFault(readLogTail(log, undefined, start))).toBeUndefined();
      expect(readLogTail(log, 6, start)).toBe('shape\n');
      expect(readLogTail(log, undefined, statSync(log).size)).toBe('');
      expect(readLogTail(join(dir, 'missing.log'), undefined, 10)).toBe('');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
