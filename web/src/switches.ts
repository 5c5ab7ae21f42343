/**
 * The admin view's switch form: what the operator changed, as checkout's
 * `PATCH /api/admin/features` takes it (only the switches that differ, plus a reason).
 */

import type { AdminFeatures, FeaturesPatch } from "./types";

export type BooleanSwitch =
  "billingEnabled" | "purchasesEnabled" | "chargingEnabled" | "shadowBilling";

export const BOOLEAN_SWITCHES: readonly { name: BooleanSwitch; label: string; hint: string }[] = [
  {
    name: "billingEnabled",
    label: "Billing enabled",
    hint: "Master switch: off pauses purchases and charging together.",
  },
  { name: "purchasesEnabled", label: "Purchases enabled", hint: "Off: Buy is refused." },
  {
    name: "chargingEnabled",
    label: "Charging enabled",
    hint: "Off: AI features stay available and nothing is charged.",
  },
  {
    name: "shadowBilling",
    label: "Shadow billing",
    hint: "Every charge is computed and logged; only allowlisted users are charged.",
  },
];

/** Switch -> the deployment variable that forces it (checkout.switches.FORCING_VARIABLES). */
export const FORCING_VARIABLES: Record<string, string> = {
  purchasesEnabled: "BILLING_PURCHASE_ENABLED",
  chargingEnabled: "BILLING_CHARGING_ENABLED",
  shadowBilling: "SHADOW_BILLING_ENABLED",
  shadowAllowlist: "BILLING_ALLOWLIST",
  rolloutPercentage: "BILLING_ROLLOUT_PERCENTAGE",
};

export const MIN_REASON_LENGTH = 3;
export const MAX_REASON_LENGTH = 500;

export interface SwitchDraft {
  billingEnabled: boolean;
  purchasesEnabled: boolean;
  chargingEnabled: boolean;
  shadowBilling: boolean;
  rolloutPercentage: string;
  shadowAllowlist: string;
}

export function draftOf(features: AdminFeatures): SwitchDraft {
  return {
    billingEnabled: features.billingEnabled,
    purchasesEnabled: features.purchasesEnabled,
    chargingEnabled: features.chargingEnabled,
    shadowBilling: features.shadowBilling,
    rolloutPercentage: String(features.rolloutPercentage),
    shadowAllowlist: features.shadowAllowlist.join("\n"),
  };
}

/** One user id per line (commas also separate); blanks dropped, each id once. */
export function parseAllowlist(text: string): string[] {
  const ids = text
    .split(/[\n,]/)
    .map((id) => id.trim())
    .filter(Boolean);
  return [...new Set(ids)];
}

export function parsePercentage(text: string): number | null {
  if (!/^\d{1,3}$/.test(text.trim())) {
    return null;
  }
  const value = Number(text.trim());
  return value <= 100 ? value : null;
}

export type SwitchChanges = Omit<FeaturesPatch, "reason">;

export type ChangesResult = { ok: true; changes: SwitchChanges } | { ok: false; problem: string };

/** The switches whose draft differs from `current`; forced ones are never sent. */
export function switchChanges(current: AdminFeatures, draft: SwitchDraft): ChangesResult {
  const forced = new Set(current.forced);
  const changes: SwitchChanges = {};
  for (const { name } of BOOLEAN_SWITCHES) {
    if (!forced.has(name) && draft[name] !== current[name]) {
      changes[name] = draft[name];
    }
  }
  if (!forced.has("rolloutPercentage")) {
    const percentage = parsePercentage(draft.rolloutPercentage);
    if (percentage === null) {
      return { ok: false, problem: "Rollout percentage must be a whole number from 0 to 100." };
    }
    if (percentage !== current.rolloutPercentage) {
      changes.rolloutPercentage = percentage;
    }
  }
  if (!forced.has("shadowAllowlist")) {
    const allowlist = parseAllowlist(draft.shadowAllowlist);
    if (allowlist.join("\n") !== current.shadowAllowlist.join("\n")) {
      changes.shadowAllowlist = allowlist;
    }
  }
  return { ok: true, changes };
}

export function reasonProblem(reason: string): string | null {
  const length = reason.trim().length;
  if (length < MIN_REASON_LENGTH) {
    return `Give a reason of at least ${MIN_REASON_LENGTH} characters; it is kept in the audit log.`;
  }
  if (length > MAX_REASON_LENGTH) {
    return `Keep the reason under ${MAX_REASON_LENGTH} characters.`;
  }
  return null;
}
