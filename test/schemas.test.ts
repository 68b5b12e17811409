import { Ajv } from 'ajv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, makeWorkspace, type Connected } from './helpers.js';

type Schema = Record<string, any>;

/** Every schema node under a tool's input schema, with its path. */
function* nodes(schema: Schema, path = '$'): Generator<[string, Schema]> {
  yield [path, schema];
  for (const [name, child] of Object.entries(schema.properties ?? {})) yield* nodes(child as Schema, `${path}.${name}`);
  if (schema.items && typeof schema.items === 'object') yield* nodes(schema.items, `${path}[]`);
  for (const key of ['anyOf', 'oneOf', 'allOf']) for (const [i, child] of (schema[key] ?? []).entries()) yield* nodes(child, `${path}.${key}[${i}]`);
}

/**
 * What OpenAI's strict function calling does with a schema: every property required (an
 * optional one becomes nullable), every object closed. Throws where strict mode has no form.
 */
function toOpenAiStrict(schema: Schema): Schema {
  if (schema.$ref || schema.$defs || schema.definitions) throw new Error('references');
  const out: Schema = { ...schema };
  delete out.default;
  if (schema.type === 'object') {
    if (schema.additionalProperties !== false) throw new Error('an object open to extra keys');
    const required = new Set(schema.required ?? []);
    out.properties = Object.fromEntries(
      Object.entries(schema.properties ?? {}).map(([name, child]) => {
        const strict = toOpenAiStrict(child as Schema);
        return [name, required.has(name) ? strict : { anyOf: [strict, { type: 'null' }] }];
      }),
    );
    out.required = Object.keys(schema.properties ?? {});
  }
  if (schema.type === 'array') out.items = toOpenAiStrict(schema.items);
  for (const key of ['anyOf', 'oneOf', 'allOf']) if (schema[key]) out[key] = schema[key].map(toOpenAiStrict);
  return out;
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

  it('converts to OpenAI strict function schemas, and stays valid JSON Schema', () => {
    const ajv = new Ajv({ strict: true, allErrors: true });
    for (const tool of tools) {
      const strict = toOpenAiStrict(tool.inputSchema);
      expect(ajv.validateSchema(tool.inputSchema), `${tool.name}: ${ajv.errorsText()}`).toBe(true);
      expect(ajv.validateSchema(strict), `${tool.name} strict: ${ajv.errorsText()}`).toBe(true);
      ajv.compile(tool.inputSchema);
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
  });
});
