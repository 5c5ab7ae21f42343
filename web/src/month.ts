/**
 * Months as the `<input type="month">` value ("YYYY-MM"). Metering's `GET /api/usage` takes
 * `from` and `to` as whole UTC days, both included, so a month is its first to its last day;
 * the ledger's statements are named by the month itself.
 */

export interface DayRange {
  from: string;
  to: string;
}

const MONTH = /^(\d{4})-(0[1-9]|1[0-2])$/;

function pad(value: number, width: number): string {
  return String(value).padStart(width, "0");
}

export function isMonth(value: string): boolean {
  return MONTH.test(value);
}

/** "2024-02" -> {from: "2024-02-01", to: "2024-02-29"}; null for anything but a month. */
export function monthRange(month: string): DayRange | null {
  const match = MONTH.exec(month);
  if (!match) {
    return null;
  }
  const year = Number(match[1]);
  const monthNumber = Number(match[2]);
  // Day 0 of the next month is the last day of this one.
  const lastDay = new Date(Date.UTC(year, monthNumber, 0)).getUTCDate();
  const prefix = `${pad(year, 4)}-${pad(monthNumber, 2)}`;
  return { from: `${prefix}-01`, to: `${prefix}-${pad(lastDay, 2)}` };
}

/** The UTC month of `now`, as the services count months. */
export function monthOf(now: Date): string {
  return `${pad(now.getUTCFullYear(), 4)}-${pad(now.getUTCMonth() + 1, 2)}`;
}

/** "2025-01" -> "January 2025", for captions. */
export function monthLabel(month: string): string {
  const match = MONTH.exec(month);
  if (!match) {
    return month;
  }
  const date = new Date(Date.UTC(Number(match[1]), Number(match[2]) - 1, 1));
  return new Intl.DateTimeFormat("en-US", {
    month: "long",
    year: "numeric",
    timeZone: "UTC",
  }).format(date);
}
