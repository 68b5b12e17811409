import type { Lab } from '../core/lab.js';

/**
 * Ends the process cleanly once: stops running experiments (whole process groups), closes the
 * transport, then exits. SIGTERM and SIGINT always trigger it; transports add their own causes.
 */
export function shutdownOnce(lab: Lab, closeTransport: () => Promise<void>): (why: string) => void {
  let stopping = false;
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`[autoresearch] stopping (${why}): ending running experiments\n`);
    void (async () => {
      await lab.close().catch((error: Error) => process.stderr.write(`[autoresearch] ${error.message}\n`));
      await closeTransport().catch(() => undefined);
      process.exit(0);
    })();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  return stop;
}
