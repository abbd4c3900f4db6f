/** An error from opsync or from this client, with a stable snake_case `code` to branch on. */
export class OpsyncError extends Error {
  /** The server's error code (docs/protocol.md) or one of this client's own: `network`, `timeout`,
   * `protocol`, `decrypt_failed`, `closed`, `locked`, `too_many_ops`. */
  readonly code: string;
  /** The HTTP status, when the error is an HTTP answer. */
  readonly status: number | undefined;
  /** The whole error body or message, for the codes that carry details (`head`, `horizon`, …). */
  readonly details: Readonly<Record<string, unknown>>;

  constructor(
    code: string,
    message: string,
    options: { status?: number; details?: Record<string, unknown>; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "OpsyncError";
    this.code = code;
    this.status = options.status;
    this.details = options.details ?? {};
  }
}

/** Codes after which retrying with the same token cannot help. */
export const AUTH_CODES: ReadonlySet<string> = new Set([
  "invalid_token",
  "token_expired",
  "token_revoked",
  "forbidden",
  "device_mismatch",
]);

/** Whether the error is worth retrying unchanged later (a lost connection, an overloaded server, a
 * rate limit). `quota_exceeded` is not: it lasts until the user's data shrinks. */
export function isTransient(e: unknown): boolean {
  if (!(e instanceof OpsyncError)) return true;
  if (e.code === "quota_exceeded") return false;
  if (["network", "timeout", "unavailable", "internal", "request_timeout", "rate_limited"].includes(e.code))
    return true;
  return e.status !== undefined && e.status >= 500;
}

/** How long the server asked to wait before trying again (`retry_after_ms`, or `Retry-After`), if it did. */
export function retryAfterMs(e: unknown): number | undefined {
  if (!(e instanceof OpsyncError)) return undefined;
  const ms = e.details["retry_after_ms"];
  return typeof ms === "number" && Number.isFinite(ms) && ms >= 0 ? ms : undefined;
}
