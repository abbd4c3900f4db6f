/**
 * @opsync/client: the browser client of opsync.
 *
 * ```ts
 * import { Opsync } from "@opsync/client";
 * const sync = await Opsync.connect({ token });
 * sync.on("change", render);
 * await sync.put("task:1", { title: "Write docs", done: false });
 * ```
 */
export {
  Opsync,
  type Change,
  type EncryptionOptions,
  type Kind,
  type OpsyncEvents,
  type OpsyncOptions,
  type PendingOp,
  type RebaseHook,
  type ResetInfo,
  type SnapshotOptions,
  type Status,
  type SyncedOp,
  type Transport,
} from "./client.js";
export { OpsyncError } from "./errors.js";
export type { BackoffOptions, TransportPolicyOptions } from "./policy.js";
