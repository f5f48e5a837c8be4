// Drives the official openai npm SDK against a filesd server and asserts the results.
// Usage: FILESD_BASE_URL=http://127.0.0.1:PORT/v1 FILESD_API_KEY=sk-... node sdk_check.mjs
// Prints one line per check and "N passed, 0 failed"; exits non-zero on the first failure.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import OpenAI, { NotFoundError, BadRequestError, toFile } from "openai";

const client = new OpenAI({
  baseURL: process.env.FILESD_BASE_URL,
  apiKey: process.env.FILESD_API_KEY,
  maxRetries: 0,
});
let passed = 0;

async function check(name, fn) {
  await fn();
  passed += 1;
  console.log(`ok - ${name}`);
}

const created = [];

await check("files.create", async () => {
  for (let i = 0; i < 5; i++) {
    const file = await client.files.create({
      file: await toFile(Buffer.from(`line ${i}\n`), `node-${i}.jsonl`),
      purpose: "batch",
    });
    assert.equal(file.object, "file");
    assert.equal(file.filename, `node-${i}.jsonl`);
    assert.equal(file.bytes, `line ${i}\n`.length);
    assert.equal(file.status, "processed");
    created.push(file.id);
  }
});

await check("files.list auto-paginates newest first", async () => {
  const seen = [];
  for await (const file of client.files.list({ limit: 2, purpose: "batch" })) {
    seen.push(file.id);
  }
  assert.deepEqual(seen, [...created].reverse());
  const page = await client.files.list({ limit: 2 });
  assert.equal(page.data.length, 2);
  assert.equal(page.has_more, true);
  assert.equal(page.hasNextPage(), true);
});

await check("files.list order=asc", async () => {
  const seen = [];
  for await (const file of client.files.list({ limit: 3, order: "asc" })) seen.push(file.id);
  assert.deepEqual(seen, created);
});

await check("files.retrieve", async () => {
  const file = await client.files.retrieve(created[2]);
  assert.equal(file.id, created[2]);
  assert.equal(file.filename, "node-2.jsonl");
});

await check("files.content", async () => {
  const response = await client.files.content(created[3]);
  assert.equal(Buffer.from(await response.arrayBuffer()).toString(), "line 3\n");
});

await check("files.delete", async () => {
  const deleted = await client.files.delete(created[0]);
  assert.deepEqual(deleted, { id: created[0], object: "file", deleted: true });
  await assert.rejects(client.files.retrieve(created[0]), NotFoundError);
});

await check("uploads in parts", async () => {
  const parts = [Buffer.alloc(200_000, 1), Buffer.alloc(100_000, 2), Buffer.from("end")];
  const whole = Buffer.concat(parts);
  const upload = await client.uploads.create({
    bytes: whole.length,
    filename: "chunked.bin",
    mime_type: "application/octet-stream",
    purpose: "assistants",
  });
  assert.equal(upload.status, "pending");
  const ids = [];
  for (const [i, part] of parts.entries()) {
    const made = await client.uploads.parts.create(upload.id, {
      data: await toFile(part, `part-${i}`),
    });
    assert.equal(made.object, "upload.part");
    ids.push(made.id);
  }
  await assert.rejects(
    client.uploads.complete(upload.id, { part_ids: ids.slice(1) }),
    BadRequestError,
  );
  const md5 = createHash("md5").update(whole).digest("hex");
  const done = await client.uploads.complete(upload.id, { part_ids: ids, md5 });
  assert.equal(done.status, "completed");
  assert.equal(done.file.bytes, whole.length);
  const response = await client.files.content(done.file.id);
  assert.ok(Buffer.from(await response.arrayBuffer()).equals(whole));
});

await check("uploads.cancel", async () => {
  const upload = await client.uploads.create({
    bytes: 1, filename: "x", mime_type: "text/plain", purpose: "batch",
  });
  const cancelled = await client.uploads.cancel(upload.id);
  assert.equal(cancelled.status, "cancelled");
});

console.log(`${passed} passed, 0 failed`);
