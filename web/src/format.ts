/** Labels and dates for people; amounts are in money.ts. */

const KIND_LABELS: Record<string, string> = {
  purchase: "Purchase",
  usage: "AI usage",
  refund: "Refund",
  adjustment: "Adjustment",
  reversal: "Reversal",
};

export function kindLabel(kind: string): string {
  return KIND_LABELS[kind] ?? kind.replace(/_/g, " ");
}

const STATUS_LABELS: Record<string, string> = {
  pending: "Pending",
  paid: "Paid, adding credits",
  fulfilled: "Completed",
  refunded: "Refunded",
  partially_refunded: "Partly refunded",
  failed: "Failed",
};

export function purchaseStatusLabel(status: string): string {
  return STATUS_LABELS[status] ?? status;
}

const DATE_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function formatDateTime(iso: string | null | undefined): string {
  if (!iso) {
    return "";
  }
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : DATE_TIME.format(date);
}

export function formatCount(value: number): string {
  return new Intl.NumberFormat("en-US").format(value);
}
