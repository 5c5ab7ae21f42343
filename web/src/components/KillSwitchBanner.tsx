import type { Features } from "../types";

export const PAUSED_MESSAGE = "Billing is paused. AI features remain available with no charges.";

/** Whether users are being charged: both the master switch and charging must be on. */
export function billingPaused(features: Features | undefined): boolean {
  return features !== undefined && (!features.billingEnabled || !features.chargingEnabled);
}

export function purchasesOpen(features: Features | undefined): boolean {
  // Unknown switches leave Buy available: checkout refuses with 503 if they are off.
  return features === undefined || (features.billingEnabled && features.purchasesEnabled);
}

export function KillSwitchBanner({ features }: { features: Features | undefined }) {
  if (!billingPaused(features)) {
    return null;
  }
  return (
    <div className="banner banner-warning" role="status" data-testid="billing-paused-banner">
      <p>{PAUSED_MESSAGE}</p>
    </div>
  );
}
