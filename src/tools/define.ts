import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { RequestHandlerExtra } from '@modelcontextprotocol/sdk/shared/protocol.js';
import { CallToolRequestSchema, ListToolsRequestSchema, type ServerNotification, type ServerRequest, type ToolAnnotations } from '@modelcontextprotocol/sdk/types.js';
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
 * (`additionalProperties: false`, as OpenAI's strict mode requires) and has `properties`; and
 * every optional argument also takes null (`anyOf: [..., {type: "null"}]`), which OpenAI's strict
 * converter requires (it makes every argument required: a strict client sends null for one it
 * leaves out, and the server takes null as left out). Otherwise validation is unchanged: the zod
 * schemas still check every call.
 */
export function portableInputSchema(schema: JsonSchema): JsonSchema {
  const { $schema: _dialect, ...rest } = schema;
  const portable = portableNode(rest) as JsonSchema;
  const required = new Set((portable.required as string[] | undefined) ?? []);
  const properties = Object.entries((portable.properties ?? {}) as Record<string, JsonSchema>).map(([name, property]) => {
    if (required.has(name)) return [name, property];
    const { description, default: fallback, ...value } = property;
    const nullable: JsonSchema = { anyOf: [value, { type: 'null' }] };
    if (description !== undefined) nullable.description = description;
    if (fallback !== undefined) nullable.default = fallback;
    return [name, nullable];
  });
  return { ...portable, properties: Object.fromEntries(properties) };
}

/** Drops the arguments that are null where the tool's input takes them as optional (see portableInputSchema). */
export function nullsAsOmitted(args: Record<string, unknown> | undefined, optional: ReadonlySet<string>): Record<string, unknown> | undefined {
  if (!args) return args;
  return Object.fromEntries(Object.entries(args).filter(([name, value]) => !(value === null && optional.has(name))));
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

/** Per server: each tool's optional argument names. */
const optionalArguments = new WeakMap<McpServer, Map<string, Set<string>>>();

/**
 * The SDK renders input schemas itself when it answers tools/list, and validates arguments
 * itself before a tool runs; this wraps both handlers (as the SDK installs them, on the first
 * registered tool) so that each input schema goes out portable, and null for an optional
 * argument arrives as the argument left out.
 */
function servePortableTools(server: McpServer): Map<string, Set<string>> {
  const known = optionalArguments.get(server);
  if (known) return known;
  const optional = new Map<string, Set<string>>();
  optionalArguments.set(server, optional);
  const protocol = server.server as unknown as { setRequestHandler: (schema: unknown, handler: (...args: any[]) => unknown) => void };
  const setRequestHandler = protocol.setRequestHandler;
  protocol.setRequestHandler = function (this: unknown, schema, handler) {
    if (schema === ListToolsRequestSchema) {
      return setRequestHandler.call(this, schema, async (...args: unknown[]) => {
        const result = (await handler(...args)) as { tools: { inputSchema: JsonSchema }[] };
        return { ...result, tools: result.tools.map((tool) => ({ ...tool, inputSchema: portableInputSchema(tool.inputSchema) })) };
      });
    }
    if (schema === CallToolRequestSchema) {
      return setRequestHandler.call(this, schema, (request: { params: { name: string; arguments?: Record<string, unknown> } }, ...rest: unknown[]) => {
        const names = optional.get(request.params.name);
        const params = names ? { ...request.params, arguments: nullsAsOmitted(request.params.arguments, names) } : request.params;
        return handler({ ...request, params }, ...rest);
      });
    }
    return setRequestHandler.call(this, schema, handler);
  };
  return optional;
}

/** Registers a tool; expected failures become `isError` results with the message a model can act on. */
export function registerDefinedTool(server: McpServer, definition: ToolDefinition<any, any>, context: ToolContext): void {
  const optional = servePortableTools(server);
  optional.set(definition.name, new Set(Object.entries(definition.input as z.ZodRawShape).filter(([, field]) => z.safeParse(field, undefined).success).map(([name]) => name)));
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
