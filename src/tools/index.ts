import { applyPatch } from './apply-patch.js';
import { cancelExperiment } from './cancel-experiment.js';
import { commitOrRevert } from './commit-or-revert.js';
import { getResults } from './get-results.js';
import { getRunLog } from './get-run-log.js';
import { measureNoise } from './measure-noise.js';
import { readHarness } from './read-harness.js';
import { readTrainPy } from './read-train-py.js';
import { runExperiment } from './run-experiment.js';
import { startSession } from './start-session.js';
import { status } from './status.js';
import { undo } from './undo.js';

/** Every tool the server offers, in the order a model meets them in the workflow. */
export const TOOLS = [
  status,
  startSession,
  readTrainPy,
  readHarness,
  applyPatch,
  runExperiment,
  getResults,
  getRunLog,
  commitOrRevert,
  measureNoise,
  undo,
  cancelExperiment,
] as const;
