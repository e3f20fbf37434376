// `{{name}}`: upper-cases the payload and appends a mark (config `mark`,
// default "!"); keeps the key and adds a `handled-by` header. An empty
// payload is `fatal`: it will never succeed, so the policy dead-letters it.
const enc = new TextEncoder();
let mark = enc.encode("!");

export function init(config) {
  for (const [k, v] of config) {
    if (k === "mark") mark = enc.encode(v);
  }
}

export function handle(msg) {
  if (msg.payload.length === 0) throw { tag: "fatal", val: "empty payload" };
  const out = new Uint8Array(msg.payload.length + mark.length);
  for (let i = 0; i < msg.payload.length; i++) {
    const c = msg.payload[i];
    out[i] = c >= 0x61 && c <= 0x7a ? c - 0x20 : c;
  }
  out.set(mark, msg.payload.length);
  return [{ key: msg.key, payload: out,
            headers: [{ key: "handled-by", value: enc.encode("{{name}}") }] }];
}
