/**
 * `returnTo`: where the Credits page sends the user back after buying. It comes from the
 * query string, which anyone can craft, so only a same-origin path is followed: it must
 * start with one "/", never "//" (another host) nor contain a backslash (browsers read
 * "/\evil" as "//evil"), no control characters (browsers strip them, which can turn a path
 * into a host), and it must still name this origin once resolved. Anything else is ignored,
 * not repaired. The rule matches the services' (billing_platform.paths).
 */

export const MAX_RETURN_TO_LENGTH = 512;
export const CREDITS_PATH = "/credits";
export const ADMIN_PATH = "/credits/admin";

const PLACEHOLDER_ORIGIN = "https://credits.invalid";

export function safeReturnTo(value: string | null | undefined): string | null {
  if (typeof value !== "string" || value.length === 0 || value.length > MAX_RETURN_TO_LENGTH) {
    return null;
  }
  if (!value.startsWith("/") || value.startsWith("//") || value.includes("\\")) {
    return null;
  }
  for (const char of value) {
    const code = char.charCodeAt(0);
    if (code < 0x20 || code === 0x7f) {
      return null;
    }
  }
  let resolved: URL;
  try {
    resolved = new URL(value, PLACEHOLDER_ORIGIN);
  } catch {
    return null;
  }
  return resolved.origin === PLACEHOLDER_ORIGIN ? value : null;
}

/** The Credits page carrying `returnTo`: what checkout is given to come back to. */
export function creditsPagePath(returnTo: string | null): string {
  return returnTo === null
    ? CREDITS_PATH
    : `${CREDITS_PATH}?returnTo=${encodeURIComponent(returnTo)}`;
}
