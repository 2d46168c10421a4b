// Check one Lockstep message's signature by one party, as docs/PROTOCOL.md §4 and §4a
// describe it, with nothing but Node.js (18 or later) and its built-in crypto: a
// message signed alone, or an item of a batch carrying its share of the batch signature.
//
//   node verify-signature.mjs PUBLIC_KEY.pem PARTY < message.json
//
// prints "verified" and exits 0, or says why not and exits 1. The message is read as
// the canonical text it travels as; the signed body is that text with its top-level
// "sigs" member taken out, so no number is ever re-encoded (JSON numbers beyond 2^53
// would not survive a round trip through JavaScript).
import { createHash, createPublicKey, verify } from "node:crypto";
import { readFileSync } from "node:fs";

const MESSAGE_DOMAIN = Buffer.from("lockstep/1\0", "latin1");
const BATCH_DOMAIN = Buffer.from("lockstep/batch/1\0", "latin1");
const sha256 = (...parts) => createHash("sha256").update(Buffer.concat(parts)).digest();

// Where the JSON value that starts at `at` ends (the index just after it).
function valueEnd(text, at) {
  if (text[at] === '"') {
    for (let i = at + 1; i < text.length; i++) {
      if (text[i] === "\\") i++;
      else if (text[i] === '"') return i + 1;
    }
  } else if (text[at] === "{" || text[at] === "[") {
    let depth = 0;
    let inString = false;
    for (let i = at; i < text.length; i++) {
      const c = text[i];
      if (inString) {
        if (c === "\\") i++;
        else if (c === '"') inString = false;
      } else if (c === '"') inString = true;
      else if (c === "{" || c === "[") depth++;
      else if ((c === "}" || c === "]") && --depth === 0) return i + 1;
    }
  } else {
    let i = at;
    while (i < text.length && !",}]".includes(text[i])) i++;
    return i;
  }
  throw new Error("truncated JSON");
}

// The top-level object's text without its "sigs" member, and the sigs, parsed.
function splitSigs(text) {
  if (text[0] !== "{") throw new Error("not a JSON object");
  let i = 1;
  while (text[i] === '"') {
    const keyEnd = valueEnd(text, i);
    const end = valueEnd(text, keyEnd + 1); // the value starts after the colon
    if (JSON.parse(text.slice(i, keyEnd)) === "sigs") {
      let before = text.slice(0, i);
      let after = text.slice(end);
      if (before.endsWith(",")) before = before.slice(0, -1);
      else if (after.startsWith(",")) after = after.slice(1);
      return { body: before + after, sigs: JSON.parse(text.slice(keyEnd + 1, end)) };
    }
    i = text[end] === "," ? end + 1 : end;
  }
  throw new Error("the message carries no sigs");
}

// RFC 9162 §2.1.3.2: the root an inclusion path leads to from a leaf, or null.
function rootFromPath(leaf, index, count, path) {
  if (!(index >= 0 && index < count) || path.length > 12) return null;
  let fn = index;
  let sn = count - 1;
  let r = leaf;
  const one = Buffer.from([1]);
  for (const hex of path) {
    const p = Buffer.from(hex, "hex");
    if (sn === 0) return null;
    if (fn % 2 === 1 || fn === sn) {
      r = sha256(one, p, r);
      while (fn % 2 === 0 && fn !== 0) {
        fn = Math.floor(fn / 2);
        sn = Math.floor(sn / 2);
      }
    } else {
      r = sha256(one, r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 ? r : null;
}

const [keyFile, party] = process.argv.slice(2);
const key = createPublicKey(readFileSync(keyFile));
const text = readFileSync(0, "utf8").trim();
const { body, sigs } = splitSigs(text);
const sig = sigs[party];
const signedBytes = Buffer.concat([MESSAGE_DOMAIN, Buffer.from(body, "utf8")]);
let ok = false;
if (typeof sig === "string") {
  ok = verify("sha256", signedBytes, key, Buffer.from(sig, "hex"));
} else if (sig && typeof sig === "object") {
  const leaf = sha256(Buffer.from([0]), sha256(signedBytes));
  const root = rootFromPath(leaf, sig.index, sig.count, sig.path);
  ok = root !== null && verify("sha256", Buffer.concat([BATCH_DOMAIN, root]), key, Buffer.from(sig.sig, "hex"));
} else {
  console.log(`no signature of ${party}`);
  process.exit(1);
}
console.log(ok ? "verified" : "does not verify");
process.exit(ok ? 0 : 1);
