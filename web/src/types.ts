/** The services' JSON bodies (camelCase), as their schemas.py declare them. */

// checkout
export interface Package {
  code: string;
  name: string;
  priceCents: number;
  currency: string;
  credits: number;
  bonusCredits: number;
}

export interface PurchaseCreated {
  purchaseId: string;
  checkoutUrl: string;
  status: string;
}

export type PurchaseStatus =
  "pending" | "paid" | "fulfilled" | "refunded" | "partially_refunded" | "failed";

export interface Purchase {
  purchaseId: string;
  userId: string;
  packageCode: string;
  priceCents: number;
  currency: string;
  credits: number;
  bonusCredits: number;
  grantMillicredits: number;
  status: PurchaseStatus;
  checkoutUrl: string | null;
  stripeSessionId: string | null;
  refundedMillicredits: number;
  createdAt: string;
  updatedAt: string;
  receiptUrl?: string | null;
}

export interface PurchasePage {
  purchases: Purchase[];
  nextCursor: string | null;
}

export interface Features {
  billingEnabled: boolean;
  purchasesEnabled: boolean;
  chargingEnabled: boolean;
  shadowBilling: boolean;
  rolloutPercentage: number;
  forced: string[];
}

export interface AdminFeatures extends Features {
  shadowAllowlist: string[];
  updatedAt: Record<string, string | null>;
}

export interface FeaturesPatch {
  billingEnabled?: boolean;
  purchasesEnabled?: boolean;
  chargingEnabled?: boolean;
  shadowBilling?: boolean;
  rolloutPercentage?: number;
  shadowAllowlist?: string[];
  reason: string;
}

// ledger
export interface Balance {
  userId: string;
  balanceMillicredits: number;
  heldMillicredits: number;
  availableMillicredits: number;
  balanceCredits: string;
  availableCredits: string;
}

export interface LedgerEntry {
  id: string;
  kind: string;
  amountMillicredits: number;
  balanceAfterMillicredits: number;
  referenceId: string;
  correlationId: string | null;
  createdAt: string;
  model?: string | null;
}

export interface LedgerPage {
  entries: LedgerEntry[];
  nextCursor: string | null;
}

// metering
export interface ModelUsage {
  model: string;
  calls: number;
  inputTokens: number;
  outputTokens: number;
  chargedMillicredits: number;
}

export interface UsageSummary {
  from: string;
  to: string;
  models: ModelUsage[];
  totalChargedMillicredits: number;
}

export interface Pause {
  userId: string;
  paused: boolean;
  pausedAt?: string | null;
  reason?: string | null;
  resumedAt?: string | null;
  resumedBy?: string | null;
  resumeReason?: string | null;
}

export interface PausedUsers {
  users: Pause[];
}

export interface ReviewFlag {
  id: number;
  userId: string;
  usageId: string;
  model: string;
  chargeMillicredits: number;
  averageMillicredits: number;
  recentCalls: number;
  createdAt: string;
}

export interface ReviewFlags {
  flags: ReviewFlag[];
}

// reconciler
export interface ReconciliationFinding {
  check: string;
  kind: string;
  userId: string | null;
  references: string[];
  expectedMillicredits: number | null;
  actualMillicredits: number | null;
  detail: string;
}

export interface ReconciliationRun {
  runId: string;
  period: { from: string; to: string };
  status: "clean" | "findings";
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  checks: { name: string; findings: number }[];
  findings: ReconciliationFinding[];
  stripeApiSessionsSeen: number | null;
  journalChain: { lastEntryId: number; chainHash: string } | null;
}
