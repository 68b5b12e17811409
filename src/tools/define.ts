import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { RequestHandlerExtra } from '@modelcontextprotocol/sdk/shared/protocol.js';
import { ListToolsRequestSchema, type ServerNotification, type ServerRequest, type ToolAnnotations } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import { UserError, type Caller, type Lab } from '../core/lab.js';

export type ToolExtra = RequestHandlerExtra<ServerRequest, ServerNotification>;

/** What every tool handler gets besides its arguments. */
export interface ToolContext {
  lab: Lab;
  caller: (extra: ToolExtra) => Caller;
}

export interface ToolResult<Out> {
  structured: Out;
  /** Human- and model-readable rendering; defaults to the structured content as compact JSON. */
  text?: string;
}

export interface ToolDefinition<In extends z.ZodRawShape, Out extends z.ZodRawShape> {
  name: string;
  title: string;
  description: string;
  input: In;
  output: Out;
  /** One switch sets the hints: read-only tools are never destructive. */
  kind: 'read' | 'write' | 'destructive';
  idempotent?: boolean;
  handler: (args: z.infer<z.ZodObject<In>>, context: ToolContext, extra: ToolExtra) => Promise<ToolResult<z.infer<z.ZodObject<Out>>>>;
}

export function defineTool<In extends z.ZodRawShape, Out extends z.ZodRawShape>(definition: ToolDefinition<In, Out>) {
  return definition;
}

export function annotationsOf(definition: ToolDefinition<z.ZodRawShape, z.ZodRawShape>): ToolAnnotations {
  return {
    title: definition.title,
    readOnlyHint: definition.kind === 'read',
    destructiveHint: definition.kind === 'destructive',
    idempotentHint: definition.idempotent ?? definition.kind === 'read',
    openWorldHint: false,
  };
}

type JsonSchema = Record<string, unknown>;

const SCHEMA_MAPS = new Set(['properties', 'patternProperties', '$defs', 'definitions']);
const SCHEMA_LISTS = new Set(['anyOf', 'oneOf', 'allOf', 'prefixItems']);
const SCHEMA_VALUES = new Set(['items', 'additionalProperties', 'not', 'contains', 'propertyNames']);

/**
 * An input schema as every common agent stack takes it (zod's JSON Schema is valid, but
 * providers accept a subset): no `$schema`; `exclusiveMinimum`/`exclusiveMaximum` become
 * `minimum`/`maximum` (for integers the next whole number, so `.positive()` reads `minimum: 1`;
 * Gemini rejects the exclusive forms); the safe-integer bounds zod adds to every `.int()` are
 * dropped (they say nothing a JSON integer does not); every object schema is closed
 * (`additionalProperties: false`, as OpenAI's strict mode requires) and has `properties`.
 * Validation is unchanged: the zod schemas still check every call.
 */
export function portableInputSchema(schema: JsonSchema): JsonSchema {
  const { $schema: _dialect, ...rest } = schema;
  return portableNode(rest) as JsonSchema;
}

function portableNode(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(portableNode);
  if (!node || typeof node !== 'object') return node;
  const out: JsonSchema = {};
  for (const [key, value] of Object.entries(node as JsonSchema)) {
    if (SCHEMA_MAPS.has(key) && value && typeof value === 'object') {
      out[key] = Object.fromEntries(Object.entries(value as JsonSchema).map(([name, child]) => [name, portableNode(child)]));
    } else if (SCHEMA_LISTS.has(key) || SCHEMA_VALUES.has(key)) {
      out[key] = portableNode(value);
    } else {
      out[key] = value;
    }
  }
  const integer = out.type === 'integer';
  if (typeof out.exclusiveMinimum === 'number') {
    const bound = integer ? Math.floor(out.exclusiveMinimum) + 1 : out.exclusiveMinimum;
    out.minimum = typeof out.minimum === 'number' ? Math.max(out.minimum, bound) : bound;
    delete out.exclusiveMinimum;
  }
  if (typeof out.exclusiveMaximum === 'number') {
    const bound = integer ? Math.ceil(out.exclusiveMaximum) - 1 : out.exclusiveMaximum;
    out.maximum = typeof out.maximum === 'number' ? Math.min(out.maximum, bound) : bound;
    delete out.exclusiveMaximum;
  }
  if (integer && out.minimum === Number.MIN_SAFE_INTEGER) delete out.minimum;
  if (integer && out.maximum === Number.MAX_SAFE_INTEGER) delete out.maximum;
  if (out.type === 'object') {
    out.properties ??= {};
    out.additionalProperties ??= false;
  }
  return out;
}

const portableServers = new WeakSet<McpServer>();

/**
 * The SDK renders input schemas itself when it answers tools/list; this wraps that handler (as
 * the SDK installs it, on the first registered tool) so each input schema goes out portable.
 */
function servePortableSchemas(server: McpServer): void {
  if (portableServers.has(server)) return;
  portableServers.add(server);
  const protocol = server.server as unknown as { setRequestHandler: (schema: unknown, handler: (...args: any[]) => unknown) => void };
  const setRequestHandler = protocol.setRequestHandler;
  protocol.setRequestHandler = function (this: unknown, schema, handler) {
    if (schema !== ListToolsRequestSchema) return setRequestHandler.call(this, schema, handler);
    return setRequestHandler.call(this, schema, async (...args: unknown[]) => {
      const result = (await handler(...args)) as { tools: { inputSchema: JsonSchema }[] };
      return { ...result, tools: result.tools.map((tool) => ({ ...tool, inputSchema: portableInputSchema(tool.inputSchema) })) };
    });
  };
}

/** Registers a tool; expected failures become `isError` results with the message a model can act on. */
export function registerDefinedTool(server: McpServer, definition: ToolDefinition<any, any>, context: ToolContext): void {
  servePortableSchemas(server);
  server.registerTool(
    definition.name,
    {
      title: definition.title,
      description: definition.description,
      inputSchema: definition.input,
      outputSchema: definition.output,
      annotations: annotationsOf(definition),
    },
    (async (args: unknown, extra: ToolExtra) => {
      try {
        const result = await definition.handler(args as never, context, extra);
        return {
          content: [{ type: 'text' as const, text: result.text ?? JSON.stringify(result.structured) }],
          structuredContent: result.structured as Record<string, unknown>,
        };
      } catch (error) {
        const message =
          error instanceof UserError
            ? error.message
            : `Internal error in ${definition.name}: ${(error as Error).message}. The server log has details; try again or call status.`;
        if (!(error instanceof UserError)) process.stderr.write(`[autoresearch] ${definition.name}: ${(error as Error).stack}\n`);
        return { content: [{ type: 'text' as const, text: message }], isError: true };
      }
    }) as never,
  );
}
