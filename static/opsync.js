// opsync browser client 0.1.0: generated from clients/js by `npm run bundle`; do not edit.
// Bundles @msgpack/msgpack, idb and uuid (see their licenses in node_modules).

// node_modules/@msgpack/msgpack/dist.esm/utils/utf8.mjs
function utf8Count(str2) {
  const strLength = str2.length;
  let byteLength = 0;
  let pos = 0;
  while (pos < strLength) {
    let value = str2.charCodeAt(pos++);
    if ((value & 4294967168) === 0) {
      byteLength++;
      continue;
    } else if ((value & 4294965248) === 0) {
      byteLength += 2;
    } else {
      if (value >= 55296 && value <= 56319) {
        if (pos < strLength) {
          const extra = str2.charCodeAt(pos);
          if ((extra & 64512) === 56320) {
            ++pos;
            value = ((value & 1023) << 10) + (extra & 1023) + 65536;
          }
        }
      }
      if ((value & 4294901760) === 0) {
        byteLength += 3;
      } else {
        byteLength += 4;
      }
    }
  }
  return byteLength;
}
function utf8EncodeJs(str2, output, outputOffset) {
  const strLength = str2.length;
  let offset = outputOffset;
  let pos = 0;
  while (pos < strLength) {
    let value = str2.charCodeAt(pos++);
    if ((value & 4294967168) === 0) {
      output[offset++] = value;
      continue;
    } else if ((value & 4294965248) === 0) {
      output[offset++] = value >> 6 & 31 | 192;
    } else {
      if (value >= 55296 && value <= 56319) {
        if (pos < strLength) {
          const extra = str2.charCodeAt(pos);
          if ((extra & 64512) === 56320) {
            ++pos;
            value = ((value & 1023) << 10) + (extra & 1023) + 65536;
          }
        }
      }
      if ((value & 4294901760) === 0) {
        output[offset++] = value >> 12 & 15 | 224;
        output[offset++] = value >> 6 & 63 | 128;
      } else {
        output[offset++] = value >> 18 & 7 | 240;
        output[offset++] = value >> 12 & 63 | 128;
        output[offset++] = value >> 6 & 63 | 128;
      }
    }
    output[offset++] = value & 63 | 128;
  }
}
var sharedTextEncoder = new TextEncoder();
var TEXT_ENCODER_THRESHOLD = 50;
function utf8EncodeTE(str2, output, outputOffset) {
  sharedTextEncoder.encodeInto(str2, output.subarray(outputOffset));
}
function utf8Encode(str2, output, outputOffset) {
  if (str2.length > TEXT_ENCODER_THRESHOLD) {
    utf8EncodeTE(str2, output, outputOffset);
  } else {
    utf8EncodeJs(str2, output, outputOffset);
  }
}
var CHUNK_SIZE = 4096;
function utf8DecodeJs(bytes2, inputOffset, byteLength) {
  let offset = inputOffset;
  const end = offset + byteLength;
  const units = [];
  let result = "";
  while (offset < end) {
    const byte1 = bytes2[offset++];
    if ((byte1 & 128) === 0) {
      units.push(byte1);
    } else if ((byte1 & 224) === 192) {
      const byte2 = bytes2[offset++] & 63;
      units.push((byte1 & 31) << 6 | byte2);
    } else if ((byte1 & 240) === 224) {
      const byte2 = bytes2[offset++] & 63;
      const byte3 = bytes2[offset++] & 63;
      units.push((byte1 & 31) << 12 | byte2 << 6 | byte3);
    } else if ((byte1 & 248) === 240) {
      const byte2 = bytes2[offset++] & 63;
      const byte3 = bytes2[offset++] & 63;
      const byte4 = bytes2[offset++] & 63;
      let unit = (byte1 & 7) << 18 | byte2 << 12 | byte3 << 6 | byte4;
      if (unit > 65535) {
        unit -= 65536;
        units.push(unit >>> 10 & 1023 | 55296);
        unit = 56320 | unit & 1023;
      }
      units.push(unit);
    } else {
      units.push(byte1);
    }
    if (units.length >= CHUNK_SIZE) {
      result += String.fromCharCode(...units);
      units.length = 0;
    }
  }
  if (units.length > 0) {
    result += String.fromCharCode(...units);
  }
  return result;
}
var sharedTextDecoder = new TextDecoder();
var TEXT_DECODER_THRESHOLD = 200;
function utf8DecodeTD(bytes2, inputOffset, byteLength) {
  const stringBytes = bytes2.subarray(inputOffset, inputOffset + byteLength);
  return sharedTextDecoder.decode(stringBytes);
}
function utf8Decode(bytes2, inputOffset, byteLength) {
  if (byteLength > TEXT_DECODER_THRESHOLD) {
    return utf8DecodeTD(bytes2, inputOffset, byteLength);
  } else {
    return utf8DecodeJs(bytes2, inputOffset, byteLength);
  }
}

// node_modules/@msgpack/msgpack/dist.esm/ExtData.mjs
var ExtData = class {
  type;
  data;
  constructor(type, data) {
    this.type = type;
    this.data = data;
  }
};

// node_modules/@msgpack/msgpack/dist.esm/DecodeError.mjs
var DecodeError = class _DecodeError extends Error {
  constructor(message) {
    super(message);
    const proto = Object.create(_DecodeError.prototype);
    Object.setPrototypeOf(this, proto);
    Object.defineProperty(this, "name", {
      configurable: true,
      enumerable: false,
      value: _DecodeError.name
    });
  }
};

// node_modules/@msgpack/msgpack/dist.esm/utils/int.mjs
var UINT32_MAX = 4294967295;
function setUint64(view, offset, value) {
  const high = value / 4294967296;
  const low = value;
  view.setUint32(offset, high);
  view.setUint32(offset + 4, low);
}
function setInt64(view, offset, value) {
  const high = Math.floor(value / 4294967296);
  const low = value;
  view.setUint32(offset, high);
  view.setUint32(offset + 4, low);
}
function getInt64(view, offset) {
  const high = view.getInt32(offset);
  const low = view.getUint32(offset + 4);
  return high * 4294967296 + low;
}
function getUint64(view, offset) {
  const high = view.getUint32(offset);
  const low = view.getUint32(offset + 4);
  return high * 4294967296 + low;
}

// node_modules/@msgpack/msgpack/dist.esm/timestamp.mjs
var EXT_TIMESTAMP = -1;
var TIMESTAMP32_MAX_SEC = 4294967296 - 1;
var TIMESTAMP64_MAX_SEC = 17179869184 - 1;
function encodeTimeSpecToTimestamp({ sec, nsec }) {
  if (sec >= 0 && nsec >= 0 && sec <= TIMESTAMP64_MAX_SEC) {
    if (nsec === 0 && sec <= TIMESTAMP32_MAX_SEC) {
      const rv = new Uint8Array(4);
      const view = new DataView(rv.buffer);
      view.setUint32(0, sec);
      return rv;
    } else {
      const secHigh = sec / 4294967296;
      const secLow = sec & 4294967295;
      const rv = new Uint8Array(8);
      const view = new DataView(rv.buffer);
      view.setUint32(0, nsec << 2 | secHigh & 3);
      view.setUint32(4, secLow);
      return rv;
    }
  } else {
    const rv = new Uint8Array(12);
    const view = new DataView(rv.buffer);
    view.setUint32(0, nsec);
    setInt64(view, 4, sec);
    return rv;
  }
}
function encodeDateToTimeSpec(date) {
  const msec = date.getTime();
  const sec = Math.floor(msec / 1e3);
  const nsec = (msec - sec * 1e3) * 1e6;
  const nsecInSec = Math.floor(nsec / 1e9);
  return {
    sec: sec + nsecInSec,
    nsec: nsec - nsecInSec * 1e9
  };
}
function encodeTimestampExtension(object) {
  if (object instanceof Date) {
    const timeSpec = encodeDateToTimeSpec(object);
    return encodeTimeSpecToTimestamp(timeSpec);
  } else {
    return null;
  }
}
function decodeTimestampToTimeSpec(data) {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  switch (data.byteLength) {
    case 4: {
      const sec = view.getUint32(0);
      const nsec = 0;
      return { sec, nsec };
    }
    case 8: {
      const nsec30AndSecHigh2 = view.getUint32(0);
      const secLow32 = view.getUint32(4);
      const sec = (nsec30AndSecHigh2 & 3) * 4294967296 + secLow32;
      const nsec = nsec30AndSecHigh2 >>> 2;
      return { sec, nsec };
    }
    case 12: {
      const sec = getInt64(view, 4);
      const nsec = view.getUint32(0);
      return { sec, nsec };
    }
    default:
      throw new DecodeError(`Unrecognized data size for timestamp (expected 4, 8, or 12): ${data.length}`);
  }
}
function decodeTimestampExtension(data) {
  const timeSpec = decodeTimestampToTimeSpec(data);
  return new Date(timeSpec.sec * 1e3 + timeSpec.nsec / 1e6);
}
var timestampExtension = {
  type: EXT_TIMESTAMP,
  encode: encodeTimestampExtension,
  decode: decodeTimestampExtension
};

// node_modules/@msgpack/msgpack/dist.esm/ExtensionCodec.mjs
var ExtensionCodec = class _ExtensionCodec {
  static defaultCodec = new _ExtensionCodec();
  // ensures ExtensionCodecType<X> matches ExtensionCodec<X>
  // this will make type errors a lot more clear
  // eslint-disable-next-line @typescript-eslint/naming-convention
  __brand;
  // built-in extensions
  builtInEncoders = [];
  builtInDecoders = [];
  // custom extensions
  encoders = [];
  decoders = [];
  constructor() {
    this.register(timestampExtension);
  }
  register({ type, encode: encode2, decode: decode2 }) {
    if (type >= 0) {
      this.encoders[type] = encode2;
      this.decoders[type] = decode2;
    } else {
      const index = -1 - type;
      this.builtInEncoders[index] = encode2;
      this.builtInDecoders[index] = decode2;
    }
  }
  tryToEncode(object, context) {
    for (let i = 0; i < this.builtInEncoders.length; i++) {
      const encodeExt = this.builtInEncoders[i];
      if (encodeExt != null) {
        const data = encodeExt(object, context);
        if (data != null) {
          const type = -1 - i;
          return new ExtData(type, data);
        }
      }
    }
    for (let i = 0; i < this.encoders.length; i++) {
      const encodeExt = this.encoders[i];
      if (encodeExt != null) {
        const data = encodeExt(object, context);
        if (data != null) {
          const type = i;
          return new ExtData(type, data);
        }
      }
    }
    if (object instanceof ExtData) {
      return object;
    }
    return null;
  }
  decode(data, type, context) {
    const decodeExt = type < 0 ? this.builtInDecoders[-1 - type] : this.decoders[type];
    if (decodeExt) {
      return decodeExt(data, type, context);
    } else {
      return new ExtData(type, data);
    }
  }
};

// node_modules/@msgpack/msgpack/dist.esm/utils/typedArrays.mjs
function isArrayBufferLike(buffer) {
  return buffer instanceof ArrayBuffer || typeof SharedArrayBuffer !== "undefined" && buffer instanceof SharedArrayBuffer;
}
function ensureUint8Array(buffer) {
  if (buffer instanceof Uint8Array) {
    return buffer;
  } else if (ArrayBuffer.isView(buffer)) {
    return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  } else if (isArrayBufferLike(buffer)) {
    return new Uint8Array(buffer);
  } else {
    return Uint8Array.from(buffer);
  }
}

// node_modules/@msgpack/msgpack/dist.esm/Encoder.mjs
var DEFAULT_MAX_DEPTH = 100;
var DEFAULT_INITIAL_BUFFER_SIZE = 2048;
var Encoder = class _Encoder {
  extensionCodec;
  context;
  useBigInt64;
  maxDepth;
  initialBufferSize;
  sortKeys;
  forceFloat32;
  ignoreUndefined;
  forceIntegerToFloat;
  pos;
  view;
  bytes;
  entered = false;
  constructor(options) {
    this.extensionCodec = options?.extensionCodec ?? ExtensionCodec.defaultCodec;
    this.context = options?.context;
    this.useBigInt64 = options?.useBigInt64 ?? false;
    this.maxDepth = options?.maxDepth ?? DEFAULT_MAX_DEPTH;
    this.initialBufferSize = options?.initialBufferSize ?? DEFAULT_INITIAL_BUFFER_SIZE;
    this.sortKeys = options?.sortKeys ?? false;
    this.forceFloat32 = options?.forceFloat32 ?? false;
    this.ignoreUndefined = options?.ignoreUndefined ?? false;
    this.forceIntegerToFloat = options?.forceIntegerToFloat ?? false;
    this.pos = 0;
    this.view = new DataView(new ArrayBuffer(this.initialBufferSize));
    this.bytes = new Uint8Array(this.view.buffer);
  }
  clone() {
    return new _Encoder({
      extensionCodec: this.extensionCodec,
      context: this.context,
      useBigInt64: this.useBigInt64,
      maxDepth: this.maxDepth,
      initialBufferSize: this.initialBufferSize,
      sortKeys: this.sortKeys,
      forceFloat32: this.forceFloat32,
      ignoreUndefined: this.ignoreUndefined,
      forceIntegerToFloat: this.forceIntegerToFloat
    });
  }
  reinitializeState() {
    this.pos = 0;
  }
  /**
   * This is almost equivalent to {@link Encoder#encode}, but it returns an reference of the encoder's internal buffer and thus much faster than {@link Encoder#encode}.
   *
   * @returns Encodes the object and returns a shared reference the encoder's internal buffer.
   */
  encodeSharedRef(object) {
    if (this.entered) {
      const instance = this.clone();
      return instance.encodeSharedRef(object);
    }
    try {
      this.entered = true;
      this.reinitializeState();
      this.doEncode(object, 1);
      return this.bytes.subarray(0, this.pos);
    } finally {
      this.entered = false;
    }
  }
  /**
   * @returns Encodes the object and returns a copy of the encoder's internal buffer.
   */
  encode(object) {
    if (this.entered) {
      const instance = this.clone();
      return instance.encode(object);
    }
    try {
      this.entered = true;
      this.reinitializeState();
      this.doEncode(object, 1);
      return this.bytes.slice(0, this.pos);
    } finally {
      this.entered = false;
    }
  }
  doEncode(object, depth) {
    if (depth > this.maxDepth) {
      throw new Error(`Too deep objects in depth ${depth}`);
    }
    if (object == null) {
      this.encodeNil();
    } else if (typeof object === "boolean") {
      this.encodeBoolean(object);
    } else if (typeof object === "number") {
      if (!this.forceIntegerToFloat) {
        this.encodeNumber(object);
      } else {
        this.encodeNumberAsFloat(object);
      }
    } else if (typeof object === "string") {
      this.encodeString(object);
    } else if (this.useBigInt64 && typeof object === "bigint") {
      this.encodeBigInt64(object);
    } else {
      this.encodeObject(object, depth);
    }
  }
  ensureBufferSizeToWrite(sizeToWrite) {
    const requiredSize = this.pos + sizeToWrite;
    if (this.view.byteLength < requiredSize) {
      this.resizeBuffer(requiredSize * 2);
    }
  }
  resizeBuffer(newSize) {
    const newBuffer = new ArrayBuffer(newSize);
    const newBytes = new Uint8Array(newBuffer);
    const newView = new DataView(newBuffer);
    newBytes.set(this.bytes);
    this.view = newView;
    this.bytes = newBytes;
  }
  encodeNil() {
    this.writeU8(192);
  }
  encodeBoolean(object) {
    if (object === false) {
      this.writeU8(194);
    } else {
      this.writeU8(195);
    }
  }
  encodeNumber(object) {
    if (!this.forceIntegerToFloat && Number.isSafeInteger(object)) {
      if (object >= 0) {
        if (object < 128) {
          this.writeU8(object);
        } else if (object < 256) {
          this.writeU8(204);
          this.writeU8(object);
        } else if (object < 65536) {
          this.writeU8(205);
          this.writeU16(object);
        } else if (object < 4294967296) {
          this.writeU8(206);
          this.writeU32(object);
        } else if (!this.useBigInt64) {
          this.writeU8(207);
          this.writeU64(object);
        } else {
          this.encodeNumberAsFloat(object);
        }
      } else {
        if (object >= -32) {
          this.writeU8(224 | object + 32);
        } else if (object >= -128) {
          this.writeU8(208);
          this.writeI8(object);
        } else if (object >= -32768) {
          this.writeU8(209);
          this.writeI16(object);
        } else if (object >= -2147483648) {
          this.writeU8(210);
          this.writeI32(object);
        } else if (!this.useBigInt64) {
          this.writeU8(211);
          this.writeI64(object);
        } else {
          this.encodeNumberAsFloat(object);
        }
      }
    } else {
      this.encodeNumberAsFloat(object);
    }
  }
  encodeNumberAsFloat(object) {
    if (this.forceFloat32) {
      this.writeU8(202);
      this.writeF32(object);
    } else {
      this.writeU8(203);
      this.writeF64(object);
    }
  }
  encodeBigInt64(object) {
    if (object >= BigInt(0)) {
      this.writeU8(207);
      this.writeBigUint64(object);
    } else {
      this.writeU8(211);
      this.writeBigInt64(object);
    }
  }
  writeStringHeader(byteLength) {
    if (byteLength < 32) {
      this.writeU8(160 + byteLength);
    } else if (byteLength < 256) {
      this.writeU8(217);
      this.writeU8(byteLength);
    } else if (byteLength < 65536) {
      this.writeU8(218);
      this.writeU16(byteLength);
    } else if (byteLength < 4294967296) {
      this.writeU8(219);
      this.writeU32(byteLength);
    } else {
      throw new Error(`Too long string: ${byteLength} bytes in UTF-8`);
    }
  }
  encodeString(object) {
    const maxHeaderSize = 1 + 4;
    const byteLength = utf8Count(object);
    this.ensureBufferSizeToWrite(maxHeaderSize + byteLength);
    this.writeStringHeader(byteLength);
    utf8Encode(object, this.bytes, this.pos);
    this.pos += byteLength;
  }
  encodeObject(object, depth) {
    const ext = this.extensionCodec.tryToEncode(object, this.context);
    if (ext != null) {
      this.encodeExtension(ext);
    } else if (Array.isArray(object)) {
      this.encodeArray(object, depth);
    } else if (ArrayBuffer.isView(object)) {
      this.encodeBinary(object);
    } else if (typeof object === "object") {
      this.encodeMap(object, depth);
    } else {
      throw new Error(`Unrecognized object: ${Object.prototype.toString.apply(object)}`);
    }
  }
  encodeBinary(object) {
    const size = object.byteLength;
    if (size < 256) {
      this.writeU8(196);
      this.writeU8(size);
    } else if (size < 65536) {
      this.writeU8(197);
      this.writeU16(size);
    } else if (size < 4294967296) {
      this.writeU8(198);
      this.writeU32(size);
    } else {
      throw new Error(`Too large binary: ${size}`);
    }
    const bytes2 = ensureUint8Array(object);
    this.writeU8a(bytes2);
  }
  encodeArray(object, depth) {
    const size = object.length;
    if (size < 16) {
      this.writeU8(144 + size);
    } else if (size < 65536) {
      this.writeU8(220);
      this.writeU16(size);
    } else if (size < 4294967296) {
      this.writeU8(221);
      this.writeU32(size);
    } else {
      throw new Error(`Too large array: ${size}`);
    }
    for (const item of object) {
      this.doEncode(item, depth + 1);
    }
  }
  countWithoutUndefined(object, keys) {
    let count = 0;
    for (const key of keys) {
      if (object[key] !== void 0) {
        count++;
      }
    }
    return count;
  }
  encodeMap(object, depth) {
    const keys = Object.keys(object);
    if (this.sortKeys) {
      keys.sort();
    }
    const size = this.ignoreUndefined ? this.countWithoutUndefined(object, keys) : keys.length;
    if (size < 16) {
      this.writeU8(128 + size);
    } else if (size < 65536) {
      this.writeU8(222);
      this.writeU16(size);
    } else if (size < 4294967296) {
      this.writeU8(223);
      this.writeU32(size);
    } else {
      throw new Error(`Too large map object: ${size}`);
    }
    for (const key of keys) {
      const value = object[key];
      if (!(this.ignoreUndefined && value === void 0)) {
        this.encodeString(key);
        this.doEncode(value, depth + 1);
      }
    }
  }
  encodeExtension(ext) {
    if (typeof ext.data === "function") {
      const data = ext.data(this.pos + 6);
      const size2 = data.length;
      if (size2 >= 4294967296) {
        throw new Error(`Too large extension object: ${size2}`);
      }
      this.writeU8(201);
      this.writeU32(size2);
      this.writeI8(ext.type);
      this.writeU8a(data);
      return;
    }
    const size = ext.data.length;
    if (size === 1) {
      this.writeU8(212);
    } else if (size === 2) {
      this.writeU8(213);
    } else if (size === 4) {
      this.writeU8(214);
    } else if (size === 8) {
      this.writeU8(215);
    } else if (size === 16) {
      this.writeU8(216);
    } else if (size < 256) {
      this.writeU8(199);
      this.writeU8(size);
    } else if (size < 65536) {
      this.writeU8(200);
      this.writeU16(size);
    } else if (size < 4294967296) {
      this.writeU8(201);
      this.writeU32(size);
    } else {
      throw new Error(`Too large extension object: ${size}`);
    }
    this.writeI8(ext.type);
    this.writeU8a(ext.data);
  }
  writeU8(value) {
    this.ensureBufferSizeToWrite(1);
    this.view.setUint8(this.pos, value);
    this.pos++;
  }
  writeU8a(values) {
    const size = values.length;
    this.ensureBufferSizeToWrite(size);
    this.bytes.set(values, this.pos);
    this.pos += size;
  }
  writeI8(value) {
    this.ensureBufferSizeToWrite(1);
    this.view.setInt8(this.pos, value);
    this.pos++;
  }
  writeU16(value) {
    this.ensureBufferSizeToWrite(2);
    this.view.setUint16(this.pos, value);
    this.pos += 2;
  }
  writeI16(value) {
    this.ensureBufferSizeToWrite(2);
    this.view.setInt16(this.pos, value);
    this.pos += 2;
  }
  writeU32(value) {
    this.ensureBufferSizeToWrite(4);
    this.view.setUint32(this.pos, value);
    this.pos += 4;
  }
  writeI32(value) {
    this.ensureBufferSizeToWrite(4);
    this.view.setInt32(this.pos, value);
    this.pos += 4;
  }
  writeF32(value) {
    this.ensureBufferSizeToWrite(4);
    this.view.setFloat32(this.pos, value);
    this.pos += 4;
  }
  writeF64(value) {
    this.ensureBufferSizeToWrite(8);
    this.view.setFloat64(this.pos, value);
    this.pos += 8;
  }
  writeU64(value) {
    this.ensureBufferSizeToWrite(8);
    setUint64(this.view, this.pos, value);
    this.pos += 8;
  }
  writeI64(value) {
    this.ensureBufferSizeToWrite(8);
    setInt64(this.view, this.pos, value);
    this.pos += 8;
  }
  writeBigUint64(value) {
    this.ensureBufferSizeToWrite(8);
    this.view.setBigUint64(this.pos, value);
    this.pos += 8;
  }
  writeBigInt64(value) {
    this.ensureBufferSizeToWrite(8);
    this.view.setBigInt64(this.pos, value);
    this.pos += 8;
  }
};

// node_modules/@msgpack/msgpack/dist.esm/encode.mjs
function encode(value, options) {
  const encoder2 = new Encoder(options);
  return encoder2.encodeSharedRef(value);
}

// node_modules/@msgpack/msgpack/dist.esm/utils/prettyByte.mjs
function prettyByte(byte) {
  return `${byte < 0 ? "-" : ""}0x${Math.abs(byte).toString(16).padStart(2, "0")}`;
}

// node_modules/@msgpack/msgpack/dist.esm/CachedKeyDecoder.mjs
var DEFAULT_MAX_KEY_LENGTH = 16;
var DEFAULT_MAX_LENGTH_PER_KEY = 16;
var CachedKeyDecoder = class {
  hit = 0;
  miss = 0;
  caches;
  maxKeyLength;
  maxLengthPerKey;
  constructor(maxKeyLength = DEFAULT_MAX_KEY_LENGTH, maxLengthPerKey = DEFAULT_MAX_LENGTH_PER_KEY) {
    this.maxKeyLength = maxKeyLength;
    this.maxLengthPerKey = maxLengthPerKey;
    this.caches = [];
    for (let i = 0; i < this.maxKeyLength; i++) {
      this.caches.push([]);
    }
  }
  canBeCached(byteLength) {
    return byteLength > 0 && byteLength <= this.maxKeyLength;
  }
  find(bytes2, inputOffset, byteLength) {
    const records = this.caches[byteLength - 1];
    FIND_CHUNK: for (const record of records) {
      const recordBytes = record.bytes;
      for (let j = 0; j < byteLength; j++) {
        if (recordBytes[j] !== bytes2[inputOffset + j]) {
          continue FIND_CHUNK;
        }
      }
      return record.str;
    }
    return null;
  }
  store(bytes2, value) {
    const records = this.caches[bytes2.length - 1];
    const record = { bytes: bytes2, str: value };
    if (records.length >= this.maxLengthPerKey) {
      records[Math.random() * records.length | 0] = record;
    } else {
      records.push(record);
    }
  }
  decode(bytes2, inputOffset, byteLength) {
    const cachedValue = this.find(bytes2, inputOffset, byteLength);
    if (cachedValue != null) {
      this.hit++;
      return cachedValue;
    }
    this.miss++;
    const str2 = utf8DecodeJs(bytes2, inputOffset, byteLength);
    const slicedCopyOfBytes = Uint8Array.prototype.slice.call(bytes2, inputOffset, inputOffset + byteLength);
    this.store(slicedCopyOfBytes, str2);
    return str2;
  }
};

// node_modules/@msgpack/msgpack/dist.esm/Decoder.mjs
var STATE_ARRAY = "array";
var STATE_MAP_KEY = "map_key";
var STATE_MAP_VALUE = "map_value";
var mapKeyConverter = (key) => {
  if (typeof key === "string" || typeof key === "number") {
    return key;
  }
  throw new DecodeError("The type of key must be string or number but " + typeof key);
};
var StackPool = class {
  stack = [];
  stackHeadPosition = -1;
  get length() {
    return this.stackHeadPosition + 1;
  }
  top() {
    return this.stack[this.stackHeadPosition];
  }
  pushArrayState(size) {
    const state = this.getUninitializedStateFromPool();
    state.type = STATE_ARRAY;
    state.position = 0;
    state.size = size;
    state.array = new Array(size);
  }
  pushMapState(size) {
    const state = this.getUninitializedStateFromPool();
    state.type = STATE_MAP_KEY;
    state.readCount = 0;
    state.size = size;
    state.map = {};
  }
  getUninitializedStateFromPool() {
    this.stackHeadPosition++;
    if (this.stackHeadPosition === this.stack.length) {
      const partialState = {
        type: void 0,
        size: 0,
        array: void 0,
        position: 0,
        readCount: 0,
        map: void 0,
        key: null
      };
      this.stack.push(partialState);
    }
    return this.stack[this.stackHeadPosition];
  }
  release(state) {
    const topStackState = this.stack[this.stackHeadPosition];
    if (topStackState !== state) {
      throw new Error("Invalid stack state. Released state is not on top of the stack.");
    }
    if (state.type === STATE_ARRAY) {
      const partialState = state;
      partialState.size = 0;
      partialState.array = void 0;
      partialState.position = 0;
      partialState.type = void 0;
    }
    if (state.type === STATE_MAP_KEY || state.type === STATE_MAP_VALUE) {
      const partialState = state;
      partialState.size = 0;
      partialState.map = void 0;
      partialState.readCount = 0;
      partialState.type = void 0;
    }
    this.stackHeadPosition--;
  }
  reset() {
    this.stack.length = 0;
    this.stackHeadPosition = -1;
  }
};
var HEAD_BYTE_REQUIRED = -1;
var EMPTY_VIEW = new DataView(new ArrayBuffer(0));
var EMPTY_BYTES = new Uint8Array(EMPTY_VIEW.buffer);
try {
  EMPTY_VIEW.getInt8(0);
} catch (e) {
  if (!(e instanceof RangeError)) {
    throw new Error("This module is not supported in the current JavaScript engine because DataView does not throw RangeError on out-of-bounds access");
  }
}
var MORE_DATA = new RangeError("Insufficient data");
var sharedCachedKeyDecoder = new CachedKeyDecoder();
var Decoder = class _Decoder {
  extensionCodec;
  context;
  useBigInt64;
  rawStrings;
  maxStrLength;
  maxBinLength;
  maxArrayLength;
  maxMapLength;
  maxExtLength;
  keyDecoder;
  mapKeyConverter;
  totalPos = 0;
  pos = 0;
  view = EMPTY_VIEW;
  bytes = EMPTY_BYTES;
  headByte = HEAD_BYTE_REQUIRED;
  stack = new StackPool();
  entered = false;
  constructor(options) {
    this.extensionCodec = options?.extensionCodec ?? ExtensionCodec.defaultCodec;
    this.context = options?.context;
    this.useBigInt64 = options?.useBigInt64 ?? false;
    this.rawStrings = options?.rawStrings ?? false;
    this.maxStrLength = options?.maxStrLength ?? UINT32_MAX;
    this.maxBinLength = options?.maxBinLength ?? UINT32_MAX;
    this.maxArrayLength = options?.maxArrayLength ?? UINT32_MAX;
    this.maxMapLength = options?.maxMapLength ?? UINT32_MAX;
    this.maxExtLength = options?.maxExtLength ?? UINT32_MAX;
    this.keyDecoder = options?.keyDecoder !== void 0 ? options.keyDecoder : sharedCachedKeyDecoder;
    this.mapKeyConverter = options?.mapKeyConverter ?? mapKeyConverter;
  }
  clone() {
    return new _Decoder({
      extensionCodec: this.extensionCodec,
      context: this.context,
      useBigInt64: this.useBigInt64,
      rawStrings: this.rawStrings,
      maxStrLength: this.maxStrLength,
      maxBinLength: this.maxBinLength,
      maxArrayLength: this.maxArrayLength,
      maxMapLength: this.maxMapLength,
      maxExtLength: this.maxExtLength,
      keyDecoder: this.keyDecoder
    });
  }
  reinitializeState() {
    this.totalPos = 0;
    this.headByte = HEAD_BYTE_REQUIRED;
    this.stack.reset();
  }
  setBuffer(buffer) {
    const bytes2 = ensureUint8Array(buffer);
    this.bytes = bytes2;
    this.view = new DataView(bytes2.buffer, bytes2.byteOffset, bytes2.byteLength);
    this.pos = 0;
  }
  appendBuffer(buffer) {
    if (this.headByte === HEAD_BYTE_REQUIRED && !this.hasRemaining(1)) {
      this.setBuffer(buffer);
    } else {
      const remainingData = this.bytes.subarray(this.pos);
      const newData = ensureUint8Array(buffer);
      const newBuffer = new Uint8Array(remainingData.length + newData.length);
      newBuffer.set(remainingData);
      newBuffer.set(newData, remainingData.length);
      this.setBuffer(newBuffer);
    }
  }
  hasRemaining(size) {
    return this.view.byteLength - this.pos >= size;
  }
  createExtraByteError(posToShow) {
    const { view, pos } = this;
    return new RangeError(`Extra ${view.byteLength - pos} of ${view.byteLength} byte(s) found at buffer[${posToShow}]`);
  }
  /**
   * @throws {@link DecodeError}
   * @throws {@link RangeError}
   */
  decode(buffer) {
    if (this.entered) {
      const instance = this.clone();
      return instance.decode(buffer);
    }
    try {
      this.entered = true;
      this.reinitializeState();
      this.setBuffer(buffer);
      const object = this.doDecodeSync();
      if (this.hasRemaining(1)) {
        throw this.createExtraByteError(this.pos);
      }
      return object;
    } finally {
      this.entered = false;
    }
  }
  *decodeMulti(buffer) {
    if (this.entered) {
      const instance = this.clone();
      yield* instance.decodeMulti(buffer);
      return;
    }
    try {
      this.entered = true;
      this.reinitializeState();
      this.setBuffer(buffer);
      while (this.hasRemaining(1)) {
        yield this.doDecodeSync();
      }
    } finally {
      this.entered = false;
    }
  }
  async decodeAsync(stream) {
    if (this.entered) {
      const instance = this.clone();
      return instance.decodeAsync(stream);
    }
    try {
      this.entered = true;
      let decoded = false;
      let object;
      for await (const buffer of stream) {
        if (decoded) {
          this.entered = false;
          throw this.createExtraByteError(this.totalPos);
        }
        this.appendBuffer(buffer);
        try {
          object = this.doDecodeSync();
          decoded = true;
        } catch (e) {
          if (!(e instanceof RangeError)) {
            throw e;
          }
        }
        this.totalPos += this.pos;
      }
      if (decoded) {
        if (this.hasRemaining(1)) {
          throw this.createExtraByteError(this.totalPos);
        }
        return object;
      }
      const { headByte, pos, totalPos } = this;
      throw new RangeError(`Insufficient data in parsing ${prettyByte(headByte)} at ${totalPos} (${pos} in the current buffer)`);
    } finally {
      this.entered = false;
    }
  }
  decodeArrayStream(stream) {
    return this.decodeMultiAsync(stream, true);
  }
  decodeStream(stream) {
    return this.decodeMultiAsync(stream, false);
  }
  async *decodeMultiAsync(stream, isArray) {
    if (this.entered) {
      const instance = this.clone();
      yield* instance.decodeMultiAsync(stream, isArray);
      return;
    }
    try {
      this.entered = true;
      let isArrayHeaderRequired = isArray;
      let arrayItemsLeft = -1;
      for await (const buffer of stream) {
        if (isArray && arrayItemsLeft === 0) {
          throw this.createExtraByteError(this.totalPos);
        }
        this.appendBuffer(buffer);
        if (isArrayHeaderRequired) {
          arrayItemsLeft = this.readArraySize();
          isArrayHeaderRequired = false;
          this.complete();
        }
        try {
          while (true) {
            yield this.doDecodeSync();
            if (--arrayItemsLeft === 0) {
              break;
            }
          }
        } catch (e) {
          if (!(e instanceof RangeError)) {
            throw e;
          }
        }
        this.totalPos += this.pos;
      }
    } finally {
      this.entered = false;
    }
  }
  doDecodeSync() {
    DECODE: while (true) {
      const headByte = this.readHeadByte();
      let object;
      if (headByte >= 224) {
        object = headByte - 256;
      } else if (headByte < 192) {
        if (headByte < 128) {
          object = headByte;
        } else if (headByte < 144) {
          const size = headByte - 128;
          if (size !== 0) {
            this.pushMapState(size);
            this.complete();
            continue DECODE;
          } else {
            object = {};
          }
        } else if (headByte < 160) {
          const size = headByte - 144;
          if (size !== 0) {
            this.pushArrayState(size);
            this.complete();
            continue DECODE;
          } else {
            object = [];
          }
        } else {
          const byteLength = headByte - 160;
          object = this.decodeString(byteLength, 0);
        }
      } else if (headByte === 192) {
        object = null;
      } else if (headByte === 194) {
        object = false;
      } else if (headByte === 195) {
        object = true;
      } else if (headByte === 202) {
        object = this.readF32();
      } else if (headByte === 203) {
        object = this.readF64();
      } else if (headByte === 204) {
        object = this.readU8();
      } else if (headByte === 205) {
        object = this.readU16();
      } else if (headByte === 206) {
        object = this.readU32();
      } else if (headByte === 207) {
        if (this.useBigInt64) {
          object = this.readU64AsBigInt();
        } else {
          object = this.readU64();
        }
      } else if (headByte === 208) {
        object = this.readI8();
      } else if (headByte === 209) {
        object = this.readI16();
      } else if (headByte === 210) {
        object = this.readI32();
      } else if (headByte === 211) {
        if (this.useBigInt64) {
          object = this.readI64AsBigInt();
        } else {
          object = this.readI64();
        }
      } else if (headByte === 217) {
        const byteLength = this.lookU8();
        object = this.decodeString(byteLength, 1);
      } else if (headByte === 218) {
        const byteLength = this.lookU16();
        object = this.decodeString(byteLength, 2);
      } else if (headByte === 219) {
        const byteLength = this.lookU32();
        object = this.decodeString(byteLength, 4);
      } else if (headByte === 220) {
        const size = this.readU16();
        if (size !== 0) {
          this.pushArrayState(size);
          this.complete();
          continue DECODE;
        } else {
          object = [];
        }
      } else if (headByte === 221) {
        const size = this.readU32();
        if (size !== 0) {
          this.pushArrayState(size);
          this.complete();
          continue DECODE;
        } else {
          object = [];
        }
      } else if (headByte === 222) {
        const size = this.readU16();
        if (size !== 0) {
          this.pushMapState(size);
          this.complete();
          continue DECODE;
        } else {
          object = {};
        }
      } else if (headByte === 223) {
        const size = this.readU32();
        if (size !== 0) {
          this.pushMapState(size);
          this.complete();
          continue DECODE;
        } else {
          object = {};
        }
      } else if (headByte === 196) {
        const size = this.lookU8();
        object = this.decodeBinary(size, 1);
      } else if (headByte === 197) {
        const size = this.lookU16();
        object = this.decodeBinary(size, 2);
      } else if (headByte === 198) {
        const size = this.lookU32();
        object = this.decodeBinary(size, 4);
      } else if (headByte === 212) {
        object = this.decodeExtension(1, 0);
      } else if (headByte === 213) {
        object = this.decodeExtension(2, 0);
      } else if (headByte === 214) {
        object = this.decodeExtension(4, 0);
      } else if (headByte === 215) {
        object = this.decodeExtension(8, 0);
      } else if (headByte === 216) {
        object = this.decodeExtension(16, 0);
      } else if (headByte === 199) {
        const size = this.lookU8();
        object = this.decodeExtension(size, 1);
      } else if (headByte === 200) {
        const size = this.lookU16();
        object = this.decodeExtension(size, 2);
      } else if (headByte === 201) {
        const size = this.lookU32();
        object = this.decodeExtension(size, 4);
      } else {
        throw new DecodeError(`Unrecognized type byte: ${prettyByte(headByte)}`);
      }
      this.complete();
      const stack = this.stack;
      while (stack.length > 0) {
        const state = stack.top();
        if (state.type === STATE_ARRAY) {
          state.array[state.position] = object;
          state.position++;
          if (state.position === state.size) {
            object = state.array;
            stack.release(state);
          } else {
            continue DECODE;
          }
        } else if (state.type === STATE_MAP_KEY) {
          if (object === "__proto__") {
            throw new DecodeError("The key __proto__ is not allowed");
          }
          state.key = this.mapKeyConverter(object);
          state.type = STATE_MAP_VALUE;
          continue DECODE;
        } else {
          state.map[state.key] = object;
          state.readCount++;
          if (state.readCount === state.size) {
            object = state.map;
            stack.release(state);
          } else {
            state.key = null;
            state.type = STATE_MAP_KEY;
            continue DECODE;
          }
        }
      }
      return object;
    }
  }
  readHeadByte() {
    if (this.headByte === HEAD_BYTE_REQUIRED) {
      this.headByte = this.readU8();
    }
    return this.headByte;
  }
  complete() {
    this.headByte = HEAD_BYTE_REQUIRED;
  }
  readArraySize() {
    const headByte = this.readHeadByte();
    switch (headByte) {
      case 220:
        return this.readU16();
      case 221:
        return this.readU32();
      default: {
        if (headByte < 160) {
          return headByte - 144;
        } else {
          throw new DecodeError(`Unrecognized array type byte: ${prettyByte(headByte)}`);
        }
      }
    }
  }
  pushMapState(size) {
    if (size > this.maxMapLength) {
      throw new DecodeError(`Max length exceeded: map length (${size}) > maxMapLengthLength (${this.maxMapLength})`);
    }
    this.stack.pushMapState(size);
  }
  pushArrayState(size) {
    if (size > this.maxArrayLength) {
      throw new DecodeError(`Max length exceeded: array length (${size}) > maxArrayLength (${this.maxArrayLength})`);
    }
    this.stack.pushArrayState(size);
  }
  decodeString(byteLength, headerOffset) {
    if (!this.rawStrings || this.stateIsMapKey()) {
      return this.decodeUtf8String(byteLength, headerOffset);
    }
    return this.decodeBinary(byteLength, headerOffset);
  }
  /**
   * @throws {@link RangeError}
   */
  decodeUtf8String(byteLength, headerOffset) {
    if (byteLength > this.maxStrLength) {
      throw new DecodeError(`Max length exceeded: UTF-8 byte length (${byteLength}) > maxStrLength (${this.maxStrLength})`);
    }
    if (this.bytes.byteLength < this.pos + headerOffset + byteLength) {
      throw MORE_DATA;
    }
    const offset = this.pos + headerOffset;
    let object;
    if (this.stateIsMapKey() && this.keyDecoder?.canBeCached(byteLength)) {
      object = this.keyDecoder.decode(this.bytes, offset, byteLength);
    } else {
      object = utf8Decode(this.bytes, offset, byteLength);
    }
    this.pos += headerOffset + byteLength;
    return object;
  }
  stateIsMapKey() {
    if (this.stack.length > 0) {
      const state = this.stack.top();
      return state.type === STATE_MAP_KEY;
    }
    return false;
  }
  /**
   * @throws {@link RangeError}
   */
  decodeBinary(byteLength, headOffset) {
    if (byteLength > this.maxBinLength) {
      throw new DecodeError(`Max length exceeded: bin length (${byteLength}) > maxBinLength (${this.maxBinLength})`);
    }
    if (!this.hasRemaining(byteLength + headOffset)) {
      throw MORE_DATA;
    }
    const offset = this.pos + headOffset;
    const object = this.bytes.subarray(offset, offset + byteLength);
    this.pos += headOffset + byteLength;
    return object;
  }
  decodeExtension(size, headOffset) {
    if (size > this.maxExtLength) {
      throw new DecodeError(`Max length exceeded: ext length (${size}) > maxExtLength (${this.maxExtLength})`);
    }
    const extType = this.view.getInt8(this.pos + headOffset);
    const data = this.decodeBinary(
      size,
      headOffset + 1
      /* extType */
    );
    return this.extensionCodec.decode(data, extType, this.context);
  }
  lookU8() {
    return this.view.getUint8(this.pos);
  }
  lookU16() {
    return this.view.getUint16(this.pos);
  }
  lookU32() {
    return this.view.getUint32(this.pos);
  }
  readU8() {
    const value = this.view.getUint8(this.pos);
    this.pos++;
    return value;
  }
  readI8() {
    const value = this.view.getInt8(this.pos);
    this.pos++;
    return value;
  }
  readU16() {
    const value = this.view.getUint16(this.pos);
    this.pos += 2;
    return value;
  }
  readI16() {
    const value = this.view.getInt16(this.pos);
    this.pos += 2;
    return value;
  }
  readU32() {
    const value = this.view.getUint32(this.pos);
    this.pos += 4;
    return value;
  }
  readI32() {
    const value = this.view.getInt32(this.pos);
    this.pos += 4;
    return value;
  }
  readU64() {
    const value = getUint64(this.view, this.pos);
    this.pos += 8;
    return value;
  }
  readI64() {
    const value = getInt64(this.view, this.pos);
    this.pos += 8;
    return value;
  }
  readU64AsBigInt() {
    const value = this.view.getBigUint64(this.pos);
    this.pos += 8;
    return value;
  }
  readI64AsBigInt() {
    const value = this.view.getBigInt64(this.pos);
    this.pos += 8;
    return value;
  }
  readF32() {
    const value = this.view.getFloat32(this.pos);
    this.pos += 4;
    return value;
  }
  readF64() {
    const value = this.view.getFloat64(this.pos);
    this.pos += 8;
    return value;
  }
};

// node_modules/@msgpack/msgpack/dist.esm/decode.mjs
function decode(buffer, options) {
  const decoder = new Decoder(options);
  return decoder.decode(buffer);
}

// src/crypto.ts
var SEALED_V1 = 1;
var IV_BYTES = 12;
var DEFAULT_ITERATIONS = 6e5;
var encoder = new TextEncoder();
function subtle() {
  const s = globalThis.crypto?.subtle;
  if (!s)
    throw new Error("WebCrypto is unavailable: end-to-end encryption needs a secure context (https or localhost)");
  return s;
}
async function userSalt(user) {
  return new Uint8Array(await subtle().digest("SHA-256", encoder.encode(`opsync/e2e/v1/salt\0${user}`)));
}
async function deriveKeys(passphrase, salt, iterations = DEFAULT_ITERATIONS) {
  if (passphrase.length === 0) throw new Error("the passphrase is empty");
  const s = subtle();
  const material = await s.importKey("raw", encoder.encode(passphrase), "PBKDF2", false, ["deriveBits"]);
  const bits = new Uint8Array(
    await s.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations }, material, 512)
  );
  const aes = await s.importKey("raw", bits.slice(0, 32), { name: "AES-GCM", length: 256 }, false, [
    "encrypt",
    "decrypt"
  ]);
  const hmac = await s.importKey("raw", bits.slice(32), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  bits.fill(0);
  return { aes, hmac };
}
async function seal(keys, plain2, aad) {
  const iv = globalThis.crypto.getRandomValues(new Uint8Array(IV_BYTES));
  const cipher = new Uint8Array(
    await subtle().encrypt(
      { name: "AES-GCM", iv, additionalData: encoder.encode(aad), tagLength: 128 },
      keys.aes,
      plain2
    )
  );
  const out = new Uint8Array(1 + IV_BYTES + cipher.length);
  out[0] = SEALED_V1;
  out.set(iv, 1);
  out.set(cipher, 1 + IV_BYTES);
  return out;
}
async function open(keys, sealed, aad) {
  if (sealed.length < 1 + IV_BYTES + 16 || sealed[0] !== SEALED_V1) {
    throw new Error("not an encrypted blob of version 1");
  }
  const iv = sealed.subarray(1, 1 + IV_BYTES);
  const plain2 = await subtle().decrypt(
    { name: "AES-GCM", iv, additionalData: encoder.encode(aad), tagLength: 128 },
    keys.aes,
    sealed.subarray(1 + IV_BYTES)
  );
  return new Uint8Array(plain2);
}
async function hashEntity(keys, entity) {
  const mac = new Uint8Array(await subtle().sign("HMAC", keys.hmac, encoder.encode(entity)));
  let text = "";
  for (const b of mac.subarray(0, 16)) text += String.fromCharCode(b);
  return "h." + btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// src/emitter.ts
var Emitter = class {
  #listeners = /* @__PURE__ */ new Map();
  on(event, listener) {
    let set = this.#listeners.get(event);
    if (!set) {
      set = /* @__PURE__ */ new Set();
      this.#listeners.set(event, set);
    }
    set.add(listener);
    return () => this.off(event, listener);
  }
  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }
  /** Calls every listener; one that throws is reported and does not stop the others. */
  emit(event, ...args) {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
};

// src/errors.ts
var OpsyncError = class extends Error {
  /** The server's error code (docs/protocol.md) or one of this client's own: `network`, `timeout`,
   * `protocol`, `decrypt_failed`, `closed`, `locked`, `too_many_ops`. */
  code;
  /** The HTTP status, when the error is an HTTP answer. */
  status;
  /** The whole error body or message, for the codes that carry details (`head`, `horizon`, …). */
  details;
  constructor(code, message, options = {}) {
    super(message, options.cause === void 0 ? void 0 : { cause: options.cause });
    this.name = "OpsyncError";
    this.code = code;
    this.status = options.status;
    this.details = options.details ?? {};
  }
};
var AUTH_CODES = /* @__PURE__ */ new Set([
  "invalid_token",
  "token_expired",
  "token_revoked",
  "forbidden",
  "device_mismatch"
]);
function isTransient(e) {
  if (!(e instanceof OpsyncError)) return true;
  if (e.code === "quota_exceeded") return false;
  if (["network", "timeout", "unavailable", "internal", "request_timeout", "rate_limited"].includes(e.code))
    return true;
  return e.status !== void 0 && e.status >= 500;
}
function retryAfterMs(e) {
  if (!(e instanceof OpsyncError)) return void 0;
  const ms = e.details["retry_after_ms"];
  return typeof ms === "number" && Number.isFinite(ms) && ms >= 0 ? ms : void 0;
}

// node_modules/uuid/dist/regex.js
var regex_default = /^(?:[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}|00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff)$/i;

// node_modules/uuid/dist/validate.js
function validate(uuid) {
  return typeof uuid === "string" && regex_default.test(uuid);
}
var validate_default = validate;

// node_modules/uuid/dist/parse.js
function parse(uuid) {
  if (!validate_default(uuid)) {
    throw TypeError("Invalid UUID");
  }
  let v;
  return Uint8Array.of((v = parseInt(uuid.slice(0, 8), 16)) >>> 24, v >>> 16 & 255, v >>> 8 & 255, v & 255, (v = parseInt(uuid.slice(9, 13), 16)) >>> 8, v & 255, (v = parseInt(uuid.slice(14, 18), 16)) >>> 8, v & 255, (v = parseInt(uuid.slice(19, 23), 16)) >>> 8, v & 255, (v = parseInt(uuid.slice(24, 36), 16)) / 1099511627776 & 255, v / 4294967296 & 255, v >>> 24 & 255, v >>> 16 & 255, v >>> 8 & 255, v & 255);
}
var parse_default = parse;

// node_modules/uuid/dist/stringify.js
var byteToHex = [];
for (let i = 0; i < 256; ++i) {
  byteToHex.push((i + 256).toString(16).slice(1));
}
function unsafeStringify(arr, offset = 0) {
  return (byteToHex[arr[offset + 0]] + byteToHex[arr[offset + 1]] + byteToHex[arr[offset + 2]] + byteToHex[arr[offset + 3]] + "-" + byteToHex[arr[offset + 4]] + byteToHex[arr[offset + 5]] + "-" + byteToHex[arr[offset + 6]] + byteToHex[arr[offset + 7]] + "-" + byteToHex[arr[offset + 8]] + byteToHex[arr[offset + 9]] + "-" + byteToHex[arr[offset + 10]] + byteToHex[arr[offset + 11]] + byteToHex[arr[offset + 12]] + byteToHex[arr[offset + 13]] + byteToHex[arr[offset + 14]] + byteToHex[arr[offset + 15]]).toLowerCase();
}
function stringify(arr, offset = 0) {
  const uuid = unsafeStringify(arr, offset);
  if (!validate_default(uuid)) {
    throw TypeError("Stringified UUID is invalid");
  }
  return uuid;
}
var stringify_default = stringify;

// node_modules/uuid/dist/rng.js
var rnds8 = new Uint8Array(16);
function rng() {
  return crypto.getRandomValues(rnds8);
}

// node_modules/uuid/dist/v7.js
var _state = {};
function v7(options, buf, offset) {
  let bytes2;
  if (options) {
    bytes2 = v7Bytes(options.random ?? options.rng?.() ?? rng(), options.msecs, options.seq, buf, offset);
  } else {
    const now = Date.now();
    const rnds = rng();
    updateV7State(_state, now, rnds);
    bytes2 = v7Bytes(rnds, _state.msecs, _state.seq, buf, offset);
  }
  return buf ?? unsafeStringify(bytes2);
}
function updateV7State(state, now, rnds) {
  state.msecs ??= -Infinity;
  state.seq ??= 0;
  if (now > state.msecs) {
    state.seq = v7Sequence(rnds);
    state.msecs = now;
  } else {
    state.seq = state.seq + 1 | 0;
    if (state.seq === 0) {
      state.msecs++;
    }
  }
  return state;
}
function v7Bytes(rnds, msecs, seq, buf, offset = 0) {
  if (rnds.length < 16) {
    throw new Error("Random bytes length must be >= 16");
  }
  if (!buf) {
    buf = new Uint8Array(16);
    offset = 0;
  } else {
    if (offset < 0 || offset + 16 > buf.length) {
      throw new RangeError(`UUID byte range ${offset}:${offset + 15} is out of buffer bounds`);
    }
  }
  msecs ??= Date.now();
  seq ??= v7Sequence(rnds);
  buf[offset++] = msecs / 1099511627776 & 255;
  buf[offset++] = msecs / 4294967296 & 255;
  buf[offset++] = msecs / 16777216 & 255;
  buf[offset++] = msecs / 65536 & 255;
  buf[offset++] = msecs / 256 & 255;
  buf[offset++] = msecs & 255;
  buf[offset++] = 112 | seq >>> 28 & 15;
  buf[offset++] = seq >>> 20 & 255;
  buf[offset++] = 128 | seq >>> 14 & 63;
  buf[offset++] = seq >>> 6 & 255;
  buf[offset++] = seq << 2 & 255 | rnds[10] & 3;
  buf[offset++] = rnds[11];
  buf[offset++] = rnds[12];
  buf[offset++] = rnds[13];
  buf[offset++] = rnds[14];
  buf[offset++] = rnds[15];
  return buf;
}
function v7Sequence(rnds) {
  return (rnds[6] & 127) << 24 | rnds[7] << 16 | rnds[8] << 8 | rnds[9];
}
var v7_default = v7;

// src/wire.ts
var SUBPROTOCOL = "opsync.v1";
var MSGPACK = "application/msgpack";
function bad(what) {
  throw new OpsyncError("protocol", `malformed message from the server: ${what}`);
}
function isMap(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}
function int(m, key) {
  const v = m[key];
  if (typeof v === "number" && Number.isInteger(v)) return v;
  if (typeof v === "bigint") return Number(v);
  return bad(`${key} is not an integer`);
}
function optInt(m, key) {
  return m[key] === void 0 || m[key] === null ? void 0 : int(m, key);
}
function str(m, key) {
  const v = m[key];
  return typeof v === "string" ? v : bad(`${key} is not a string`);
}
function optStr(m, key) {
  return m[key] === void 0 || m[key] === null ? void 0 : str(m, key);
}
function bytes(m, key) {
  const v = m[key];
  return v instanceof Uint8Array ? v : bad(`${key} is not bin`);
}
function idFromWire(v) {
  if (v instanceof Uint8Array && v.length === 16) return stringify_default(v);
  if (typeof v === "string" && /^[0-9a-f-]{36}$/i.test(v)) return v.toLowerCase();
  return bad("an op id is neither a 16-byte bin nor a UUID");
}
function idToWire(id) {
  return parse_default(id);
}
function op(v) {
  if (!isMap(v)) return bad("an op is not a map");
  const device = v["device"];
  if (device !== void 0 && device !== null && typeof device !== "string") bad("device is not a string");
  const out = {
    seq: int(v, "seq"),
    id: idFromWire(v["id"]),
    device: device ?? null,
    received_at: int(v, "received_at"),
    payload: bytes(v, "payload")
  };
  const entity = optStr(v, "entity");
  if (entity !== void 0) out.entity = entity;
  const kind = optStr(v, "kind");
  if (kind !== void 0) out.kind = kind;
  const base = optInt(v, "base");
  if (base !== void 0) out.base = base;
  const ts = optInt(v, "ts");
  if (ts !== void 0) out.ts = ts;
  return out;
}
function ops(m) {
  const list = m["ops"];
  return Array.isArray(list) ? list.map(op) : bad("ops is not an array");
}
function results(m) {
  const list = m["results"];
  if (!Array.isArray(list)) return bad("results is not an array");
  return list.map((r) => {
    if (!isMap(r)) return bad("a result is not a map");
    const status = str(r, "status");
    if (status !== "stored" && status !== "duplicate") return bad(`unknown status ${status}`);
    return { id: idFromWire(r["id"]), seq: int(r, "seq"), status };
  });
}
function map(data) {
  let v;
  try {
    v = decode(data);
  } catch (e) {
    throw new OpsyncError("protocol", `undecodable MessagePack from the server: ${String(e)}`, { cause: e });
  }
  return isMap(v) ? v : bad("not a map");
}
function decodeServerMsg(data) {
  const m = map(data);
  const type = str(m, "type");
  switch (type) {
    case "welcome":
      return {
        type,
        v: int(m, "v"),
        user: str(m, "user"),
        device: optStr(m, "device") ?? null,
        head: int(m, "head"),
        session: int(m, "session"),
        heartbeat_ms: int(m, "heartbeat_ms")
      };
    case "ops":
      return { type, ops: ops(m), head: int(m, "head") };
    case "pushed":
      return { type, id: int(m, "id"), results: results(m), head: int(m, "head") };
    case "error": {
      const e = { type, code: str(m, "code"), message: str(m, "message") };
      const id = optInt(m, "id");
      if (id !== void 0) e.id = id;
      const head = optInt(m, "head");
      if (head !== void 0) e.head = head;
      const retry = optInt(m, "retry_after_ms");
      if (retry !== void 0) e.retry_after_ms = retry;
      return e;
    }
    case "resync": {
      const r = { type, from: int(m, "from"), reason: str(m, "reason") };
      const s = optInt(m, "snapshot_seq");
      if (s !== void 0) r.snapshot_seq = s;
      return r;
    }
    case "pong": {
      const p = { type };
      const id = optInt(m, "id");
      if (id !== void 0) p.id = id;
      return p;
    }
    default:
      return { type: "unknown", name: type };
  }
}
function decodePull(data) {
  const m = map(data);
  const has = m["has_more"];
  if (typeof has !== "boolean") bad("has_more is not a boolean");
  return {
    ops: ops(m),
    head: int(m, "head"),
    has_more: has,
    snapshot_seq: optInt(m, "snapshot_seq") ?? 0,
    snapshot_due: m["snapshot_due"] === true
  };
}
function decodePush(data) {
  const m = map(data);
  return {
    results: results(m),
    head: int(m, "head"),
    snapshot_seq: optInt(m, "snapshot_seq") ?? 0,
    snapshot_due: m["snapshot_due"] === true
  };
}
function decodeStatus(data) {
  const m = map(data);
  const snap = m["snapshot"];
  return {
    user: str(m, "user"),
    head: int(m, "head"),
    horizon: optInt(m, "horizon") ?? 0,
    snapshot: isMap(snap) ? { seq: int(snap, "seq"), size: int(snap, "size") } : null,
    server_time: int(m, "server_time")
  };
}
function opToWire(o) {
  const out = { id: idToWire(o.id), payload: o.payload };
  if (o.entity !== void 0) out["entity"] = o.entity;
  if (o.kind !== void 0) out["kind"] = o.kind;
  if (o.ts !== void 0) out["ts"] = o.ts;
  return out;
}
function encodePushBody(ops2, device) {
  return encode({ device, ops: ops2.map(opToWire) });
}
function encodeHello(device, since) {
  return encode({ type: "hello", device, since });
}
function encodePush(id, ops2) {
  return encode({ type: "push", id, ops: ops2.map(opToWire) });
}
function encodeAck(seq) {
  return encode({ type: "ack", seq });
}
function encodePing(id) {
  return encode({ type: "ping", id });
}
function encodeAckBody(device, seq) {
  return encode({ device, seq });
}

// src/http.ts
var SNAPSHOT_SEQ = "x-opsync-snapshot-seq";
var Http = class {
  #base;
  #token;
  #fetch;
  constructor(options) {
    this.#base = options.url.replace(/\/+$/, "");
    this.#token = options.token;
    this.#fetch = options.fetch;
  }
  /**
   * One request. Network failures become `network`, a timeout `timeout`, and error answers an
   * `OpsyncError` with the server's code and details (error bodies are always JSON).
   */
  async #request(method, path, init) {
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), init.timeoutMs);
    const onAbort = () => timeout.abort();
    init.signal?.addEventListener("abort", onAbort, { once: true });
    const headers = {
      Authorization: `Bearer ${this.#token()}`,
      Accept: init.accept ?? MSGPACK
    };
    if (init.body) headers["Content-Type"] = init.contentType ?? MSGPACK;
    let res;
    try {
      res = await this.#fetch(this.#base + path, {
        method,
        headers,
        body: init.body,
        signal: timeout.signal,
        cache: "no-store",
        credentials: "omit"
      });
    } catch (e) {
      if (init.signal?.aborted) throw new OpsyncError("closed", "the request was cancelled", { cause: e });
      if (timeout.signal.aborted) throw new OpsyncError("timeout", `${method} ${path} timed out`, { cause: e });
      throw new OpsyncError("network", `${method} ${path}: the server cannot be reached`, { cause: e });
    } finally {
      clearTimeout(timer);
      init.signal?.removeEventListener("abort", onAbort);
    }
    if (!res.ok && res.status !== 304) throw await errorOf(res, method, path);
    return res;
  }
  async #body(res) {
    try {
      return new Uint8Array(await res.arrayBuffer());
    } catch (e) {
      throw new OpsyncError("network", "the connection broke while reading an answer", { cause: e });
    }
  }
  /** `GET /v1/status`. */
  async status(signal) {
    const res = await this.#request("GET", "/v1/status", { timeoutMs: 15e3, ...signal ? { signal } : {} });
    return decodeStatus(await this.#body(res));
  }
  /** `GET /v1/ops?since=N&limit=L[&wait=S]`: a page, or a long-poll when `wait` > 0. */
  async pull(since, options = {}) {
    const wait = options.wait ?? 0;
    let path = `/v1/ops?since=${since}&limit=${options.limit ?? 1e3}`;
    if (wait > 0) path += `&wait=${wait}`;
    const res = await this.#request("GET", path, {
      timeoutMs: (wait + 15) * 1e3,
      ...options.signal ? { signal: options.signal } : {}
    });
    return decodePull(await this.#body(res));
  }
  /** `POST /v1/ops`. */
  async push(ops2, device, signal) {
    const res = await this.#request("POST", "/v1/ops", {
      body: encodePushBody(ops2, device),
      timeoutMs: 45e3,
      ...signal ? { signal } : {}
    });
    return decodePush(await this.#body(res));
  }
  /** `POST /v1/ack`. */
  async ack(device, seq) {
    await this.#request("POST", "/v1/ack", { body: encodeAckBody(device, seq), timeoutMs: 15e3 });
  }
  /** `GET /v1/snapshot`: the latest snapshot, or `null` when there is none. */
  async snapshot(signal) {
    let res;
    try {
      res = await this.#request("GET", "/v1/snapshot", {
        timeoutMs: 12e4,
        accept: "application/octet-stream",
        ...signal ? { signal } : {}
      });
    } catch (e) {
      if (e instanceof OpsyncError && e.code === "no_snapshot") return null;
      throw e;
    }
    const seq = Number(res.headers.get(SNAPSHOT_SEQ));
    if (!Number.isInteger(seq) || seq < 0)
      throw new OpsyncError("protocol", "a snapshot without a valid X-Opsync-Snapshot-Seq");
    return { seq, bytes: await this.#body(res) };
  }
  /** `PUT /v1/snapshot?seq=S[&sha256=H]`. */
  async putSnapshot(seq, bytes2) {
    let path = `/v1/snapshot?seq=${seq}`;
    const sha = await sha256Hex(bytes2);
    if (sha) path += `&sha256=${sha}`;
    await this.#request("PUT", path, {
      body: bytes2,
      contentType: "application/octet-stream",
      accept: "application/json",
      timeoutMs: 3e5
    });
  }
};
async function sha256Hex(bytes2) {
  const subtle2 = globalThis.crypto?.subtle;
  if (!subtle2) return null;
  const digest = new Uint8Array(await subtle2.digest("SHA-256", bytes2));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}
async function errorOf(res, method, path) {
  let body = {};
  try {
    const parsed = await res.json();
    if (typeof parsed === "object" && parsed !== null) body = parsed;
  } catch {
  }
  const header = Number(res.headers.get("retry-after"));
  if (typeof body["retry_after_ms"] !== "number" && Number.isFinite(header) && header > 0) {
    body = { ...body, retry_after_ms: header * 1e3 };
  }
  const code = typeof body["error"] === "string" ? body["error"] : res.status >= 500 ? "unavailable" : `http_${res.status}`;
  const message = typeof body["message"] === "string" ? body["message"] : `${method} ${path}: HTTP ${res.status}`;
  return new OpsyncError(code, message, { status: res.status, details: body });
}

// src/payload.ts
var PLAIN_V0 = 0;
function opAad(id, kind, wireEntity) {
  return `opsync/op/v1\0${id}\0${kind}\0${wireEntity}`;
}
function snapshotAad(seq) {
  return `opsync/snapshot/v1\0${seq}`;
}
function plain(inner) {
  const out = new Uint8Array(inner.length + 1);
  out[0] = PLAIN_V0;
  out.set(inner, 1);
  return out;
}
function decryptFailed(what, cause) {
  return new OpsyncError("decrypt_failed", what, cause === void 0 ? {} : { cause });
}
var PayloadCodec = class {
  #keys;
  constructor(keys) {
    this.#keys = keys;
  }
  /** Whether payloads are encrypted. */
  get encrypted() {
    return this.#keys !== null;
  }
  /** The `entity` the server sees: the key itself, or its keyed hash with encryption on. */
  async wireEntity(entity) {
    return this.#keys ? hashEntity(this.#keys, entity) : entity;
  }
  /** The payload of an op, and the entity to send with it. */
  async sealOp(id, content) {
    const inner = encode(content.kind === "del" ? { e: content.entity } : { e: content.entity, v: content.value }, {
      ignoreUndefined: true
    });
    const wireEntity = await this.wireEntity(content.entity);
    const payload = this.#keys ? await seal(this.#keys, inner, opAad(id, content.kind, wireEntity)) : plain(inner);
    return { payload, wireEntity };
  }
  /**
   * An op's content, or `null` for an op this client did not write (another kind, or a payload in
   * another format): such ops are passed to the app as they are but change no entity.
   * Throws `decrypt_failed` for an encrypted payload this codec cannot open (a wrong passphrase, a
   * tampered op, or no passphrase at all).
   */
  async openOp(op2) {
    if (op2.kind !== "put" && op2.kind !== "del") return null;
    const version = op2.payload[0];
    let inner;
    if (version === SEALED_V1) {
      if (!this.#keys) throw decryptFailed("the log is end-to-end encrypted: a passphrase is needed");
      try {
        inner = await open(this.#keys, op2.payload, opAad(op2.id, op2.kind, op2.entity ?? ""));
      } catch (e) {
        throw decryptFailed(`op ${op2.seq} cannot be decrypted: a wrong passphrase, or the op was altered`, e);
      }
    } else if (version === PLAIN_V0 && !this.#keys) {
      inner = op2.payload.subarray(1);
    } else {
      return null;
    }
    let content;
    try {
      content = decode(inner);
    } catch {
      return null;
    }
    if (typeof content !== "object" || content === null || typeof content.e !== "string")
      return null;
    const c = content;
    return { entity: c.e, kind: op2.kind, value: op2.kind === "del" ? void 0 : c.v };
  }
  /** A snapshot's bytes as uploaded. */
  async sealSnapshot(bytes2, seq) {
    return this.#keys ? seal(this.#keys, bytes2, snapshotAad(seq)) : plain(bytes2);
  }
  /** The app's bytes of a downloaded snapshot. Throws `decrypt_failed` if they cannot be read. */
  async openSnapshot(blob, seq) {
    if (blob[0] === SEALED_V1) {
      if (!this.#keys) throw decryptFailed("the snapshot is end-to-end encrypted: a passphrase is needed");
      try {
        return await open(this.#keys, blob, snapshotAad(seq));
      } catch (e) {
        throw decryptFailed(`the snapshot at seq ${seq} cannot be decrypted: a wrong passphrase, or it was altered`, e);
      }
    }
    if (blob[0] === PLAIN_V0 && !this.#keys) return blob.subarray(1);
    throw decryptFailed(`the snapshot at seq ${seq} is not in a format this client reads`);
  }
};

// src/policy.ts
var Backoff = class {
  #initial;
  #max;
  #factor;
  #random;
  #attempt = 0;
  constructor(options = {}) {
    this.#initial = options.initialMs ?? 500;
    this.#max = options.maxMs ?? 3e4;
    this.#factor = options.factor ?? 2;
    this.#random = options.random ?? Math.random;
  }
  /** How many delays were handed out since the last reset. */
  get attempt() {
    return this.#attempt;
  }
  /** The next delay (ms). */
  next() {
    const ceiling = Math.min(this.#max, this.#initial * this.#factor ** this.#attempt);
    this.#attempt += 1;
    return Math.round(ceiling / 2 + this.#random() * ceiling / 2);
  }
  /** After a connection that worked: start again from the first delay. */
  reset() {
    this.#attempt = 0;
  }
};
var TransportPolicy = class {
  #dropLimit;
  #dropWindow;
  #probeMs;
  #probeMax;
  #now;
  #mode = "websocket";
  #drops = [];
  #probeDelay;
  constructor(options = {}) {
    this.#dropLimit = options.dropLimit ?? 3;
    this.#dropWindow = options.dropWindowMs ?? 6e4;
    this.#probeMs = options.probeMs ?? 3e4;
    this.#probeMax = options.probeMaxMs ?? 3e5;
    this.#now = options.now ?? Date.now;
    this.#probeDelay = this.#probeMs;
  }
  /** The transport to connect with next. */
  get mode() {
    return this.#mode;
  }
  /** How long to wait before the next WebSocket probe while on long-poll (ms). */
  get probeDelay() {
    return this.#probeDelay;
  }
  /** A WebSocket could not be opened, but HTTP reaches the server. */
  wsUnavailable() {
    this.#fallBack();
  }
  /** An established WebSocket session ended without the client asking. */
  wsDropped() {
    const now = this.#now();
    this.#drops = this.#drops.filter((t) => now - t < this.#dropWindow);
    this.#drops.push(now);
    if (this.#drops.length >= this.#dropLimit) this.#fallBack();
  }
  /** A probe reached the server over a WebSocket: use it again. */
  probeSucceeded() {
    this.#mode = "websocket";
    this.#drops = [];
    this.#probeDelay = this.#probeMs;
  }
  /** A probe failed: keep long-polling, probe less often. */
  probeFailed() {
    this.#probeDelay = Math.min(this.#probeMax, this.#probeDelay * 2);
  }
  #fallBack() {
    if (this.#mode === "longpoll") return;
    this.#mode = "longpoll";
    this.#drops = [];
    this.#probeDelay = this.#probeMs;
  }
};

// src/replica.ts
function sameValue(a, b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) {
    return Number.isNaN(a) && Number.isNaN(b);
  }
  if (a instanceof Uint8Array || b instanceof Uint8Array) {
    return a instanceof Uint8Array && b instanceof Uint8Array && a.length === b.length && a.every((x, i) => x === b[i]);
  }
  if (a instanceof Date || b instanceof Date) {
    return a instanceof Date && b instanceof Date && a.getTime() === b.getTime();
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => sameValue(x, b[i]));
  }
  const ka = Object.keys(a).filter((k) => a[k] !== void 0);
  const kb = Object.keys(b).filter((k) => b[k] !== void 0);
  return ka.length === kb.length && ka.every((k) => sameValue(a[k], b[k]));
}
var Replica = class {
  /** The synced entities. */
  confirmed = /* @__PURE__ */ new Map();
  #queue = [];
  /** Writes handed to IndexedDB but not yet in `#queue`, so the app sees them at once. */
  #unsaved = [];
  #nextToken = 1;
  #view = /* @__PURE__ */ new Map();
  #onChange;
  constructor(onChange) {
    this.#onChange = onChange;
  }
  /** The value the app sees: the synced one with the local ops laid over it. */
  get(entity) {
    return this.#view.get(entity);
  }
  has(entity) {
    return this.#view.has(entity);
  }
  /** Every entity the app sees, in no particular order. */
  entries() {
    return [...this.#view.entries()];
  }
  get size() {
    return this.#view.size;
  }
  /** Local ops not yet confirmed, oldest first (including writes still on their way to IndexedDB). */
  pending() {
    const out = this.#queue.map((r) => ({
      id: r.id,
      entity: r.entity,
      kind: r.kind,
      value: r.value,
      sent: r.frozen,
      ts: r.ts
    }));
    return out;
  }
  /** How many local ops are not confirmed yet (coalesced writes count once). */
  get pendingCount() {
    return this.#queue.length + this.#unsaved.reduce((n, u) => n + u.writes.length, 0);
  }
  /** The queue as stored. */
  get queue() {
    return this.#queue;
  }
  /** Replaces everything (first load, a reload after another tab changed the store). */
  load(entities, queue) {
    const touched = /* @__PURE__ */ new Set([...this.#view.keys(), ...this.#queue.map((r) => r.entity)]);
    this.confirmed.clear();
    for (const e of entities) {
      this.confirmed.set(e.entity, e);
      touched.add(e.entity);
    }
    this.#queue = [...queue].sort((a, b) => a.n - b.n);
    for (const r of this.#queue) touched.add(r.entity);
    this.#refresh(touched);
  }
  /** Writes on their way to IndexedDB; the token is passed to [`saved`] once they are there. */
  unsaved(writes) {
    const token = this.#nextToken++;
    this.#unsaved.push({ token, writes });
    this.#refresh(new Set(writes.map((w) => w.entity)));
    return token;
  }
  /** The writes of `token` are in IndexedDB; `queue` is the queue now. */
  saved(token, queue) {
    const done = this.#unsaved.find((u) => u.token === token);
    this.#unsaved = this.#unsaved.filter((u) => u.token !== token);
    this.setQueue(
      queue,
      done?.writes.map((w) => w.entity)
    );
  }
  /** The queue as it now is in IndexedDB. */
  setQueue(queue, alsoTouched = []) {
    const touched = /* @__PURE__ */ new Set([...this.#queue.map((r) => r.entity), ...alsoTouched]);
    this.#queue = [...queue].sort((a, b) => a.n - b.n);
    for (const r of this.#queue) touched.add(r.entity);
    this.#refresh(touched);
  }
  /** Ops from the server were applied: new synced values, and the local ops they confirmed. */
  applied(changes, confirmed) {
    const touched = /* @__PURE__ */ new Set();
    for (const c of changes) {
      touched.add(c.entity);
      if (c.deleted) this.confirmed.delete(c.entity);
      else this.confirmed.set(c.entity, { entity: c.entity, value: c.value, seq: c.seq });
    }
    if (confirmed.size > 0) {
      this.#queue = this.#queue.filter((r) => {
        if (!confirmed.has(r.id)) return true;
        touched.add(r.entity);
        return false;
      });
    }
    this.#refresh(touched);
  }
  #compute(entity) {
    const base = this.confirmed.get(entity);
    let present = base !== void 0;
    let value = base?.value;
    const lay = (kind, v) => {
      present = kind === "put";
      value = kind === "put" ? v : void 0;
    };
    for (const r of this.#queue) if (r.entity === entity) lay(r.kind, r.value);
    for (const u of this.#unsaved) for (const w of u.writes) if (w.entity === entity) lay(w.kind, w.value);
    return { present, value };
  }
  #refresh(touched) {
    const changes = [];
    for (const entity of touched) {
      const next = this.#compute(entity);
      const had = this.#view.has(entity);
      if (!next.present) {
        if (had) {
          this.#view.delete(entity);
          changes.push({ entity, value: void 0 });
        }
      } else if (!had || !sameValue(this.#view.get(entity), next.value)) {
        this.#view.set(entity, next.value);
        changes.push({ entity, value: next.value });
      }
    }
    if (changes.length > 0) this.#onChange(changes);
  }
};

// node_modules/idb/build/index.js
var instanceOfAny = (object, constructors) => constructors.some((c) => object instanceof c);
var idbProxyableTypes;
var cursorAdvanceMethods;
function getIdbProxyableTypes() {
  return idbProxyableTypes || (idbProxyableTypes = [
    IDBIndex,
    IDBObjectStore,
    IDBCursor,
    IDBDatabase,
    IDBTransaction
  ]);
}
function getCursorAdvanceMethods() {
  return cursorAdvanceMethods || (cursorAdvanceMethods = ["advance", "continue", "continuePrimaryKey"].map((method) => IDBCursor.prototype[method]));
}
var transactionDoneMap = /* @__PURE__ */ new WeakMap();
var transformCache = /* @__PURE__ */ new WeakMap();
var reverseTransformCache = /* @__PURE__ */ new WeakMap();
function promisifyRequest(request) {
  const promise = new Promise((resolve, reject) => {
    const unlisten = () => {
      request.removeEventListener("success", success);
      request.removeEventListener("error", error);
    };
    const success = () => {
      resolve(wrap(request.result));
      unlisten();
    };
    const error = () => {
      reject(request.error);
      unlisten();
    };
    request.addEventListener("success", success);
    request.addEventListener("error", error);
  });
  reverseTransformCache.set(promise, request);
  return promise;
}
function cacheDonePromiseForTransaction(tx) {
  if (transactionDoneMap.has(tx))
    return;
  const done = new Promise((resolve, reject) => {
    const unlisten = () => {
      tx.removeEventListener("complete", complete);
      tx.removeEventListener("error", error);
      tx.removeEventListener("abort", error);
    };
    const complete = () => {
      resolve();
      unlisten();
    };
    const error = () => {
      reject(tx.error || new DOMException("AbortError", "AbortError"));
      unlisten();
    };
    tx.addEventListener("complete", complete);
    tx.addEventListener("error", error);
    tx.addEventListener("abort", error);
  });
  transactionDoneMap.set(tx, done);
}
var idbProxyTraps = {
  get(target, prop, receiver) {
    if (target instanceof IDBTransaction) {
      if (prop === "done")
        return transactionDoneMap.get(target);
      if (prop === "store") {
        return receiver.objectStoreNames[1] ? void 0 : receiver.objectStore(receiver.objectStoreNames[0]);
      }
    }
    return wrap(target[prop]);
  },
  set(target, prop, value) {
    target[prop] = value;
    return true;
  },
  has(target, prop) {
    if (target instanceof IDBTransaction && (prop === "done" || prop === "store")) {
      return true;
    }
    return prop in target;
  }
};
function replaceTraps(callback) {
  idbProxyTraps = callback(idbProxyTraps);
}
function wrapFunction(func) {
  if (getCursorAdvanceMethods().includes(func)) {
    return function(...args) {
      func.apply(unwrap(this), args);
      return wrap(this.request);
    };
  }
  return function(...args) {
    return wrap(func.apply(unwrap(this), args));
  };
}
function transformCachableValue(value) {
  if (typeof value === "function")
    return wrapFunction(value);
  if (value instanceof IDBTransaction)
    cacheDonePromiseForTransaction(value);
  if (instanceOfAny(value, getIdbProxyableTypes()))
    return new Proxy(value, idbProxyTraps);
  return value;
}
function wrap(value) {
  if (value instanceof IDBRequest)
    return promisifyRequest(value);
  if (transformCache.has(value))
    return transformCache.get(value);
  const newValue = transformCachableValue(value);
  if (!Object.is(newValue, value)) {
    transformCache.set(value, newValue);
    reverseTransformCache.set(newValue, value);
  }
  return newValue;
}
var unwrap = (value) => reverseTransformCache.get(value);
function openDB(name, version, { blocked, upgrade, blocking, terminated } = {}) {
  const request = indexedDB.open(name, version);
  const openPromise = wrap(request);
  if (upgrade) {
    request.addEventListener("upgradeneeded", (event) => {
      upgrade(wrap(request.result), event.oldVersion, event.newVersion, wrap(request.transaction), event);
    });
  }
  if (blocked) {
    request.addEventListener("blocked", (event) => blocked(
      // Casting due to https://github.com/microsoft/TypeScript-DOM-lib-generator/pull/1405
      event.oldVersion,
      event.newVersion,
      event
    ));
  }
  openPromise.then((db) => {
    if (terminated)
      db.addEventListener("close", () => terminated());
    if (blocking) {
      db.addEventListener("versionchange", (event) => blocking(event.oldVersion, event.newVersion, event));
    }
  }).catch(() => {
  });
  return openPromise;
}
var readMethods = ["get", "getKey", "getAll", "getAllKeys", "count"];
var writeMethods = ["put", "add", "delete", "clear"];
var cachedMethods = {};
function getMethod(target, prop) {
  if (!(target instanceof IDBDatabase && !(prop in target) && typeof prop === "string")) {
    return;
  }
  if (cachedMethods[prop])
    return cachedMethods[prop];
  const targetFuncName = prop.replace(/FromIndex$/, "");
  const useIndex = prop !== targetFuncName;
  const isWrite = writeMethods.includes(targetFuncName);
  if (
    // Bail if the target doesn't exist on the target. Eg, getAll isn't in Edge.
    !(targetFuncName in (useIndex ? IDBIndex : IDBObjectStore).prototype) || !(isWrite || readMethods.includes(targetFuncName))
  ) {
    return;
  }
  const method = async function(storeName, ...args) {
    const tx = this.transaction(storeName, isWrite ? "readwrite" : "readonly");
    let target2 = tx.store;
    if (useIndex)
      target2 = target2.index(args.shift());
    return (await Promise.all([
      target2[targetFuncName](...args),
      isWrite && tx.done
    ]))[0];
  };
  return cachedMethods[prop] = method;
}
replaceTraps((oldTraps) => ({
  ...oldTraps,
  get: (target, prop, receiver) => getMethod(target, prop) || oldTraps.get(target, prop, receiver),
  has: (target, prop) => !!getMethod(target, prop) || oldTraps.has(target, prop)
}));
var advanceMethodProps = ["advance", "continue", "continuePrimaryKey"];
var methodMap = {};
var advanceResults = /* @__PURE__ */ new WeakMap();
var ittrProxiedCursorToOriginalProxy = /* @__PURE__ */ new WeakMap();
var cursorIteratorTraps = {
  get(target, prop) {
    if (!advanceMethodProps.includes(prop))
      return target[prop];
    let cachedFunc = methodMap[prop];
    if (!cachedFunc) {
      cachedFunc = methodMap[prop] = function(...args) {
        advanceResults.set(this, ittrProxiedCursorToOriginalProxy.get(this)[prop](...args));
      };
    }
    return cachedFunc;
  }
};
async function* iterate(...args) {
  let cursor = this;
  if (!(cursor instanceof IDBCursor)) {
    cursor = await cursor.openCursor(...args);
  }
  if (!cursor)
    return;
  cursor = cursor;
  const proxiedCursor = new Proxy(cursor, cursorIteratorTraps);
  ittrProxiedCursorToOriginalProxy.set(proxiedCursor, cursor);
  reverseTransformCache.set(proxiedCursor, unwrap(cursor));
  while (cursor) {
    yield proxiedCursor;
    cursor = await (advanceResults.get(proxiedCursor) || cursor.continue());
    advanceResults.delete(proxiedCursor);
  }
}
function isIteratorProp(target, prop) {
  return prop === Symbol.asyncIterator && instanceOfAny(target, [IDBIndex, IDBObjectStore, IDBCursor]) || prop === "iterate" && instanceOfAny(target, [IDBIndex, IDBObjectStore]);
}
replaceTraps((oldTraps) => ({
  ...oldTraps,
  get(target, prop, receiver) {
    if (isIteratorProp(target, prop))
      return iterate;
    return oldTraps.get(target, prop, receiver);
  },
  has(target, prop) {
    return isIteratorProp(target, prop) || oldTraps.has(target, prop);
  }
}));

// src/store.ts
var Store = class _Store {
  #db;
  constructor(db) {
    this.#db = db;
  }
  /** Opens (creating if needed) the database `name`. `factory` is for tests (fake-indexeddb). */
  static async open(name, factory) {
    const saved = globalThis.indexedDB;
    if (factory) globalThis.indexedDB = factory;
    try {
      const db = await openDB(name, 1, {
        upgrade(db2) {
          db2.createObjectStore("meta");
          db2.createObjectStore("entities", { keyPath: "entity" });
          const queue = db2.createObjectStore("queue", { keyPath: "n", autoIncrement: true });
          queue.createIndex("id", "id", { unique: true });
          queue.createIndex("entity", "entity");
        },
        blocking() {
          db.close();
        }
      });
      return new _Store(db);
    } finally {
      if (factory) globalThis.indexedDB = saved;
    }
  }
  close() {
    this.#db.close();
  }
  /** Everything, in one read transaction. */
  async load() {
    const tx = this.#db.transaction(["meta", "entities", "queue"], "readonly");
    const [cursor, user, device, entities, queue] = await Promise.all([
      tx.objectStore("meta").get("cursor"),
      tx.objectStore("meta").get("user"),
      tx.objectStore("meta").get("device"),
      tx.objectStore("entities").getAll(),
      tx.objectStore("queue").getAll()
    ]);
    await tx.done;
    return {
      cursor: typeof cursor === "number" ? cursor : 0,
      user: typeof user === "string" ? user : null,
      device: typeof device === "string" ? device : null,
      entities,
      queue
    };
  }
  async queue() {
    return this.#db.getAll("queue");
  }
  async entities() {
    return this.#db.getAll("entities");
  }
  /** The device name, generated and kept on first use (the same name for every later session). */
  async device(generate) {
    const tx = this.#db.transaction("meta", "readwrite");
    const current = await tx.store.get("device");
    let device;
    if (typeof current === "string") {
      device = current;
    } else {
      device = generate();
      await tx.store.put(device, "device");
    }
    await tx.done;
    return device;
  }
  async setUser(user) {
    await this.#db.put("meta", user, "user");
  }
  /**
   * Queues writes. A coalescing write to an entity whose last queued op is an unfrozen draft (not part
   * of a batch) replaces that draft's content and keeps its id; anything else gets a new op with a new
   * UUID v7. A write that does not coalesce, or a batch, makes every earlier draft ready at once, so
   * ops are pushed in the order they were made.
   */
  async enqueue(writes, options) {
    const { now, coalesceMs, maxWaitMs, batch } = options;
    const tx = this.#db.transaction("queue", "readwrite");
    const queue = tx.store;
    let lastN = (await queue.openCursor(null, "prev"))?.value.n ?? 0;
    for (const w of writes) {
      const coalesce = w.coalesce && batch === null;
      if (coalesce) {
        const mine = await queue.index("entity").getAll(w.entity);
        const last = mine.reduce((a, r) => a && a.n > r.n ? a : r, void 0);
        if (last && !last.frozen && last.coalesce && last.batch === null && last.seq === null) {
          last.kind = w.kind;
          last.value = w.value;
          last.ts = now;
          last.rev += 1;
          last.payload = null;
          last.wireEntity = null;
          if (last.n === lastN) last.readyAt = Math.min(now + coalesceMs, last.firstAt + maxWaitMs);
          await queue.put(last);
          continue;
        }
      } else {
        for (let c = await queue.openCursor(); c; c = await c.continue()) {
          if (!c.value.frozen && c.value.readyAt > now) await c.update({ ...c.value, readyAt: now });
        }
      }
      const record = {
        id: v7_default(),
        entity: w.entity,
        kind: w.kind,
        value: w.value,
        ts: now,
        firstAt: now,
        readyAt: coalesce ? now + coalesceMs : now,
        coalesce,
        batch,
        frozen: false,
        rev: 0,
        payload: null,
        wireEntity: null,
        seq: null
      };
      lastN = await queue.add(record);
    }
    const all = await queue.getAll();
    await tx.done;
    return all;
  }
  /** Makes every draft ready now (`flush()`). */
  async release(now) {
    const tx = this.#db.transaction("queue", "readwrite");
    for (let c = await tx.store.openCursor(); c; c = await c.continue()) {
      if (!c.value.frozen && c.value.readyAt > now) await c.update({ ...c.value, readyAt: now });
    }
    const all = await tx.store.getAll();
    await tx.done;
    return all;
  }
  /** Fixes the content of queued ops before their first push; returns them as they now are. */
  async freeze(ns) {
    const tx = this.#db.transaction("queue", "readwrite");
    const out = [];
    for (const n of ns) {
      const r = await tx.store.get(n);
      if (!r) continue;
      if (!r.frozen) {
        r.frozen = true;
        await tx.store.put(r);
      }
      out.push(r);
    }
    await tx.done;
    return out;
  }
  /** Keeps the payload an op is pushed with, so that every retry sends the same bytes. */
  async setPayload(n, payload, wireEntity) {
    const tx = this.#db.transaction("queue", "readwrite");
    const r = await tx.store.get(n);
    if (r && r.frozen && r.payload === null) {
      r.payload = payload;
      r.wireEntity = wireEntity;
      await tx.store.put(r);
    }
    await tx.done;
  }
  /** Records the seqs the server answered for pushed ops that have not come back yet. */
  async acknowledge(results2) {
    const tx = this.#db.transaction("queue", "readwrite");
    for (const { id, seq } of results2) {
      const r = await tx.store.index("id").get(id);
      if (r) await tx.store.put({ ...r, seq });
    }
    await tx.done;
  }
  /** Removes queued ops the server refused for good (nothing of them was stored). */
  async drop(ids) {
    const tx = this.#db.transaction("queue", "readwrite");
    for (const id of ids) {
      const key = await tx.store.index("id").getKey(id);
      if (key !== void 0) await tx.store.delete(key);
    }
    await tx.done;
  }
  /**
   * Applies ops from the server: the entity changes, the removal of the local ops among them, and the
   * new cursor, all or nothing.
   */
  async apply(changes, confirmed, cursor) {
    const tx = this.#db.transaction(["entities", "queue", "meta"], "readwrite");
    const entities = tx.objectStore("entities");
    const queue = tx.objectStore("queue");
    for (const c of changes) {
      if (c.deleted) await entities.delete(c.entity);
      else await entities.put({ entity: c.entity, value: c.value, seq: c.seq });
    }
    for (const id of confirmed) {
      const key = await queue.index("id").getKey(id);
      if (key !== void 0) await queue.delete(key);
    }
    await tx.objectStore("meta").put(cursor, "cursor");
    await tx.done;
  }
  /**
   * Replaces the synced state with a snapshot at `seq` (bootstrap, resync). Local ops stay queued,
   * except those the snapshot already holds.
   */
  async replace(entities, seq) {
    const tx = this.#db.transaction(["entities", "queue", "meta"], "readwrite");
    const store = tx.objectStore("entities");
    await store.clear();
    for (const e of entities) await store.put(e);
    const queue = tx.objectStore("queue");
    for (let c = await queue.openCursor(); c; c = await c.continue()) {
      if (c.value.seq !== null && c.value.seq <= seq) await c.delete();
    }
    await tx.objectStore("meta").put(seq, "cursor");
    await tx.done;
  }
  /**
   * The server's log is not the one the cursor belongs to (`since_beyond_head`: restored from an older
   * backup, or another server): forget the synced state; local ops stay queued, to be pushed again.
   */
  async forgetLog() {
    const tx = this.#db.transaction(["entities", "queue", "meta"], "readwrite");
    await tx.objectStore("entities").clear();
    const queue = tx.objectStore("queue");
    for (let c = await queue.openCursor(); c; c = await c.continue()) {
      if (c.value.seq !== null) await c.update({ ...c.value, seq: null });
    }
    await tx.objectStore("meta").put(0, "cursor");
    await tx.done;
  }
  /** Another user's data: forget everything but the device name. */
  async wipe() {
    const tx = this.#db.transaction(["entities", "queue", "meta"], "readwrite");
    await tx.objectStore("entities").clear();
    await tx.objectStore("queue").clear();
    const meta = tx.objectStore("meta");
    await meta.delete("user");
    await meta.put(0, "cursor");
    await tx.done;
  }
  /**
   * Writes the app's rebase decision: each edit drops an unfrozen op or gives it new content. An op
   * frozen or changed meanwhile (its `rev` moved, say by a write in another tab) is left as it is now.
   */
  async rebase(edits) {
    const tx = this.#db.transaction("queue", "readwrite");
    for (const edit of edits) {
      const now = await tx.store.get(edit.n);
      if (!now || now.rev !== edit.rev || now.frozen) continue;
      if (edit.drop) {
        await tx.store.delete(edit.n);
      } else {
        await tx.store.put({
          ...now,
          kind: edit.kind,
          value: edit.value,
          rev: now.rev + 1,
          payload: null,
          wireEntity: null
        });
      }
    }
    const all = await tx.store.getAll();
    await tx.done;
    return all;
  }
};

// src/client.ts
var MAX_OPS_PER_PUSH = 500;
var MAX_PUSH_BYTES = 4 * 1024 * 1024;
var MAX_OP_BYTES = 256 * 1024 - 64;
var MAX_BATCH_OPS = 1e3;
var SNAPSHOT_CHECK_MS = 10 * 6e4;
var HEALTHY_MS = 5e3;
var WELCOME_TIMEOUT_MS = 1e4;
var PONG_TIMEOUT_MS = 1e4;
var ACK_DELAY_MS = 1e3;
var QUOTA_RETRY_MS = 6e4;
function defaultSerialize(state) {
  return encode({ v: 1, entities: [...state.entries()] }, { ignoreUndefined: true });
}
function defaultDeserialize(bytes2) {
  const v = decode(bytes2);
  if (v?.v !== 1 || !Array.isArray(v.entities)) throw new OpsyncError("protocol", "a snapshot in an unknown format");
  return v.entities;
}
function generateDevice() {
  const alphabet = "abcdefghijklmnopqrstuvwxyz234567";
  const bytes2 = globalThis.crypto.getRandomValues(new Uint8Array(16));
  let id = "web-";
  for (const b of bytes2) id += alphabet[b % 32];
  return id;
}
function websocketUrl(base) {
  const url = new URL("/v1/ws", base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}
function browserOnline() {
  const nav = globalThis.navigator;
  return nav?.onLine !== false;
}
var Opsync = class _Opsync extends Emitter {
  #options;
  #url;
  #dbName;
  #coalesceMs;
  #http;
  #replica;
  #policy;
  #backoff;
  #WebSocket;
  #store;
  #token;
  #device = "";
  #user = null;
  #cursor = 0;
  #head = 0;
  #codec = null;
  #leader = false;
  #online = false;
  #transport = "offline";
  #paused;
  #closed = false;
  #fatal = null;
  #needResync = false;
  #session = null;
  #wake = null;
  #flushTimer = null;
  #lock = Promise.resolve();
  #writes = Promise.resolve();
  #channel = null;
  #releaseLeadership = null;
  #lockAbort = null;
  #reloading = null;
  #reloadAgain = false;
  #lastStatus = "";
  #leaderStatus = null;
  #snapshotChecked = -1;
  #snapshotCheckedAt = 0;
  #lastReset = 0;
  #snapshotBusy = false;
  /** No push before this time (a rate limit, the storage quota, an overloaded server). */
  #pushHoldUntil = 0;
  #waiters = [];
  #onOnline = () => this.#wakeUp();
  #onOffline = () => this.#session?.stop({ kind: "stopped" });
  constructor(options) {
    super();
    const origin = globalThis.location?.origin;
    const url = options.url ?? origin;
    if (!url) throw new OpsyncError("invalid_option", "url is required outside a browser page");
    if (!options.token) throw new OpsyncError("invalid_option", "token is required");
    if (options.encryption && !globalThis.crypto?.subtle) {
      throw new OpsyncError(
        "invalid_option",
        "end-to-end encryption needs WebCrypto: serve the page over https or from localhost"
      );
    }
    this.#options = options;
    this.#url = url.replace(/\/+$/, "");
    this.#dbName = options.name ?? `opsync ${this.#url}`;
    this.#coalesceMs = Math.max(0, options.coalesceMs ?? 500);
    this.#token = options.token;
    this.#paused = options.paused ?? false;
    const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.#http = new Http({ url: this.#url, token: () => this.#token, fetch: fetchImpl });
    this.#replica = new Replica((changes) => this.emit("change", changes));
    this.#policy = new TransportPolicy(options.fallback);
    this.#backoff = new Backoff(options.backoff);
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
  }
  /**
   * Opens the local store and starts syncing in the background. Resolves once the local state is
   * loaded (it does not wait for the server: the client works offline from the start).
   */
  static async connect(options) {
    const sync = new _Opsync(options);
    await sync.#start();
    return sync;
  }
  async #start() {
    this.#store = await Store.open(this.#dbName, this.#options.indexedDB);
    this.#device = this.#options.device ?? await this.#store.device(generateDevice);
    const loaded = await this.#store.load();
    this.#cursor = loaded.cursor;
    this.#user = loaded.user;
    this.#replica.load(loaded.entities, loaded.queue);
    if (typeof BroadcastChannel !== "undefined") {
      this.#channel = new BroadcastChannel(this.#dbName);
      this.#channel.onmessage = (e) => this.#onChannel(e.data);
    }
    const target = globalThis;
    target.addEventListener?.("online", this.#onOnline);
    target.addEventListener?.("offline", this.#onOffline);
    this.#electLeader();
    this.#statusChanged();
  }
  // ---- the app's API -------------------------------------------------------------------------
  /** The value of an entity as the app sees it (local writes included), or `undefined`. */
  get(entity) {
    return this.#replica.get(entity);
  }
  has(entity) {
    return this.#replica.has(entity);
  }
  /** Every entity as the app sees it. */
  entries() {
    return this.#replica.entries();
  }
  /** Local ops not confirmed by the server yet, oldest first. */
  pending() {
    return this.#replica.pending();
  }
  /**
   * Writes an entity. Resolves once the op is stored locally (not when the server has it); rejects
   * for a key that is not a non-empty string, or an op over 256 KiB.
   */
  put(entity, value, options = {}) {
    return settle(
      () => this.#write([this.#checked({ entity, kind: "put", value, coalesce: options.coalesce ?? true })], null)
    );
  }
  /** Deletes an entity. */
  del(entity, options = {}) {
    return settle(
      () => this.#write([this.#checked({ entity, kind: "del", value: void 0, coalesce: options.coalesce ?? true })], null)
    );
  }
  /** Writes several entities as one unit: pushed in one push, so stored all together or not at all. */
  batch(build) {
    return settle(() => {
      const writes = [];
      build({
        put: (entity, value) => void writes.push(this.#checked({ entity, kind: "put", value, coalesce: false })),
        del: (entity) => void writes.push(this.#checked({ entity, kind: "del", value: void 0, coalesce: false }))
      });
      if (writes.length === 0) return Promise.resolve();
      if (writes.length > MAX_BATCH_OPS) {
        throw new OpsyncError("too_many_ops", `a batch holds at most ${MAX_BATCH_OPS} ops`);
      }
      return this.#write(writes, generateBatchId());
    });
  }
  /** Pushes now what waits in the coalescing window. */
  async flush() {
    this.#pushHoldUntil = 0;
    await this.#writes.catch(() => void 0);
    const queue = await this.#exclusive(() => this.#store.release(Date.now()));
    this.#replica.setQueue(queue);
    this.#post({ t: "queue" });
    if (this.#leader) this.#session?.kick();
    else this.#post({ t: "cmd", cmd: "flush" });
  }
  /** Resolves when no local op is pending (every write is confirmed by the server). */
  synced() {
    if (this.#replica.pendingCount === 0) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
  /** The current status (see the `status` event). */
  get status() {
    return this.#status();
  }
  /** The device name this client syncs as. */
  get device() {
    return this.#device;
  }
  /** Stops syncing: writes are queued until `resume()` (the app's "work offline" switch). */
  pause() {
    this.#paused = true;
    if (this.#leader) this.#session?.stop({ kind: "stopped" });
    else this.#post({ t: "cmd", cmd: "pause" });
    this.#statusChanged();
  }
  /** Syncs again after `pause()`, or retries after an error stopped syncing. */
  resume() {
    this.#paused = false;
    this.#fatal = null;
    this.#backoff.reset();
    if (!this.#leader) this.#post({ t: "cmd", cmd: "resume" });
    this.#wakeUp();
    this.#statusChanged();
  }
  /** Uses another token from now on (for example after `token_expired`), and reconnects. */
  setToken(token) {
    this.#token = token;
    this.#fatal = null;
    this.#session?.stop({ kind: "stopped" });
    this.#wakeUp();
    this.#statusChanged();
  }
  /** Stops syncing and closes the local store. */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#session?.stop({ kind: "stopped" });
    this.#wakeUp();
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    const target = globalThis;
    target.removeEventListener?.("online", this.#onOnline);
    target.removeEventListener?.("offline", this.#onOffline);
    this.#lockAbort?.abort();
    this.#releaseLeadership?.();
    this.#channel?.close();
    await this.#writes.catch(() => void 0);
    await this.#lock.catch(() => void 0);
    this.#store.close();
  }
  // ---- local writes --------------------------------------------------------------------------
  #checked(w) {
    if (this.#closed) throw new OpsyncError("closed", "the client is closed");
    if (typeof w.entity !== "string" || w.entity.length === 0) {
      throw new OpsyncError("invalid_op", "an entity key is a non-empty string");
    }
    const size = encode({ e: w.entity, v: w.value }, { ignoreUndefined: true }).length;
    if (size > MAX_OP_BYTES) {
      throw new OpsyncError("op_too_large", `the op is ${size} bytes; the server takes at most ${MAX_OP_BYTES}`);
    }
    if (!this.#options.encryption && new TextEncoder().encode(w.entity).length > 256) {
      throw new OpsyncError("invalid_op", "an entity key is at most 256 bytes");
    }
    return w;
  }
  #write(writes, batch) {
    const token = this.#replica.unsaved(writes);
    this.#statusChanged();
    const run = async () => {
      try {
        const queue = await this.#exclusive(
          () => this.#store.enqueue(writes, {
            now: Date.now(),
            coalesceMs: this.#coalesceMs,
            maxWaitMs: this.#coalesceMs * 4,
            batch
          })
        );
        this.#replica.saved(token, queue);
      } catch (e) {
        this.#replica.saved(token, [...this.#replica.queue]);
        throw e;
      } finally {
        this.#statusChanged();
      }
      this.#post({ t: "queue" });
      if (this.#leader) this.#session?.kick();
    };
    const done = this.#writes.then(run, run);
    this.#writes = done.catch(() => void 0);
    return done;
  }
  // ---- tabs ----------------------------------------------------------------------------------
  #electLeader() {
    const locks = globalThis.navigator?.locks;
    if (!locks?.request) {
      void this.#becomeLeader();
      return;
    }
    this.#lockAbort = new AbortController();
    locks.request(`opsync ${this.#dbName}`, { signal: this.#lockAbort.signal }, async () => {
      if (this.#closed) return;
      await this.#becomeLeader();
      await new Promise((resolve) => {
        this.#releaseLeadership = resolve;
      });
    }).catch(() => void 0);
    this.#post({ t: "hello" });
  }
  async #becomeLeader() {
    this.#leader = true;
    this.#leaderStatus = null;
    await this.#reload();
    this.#statusChanged();
    void this.#run();
  }
  #post(msg) {
    try {
      this.#channel?.postMessage(msg);
    } catch {
    }
  }
  #onChannel(msg) {
    if (this.#closed) return;
    switch (msg.t) {
      case "queue":
      case "applied":
        void this.#reloadSoon(msg.t === "queue" && this.#leader);
        break;
      case "reset":
        void this.#reloadSoon(false).then(() => this.emit("reset", msg.info));
        break;
      case "status":
        if (!this.#leader) {
          const s = msg.status;
          this.#leaderStatus = {
            ...s,
            leader: false,
            error: s.error ? new OpsyncError(s.error.code, s.error.message) : null
          };
          this.#statusChanged();
        }
        break;
      case "hello":
        if (this.#leader) this.#broadcastStatus(this.#status());
        break;
      case "cmd":
        if (!this.#leader) break;
        if (msg.cmd === "pause") this.pause();
        else if (msg.cmd === "resume") this.resume();
        else void this.flush();
        break;
    }
  }
  /** Reloads from IndexedDB after another tab changed it (coalesced: one reload at a time). */
  async #reloadSoon(kick) {
    if (this.#reloading) {
      this.#reloadAgain = true;
      return this.#reloading;
    }
    this.#reloading = (async () => {
      do {
        this.#reloadAgain = false;
        await this.#reload();
      } while (this.#reloadAgain);
    })().finally(() => {
      this.#reloading = null;
    });
    await this.#reloading;
    this.#statusChanged();
    if (kick) this.#session?.kick();
  }
  async #reload() {
    await this.#exclusive(async () => {
      const loaded = await this.#store.load();
      this.#cursor = loaded.cursor;
      this.#user = loaded.user;
      this.#replica.load(loaded.entities, loaded.queue);
    });
  }
  /** Runs `fn` alone among the leader's store-and-replica updates, so their reads and writes do not interleave. */
  #exclusive(fn) {
    const run = this.#lock.then(fn, fn);
    this.#lock = run.catch(() => void 0);
    return run;
  }
  // ---- status --------------------------------------------------------------------------------
  #status() {
    const leaderView = !this.#leader && this.#leaderStatus;
    return {
      online: leaderView ? leaderView.online : this.#online,
      transport: leaderView ? leaderView.transport : this.#transport,
      pending: this.#replica.pendingCount,
      seq: this.#cursor,
      head: Math.max(this.#head, this.#cursor, leaderView ? leaderView.head : 0),
      paused: leaderView ? leaderView.paused : this.#paused,
      error: leaderView ? leaderView.error : this.#fatal,
      leader: this.#leader,
      device: this.#device,
      user: this.#user
    };
  }
  #statusChanged() {
    const status = this.#status();
    const key = JSON.stringify({ ...status, error: status.error?.code ?? null });
    if (status.pending === 0 && this.#waiters.length > 0) {
      const waiters = this.#waiters;
      this.#waiters = [];
      for (const w of waiters) w();
    }
    if (key === this.#lastStatus) return;
    this.#lastStatus = key;
    if (this.#leader) this.#broadcastStatus(status);
    this.emit("status", status);
  }
  #broadcastStatus(status) {
    const { leader: _leader, error, ...rest } = status;
    this.#post({
      t: "status",
      status: { ...rest, error: error ? { code: error.code, message: error.message } : null }
    });
  }
  #setOnline(transport) {
    this.#online = transport !== null;
    this.#transport = transport ?? "offline";
    this.#statusChanged();
  }
  // ---- the engine (leader only) --------------------------------------------------------------
  #wakeUp() {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
  /** Waits `ms` (forever if undefined), or until something wakes the engine. */
  #sleep(ms) {
    return new Promise((resolve) => {
      const timer = ms === void 0 ? null : setTimeout(done, ms);
      function done() {
        if (timer) clearTimeout(timer);
        resolve();
      }
      this.#wake = done;
    });
  }
  async #run() {
    while (!this.#closed) {
      try {
        await this.#cycle();
      } catch (e) {
        if (this.#closed) break;
        this.emit("error", e instanceof OpsyncError ? e : new OpsyncError("internal", String(e), { cause: e }));
        await this.#sleep(this.#backoff.next());
      }
    }
  }
  /** One connection: prepare, run a session until it ends, then wait as its outcome asks. */
  async #cycle() {
    if (this.#fatal || this.#paused || !browserOnline()) {
      this.#setOnline(null);
      await this.#sleep(browserOnline() ? void 0 : 5e3);
      return;
    }
    let outcome;
    try {
      await this.#prepare();
      const forced = this.#options.transport;
      const mode = forced === "websocket" || forced === "longpoll" ? forced : this.#policy.mode;
      outcome = mode === "websocket" && this.#WebSocket ? await this.#runWebSocket() : await this.#runLongPoll();
    } catch (e) {
      outcome = this.#outcomeOf(e, 0);
    }
    this.#session = null;
    this.#setOnline(null);
    if (this.#closed) return;
    switch (outcome.kind) {
      case "stopped":
        break;
      case "ws-unavailable":
        if (this.#options.transport === "websocket") await this.#sleep(this.#backoff.next());
        else this.#policy.wsUnavailable();
        break;
      case "dropped":
        if (outcome.error instanceof OpsyncError && outcome.error.code === "protocol")
          this.emit("error", outcome.error);
        if (outcome.connectedMs >= HEALTHY_MS) this.#backoff.reset();
        await this.#sleep(Math.max(this.#backoff.next(), outcome.waitMs ?? 0));
        break;
      case "resync":
        this.#needResync = true;
        await this.#sleep(this.#resetDelay());
        break;
      case "forget":
        await this.#sleep(this.#resetDelay());
        await this.#exclusive(() => this.#store.forgetLog());
        await this.#reload();
        this.#announceReset({ reason: "log_replaced", seq: 0 });
        break;
      case "fatal":
        this.#fatal = outcome.error;
        this.emit("error", outcome.error);
        this.#statusChanged();
        break;
    }
  }
  /** None for a first resync; a server that keeps asking for one gets the backoff, not a busy loop. */
  #resetDelay() {
    const now = Date.now();
    const recent = now - this.#lastReset < 1e4;
    this.#lastReset = now;
    return recent ? this.#backoff.next() : 0;
  }
  #outcomeOf(e, connectedMs) {
    if (e instanceof OpsyncError) {
      if (AUTH_CODES.has(e.code) || e.code === "account_deleted" || e.code === "decrypt_failed") {
        return { kind: "fatal", error: e };
      }
      if (e.code === "resync_required") return { kind: "resync" };
      if (e.code === "since_beyond_head") return { kind: "forget" };
      if (e.code === "closed") return { kind: "stopped" };
    }
    if (!isTransient(e) && e instanceof OpsyncError && e.code !== "protocol") this.emit("error", e);
    const waitMs = retryAfterMs(e);
    return waitMs === void 0 ? { kind: "dropped", connectedMs, error: e } : { kind: "dropped", connectedMs, error: e, waitMs };
  }
  #announceReset(info) {
    this.#post({ t: "reset", info });
    this.emit("reset", info);
    this.#statusChanged();
  }
  /** Before each connection: who the token is, whether the local state fits the server's log. */
  async #prepare() {
    const status = await this.#http.status();
    this.#head = status.head;
    if (this.#user !== status.user) {
      if (this.#user !== null) {
        await this.#exclusive(() => this.#store.wipe());
        this.#codec = null;
        await this.#reload();
        this.#announceReset({ reason: "user_changed", seq: 0 });
      }
      await this.#store.setUser(status.user);
      this.#user = status.user;
    }
    if (!this.#codec) {
      const e2e = this.#options.encryption;
      if (e2e) {
        const salt = e2e.salt ?? await userSalt(status.user);
        this.#codec = new PayloadCodec(await deriveKeys(e2e.passphrase, salt, e2e.iterations ?? DEFAULT_ITERATIONS));
      } else {
        this.#codec = new PayloadCodec(null);
      }
    }
    if (this.#cursor > status.head)
      throw new OpsyncError("since_beyond_head", "the server's log is behind this client");
    const fresh = this.#cursor === 0 && this.#replica.confirmed.size === 0;
    const belowHorizon = status.horizon > 0 && this.#cursor < status.horizon;
    if (this.#needResync || belowHorizon || fresh && status.snapshot !== null) {
      await this.#bootstrap(fresh ? "snapshot" : "resync", belowHorizon || this.#needResync);
      this.#needResync = false;
    }
    this.#statusChanged();
  }
  /** Loads the latest snapshot in place of the synced state. */
  async #bootstrap(reason, required) {
    const codec = this.#codec;
    if (!codec) return;
    const snap = await this.#http.snapshot();
    if (!snap) {
      if (required) throw new OpsyncError("unavailable", "the server asks for a resync but has no snapshot yet");
      return;
    }
    if (snap.seq <= this.#cursor) return;
    const bytes2 = await codec.openSnapshot(snap.bytes, snap.seq);
    const entries = await (this.#options.snapshot?.deserialize ?? defaultDeserialize)(bytes2, snap.seq);
    const records = [];
    for (const [entity, value] of entries) records.push({ entity, value, seq: snap.seq });
    await this.#exclusive(() => this.#store.replace(records, snap.seq));
    await this.#reload();
    this.#announceReset({ reason, seq: snap.seq });
  }
  // ---- applying what the server sends --------------------------------------------------------
  /** Ops from the server, in seq order (ops at or below the cursor are ones already applied). */
  async #applyServerOps(ops2) {
    const codec = this.#codec;
    if (!codec) throw new OpsyncError("protocol", "ops before the session was prepared");
    const fresh = ops2.filter((o) => o.seq > this.#cursor);
    if (fresh.length === 0) return;
    const mine = new Map(this.#replica.queue.map((r) => [r.id, r]));
    const items = [];
    for (const op2 of fresh) {
      const local = mine.get(op2.id);
      items.push({
        seq: op2.seq,
        id: op2.id,
        device: op2.device,
        ts: op2.ts ?? null,
        receivedAt: op2.received_at,
        content: local ? { entity: local.entity, kind: local.kind, value: local.value } : await codec.openOp(op2),
        kind: local ? local.kind : op2.kind ?? null,
        local: local !== void 0
      });
    }
    await this.#applyItems(items);
  }
  async #applyItems(items) {
    const last = items.at(-1);
    if (!last) return;
    const changes = /* @__PURE__ */ new Map();
    const confirmed = /* @__PURE__ */ new Set();
    const synced = [];
    for (const it of items) {
      if (it.local) confirmed.add(it.id);
      if (it.content) {
        const c = it.content;
        changes.set(c.entity, { entity: c.entity, value: c.value, deleted: c.kind === "del", seq: it.seq });
      }
      synced.push({
        seq: it.seq,
        id: it.id,
        entity: it.content?.entity ?? null,
        kind: it.kind,
        value: it.content?.value,
        device: it.device,
        ts: it.ts,
        receivedAt: it.receivedAt,
        local: it.local
      });
    }
    await this.#exclusive(async () => {
      for (const r of this.#replica.queue) if (r.seq !== null && r.seq <= last.seq) confirmed.add(r.id);
      await this.#store.apply([...changes.values()], [...confirmed], last.seq);
      this.#cursor = last.seq;
      this.#head = Math.max(this.#head, last.seq);
      this.#replica.applied([...changes.values()], confirmed);
    });
    this.#post({ t: "applied" });
    this.emit("ops", synced);
    this.#statusChanged();
    if (this.#transport === "websocket") void this.#checkSnapshotDue();
    const remote = synced.filter((o) => !o.local);
    if (remote.length > 0 && this.#replica.queue.length > 0 && this.#options.rebase) await this.#rebase(remote);
  }
  async #rebase(remote) {
    const hook = this.#options.rebase;
    if (!hook) return;
    const before = [...this.#replica.queue];
    let result;
    try {
      result = await hook(remote, this.#replica.pending());
    } catch (e) {
      this.emit("error", new OpsyncError("rebase_failed", `the rebase hook threw: ${String(e)}`, { cause: e }));
      return;
    }
    if (!Array.isArray(result)) return;
    const decided = new Map(result.map((p) => [p.id, p]));
    const edits = before.flatMap((r) => {
      if (r.frozen) return [];
      const p = decided.get(r.id);
      if (!p) return [{ n: r.n, rev: r.rev, drop: true }];
      const kind = p.kind === "del" ? "del" : "put";
      const value = kind === "del" ? void 0 : p.value;
      if (kind === r.kind && sameValue(value, r.value)) return [];
      return [{ n: r.n, rev: r.rev, drop: false, kind, value }];
    });
    if (edits.length === 0) return;
    const queue = await this.#exclusive(() => this.#store.rebase(edits));
    this.#replica.setQueue(queue);
    this.#post({ t: "queue" });
    this.#statusChanged();
  }
  // ---- pushing -------------------------------------------------------------------------------
  /** The next push: the oldest ready ops (whole batches), frozen and sealed. `null` when none is ready. */
  async #plan() {
    const codec = this.#codec;
    if (!codec) return null;
    const held = this.#pushHoldUntil - Date.now();
    if (held > 0) {
      this.#flushAt(held);
      return null;
    }
    return this.#exclusive(async () => {
      const queue = (await this.#store.queue()).sort((a, b) => a.n - b.n);
      this.#replica.setQueue(queue);
      const now = Date.now();
      const records = [];
      const ops2 = [];
      let bytes2 = 0;
      for (let i = 0; i < queue.length; ) {
        const first = queue[i];
        if (first.seq !== null) {
          i += 1;
          continue;
        }
        if (first.readyAt > now) {
          this.#flushAt(first.readyAt - now);
          break;
        }
        let j = i + 1;
        if (first.batch !== null) while (j < queue.length && queue[j]?.batch === first.batch) j += 1;
        const group = queue.slice(i, j);
        if (records.length > 0 && (records.length + group.length > MAX_OPS_PER_PUSH || bytes2 >= MAX_PUSH_BYTES)) break;
        for (const r of await this.#store.freeze(group.map((g) => g.n))) {
          if (r.payload === null || r.wireEntity === null) {
            const sealed = await codec.sealOp(r.id, { entity: r.entity, kind: r.kind, value: r.value });
            await this.#store.setPayload(r.n, sealed.payload, sealed.wireEntity);
            r.payload = sealed.payload;
            r.wireEntity = sealed.wireEntity;
          }
          bytes2 += r.payload.length;
          records.push(r);
          ops2.push({ id: r.id, payload: r.payload, entity: r.wireEntity, kind: r.kind, ts: r.ts });
        }
        i = j;
      }
      if (records.length === 0) return null;
      this.#replica.setQueue(await this.#store.queue());
      return { records, ops: ops2 };
    });
  }
  #flushAt(ms) {
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = null;
      this.#session?.kick();
    }, ms + 5);
  }
  /**
   * The server answered a push. Over a WebSocket the `stored` results are the next ops of the stream
   * and are applied at once; otherwise (and for `duplicate`s) the ops are marked with their seq and
   * confirmed when they come back in the stream.
   */
  async #pushAnswered(plan, results2, inStream) {
    const byId = new Map(plan.records.map((r) => [r.id, r]));
    const now = Date.now();
    const stored = [];
    const later = [];
    const done = [];
    for (const res of results2) {
      const r = byId.get(res.id);
      if (!r) continue;
      if (res.seq <= this.#cursor) done.push(res.id);
      else if (inStream && res.status === "stored") {
        stored.push({
          seq: res.seq,
          id: r.id,
          device: this.#device,
          ts: r.ts,
          receivedAt: now,
          content: { entity: r.entity, kind: r.kind, value: r.value },
          kind: r.kind,
          local: true
        });
      } else later.push({ id: res.id, seq: res.seq });
    }
    if (stored.length > 0) {
      const first = stored[0];
      if (first.seq !== this.#cursor + 1) {
        throw new OpsyncError("protocol", `a pushed answer at seq ${first.seq} while the stream is at ${this.#cursor}`);
      }
      await this.#applyItems(stored);
    }
    if (later.length > 0 || done.length > 0) {
      await this.#exclusive(async () => {
        await this.#store.acknowledge(later);
        await this.#store.drop(done);
        this.#replica.setQueue(await this.#store.queue());
      });
      this.#statusChanged();
    }
  }
  /**
   * The server refused a push, or the push failed. Returns what the pusher does next: `lost` (the
   * connection broke: reconnect, then push the same ops again), `held` (the ops stay queued and pushes
   * wait: a rate limit, the storage quota, an overloaded server), `blocked` (this token may not write:
   * keep the ops queued), or `dropped` (refused for good: nothing of them was stored, and they are
   * removed so that the queue can move on).
   */
  async #pushRefused(plan, error) {
    if (!(error instanceof OpsyncError) || ["network", "timeout", "closed"].includes(error.code)) return "lost";
    const e = error;
    if (e.code === "quota_exceeded") {
      this.#pushHoldUntil = Date.now() + QUOTA_RETRY_MS;
      this.emit("error", e);
      return "held";
    }
    if (isTransient(e)) {
      this.#pushHoldUntil = Date.now() + Math.max(retryAfterMs(e) ?? 1e3, 50);
      return "held";
    }
    if (AUTH_CODES.has(e.code)) {
      this.emit("error", e);
      return "blocked";
    }
    const ids = plan.records.map((r) => r.id);
    await this.#exclusive(async () => {
      await this.#store.drop(ids);
      this.#replica.setQueue(await this.#store.queue());
    });
    this.#post({ t: "queue" });
    this.emit(
      "error",
      new OpsyncError(e.code, `the server refused ${ids.length} local op(s), which were dropped: ${e.message}`, {
        ...e.status === void 0 ? {} : { status: e.status },
        details: { ...e.details, dropped: ids }
      })
    );
    this.#statusChanged();
    return "dropped";
  }
  // ---- snapshots -----------------------------------------------------------------------------
  /**
   * Over a WebSocket the server does not say when a snapshot is due: ask it (a one-op pull answers
   * `snapshot_due`) when the session starts, then every `snapshot.checkEvery` applied ops, and after
   * ten minutes with any ops at all.
   */
  async #checkSnapshotDue() {
    if (this.#options.snapshot?.upload === false || this.#snapshotBusy) return;
    const every = Math.max(1, this.#options.snapshot?.checkEvery ?? 100);
    const moved = this.#cursor - this.#snapshotChecked;
    const first = this.#snapshotChecked < 0;
    if (!first && moved < every && (moved <= 0 || Date.now() - this.#snapshotCheckedAt < SNAPSHOT_CHECK_MS)) return;
    this.#snapshotChecked = this.#cursor;
    this.#snapshotCheckedAt = Date.now();
    try {
      const page = await this.#http.pull(this.#cursor, { limit: 1 });
      if (page.snapshot_due) await this.#uploadSnapshot();
    } catch {
    }
  }
  /** Uploads the synced state (the server said a snapshot is due). */
  async #uploadSnapshot() {
    if (this.#options.snapshot?.upload === false || this.#snapshotBusy || !this.#codec) return;
    this.#snapshotBusy = true;
    try {
      const seq = this.#cursor;
      const state = new Map([...this.#replica.confirmed.values()].map((r) => [r.entity, r.value]));
      const bytes2 = await (this.#options.snapshot?.serialize ?? defaultSerialize)(state, seq);
      await this.#http.putSnapshot(seq, await this.#codec.sealSnapshot(bytes2, seq));
    } catch (e) {
      const code = e instanceof OpsyncError ? e.code : "";
      if (code !== "snapshot_below_horizon" && !isTransient(e)) {
        this.emit("error", e instanceof OpsyncError ? e : new OpsyncError("internal", String(e), { cause: e }));
      }
    } finally {
      this.#snapshotBusy = false;
    }
  }
  // ---- the WebSocket transport ---------------------------------------------------------------
  #runWebSocket() {
    const WS = this.#WebSocket;
    if (!WS) return Promise.resolve({ kind: "ws-unavailable" });
    return new Promise((resolve) => {
      let ws;
      try {
        ws = new WS(websocketUrl(this.#url), [SUBPROTOCOL, `bearer.${this.#token.replace(/=+$/, "")}`]);
      } catch {
        resolve({ kind: "ws-unavailable" });
        return;
      }
      ws.binaryType = "arraybuffer";
      let welcomedAt = 0;
      let ended = false;
      let stopWith = null;
      let errorBeforeClose = null;
      let chain = Promise.resolve();
      let lastHeard = Date.now();
      let heartbeatMs = 15e3;
      let pingSentAt = 0;
      let pingId = 0;
      let pushId = 0;
      let inflight = null;
      let planning = false;
      let pushBlocked = false;
      let acked = this.#cursor;
      let ackTimer = null;
      let keepalive = null;
      const close = (code, reason) => {
        try {
          ws.close(code, reason);
        } catch {
        }
      };
      const welcomeTimer = setTimeout(() => {
        if (!welcomedAt) close(4e3, "no_welcome");
      }, WELCOME_TIMEOUT_MS);
      const finish = (outcome) => {
        if (ended) return;
        ended = true;
        clearTimeout(welcomeTimer);
        if (ackTimer) clearTimeout(ackTimer);
        if (keepalive) clearInterval(keepalive);
        chain.finally(() => resolve(outcome));
      };
      const fail = (e) => {
        if (stopWith) return;
        stopWith = this.#outcomeOf(e, welcomedAt ? Date.now() - welcomedAt : 0);
        close(4e3, "client_error");
      };
      const scheduleAck = () => {
        if (ackTimer || this.#cursor <= acked) return;
        ackTimer = setTimeout(() => {
          ackTimer = null;
          if (ended || ws.readyState !== WS.OPEN || this.#cursor <= acked) return;
          acked = this.#cursor;
          ws.send(encodeAck(acked));
        }, ACK_DELAY_MS);
      };
      const kick = async () => {
        if (ended || !welcomedAt || inflight || planning || pushBlocked || ws.readyState !== WS.OPEN) return;
        planning = true;
        try {
          const plan = await this.#plan();
          if (!plan || ended) return;
          pushId += 1;
          inflight = { id: pushId, plan };
          ws.send(encodePush(pushId, plan.ops));
        } catch (e) {
          fail(e);
        } finally {
          planning = false;
        }
      };
      const handle = async (data) => {
        const msg = decodeServerMsg(data);
        switch (msg.type) {
          case "welcome":
            welcomedAt = Date.now();
            clearTimeout(welcomeTimer);
            heartbeatMs = msg.heartbeat_ms;
            this.#head = Math.max(this.#head, msg.head);
            this.#setOnline("websocket");
            keepalive = setInterval(() => {
              const now = Date.now();
              if (pingSentAt && now - pingSentAt > PONG_TIMEOUT_MS) {
                stopWith = {
                  kind: "dropped",
                  connectedMs: now - welcomedAt,
                  error: new OpsyncError("timeout", "no pong")
                };
                close(4e3, "no_pong");
              } else if (!pingSentAt && now - lastHeard > 2 * heartbeatMs) {
                pingSentAt = now;
                pingId += 1;
                ws.send(encodePing(pingId));
              }
            }, 2e3);
            void kick();
            void this.#checkSnapshotDue();
            break;
          case "ops":
            this.#head = Math.max(this.#head, msg.head);
            await this.#applyServerOps(msg.ops);
            scheduleAck();
            break;
          case "pushed": {
            if (!inflight || inflight.id !== msg.id)
              throw new OpsyncError("protocol", `an answer to push ${msg.id}, which is not in flight`);
            const plan = inflight.plan;
            this.#head = Math.max(this.#head, msg.head);
            await this.#pushAnswered(plan, msg.results, true);
            inflight = null;
            scheduleAck();
            void kick();
            break;
          }
          case "error": {
            const e = new OpsyncError(msg.code, msg.message, { details: { ...msg } });
            if (msg.id !== void 0 && inflight && inflight.id === msg.id) {
              const plan = inflight.plan;
              const next = await this.#pushRefused(plan, e);
              inflight = null;
              if (next === "blocked") pushBlocked = true;
              else void kick();
            } else if (!welcomedAt) {
              errorBeforeClose = e;
            } else if (e.code !== "invalid_field" && !AUTH_CODES.has(e.code)) {
              this.emit("error", e);
            }
            break;
          }
          case "resync":
            break;
          case "pong":
            break;
          case "unknown":
            break;
        }
      };
      this.#session = {
        stop: (outcome) => {
          stopWith ??= outcome;
          close(1e3, "client_stop");
          if (!welcomedAt) finish(stopWith);
        },
        kick: () => void kick()
      };
      ws.onopen = () => ws.send(encodeHello(this.#device, this.#cursor));
      ws.onmessage = (event) => {
        lastHeard = Date.now();
        pingSentAt = 0;
        if (!(event.data instanceof ArrayBuffer)) {
          fail(new OpsyncError("protocol", "a text frame from the server"));
          return;
        }
        const data = new Uint8Array(event.data);
        chain = chain.then(() => ended || stopWith ? void 0 : handle(data)).catch(fail);
      };
      ws.onerror = () => void 0;
      ws.onclose = (event) => {
        const connectedMs = welcomedAt ? Date.now() - welcomedAt : 0;
        if (stopWith) return finish(stopWith);
        const code = event.code;
        const reason = event.reason || errorBeforeClose?.code || "closed";
        if (code === 4012) return finish({ kind: "resync" });
        if (code === 4013) return finish({ kind: "forget" });
        if (code === 4029) {
          const error2 = errorBeforeClose ?? new OpsyncError("rate_limited", "the server closed the connection: rate_limited");
          return finish({ kind: "dropped", connectedMs, error: error2, waitMs: retryAfterMs(errorBeforeClose) ?? 1e3 });
        }
        if (code >= 4001 && code <= 4004 || code === 4010) {
          return finish({
            kind: "fatal",
            error: errorBeforeClose ?? new OpsyncError(
              code === 4010 ? "account_deleted" : reason,
              `the server closed the connection: ${reason}`
            )
          });
        }
        const error = new OpsyncError("network", `the WebSocket closed (${code} ${reason})`);
        if (welcomedAt) {
          if (this.#options.transport !== "websocket") this.#policy.wsDropped();
          return finish({ kind: "dropped", connectedMs, error });
        }
        if (code === 1001 || code === 1011 || code === 1013 || errorBeforeClose)
          return finish({ kind: "dropped", connectedMs, error });
        return finish({ kind: "ws-unavailable" });
      };
    });
  }
  /** Whether a WebSocket gets through now: open one, wait for `welcome`, close it. */
  #probeWebSocket() {
    const WS = this.#WebSocket;
    if (!WS) return Promise.resolve(false);
    return new Promise((resolve) => {
      let ws;
      try {
        ws = new WS(websocketUrl(this.#url), [SUBPROTOCOL, `bearer.${this.#token.replace(/=+$/, "")}`]);
      } catch {
        resolve(false);
        return;
      }
      ws.binaryType = "arraybuffer";
      const done = (ok) => {
        clearTimeout(timer);
        ws.onclose = null;
        ws.onmessage = null;
        try {
          ws.close(1e3, "probe");
        } catch {
        }
        resolve(ok);
      };
      const timer = setTimeout(() => done(false), WELCOME_TIMEOUT_MS);
      ws.onopen = () => ws.send(encodeHello(this.#device, this.#cursor));
      ws.onmessage = (event) => {
        try {
          done(event.data instanceof ArrayBuffer && decodeServerMsg(new Uint8Array(event.data)).type === "welcome");
        } catch {
          done(false);
        }
      };
      ws.onclose = () => done(false);
    });
  }
  // ---- the long-poll transport ---------------------------------------------------------------
  async #runLongPoll() {
    const abort = new AbortController();
    let stopWith = null;
    let pushFailure = null;
    let pushing = null;
    let pushAgain = false;
    let connectedAt = 0;
    let acked = this.#cursor;
    let ackTimer = null;
    let probeTimer = null;
    const waitSecs = Math.max(1, Math.min(30, this.#options.longPollSecs ?? 25));
    const stop = (outcome) => {
      stopWith ??= outcome;
      abort.abort();
    };
    const pushLoop = async () => {
      while (!abort.signal.aborted) {
        pushAgain = false;
        const plan = await this.#plan();
        if (!plan) {
          if (pushAgain) continue;
          return;
        }
        try {
          const res = await this.#http.push(plan.ops, this.#device, abort.signal);
          this.#head = Math.max(this.#head, res.head);
          await this.#pushAnswered(plan, res.results, false);
          if (res.snapshot_due) void this.#uploadSnapshot();
        } catch (e) {
          if (abort.signal.aborted) return;
          const next = await this.#pushRefused(plan, e);
          if (next === "blocked") return;
          if (next === "lost") {
            pushFailure = e;
            abort.abort();
            return;
          }
        }
      }
    };
    const kick = () => {
      if (!connectedAt || abort.signal.aborted) return;
      if (pushing) {
        pushAgain = true;
        return;
      }
      pushing = pushLoop().catch((e) => {
        pushFailure = e;
        abort.abort();
      }).finally(() => {
        pushing = null;
        if (pushAgain) kick();
      });
    };
    const scheduleAck = () => {
      if (ackTimer || this.#cursor <= acked) return;
      ackTimer = setTimeout(() => {
        ackTimer = null;
        if (abort.signal.aborted || this.#cursor <= acked) return;
        acked = this.#cursor;
        this.#http.ack(this.#device, acked).catch(() => void 0);
      }, ACK_DELAY_MS);
    };
    const probe = async () => {
      probeTimer = null;
      const ok = await this.#probeWebSocket();
      if (abort.signal.aborted) return;
      if (ok) {
        this.#policy.probeSucceeded();
        stop({ kind: "stopped" });
      } else {
        this.#policy.probeFailed();
        probeTimer = setTimeout(() => void probe(), this.#policy.probeDelay);
      }
    };
    this.#session = { stop, kick };
    try {
      for (; ; ) {
        const page = await this.#http.pull(this.#cursor, {
          wait: connectedAt ? waitSecs : 0,
          signal: abort.signal
        });
        if (abort.signal.aborted) break;
        this.#head = Math.max(this.#head, page.head);
        if (!connectedAt) {
          connectedAt = Date.now();
          this.#setOnline("longpoll");
          if (this.#options.transport !== "longpoll" && this.#WebSocket) {
            probeTimer = setTimeout(() => void probe(), this.#policy.probeDelay);
          }
          kick();
        }
        await this.#applyServerOps(page.ops);
        if (page.ops.length > 0) scheduleAck();
        if (page.snapshot_due) void this.#uploadSnapshot();
      }
    } catch (e) {
      if (!stopWith && !pushFailure) stopWith = this.#outcomeOf(e, connectedAt ? Date.now() - connectedAt : 0);
    } finally {
      abort.abort();
      if (ackTimer) clearTimeout(ackTimer);
      if (probeTimer) clearTimeout(probeTimer);
      await pushing;
    }
    if (stopWith) return stopWith;
    if (pushFailure) return this.#outcomeOf(pushFailure, connectedAt ? Date.now() - connectedAt : 0);
    return { kind: "stopped" };
  }
};
function settle(fn) {
  try {
    return fn();
  } catch (e) {
    return Promise.reject(e);
  }
}
function generateBatchId() {
  const bytes2 = globalThis.crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes2, (b) => b.toString(16).padStart(2, "0")).join("");
}
export {
  Opsync,
  OpsyncError
};
