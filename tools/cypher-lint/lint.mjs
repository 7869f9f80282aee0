#!/usr/bin/env node
// Lint Cypher statements with Neo4j's own Cypher front end, offline.
//
// stdin:  {"schema": {labels, relationshipTypes, propertyKeys},
//          "statements": [{"name": str, "query": str, "parameters": [str, ...]}, ...]}
// stdout: [{"name": str, "diagnostics": [{"severity": "error"|"warning"|..., "message": str,
//           "start": int, "end": int}]}, ...]
//
// Each statement is linted as Cypher 5 against the schema given plus the catalogue of
// Neo4j's built-in functions and procedures that ships with the package, with exactly the
// parameters it declares (an undeclared $parameter is an error).
import { readFileSync } from 'node:fs';
import { lintCypherQuery, testData } from '@neo4j-cypher/language-support';

const SEVERITY = { 1: 'error', 2: 'warning', 3: 'information', 4: 'hint' };

const input = JSON.parse(readFileSync(0, 'utf8'));
const base = input.schema ?? {};
const catalogue = testData.mockSchema;

const results = input.statements.map(({ name, query, parameters = [] }) => {
  const dbSchema = {
    labels: base.labels ?? [],
    relationshipTypes: base.relationshipTypes ?? [],
    propertyKeys: base.propertyKeys ?? [],
    parameters: Object.fromEntries(parameters.map((p) => [p, null])),
    functions: catalogue.functions,
    procedures: catalogue.procedures,
    defaultLanguage: 'CYPHER 5',
  };
  const { diagnostics } = lintCypherQuery(query, dbSchema);
  return {
    name,
    diagnostics: diagnostics.map((d) => ({
      severity: SEVERITY[d.severity] ?? String(d.severity),
      message: d.message,
      start: d.offsets?.start ?? null,
      end: d.offsets?.end ?? null,
    })),
  };
});
process.stdout.write(JSON.stringify(results, null, 1) + '\n');
