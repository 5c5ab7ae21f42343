/**
 * Money display. Amounts arrive as integer millicredits (1 credit = 1,000 millicredits,
 * 1,000 credits = US$1.00, so US$1 = 1,000,000 millicredits). Everything here is integer
 * arithmetic: a float would turn 0.1 + 0.2 credits into 0.30000000000000004.
 */

export const MILLICREDITS_PER_CREDIT = 1000;
const MILLICREDITS_PER_CENT = 10_000;

function groupThousands(digits: string): string {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

function checkedInteger(value: number): number {
  if (!Number.isSafeInteger(value)) {
    throw new RangeError(`not an integer amount: ${value}`);
  }
  return value;
}

/** Credits with thousands separators and up to 3 decimals, only when needed: 12,500 -> "12.5". */
export function formatCredits(millicredits: number): string {
  const value = checkedInteger(millicredits);
  const sign = value < 0 ? "-" : "";
  const abs = Math.abs(value);
  const whole = groupThousands(String(Math.floor(abs / MILLICREDITS_PER_CREDIT)));
  const fraction = String(abs % MILLICREDITS_PER_CREDIT)
    .padStart(3, "0")
    .replace(/0+$/, "");
  return `${sign}${whole}${fraction ? `.${fraction}` : ""}`;
}

/** "1 credit", "12.5 credits". */
export function creditsText(millicredits: number): string {
  const unit = millicredits === MILLICREDITS_PER_CREDIT ? "credit" : "credits";
  return `${formatCredits(millicredits)} ${unit}`;
}

/** A ledger movement with its direction: "+9,990 credits", "-50 credits". */
export function signedCreditsText(millicredits: number): string {
  return `${millicredits > 0 ? "+" : ""}${creditsText(millicredits)}`;
}

/** A whole number of credits as the catalog states it (package credits and bonus). */
export function formatWholeCredits(credits: number): string {
  const value = checkedInteger(credits);
  return `${value < 0 ? "-" : ""}${groupThousands(String(Math.abs(value)))}`;
}

/**
 * The approximate US dollar value, rounded half away from zero to the cent: "≈ $9.99".
 * A non-zero amount below half a cent reads "< $0.01" rather than a misleading "$0.00".
 */
export function approxUsd(millicredits: number): string {
  const value = checkedInteger(millicredits);
  const abs = Math.abs(value);
  const sign = value < 0 ? "-" : "";
  let cents = Math.floor(abs / MILLICREDITS_PER_CENT);
  if ((abs % MILLICREDITS_PER_CENT) * 2 >= MILLICREDITS_PER_CENT) {
    cents += 1;
  }
  if (cents === 0 && abs > 0) {
    return `${sign ? "> -" : "< "}$0.01`;
  }
  const dollars = groupThousands(String(Math.floor(cents / 100)));
  return `≈ ${sign}$${dollars}.${String(cents % 100).padStart(2, "0")}`;
}

/** An exact price in minor units of its currency: (999, "usd") -> "$9.99". */
export function formatPrice(minorUnits: number, currency: string): string {
  const value = checkedInteger(minorUnits);
  const code = currency.toUpperCase();
  try {
    const format = new Intl.NumberFormat("en-US", { style: "currency", currency: code });
    const digits = format.resolvedOptions().maximumFractionDigits ?? 2;
    return format.format(value / 10 ** digits);
  } catch {
    return `${(value / 100).toFixed(2)} ${code}`;
  }
}
