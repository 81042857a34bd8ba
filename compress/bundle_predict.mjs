// Run an edge bundle made by `compress bundle` in JavaScript: Node.js or a browser, with onnxruntime-web (WebAssembly)
// and @huggingface/tokenizers, the two packages pinned in the bundle's package.json.
//
// This file is copied into every bundle as `predict.mjs`; it does what predict.py does:
//
//   npm install                                  # in the bundle folder (or any folder above it)
//   node predict.mjs "a gripping, funny film"    # label<TAB>score
//   node predict.mjs --json "sentence one" "sentence two"     # pair task, JSON output
//   node predict.mjs --file ../texts.txt         # one text a line (pair tasks: text<TAB>pair; blank lines skipped)
//
// From code (Node.js, or a browser page through a bundler or an import map):
//
//   import { Predictor } from "./predict.mjs";
//   const model = await Predictor.load("https://example.com/my-bundle/");   // or a folder path in Node.js
//   await model.predict("a gripping, funny film");   // {label, score, scores} ({value} for regression)
//
// Before the model is created, the files it reads (model.onnx, tokenizer.json, labels.json, whose label names must be
// manifest.json's) are checked against the sha256 in manifest.json; a changed file is refused. Texts are truncated
// as the Python runner truncates them (the tokenizer's longest-first rule at the manifest's max_length), one text a
// run, as the metrics were measured.

export const FORMAT = "compress-bundle/1";
const IN_NODE = typeof process !== "undefined" && !!process.versions?.node;

export class BundleError extends Error {}
/** A text (or text pair) in which the tokenizer keeps nothing: only spaces, control or zero-width characters. */
export class EmptyText extends BundleError {}

/** Whether this file is the script Node.js runs (`node predict.mjs ...`), not a module imported by another. */
async function runAsScript() {
  if (!IN_NODE || !process.argv[1]) return false;
  const { fileURLToPath } = await import("node:url");
  const { realpathSync } = await import("node:fs");
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

// the two runtime packages, imported here so that a bundle without `npm install` says so in one line (a static import
// failed before any of this file ran: a Node.js stack trace of ERR_MODULE_NOT_FOUND)
let ort, tokenizers;
try {
  [ort, tokenizers] = await Promise.all([import("onnxruntime-web"), import("@huggingface/tokenizers")]);
} catch (e) {
  const missing = e?.code === "ERR_MODULE_NOT_FOUND" || /resolve module specifier|Cannot find (package|module)/
    .test(e?.message);
  if (!missing) throw e;
  const said = "this bundle's npm packages (onnxruntime-web, @huggingface/tokenizers) are not installed: run " +
    "`npm install` in the bundle folder (or one above it)";
  if (await runAsScript()) {
    console.error(`error: ${said}`);
    process.exit(2);
  }
  throw new BundleError(`${said} (${String(e?.message).split("\n")[0]})`);
}
const { BertNormalizer, BertPreTokenizer, LowercaseNormalizer, SequenceNormalizer, StripAccentsNormalizer, Tokenizer,
        WordPiece: WordPieceModel } = tokenizers;
const EMPTY = "nothing in it the tokenizer keeps: nothing to classify";

async function readBytes(base, rel) {
  if (IN_NODE && /^file:/.test(String(base))) {  // a file: URL (string or URL object) is a folder path in Node.js
    const { fileURLToPath } = await import("node:url");
    base = fileURLToPath(String(base));
  }
  if (IN_NODE && !/^https?:\/\//.test(String(base))) {
    const { readFile } = await import("node:fs/promises");
    const { join } = await import("node:path");
    try {
      return new Uint8Array(await readFile(join(String(base), rel)));
    } catch (e) {
      throw new BundleError(`${join(String(base), rel)}: cannot read (${e.code ?? e.message})`);
    }
  }
  const root = new URL(String(base).endsWith("/") ? String(base) : `${base}/`);
  const url = new URL(rel, root);
  if (url.origin !== root.origin || !url.pathname.startsWith(root.pathname)) {  // readManifest's check, once more
    throw new BundleError(`${rel}: resolves outside the bundle (${url})`);
  }
  let response;
  try {
    response = await fetch(url);
  } catch (e) {  // refused, unreachable, no such host: one line naming the file, as a missing one is
    throw new BundleError(`${url}: cannot fetch (${e.cause?.message ?? e.message})`);
  }
  if (!response.ok) throw new BundleError(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function sha256(bytes) {
  // crypto.subtle exists only in secure contexts: a page served over plain http to a phone on the network has none
  const digest = globalThis.crypto?.subtle
    ? new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", bytes)) : sha256Plain(bytes);
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

const K256 = Uint32Array.from([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
  0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
  0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
  0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
  0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
  0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
  0xc67178f2]);

/** SHA-256 (FIPS 180-4) in plain JavaScript, for pages without crypto.subtle: ~40 MB/s in Node 20 here, a 15 MB
 * model in under a second. */
export function sha256Plain(bytes) {
  const h = Uint32Array.from([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
    0x5be0cd19]);
  const n = bytes.length;
  const padded = new Uint8Array(((n + 9 + 63) >> 6) << 6);
  padded.set(bytes);
  padded[n] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(n / 0x20000000));  // the length in bits, big-endian, 64 bits
  view.setUint32(padded.length - 4, (n << 3) >>> 0);
  const w = new Uint32Array(64);
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(off + 4 * i);
    for (let i = 16; i < 64; i++) {
      const a = w[i - 15], b = w[i - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, k] = h;
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (k + S1 + ((e & f) ^ (~e & g)) + K256[i] + w[i]) >>> 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) >>> 0;
      k = g; g = f; f = e; e = (d + t1) >>> 0; d = c; c = b; b = a; a = (t1 + t2) >>> 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
  }
  const out = new Uint8Array(32);
  const outView = new DataView(out.buffer);
  h.forEach((x, i) => outView.setUint32(4 * i, x));
  return out;
}

// the oldest onnxruntime(-web) that runs an int4 vocabulary table (GatherBlockQuantized of uint8-packed blocks: 1.20
// and 1.21 refuse uint8 data, 1.19 has no such op: scripts/ort_web_floor.py), as predict.py's INT4_RUNTIME
const INT4_RUNTIME = [1, 22];

/** What to add to a load error when the model has int4 tables (`model.int4_tables`) and this onnxruntime-web
 * (`version`) predates them; nothing for an odd version string (a local build): better silent than a wrong guess. */
function olderRuntime(manifest, version) {
  const [major, minor] = String(version ?? "").split(".").map((x) => (/^\d+$/.test(x) ? Number(x) : NaN));
  if (!manifest.model?.int4_tables || Number.isNaN(major) || Number.isNaN(minor)) return "";
  if (major > INT4_RUNTIME[0] || (major === INT4_RUNTIME[0] && minor >= INT4_RUNTIME[1])) return "";
  const need = INT4_RUNTIME.join(".");
  return `; its vocabulary table is int4, which needs onnxruntime-web >= ${need} (this is ${version}): ` +
    `npm install 'onnxruntime-web@>=${need}'`;
}

/** An error's first line (onnxruntime's messages run on, with a stack of its own). */
function firstLine(e) {
  return String(e?.message ?? e).split("\n").find((l) => l.trim())?.trim().slice(0, 300) ?? "";
}

function json(bytes, name) {
  try {
    // a byte-order mark is kept (and refused by JSON.parse), as predict.py's json refuses it: one verdict for both
    return JSON.parse(new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes));
  } catch (e) {
    throw new BundleError(`${name}: not valid JSON (${e.message})`);
  }
}

/** The bundle's manifest.json, checked for its format and for the fields this runner reads (as predict.py does). */
export async function readManifest(base) {
  const manifest = json(await readBytes(base, "manifest.json"), "manifest.json");
  if (manifest?.format !== FORMAT) throw new BundleError(`${base}: not a ${FORMAT} bundle`);
  const files = manifest.files && typeof manifest.files === "object" ? manifest.files : {};
  for (const key of ["model", "tokenizer"]) {
    const file = manifest[key]?.file;
    if (typeof file !== "string" || !Object.hasOwn(files, file)) {
      throw new BundleError(`manifest.json: ${key}.file must name a file listed under 'files', got ${JSON.stringify(file ?? null)}`);
    }
  }
  if (typeof manifest.labels_file !== "string" || !Object.hasOwn(files, manifest.labels_file)) {
    throw new BundleError(`manifest.json: labels_file must name a file listed under 'files' (the verified label names), got ${JSON.stringify(manifest.labels_file ?? null)}`);
  }
  // as predict.py refuses any entry outside the folder: names of letters, digits, "_", "-" and "." (not first) joined
  // by "/" only. The URL parser decodes "%2e%2e" to "..", drops leading spaces and control characters (" //host/x"
  // is another host) and reads "\\" as "/": a folder path in Node.js and a URL in a browser must name one file.
  for (const file of [manifest.model.file, manifest.tokenizer.file, manifest.labels_file]) {
    if (typeof file === "string" && !/^[A-Za-z0-9_-][A-Za-z0-9._-]*(\/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$/.test(file)) {
      throw new BundleError(`manifest.json: file entry ${JSON.stringify(file)} is not a plain path inside the bundle`);
    }
  }
  if (!Number.isInteger(manifest.max_length) || manifest.max_length < 1) {
    throw new BundleError(`manifest.json: max_length must be a positive integer, got ${JSON.stringify(manifest.max_length ?? null)}`);
  }
  const labels = manifest.task?.labels;
  if (typeof manifest.task !== "object" || manifest.task === null || (labels !== null && !(Array.isArray(labels)
      && labels.length >= 2 && labels.every((x) => typeof x === "string")))) {
    throw new BundleError(`manifest.json: task.labels must be a list of two or more label names (null: regression), got ${JSON.stringify(labels ?? null)}`);
  }
  const pair = manifest.task.text_pair;
  if (pair !== undefined && pair !== null && typeof pair !== "boolean") {  // "false" (text) was read as true
    throw new BundleError(`manifest.json: task.text_pair must be true or false, got ${JSON.stringify(pair)}`);
  }
  return manifest;
}

/** The named files' bytes, each checked against its sha256 in the manifest (unless `check` is off). */
export async function readVerified(base, manifest, names, check = true) {
  const files = {};
  for (const name of names) {
    const bytes = await readBytes(base, name);
    const expected = manifest.files?.[name];
    if (check && !expected) throw new BundleError(`${name}: not listed in manifest.json`);
    if (check && (await sha256(bytes)) !== expected) {
      throw new BundleError(`${name}: sha256 mismatch: the file changed after the bundle was built; refusing to load`);
    }
    files[name] = bytes;
  }
  return files;
}

/** A text over twice this many characters is tokenized from its first words only, when they hold more tokens than the
 * model reads (`Predictor.clipped`, as predict.py's `_clipped`): a 5 MB line took 500 MB to keep 64 tokens. */
const CLIP_CHARS = 4096;

/** Longest-first truncation of two token lists to `budget` tokens, as the Rust tokenizers library does it;
 * `fromLeft`: cut their starts, keeping their ends (the tokenizer's truncation direction "Left"). */
export function truncatePair(a, b, budget, fromLeft = false) {
  if (a.length + b.length <= budget) return [a, b];
  const swap = a.length > b.length;
  let n1 = Math.min(a.length, b.length);
  let n2 = n1 > budget ? n1 : Math.max(n1, budget - n1);
  if (n1 + n2 > budget) {
    n1 = Math.floor(budget / 2);
    n2 = n1 + (budget % 2);
  }
  if (swap) [n1, n2] = [n2, n1];
  const keep = (tokens, n) => (fromLeft ? tokens.slice(Math.max(tokens.length - n, 0)) : tokens.slice(0, n));
  return [keep(a, n1), keep(b, n2)];
}

/** The CJK ideographs the Rust BertNormalizer puts spaces around (its ranges, by code point: tokenizers.js tests a
 * UTF-16 unit at a time, so it never split those beyond U+FFFF). */
const CJK = /[\u{3400}-\u{4DBF}\u{4E00}-\u{9FFF}\u{F900}-\u{FAFF}\u{20000}-\u{2A6DF}\u{2A700}-\u{2B81F}\u{2B920}-\u{2CEAF}\u{2F800}-\u{2FA1F}]/gu;

/** Characters newer than the Rust library's Unicode tables (Quranic marks, Sogdian, Newa, Medefaidrin, ...) that it
 * takes for ordinary characters (nothing to strip, split on or drop: a word holding one is [UNK]) where JavaScript's
 * \p{Mn}, \p{P} and \p{Cf} match them; and the few it takes for punctuation or for an accent where JavaScript does
 * not. Found by encoding "a" + c + "b" for every code point U+0080..U+31FFF with both (MiniLM's BERT
 * tokenizer, Node.js 20; an engine with newer Unicode tables may differ on characters newer still); a BERT-style
 * (WordPiece) tokenizer reads each as a stand-in the Rust library treats alike. */
const RUST_ORDINARY = new RegExp(`[${[
  "\u{61D}\u{7FD}\u{890}-\u{891}\u{897}-\u{89F}\u{8CA}-\u{8E2}\u{9FD}-\u{9FE}\u{A76}\u{AFA}-\u{AFF}\u{B55}\u{C04}",
  "\u{C3C}\u{C77}\u{C84}\u{D00}\u{D3B}-\u{D3C}\u{D81}\u{EBA}\u{ECE}\u{180F}\u{1885}-\u{1886}\u{1ABF}-\u{1ADD}",
  "\u{1AE0}-\u{1AEB}\u{1B4E}-\u{1B4F}\u{1B7D}-\u{1B7F}\u{1DF6}-\u{1DFB}\u{2E43}-\u{2E4F}\u{2E52}-\u{2E5D}\u{A82C}",
  "\u{A8C5}\u{A8FF}\u{A9BD}\u{10D24}-\u{10D27}\u{10D69}-\u{10D6E}\u{10EAB}-\u{10EAD}\u{10ED0}\u{10EFA}-\u{10EFF}",
  "\u{10F46}-\u{10F50}\u{10F55}-\u{10F59}\u{10F82}-\u{10F89}\u{11070}\u{11073}-\u{11074}\u{110C2}\u{110CD}",
  "\u{111CF}\u{1123E}\u{11241}\u{1133B}\u{113BB}-\u{113C0}\u{113CE}\u{113D0}\u{113D2}\u{113D4}-\u{113D5}",
  "\u{113D7}-\u{113D8}\u{113E1}-\u{113E2}\u{11438}-\u{1143F}\u{11442}-\u{11444}\u{11446}\u{1144B}-\u{1144F}",
  "\u{1145A}-\u{1145B}\u{1145D}-\u{1145E}\u{11660}-\u{1166C}\u{116B9}\u{1182F}-\u{11837}\u{11839}-\u{1183B}",
  "\u{1193B}-\u{1193C}\u{1193E}\u{11943}-\u{11946}\u{119D4}-\u{119D7}\u{119DA}-\u{119DB}\u{119E0}\u{119E2}",
  "\u{11A01}-\u{11A0A}\u{11A33}-\u{11A38}\u{11A3B}-\u{11A47}\u{11A51}-\u{11A56}\u{11A59}-\u{11A5B}",
  "\u{11A8A}-\u{11A96}\u{11A98}-\u{11A9C}\u{11A9E}-\u{11AA2}\u{11B00}-\u{11B09}\u{11B60}\u{11B62}-\u{11B64}",
  "\u{11B66}\u{11BE1}\u{11C30}-\u{11C36}\u{11C38}-\u{11C3D}\u{11C3F}\u{11C41}-\u{11C45}\u{11C70}-\u{11C71}",
  "\u{11C92}-\u{11CA7}\u{11CAA}-\u{11CB0}\u{11CB2}-\u{11CB3}\u{11CB5}-\u{11CB6}\u{11D31}-\u{11D36}\u{11D3A}",
  "\u{11D3C}-\u{11D3D}\u{11D3F}-\u{11D45}\u{11D47}\u{11D90}-\u{11D91}\u{11D95}\u{11D97}\u{11EF3}-\u{11EF4}",
  "\u{11EF7}-\u{11EF8}\u{11F00}-\u{11F01}\u{11F36}-\u{11F3A}\u{11F40}\u{11F42}-\u{11F4F}\u{11F5A}\u{11FFF}",
  "\u{12FF1}-\u{12FF2}\u{13430}-\u{13440}\u{13447}-\u{13455}\u{1611E}-\u{16129}\u{1612D}-\u{1612F}",
  "\u{16D6D}-\u{16D6F}\u{16E97}-\u{16E9A}\u{16F4F}\u{16FE2}\u{16FE4}\u{1CF00}-\u{1CF2D}\u{1CF30}-\u{1CF46}",
  "\u{1E000}-\u{1E006}\u{1E008}-\u{1E018}\u{1E01B}-\u{1E021}\u{1E023}-\u{1E024}\u{1E026}-\u{1E02A}\u{1E08F}",
  "\u{1E130}-\u{1E136}\u{1E2AE}\u{1E2EC}-\u{1E2EF}\u{1E4EC}-\u{1E4EF}\u{1E5EE}-\u{1E5EF}\u{1E5FF}\u{1E6E3}",
  "\u{1E6E6}\u{1E6EE}-\u{1E6EF}\u{1E6F5}\u{1E944}-\u{1E94A}\u{1E95E}-\u{1E95F}",
].join("")}]`, "gu");
const RUST_PUNCTUATION = /[\u{166D}\u{111C9}]/gu;
const RUST_ACCENTS = /[\p{Mn}\u{1734}\u{1171E}]/gu;
/** What a StripAccents normalizer (a Sequence's: NFD, Lowercase, StripAccents) strips: the Rust library's combining
 * marks, its own table (not BertNormalizer's): JavaScript's \p{M} less the newer marks that table lacks, plus two it
 * still counts (found as RUST_ORDINARY was: every code point U+0080..U+10FFFF, `StripAccents().normalize_str(c)`). */
const RUST_MARKS = /[\p{M}\u{1CF2}-\u{1CF3}]/u;
const RUST_MARKS_KEPT = new RegExp(`[${[
  "\u{7FD}\u{897}-\u{89F}\u{8CA}-\u{8D3}\u{9FE}\u{AFA}-\u{AFF}\u{B55}\u{C04}\u{C3C}\u{CF3}\u{D00}",
  "\u{D3B}-\u{D3C}\u{D81}\u{EBA}\u{ECE}\u{1715}\u{180F}\u{1ABF}-\u{1ADD}\u{1AE0}-\u{1AEB}\u{1CF7}",
  "\u{1DF6}-\u{1DFA}\u{A82C}\u{A8FF}\u{10D24}-\u{10D27}\u{10D69}-\u{10D6D}\u{10EAB}-\u{10EAC}",
  "\u{10EFA}-\u{10EFF}\u{10F46}-\u{10F50}\u{10F82}-\u{10F85}\u{11070}\u{11073}-\u{11074}\u{110C2}",
  "\u{11145}-\u{11146}\u{111C9}\u{111CE}-\u{111CF}\u{11241}\u{1133B}\u{113B8}-\u{113C0}\u{113C2}\u{113C5}",
  "\u{113C7}-\u{113CA}\u{113CC}-\u{113D0}\u{113D2}\u{113E1}-\u{113E2}\u{1145E}\u{1182C}-\u{1183A}",
  "\u{11930}-\u{11935}\u{11937}-\u{11938}\u{1193B}-\u{1193E}\u{11940}\u{11942}-\u{11943}\u{119D1}-\u{119D7}",
  "\u{119DA}-\u{119E0}\u{119E4}\u{11A01}-\u{11A0A}\u{11A33}-\u{11A39}\u{11A3B}-\u{11A3E}\u{11A47}",
  "\u{11A51}-\u{11A5B}\u{11A8A}-\u{11A99}\u{11B60}-\u{11B67}\u{11D31}-\u{11D36}\u{11D3A}\u{11D3C}-\u{11D3D}",
  "\u{11D3F}-\u{11D45}\u{11D47}\u{11D8A}-\u{11D8E}\u{11D90}-\u{11D91}\u{11D93}-\u{11D97}\u{11EF3}-\u{11EF6}",
  "\u{11F00}-\u{11F01}\u{11F03}\u{11F34}-\u{11F3A}\u{11F3E}-\u{11F42}\u{11F5A}\u{13440}\u{13447}-\u{13455}",
  "\u{1611E}-\u{1612F}\u{16F4F}\u{16F7F}-\u{16F87}\u{16FE4}\u{16FF0}-\u{16FF1}\u{1CF00}-\u{1CF2D}",
  "\u{1CF30}-\u{1CF46}\u{1E08F}\u{1E130}-\u{1E136}\u{1E2AE}\u{1E2EC}-\u{1E2EF}\u{1E4EC}-\u{1E4EF}",
  "\u{1E5EE}-\u{1E5EF}\u{1E6E3}\u{1E6E6}\u{1E6EE}-\u{1E6EF}\u{1E6F5}",
].join("")}]`, "u");
const EVERY_RUST_MARK = new RegExp(RUST_MARKS.source, "gu");
const rustStrips = (c) => RUST_MARKS.test(c) && !RUST_MARKS_KEPT.test(c);

/** A character of ``candidates`` neither the vocabulary nor its continuation pieces hold. */
function absent(vocab, prefix, candidates) {
  return candidates.find((c) => !vocab.has(c) && !vocab.has(prefix + c));
}

/** A tokenizer's normalizers, a Sequence's in order. */
function normalizers(n) {
  return n instanceof SequenceNormalizer ? n.normalizers.flatMap(normalizers) : n ? [n] : [];
}

export class Predictor {
  /** Load and verify a bundle: a folder path (Node.js) or a URL (Node.js and browsers). */
  static async load(base, { check = true, threads } = {}) {
    const manifest = await readManifest(base);
    const { model: { file: modelFile }, tokenizer: { file: tokenizerFile }, labels_file: labelsFile } = manifest;
    const files = await readVerified(base, manifest, [modelFile, tokenizerFile, labelsFile], check);
    const stored = json(files[labelsFile], labelsFile)?.labels;  // the names shown must be the verified file's
    if (JSON.stringify(stored) !== JSON.stringify(manifest.task.labels)) {
      throw new BundleError(`manifest.json: task.labels ${JSON.stringify(manifest.task.labels)} differ from ${labelsFile}'s ${JSON.stringify(stored)}; refusing to load`);
    }
    const tokenizerJson = json(files[tokenizerFile], tokenizerFile);
    const built = tokenizerJson?.truncation?.max_length;  // the verified file's, as the bundle was built
    if (built !== manifest.max_length) {
      throw new BundleError(`manifest.json: max_length ${manifest.max_length} differs from the ${built ?? "no"} tokens ${tokenizerFile} truncates to; refusing to load`);
    }
    if (threads) ort.env.wasm.numThreads = threads;
    let session;
    try {
      session = await ort.InferenceSession.create(files[modelFile]);
    } catch (e) {
      throw new BundleError(`${modelFile}: onnxruntime cannot load it (${firstLine(e)})` +
        olderRuntime(manifest, ort.env?.versions?.web ?? ort.env?.versions?.common));
    }
    return new Predictor(manifest, tokenizerJson, session, tokenizerFile);
  }

  constructor(manifest, tokenizerJson, session, tokenizerFile = "tokenizer.json") {
    this.manifest = manifest;
    this.labels = manifest.task.labels;
    this.pair = !!manifest.task.text_pair;
    this.maxLength = Number(manifest.max_length);
    // the side the bundle's tokenizer.json truncates on (built from the tokenizer's truncation_side), as predict.py
    this.fromLeft = String(tokenizerJson.truncation?.direction ?? "").toLowerCase() === "left";
    try {
      this.tokenizer = new Tokenizer(tokenizerJson, {});
    } catch (e) {
      throw new BundleError(`${tokenizerFile}: not a tokenizer.json (${firstLine(e)})`);
    }
    for (const n of normalizers(this.tokenizer.normalizer)) {  // normalize as the Rust library does
      if (n instanceof BertNormalizer) {
        n.tokenize_chinese_chars = (text) => text.replace(CJK, " $& ");
        n.strip_accents = (text) => text.normalize("NFD").replace(RUST_ACCENTS, "");  // the marks Rust strips
      }
      if (n instanceof StripAccentsNormalizer) {  // tokenizers.js strips every \p{M}: newer marks Rust keeps too
        n.normalize = (text) => text.replace(EVERY_RUST_MARK, (c) => (rustStrips(c) ? "" : c));
        this.stripsMarks = true;
      }
      // a character at a time: Σ is σ, never toLowerCase()'s word-final ς (its only context-dependent mapping)
      if (n instanceof LowercaseNormalizer || (n instanceof BertNormalizer && n.config.lowercase)) {
        const normalize = n.normalize.bind(n);
        n.normalize = (text) => normalize(text.replaceAll("\u03A3", "\u03C3"));
      }
    }
    // characters newer than the Rust library's Unicode tables, read as it reads them (`RUST_ORDINARY`): a WordPiece
    // model gets a letter and a punctuation mark its vocabulary lacks in their place
    const model = this.tokenizer.model;
    this.bertNormalizer = normalizers(this.tokenizer.normalizer)  // clean_text is what turns U+0085 and drops U+FEFF
      .some((n) => n instanceof BertNormalizer && n.config.clean_text !== false);
    this.bertPreTokenizer = this.tokenizer.pre_tokenizer instanceof BertPreTokenizer;
    if (model instanceof WordPieceModel) {
      const prefix = model.config?.continuing_subword_prefix ?? "##";
      this.standIn = { letter: absent(model.tokens_to_ids, prefix, ["\uA4D0", "\uA4D1", "\u1681", "\u1682"]),
                       mark: absent(model.tokens_to_ids, prefix, ["\uA4FE", "\uA4FF", "\u166E"]) };
    }
    // RoBERTa-style pairs (MPNet): the Rust library gives every token type id 0, tokenizers.js 1s for the pair
    this.singleSegment = tokenizerJson.post_processor?.type === "RobertaProcessing";
    this.session = session;
    const specials = (pair) => this.tokenizer.post_processor
      ? this.tokenizer.post_processor([], pair ? [] : null, true).tokens.length : 0;
    this.special = { single: specials(false), pair: specials(true) };
  }

  /** ``text`` with the characters the Rust library's Unicode tables read otherwise than JavaScript's in stand-ins. */
  asRust(text) {
    const { letter, mark } = this.standIn ?? {};
    // (a StripAccents normalizer's Rust table knows some of those as marks: they stay, for it to strip)
    if (letter) text = text.replace(RUST_ORDINARY, (c) => (this.stripsMarks && rustStrips(c) ? c : letter));
    if (mark) text = text.replace(RUST_PUNCTUATION, mark);
    // the BERT pre-tokenizer splits on Rust's whitespace (U+0085 too, U+FEFF not: JavaScript's \s the other way
    // round), where no BertNormalizer (of clean_text) has turned U+0085 into a space and dropped U+FEFF before it
    if (this.bertPreTokenizer && !this.bertNormalizer) {
      text = text.replaceAll("\u0085", " ");
      if (letter) text = text.replaceAll("\uFEFF", letter);
    }
    return text;
  }

  /** input_ids, attention_mask and token_type_ids of one text (and its pair), truncated to max_length; `refuseEmpty`:
   * an EmptyText error for a text (or pair) in which the tokenizer keeps nothing. */
  encode(text, pair = null, refuseEmpty = false) {
    const tok = this.tokenizer;
    const whole = (x) => tok.tokenize(x, { add_special_tokens: false });
    const budget = this.maxLength - (pair === null ? this.special.single : this.special.pair);
    const s = this.asRust(text), t = pair === null ? null : this.asRust(pair);
    let a, b = [];
    if (t === null) {
      a = this.clipped(s, budget) ?? whole(s);
    } else {  // one long text of a pair is cut when the other has fewer tokens than its cut, as predict.py's `_clip`
      const ca = this.clipped(s, budget), cb = this.clipped(t, budget);
      if ((ca === null) === (cb === null)) {  // both long (which is the longer is not known) or neither
        [a, b] = [whole(s), whole(t)];
      } else if (ca !== null) {
        b = whole(t);
        a = b.length < ca.length ? ca : whole(s);
      } else {
        a = whole(s);
        b = a.length < cb.length ? cb : whole(t);
      }
    }
    if (refuseEmpty && a.length === 0) throw new EmptyText(`an empty text (${EMPTY})`);  // "\u200b", as predict.py
    if (refuseEmpty && pair !== null && b.length === 0) throw new EmptyText(`an empty text pair (${EMPTY})`);
    [a, b] = truncatePair(a, b, Math.max(budget, 0), this.fromLeft);
    const out = tok.post_processor ? tok.post_processor(a, pair === null ? null : b, true) : { tokens: [...a, ...b] };
    // an added token is known by its normalized text (tokenizers.js gives "covid-19" for a normalized "COVID-19")
    const ids = out.tokens.map((t) => tok.added_tokens_map.get(t)?.id ?? tok.token_to_id(t) ?? tok.model.unk_token_id);
    const types = !this.singleSegment && out.token_type_ids ? out.token_type_ids : ids.map(() => 0);
    return { input_ids: ids, attention_mask: ids.map(() => 1), token_type_ids: types };
  }

  /** The tokens of the first whole words of a long `text` (over twice CLIP_CHARS characters) when they are more than
   * `need`, else null: cut before a space that ends a word, they tokenize as in the whole text (predict.py's
   * `_clipped`). Null when the tokenizer truncates on the left. */
  clipped(text, need) {
    if (this.fromLeft) return null;
    for (let window = CLIP_CHARS; text.length > 2 * window; window *= 4) {
      const part = text.slice(0, window);
      let cut = 0;
      for (const m of part.matchAll(/\S /gu)) cut = m.index + m[0].length - 1;
      const tokens = cut ? this.tokenizer.tokenize(part.slice(0, cut), { add_special_tokens: false }) : [];
      if (tokens.length > need) return tokens;
    }
    return null;
  }

  /** The model's inputs for one text (and its pair), and how many tokens they hold. */
  feeds(text, pair = null) {
    if (typeof text !== "string" || (pair !== null && typeof pair !== "string")) {
      throw new BundleError(`predict(text, pair = null): texts must be strings, got ${typeof text}` +
                            (pair === null ? "" : ` and ${typeof pair}`));
    }
    if (this.pair && pair === null) throw new BundleError("this model reads text pairs: give a second text");
    if (!this.pair && pair !== null) {
      throw new BundleError("this model reads single texts: give one text (--file PATH classifies several, one a line)");
    }
    const enc = this.encode(text, pair, true);
    const feeds = {};
    for (const name of this.session.inputNames) {
      if (!(name in enc)) throw new BundleError(`model input '${name}' is not one the tokenizer provides`);
      feeds[name] = new ort.Tensor("int64", BigInt64Array.from(enc[name], BigInt), [1, enc[name].length]);
    }
    return [feeds, enc.input_ids.length];
  }

  async forward(feeds, tokens) {
    try {
      return await this.session.run(feeds);
    } catch (e) {
      throw new BundleError(`${this.manifest.model.file}: onnxruntime cannot run it on ${tokens} tokens (${firstLine(e)})`);
    }
  }

  /** This machine's latency per text, one at a time, as predict.py's timings(): one untimed pass over ``items``
   * ([text, pair or null] each), then ``rounds`` timed passes; p50/p90 ms of the run alone and with tokenizing. */
  async timings(items, rounds = 3, threads = null) {
    if (items.length === 0) throw new BundleError("no text to time");
    if (!Number.isInteger(rounds) || rounds < 1) {
      throw new BundleError(`rounds must be an integer of at least 1, got ${rounds}`);
    }
    for (const [text, pair] of items) this.logitsOf(await this.forward(...this.feeds(text, pair)));  // warm-up
    const model = [];
    const whole = [];
    for (let r = 0; r < rounds; r++) {
      for (const [text, pair] of items) {
        const start = performance.now();
        const feed = this.feeds(text, pair);
        const ran = performance.now();
        await this.forward(...feed);
        const end = performance.now();
        model.push(end - ran);
        whole.push(end - start);
      }
    }
    const ms = {};
    for (const [suffix, times] of [["", model], ["_with_tokenizer", whole]]) {
      for (const q of [50, 90]) ms[`p${q}_ms${suffix}`] = Math.round(percentile(times, q) * 1e4) / 1e4;
    }
    return { texts: items.length, rounds, runs: model.length, threads, ...ms };
  }

  /** A run's scores for its one text: one a label name (one value for regression), as predict.py checks them. */
  logitsOf(outputs) {
    const logits = Array.from(outputs[this.session.outputNames[0]].data);
    if (logits.length !== (this.labels ?? [0]).length) {
      throw new BundleError(`manifest.json: the model gives ${logits.length} scores but the manifest names ${(this.labels ?? [0]).length} label(s)`);
    }
    return logits;
  }

  /** One text (and its pair): {label, score, scores} ({value} for regression). */
  async predict(text, pair = null) {
    const logits = this.logitsOf(await this.forward(...this.feeds(text, pair)));
    if (this.labels === null || this.labels === undefined) return { value: logits[0] };
    const top = Math.max(...logits);
    const exp = logits.map((z) => Math.exp(z - top));
    const sum = exp.reduce((s, x) => s + x, 0);
    const probs = exp.map((x) => x / sum);
    const best = probs.indexOf(Math.max(...probs));
    return { label: this.labels[best], score: probs[best],
             scores: Object.fromEntries(this.labels.map((name, i) => [name, probs[i]])) };
  }
}

const EMPTY_PATH = "--file: an empty path (give a file, or - for standard input)";

/** [line number, line] of a file (- : standard input) as it is read, as predict.py reads it: lines end at "\n"
 * ("\r\n" too), byte-order marks at a line's start are dropped, bytes that are not UTF-8 read as U+FFFD. */
async function* readLines(path) {
  if (path === "") throw new BundleError(EMPTY_PATH);
  const { createReadStream } = await import("node:fs");
  const stream = path === "-" ? process.stdin : createReadStream(path);
  stream.setEncoding("utf8");
  let rest = "";
  let n = 0;
  // byte-order marks at a line's start dropped on every line (files joined with cat), as predict.py does
  const line = (text) => [++n, text.replace(/^\uFEFF+/, "").replace(/\r$/, "")];
  const chunks = stream[Symbol.asyncIterator]();
  for (;;) {
    let next;
    try {
      next = await chunks.next();
    } catch (e) {
      throw new BundleError(`${path}: cannot read (${e.code ?? e.message})`);
    }
    if (next.done) break;
    rest += next.value;
    for (let i = rest.indexOf("\n"); i >= 0; i = rest.indexOf("\n")) {
      yield line(rest.slice(0, i));
      rest = rest.slice(i + 1);
    }
  }
  if (rest) yield line(rest);
}

/** [line number, text, pair or null] of each non-blank line of a --file, its shape checked as predict.py does. */
async function* fileTexts(path, pair) {
  const name = path === "-" ? "standard input" : path;
  for await (const [n, line] of readLines(path)) {
    if (blank(line)) continue;
    const fields = line.split("\t");
    if (fields.length !== (pair ? 2 : 1)) {
      throw new BundleError(`${name} line ${n}: ${pair ? "this model reads text pairs: give " +
        "text<TAB>text pair" : "this model reads single texts: the line holds a tab"}`);
    }
    if (pair && fields.some(blank)) {  // "text<TAB>" or "<TAB>pair": as the CLI does
      throw new BundleError(`${name} line ${n}: an empty ${blank(fields[0]) ? "text" : "text pair"}: nothing to classify`);
    }
    yield [n, fields[0], pair ? fields[1] : null];
  }
}

/** Whether a text is empty or all whitespace as predict.py's str.strip() sees it (not String.trim's: that strips a
 * byte-order mark, but not U+001C-U+001F or U+0085): both runners refuse and skip the same texts and lines. */
function blank(text) {
  return /^[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/.test(text);
}

/** numpy's default (linear) percentile, as predict.py's. */
function percentile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q / 100) * (sorted.length - 1);
  const low = Math.floor(at);
  const high = Math.min(low + 1, sorted.length - 1);
  return sorted[low] + (sorted[high] - sorted[low]) * (at - low);
}

/** The manifest's latency at ``threads``, as predict.py's built_latency (null: none recorded). */
export function builtLatency(manifest, threads) {
  const latency = manifest.latency;
  if (latency === null || typeof latency !== "object" || Array.isArray(latency)) return null;
  const byThreads = latency.by_threads && typeof latency.by_threads === "object" && !Array.isArray(latency.by_threads)
    ? latency.by_threads : {};  // as predict.py: a list is no by_threads
  let [entry, count] = [latency, latency.threads];
  const own = threads === null ? undefined : byThreads[String(threads)];
  if (own && typeof own === "object") [entry, count] = [own, threads];
  const protocol = latency.protocol && typeof latency.protocol === "object" ? latency.protocol : {};
  const number = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const text = (v) => (typeof v === "string" ? v : null);
  return { p50_ms: number(entry.p50_ms), p90_ms: number(entry.p90_ms), threads: number(count),
           cpu: text(protocol.cpu), spin: text(protocol.spin) };
}

/** This process's peak resident memory in MiB (Node's maxRSS, in KiB), as predict.py's peak_rss_mb; null in a
 * browser, which does not say. */
export function peakRssMb() {
  if (typeof process === "undefined" || typeof process.resourceUsage !== "function") return null;
  return Math.round((process.resourceUsage().maxRSS / 1024) * 10) / 10;
}

/** Two lines, as predict.py's format_timings: this machine's timings, then the manifest's. */
export function formatTimings(result, built) {
  const count = (n, what) => `${n} ${what}${n !== 1 ? "s" : ""}`;
  const threads = (n) => (n === null ? "onnxruntime-web's default threads" : count(n, "thread"));
  const ms = (v) => (v === null ? "?" : `${v.toFixed(3)} ms`);
  const here = `here: p50 ${ms(result.p50_ms)}, p90 ${ms(result.p90_ms)} per text, onnxruntime-web's run alone ` +
    `(tokenizing included: p50 ${ms(result.p50_ms_with_tokenizer)}, p90 ${ms(result.p90_ms_with_tokenizer)}); ` +
    `${count(result.runs, "run")} (${count(result.texts, "text")} x ${count(result.rounds, "round")}) at ` +
    `${threads(result.threads)}, WebAssembly` +
    (result.peak_rss_mb == null ? "" : `; this process's peak resident memory ${result.peak_rss_mb.toFixed(0)} MiB`);
  if (built === null || built.p50_ms === null) return `${here}\nbuilt: the manifest records no latency`;
  return `${here}\nbuilt: p50 ${ms(built.p50_ms)}, p90 ${ms(built.p90_ms)}` +
    (built.threads !== null ? ` at ${threads(built.threads)}` : "") + (built.cpu ? ` on ${built.cpu}` : "") +
    (built.spin ? `, ${built.spin}` : "") + " (the manifest; native onnxruntime)";
}

function format(result, asJson) {
  if (asJson) return JSON.stringify(result);
  return "label" in result ? `${result.label}\t${result.score.toFixed(4)}` : result.value.toFixed(4);
}

const USAGE = "usage: node predict.mjs [--json] [--threads N] [--bench ROUNDS] [--bundle DIR] (TEXT [TEXT_PAIR] | --file PATH)";

async function main(argv) {
  const { fileURLToPath } = await import("node:url");
  const { dirname } = await import("node:path");
  const args = { json: false, file: null, bundle: dirname(fileURLToPath(import.meta.url)), texts: [] };
  const valued = { "--file": "file", "--bundle": "bundle", "--threads": "threads", "--bench": "bench" };
  // as predict.py's argparse reads them: options anywhere, --opt=value, "--" before texts that start with "-"
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = /^--[^=]+=/.test(argv[i]) ? [argv[i].slice(0, argv[i].indexOf("=")),
      argv[i].slice(argv[i].indexOf("=") + 1)] : [argv[i], undefined];
    if (flag === "--") {
      args.texts.push(...argv.slice(i + 1));
      break;
    } else if (flag === "--json" && inline === undefined) args.json = true;
    else if (flag in valued) {
      if (inline === undefined && i + 1 >= argv.length) {
        console.error(`error: ${flag} takes a value\n${USAGE}`);
        return 2;
      }
      args[valued[flag]] = inline ?? argv[++i];
    } else if ((flag === "-h" || flag === "--help") && inline === undefined) {
      console.log(USAGE);
      return 0;
    } else if (argv[i].length > 1 && argv[i].startsWith("-") && (/^-h/.test(argv[i])
        || !/^-\d+$|^-\d*\.\d+$/.test(argv[i]) && !argv[i].includes(" "))) {
      // argparse's rule (predict.py): "- loved it" and "-.5" are texts, "-1e3" is not, nor "-h loved it" (-h with
      // an argument); no abbreviations (predict.py: allow_abbrev off)
      console.error(`error: unknown option ${argv[i]}\n${USAGE}`);
      return 2;
    } else args.texts.push(argv[i]);
  }
  if (args.threads !== undefined && !/^[1-9][0-9]*$/.test(args.threads)) {
    console.error(`error: --threads: expected an integer >= 1, got ${JSON.stringify(args.threads)}`);
    return 2;
  }
  if (args.threads !== undefined) args.threads = Number(args.threads);
  if (args.bench !== undefined && !(/^[1-9][0-9]*$/.test(args.bench) && Number(args.bench) <= 2 ** 31 - 1)) {
    console.error(`error: --bench: expected an integer from 1 to ${2 ** 31 - 1}, got ${JSON.stringify(args.bench)}`);
    return 2;
  }
  if (args.threads > 1024) {  // predict.py's MAX_THREADS: a typo's 100000 threads hung the machine
    console.error(`error: --threads: must be at most 1024, got ${args.threads}`);
    return 2;
  }
  const { availableParallelism } = await import("node:os");
  if (args.threads > availableParallelism()) {
    console.error(`warning: --threads ${args.threads} is more than this machine's ${availableParallelism()} cores: onnxruntime will run slower, not faster`);
  }
  if ((args.texts.length === 0) === (args.file === null) || args.texts.length > 2) {
    console.error(args.texts.length > 2 ? "error: give a TEXT and at most its pair (--file PATH classifies several)"
      : args.file !== null ? "error: give a TEXT (and its pair) or --file PATH, not both"
        : "error: give a TEXT (and its pair) to classify, or --file PATH");
    return 2;
  }
  if (args.texts.some(blank)) {
    console.error(`error: an empty ${blank(args.texts[0]) ? "text" : "text pair"}: nothing to classify`);
    return 2;
  }
  process.stdout.on("error", (e) => {  // the reader went away (`... | head`): stop quietly; a full disk: one line
    if (e.code === "EPIPE") process.exit(0);
    // as predict.py says it: "ENOSPC: no space left on device, write" -> "No space left on device"
    const text = /^[A-Z]+: ([^,]+)/.exec(String(e.message))?.[1] ?? e.code ?? String(e.message);
    console.error(`error: standard output: ${text.charAt(0).toUpperCase()}${text.slice(1)}`);
    process.exit(1);
  });
  try {
    const model = await Predictor.load(args.bundle, { threads: args.threads });
    const name = args.file === "-" ? "standard input" : args.file;
    const inputs = args.file === null ? [[null, args.texts[0], args.texts[1] ?? null]] : fileTexts(args.file, model.pair);
    const items = [];  // --bench: the texts to time, each tokenized first (the checks predict.py makes)
    let count = 0;
    for await (const [n, text, pair] of inputs) {
      count += 1;
      let result;
      try {
        result = args.bench !== undefined ? model.feeds(text, pair) : await model.predict(text, pair);
      } catch (e) {
        if (n !== null && e instanceof EmptyText) throw new EmptyText(`${name} line ${n}: ${e.message}`);
        throw e;
      }
      if (args.bench !== undefined) items.push([text, pair]);
      else console.log(format(args.json && n !== null ? { line: n, ...result } : result, args.json));
    }
    if (count === 0 && args.bench === undefined) {  // an empty file, or blank lines only: as predict.py
      throw new BundleError(`${name}: no text to classify (empty, or blank lines only)`);
    }
    if (args.bench !== undefined) {
      if (items.length === 0) throw new BundleError(`${name}: no line to time`);
      const result = { ...(await model.timings(items, Number(args.bench), args.threads ?? null)),
                       peak_rss_mb: peakRssMb() };
      const built = builtLatency(model.manifest, args.threads ?? null);
      console.log(args.json ? JSON.stringify({ ...result, manifest: built }) : formatTimings(result, built));
    }
    return 0;
  } catch (e) {
    if (!(e instanceof BundleError)) throw e;
    console.error(`error: ${e.message}`);
    return 2;
  }
}

if (await runAsScript()) {
  process.exitCode = await main(process.argv.slice(2));
}
