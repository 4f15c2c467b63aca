#!/usr/bin/env node
// A command-line client of varstore.v1.VariableStore for the tests, in a second language.
//
//   node varstore_client.js ADDRESS METHOD JSON_REQUEST
//
// Calls METHOD (e.g. "GetVariable") with the request given as JSON (proto field names,
// int64 as strings or numbers) and prints the response as JSON on stdout, exit 0. A gRPC
// error prints {"code": <numeric status code>, "details": "..."} on stdout, exit 1.
// Bad usage exits 2. @grpc/grpc-js and @grpc/proto-loader are this folder's dependencies
// (package.json, locked in package-lock.json: `npm ci` here installs them); the contract
// comes from the repository's proto/.
"use strict";

const path = require("path");

const PROTO_ROOT = path.join(__dirname, "..", "..", "proto");
const SERVICE = "varstore.v1.VariableStore";
const DEADLINE_MS = 30000;

const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

function usage(message) {
  process.stderr.write(`${message}\nusage: node varstore_client.js ADDRESS METHOD JSON_REQUEST\n`);
  process.exit(2);
}

function main(argv) {
  if (argv.length !== 3) usage("expected 3 arguments");
  const [address, method, body] = argv;
  let request;
  try {
    request = JSON.parse(body);
  } catch (error) {
    usage(`JSON_REQUEST is not JSON: ${error.message}`);
  }

  const definition = protoLoader.loadSync("varstore/v1/varstore.proto", {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const Service = grpc.loadPackageDefinition(definition).varstore.v1.VariableStore;
  if (!Service || !Service.service[method]) usage(`${SERVICE} has no method ${method}`);

  const client = new Service(address, grpc.credentials.createInsecure());
  const deadline = new Date(Date.now() + DEADLINE_MS);
  client[method](request, { deadline }, (error, response) => {
    client.close();
    if (error) {
      process.stdout.write(JSON.stringify({ code: error.code, details: error.details }) + "\n");
      process.exitCode = 1;
      return;
    }
    process.stdout.write(JSON.stringify(response) + "\n");
  });
}

main(process.argv.slice(2));
