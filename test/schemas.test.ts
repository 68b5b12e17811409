import { Ajv } from 'ajv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nullsAsOmitted, portableInputSchema } from '../src/tools/define.js';
import { connect, makeWorkspace, type Connected } from './helpers.js';

type Schema = Record<string, any>;

/** Every schema node under a tool's input schema, with its path. */
function* nodes(schema: Schema, path = '$'): Generator<[string, Schema]> {
  yield [path, schema];
  for (const [name, child] of Object.entries(schema.properties ?? {})) yield* nodes(child as Schema, `${path}.${name}`);
  if (schema.items && typeof schema.items === 'object') yield* nodes(schema.items, `${path}[]`);
  for (const key of ['anyOf', 'oneOf', 'allOf']) for (const [i, child] of (schema[key] ?? []).entries()) yield* nodes(child, `${path}.${key}[${i}]`);
}

/** Keywords of Gemini's function-declaration schema (an OpenAPI 3.0 subset), plus what adapters strip. */
const GEMINI_KEYWORDS = new Set(['type', 'format', 'title', 'description', 'nullable', 'enum', 'maxItems', 'minItems', 'properties', 'required', 'minProperties', 'maxProperties', 'minLength', 'maxLength', 'pattern', 'example', 'anyOf', 'propertyOrdering', 'default', 'items', 'minimum', 'maximum', 'additionalProperties']);

describe('tool input schemas every provider accepts (tools/list of the real server)', () => {
  let server: Connected;
  let tools: { name: string; inputSchema: Schema }[];

  beforeAll(async () => {
    server = await connect(await makeWorkspace('smoke'), [], 'schemas-test');
    tools = (await server.client.listTools()).tools as never;
  }, 600_000);

  afterAll(async () => {
    await server?.client.close();
  });

  it('lists every tool', () => {
    expect(tools.length).toBeGreaterThanOrEqual(10);
  });

  it('has no $schema, no exclusive bounds, and closes every object', () => {
    for (const tool of tools) {
      expect(tool.inputSchema.$schema, tool.name).toBeUndefined();
      for (const [path, node] of nodes(tool.inputSchema)) {
        const where = `${tool.name} ${path}`;
        expect(node, where).not.toHaveProperty('exclusiveMinimum');
        expect(node, where).not.toHaveProperty('exclusiveMaximum');
        if (node.type === 'object') {
          expect(node.additionalProperties, where).toBe(false);
          expect(node.properties, where).toBeTypeOf('object');
          for (const name of node.required ?? []) expect(node.properties, where).toHaveProperty(name);
        }
        // Every node says what it is: providers reject untyped parameters.
        if (!node.anyOf) expect(node.type, where).toBeDefined();
      }
    }
  });

  it('states positive ids as minimum 1, without the safe-integer noise', () => {
    const id = tools.find((t) => t.name === 'get_run_log')!.inputSchema.properties.experiment_id;
    expect(id).toMatchObject({ type: 'integer', minimum: 1 });
    expect(id.maximum).toBeUndefined();
  });

  it('is valid JSON Schema (the openai package converts it to strict mode: clients.e2e.test.ts)', () => {
    const ajv = new Ajv({ strict: true, allErrors: true });
    for (const tool of tools) {
      expect(ajv.validateSchema(tool.inputSchema), `${tool.name}: ${ajv.errorsText()}`).toBe(true);
      ajv.compile(tool.inputSchema);
    }
  });

  it('lets every optional argument be null, as strict clients send it, and no required one', () => {
    for (const tool of tools) {
      const required = new Set<string>(tool.inputSchema.required ?? []);
      for (const [name, property] of Object.entries(tool.inputSchema.properties as Record<string, Schema>)) {
        const nullable = (property.anyOf ?? []).some((branch: Schema) => branch.type === 'null');
        expect(nullable, `${tool.name}.${name}`).toBe(!required.has(name));
      }
    }
  });

  it('uses only keywords of Gemini function declarations', () => {
    for (const tool of tools) {
      for (const [path, node] of nodes(tool.inputSchema)) {
        for (const key of Object.keys(node)) expect(GEMINI_KEYWORDS.has(key), `${tool.name} ${path}: ${key}`).toBe(true);
      }
    }
  });

  it('still accepts what the tools took before, and refuses what they refused', async () => {
    const ok = await server.client.callTool({ name: 'get_results', arguments: { limit: 1 } });
    expect(ok.isError).toBeFalsy();
    const bad = await server.client.callTool({ name: 'get_run_log', arguments: { experiment_id: 0 } });
    expect(bad.isError).toBe(true);
    const nulls = await server.client.callTool({ name: 'get_results', arguments: { limit: null, experiment_id: null, format: null } });
    expect(nulls.isError, JSON.stringify(nulls.content)).toBeFalsy();
    expect((nulls.structuredContent as { experiments: unknown[] }).experiments).toBeInstanceOf(Array);
    const requiredNull = await server.client.callTool({ name: 'get_run_log', arguments: { experiment_id: null } });
    expect(requiredNull.isError).toBe(true);
  });
});

describe('portable input schemas and null arguments (pure)', () => {
  it('makes each optional argument nullable, keeping its description and default outside', () => {
    const schema = portableInputSchema({
      $schema: 'https://json-schema.org/draft/2020-12/schema',
      type: 'object',
      properties: {
        id: { type: 'integer', exclusiveMinimum: 0, maximum: Number.MAX_SAFE_INTEGER },
        limit: { type: 'integer', default: 20, description: 'rows', minimum: 1 },
      },
      required: ['id'],
    });
    expect(schema).toEqual({
      type: 'object',
      properties: {
        id: { type: 'integer', minimum: 1 },
        limit: { anyOf: [{ type: 'integer', minimum: 1 }, { type: 'null' }], description: 'rows', default: 20 },
      },
      required: ['id'],
      additionalProperties: false,
    });
  });

  it('drops null only for optional arguments, and nothing else', () => {
    const optional = new Set(['limit', 'format']);
    expect(nullsAsOmitted({ id: 3, limit: null, format: 'tsv' }, optional)).toEqual({ id: 3, format: 'tsv' });
    expect(nullsAsOmitted({ id: null, limit: 0 }, optional)).toEqual({ id: null, limit: 0 });
    expect(nullsAsOmitted(undefined, optional)).toBeUndefined();
  });
});
