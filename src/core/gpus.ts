import { execFileSync } from 'node:child_process';

/** What nvidia-smi says about the GPUs of this machine; nothing here when there is no NVIDIA driver. */

export interface GpuUsage {
  index: number;
  memoryUsedMb: number;
  memoryTotalMb: number;
  utilizationPercent: number;
}

const QUERY = ['--query-gpu=index,memory.used,memory.total,utilization.gpu', '--format=csv,noheader,nounits'];

/** Parses `nvidia-smi --query-gpu=index,memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits`. */
export function parseGpuUsage(csv: string): GpuUsage[] {
  return csv
    .split('\n')
    .map((line) => line.split(',').map((cell) => cell.trim()))
    .filter((cells) => cells.length === 4 && /^\d+$/.test(cells[0]))
    .map(([index, used, total, utilization]) => ({
      index: Number(index),
      memoryUsedMb: Number(used),
      memoryTotalMb: Number(total),
      // "[N/A]" on GPUs that do not report it
      utilizationPercent: Number.isFinite(Number(utilization)) ? Number(utilization) : NaN,
    }));
}

/** The machine's GPUs now, or undefined without nvidia-smi (or when it fails). */
export function gpuUsage(): GpuUsage[] | undefined {
  try {
    return parseGpuUsage(execFileSync('nvidia-smi', QUERY, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 }));
  } catch {
    return undefined;
  }
}

/**
 * Why a --gpus list cannot be used on this machine, or undefined when it can: indices only, no
 * repeats, each one a GPU that nvidia-smi lists.
 */
export function gpuListProblem(requested: string, present: number[] | undefined): string | undefined {
  const ids = requested.split(',').map((s) => s.trim());
  if (ids.some((id) => !/^\d+$/.test(id))) return `--gpus takes GPU indices like 0,1,2; got "${requested}".`;
  const repeated = ids.find((id, i) => ids.indexOf(id) !== i);
  if (repeated !== undefined) return `--gpus names GPU ${repeated} twice; each GPU is one slot, so name each once.`;
  if (present === undefined) return `--gpus ${requested}: this machine has no NVIDIA driver (nvidia-smi not found or failing). On a CPU machine use --slots N instead.`;
  const missing = ids.filter((id) => !present.includes(Number(id)));
  if (missing.length > 0) {
    return `--gpus ${requested}: GPU ${missing.join(', ')} does not exist here; nvidia-smi lists ${present.length ? present.join(', ') : 'none'}. Name existing indices, or leave --gpus out to use every GPU.`;
  }
  return undefined;
}
