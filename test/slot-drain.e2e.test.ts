import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { afterEach, describe, expect, it } from 'vitest';
import { Lab } from '../src/core/lab.js';
import { startHttpServer } from '../src/transports/http.js';
import { fails, makeWorkspace, ok, waitFinished, waitUntil } from './helpers.js';

/**
 * A slot whose GPU does not work, for real: on this CPU-only machine a slot that names GPU 0 runs
 * its trainer (which falls back to the CPU) and then an evaluator told `--device cuda`, which
 * finds no CUDA and refuses. That is the device failing the run, not the code, every time.
 */
const BROKEN_GPU = { index: 1, cudaDevices: '0' };

async function serve(slots: { index: number; cudaDevices?: string }[]) {
  const workspace = await makeWorkspace('smoke');
  const lab = await Lab.open({ workspace, slots, log: () => undefined });
  const http = await startHttpServer(lab, { host: '127.0.0.1', port: 0 });
  const transport = new StreamableHTTPClientTransport(new URL(http.url));
  const client = new Client({ name: 'slot-drain', version: '1.0' });
  await client.connect(transport);
  const close = async () => {
    await client.close();
    await http.close();
    await lab.close();
  };
  return { lab, client, close };
}

let close: (() => Promise<void>) | undefined;
afterEach(async () => {
  await close?.();
  close = undefined;
});

describe('a slot whose device keeps failing', () => {
  it('queues each failed run again on the working slot, drains the broken one after 3 faults, and reports it', async () => {
    const served = await serve([{ index: 0 }, BROKEN_GPU]);
    close = served.close;
    const { lab, client } = served;
    await ok(client, 'start_session', { tag: 'drain' });
    const baseline = (await ok(client, 'run_experiment', { description: 'baseline' })).experiment.id;
    const noise = await ok(client, 'measure_noise', { k: 8 });
    const ids: number[] = [baseline, ...noise.experiments.map((e: { id: number }) => e.id)];
    await waitUntil(() => lab.store.audit.list({ method: 'slot_drained' }).length === 1, 600, 'slot 1 drained');
    const finished = [];
    for (const id of ids) finished.push(await waitFinished(client, id, 600));

    // Nothing was lost to the broken GPU: every run succeeded, on the working slot.
    expect(finished.map((e) => e.status)).toEqual(ids.map(() => 'succeeded'));
    expect(ids.map((id) => lab.store.getExperiment(id)?.slot)).toEqual(ids.map(() => 0));

    const faults = lab.store.audit.list({ method: 'slot_fault' });
    expect(faults.length).toBe(3);
    for (const fault of faults) expect(fault.message).toMatch(/^slot 1 \(GPU 0\) failed the run for its device: .*CUDA is not available.*; queued again with the same seed \d+ \(retry 1\)$/);
    const drained = lab.store.audit.list({ method: 'slot_drained' })[0];
    expect(drained.message).toMatch(/^slot 1 \(GPU 0\) is drained: 3 runs in a row failed for the device, not their code \(experiments \d+, \d+, \d+; last: .*CUDA is not available\)/);
    expect(drained.experimentId).toBe(faults[2].experimentId);
    // A retry is the same run: the seed the server drew for it the first time.
    for (const fault of faults) {
      const seed = Number(/same seed (\d+)/.exec(fault.message ?? '')?.[1]);
      expect(lab.store.getExperiment(fault.experimentId as number)?.seed).toBe(seed);
    }

    const status = await ok(client, 'status');
    expect(status.slots.map((s: { drained: string | null }) => s.drained !== null)).toEqual([false, true]);
    expect(status.slots[1].drained).toBe(drained.message);
    const text = (await client.callTool({ name: 'status', arguments: {} })).content as { text: string }[];
    expect(text[0].text).toContain(`DRAINED: ${drained.message}`);

    // New work still runs, on slot 0 only.
    const after = (await ok(client, 'run_experiment', { description: 'after the drain' })).experiment.id;
    const done = await waitFinished(client, after, 300);
    expect(done.status).toBe('succeeded');
    expect(lab.store.getExperiment(after)?.slot).toBe(0);
    expect(lab.store.audit.list({ method: 'slot_fault' }).length).toBe(3);
  }, 900_000);

  it('with no working slot left, records the run crashed with the cause and refuses new runs', async () => {
    const served = await serve([{ ...BROKEN_GPU, index: 0 }]);
    close = served.close;
    const { lab, client } = served;
    await ok(client, 'start_session', { tag: 'all-drained' });
    const id = (await ok(client, 'run_experiment', { description: 'baseline' })).experiment.id;
    const done = await waitFinished(client, id, 600);
    // Two retries on the only slot, then the third fault drains it and nothing is left to run it.
    expect(done.status).toBe('crashed');
    expect(done.error).toMatch(/CUDA is not available/);
    expect(lab.store.audit.list({ method: 'slot_fault' }).map((f) => (f.message ?? '').replace(/^.*; /, ''))).toEqual([
      expect.stringMatching(/^queued again with the same seed \d+ \(retry 1\)$/),
      expect.stringMatching(/^queued again with the same seed \d+ \(retry 2\)$/),
      'not queued again',
    ]);
    expect(lab.store.audit.list({ method: 'slot_drained' }).length).toBe(1);

    const status = await ok(client, 'status');
    expect(status.nextStep).toMatch(/^every slot is drained \(slot 0 \(GPU 0\) is drained: .*\): tell the person running this lab/);
    expect(await fails(client, 'run_experiment', { description: 'one more' })).toMatch(/Every slot is drained, so nothing would run it; nothing was queued\. slot 0 \(GPU 0\) is drained/);
    expect(await fails(client, 'measure_noise', { k: 3 })).toMatch(/Every slot is drained/);
  }, 900_000);
});
