/**
 * End-to-end encryption with WebCrypto, so the server only ever stores ciphertext.
 *
 * A passphrase and a per-user salt give, through PBKDF2-SHA256, 512 bits: the first 256 are the
 * AES-256-GCM key of payloads and snapshots, the last 256 an HMAC-SHA256 key that turns entity keys
 * into opaque tokens (so the plaintext `entity` the server sees reveals nothing either).
 *
 * A sealed blob is `[version 0x01][IV: 12 random bytes][AES-GCM ciphertext and 16-byte tag]`. The
 * additional data binds it to where it belongs (an op's id, kind and entity, or a snapshot's seq),
 * so the server cannot move a payload to another op or serve a snapshot under another seq.
 */

/** The version byte of an AES-256-GCM blob. */
export const SEALED_V1 = 0x01;
/** The IV length AES-GCM is specified for: 96 bits. */
export const IV_BYTES = 12;
/** PBKDF2 iterations by default (OWASP's figure for PBKDF2-HMAC-SHA256). */
export const DEFAULT_ITERATIONS = 600_000;

const encoder = new TextEncoder();

/** The keys one passphrase gives for one user. */
export interface Keys {
  /** AES-256-GCM, for payloads and snapshots. */
  readonly aes: CryptoKey;
  /** HMAC-SHA256, for entity keys. */
  readonly hmac: CryptoKey;
}

function subtle(): SubtleCrypto {
  const s = globalThis.crypto?.subtle;
  if (!s)
    throw new Error("WebCrypto is unavailable: end-to-end encryption needs a secure context (https or localhost)");
  return s;
}

/** The salt of a user: SHA-256 of a fixed label and the user's name, so each user's keys differ. */
export async function userSalt(user: string): Promise<Uint8Array> {
  return new Uint8Array(await subtle().digest("SHA-256", encoder.encode(`opsync/e2e/v1/salt\0${user}`)));
}

/** Derives the keys (non-extractable) from a passphrase and a salt. */
export async function deriveKeys(passphrase: string, salt: Uint8Array, iterations = DEFAULT_ITERATIONS): Promise<Keys> {
  if (passphrase.length === 0) throw new Error("the passphrase is empty");
  const s = subtle();
  const material = await s.importKey("raw", encoder.encode(passphrase), "PBKDF2", false, ["deriveBits"]);
  const bits = new Uint8Array(
    await s.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt: salt as BufferSource, iterations }, material, 512),
  );
  const aes = await s.importKey("raw", bits.slice(0, 32), { name: "AES-GCM", length: 256 }, false, [
    "encrypt",
    "decrypt",
  ]);
  const hmac = await s.importKey("raw", bits.slice(32), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  bits.fill(0);
  return { aes, hmac };
}

/** Encrypts `plain` with a fresh random IV; `aad` is authenticated, not stored. */
export async function seal(keys: Keys, plain: Uint8Array, aad: string): Promise<Uint8Array> {
  const iv = globalThis.crypto.getRandomValues(new Uint8Array(IV_BYTES));
  const cipher = new Uint8Array(
    await subtle().encrypt(
      { name: "AES-GCM", iv, additionalData: encoder.encode(aad), tagLength: 128 },
      keys.aes,
      plain as BufferSource,
    ),
  );
  const out = new Uint8Array(1 + IV_BYTES + cipher.length);
  out[0] = SEALED_V1;
  out.set(iv, 1);
  out.set(cipher, 1 + IV_BYTES);
  return out;
}

/** Decrypts a blob from [`seal`]; throws if it is not one, or the key or `aad` is wrong. */
export async function open(keys: Keys, sealed: Uint8Array, aad: string): Promise<Uint8Array> {
  if (sealed.length < 1 + IV_BYTES + 16 || sealed[0] !== SEALED_V1) {
    throw new Error("not an encrypted blob of version 1");
  }
  const iv = sealed.subarray(1, 1 + IV_BYTES);
  const plain = await subtle().decrypt(
    { name: "AES-GCM", iv: iv as BufferSource, additionalData: encoder.encode(aad), tagLength: 128 },
    keys.aes,
    sealed.subarray(1 + IV_BYTES) as BufferSource,
  );
  return new Uint8Array(plain);
}

/** The opaque token an entity key becomes on the wire: `h.` and 22 base64url characters (128 bits). */
export async function hashEntity(keys: Keys, entity: string): Promise<string> {
  const mac = new Uint8Array(await subtle().sign("HMAC", keys.hmac, encoder.encode(entity)));
  let text = "";
  for (const b of mac.subarray(0, 16)) text += String.fromCharCode(b);
  return "h." + btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
