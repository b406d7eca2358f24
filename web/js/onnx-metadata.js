// Read an ONNX file's metadata_props without an ONNX library: a minimal protobuf reader.
//
// ModelProto (onnx/onnx.proto3) keeps `repeated StringStringEntryProto metadata_props = 14;` and
// StringStringEntryProto is `{string key = 1; string value = 2;}`. Only ModelProto's top level is walked:
// every other field (the graph with its weights, field 7, is most of the file) is skipped by its length, so
// reading the metadata of a 100 MB model costs a handful of steps. Defensive like fan_edge.runtime.contract:
// a truncated or malformed file is a one-line Error, never a hang or a huge allocation.

export const METADATA_KEY = "fan_edge.contract"; // fan_edge.runtime.contract.METADATA_KEY
const MODEL_METADATA_PROPS = 14;
const MAX_ENTRIES = 10000;

class Reader {
  constructor(bytes, start = 0, end = bytes.length) {
    this.bytes = bytes;
    this.pos = start;
    this.end = end;
  }

  // A varint as a Number; exact up to 2**53, which bounds every length and tag that fits in memory.
  varint() {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new Error("ONNX file is truncated (inside a varint)");
      const b = this.bytes[this.pos++];
      value += (b & 0x7f) * scale;
      if ((b & 0x80) === 0) return value;
      scale *= 128;
    }
    throw new Error("ONNX file is malformed (a varint longer than 10 bytes)");
  }

  // [start, end) of a length-delimited field's payload; moves past it.
  span() {
    const length = this.varint();
    const start = this.pos;
    if (length > this.end - start) throw new Error("ONNX file is truncated (a field runs past its end)");
    this.pos = start + length;
    return [start, this.pos];
  }

  skip(wireType) {
    switch (wireType) {
      case 0: this.varint(); break;
      case 1: this.advance(8); break;
      case 2: this.span(); break;
      case 5: this.advance(4); break;
      default: throw new Error(`ONNX file is malformed (protobuf wire type ${wireType})`);
    }
  }

  advance(n) {
    if (n > this.end - this.pos) throw new Error("ONNX file is truncated");
    this.pos += n;
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

function decodeText(bytes, start, end) {
  try {
    return utf8.decode(bytes.subarray(start, end));
  } catch {
    throw new Error("ONNX metadata_props holds text that is not UTF-8");
  }
}

// {key: value} of an ONNX ModelProto's metadata_props (the last entry wins for a repeated key, as onnx's
// Python API reads them into a dict). `buffer`: ArrayBuffer or Uint8Array of the whole .onnx file.
export function readOnnxMetadata(buffer) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  const top = new Reader(bytes);
  const props = {};
  let entries = 0;
  while (top.pos < top.end) {
    const tag = top.varint();
    const field = Math.floor(tag / 8);
    const wireType = tag % 8;
    if (field === 0) throw new Error("ONNX file is malformed (protobuf field number 0); is it an .onnx file?");
    if (field !== MODEL_METADATA_PROPS || wireType !== 2) {
      top.skip(wireType);
      continue;
    }
    if (++entries > MAX_ENTRIES) throw new Error(`ONNX file has more than ${MAX_ENTRIES} metadata_props entries`);
    const [start, end] = top.span();
    const entry = new Reader(bytes, start, end);
    let key = "";
    let value = "";
    while (entry.pos < entry.end) {
      const t = entry.varint();
      const f = Math.floor(t / 8);
      const w = t % 8;
      if ((f === 1 || f === 2) && w === 2) {
        const [s, e] = entry.span();
        if (f === 1) key = decodeText(bytes, s, e);
        else value = decodeText(bytes, s, e);
      } else {
        entry.skip(w);
      }
    }
    props[key] = value;
  }
  return props;
}
