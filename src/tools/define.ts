import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { RequestHandlerExtra } from '@modelcontextprotocol/sdk/shared/protocol.js';
import type { ServerNotification, ServerRequest, ToolAnnotations } from '@modelcontextprotocol/sdk/types.js';
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
  /** Human- and model-readable rendering; defaults to the structured content as JSON. */
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

/** Registers a tool; expected failures become `isError` results with the message a model can act on. */
export function registerDefinedTool(server: McpServer, definition: ToolDefinition<any, any>, context: ToolContext): void {
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
          content: [{ type: 'text' as const, text: result.text ?? JSON.stringify(result.structured, null, 2) }],
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
