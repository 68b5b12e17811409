import { createRequire } from 'node:module';
import { dirname, sep } from 'node:path';

/** Node's own signs of a native addon that does not load: another ABI, a broken file, no build. */
const NATIVE_FAILURE = /NODE_MODULE_VERSION|better_sqlite3\.node|Could not locate the bindings file|invalid ELF header|wrong ELF class/;

/** The folder to run `npm rebuild better-sqlite3` in: the project whose node_modules holds it. */
function rebuildFolder(): string | undefined {
  try {
    const packageDir = dirname(createRequire(import.meta.url).resolve('better-sqlite3/package.json'));
    const marker = `${sep}node_modules${sep}better-sqlite3`;
    const at = packageDir.lastIndexOf(marker);
    return at > 0 ? packageDir.slice(0, at) : packageDir;
  } catch {
    return undefined;
  }
}

/**
 * One line that says what to do when better-sqlite3 was built for another Node.js (an MCP host
 * often starts servers with its own or an older `node`), or undefined for any other error.
 */
export function explainNativeModuleError(error: unknown): string | undefined {
  const message = error instanceof Error ? error.message : String(error);
  if (!NATIVE_FAILURE.test(message)) return undefined;
  const built = /using\s+NODE_MODULE_VERSION (\d+)/.exec(message)?.[1];
  const folder = rebuildFolder();
  const where = folder ? `cd ${JSON.stringify(folder)} && npm rebuild better-sqlite3` : 'npm rebuild better-sqlite3';
  return (
    `the native module better-sqlite3 does not load in this Node.js (${process.version} at ${process.execPath}, NODE_MODULE_VERSION ${process.versions.modules}` +
    `${built ? `; it was built for NODE_MODULE_VERSION ${built}` : ''}). ` +
    `Fix: run \`${where}\` with this Node, or start the server with the Node that installed it (its absolute path as the "command" in the MCP host config).`
  );
}
